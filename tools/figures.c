/* figures.c - the book's pictures of data: what chapters 2, 5 and 6 show
   from real runs, drawn by the chapters' own code.

   What this is: a program of its own, built on chapter 7, which it
   includes whole (as tools/bench.c and the tests do): every model, the
   training loop, the protocol, the Picture type and its 5x7 font, and
   write_file_atomically. It trains what each picture needs with the
   chapter's functions, on the real data, and writes PNG files:

     bn-histograms.png       chapter 5: one layer's values over a batch, in
                             the deeper CNN without and with batch norm, at
                             the start and after some training steps
     dropout-masks.png       chapter 5: which of the dense layer's 256 units
                             dropout drops, per image and per step
     early-stopping-curves.png  chapter 6: the curves of section 6.1's
                             early-stopped run, the best epoch marked
     ann-weights.png         chapter 2: the ANN's 128 first-layer units,
                             each unit's 784 weights as a 28x28 image

   What it is not: part of a chapter, or a plotting library. The chapters'
   PNG writer stores pixels uncompressed (book.md 7.9); a picture of a
   few hundred pixels square would be hundreds of KB that way. So this
   tool compresses, with deflate's fixed Huffman codes and two kinds of
   match (the pixel before, the row above): enough for plots, which are
   mostly runs of one colour, and short enough to read below.

       make figures              build/make_figures: all four into figures/
       build/make_figures --quick
                                 small counts, into build/figures-quick/
       build/make_figures --out DIR --data DIR --checkpoints DIR
                                 the early-stopped run's checkpoints go to
                                 DIR (default build/figures-checkpoints)

   Each picture is a function of the seed (1) and the data: two runs write
   the same bytes, at any thread count (the chapters' promise).
   Exit codes: 0 done, 2 a bad option; the chapters' own for the rest (3
   to 9 and 14 the data, 10 a file not written, 15 training diverged, 25
   another run holds the checkpoints; ./chapter7 --help lists them).
   (No #include of its own: the chapter's come first, after the feature
   macros it defines.) */
#define main chapter_main
#include "../chapters/chapter7.c"
#undef main

/* ---- Deflate with fixed Huffman codes (RFC 1951, 3.2.6) --------------------

   A deflate block of type 1 codes each symbol with a table fixed by the
   standard, so the file carries no table. Symbols 0-255 are literal bytes,
   256 ends the block, 257-285 are match lengths (3 to 258, some with
   extra bits), each followed by a distance code (1 to 32,768, 5 bits and
   extra bits): "copy `length` bytes from `distance` bytes back". Bits go
   into bytes from the least significant end; Huffman codes are written
   most significant bit first, so they are reversed before they go in. */

typedef struct {
    ByteBuffer *out;
    uint32_t bits;  // not yet written, in the low `count` bits
    int count;
} BitWriter;

static void put_bits(BitWriter *w, uint32_t value, int n) {  // n <= 16
    w->bits |= value << w->count;
    w->count += n;
    for (; w->count >= 8; w->count -= 8, w->bits >>= 8) {
        unsigned char byte = (unsigned char)w->bits;
        put_bytes(w->out, &byte, 1);
    }
}

static void put_code(BitWriter *w, uint32_t code, int length) {
    uint32_t reversed = 0;
    for (int i = 0; i < length; i++) reversed |= (code >> i & 1) << (length - 1 - i);
    put_bits(w, reversed, length);
}

// The fixed code of a literal/length symbol (0-287).
static void put_symbol(BitWriter *w, int s) {
    if (s < 144) put_code(w, 0x30 + (uint32_t)s, 8);
    else if (s < 256) put_code(w, 0x190 + (uint32_t)(s - 144), 9);
    else if (s < 280) put_code(w, (uint32_t)(s - 256), 7);
    else put_code(w, 0xC0 + (uint32_t)(s - 280), 8);
}

static const int LENGTH_BASE[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                    35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const int LENGTH_EXTRA[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                     3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const int DISTANCE_BASE[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385,
                                      513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const int DISTANCE_EXTRA[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7,
                                       8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

static void put_match(BitWriter *w, int length, int distance) {
    int i = 28, j = 29;
    while (LENGTH_BASE[i] > length) i--;
    while (DISTANCE_BASE[j] > distance) j--;
    put_symbol(w, 257 + i);
    put_bits(w, (uint32_t)(length - LENGTH_BASE[i]), LENGTH_EXTRA[i]);
    put_code(w, (uint32_t)j, 5);
    put_bits(w, (uint32_t)(distance - DISTANCE_BASE[j]), DISTANCE_EXTRA[j]);
}

// How many bytes from `at` on repeat those `distance` back (at most 258).
static int match_length(const unsigned char *raw, size_t size, size_t at, size_t distance) {
    if (distance > at || distance > 32768) return 0;
    int n = 0;
    while (n < 258 && at + n < size && raw[at + n] == raw[at + n - distance]) n++;
    return n;
}

/* The zlib stream of `raw`: one fixed-Huffman block, each position either
   a literal or the longer of two matches, `pixel` bytes back (the pixel
   to the left) or `row` bytes back (the pixel above). Greedy, and no
   search beyond those two: a plot's background and flat bars are long
   runs of both kinds. */
static ByteBuffer deflate_fixed(const unsigned char *raw, size_t size, size_t pixel, size_t row) {
    ByteBuffer z = {0};
    put_bytes(&z, "\x78\x01", 2);  // as png_pixel_stream: deflate, 32K window
    BitWriter w = {.out = &z};
    put_bits(&w, 1, 1);            // the last block
    put_bits(&w, 1, 2);            // of type 1: fixed codes
    for (size_t at = 0; at < size;) {
        int left = match_length(raw, size, at, pixel), up = match_length(raw, size, at, row);
        int length = left >= up ? left : up;
        if (length >= 3) {
            put_match(&w, length, (int)(left >= up ? pixel : row));
            at += (size_t)length;
        } else {
            put_symbol(&w, raw[at++]);
        }
    }
    put_symbol(&w, 256);
    if (w.count) put_bits(&w, 0, 8 - w.count);  // the last byte, padded
    put_u32_big_endian(&z, adler32_update(1, raw, size));
    return z;
}

// Chapter 7's png_bytes, with the compressed stream in IDAT.
static ByteBuffer png_bytes_compressed(const Picture *p) {
    require(p->channels == 1 || p->channels == 3, "a PNG of %d channels", p->channels);
    size_t row_bytes = (size_t)p->width * p->channels, raw_size = (row_bytes + 1) * p->height;
    unsigned char *raw = xmalloc(raw_size);  // (height, 1 + width * channels), filter byte 0
    for (int y = 0; y < p->height; y++) {
        raw[y * (row_bytes + 1)] = 0;
        memcpy(raw + y * (row_bytes + 1) + 1, p->pixels + y * row_bytes, row_bytes);
    }
    ByteBuffer file = {0}, header = {0};
    put_bytes(&file, "\x89PNG\r\n\x1a\n", 8);
    put_u32_big_endian(&header, (uint32_t)p->width);
    put_u32_big_endian(&header, (uint32_t)p->height);
    unsigned char depth_and_kind[5] = {8, p->channels == 1 ? 0 : 2, 0, 0, 0};
    put_bytes(&header, depth_and_kind, 5);
    put_png_chunk(&file, "IHDR", header.bytes, header.used);
    ByteBuffer pixels = deflate_fixed(raw, raw_size, (size_t)p->channels, row_bytes + 1);
    put_png_chunk(&file, "IDAT", pixels.bytes, pixels.used);
    put_png_chunk(&file, "IEND", NULL, 0);
    free(raw);
    free(header.bytes);
    free(pixels.bytes);
    return file;
}

/* A picture of at most 16 colours as an indexed PNG (colour type 3): a
   PLTE chunk lists the colours, and each pixel is its colour's place in
   the list, 4 bits, two pixels a byte (the left one in the high bits).
   A third of an RGB file's bytes before any compression, which is what
   counts for noise-like pictures (weights), where matches are rare.
   Every pixel must be one of the palette's colours. */
static ByteBuffer png_bytes_indexed(const Picture *p, const unsigned char (*palette)[3], int colours) {
    require(p->channels == 3 && colours >= 1 && colours <= 16, "an indexed PNG of %d colours", colours);
    size_t row_bytes = ((size_t)p->width + 1) / 2, raw_size = (row_bytes + 1) * p->height;
    unsigned char *raw = xmalloc(raw_size);  // (height, 1 + row_bytes), filter byte 0
    memset(raw, 0, raw_size);
    for (int y = 0; y < p->height; y++)
        for (int x = 0; x < p->width; x++) {
            const unsigned char *pixel = p->pixels + ((size_t)y * p->width + x) * 3;
            int k = 0;
            while (k < colours && memcmp(palette[k], pixel, 3) != 0) k++;
            require(k < colours, "pixel (%d, %d) is not a colour of the palette", x, y);
            raw[y * (row_bytes + 1) + 1 + x / 2] |= (unsigned char)(x % 2 ? k : k << 4);
        }
    ByteBuffer file = {0}, header = {0};
    put_bytes(&file, "\x89PNG\r\n\x1a\n", 8);
    put_u32_big_endian(&header, (uint32_t)p->width);
    put_u32_big_endian(&header, (uint32_t)p->height);
    unsigned char depth_and_kind[5] = {4, 3, 0, 0, 0};  // 4 bits, indexed colour, deflate, filters, no interlace
    put_bytes(&header, depth_and_kind, 5);
    put_png_chunk(&file, "IHDR", header.bytes, header.used);
    put_png_chunk(&file, "PLTE", palette[0], 3 * (size_t)colours);
    ByteBuffer pixels = deflate_fixed(raw, raw_size, 1, row_bytes + 1);
    put_png_chunk(&file, "IDAT", pixels.bytes, pixels.used);
    put_png_chunk(&file, "IEND", NULL, 0);
    free(raw);
    free(header.bytes);
    free(pixels.bytes);
    return file;
}

/* ---- Drawing: axes, lines, bars ------------------------------------------- */

static const unsigned char GREY[3] = {150, 150, 150}, LIGHT[3] = {225, 225, 225};
static const unsigned char BLUE[3] = {31, 94, 168}, ORANGE[3] = {222, 120, 20};

// A plot area: a rectangle of pixels and the data ranges it shows.
typedef struct {
    int left, top, width, height;
    double x0, x1, y0, y1;
} Axes;

static int to_x(const Axes *a, double x) { return a->left + (int)lround((x - a->x0) / (a->x1 - a->x0) * (a->width - 1)); }
static int to_y(const Axes *a, double y) {
    return a->top + a->height - 1 - (int)lround((y - a->y0) / (a->y1 - a->y0) * (a->height - 1));
}

static int text_width(const char *text) { return (int)strlen(text) * GLYPH_ADVANCE - 1; }

// A line from (x0, y0) to (x1, y1), `thick` pixels square at each step.
static void draw_line(Picture *p, int x0, int y0, int x1, int y1, int thick, const unsigned char *colour) {
    int steps = abs(x1 - x0) > abs(y1 - y0) ? abs(x1 - x0) : abs(y1 - y0);
    for (int i = 0; i <= steps; i++) {
        double t = steps ? (double)i / steps : 0;
        picture_put(p, (int)lround(x0 + t * (x1 - x0)) - thick / 2, (int)lround(y0 + t * (y1 - y0)) - thick / 2,
                    thick, colour);
    }
}

static void draw_ring(Picture *p, int cx, int cy, int radius, const unsigned char *colour) {
    for (int dy = -radius - 1; dy <= radius + 1; dy++)
        for (int dx = -radius - 1; dx <= radius + 1; dx++) {
            double d = sqrt((double)(dx * dx + dy * dy));
            if (fabs(d - radius) < 0.9) picture_put(p, cx + dx, cy + dy, 1, colour);
        }
}

// The frame, and tick labels on the x axis every `x_step` and on the
// y axis every `y_step` (0: none), with `decimals` digits.
static void draw_axes(Picture *p, const Axes *a, double x_step, double y_step, int decimals) {
    for (double y = a->y0; y_step > 0 && y <= a->y1 + 1e-9; y += y_step) {
        char label[32];
        snprintf(label, sizeof label, "%.*f", decimals, y);
        fill_rectangle(p, a->left, to_y(a, y), a->width, 1, LIGHT);
        picture_draw_text(p, a->left - 4 - text_width(label), to_y(a, y) - 3, 1, label, BLACK);
    }
    double first_x = x_step > 0 ? ceil(a->x0 / x_step - 1e-9) * x_step : a->x1 + 1;
    for (double x = first_x; x <= a->x1 + 1e-9; x += x_step) {
        char label[32];
        snprintf(label, sizeof label, "%g", fabs(x) < 1e-9 ? 0.0 : x);
        fill_rectangle(p, to_x(a, x), a->top + a->height, 1, 4, BLACK);
        picture_draw_text(p, to_x(a, x) - text_width(label) / 2, a->top + a->height + 6, 1, label, BLACK);
    }
    fill_rectangle(p, a->left, a->top + a->height, a->width, 1, BLACK);
    fill_rectangle(p, a->left - 1, a->top, 1, a->height + 1, BLACK);
}

/* ---- Shared: options, the data, the files ---------------------------------- */

typedef struct {
    int quick;
    const char *out, *data_dir, *checkpoints;
} FigureOptions;

static int figure_written = 0;

// Writes DIR/NAME as a compressed PNG, indexed when `palette` is not NULL, and says so.
static int save_figure_indexed(const Picture *p, const unsigned char (*palette)[3], int colours, const FigureOptions *fo,
                               const char *name, Error *err) {
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", fo->out, name);
    ByteBuffer b = palette ? png_bytes_indexed(p, palette, colours) : png_bytes_compressed(p);
    int status = write_file_atomically(path, b.bytes, b.used, err);
    if (!status) printf("wrote %s (%dx%d, %zu bytes)\n", path, p->width, p->height, b.used), figure_written++;
    fflush(stdout);
    free(b.bytes);
    return status;
}

static int save_figure(const Picture *p, const FigureOptions *fo, const char *name, Error *err) {
    return save_figure_indexed(p, NULL, 0, fo, name, err);
}

static Batch batch_of(const Dataset *d, int first, int count) {
    return (Batch){.images = d->images + (size_t)first * IMAGE_SIZE, .targets = d->targets + (size_t)first * NUM_CLASSES,
                   .count = count};
}

static const Node *find_node(const Graph *g, int op, const Node *input, size_t item_size) {
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        if (n->op == &OPS[op] && (!input || n->inputs[0] == input) && (!item_size || n->item_size == item_size)) return n;
    }
    return NULL;
}

/* ---- Chapter 5: batch normalisation, seen in a histogram -------------------

   The deeper CNN's dense layer of 256 units (section 5.8), on one batch of
   64 validation images, in training mode: what its ReLU receives. Without
   batch norm, that is the layer's output; with it, the output is first
   normalised, unit by unit, over the batch. Measured before any training
   step and after `steps` of them. */

enum { HIST_BINS = 64, HIST_BATCH = 64, DENSE_UNITS = 256 };

typedef struct {
    float before[HIST_BATCH * DENSE_UNITS];  // the dense layer's output
    float after[HIST_BATCH * DENSE_UNITS];   // what the ReLU receives (batch norm's output, or the same)
} LayerValues;

// One forward and backward pass in training mode on `batch`, which
// changes neither the weights nor (restored here) the running averages.
static void measure_layer(GraphClassifier *net, const Batch *batch, LayerValues *v) {
    Graph *g = net->graph;
    float probs[HIST_BATCH * NUM_CLASSES], *state = xmalloc(g->state_count * sizeof(float) + 1);
    memcpy(state, g->state, g->state_count * sizeof(float));
    memset(g->grads, 0, g->param_count * sizeof(float));
    graph_compute_gradients(net, batch, probs);
    memcpy(g->state, state, g->state_count * sizeof(float));
    free(state);
    const Node *dense = find_node(g, OP_BIAS_ADD, NULL, DENSE_UNITS);
    const Node *bn = find_node(g, OP_BATCH_NORM, dense, 0);
    require(dense != NULL, "the deeper CNN has a dense layer of %d units", DENSE_UNITS);
    memcpy(v->before, dense->value, sizeof v->before);
    memcpy(v->after, (bn ? bn : dense)->value, sizeof v->after);
}

// Trains `steps` steps of the protocol (Adam, batch 64, seed 1) on the
// first images of the training set, measuring before and after.
static int train_and_measure(DeeperParts parts, const Dataset *train, const Batch *probe, int steps,
                             GemmContext *gemm, LayerValues out[2], Error *err) {
    GraphClassifier net = deeper_cnn_graph(HIST_BATCH, 1, parts);
    net.graph->kernel = KERNEL_BLOCKED, net.graph->gemm = gemm;
    Model m = graph_model(&net, parts.with_batch_norm ? "deeper" : "deeper-nobn");
    measure_layer(&net, probe, &out[0]);
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 1e-3f, m.count);
    opt.workers = m.workers;
    Dataset few = dataset_slice(train, 0, steps * HIST_BATCH < train->count ? steps * HIST_BATCH : train->count);
    Trainer t = trainer_new(&m, &opt, &few, HIST_BATCH, 1);
    EpochState s = {0};
    Progress progress = {.terminal = stdout_is_terminal(), .start = now_seconds(), .total = few.count};
    printf("%s: %d training steps\n", m.name, steps);
    int status = train_epoch(&t, 1, 1, &s, &progress, NULL, err);
    if (progress.terminal) printf("\n");
    if (!status) measure_layer(&net, probe, &out[1]);
    trainer_free(&t);
    optimizer_free(&opt);
    net.graph->gemm = NULL;  // the caller's, not the graph's to free
    graph_free(net.graph);
    return status;
}

static void histogram(const float *values, int n, double low, double high, double counts[HIST_BINS]) {
    memset(counts, 0, HIST_BINS * sizeof(double));
    for (int i = 0; i < n; i++) {
        int bin = (int)floor((values[i] - low) / (high - low) * HIST_BINS);
        counts[bin < 0 ? 0 : bin >= HIST_BINS ? HIST_BINS - 1 : bin] += 1.0 / n;
    }
}

static void mean_and_sd(const float *values, int n, double *mean, double *sd) {
    double sum = 0, squares = 0;
    for (int i = 0; i < n; i++) sum += values[i];
    *mean = sum / n;
    for (int i = 0; i < n; i++) squares += (values[i] - *mean) * (values[i] - *mean);
    *sd = sqrt(squares / n);
}

// The largest |value| but the top 0.5% of them: what a row's axis shows.
static int compare_floats(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double typical_extent(const float *values, int n) {
    float *magnitudes = xmalloc((size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) magnitudes[i] = fabsf(values[i]);
    qsort(magnitudes, (size_t)n, sizeof(float), compare_floats);
    double extent = magnitudes[n - 1 - n / 200];
    free(magnitudes);
    return extent;
}

// The smallest 1, 2 or 5 times a power of ten that is at least `x`.
static double nice_ceiling(double x) {
    double power = pow(10, floor(log10(x)));
    return x <= power ? power : x <= 2 * power ? 2 * power : x <= 5 * power ? 5 * power : 10 * power;
}

// One panel: `back` as bars, in grey when `front` is drawn over it as a
// coloured outline; their means and standard deviations above.
static void draw_histogram_panel(Picture *p, const Axes *a, const float *back, const float *front,
                                 const unsigned char *colour, const char *title) {
    int n = HIST_BATCH * DENSE_UNITS, bar = a->width / HIST_BINS, bottom = a->top + a->height - 1;
    double counts[HIST_BINS], mean, sd;
    histogram(back, n, a->x0, a->x1, counts);
    draw_axes(p, a, a->x1 / 2, 0, 0);
    for (int b = 0; b < HIST_BINS; b++) {
        int top = to_y(a, counts[b] < a->y1 ? counts[b] : a->y1);
        fill_rectangle(p, a->left + b * bar, top, bar - 1, bottom + 1 - top, front ? GREY : colour);
    }
    char line[96];
    picture_draw_text(p, a->left, a->top - 36, 1, title, BLACK);
    mean_and_sd(back, n, &mean, &sd);
    snprintf(line, sizeof line, "%smean %.2f, sd %.2f", front ? "grey, before batch norm: " : "", mean, sd);
    picture_draw_text(p, a->left, a->top - (front ? 24 : 12), 1, line, front ? BLACK : colour);
    if (!front) return;
    histogram(front, n, a->x0, a->x1, counts);
    int last = bottom;
    for (int b = 0; b < HIST_BINS; b++) {
        int y = to_y(a, counts[b] < a->y1 ? counts[b] : a->y1);
        draw_line(p, a->left + b * bar, last, a->left + b * bar, y, 2, colour);
        draw_line(p, a->left + b * bar, y, a->left + (b + 1) * bar, y, 2, colour);
        last = y;
    }
    draw_line(p, a->left + HIST_BINS * bar, last, a->left + HIST_BINS * bar, bottom, 2, colour);
    mean_and_sd(front, n, &mean, &sd);
    snprintf(line, sizeof line, "outline, after: mean %.2f, sd %.2f", mean, sd);
    picture_draw_text(p, a->left, a->top - 12, 1, line, colour);
}

static int batch_norm_figure(const FigureOptions *fo, const FashionMnist *data, GemmContext *gemm, Error *err) {
    int steps = fo->quick ? 4 : 200, n = HIST_BATCH * DENSE_UNITS;
    Batch probe = batch_of(&data->validation, 0, HIST_BATCH);
    LayerValues *without = xmalloc(2 * sizeof *without), *with = xmalloc(2 * sizeof *with);
    int status = train_and_measure((DeeperParts){0, 1}, &data->train, &probe, steps, gemm, without, err);
    if (!status) status = train_and_measure((DeeperParts){1, 1}, &data->train, &probe, steps, gemm, with, err);
    if (!status) {
        enum { PANEL_W = 320, PANEL_H = 120, LEFT = 40, TOP = 84, GAP_X = 50, GAP_Y = 84 };
        Picture p = picture_new(LEFT + 2 * PANEL_W + GAP_X + 20, TOP + 2 * PANEL_H + GAP_Y + 24, 3, 255);
        picture_draw_text(&p, 8, 8, 1, "the deeper CNN's dense layer of 256 units, over a batch of 64 validation images", BLACK);
        picture_draw_text(&p, 8, 20, 1, "(16,384 values; bars: the share of them in each bin; each row has its own scale)", GREY);
        for (int row = 0; row < 2; row++) {
            const LayerValues *v = row == 0 ? without : with;
            double extent = 0, tallest = 0, counts[HIST_BINS];
            for (int col = 0; col < 2; col++) {
                extent = fmax(extent, typical_extent(v[col].before, n));
                extent = fmax(extent, typical_extent(v[col].after, n));
            }
            extent = nice_ceiling(extent);
            for (int col = 0; col < 2; col++)
                for (int k = 0; k < 2; k++) {
                    histogram(k ? v[col].after : v[col].before, n, -extent, extent, counts);
                    for (int b = 0; b < HIST_BINS; b++) tallest = fmax(tallest, counts[b]);
                }
            for (int col = 0; col < 2; col++) {
                Axes a = {.left = LEFT + col * (PANEL_W + GAP_X), .top = TOP + row * (PANEL_H + GAP_Y),
                          .width = PANEL_W, .height = PANEL_H, .x0 = -extent, .x1 = extent, .y0 = 0, .y1 = 1.05 * tallest};
                char title[96];
                if (col == 0) snprintf(title, sizeof title, "%s, before training", row ? "with batch norm" : "without batch norm");
                else snprintf(title, sizeof title, "%s, after %d steps", row ? "with batch norm" : "without batch norm", steps);
                draw_histogram_panel(&p, &a, v[col].before, row == 0 ? NULL : v[col].after, row == 0 ? BLUE : ORANGE, title);
            }
        }
        status = save_figure(&p, fo, "bn-histograms.png", err);
        picture_free(&p);
    }
    free(without);
    free(with);
    return status;
}

/* ---- Chapter 5: dropout masks --------------------------------------------------

   The protocol's deeper CNN, its last dropout (rate 0.5, after the dense
   layer of 256): the mask of each of the first six images of a batch, as
   16 x 16 squares, white kept and black dropped, at step 0 and at step 1;
   then step 0 again, in a second network built from the same seed. The
   key is (seed, step, node, place in the batch), so the third column is
   the first, and no two places or steps share a mask. */

enum { MASK_IMAGES = 6, MASK_CELL = 4 };

// The masks of a training step. Dropout saves none (book.md 5.6): they are
// drawn again from the streams the step's forward pass drew them from.
static void dropout_masks(GraphClassifier *net, const Batch *batch, float *masks /* (MASK_IMAGES, DENSE_UNITS) */) {
    float probs[MASK_IMAGES * NUM_CLASSES];
    memset(net->graph->grads, 0, net->graph->param_count * sizeof(float));
    graph_compute_gradients(net, batch, probs);
    const Node *dropout = find_node(net->graph, OP_DROPOUT, NULL, DENSE_UNITS);
    require(dropout != NULL, "the deeper CNN has a dropout after its dense layer of %d units", DENSE_UNITS);
    float keep = 1.0f / (1.0f - dropout->rate);
    for (int i = 0; i < MASK_IMAGES; i++) {
        Rng rng = dropout_stream(net->graph, dropout, i);
        for (int u = 0; u < DENSE_UNITS; u++) masks[i * DENSE_UNITS + u] = dropout_factor(rng_uniform(&rng), dropout->rate, keep);
    }
}

static int dropout_figure(const FigureOptions *fo, const FashionMnist *data, GemmContext *gemm, Error *err) {
    enum { GRID = 16, MASK = GRID * MASK_CELL, COLUMN = MASK + 24, ROW = MASK + 14, LEFT = 74, TOP = 62 };
    float masks[3][MASK_IMAGES * DENSE_UNITS];
    for (int k = 0; k < 3; k++) {
        GraphClassifier net = deeper_cnn_graph(MASK_IMAGES, 1, (DeeperParts){1, 1});
        net.graph->kernel = KERNEL_BLOCKED, net.graph->gemm = gemm;
        Batch batch = batch_of(&data->train, 0, MASK_IMAGES);
        batch.step = k == 1;
        dropout_masks(&net, &batch, masks[k]);
        net.graph->gemm = NULL;
        graph_free(net.graph);
    }
    Picture p = picture_new(LEFT + 3 * COLUMN + 70, TOP + MASK_IMAGES * ROW + 8, 3, 255);
    picture_draw_text(&p, 8, 8, 1, "the deeper CNN's last dropout: 256 units, rate 0.5", BLACK);
    picture_draw_text(&p, 8, 20, 1, "each square a unit; white: kept (times 2), black: dropped", GREY);
    static const char *const heads[3] = {"step 0", "step 1", "step 0, again"};
    for (int k = 0; k < 3; k++) picture_draw_text(&p, LEFT + k * COLUMN, TOP - 14, 1, heads[k], BLACK);
    picture_draw_text(&p, LEFT + 3 * COLUMN, TOP - 26, 1, "dropped at", BLACK);
    picture_draw_text(&p, LEFT + 3 * COLUMN, TOP - 14, 1, "step 0, 1", BLACK);
    for (int i = 0; i < MASK_IMAGES; i++) {
        int y = TOP + i * ROW;
        char place[16];
        snprintf(place, sizeof place, "%d", i);
        picture_draw_text(&p, 4, y + MASK / 2 - 3, 1, place, BLACK);
        picture_draw_image(&p, 14, y + (MASK - 56) / 2, 2, data->train.images + (size_t)i * IMAGE_SIZE);
        char count[64] = "";
        for (int k = 0; k < 3; k++) {
            int dropped = 0;
            for (int u = 0; u < DENSE_UNITS; u++) {
                int kept = masks[k][i * DENSE_UNITS + u] != 0;
                dropped += !kept;
                fill_rectangle(&p, LEFT + k * COLUMN + u % GRID * MASK_CELL, y + u / GRID * MASK_CELL, MASK_CELL, MASK_CELL,
                               kept ? WHITE : BLACK);
            }
            fill_rectangle(&p, LEFT + k * COLUMN - 1, y - 1, MASK + 2, 1, GREY);
            fill_rectangle(&p, LEFT + k * COLUMN - 1, y + MASK, MASK + 2, 1, GREY);
            fill_rectangle(&p, LEFT + k * COLUMN - 1, y - 1, 1, MASK + 2, GREY);
            fill_rectangle(&p, LEFT + k * COLUMN + MASK, y - 1, 1, MASK + 2, GREY);
            if (k < 2) snprintf(count + strlen(count), sizeof count - strlen(count), "%s%d", k ? ", " : "", dropped);
        }
        picture_draw_text(&p, LEFT + 3 * COLUMN, y + MASK / 2 - 3, 1, count, BLACK);
    }
    int status = save_figure(&p, fo, "dropout-masks.png", err);
    picture_free(&p);
    return status;
}

/* ---- Chapter 6: the curves of an early-stopped run -----------------------------

   Section 6.1's run, `./chapter6 --model basic --limit 3200`: the basic
   CNN on the first 3,200 training images, by the protocol (at most 30
   epochs, patience 3), with its checkpoints in --checkpoints. Two panels,
   loss and accuracy, training in grey and validation in blue, the best
   epoch's validation loss ringed. */

static void draw_series(Picture *p, const Axes *a, const float *values, int n, double scale, const unsigned char *colour) {
    for (int e = 1; e < n; e++)
        draw_line(p, to_x(a, e), to_y(a, scale * values[e - 1]), to_x(a, e + 1), to_y(a, scale * values[e]), 2, colour);
    for (int e = 0; e < n; e++) picture_put(p, to_x(a, e + 1) - 2, to_y(a, scale * values[e]) - 2, 5, colour);
}

static int early_stopping_figure(const FigureOptions *fo, FashionMnist *data, GemmContext *gemm, Error *err) {
    // Section 6.1's command line, parsed by the chapter's own parser.
    char *words[] = {"chapter6", "--limit", fo->quick ? "640" : "3200", "--checkpoints",
                     (char *)fo->checkpoints, "--epochs", fo->quick ? "4" : "30"};
    Options o;
    int status = parse_options((int)(sizeof words / sizeof words[0]), words, &o, err);
    o.model = "basic";  // chapter 7 takes --models; this is chapter 6's --model basic
    if (!status) status = make_directory(o.checkpoints, "--checkpoints", err);
    if (status) return status;
    printf("the basic CNN on %d images, by the protocol (section 6.1)\n", o.limit);
    GraphClassifier net = build_model(o.model, o.batch, (uint64_t)o.seed, KERNEL_BLOCKED, gemm);
    Model m = graph_model(&net, o.model);
    History *h = NULL;
    Result result;
    status = fit_and_test(&m, data, &o, &h, &result, err);
    net.graph->gemm = NULL;
    graph_free(net.graph);
    if (status) {
        history_free(h);
        return status;
    }
    int epochs = h->epochs, best = result.best_epoch;
    float high = 0, low = 1e9f, accuracy_low = 1;
    for (int e = 0; e < epochs; e++) {
        high = fmaxf(high, fmaxf(h->train_loss[e], h->validation_loss[e]));
        low = fminf(low, fminf(h->train_loss[e], h->validation_loss[e]));
        accuracy_low = fminf(accuracy_low, fminf(h->train_accuracy[e], h->validation_accuracy[e]));
    }
    enum { PANEL_W = 300, PANEL_H = 200, LEFT = 44, TOP = 62, GAP = 70 };
    Picture p = picture_new(LEFT + 2 * PANEL_W + GAP + 16, TOP + PANEL_H + 50, 3, 255);
    char line[160];
    snprintf(line, sizeof line, "the basic CNN on %d training images: %s after epoch %d; the best was epoch %d",
             o.limit, epochs < o.epochs ? "early stopping" : "--epochs reached", epochs, best);
    picture_draw_text(&p, 8, 8, 1, line, BLACK);
    int x = picture_draw_text(&p, 8, 22, 1, "grey: training (each epoch's mean, as it trained); ", GREY);
    x = picture_draw_text(&p, x, 22, 1, "blue: validation; ", BLUE);
    picture_draw_text(&p, x, 22, 1, "orange: the best epoch", ORANGE);
    double x_end = epochs + 0.5, loss_top = ceil(high * 10) / 10, loss_bottom = floor(low * 10) / 10;
    double accuracy_bottom = floor(accuracy_low * 20) / 20 * 100;
    Axes loss = {LEFT, TOP, PANEL_W, PANEL_H, 0.5, x_end, loss_bottom, loss_top};
    Axes accuracy = {LEFT + PANEL_W + GAP, TOP, PANEL_W, PANEL_H, 0.5, x_end, accuracy_bottom, 100};
    draw_axes(&p, &loss, 1, loss_top - loss_bottom > 0.6 ? 0.2 : 0.1, 1);
    draw_axes(&p, &accuracy, 1, 5, 0);
    picture_draw_text(&p, LEFT, TOP - 14, 1, "loss", BLACK);
    picture_draw_text(&p, LEFT + PANEL_W + GAP, TOP - 14, 1, "accuracy (%)", BLACK);
    fill_rectangle(&p, to_x(&loss, best), TOP, 1, PANEL_H, ORANGE);
    fill_rectangle(&p, to_x(&accuracy, best), TOP, 1, PANEL_H, ORANGE);
    draw_series(&p, &loss, h->train_loss, epochs, 1, GREY);
    draw_series(&p, &loss, h->validation_loss, epochs, 1, BLUE);
    draw_series(&p, &accuracy, h->train_accuracy, epochs, 100, GREY);
    draw_series(&p, &accuracy, h->validation_accuracy, epochs, 100, BLUE);
    draw_ring(&p, to_x(&loss, best), to_y(&loss, h->validation_loss[best - 1]), 7, ORANGE);
    snprintf(line, sizeof line, "best: epoch %d, %.4f", best, h->validation_loss[best - 1]);
    picture_draw_text(&p, to_x(&loss, best) + 4 + text_width(line) > LEFT + PANEL_W ? to_x(&loss, best) - 4 - text_width(line)
                      : to_x(&loss, best) + 4, TOP + 4, 1, line, ORANGE);
    picture_draw_text(&p, LEFT + PANEL_W / 2 - 15, TOP + PANEL_H + 24, 1, "epoch", BLACK);
    picture_draw_text(&p, LEFT + PANEL_W + GAP + PANEL_W / 2 - 15, TOP + PANEL_H + 24, 1, "epoch", BLACK);
    history_free(h);
    status = save_figure(&p, fo, "early-stopping-curves.png", err);
    picture_free(&p);
    return status;
}

/* ---- Chapter 2: what the ANN's first layer looks for ----------------------------

   The ANN of chapter 2 trained as ./chapter2 trains it (10 epochs, Adam,
   batch 64, seed 1), here on chapter 7's engine: its first layer's weight
   matrix is (784, 128), so column j, unit j's 784 weights, is a 28 x 28
   image, the pattern of pixels that drives unit j up. Blue is a negative
   weight, red a positive one, white 0; each tile is scaled to its own
   largest weight. 13 shades, so the picture fits an indexed PNG. */

enum { RAMP = 13, TILE = 28, TILE_GAP = 2, TILE_COLUMNS = 16 };

static void weight_palette(unsigned char palette[16][3]) {
    static const unsigned char blue[3] = {33, 102, 172}, red[3] = {178, 24, 43};
    for (int k = 0; k < RAMP; k++) {
        double t = (double)(k - RAMP / 2) / (RAMP / 2);  // -1 ... 1
        blend(palette[k], WHITE, t < 0 ? blue : red, fabs(t));
    }
    memcpy(palette[RAMP], BLACK, 3);
    memcpy(palette[RAMP + 1], GREY, 3);
}

static int ann_weights_figure(const FigureOptions *fo, const FashionMnist *data, GemmContext *gemm, Error *err) {
    int epochs = fo->quick ? 1 : 10;
    GraphClassifier net = build_model("ann", 64, 1, KERNEL_BLOCKED, gemm);
    Model m = graph_model(&net, "ann");
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 1e-3f, m.count);
    opt.workers = m.workers;
    const Dataset *train = &data->train;
    Dataset few = dataset_slice(train, 0, fo->quick && train->count > 640 ? 640 : train->count);
    Trainer t = trainer_new(&m, &opt, &few, 64, 1);
    Progress progress = {.terminal = stdout_is_terminal(), .start = now_seconds(), .total = (long)epochs * few.count};
    printf("the ANN on %d images, %d epoch%s (as ./chapter2)\n", few.count, epochs, epochs == 1 ? "" : "s");
    int status = 0;
    for (int epoch = 1; epoch <= epochs && !status; epoch++) {
        EpochState s = {0};
        status = train_epoch(&t, epoch, epochs, &s, &progress, NULL, err);
        if (!status) {
            Evaluation v = evaluate(&m, &data->validation);
            printf("%sepoch %d/%d  train loss %.4f accuracy %.2f%%  validation loss %.4f accuracy %.2f%%\n",
                   progress.terminal ? "\r" : "", epoch, epochs, s.loss_sum / s.seen, 100.0 * s.correct / s.seen,
                   v.loss, 100 * v.accuracy);
        }
    }
    trainer_free(&t);
    optimizer_free(&opt);
    if (!status) {
        const Node *weight = NULL;
        for (int i = 0; i < net.graph->count && !weight; i++)
            if (net.graph->nodes[i].is_parameter && strcmp(net.graph->nodes[i].label, "weight1") == 0) weight = &net.graph->nodes[i];
        require(weight && weight->shape[0] == IMAGE_SIZE, "the ANN's weight1 is (784, units)");
        int units = weight->shape[1], rows = (units + TILE_COLUMNS - 1) / TILE_COLUMNS, step = TILE + TILE_GAP, top = 34;
        unsigned char palette[16][3];
        weight_palette(palette);
        Picture p = picture_new(TILE_COLUMNS * step + TILE_GAP, top + rows * step, 3, 255);
        char line[128];
        snprintf(line, sizeof line, "the ANN's first layer after %d epoch%s: %d units, 784 weights each", epochs,
                 epochs == 1 ? "" : "s", units);
        picture_draw_text(&p, TILE_GAP, 6, 1, line, BLACK);
        picture_draw_text(&p, TILE_GAP, 18, 1, "blue: negative, red: positive, each tile to its own scale", palette[RAMP + 1]);
        for (int u = 0; u < units; u++) {
            float largest = 1e-12f;
            for (int i = 0; i < IMAGE_SIZE; i++) largest = fmaxf(largest, fabsf(weight->value[(size_t)i * units + u]));
            for (int i = 0; i < IMAGE_SIZE; i++) {
                float w = weight->value[(size_t)i * units + u] / largest;  // [pixel i][unit u], in [-1, 1]
                int k = RAMP / 2 + (int)lroundf(w * (RAMP / 2));
                picture_put(&p, TILE_GAP + u % TILE_COLUMNS * step + i % TILE, top + u / TILE_COLUMNS * step + i / TILE, 1,
                            palette[k]);
            }
        }
        status = save_figure_indexed(&p, (const unsigned char (*)[3])palette, RAMP + 2, fo, "ann-weights.png", err);
        picture_free(&p);
    }
    net.graph->gemm = NULL;
    graph_free(net.graph);
    return status;
}

/* ---- The program ---------------------------------------------------------------- */

static int parse_figure_options(int argc, char **argv, FigureOptions *fo) {
    *fo = (FigureOptions){0, NULL, "data", NULL};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--quick") == 0) fo->quick = 1;
        else if (strcmp(a, "--out") == 0 && i + 1 < argc) fo->out = argv[++i];
        else if (strcmp(a, "--data") == 0 && i + 1 < argc) fo->data_dir = argv[++i];
        else if (strcmp(a, "--checkpoints") == 0 && i + 1 < argc) fo->checkpoints = argv[++i];
        else {
            fprintf(stderr, "%s: unknown option %s\nusage: %s [--quick] [--out DIR] [--data DIR] [--checkpoints DIR]\n",
                    argv[0], a, argv[0]);
            return EXIT_USAGE;
        }
    }
    if (!fo->out) fo->out = fo->quick ? "build/figures-quick" : "figures";
    if (!fo->checkpoints) fo->checkpoints = fo->quick ? "build/figures-quick-checkpoints" : "build/figures-checkpoints";
    return 0;
}

// --quick: a few hundred images, as chapter 7's make_quick does.
static void make_figures_quick(FashionMnist *data) {
    if (data->validation.count > 500) data->validation.count = 500;
    if (data->test.count > 500) data->test.count = 500;
}

int figures_main(int argc, char **argv) {
    FigureOptions fo;
    int status = parse_figure_options(argc, argv, &fo);
    if (status) return status;
    Error err = {0};
    FashionMnist data;
    if (load_fashion_mnist(fo.data_dir, &data, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.message);
        return err.code;
    }
    if (fo.quick) make_figures_quick(&data);
    GemmContext *gemm = gemm_context_new(gemm_best_kernel(), online_cpus());
    double start = now_seconds();
    status = make_directory(fo.out, "--out", &err);
    if (!status) status = dropout_figure(&fo, &data, gemm, &err);
    if (!status) status = batch_norm_figure(&fo, &data, gemm, &err);
    if (!status) status = early_stopping_figure(&fo, &data, gemm, &err);
    if (!status) status = ann_weights_figure(&fo, &data, gemm, &err);
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    else printf("%d figures in %s, in %.0f s\n", figure_written, fo.out, now_seconds() - start);
    gemm_context_free(gemm);
    free_fashion_mnist(&data);
    return finish_output(argv[0], status);
}

#ifndef FIGURES_NO_MAIN
int main(int argc, char **argv) { return figures_main(argc, argv); }
#endif
