/* ----------------------------------------------------------------------------
   Command-line options.

   What this is: one table of options, from which both the parser and the
   --help text are made, so the two cannot disagree. A later chapter adds an
   option by adding a row.
   What it is not: getopt. Options are long (--name value), and every number
   is checked against its range. */

typedef struct {
    const char *data_dir;
    int help;
//@ from 2
    int epochs, batch, seed, limit, overfit;
    double learning_rate;  // 0 until parsed: then the optimiser's default
    const char *optimizer;
//@ end
//@ from 3 to 3
    int no_compare;
//@ end
//@ from 4
    const char *model, *kernel;
    int threads;
//@ end
//@ from 6
    int patience, stop_after;
    const char *checkpoints, *resume, *evaluate;  // a directory, and two checkpoint files (or NULL)
    int argc;     // the command line, for the command that resumes a run
    char **argv;
//@ end
//@ from 7
    const char *models;  // "ann,basic,deeper": the models chapter 7 compares
    int seeds, augment, quick;
    const char *plots;   // the directory the pictures go to
//@ end
//@ from 8
    const char *one_model;  // --model NAME: the same as --models NAME
    const char *precision;  // "fp32" or "bf16": the GEMM's operands (bf16.c)
//@ end
//@ from 9
    double weight_decay;  // AdamW's decoupled decay (optim.c); 0: none
    double dropout;       // the last dropout's rate, the others half of it (cnn.c); < 0: the model's own
    const char *search;   // --search MODEL: tune it (tune.c); NULL: no search
    int budget;           // the search's budget, in epochs
    const char *classes_list;  // --classes "5,6,7": as given
    unsigned classes;     // the classes to train and test on, one bit each (0: all ten)
    int per_class;        // at most this many training images of each class (0: all)
    const char *init_from;  // a checkpoint whose best weights start the run (transfer.c)
    int freeze;           // train only what follows the last convolution
    uint32_t init_weights;  // the fingerprint of the weights --init-from gave (set when they are read)
    const char *transfer;   // --transfer MODEL: the transfer experiment (transfer.c)
    int erase;              // --erase: random erasing of training images (train.c)
//@ end
} Options;
//@ from 4 to 4

// The models --model builds.
static const char MODEL_NAMES[] = "ann|basic";
//@ end
//@ from 5 to 6

// The models --model builds, and a checkpoint may hold.
static const char MODEL_NAMES[] = "ann|basic|deeper";
//@ end
//@ from 7 to 7

// The models --models builds, and a checkpoint may hold: chapter 5's three
// and the deeper CNN without dropout, or without batch norm (ablations).
static const char MODEL_NAMES[] = "ann|basic|deeper|deeper-nodropout|deeper-nobn";
//@ end
//@ from 8

// The models --models builds, and a checkpoint may hold: chapter 7's, and
// chapter 8's residual networks (20 and 8 layers), the same without their
// skips, and the depthwise-separable network.
static const char MODEL_NAMES[] = "ann|basic|deeper|deeper-nodropout|deeper-nobn|resnet|plain|resnet8|plain8|separable";
//@ end
//@ from 9

// What ./chapter9 compares: the models of chapters 2, 4, 5 and 8 at the
// notebooks' settings, tuned, tuned with every augmentation, and in bf16.
static const char EVERYTHING[] = "ann,basic,deeper,resnet,separable,"
                                 "ann+tuned,basic+tuned,deeper+tuned,resnet+tuned,separable+tuned,"
                                 "ann+tuned+augment+erase,basic+tuned+augment+erase,deeper+tuned+augment+erase,"
                                 "resnet+tuned+augment+erase,separable+tuned+augment+erase,"
                                 "basic+bf16,deeper+bf16,resnet+bf16,separable+bf16";
//@ end

Options default_options(void) {
    return (Options){
        .data_dir = "data",
//@ from 2
        .batch = 64, .seed = 1, .optimizer = "adam",
//@ end
//@ from 2 to 5
        .epochs = 10,
//@ end
//@ from 6
        .epochs = 30, .patience = 3, .checkpoints = "checkpoints",
//@ end
//@ from 7 to 7
        .models = "ann,basic,deeper", .seeds = 1, .plots = "plots",
//@ end
//@ from 8 to 8
        .models = "plain8,resnet8", .seeds = 1, .plots = "plots", .precision = "fp32",
//@ end
//@ from 9
        .models = EVERYTHING, .seeds = 1, .plots = "plots", .precision = "fp32",
//@ end
//@ from 4
        .kernel = "auto",
//@ end
//@ from 9
        .dropout = -1, .budget = 27,
//@ end
//@ from 4 to 4
        .model = "basic",
//@ end
//@ from 5
        .model = "deeper",
//@ end
    };
}

typedef enum { OPTION_FLAG, OPTION_INT, OPTION_REAL, OPTION_TEXT } OptionKind;

typedef struct {
    const char *name, *value_name, *help;
    OptionKind kind;
    void *target;       // where the parsed value goes: int*, double* or const char**
    double min, max;    // the accepted range of a number
    const char *choices;  // for text: the accepted words, "a|b", or NULL for any
} OptionSpec;

enum { MAX_OPTIONS = 32 };

// The table. Its targets point into *o, so it is made for each parse.
int option_table(Options *o, OptionSpec *specs) {
    int n = 0;
    specs[n++] = (OptionSpec){.name = "--data", .value_name = "DIR", .help = "where the four IDX files are (default: data)",
                              .kind = OPTION_TEXT, .target = &o->data_dir};
//@ from 2 to 5
    specs[n++] = (OptionSpec){.name = "--epochs", .value_name = "N", .help = "training epochs (default: 10)",
                              .kind = OPTION_INT, .target = &o->epochs, .min = 1, .max = 1000};
//@ end
//@ from 6
    specs[n++] = (OptionSpec){.name = "--epochs", .value_name = "N", .help = "the most epochs to train; early stopping may end sooner (default: 30)",
                              .kind = OPTION_INT, .target = &o->epochs, .min = 1, .max = 1000};
    specs[n++] = (OptionSpec){.name = "--patience", .value_name = "N", .help = "stop after N epochs without a lower validation loss (default: 3)",
                              .kind = OPTION_INT, .target = &o->patience, .min = 1, .max = 1000};
    specs[n++] = (OptionSpec){.name = "--checkpoints", .value_name = "DIR", .help = "where checkpoints are written (default: checkpoints)",
                              .kind = OPTION_TEXT, .target = &o->checkpoints};
//@ from 6 to 6
    specs[n++] = (OptionSpec){.name = "--resume", .value_name = "FILE", .help = "continue the run a checkpoint was saved from, exactly",
                              .kind = OPTION_TEXT, .target = &o->resume};
    specs[n++] = (OptionSpec){.name = "--evaluate", .value_name = "FILE", .help = "test the best weights of a checkpoint, without training",
                              .kind = OPTION_TEXT, .target = &o->evaluate};
//@ end
//@ from 6 to 6
    specs[n++] = (OptionSpec){.name = "--stop-after", .value_name = "N", .help = "pause as Ctrl-C would after N training steps (to try --resume)",
                              .kind = OPTION_INT, .target = &o->stop_after, .min = 1, .max = 2147483647};
//@ end
//@ from 7
    specs[n++] = (OptionSpec){.name = "--stop-after", .value_name = "N", .help = "pause as Ctrl-C would after N training steps of a run (run it again without --stop-after to go on)",
                              .kind = OPTION_INT, .target = &o->stop_after, .min = 1, .max = 2147483647};
//@ end
//@ end
//@ from 7 to 7
    specs[n++] = (OptionSpec){.name = "--models", .value_name = "LIST", .help = "the models to compare, separated by commas: ann, basic, deeper, "
                              "deeper-nodropout, deeper-nobn (default: ann,basic,deeper)",
                              .kind = OPTION_TEXT, .target = &o->models};
//@ end
//@ from 8 to 8
    specs[n++] = (OptionSpec){.name = "--models", .value_name = "LIST", .help = "the models to compare, separated by commas: ann, basic, deeper, "
                              "deeper-nodropout, deeper-nobn, resnet, plain, resnet8, plain8, separable (default: plain8,resnet8)",
                              .kind = OPTION_TEXT, .target = &o->models};
//@ end
//@ from 9
    specs[n++] = (OptionSpec){.name = "--models", .value_name = "LIST", .help = "the rows to compare, separated by commas: "
                              "a model (ann, basic, deeper, deeper-nodropout, deeper-nobn, resnet, plain, resnet8, plain8, "
                              "separable), each with variants after a + if you like: tuned, augment, erase, bf16 (default: "
                              "the five models, each as the notebooks had it, tuned, tuned with augment and erase, and "
                              "the CNNs in bf16)",
                              .kind = OPTION_TEXT, .target = &o->models};
//@ end
//@ from 8
    specs[n++] = (OptionSpec){.name = "--model", .value_name = "NAME", .help = "one model alone: the same as --models NAME",
                              .kind = OPTION_TEXT, .target = &o->one_model, .choices = MODEL_NAMES};
//@ end
//@ from 7
    specs[n++] = (OptionSpec){.name = "--seeds", .value_name = "N", .help = "train each model N times, with seeds --seed to --seed + N - 1 (default: 1)",
                              .kind = OPTION_INT, .target = &o->seeds, .min = 1, .max = 100};
    specs[n++] = (OptionSpec){.name = "--augment", .value_name = NULL, .help = "shift training images by up to 2 pixels and flip half of them",
                              .kind = OPTION_FLAG, .target = &o->augment};
//@ from 7 to 8
    specs[n++] = (OptionSpec){.name = "--quick", .value_name = NULL, .help = "a small version of everything, in about a minute (3000 training, "
                              "1000 validation and 1000 test images, at most 4 epochs)",
                              .kind = OPTION_FLAG, .target = &o->quick};
//@ end
//@ from 9
    specs[n++] = (OptionSpec){.name = "--quick", .value_name = NULL, .help = "a small version of everything, in about a minute (500 training, "
                              "250 validation and 250 test images, at most 2 epochs, a search's budget at most 9)",
                              .kind = OPTION_FLAG, .target = &o->quick};
//@ end
    specs[n++] = (OptionSpec){.name = "--plots", .value_name = "DIR", .help = "where the pictures, plot data and results.md go (default: plots, and plots/quick with --quick)",
                              .kind = OPTION_TEXT, .target = &o->plots};
//@ end
//@ from 2
    specs[n++] = (OptionSpec){.name = "--batch", .value_name = "N", .help = "images per mini-batch (default: 64)",
                              .kind = OPTION_INT, .target = &o->batch, .min = 1, .max = 4096};
    specs[n++] = (OptionSpec){.name = "--lr", .value_name = "RATE", .help = "learning rate (default: 0.001 for adam, 0.01 for sgd)",
                              .kind = OPTION_REAL, .target = &o->learning_rate, .min = 1e-9, .max = 10};
    specs[n++] = (OptionSpec){.name = "--optimizer", .value_name = "NAME", .help = "adam or sgd (default: adam)",
                              .kind = OPTION_TEXT, .target = &o->optimizer, .choices = "adam|sgd"};
    specs[n++] = (OptionSpec){.name = "--seed", .value_name = "N", .help = "seed of every random stream (default: 1)",
                              .kind = OPTION_INT, .target = &o->seed, .min = 0, .max = 2147483647};
    specs[n++] = (OptionSpec){.name = "--limit", .value_name = "N", .help = "train on the first N training images only",
                              .kind = OPTION_INT, .target = &o->limit, .min = 1, .max = 54000};
//@ end
//@ from 2 to 6
    specs[n++] = (OptionSpec){.name = "--overfit", .value_name = "N", .help = "train on N images until all are right (a debugging check)",
                              .kind = OPTION_INT, .target = &o->overfit, .min = 1, .max = 54000};
//@ end
//@ from 3 to 3
    specs[n++] = (OptionSpec){.name = "--no-compare", .value_name = NULL, .help = "skip the second training run with chapter 2's hand-written ANN",
                              .kind = OPTION_FLAG, .target = &o->no_compare};
//@ end
//@ from 4
//@ from 4 to 4
    specs[n++] = (OptionSpec){.name = "--model", .value_name = "NAME", .help = "ann or basic (default: basic)",
                              .kind = OPTION_TEXT, .target = &o->model, .choices = MODEL_NAMES};
//@ end
//@ from 5 to 6
    specs[n++] = (OptionSpec){.name = "--model", .value_name = "NAME", .help = "ann, basic or deeper (default: deeper)",
                              .kind = OPTION_TEXT, .target = &o->model, .choices = MODEL_NAMES};
//@ end
//@ from 4 to 7
    specs[n++] = (OptionSpec){.name = "--kernel", .value_name = "NAME", .help = "how convolutions and matrix multiplies are computed: naive, "
                              "im2col (the references), or the blocked GEMM with the portable, avx2 or avx512 "
                              "micro-kernel; auto picks the widest this CPU runs (default: auto)",
                              .kind = OPTION_TEXT, .target = &o->kernel, .choices = "auto|naive|im2col|portable|avx2|avx512"};
//@ end
//@ from 8
    specs[n++] = (OptionSpec){.name = "--kernel", .value_name = "NAME", .help = "how convolutions and matrix multiplies are computed: naive, "
                              "im2col (the references, fp32 only), or the blocked GEMM with the portable, avx2 or avx512 "
                              "micro-kernel (in bf16: the emulations of VDPBF16PS), or avx512bf16 (bf16 only: the "
                              "instruction); auto picks the fastest this CPU runs (default: auto)",
                              .kind = OPTION_TEXT, .target = &o->kernel, .choices = "auto|naive|im2col|portable|avx2|avx512|avx512bf16"};
    specs[n++] = (OptionSpec){.name = "--precision", .value_name = "NAME", .help = "fp32, or bf16: the matrix multiplies' "
                              "operands rounded to bfloat16, their sums in fp32 (default: fp32)",
                              .kind = OPTION_TEXT, .target = &o->precision, .choices = "fp32|bf16"};
//@ end
//@ from 9
    specs[n++] = (OptionSpec){.name = "--weight-decay", .value_name = "W", .help = "AdamW's decoupled weight decay: each "
                              "step first multiplies every weight by 1 - lr * W (default: 0, none)",
                              .kind = OPTION_REAL, .target = &o->weight_decay, .min = 0, .max = 1};
    specs[n++] = (OptionSpec){.name = "--dropout", .value_name = "RATE", .help = "the rate of a model's last dropout, "
                              "and half of it for the others (default: the model's own, 0.5 and 0.25 in deeper)",
                              .kind = OPTION_REAL, .target = &o->dropout, .min = 0, .max = 0.9};
    specs[n++] = (OptionSpec){.name = "--search", .value_name = "MODEL", .help = "tune MODEL's learning rate, batch, "
                              "dropout and weight decay by successive halving on the validation split, then train "
                              "and test the best once",
                              .kind = OPTION_TEXT, .target = &o->search, .choices = MODEL_NAMES};
    specs[n++] = (OptionSpec){.name = "--budget", .value_name = "N", .help = "the search's budget in epochs: B gives "
                              "3^(R-1) trials in R rungs, R as large as R * 3^(R-1) <= B allows (default: 27)",
                              .kind = OPTION_INT, .target = &o->budget, .min = 1, .max = 10000};
    specs[n++] = (OptionSpec){.name = "--classes", .value_name = "LIST", .help = "train, validate and test on these "
                              "classes only, numbers 0-9 separated by commas (default: all ten)",
                              .kind = OPTION_TEXT, .target = &o->classes_list};
    specs[n++] = (OptionSpec){.name = "--per-class", .value_name = "N", .help = "train on the first N training images "
                              "of each class (default: all)",
                              .kind = OPTION_INT, .target = &o->per_class, .min = 1, .max = 54000};
    specs[n++] = (OptionSpec){.name = "--init-from", .value_name = "FILE", .help = "start from the best weights of a "
                              "checkpoint of the same model; its classifier too if it learned the same classes",
                              .kind = OPTION_TEXT, .target = &o->init_from};
    specs[n++] = (OptionSpec){.name = "--freeze", .value_name = NULL, .help = "train only the layers after the last "
                              "convolution; the rest run as at inference, unchanged",
                              .kind = OPTION_FLAG, .target = &o->freeze};
    specs[n++] = (OptionSpec){.name = "--erase", .value_name = NULL, .help = "paint a random rectangle of noise over half "
                              "the training images (random erasing; with --augment or without)",
                              .kind = OPTION_FLAG, .target = &o->erase};
    specs[n++] = (OptionSpec){.name = "--transfer", .value_name = "MODEL", .help = "the transfer experiment: MODEL "
                              "pretrained on classes 0-4, then trained on 5-9 with 10, 100 and 1000 images a class, "
                              "from scratch, frozen and fine-tuned",
                              .kind = OPTION_TEXT, .target = &o->transfer, .choices = MODEL_NAMES};
//@ end
    specs[n++] = (OptionSpec){.name = "--threads", .value_name = "N", .help = "threads for the blocked GEMM (default: the CPUs online)",
                              .kind = OPTION_INT, .target = &o->threads, .min = 1, .max = 256};
//@ end
    specs[n++] = (OptionSpec){.name = "--help", .value_name = NULL, .help = "print this help and exit",
                              .kind = OPTION_FLAG, .target = &o->help};
    return n;
}

void print_usage(FILE *out, const char *program) {
    Options scratch;
    OptionSpec specs[MAX_OPTIONS];
    int n = option_table(&scratch, specs);
    fprintf(out, "usage: %s [options]\n\noptions:\n", program);
    for (int i = 0; i < n; i++) {
        char left[40];
        snprintf(left, sizeof left, "%s %s", specs[i].name, specs[i].value_name ? specs[i].value_name : "");
        fprintf(out, "  %-20s %s\n", left, specs[i].help);
    }
    fprintf(out, "\nexit codes:\n    0  success\n");
    for (int code = 1; code < 256; code++)  // in order of code, whatever the table's order
        for (int i = 0; i < EXIT_TABLE_ROWS; i++)
            if (EXIT_TABLE[i].code == code) fprintf(out, "  %3d  %s\n", code, EXIT_TABLE[i].meaning);
}

// Is `word` one of the '|'-separated words in `choices`?
int is_choice(const char *word, const char *choices) {
    size_t length = strlen(word);
    for (const char *c = choices; *c; c += strcspn(c, "|"), c += *c == '|')
        if (strcspn(c, "|") == length && strncmp(c, word, length) == 0) return 1;
    return 0;
}

int parse_option_value(const OptionSpec *spec, const char *text, Error *err) {
    char *end = NULL;
    if (spec->kind == OPTION_TEXT) {
        // "--plots --help" means a forgotten value, not a directory named --help.
        if (!spec->choices && strncmp(text, "--", 2) == 0) {
            int path = strcmp(spec->value_name, "DIR") == 0 || strcmp(spec->value_name, "FILE") == 0;
            return fail(err, EXIT_USAGE, "%s needs a value (%s), but the next word, '%s', looks like an option%s%s",
                        spec->name, spec->value_name, text,
                        path ? "; to name a file or directory that begins with --, write ./" : "", path ? text : "");
        }
        if (*text == '\0')  // an empty DIR or FILE would be the current directory, or no file at all
            return fail(err, EXIT_USAGE, "%s needs a value (%s), not an empty word", spec->name, spec->value_name);
        if (spec->choices && !is_choice(text, spec->choices))
            return fail(err, EXIT_USAGE, "%s takes one of %s, not '%s'", spec->name, spec->choices, text);
        *(const char **)spec->target = text;
        return 0;
    }
    double value = strtod(text, &end);
    if (end == text || *end != '\0' || !(value >= spec->min && value <= spec->max))
        return fail(err, EXIT_USAGE, "%s takes a number from %g to %g, not '%s'",
                    spec->name, spec->min, spec->max, text);
    if (spec->kind == OPTION_REAL) {
        *(double *)spec->target = value;
        return 0;
    }
    if (value != floor(value))
        return fail(err, EXIT_USAGE, "%s takes a whole number, not '%s'", spec->name, text);
    *(int *)spec->target = (int)value;
    return 0;
}

//@ from 7
// --models, split at the commas into names, each a model and none twice.
// Returns how many, or -1 with the message in *err.
//@ from 7 to 7
enum { MAX_MODELS = 5, MODEL_NAME_SIZE = 24 };
//@ end
//@ from 8 to 8
enum { MAX_MODELS = 10, MODEL_NAME_SIZE = 24 };
//@ end
//@ from 9
enum { MAX_MODELS = 24, MODEL_NAME_SIZE = 48 };

/* Chapter 9's rows: a model and what is done to it, MODEL+VARIANT+...:
   tuned (the configuration a search chose, tune.c), augment (--augment),
   erase (--erase), bf16 (--precision bf16); each at most once, so
   "deeper+tuned+augment+erase" is the deeper CNN tuned and trained on
   shifted, flipped and erased images. Is `row` one? `model` gets the
   model's name. */
static const char VARIANT_NAMES[] = "tuned|augment|erase|bf16";

int is_row_name(const char *row, char model[MODEL_NAME_SIZE]) {
    size_t length = strcspn(row, "+");
    if (length >= MODEL_NAME_SIZE) return 0;
    memcpy(model, row, length), model[length] = '\0';
    if (!is_choice(model, MODEL_NAMES)) return 0;
    char seen[sizeof VARIANT_NAMES] = "";
    for (const char *at = row + length; *at == '+'; at += length) {
        at++, length = strcspn(at, "+");
        char variant[16] = "";
        if (length >= sizeof variant) return 0;
        memcpy(variant, at, length);
        if (!is_choice(variant, VARIANT_NAMES) || (*seen && is_choice(variant, seen))) return 0;
        snprintf(seen + strlen(seen), sizeof seen - strlen(seen), "%s%s", *seen ? "|" : "", variant);
    }
    return 1;
}
//@ end
int split_model_list(const char *list, char names[MAX_MODELS][MODEL_NAME_SIZE], Error *err) {
    int count = 0;
    for (const char *at = list;; at++) {
        int length = (int)strcspn(at, ",");
        char name[MODEL_NAME_SIZE] = "";
        if (length < MODEL_NAME_SIZE) memcpy(name, at, (size_t)length);
//@ from 7 to 8
        if (length >= MODEL_NAME_SIZE || !is_choice(name, MODEL_NAMES))
//@ end
//@ from 9
        char model[MODEL_NAME_SIZE];
        if (length >= MODEL_NAME_SIZE || !is_row_name(name, model))
            return fail(err, EXIT_USAGE, "--models: '%.*s' is not a model, or a model with variants; the models "
                        "are ann, basic, deeper, deeper-nodropout, deeper-nobn, resnet, plain, resnet8, plain8 and "
                        "separable, and each may take variants after a +, each once: tuned, augment, erase, bf16 "
                        "(for example --models deeper,deeper+tuned+augment)", length, at), -1;
//@ end
//@ from 7 to 7
            return fail(err, EXIT_USAGE, "--models: '%.*s' is not a model; the models are ann, basic, deeper, "
                        "deeper-nodropout and deeper-nobn, separated by commas (for example --models ann,deeper)",
                        length, at), -1;
//@ end
//@ from 8 to 8
            return fail(err, EXIT_USAGE, "--models: '%.*s' is not a model; the models are ann, basic, deeper, "
                        "deeper-nodropout, deeper-nobn, resnet, plain, resnet8, plain8 and separable, separated by "
                        "commas (for example --models plain,resnet)", length, at), -1;
//@ end
        for (int i = 0; i < count; i++)
            if (strcmp(names[i], name) == 0) return fail(err, EXIT_USAGE, "--models: '%s' is named twice", name), -1;
        memcpy(names[count++], name, sizeof name);
        at += length;
        if (!*at) return count;
        if (count == MAX_MODELS) return fail(err, EXIT_USAGE, "--models: at most %d models", MAX_MODELS), -1;
    }
}

//@ end
//@ from 9
// --classes "0,3,5": one bit per class, each a number 0-9 and none twice.
int parse_class_list(const char *list, unsigned *classes, Error *err) {
    *classes = 0;
    for (const char *at = list;; at++) {
        if (at[0] < '0' || at[0] > '9' || (at[1] != ',' && at[1] != '\0'))
            return fail(err, EXIT_USAGE, "--classes takes class numbers 0-9 separated by commas (for example "
                        "--classes 5,6,7,8,9), not '%s'", list);
        unsigned bit = 1u << (at[0] - '0');
        if (*classes & bit) return fail(err, EXIT_USAGE, "--classes: class %c is named twice", at[0]);
        *classes |= bit;
        if (*++at == '\0') return 0;
    }
}

//@ end
int parse_options(int argc, char **argv, Options *o, Error *err) {
    *o = default_options();
    OptionSpec specs[MAX_OPTIONS];
    int n = option_table(o, specs);
    for (int a = 1; a < argc; a++) {
        const OptionSpec *spec = NULL;
        for (int i = 0; i < n && !spec; i++)
            if (strcmp(argv[a], specs[i].name) == 0) spec = &specs[i];
        if (!spec) return fail(err, EXIT_USAGE, "unknown option '%s'", argv[a]);
        if (spec->kind == OPTION_FLAG) {
            *(int *)spec->target = 1;
            continue;
        }
        if (a + 1 >= argc) return fail(err, EXIT_USAGE, "%s needs a value (%s)", spec->name, spec->value_name);
        if (parse_option_value(spec, argv[++a], err)) return err->code;
    }
//@ from 2
    if (o->learning_rate == 0) o->learning_rate = strcmp(o->optimizer, "sgd") == 0 ? 0.01 : 0.001;
//@ end
//@ from 8
    if (o->one_model) o->models = o->one_model;
    int bf16 = strcmp(o->precision, "bf16") == 0;
    if (!bf16 && strcmp(o->kernel, "avx512bf16") == 0)
        return fail(err, EXIT_USAGE, "--kernel avx512bf16 multiplies in bf16: add --precision bf16");
    if (bf16 && (strcmp(o->kernel, "naive") == 0 || strcmp(o->kernel, "im2col") == 0))
        return fail(err, EXIT_USAGE, "--kernel %s is an fp32 reference; --precision bf16 needs the blocked GEMM "
                    "(--kernel auto, portable, avx2, avx512 or avx512bf16)", o->kernel);
//@ end
//@ from 7
    char names[MAX_MODELS][MODEL_NAME_SIZE];
    if (split_model_list(o->models, names, err) < 0) return err->code;
    if (o->seed > 2147483647 - (o->seeds - 1))
        return fail(err, EXIT_USAGE, "--seed %d with --seeds %d: the last seed would pass 2147483647", o->seed, o->seeds);
    // A quick run's checkpoints are of other runs (fewer images), and its
    // pictures are not the book's: both kept apart.
    if (o->quick && strcmp(o->checkpoints, "checkpoints") == 0) o->checkpoints = "checkpoints/quick";
    if (o->quick && strcmp(o->plots, "plots") == 0) o->plots = "plots/quick";
//@ end
//@ from 9
    if (o->classes_list && parse_class_list(o->classes_list, &o->classes, err)) return err->code;
    if (o->freeze && !o->init_from)
        return fail(err, EXIT_USAGE, "--freeze keeps the layers up to the last convolution as they start: give "
                    "them weights to keep with --init-from CHECKPOINT");
    if (o->search && o->transfer) return fail(err, EXIT_USAGE, "--search and --transfer: choose one");
    double default_lr = strcmp(o->optimizer, "sgd") == 0 ? 0.01 : 0.001;
    if (o->search && (o->dropout >= 0 || o->weight_decay > 0 || o->learning_rate != default_lr || o->batch != 64))
        return fail(err, EXIT_USAGE, "--search chooses the learning rate, the batch, the dropout and the weight decay "
                    "itself: leave out --%s", o->dropout >= 0 ? "dropout" : o->weight_decay > 0 ? "weight-decay" :
                    o->batch != 64 ? "batch" : "lr");
    if (o->search && (o->one_model || o->seeds > 1))
        return fail(err, EXIT_USAGE, "--search MODEL names its model and trains it with one seed: leave out --%s",
                    o->one_model ? "model" : "seeds");
//@ end
//@ from 6
    o->argc = argc, o->argv = argv;
    if (o->resume && o->evaluate) return fail(err, EXIT_USAGE, "--resume and --evaluate: choose one");
    if ((o->resume || o->evaluate) && o->overfit)
        return fail(err, EXIT_USAGE, "--overfit trains from scratch; it cannot be combined with --%s",
                    o->resume ? "resume" : "evaluate");
//@ end
    return 0;
}
