//@ from 7
/* ----------------------------------------------------------------------------
   The comparison (book.md 7.1-7.8).

   What this is: chapter 6's protocol run for every model and seed asked
   for, one after another, each continued from its checkpoint when it has
   one (so running the same command again after a stop goes on where it
   stopped, and a finished run is only tested again); the test of each
   run's best weights kept image by image, so that two models can be
   compared on the same images (McNemar's test); then the table, the plot
   data with gnuplot scripts, and the pictures.
   What it is not: a hyper-parameter search. Every model trains with the
   protocol's settings; only --augment changes what it sees. */

/* ---- Text files and the list of files written ------------------------------ */

//@ from 7 to 8
enum { MAX_FILES = 128 };
//@ end
//@ from 9
enum { MAX_FILES = 512 };  // the comparison of everything: 19 rows, each with its pictures
//@ end
typedef struct {
    char paths[MAX_FILES][1100];
    int count;
} FileList;

// Appends printf-style text to a buffer, for the text files written below.
void put_text(ByteBuffer *b, const char *format, ...) {
    char line[2048];
    va_list args;
    va_start(args, format);
    int length = vsnprintf(line, sizeof line, format, args);
    va_end(args);
    require(length >= 0 && length < (int)sizeof line, "a line of %d characters in a text file", length);
    put_bytes(b, line, (size_t)length);
}

// The next path of the list: dir/name (--plots is at most 1023 bytes).
char *next_path(FileList *files, const char *dir, const char *name) {
    require(files->count < MAX_FILES, "more than %d files", MAX_FILES);
    char *path = files->paths[files->count];
    snprintf(path, sizeof files->paths[0], "%s/%s", dir, name);
    return path;
}

// Lists the path next_path gave, once: a file written again (a search's
// table, which a second row that reads the search back writes again)
// stays one line of the list.
void list_path(FileList *files) {
    for (int i = 0; i < files->count; i++)
        if (strcmp(files->paths[i], files->paths[files->count]) == 0) return;
    files->count++;
}

// Writes dir/name (atomically) and adds it to the list; frees the buffer.
int write_listed(const char *dir, const char *name, ByteBuffer *b, FileList *files, Error *err) {
    int status = write_file_atomically(next_path(files, dir, name), b->bytes, b->used, err);
    free(b->bytes);
    *b = (ByteBuffer){0};
    if (!status) list_path(files);
    return status;
}

// A picture as dir/name.ppm (chapter 1's writer), and the same as
// dir/name.png, for browsers.
int save_picture(const Picture *p, const char *dir, const char *name, FileList *files, Error *err) {
    char file[256];
    snprintf(file, sizeof file, "%s.ppm", name);
    if (picture_write(p, next_path(files, dir, file), err)) return err->code;
    list_path(files);
    snprintf(file, sizeof file, "%s.png", name);
    ByteBuffer b = png_bytes(p);
    return write_listed(dir, file, &b, files, err);
}

/* ---- McNemar's exact test -------------------------------------------------- */

/* Two models tested on the same images. Where both are right or both wrong
   the images say nothing about which is better; what counts is `b`, the
   images only the first gets right, and `c`, those only the second does.
   If the models were equally good, each of these n = b + c images would be
   the first's with probability 1/2: b ~ Binomial(n, 1/2). The two-sided
   p-value is the probability of a split at least as uneven as the one
   seen: 2 P(X <= min(b, c)), at most 1. The binomial coefficients are
   summed as logarithms (lgamma), since 2^-n underflows for n > 1074. */
double mcnemar_exact_p(long b, long c) {
    long n = b + c, low = b < c ? b : c;
    if (n == 0) return 1;
    double sum = 0;
    for (long i = 0; i <= low; i++)
        sum += exp(lgamma(n + 1.0) - lgamma(i + 1.0) - lgamma(n - i + 1.0) - n * log(2.0));
    return fmin(1.0, 2 * sum);
}

/* The mid-p variant (Lancaster; Fagerland, Lydersen and Laake, 2013): the
   exact test counts the split seen as a whole "at least as uneven", which
   makes it conservative; mid-p counts it by half. Two-sided, that is
   2 (P(X < k) + P(X = k) / 2) with k = min(b, c), which is 1 at an even
   split, and below mcnemar_exact_p otherwise. Not in the tables; for
   chapter 7's exercises. */
double mcnemar_mid_p(long b, long c) {
    //@ exercise 7 mid-p: McNemar's two-sided mid-p: the exact test's tail with only half the probability of the split seen.
    if (b == c) return 1;
    long n = b + c, k = b > c ? c : b;
    double log_terms = lgamma(n + 1.0) - lgamma(k + 1.0) - lgamma(n - k + 1.0) - n * log(2.0);
    return fmin(1.0, mcnemar_exact_p(b, c) - exp(log_terms));
    //@ stub
    (void)b, (void)c;
    return 1;
    //@ end
}

/* Wilson's score interval for an accuracy of `right` out of `n`: every
   proportion p0 for which the accuracy seen, p = right / n, lies within z
   standard errors, z sqrt(p0 (1 - p0) / n), of p0. Its two ends are the
   roots of a quadratic in p0. Unlike p +- z sqrt(p (1 - p) / n) it stays
   inside [0, 1] and is not of width 0 at 0% or 100%. n = 0 gives [0, 1].
   Not in the tables; for chapter 7's exercises. */
void wilson_interval(long right, long n, double z, double *low, double *high) {
    //@ exercise 7 wilson: solve (p - p0)^2 = z^2 p0 (1 - p0) / n for p0; the two roots are the interval's ends.
    if (n <= 0) {
        *low = 0, *high = 1;
        return;
    }
    double p = (double)right / (double)n, zz = z * z / (double)n;
    double middle = (p + zz / 2) / (1 + zz);
    double spread = sqrt(p * (1 - p) * zz + zz * zz / 4) / (1 + zz);
    *low = fmax(0.0, middle - spread);
    *high = fmin(1.0, middle + spread);
    //@ stub
    (void)right, (void)n, (void)z;
    *low = 0, *high = 1;
    //@ end
}

/* ---- One run: a model and a seed, trained (or resumed) and tested ---------- */

// A run of the comparison, tested image by image.
typedef struct {
    const char *model;
    int seed;
    Result result;
    History *history;
    Evaluation test;
    ClassFigures classes;
    unsigned char *guesses;  // (test count) the class each test image was given
    float *confidence;       // (test count) the probability of that class
    size_t parameters;       // learned, and kept (batch norm's running statistics), as Keras counts
    double multiply_adds;    // per image, forward
    double training_images;  // over all its epochs
} RunReport;

void run_report_free(RunReport *r) {
    history_free(r->history);
    free(r->guesses);
    free(r->confidence);
}

double model_multiply_adds(const Graph *g) {  // per image, forward
    double total = 0;
    for (int i = 0; i < g->order_count; i++) total += multiply_adds_per_image(g->order[i]);
    return total;
}

// Does a file of that name exist? (Without opening it: a FIFO would block;
// without following it: a link, even a dangling one, is a name taken.)
int file_exists(const char *path) {
#if HAVE_POSIX
    struct stat info;
    return lstat(path, &info) == 0;
#else
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
#endif
}

int draw_network(GraphClassifier *net, const Dataset *test, const char *name, const Options *o,
                 FileList *files, Error *err);

//@ from 9
// --dropout, --init-from and --freeze, on a model just built (transfer.c, below).
int prepare_model(GraphClassifier *net, const char *model, Options *o, Error *err);
// The configuration a search of the model chose (tune.c, below).
int tune_options(Options *o, const char *model, int seed, const FashionMnist *data, KernelKind kernel,
                 GemmContext *gemm, FileList *files, Error *err);

/* The options of a row of chapter 9's comparison, MODEL+VARIANT... (see
   is_row_name): its model's name into `model`, --augment, --erase and
   --precision bf16 as its variants say, and for +tuned the configuration
   that a search of the model chose, at the notebooks' other settings (a
   search run once, with the comparison's first seed, and reused). A bf16
   row in an fp32 comparison gets matrix multiplies of its own (*own, the
   caller frees it). */
int row_options(const char *row, const Options *base, const FashionMnist *data, KernelKind kernel,
                GemmContext **gemm, GemmContext **own, Options *o, char model[MODEL_NAME_SIZE], FileList *files,
                Error *err) {
    require(is_row_name(row, model), "row '%s' passed --models, but is not a row", row);
    o->model = model;
    if (strstr(row, "+tuned")) {
        Options tuning = *o;
        tuning.augment = tuning.erase = 0, tuning.precision = "fp32";
        if (tune_options(&tuning, model, base->seed, data, kernel, *gemm, files, err)) return err->code;
        o->learning_rate = tuning.learning_rate, o->batch = tuning.batch;
        o->dropout = tuning.dropout, o->weight_decay = tuning.weight_decay;
    }
    if (strstr(row, "+augment")) o->augment = 1;
    if (strstr(row, "+erase")) o->erase = 1;
    if (strstr(row, "+bf16")) {
        o->precision = "bf16";
        if (kernel != KERNEL_BLOCKED)
            return fail(err, EXIT_USAGE, "--models %s: bf16 needs the blocked GEMM, not --kernel %s", row, base->kernel);
        if (!(*gemm)->bf16) *own = *gemm = gemm_context_new_bf16(bf16_best_kernel(), (*gemm)->workers->threads);
    }
    return 0;
}

//@ end
/* Trains (or resumes, or only re-tests) one model with one seed. A run
   whose last checkpoint exists goes on from it: chapter 6's --resume,
   which also refuses a checkpoint of other options. */
int run_one(const Options *base, const char *model, int seed, KernelKind kernel, GemmContext *gemm,
            const FashionMnist *data, RunReport *report, FileList *files, Error *err) {
    Options o = *base;
    o.model = model, o.seed = seed;
//@ from 9
    *report = (RunReport){.model = model, .seed = seed};  // what the caller frees, even after an early return
    const char *row = model;  // the row's name, which the tables print; `model` becomes its model's
    char model_name[MODEL_NAME_SIZE];
    GemmContext *own = NULL;
    int ready = row_options(row, base, data, kernel, &gemm, &own, &o, model_name, files, err);
    if (ready) {
        gemm_context_free(own);
        return ready;
    }
    model = model_name;
//@ end
//@ from 7 to 8
    char last[1100];
    checkpoint_path(&o, "-last.ckpt", last, sizeof last);
    if (file_exists(last)) o.resume = last;
//@ end
    GraphClassifier net = build_model(model, o.batch, (uint64_t)seed, kernel, gemm);
//@ from 9
    if (prepare_model(&net, model, &o, err)) {  // --dropout, --init-from, --freeze
        net.graph->gemm = NULL;
        graph_free(net.graph);
        gemm_context_free(own);
        return err->code;
    }
    char last[1100];  // its name says where the weights started (--init-from): known only now
    checkpoint_path(&o, "-last.ckpt", last, sizeof last);
    if (file_exists(last)) o.resume = last;
//@ end
    if (seed == base->seed) print_model_summary(&net, model);
    Model m = graph_model(&net, model);
//@ from 7 to 8
    *report = (RunReport){.model = model, .seed = seed, .parameters = m.count + m.state_count,
                          .multiply_adds = model_multiply_adds(net.graph)};
//@ end
//@ from 9
    *report = (RunReport){.model = row, .seed = seed, .parameters = m.count + m.state_count,
                          .multiply_adds = model_multiply_adds(net.graph)};
//@ end
    int status = fit_and_test(&m, data, &o, &report->history, &report->result, err);
    if (!status) {
        const Dataset *test = &data->test;
        report->guesses = xmalloc((size_t)test->count);
        report->confidence = xmalloc((size_t)test->count * sizeof(float));
        report->test = evaluate_each(&m, test, report->guesses, report->confidence);
        report->classes = class_figures(&report->test);
        report->training_images = (double)training_set(data, &o).count * report->result.epochs;
        print_result(&report->result);
//@ from 7 to 8
        if (seed == base->seed && strcmp(model, "ann") != 0) status = draw_network(&net, test, model, base, files, err);
//@ end
//@ from 9
        if (seed == base->seed && strcmp(model, "ann") != 0) status = draw_network(&net, test, row, base, files, err);
//@ end
    }
    net.graph->gemm = NULL;  // the threads and buffers stay for the next run
    graph_free(net.graph);
//@ from 9
    gemm_context_free(own);
//@ end
    return status;
}

/* ---- Every run ------------------------------------------------------------- */

typedef struct {
    char names[MAX_MODELS][MODEL_NAME_SIZE];
    int model_count, seed_count;
    RunReport *runs;  // (model_count, seed_count)
    int done;         // runs finished, in order
} Comparison;

// The run of model number `model` with its seed number `seed_index` (0 for --seed).
RunReport *comparison_run(const Comparison *c, int model, int seed_index) { return &c->runs[model * c->seed_count + seed_index]; }

// The epochs a model's next run should take: the mean of its runs done so
// far, or before it has any, of all the runs done, or else --epochs.
double expected_epochs(const Comparison *c, int model, int epochs_option) {
    double model_epochs = 0, model_runs = 0, all_epochs = 0;
    for (int r = 0; r < c->done; r++) {
        all_epochs += c->runs[r].result.epochs;
        if (r / c->seed_count == model) model_epochs += c->runs[r].result.epochs, model_runs++;
    }
    return model_runs ? model_epochs / model_runs : c->done ? all_epochs / c->done : epochs_option;
}

// The time the rest of the comparison should take, from the runs trained
// in this session: their seconds per (multiply-add x image), times the
// work left. A rough guide: layers differ in how fast they run.
void print_comparison_eta(const Comparison *c, const Options *o, double seconds, double work_done, long train_count) {
    if (work_done <= 0) return;
    double work_left = 0;
    for (int r = c->done; r < c->model_count * c->seed_count; r++) {
        int model = r / c->seed_count;
        work_left += expected_epochs(c, model, o->epochs) * train_count * c->runs[r].multiply_adds;
    }
    printf("comparison: %d of %d runs done; about ", c->done, c->model_count * c->seed_count);
    print_duration(work_left * seconds / work_done);
    printf(" left (a guess from the runs so far)\n\n");
}

/* Before any run: each model's cost, which the time estimate needs for
   all of them; and the mistakes that would otherwise show hours into the
   comparison: a batch of one image for a model with batch norm, and a
   checkpoint in the way that belongs to a run with other options (or is
   damaged). */
int size_and_check_runs(Comparison *c, const Options *o, const FashionMnist *data, Error *err) {
    Dataset train_set = training_set(data, o);
    DataKey here = data_key(&train_set, &data->validation);
    for (int i = 0; i < c->model_count; i++) {
//@ from 7 to 8
        GraphClassifier sizing = build_model(c->names[i], 1, 1, KERNEL_NAIVE, NULL);
//@ end
//@ from 9
        char model[MODEL_NAME_SIZE];
        is_row_name(c->names[i], model);
        GraphClassifier sizing = build_model(model, 1, 1, KERNEL_NAIVE, NULL);
        if (o->dropout >= 0 && set_dropout_rates(sizing.graph, o->dropout) == 0) {
            graph_free(sizing.graph);
            return fail(err, EXIT_USAGE, "--dropout %g: the %s model has no dropout to set (deeper and its chapter 7 "
                        "variants have); compare it without --dropout", o->dropout, model);
        }
        char first[MODEL_NAME_SIZE];
        is_row_name(c->names[0], first);
        if (o->init_from && strcmp(model, first) != 0) {
            graph_free(sizing.graph);
            return fail(err, EXIT_USAGE, "--init-from starts one model from a checkpoint of its own; --models names "
                        "%s and %s: compare them without --init-from, or one at a time", first, model);
        }
//@ end
        size_t state_count = sizing.graph->state_count;
        for (int s = 0; s < c->seed_count; s++) comparison_run(c, i, s)->multiply_adds = model_multiply_adds(sizing.graph);
        graph_free(sizing.graph);
        if (check_batch_norm_batches(state_count, o, training_set(data, o).count, err)) return err->code;
//@ from 9
        // A variant's options, and --init-from's weights, are known only when the run starts, which checks them.
        if (strchr(c->names[i], '+') || o->init_from) continue;
//@ end
        for (int s = 0; s < c->seed_count; s++) {
            Options run = *o;
            run.model = c->names[i], run.seed = o->seed + s;
            char last[1100];
            checkpoint_path(&run, "-last.ckpt", last, sizeof last);
            if (!file_exists(last)) continue;
            CheckpointFile f;
            if (refuse_link(last, err) || open_checkpoint(last, &f, err)) return err->code;
            int status = check_resume_key(&f, &run, &here, err);
            checkpoint_file_free(&f);
            if (status) return status;
        }
    }
    return 0;
}

int run_comparison(const Options *o, const FashionMnist *data, KernelKind kernel, GemmContext *gemm,
                   Comparison *c, FileList *files, Error *err) {
    c->model_count = split_model_list(o->models, c->names, err);
    if (c->model_count < 0) return err->code;
    c->seed_count = o->seeds;
    c->runs = xmalloc((size_t)c->model_count * c->seed_count * sizeof(RunReport));
    memset(c->runs, 0, (size_t)c->model_count * c->seed_count * sizeof(RunReport));
    int status = size_and_check_runs(c, o, data, err);
    double trained_seconds = 0, trained_work = 0;
    long train_count = training_set(data, o).count;
    for (int i = 0; i < c->model_count && !status; i++)
        for (int s = 0; s < c->seed_count && !status; s++) {
            RunReport *r = comparison_run(c, i, s);
            printf("==== run %d of %d: %s%s, seed %d ====\n", c->done + 1, c->model_count * c->seed_count, c->names[i],
                   o->augment ? " (augmented)" : "", o->seed + s);
            double start = now_seconds();
            status = run_one(o, c->names[i], o->seed + s, kernel, gemm, data, r, files, err);
            if (status) break;
            c->done++;
            // Only runs that trained here tell how fast this machine is now.
            double seconds = now_seconds() - start;
            if (seconds > 0.5 * r->result.seconds && r->result.seconds > 0)
                trained_seconds += r->result.seconds, trained_work += r->training_images * r->multiply_adds;
            print_comparison_eta(c, o, trained_seconds, trained_work, train_count);
        }
    return status;
}

void comparison_free(Comparison *c) {
    for (int r = 0; r < c->model_count * c->seed_count; r++) run_report_free(&c->runs[r]);
    free(c->runs);
}

/* ---- The table -------------------------------------------------------------- */

// Mean and (sample) standard deviation: of n values, and of one figure over a model's seeds.
typedef struct {
    double mean, sd;
} Spread;

Spread spread_of(const double *x, int n) {
    double sum = 0, squares = 0;
    for (int i = 0; i < n; i++) sum += x[i];
    Spread out = {.mean = sum / n};
    for (int i = 0; i < n; i++) squares += (x[i] - out.mean) * (x[i] - out.mean);
    out.sd = n > 1 ? sqrt(squares / (n - 1)) : 0;
    return out;
}

Spread spread(const Comparison *c, int model, double (*figure)(const RunReport *)) {
    double x[100];  // --seeds is at most 100
    for (int s = 0; s < c->seed_count; s++) x[s] = figure(comparison_run(c, model, s));
    return spread_of(x, c->seed_count);
}

double figure_accuracy(const RunReport *r) { return 100.0 * r->test.accuracy; }
double figure_macro_f1(const RunReport *r) { return r->classes.macro_f1; }
double figure_loss(const RunReport *r) { return r->test.loss; }
double figure_epochs(const RunReport *r) { return r->result.epochs; }
double figure_best_epoch(const RunReport *r) { return r->result.best_epoch; }
double figure_epoch_seconds(const RunReport *r) { return r->result.seconds / fmax(r->result.epochs, 1); }
double figure_images_per_second(const RunReport *r) { return r->training_images / fmax(r->result.seconds, 1e-9); }

// "93.12 ± 0.20" with one seed's figure alone when there is one seed.
void put_spread(ByteBuffer *b, Spread s, int decimals, int seeds) {
    if (seeds > 1) put_text(b, "%.*f ± %.*f", decimals, s.mean, decimals, s.sd);
    else put_text(b, "%.*f", decimals, s.mean);
}

// The comparison table, in Markdown (printed and written to results.md).
void put_results_table(ByteBuffer *b, const Comparison *c) {
    put_text(b, "| model | parameters | MFLOP/image | epochs | best epoch | s/epoch | images/s | test loss "
                "| test accuracy %% | macro-F1 |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for (int i = 0; i < c->model_count; i++) {
        const RunReport *first = comparison_run(c, i, 0);
        put_text(b, "| %s | %zu | %.2f | ", c->names[i], first->parameters, 2 * first->multiply_adds / 1e6);
        put_spread(b, spread(c, i, figure_epochs), 1, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_best_epoch), 1, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_epoch_seconds), 1, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_images_per_second), 0, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_loss), 4, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_accuracy), 2, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_macro_f1), 4, c->seed_count), put_text(b, " |\n");
    }
}

// The test images only x got right, and only y.
void disagreements(const RunReport *x, const RunReport *y, const Dataset *test, long *only_x, long *only_y) {
    *only_x = *only_y = 0;
    for (int k = 0; k < test->count; k++) {
        int x_right = x->guesses[k] == test->labels[k], y_right = y->guesses[k] == test->labels[k];
        *only_x += x_right && !y_right, *only_y += y_right && !x_right;
    }
}

void format_p(char *text, size_t size, double p) {
    snprintf(text, size, p > 0 ? "%.2g" : "< 1e-300", p);  // 0: below what double holds
}

//@ from 9
/* Chapter 9 compares 19 rows; all their pairs would be 171 lines a seed.
   McNemar's table keeps the pairs that answer a question: two models as
   the notebooks had them, and two versions of one model. */
int compared_pair(const Comparison *c, int i, int j) {
    char a[MODEL_NAME_SIZE], b[MODEL_NAME_SIZE];
    is_row_name(c->names[i], a), is_row_name(c->names[j], b);
    return strcmp(a, b) == 0 || (!strchr(c->names[i], '+') && !strchr(c->names[j], '+'));
}

//@ end
// Every pair of models, seed by seed, on the same test images.
void put_mcnemar_table(ByteBuffer *b, const Comparison *c, const Dataset *test) {
    put_text(b, "\n| first | second | seed | only the first right | only the second right | "
                "accuracy, second minus first (points) | McNemar p |\n|---|---|--:|--:|--:|--:|--:|\n");
    for (int i = 0; i < c->model_count; i++)
        for (int j = i + 1; j < c->model_count; j++)
            for (int s = 0; s < c->seed_count; s++) {
//@ from 9
                if (!compared_pair(c, i, j)) continue;
//@ end
                const RunReport *x = comparison_run(c, i, s), *y = comparison_run(c, j, s);
                long only_x, only_y;
                disagreements(x, y, test, &only_x, &only_y);
                char p_text[32];
                format_p(p_text, sizeof p_text, mcnemar_exact_p(only_x, only_y));
                put_text(b, "| %s | %s | %d | %ld | %ld | %+.2f | %s |\n", c->names[i], c->names[j], x->seed, only_x,
                         only_y, 100.0 * (y->test.accuracy - x->test.accuracy), p_text);
            }
}

//@ from 9
/* The verdict: each row with variants against its model as the notebooks
   had it (when that row is compared too). What the variants bought in
   accuracy (the mean over seeds), with what confidence (McNemar on the
   first seed), and at what cost in training time (all of each run's
   epochs, summed over seeds). */
void put_verdict_table(ByteBuffer *b, const Comparison *c, const Dataset *test) {
    put_text(b, "\n| row | against | accuracy gained (points, mean) | McNemar p (first seed) | training time |\n"
                "|---|---|--:|--:|--:|\n");
    for (int i = 0; i < c->model_count; i++) {
        char model[MODEL_NAME_SIZE];
        is_row_name(c->names[i], model);
        int plain = -1;
        for (int j = 0; j < c->model_count; j++)
            if (strcmp(c->names[j], model) == 0) plain = j;
        if (plain < 0 || plain == i) continue;
        double gained = 0, seconds = 0, plain_seconds = 0;
        for (int s = 0; s < c->seed_count; s++) {
            const RunReport *x = comparison_run(c, plain, s), *y = comparison_run(c, i, s);
            gained += 100.0 * (y->test.accuracy - x->test.accuracy) / c->seed_count;
            seconds += y->result.seconds, plain_seconds += x->result.seconds;
        }
        long only_plain, only_row;
        disagreements(comparison_run(c, plain, 0), comparison_run(c, i, 0), test, &only_plain, &only_row);
        char p_text[32];
        format_p(p_text, sizeof p_text, mcnemar_exact_p(only_plain, only_row));
        put_text(b, "| %s | %s | %+.2f | %s | %.2fx |\n", c->names[i], model, gained, p_text,
                 seconds / fmax(plain_seconds, 1e-9));
    }
}

//@ end

// Precision, recall or F1 of class k, the mean over a model's seeds.
typedef enum { PRECISION, RECALL, F1 } ClassFigure;

double mean_class_figure(const Comparison *c, int model, int k, ClassFigure which) {
    double sum = 0;
    for (int s = 0; s < c->seed_count; s++) {
        const ClassFigures *f = &comparison_run(c, model, s)->classes;
        sum += which == PRECISION ? f->precision[k] : which == RECALL ? f->recall[k] : f->f1[k];
    }
    return sum / c->seed_count;
}

// Precision, recall and F1 of every class and model (means over the seeds).
void put_class_table(ByteBuffer *b, const Comparison *c) {
    put_text(b, "\n| class |");
    for (int i = 0; i < c->model_count; i++) put_text(b, " %s precision | %s recall | %s F1 |", c->names[i], c->names[i], c->names[i]);
    put_text(b, "\n|---|");
    for (int i = 0; i < c->model_count; i++) put_text(b, "--:|--:|--:|");
    put_text(b, "\n");
    for (int k = 0; k < NUM_CLASSES; k++) {
        put_text(b, "| %s |", CLASS_NAMES[k]);
        for (int i = 0; i < c->model_count; i++)
            put_text(b, " %.4f | %.4f | %.4f |", mean_class_figure(c, i, k, PRECISION), mean_class_figure(c, i, k, RECALL),
                     mean_class_figure(c, i, k, F1));
        put_text(b, "\n");
    }
}

int write_results(const Comparison *c, const FashionMnist *data, const Options *o, FileList *files, Error *err) {
    ByteBuffer b = {0};
    put_text(&b, "# Fashion-MNIST: the comparison\n\nWritten by `");
    for (int a = 0; a < o->argc; a++) {  // words of any length: put_text's lines have a limit
        if (a) put_bytes(&b, " ", 1);
        put_bytes(&b, o->argv[a], strlen(o->argv[a]));
    }
    put_text(&b, "`: %d training, %d validation and %d test images; %d seed%s per model (mean ± standard "
                 "deviation over the seeds)%s. Seconds are training time, validation excluded.\n\n",
             training_set(data, o).count, data->validation.count, data->test.count, c->seed_count, c->seed_count == 1 ? "" : "s",
             o->augment ? "; training images shifted and flipped (--augment)" : "");
    put_results_table(&b, c);
//@ from 9
    put_verdict_table(&b, c, &data->test);
//@ end
    put_mcnemar_table(&b, c, &data->test);
    put_class_table(&b, c);
    fwrite(b.bytes, 1, b.used, stdout);
    return write_listed(o->plots, "results.md", &b, files, err);
}

/* ---- Plot data and gnuplot scripts ----------------------------------------- */

/* Each script draws its figure twice, as SVG and as PNG, with the same
   commands: gnuplot's `replot` cannot repeat a multiplot. Titles are
   printed "noenhanced", so that a '_' or '^' in a name stays a letter. */
static const char *const GNUPLOT_TERMINALS[2][2] = {{"svg size 1000,420 dynamic font 'sans,11'", "svg"},
                                                     {"pngcairo size 1000,420 font 'sans,10'", "png"}};

// curves.dat: the first seed's epochs of every model, one block each.
void put_curves_data(ByteBuffer *b, const Comparison *c) {
    put_text(b, "# the first seed of each model: one block per model (gnuplot: index i)\n"
                "# epoch  train_loss  train_accuracy  validation_loss  validation_accuracy  best(1/0)\n");
    for (int i = 0; i < c->model_count; i++) {
        const RunReport *r = comparison_run(c, i, 0);
        const History *h = r->history;
        put_text(b, "%s# %s, seed %d: best epoch %d, stopped after %d\n", i ? "\n\n" : "", c->names[i], r->seed,
                 r->result.best_epoch, r->result.epochs);
        for (int e = 0; e < h->epochs; e++)
            put_text(b, "%d %.6f %.6f %.6f %.6f %d\n", e + 1, h->train_loss[e], h->train_accuracy[e],
                     h->validation_loss[e], h->validation_accuracy[e], e + 1 == r->result.best_epoch);
    }
}

// One model's three series in a panel: validation (solid), training
// (dashed, same colour) and a circle at the best epoch.
void put_curve_series(ByteBuffer *b, int model, const char *name, int train_column, int validation_column) {
    int colour = model + 1;
    put_text(b, "%s'curves.dat' index %d using 1:%d with lines lw 2 lc %d title '%s', \\\n", model ? ", \\\n     " : "",
             model, validation_column, colour, name);
    put_text(b, "     '' index %d using 1:%d with lines dt 2 lc %d notitle, \\\n", model, train_column, colour);
    put_text(b, "     '' index %d using 1:($6 == 1 ? $%d : 1/0) with points pt 6 ps 2 lc %d notitle", model,
             validation_column, colour);
}

void put_curves_script(ByteBuffer *b, const Comparison *c) {
    int most_epochs = 1;
    for (int i = 0; i < c->model_count; i++)
        if (comparison_run(c, i, 0)->result.epochs > most_epochs) most_epochs = comparison_run(c, i, 0)->result.epochs;
    put_text(b, "# Training curves: gnuplot curves.gp (in this directory) writes curves.svg and curves.png.\n"
                "# Solid: validation; dashed: training; a circle: the best epoch, whose weights were tested.\n");
    for (int t = 0; t < 2; t++) {
        put_text(b, "\nreset\nset terminal %s\nset output 'curves.%s'\nset multiplot layout 1,2\nset grid\n"
                    "set key noenhanced\nset xlabel 'epoch'\nset xtics %d\n", GNUPLOT_TERMINALS[t][0],
                 GNUPLOT_TERMINALS[t][1], most_epochs <= 15 ? 1 : 5);
        for (int panel = 0; panel < 2; panel++) {  // loss, then accuracy
            put_text(b, "set title '%s'\nset ylabel '%s'\nset key %s\nplot ", panel ? "accuracy" : "loss",
                     panel ? "accuracy" : "cross-entropy loss", panel ? "bottom right" : "top right");  // out of the curves' way
            for (int i = 0; i < c->model_count; i++) put_curve_series(b, i, c->names[i], panel ? 3 : 2, panel ? 5 : 4);
            put_text(b, "\n");
        }
        put_text(b, "unset multiplot\n");
    }
}

// classes.dat: each class's F1, mean over the seeds, one column per model.
void put_classes_data(ByteBuffer *b, const Comparison *c) {
    put_text(b, "class");
    for (int i = 0; i < c->model_count; i++) put_text(b, " %s", c->names[i]);
    put_text(b, "\n");
    for (int k = 0; k < NUM_CLASSES; k++) {
        put_text(b, "\"%s\"", CLASS_NAMES[k]);
        for (int i = 0; i < c->model_count; i++) put_text(b, " %.6f", mean_class_figure(c, i, k, F1));
        put_text(b, "\n");
    }
}

void put_classes_script(ByteBuffer *b, const Comparison *c) {
    put_text(b, "# F1 per class and model: gnuplot classes.gp writes classes.svg and classes.png.\n");
    for (int t = 0; t < 2; t++)
        put_text(b, "\nreset\nset terminal %s\nset output 'classes.%s'\nset title 'F1 per class (mean over the seeds)'\n"
                    "set ylabel 'F1'\n"
                    "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
                    "set yrange [0:1]\nset grid ytics\nset key noenhanced outside right top vertical\nset xtics noenhanced rotate by -30\n"
                    "plot for [i=2:%d] 'classes.dat' using i:xtic(1) title columnheader(i)\n",
                 GNUPLOT_TERMINALS[t][0], GNUPLOT_TERMINALS[t][1], c->model_count + 1);
}

//@ from 8
/* cost.dat: each model's cost (forward MFLOP per image, parameters) and
   test accuracy (mean and sd over its seeds); cost.gp plots accuracy
   against each cost, a labelled point per model, the cost axes
   logarithmic, since the models' costs span three orders of magnitude. */
void put_cost_data(ByteBuffer *b, const Comparison *c) {
    put_text(b, "# model  MFLOP_per_image  parameters  test_accuracy_mean  test_accuracy_sd  seeds\n");
    for (int i = 0; i < c->model_count; i++) {
        const RunReport *first = comparison_run(c, i, 0);
        Spread accuracy = spread(c, i, figure_accuracy);
        put_text(b, "\"%s\" %.4f %zu %.4f %.4f %d\n", c->names[i], 2 * first->multiply_adds / 1e6, first->parameters,
                 accuracy.mean, accuracy.sd, c->seed_count);
    }
}

void put_cost_script(ByteBuffer *b) {
    put_text(b, "# Test accuracy against cost: gnuplot cost.gp writes cost.svg and cost.png.\n"
                "# A point per model: the mean over its seeds, the bar one standard deviation.\n");
    for (int t = 0; t < 2; t++) {
        put_text(b, "\nreset\nset terminal %s\nset output 'cost.%s'\nset multiplot layout 1,2\nset grid\n"
                    "set logscale x\nset ylabel 'test accuracy (%%)'\nset offsets graph 0.1, graph 0.1, graph 0.05, graph 0.05\n",
                 GNUPLOT_TERMINALS[t][0], GNUPLOT_TERMINALS[t][1]);
        for (int panel = 0; panel < 2; panel++)
            put_text(b, "set title 'test accuracy against %s'\nset xlabel '%s'\n"
                        "plot 'cost.dat' using %d:4:5 with yerrorbars pt 7 lc 1 notitle, \\\n"
                        "     '' using %d:4:1 with labels noenhanced offset 0,1 notitle\n",
                     panel ? "parameters" : "arithmetic", panel ? "parameters (learned and kept)" : "MFLOP per image, forward",
                     panel ? 3 : 2, panel ? 3 : 2);
        put_text(b, "unset multiplot\n");
    }
}

//@ end
int write_plot_files(const Comparison *c, const Options *o, FileList *files, Error *err) {
    ByteBuffer b = {0};
    put_curves_data(&b, c);
    int status = write_listed(o->plots, "curves.dat", &b, files, err);
    if (!status) put_curves_script(&b, c), status = write_listed(o->plots, "curves.gp", &b, files, err);
    if (!status) put_classes_data(&b, c), status = write_listed(o->plots, "classes.dat", &b, files, err);
    if (!status) put_classes_script(&b, c), status = write_listed(o->plots, "classes.gp", &b, files, err);
//@ from 8
    if (!status) put_cost_data(&b, c), status = write_listed(o->plots, "cost.dat", &b, files, err);
    if (!status) put_cost_script(&b), status = write_listed(o->plots, "cost.gp", &b, files, err);
//@ end
    return status;
}

/* ---- Pictures: confusion matrices ------------------------------------------ */

static const unsigned char WHITE[3] = {255, 255, 255}, BLACK[3] = {0, 0, 0};
static const unsigned char GREEN[3] = {0, 120, 0}, RED[3] = {190, 0, 0};

// A colour between two, at t in [0, 1].
void blend(unsigned char out[3], const unsigned char from[3], const unsigned char to[3], double t) {
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    for (int i = 0; i < 3; i++) out[i] = (unsigned char)lround(from[i] + t * (to[i] - from[i]));
}

void fill_rectangle(Picture *p, int x, int y, int width, int height, const unsigned char *colour) {
    for (int dy = 0; dy < height; dy++)
        for (int dx = 0; dx < width; dx++) picture_put(p, x + dx, y + dy, 1, colour);
}

// Text read from bottom to top (turned a quarter left), its first letter's
// bottom-left corner at (x, y).
void picture_draw_text_up(Picture *p, int x, int y, const char *text, const unsigned char *colour) {
    for (; *text; text++, y -= GLYPH_ADVANCE) {
        unsigned char ch = (unsigned char)*text;
        if (ch >= 'a' && ch <= 'z') ch = (unsigned char)(ch - 'a' + 'A');
        if (ch >= 128) continue;
        for (int row = 0; row < GLYPH_HEIGHT; row++)
            for (int col = 0; col < GLYPH_WIDTH; col++)
                if (FONT[ch][row] >> (GLYPH_WIDTH - 1 - col) & 1) picture_put(p, x + row, y - col, 1, colour);
    }
}

enum { CELL = 40, LEFT_MARGIN = 84, TOP_MARGIN = 112, SCALE_WIDTH = 84 };

// The frame of a 10x10 matrix picture: title, class names on both axes.
Picture matrix_picture(const char *title, const char *subtitle) {
    Picture p = picture_new(LEFT_MARGIN + NUM_CLASSES * CELL + SCALE_WIDTH, TOP_MARGIN + NUM_CLASSES * CELL + 30, 3, 255);
    picture_draw_text(&p, 8, 6, 2, title, BLACK);
    picture_draw_text(&p, 8, 26, 1, subtitle, BLACK);
    for (int k = 0; k < NUM_CLASSES; k++) {
        picture_draw_text(&p, 4, TOP_MARGIN + k * CELL + (CELL - GLYPH_HEIGHT) / 2, 1, CLASS_NAMES[k], BLACK);
        picture_draw_text_up(&p, LEFT_MARGIN + k * CELL + (CELL - GLYPH_HEIGHT) / 2, TOP_MARGIN - 4, CLASS_NAMES[k], BLACK);
    }
    picture_draw_text(&p, LEFT_MARGIN, TOP_MARGIN + NUM_CLASSES * CELL + 8, 1, "rows: true class; columns: predicted", BLACK);
    return p;
}

// One cell: its colour and its number, in white on a dark colour.
void draw_cell(Picture *p, int row, int col, const unsigned char *colour, const char *text, int dark) {
    int x = LEFT_MARGIN + col * CELL, y = TOP_MARGIN + row * CELL;
    fill_rectangle(p, x, y, CELL - 1, CELL - 1, colour);
    int width = (int)strlen(text) * GLYPH_ADVANCE - 1;
    picture_draw_text(p, x + (CELL - width) / 2, y + (CELL - GLYPH_HEIGHT) / 2, 1, text, dark ? WHITE : BLACK);
}

// The scale beside the matrix: from `high` at the top to `low` at the bottom.
void draw_scale(Picture *p, const unsigned char low[3], const unsigned char high[3], const char *top, const char *bottom) {
    int x = LEFT_MARGIN + NUM_CLASSES * CELL + 10, height = NUM_CLASSES * CELL;
    for (int y = 0; y < height; y++) {
        unsigned char colour[3];
        blend(colour, low, high, 1.0 - (double)y / (height - 1));
        fill_rectangle(p, x, TOP_MARGIN + y, 14, 1, colour);
    }
    picture_draw_text(p, x + 18, TOP_MARGIN, 1, top, BLACK);
    picture_draw_text(p, x + 18, TOP_MARGIN + height - GLYPH_HEIGHT, 1, bottom, BLACK);
}

/* A confusion matrix: each cell coloured by its share of the row (of the
   images of that true class), from white (none) to dark blue (all), with
   the count written in it. */
Picture confusion_picture(const RunReport *r) {
    static const unsigned char DARK_BLUE[3] = {8, 48, 107};
    char title[128], subtitle[128], count[16];
    snprintf(title, sizeof title, "%s, seed %d", r->model, r->seed);
    snprintf(subtitle, sizeof subtitle, "test accuracy %.2f%%, colour: share of the true class", 100 * r->test.accuracy);
    Picture p = matrix_picture(title, subtitle);
    for (int t = 0; t < NUM_CLASSES; t++) {
        long row_total = 0;
        for (int k = 0; k < NUM_CLASSES; k++) row_total += r->test.confusion[t][k];
        for (int k = 0; k < NUM_CLASSES; k++) {
            double share = row_total ? (double)r->test.confusion[t][k] / row_total : 0;
            unsigned char colour[3];
            blend(colour, WHITE, DARK_BLUE, share);
            snprintf(count, sizeof count, "%d", r->test.confusion[t][k]);
            draw_cell(&p, t, k, colour, count, share > 0.45);
        }
    }
    draw_scale(&p, WHITE, DARK_BLUE, "100%", "0%");
    return p;
}

/* What changed from model a to model b: b's count minus a's, in green
   where b is better (more right on the diagonal, fewer mistakes off it)
   and red where it is worse; the stronger, the larger the change. */
Picture confusion_change_picture(const RunReport *a, const RunReport *b) {
    char title[128], subtitle[160], text[16];
    snprintf(title, sizeof title, "%s minus %s", b->model, a->model);
    snprintf(subtitle, sizeof subtitle, "seed %d: %.2f%% to %.2f%%; green: better, red: worse", a->seed,
             100 * a->test.accuracy, 100 * b->test.accuracy);
    Picture p = matrix_picture(title, subtitle);
    int largest = 1;
    for (int t = 0; t < NUM_CLASSES; t++)
        for (int k = 0; k < NUM_CLASSES; k++) {
            int change = abs(b->test.confusion[t][k] - a->test.confusion[t][k]);
            largest = change > largest ? change : largest;
        }
    for (int t = 0; t < NUM_CLASSES; t++)
        for (int k = 0; k < NUM_CLASSES; k++) {
            int change = b->test.confusion[t][k] - a->test.confusion[t][k];
            int better = t == k ? change > 0 : change < 0;
            unsigned char colour[3];
            blend(colour, WHITE, better ? GREEN : RED, (double)abs(change) / largest);
            snprintf(text, sizeof text, "%+d", change);
            if (!change) strcpy(text, "0");
            draw_cell(&p, t, k, colour, text, (double)abs(change) / largest > 0.55);
        }
    snprintf(text, sizeof text, "+/-%d", largest);  // green for better, red for worse: one scale
    draw_scale(&p, WHITE, GREEN, text, "0");
    return p;
}

/* ---- Pictures: galleries ---------------------------------------------------- */

enum { TITLE_HEIGHT = 30 };  // above a picture's contents: a title in letters twice the size
enum { GALLERY_COLUMNS = 10, GALLERY_SCALE = 3, GALLERY_IMAGE = IMAGE_COLS * GALLERY_SCALE, GALLERY_CELL_WIDTH = 100,
       GALLERY_TEXT = GLYPH_HEIGHT + 3, GALLERY_CELL_HEIGHT = GALLERY_IMAGE + 2 * GALLERY_TEXT + 4, GALLERY_HEADING = 18 };

// One test image with its true class and what the model said.
void draw_gallery_item(Picture *p, int x, int y, const RunReport *r, const Dataset *test, int item) {
    picture_draw_image(p, x + (GALLERY_CELL_WIDTH - GALLERY_IMAGE) / 2, y, GALLERY_SCALE, test->images + (size_t)item * IMAGE_SIZE);
    char line[64];
    int truth = test->labels[item], guess = r->guesses[item];
    snprintf(line, sizeof line, "%s", CLASS_NAMES[truth]);
    picture_draw_text(p, x + 2, y + GALLERY_IMAGE + 2, 1, line, BLACK);
    snprintf(line, sizeof line, "%s %.0f%%", CLASS_NAMES[guess], 100 * r->confidence[item]);
    picture_draw_text(p, x + 2, y + GALLERY_IMAGE + 2 + GALLERY_TEXT, 1, line, truth == guess ? GREEN : RED);
}

// The `most` wrong answers given with the highest probability, highest
// first (of equal ones, the earlier image). Returns how many there are:
// fewer than `most` when the model made fewer mistakes.
int most_confident_mistakes(const RunReport *r, const Dataset *test, int *items, int most) {
    int kept = 0;
    for (int i = 0; i < test->count; i++) {
        if (r->guesses[i] == test->labels[i]) continue;
        int at;
        if (kept < most) at = kept++;                                           // room at the end
        else if (r->confidence[i] > r->confidence[items[most - 1]]) at = most - 1;  // replaces the weakest
        else continue;
        items[at] = i;
        for (; at > 0 && r->confidence[items[at - 1]] < r->confidence[items[at]]; at--) {  // up to its place
            int above = items[at - 1];
            items[at - 1] = items[at], items[at] = above;
        }
    }
    return kept;
}

/* Three rows of test images: the first the model got right, the first it
   got wrong, and its most confident mistakes. Under each image: its true
   class (black) and the model's answer with its probability (green when
   right, red when wrong). */
Picture gallery_picture(const RunReport *r, const Dataset *test) {
    int rows[3][GALLERY_COLUMNS], counts[3] = {0, 0, 0};
    for (int i = 0; i < test->count; i++) {
        int right = r->guesses[i] == test->labels[i];
        int *count = &counts[right ? 0 : 1];
        if (*count < GALLERY_COLUMNS) rows[right ? 0 : 1][(*count)++] = i;
    }
    counts[2] = most_confident_mistakes(r, test, rows[2], GALLERY_COLUMNS);
    static const char *const HEADINGS[3] = {"right", "wrong", "the most confident mistakes"};
    Picture p = picture_new(GALLERY_COLUMNS * GALLERY_CELL_WIDTH, TITLE_HEIGHT + 3 * (GALLERY_HEADING + GALLERY_CELL_HEIGHT), 3, 255);
    char title[128];
    snprintf(title, sizeof title, "%s, seed %d: test images, true class and answer", r->model, r->seed);
    picture_draw_text(&p, 6, 6, 2, title, BLACK);
    for (int row = 0; row < 3; row++) {
        int y = TITLE_HEIGHT + row * (GALLERY_HEADING + GALLERY_CELL_HEIGHT);
        picture_draw_text(&p, 6, y + 4, 1, HEADINGS[row], BLACK);
        for (int col = 0; col < counts[row]; col++)
            draw_gallery_item(&p, col * GALLERY_CELL_WIDTH, y + GALLERY_HEADING, r, test, rows[row][col]);
    }
    return p;
}

/* ---- Pictures: what the first convolution learned --------------------------- */

const Node *first_convolution(const Graph *g) {
    for (int i = 0; i < g->order_count; i++)
        if (g->order[i]->op == &OPS[OP_CONV2D]) return g->order[i];
    return NULL;
}

/* The first layer's filters, each 3x3 weights drawn 12 times as large:
   grey is 0, white the largest positive weight, black the most negative
   (one scale for all, so filters can be compared). */
Picture filters_picture(const Node *kernel, const char *model) {  // kernel: (3, 3, 1, C)
    int channels = kernel->shape[3], per_row = 8, zoom = 12, gap = 6, size = 3 * zoom;
    int rows = (channels + per_row - 1) / per_row;
    Picture p = picture_new(per_row * (size + gap) + gap, TITLE_HEIGHT + rows * (size + gap), 3, 255);
    char title[96];
    snprintf(title, sizeof title, "%s: the first layer's %d filters", model, channels);
    picture_draw_text(&p, 6, 6, 1, title, BLACK);
    float largest = 1e-12f;
    for (size_t i = 0; i < kernel->size; i++) largest = fmaxf(largest, fabsf(kernel->value[i]));
    for (int f = 0; f < channels; f++)
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 3; c++) {
                float w = kernel->value[(r * 3 + c) * channels + f];  // [r][c][0][f]
                unsigned char v = (unsigned char)lroundf(127.5f + 127.5f * w / largest), grey[3] = {v, v, v};
                picture_put(&p, gap + f % per_row * (size + gap) + c * zoom, TITLE_HEIGHT + f / per_row * (size + gap) + r * zoom,
                            zoom, grey);
            }
    return p;
}

/* One test image and what the first layer makes of it: each filter's
   output, negative values black and the largest value white (scaled per
   filter). In the basic CNN that is just what its ReLU passes on; in the
   deeper one batch norm comes between, and shifts the zero. */
Picture feature_maps_picture(GraphClassifier *net, const Dataset *test, const char *model) {
    Batch one = {.images = test->images, .targets = test->targets, .count = 1};
    float probs[NUM_CLASSES];
    graph_predict(net, &one, probs);
    const Node *conv = first_convolution(net->graph);
    int height = conv->shape[1], width = conv->shape[2], channels = conv->shape[3], zoom = 2, gap = 4, per_row = 8;
    int tile = height * zoom + gap, left = 28 * 3 + 2 * gap;
    Picture p = picture_new(left + per_row * (width * zoom + gap), TITLE_HEIGHT + (channels + per_row - 1) / per_row * tile, 3, 255);
    char title[128];
    snprintf(title, sizeof title, "%s: test image 0 (%s) and the first layer's %d feature maps", model,
             CLASS_NAMES[test->labels[0]], channels);
    picture_draw_text(&p, 6, 6, 1, title, BLACK);
    picture_draw_image(&p, gap, TITLE_HEIGHT, 3, test->images);
    for (int f = 0; f < channels; f++) {
        float largest = 1e-12f;
        for (int i = 0; i < height * width; i++) largest = fmaxf(largest, conv->value[i * channels + f]);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++) {
                float v = fmaxf(conv->value[(y * width + x) * channels + f], 0) / largest;  // [0][y][x][f]
                unsigned char grey = (unsigned char)lroundf(255 * v), colour[3] = {grey, grey, grey};
                picture_put(&p, left + f % per_row * (width * zoom + gap) + x * zoom, TITLE_HEIGHT + f / per_row * tile + y * zoom,
                            zoom, colour);
            }
    }
    return p;
}

int draw_network(GraphClassifier *net, const Dataset *test, const char *name, const Options *o,
                 FileList *files, Error *err) {
    const Node *conv = first_convolution(net->graph);
    if (!conv || test->count == 0) return 0;
    char file[64];
    Picture p = filters_picture(conv->inputs[1], name);
    snprintf(file, sizeof file, "filters-%s", name);
    int status = save_picture(&p, o->plots, file, files, err);
    picture_free(&p);
    if (status) return status;
    p = feature_maps_picture(net, test, name);
    snprintf(file, sizeof file, "features-%s", name);
    status = save_picture(&p, o->plots, file, files, err);
    picture_free(&p);
    return status;
}

// Each model's confusion matrix and gallery (its first seed), and what
// changed from each model to the next in the list.
int draw_comparison(const Comparison *c, const Dataset *test, const Options *o, FileList *files, Error *err) {
    int status = 0;
    char file[96];
    for (int i = 0; i < c->model_count && !status; i++) {
        const RunReport *r = comparison_run(c, i, 0);
        Picture p = confusion_picture(r);
        snprintf(file, sizeof file, "confusion-%s", c->names[i]);
        status = save_picture(&p, o->plots, file, files, err);
        picture_free(&p);
        if (status) break;
        p = gallery_picture(r, test);
        snprintf(file, sizeof file, "gallery-%s", c->names[i]);
        status = save_picture(&p, o->plots, file, files, err);
        picture_free(&p);
        if (status || i == 0) continue;
        p = confusion_change_picture(comparison_run(c, i - 1, 0), r);
        snprintf(file, sizeof file, "change-%s-to-%s", c->names[i - 1], c->names[i]);
        status = save_picture(&p, o->plots, file, files, err);
        picture_free(&p);
    }
    return status;
}

/* ---- The chapter's work ------------------------------------------------------- */

// --quick: a small real version of everything, for classes and tests.
void make_quick(Options *o, FashionMnist *data) {
//@ from 7 to 8
    enum { QUICK_TRAIN = 3000, QUICK_VALIDATION = 1000, QUICK_TEST = 1000, QUICK_EPOCHS = 4 };
//@ end
//@ from 9
    // Chapter 9's comparison is 19 rows and five searches, chapter 7's three
    // rows: a sixth of the images and two epochs keep the whole about a
    // minute. (A search's plan still trains its finalist to 3: a budget of
    // 9 is the smallest with two rungs.)
    enum { QUICK_TRAIN = 500, QUICK_VALIDATION = 250, QUICK_TEST = 250, QUICK_EPOCHS = 2 };
    enum { QUICK_BUDGET = 9 };  // a search of 3 trials, then 1
//@ end
    if (!o->limit || o->limit > QUICK_TRAIN) o->limit = QUICK_TRAIN;
    if (o->epochs > QUICK_EPOCHS) o->epochs = QUICK_EPOCHS;
    if (data->validation.count > QUICK_VALIDATION) data->validation.count = QUICK_VALIDATION;
    if (data->test.count > QUICK_TEST) data->test.count = QUICK_TEST;
//@ from 7 to 8
    printf("--quick: %d training images at most, %d validation, %d test; at most %d epochs\n", o->limit,
           data->validation.count, data->test.count, o->epochs);
//@ end
//@ from 9
    if (o->budget > QUICK_BUDGET) o->budget = QUICK_BUDGET;
    printf("--quick: %d training images at most, %d validation", o->limit, data->validation.count);
    if (data->test.count) printf(", %d test", data->test.count);  // a search's test set is not loaded yet
    printf("; at most %d epochs, and a search's budget at most %d\n", o->epochs, o->budget);
//@ end
}

int compare_models(Options *o, FashionMnist *data, KernelKind kernel, GemmContext *gemm, Error *err) {
    if (o->quick) make_quick(o, data);
    FileList *files = xmalloc(sizeof *files);
    files->count = 0;
    Comparison c = {0};
    double start = now_seconds();
    int status = make_directory(o->plots, "--plots", err);
    if (!status) status = run_comparison(o, data, kernel, gemm, &c, files, err);
    if (!status) status = write_results(&c, data, o, files, err);
    if (!status) status = write_plot_files(&c, o, files, err);
    if (!status) status = draw_comparison(&c, &data->test, o, files, err);
    if (!status) {
        printf("\nthe comparison took ");
        print_duration(now_seconds() - start);
        printf(" in this session\n");
    }
    if (files->count) printf("\nwrote %d files:\n", files->count);
    for (int i = 0; i < files->count; i++) printf("  %s\n", files->paths[i]);
    if (!status) printf("\n`make plots` draws the curves and bars with gnuplot (or: cd %s && gnuplot curves.gp classes.gp)\n",
                        o->plots);
    comparison_free(&c);
    free(files);
    return status;
}
//@ end
