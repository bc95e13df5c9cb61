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
    int threads, bench;
//@ end
} Options;

Options default_options(void) {
    return (Options){
        .data_dir = "data",
//@ from 2
        .epochs = 10, .batch = 64, .seed = 1, .optimizer = "adam",
//@ end
//@ from 4
        .kernel = "auto",
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
    specs[n++] = (OptionSpec){"--data", "DIR", "where the four IDX files are (default: data)",
                              OPTION_TEXT, &o->data_dir, 0, 0, NULL};
//@ from 2
    specs[n++] = (OptionSpec){"--epochs", "N", "training epochs (default: 10)",
                              OPTION_INT, &o->epochs, 1, 1000, NULL};
    specs[n++] = (OptionSpec){"--batch", "N", "images per mini-batch (default: 64)",
                              OPTION_INT, &o->batch, 1, 4096, NULL};
    specs[n++] = (OptionSpec){"--lr", "RATE", "learning rate (default: 0.001 for adam, 0.01 for sgd)",
                              OPTION_REAL, &o->learning_rate, 1e-9, 10, NULL};
    specs[n++] = (OptionSpec){"--optimizer", "NAME", "adam or sgd (default: adam)",
                              OPTION_TEXT, &o->optimizer, 0, 0, "adam|sgd"};
    specs[n++] = (OptionSpec){"--seed", "N", "seed of every random stream (default: 1)",
                              OPTION_INT, &o->seed, 0, 2147483647, NULL};
    specs[n++] = (OptionSpec){"--limit", "N", "train on the first N training images only",
                              OPTION_INT, &o->limit, 1, 54000, NULL};
    specs[n++] = (OptionSpec){"--overfit", "N", "train on N images until all are right (a debugging check)",
                              OPTION_INT, &o->overfit, 1, 54000, NULL};
//@ end
//@ from 3 to 3
    specs[n++] = (OptionSpec){"--no-compare", NULL, "skip the second training run with chapter 2's hand-written ANN",
                              OPTION_FLAG, &o->no_compare, 0, 0, NULL};
//@ end
//@ from 4
//@ from 4 to 4
    specs[n++] = (OptionSpec){"--model", "NAME", "ann or basic (default: basic)",
                              OPTION_TEXT, &o->model, 0, 0, "ann|basic"};
//@ end
//@ from 5
    specs[n++] = (OptionSpec){"--model", "NAME", "ann, basic or deeper (default: deeper)",
                              OPTION_TEXT, &o->model, 0, 0, "ann|basic|deeper"};
//@ end
    specs[n++] = (OptionSpec){"--kernel", "NAME", "how convolutions and matrix multiplies are computed: naive, "
                              "im2col (the references), or the blocked GEMM with the portable, avx2 or avx512 "
                              "micro-kernel; auto picks the widest this CPU runs (default: auto)",
                              OPTION_TEXT, &o->kernel, 0, 0, "auto|naive|im2col|portable|avx2|avx512"};
    specs[n++] = (OptionSpec){"--threads", "N", "threads for the blocked GEMM (default: the CPUs online)",
                              OPTION_INT, &o->threads, 1, 256, NULL};
    specs[n++] = (OptionSpec){"--bench", NULL, "measure this machine's peak and every layer's speed, then exit",
                              OPTION_FLAG, &o->bench, 0, 0, NULL};
//@ end
    specs[n++] = (OptionSpec){"--help", NULL, "print this help and exit", OPTION_FLAG, &o->help, 0, 0, NULL};
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
    return 0;
}
