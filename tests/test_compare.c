/* test_compare.c - chapter 7: the comparison's statistics, pictures and
   options. McNemar's exact test against hand-computed cases (and an exact
   rational sum for small n); per-class precision, recall and F1 against a
   hand-made confusion matrix; the PNG writer against a decoder written here
   from the specification (its own table-driven CRC-32 and Adler-32, every
   chunk, the zlib header, every stored block); augmentation against the 50
   shifts and mirrors it may make; --models parsing; a chapter 6 checkpoint
   read by chapter 7.

   With arguments, `test_compare FILE...` checks files instead: each PPM's
   header and size, each PNG decoded and its CRCs and Adler sum verified,
   and each PNG equal to the PPM of the same name beside it. */
#include "check.h"

#define main chapter7_main
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter7.c"
#endif
#include CHAPTER_FILE
#undef main

/* ---- McNemar ---------------------------------------------------------------- */

// 2 * sum_{i <= min(b,c)} C(n,i) / 2^n by exact integer binomials (n <= 60).
static double mcnemar_by_counting(long b, long c) {
    long n = b + c, low = b < c ? b : c;
    unsigned long long coefficient = 1, sum = 0;
    for (long i = 0; i <= low; i++) {
        sum += coefficient;
        coefficient = coefficient * (unsigned long long)(n - i) / (unsigned long long)(i + 1);
    }
    return fmin(1.0, 2.0 * (double)sum / ldexp(1.0, (int)n));
}

static void test_mcnemar(void) {
    CHECK_NEAR(mcnemar_exact_p(0, 5), 0.0625, 1e-12);
    CHECK_NEAR(mcnemar_exact_p(1, 9), 22.0 / 1024, 1e-12);
    CHECK_NEAR(mcnemar_exact_p(10, 20), 2 * 0.049368573352694511, 1e-12);
    CHECK_NEAR(mcnemar_exact_p(7, 7), 1.0, 0);
    CHECK_NEAR(mcnemar_exact_p(0, 0), 1.0, 0);
    int all_agree = 1;
    for (long b = 0; b <= 30; b++)
        for (long c = 0; c <= 30; c++) {
            double p = mcnemar_exact_p(b, c), exact = mcnemar_by_counting(b, c);
            all_agree &= fabs(p - exact) <= 1e-10 * fmax(exact, 1e-300) + 1e-15 && p == mcnemar_exact_p(c, b);
        }
    CHECK(all_agree);
    // Large n, beyond exact integers: 2 * sum_{i<=200} C(600,i) / 2^600,
    // summed exactly with Python's integers.
    CHECK_NEAR(mcnemar_exact_p(200, 400) / 2.3925776987708647e-16, 1, 1e-9);
    CHECK(mcnemar_exact_p(0, 3000) >= 0 && mcnemar_exact_p(1500, 1500) == 1);
}

/* ---- Per-class figures ------------------------------------------------------ */

static void test_class_figures(void) {
    Evaluation e = {0};
    for (int k = 0; k < NUM_CLASSES; k++) e.confusion[k][k] = 10;
    e.confusion[0][0] = 8, e.confusion[0][1] = 2;  // class 0: 8 found, 2 called class 1
    e.confusion[1][1] = 6, e.confusion[1][0] = 4;  // class 1: 6 found, 4 called class 0
    e.confusion[9][9] = 0, e.confusion[9][8] = 5;  // class 9: never predicted, never right
    ClassFigures f = class_figures(&e);
    CHECK_NEAR(f.precision[0], 8.0 / 12, 1e-12);
    CHECK_NEAR(f.recall[0], 0.8, 1e-12);
    CHECK_NEAR(f.f1[0], 2 * (8.0 / 12) * 0.8 / (8.0 / 12 + 0.8), 1e-12);
    CHECK_NEAR(f.precision[1], 0.75, 1e-12);
    CHECK_NEAR(f.recall[1], 0.6, 1e-12);
    CHECK_NEAR(f.f1[1], 2 * 0.75 * 0.6 / 1.35, 1e-12);
    CHECK_NEAR(f.precision[8], 10.0 / 15, 1e-12);
    CHECK_NEAR(f.recall[8], 1, 1e-12);
    CHECK_NEAR(f.precision[9], 0, 0);  // no image was called class 9: 0, not a division by zero
    CHECK_NEAR(f.f1[9], 0, 0);
    double sum = 0;
    for (int k = 0; k < NUM_CLASSES; k++) sum += f.f1[k];
    CHECK_NEAR(f.macro_f1, sum / NUM_CLASSES, 1e-12);
}

/* ---- A PNG decoder, from the specification ---------------------------------- */

static uint32_t crc_table[256];

static uint32_t reference_crc32(const unsigned char *p, size_t n) {
    if (!crc_table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static uint32_t reference_adler32(const unsigned char *p, size_t n) {
    uint64_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) a = (a + p[i]) % 65521, b = (b + a) % 65521;
    return (uint32_t)(b << 16 | a);
}

static uint32_t big32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

// Decodes a PNG of 8-bit grey or RGB made of stored blocks into *out
// (pixels malloc'd). Returns NULL, or what is wrong.
static const char *decode_png(const unsigned char *file, size_t size, Picture *out) {
    if (size < 8 || memcmp(file, "\x89PNG\r\n\x1a\n", 8) != 0) return "no PNG signature";
    unsigned char *z = NULL;
    size_t z_size = 0, at = 8;
    int width = 0, height = 0, channels = 0, ended = 0;
    while (!ended) {
        if (at + 12 > size) return free(z), "a chunk runs past the end";
        uint32_t length = big32(file + at);
        if (length > size - at - 12) return free(z), "a chunk's length runs past the end";
        const unsigned char *type = file + at + 4, *data = file + at + 8;
        if (big32(data + length) != reference_crc32(type, length + 4)) return free(z), "a chunk's CRC is wrong";
        if (!memcmp(type, "IHDR", 4)) {
            if (length != 13 || data[8] != 8 || (data[9] != 0 && data[9] != 2) || data[10] || data[11] || data[12])
                return free(z), "IHDR is not 8-bit grey or RGB, deflate, no interlace";
            width = (int)big32(data), height = (int)big32(data + 4), channels = data[9] == 0 ? 1 : 3;
        } else if (!memcmp(type, "IDAT", 4)) {
            z = realloc(z, z_size + length);
            memcpy(z + z_size, data, length);
            z_size += length;
        } else if (!memcmp(type, "IEND", 4)) ended = 1;
        else return free(z), "an unexpected chunk";
        at += 12 + length;
    }
    if (at != size) return free(z), "bytes after IEND";
    if (!width || z_size < 6 || (z[0] * 256 + z[1]) % 31 != 0 || (z[0] & 0x0F) != 8) return free(z), "a bad zlib header";
    size_t row = (size_t)width * channels + 1, raw_size = row * height, got = 0, zat = 2;
    unsigned char *raw = malloc(raw_size + 1);
    int last = 0;
    while (!last) {
        if (zat + 5 > z_size) return free(z), free(raw), "deflate runs past the end";
        last = z[zat] & 1;
        if ((z[zat] >> 1 & 3) != 0) return free(z), free(raw), "not a stored block";
        unsigned len = z[zat + 1] | z[zat + 2] << 8, nlen = z[zat + 3] | z[zat + 4] << 8;
        if ((len ^ 0xFFFFu) != nlen) return free(z), free(raw), "NLEN is not ~LEN";
        if (zat + 5 + len > z_size || got + len > raw_size) return free(z), free(raw), "a stored block too long";
        memcpy(raw + got, z + zat + 5, len);
        got += len, zat += 5 + len;
    }
    if (got != raw_size || zat + 4 != z_size) return free(z), free(raw), "the pixel data has the wrong size";
    if (big32(z + zat) != reference_adler32(raw, raw_size)) return free(z), free(raw), "the Adler-32 is wrong";
    *out = picture_new(width, height, channels, 0);
    for (int y = 0; y < height; y++) {
        if (raw[y * row] != 0) return free(z), free(raw), picture_free(out), "a row filter other than none";
        memcpy(out->pixels + (size_t)y * (row - 1), raw + y * row + 1, row - 1);
    }
    free(z), free(raw);
    return NULL;
}

static void test_png(void) {
    const unsigned char *wiki = (const unsigned char *)"Wikipedia";
    CHECK_EQ_INT(adler32_update(1, wiki, 9), 0x11E60398);  // the published example
    CHECK_EQ_INT(adler32_update(adler32_update(1, wiki, 4), wiki + 4, 5), 0x11E60398);
    // Grey and colour; one small, one whose rows need several stored blocks.
    static const int sizes[][3] = {{3, 2, 1}, {1, 1, 3}, {300, 100, 3}, {257, 300, 1}};
    for (int s = 0; s < 4; s++) {
        Picture p = picture_new(sizes[s][0], sizes[s][1], sizes[s][2], 0);
        for (size_t i = 0; i < (size_t)p.width * p.height * p.channels; i++) p.pixels[i] = (unsigned char)(i * 7 + i / 251);
        ByteBuffer b = png_bytes(&p);
        Picture back = {0};
        const char *wrong = decode_png(b.bytes, b.used, &back);
        if (!CHECK(wrong == NULL)) printf("     %dx%dx%d: %s\n", p.width, p.height, p.channels, wrong);
        else CHECK(back.width == p.width && back.height == p.height && back.channels == p.channels &&
                   memcmp(back.pixels, p.pixels, (size_t)p.width * p.height * p.channels) == 0);
        // Any flipped byte past the signature is caught by a CRC or a check.
        int caught = 1;
        for (size_t i = 8; i < b.used; i += 1 + b.used / 97) {
            b.bytes[i] ^= 0x10;
            Picture junk = {0};
            const char *damage = decode_png(b.bytes, b.used, &junk);
            caught &= damage != NULL;
            if (!damage) picture_free(&junk);
            b.bytes[i] ^= 0x10;
        }
        CHECK(caught);
        picture_free(&back);
        picture_free(&p);
        free(b.bytes);
    }
}

/* ---- Augmentation ------------------------------------------------------------ */

static void test_augment(void) {
    float image[IMAGE_SIZE] = {0};
    // An asymmetric shape in the middle: any shift of up to 2 keeps it whole.
    for (int r = 6; r < 20; r++)
        for (int c = 8; c < 14 + r / 3; c++) image[r * IMAGE_COLS + c] = (float)(r * 31 + c) / 1000;
    int all_legal = 1, moved = 0, mirrored = 0, repeatable = 1;
    for (int item = 0; item < 200; item++) {
        float out[IMAGE_SIZE], again[IMAGE_SIZE];
        memcpy(out, image, sizeof out), memcpy(again, image, sizeof again);
        augment_image(out, 7, 3, item);
        augment_image(again, 7, 3, item);
        repeatable &= memcmp(out, again, sizeof out) == 0;
        int legal = 0;
        for (int dy = -2; dy <= 2; dy++)
            for (int dx = -2; dx <= 2; dx++)
                for (int mirror = 0; mirror < 2; mirror++) {
                    int same = 1;
                    for (int r = 0; r < IMAGE_ROWS && same; r++)
                        for (int c = 0; c < IMAGE_COLS && same; c++) {
                            int sr = r - dy, sc = mirror ? IMAGE_COLS - 1 - (c - dx) : c - dx;
                            float want = sr >= 0 && sr < IMAGE_ROWS && sc >= 0 && sc < IMAGE_COLS ? image[sr * IMAGE_COLS + sc] : 0;
                            same = out[r * IMAGE_COLS + c] == want;
                        }
                    if (same && !legal) legal = 1, moved += dx || dy, mirrored += mirror;
                }
        all_legal &= legal;
    }
    CHECK(repeatable);
    CHECK(all_legal);
    CHECK(moved > 150 && mirrored > 70 && mirrored < 130);  // 24 in 25 move; half are mirrored
    float a[IMAGE_SIZE], b[IMAGE_SIZE];
    int differs = 0;
    for (int item = 0; item < 20; item++) {
        memcpy(a, image, sizeof a), memcpy(b, image, sizeof b);
        augment_image(a, 7, 3, item), augment_image(b, 7, 4, item);
        differs += memcmp(a, b, sizeof a) != 0;
    }
    CHECK(differs >= 15);  // another epoch, another draw
}

/* ---- --models --------------------------------------------------------------------- */

static void test_model_list(void) {
    char names[MAX_MODELS][MODEL_NAME_SIZE];
    Error err = {0};
    CHECK_EQ_INT(split_model_list("ann,basic,deeper", names, &err), 3);
    CHECK(strcmp(names[2], "deeper") == 0);
    CHECK_EQ_INT(split_model_list("deeper-nobn", names, &err), 1);
    CHECK_EQ_INT(split_model_list("ann,basic,deeper,deeper-nodropout,deeper-nobn", names, &err), 5);
    static const char *const bad[] = {"", "ann,", ",ann", "ann,,basic", "ann,ann", "cnn", "basic,deeper,basic",
                                      "ann,basic,deeper,deeper-nodropout,deeper-nobn,ann",
                                      "a-model-name-far-too-long-to-be-any"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = (Error){0};
        int n = split_model_list(bad[i], names, &err);
        if (!CHECK(n == -1 && err.code == EXIT_USAGE && strstr(err.message, "--models"))) printf("     '%s'\n", bad[i]);
    }
}

/* ---- A chapter 6 checkpoint, read by chapter 7 ------------------------------------- */

// A chapter 6 file is chapter 7's with 6 in the header and no --augment in
// RUN: made here by editing one, and resealing the RUN section's CRC.
static void test_reads_chapter6(void) {
    GraphClassifier net = build_model("ann", 4, 1, KERNEL_NAIVE, NULL);
    Graph *g = net.graph;
    History *h = history_new(1, 1);
    Options o = default_options();
    o.model = "ann", o.learning_rate = 0.001;  // what parse_options sets
    DataKey data = {.train_count = 54000, .validation_count = 6000, .crc = 0x5eed5eedu};
    RunSnapshot s = {.key = run_key(&o, data), .run = {.stopping = early_stopping_new(3)}, .history = h, .params = g->params,
                     .state = g->state, .best_params = g->params, .best_state = g->state};
    ByteBuffer file = checkpoint_bytes(g, &s);
    CheckpointFile f = {.path = "made-by-chapter-6", .bytes = file.bytes, .size = file.used};
    Error err = {0};
    if (!CHECK(check_checkpoint(&f, &err) == 0 && f.key.augment == 0)) printf("     %s\n", err.message);
    // RUN starts at 16: tag, length, payload (ends with the 4 bytes of augment, then the 12 of
    // the data), CRC.
    size_t run_length = (size_t)file.bytes[20] | (size_t)file.bytes[21] << 8;
    unsigned char *old = malloc(file.used);
    size_t used = 0;
    memcpy(old, file.bytes, 16 + 8 + run_length - 16), used = 16 + 8 + run_length - 16;
    memcpy(old + used, file.bytes + 16 + 8 + run_length - 12, 12), used += 12;
    old[8] = 6;
    old[20] = (unsigned char)(run_length - 4), old[21] = (unsigned char)((run_length - 4) >> 8);
    uint32_t crc = reference_crc32(old + 16, used - 16);
    for (int i = 0; i < 4; i++) old[used++] = (unsigned char)(crc >> 8 * i);
    size_t rest = 16 + 8 + run_length + 4;
    memcpy(old + used, file.bytes + rest, file.used - rest), used += file.used - rest;
    CheckpointFile six = {.path = "chapter6.ckpt", .bytes = old, .size = used};
    if (!CHECK(check_checkpoint(&six, &err) == 0)) printf("     %s\n", err.message);
    CHECK(strcmp(six.key.model, "ann") == 0 && six.key.augment == 0 && six.key.epochs == 30);
    CHECK(six.key.data.train_count == 54000 && six.key.data.validation_count == 6000 && six.key.data.crc == 0x5eed5eedu);
    // A chapter 7 file claiming chapter 5 is refused as before.
    file.bytes[8] = 5;
    CHECK(check_checkpoint(&f, &err) == EXIT_CHECKPOINT_VERSION);
    // An --augment of 2 is damage.
    file.bytes[8] = 7;
    s.key.augment = 2;
    ByteBuffer bad = checkpoint_bytes(g, &s);
    CheckpointFile two = {.path = "augment-2", .bytes = bad.bytes, .size = bad.used};
    CHECK(check_checkpoint(&two, &err) == EXIT_CHECKPOINT_DAMAGED);
    free(bad.bytes), free(old), free(file.bytes);
    history_free(h);
    graph_free(g);
}

/* ---- The pictures of a CNN's first layer, under AddressSanitizer ------------------ */

static void test_network_pictures(void) {
    Dataset test = {.count = 2};
    float images[2 * IMAGE_SIZE], targets[2 * NUM_CLASSES] = {0};
    unsigned char labels[2] = {9, 0};
    for (int i = 0; i < 2 * IMAGE_SIZE; i++) images[i] = (float)(i % 29) / 29;
    targets[9] = targets[NUM_CLASSES] = 1;
    test.images = images, test.targets = targets, test.labels = labels;
    static const char *const models[] = {"basic", "deeper"};
    for (int m = 0; m < 2; m++) {
        GraphClassifier net = build_model(models[m], 2, 1, KERNEL_NAIVE, NULL);
        const Node *conv = first_convolution(net.graph);
        Picture filters = filters_picture(conv->inputs[1], models[m]);
        Picture maps = feature_maps_picture(&net, &test, models[m]);
        // The map of filter f at (y, x) is drawn 2x at a known place: check one.
        int width = conv->shape[2], channels = conv->shape[3];
        CHECK(filters.width > 0 && maps.width == 28 * 3 + 8 + 8 * (width * 2 + 4));
        float largest = 1e-12f;
        for (int i = 0; i < conv->shape[1] * width; i++) largest = fmaxf(largest, conv->value[i * channels + 3]);
        int all_there = 1, lit = 0;
        for (int y = 0; y < conv->shape[1]; y++)
            for (int x = 0; x < width; x++) {
                float v = fmaxf(conv->value[(y * width + x) * channels + 3], 0) / largest;
                size_t at = ((size_t)(30 + y * 2) * maps.width + (28 * 3 + 8) + 3 * (width * 2 + 4) + x * 2) * 3;
                all_there &= maps.pixels[at] == lroundf(255 * v);
                lit += v > 0.1f;
            }
        CHECK(all_there && lit > 10);
        picture_free(&filters);
        picture_free(&maps);
        graph_free(net.graph);
    }
}

/* ---- Checking files a run wrote ----------------------------------------------------- */

static unsigned char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *bytes = malloc((64 << 20) + 1);
    *size = fread(bytes, 1, 64 << 20, f);
    bytes[*size] = 0;  // read_ppm's sscanf stops here on a short file
    fclose(f);
    return bytes;
}

// A PPM: "P6\n<w> <h>\n255\n" and exactly w*h*3 bytes.
static int read_ppm(const unsigned char *bytes, size_t size, Picture *p) {
    int w = 0, h = 0, max = 0, used = 0;
    if (sscanf((const char *)bytes, "P6 %d %d %d%n", &w, &h, &max, &used) != 3 || max != 255 || w < 1 || h < 1) return 0;
    used++;  // the one whitespace byte after 255
    if ((size_t)used + (size_t)w * h * 3 != size) return 0;
    *p = picture_new(w, h, 3, 0);
    memcpy(p->pixels, bytes + used, (size_t)w * h * 3);
    return 1;
}

static void check_file(const char *path) {
    size_t size = 0, length = strlen(path);
    unsigned char *bytes = slurp(path, &size);
    if (!CHECK(bytes != NULL)) {
        printf("     %s: cannot read\n", path);
        return;
    }
    Picture p = {0};
    if (length > 4 && !strcmp(path + length - 4, ".ppm")) {
        if (!CHECK(read_ppm(bytes, size, &p))) printf("     %s: not a whole P6 PPM\n", path);
    } else if (length > 4 && !strcmp(path + length - 4, ".png")) {
        const char *wrong = decode_png(bytes, size, &p);
        if (!CHECK(wrong == NULL)) printf("     %s: %s\n", path, wrong);
        else {  // the same pixels as its PPM
            char ppm_path[1200];
            snprintf(ppm_path, sizeof ppm_path, "%.*s.ppm", (int)length - 4, path);
            size_t ppm_size = 0;
            unsigned char *ppm = slurp(ppm_path, &ppm_size);
            Picture q = {0};
            if (!CHECK(ppm && read_ppm(ppm, ppm_size, &q) && q.width == p.width && q.height == p.height &&
                       memcmp(q.pixels, p.pixels, (size_t)q.width * q.height * 3) == 0))
                printf("     %s: not the pixels of %s\n", path, ppm_path);
            picture_free(&q);
            free(ppm);
        }
    } else CHECK(size > 0);
    picture_free(&p);
    free(bytes);
}

int main(int argc, char **argv) {
    if (argc > 1) {
        for (int i = 1; i < argc; i++) check_file(argv[i]);
        return check_summary();
    }
    test_mcnemar();
    test_class_figures();
    test_png();
    test_augment();
    test_model_list();
    test_reads_chapter6();
    test_network_pictures();
    return check_summary();
}
