//@ from 9
/* ----------------------------------------------------------------------------
   Hyperparameter search by successive halving (book.md 9.1-9.3).

   What this is: --search MODEL. It draws trials (a learning rate, a batch
   size, a dropout rate, a weight decay) from a keyed stream, trains them
   all for a few epochs, keeps the best third by validation loss, trains
   those three times as long, and so on until one is left (Jamieson and
   Talwalkar, 2016; Hyperband's inner loop, Li et al., 2018). Then it
   trains that one under the protocol, as chapter 7 trains a model, and
   tests it: the only time the test set is read.
   What it is not: clever about where to look. The trials are drawn at
   random and independently (no model of the loss surface): random search
   is the baseline every cleverer method must beat (Bergstra and Bengio,
   2012), and halving spends the budget on the trials that look best.

   The test set is not read before the search has chosen: in --search mode
   the program loads the training file alone (main.c), and the test file is
   opened only after the last rung, for the one final run.

   The budget B, in epochs, as Hyperband counts it: R rungs, n = 3^(R-1)
   trials, and each rung given B / R epochs in all. Rung i trains
   n / 3^i trials to r_i = r_0 * 3^i epochs, so every rung costs
   n / 3^i * r_0 * 3^i = n * r_0 epochs, and r_0 = B / (R * n). R is the
   largest for which r_0 is at least one epoch. B = 27 gives 9 trials of
   1 epoch, then 3 trained to 3 epochs, then 1 trained to 9. A trial that
   goes on to the next rung continues from its checkpoint rather than
   starting again, so the epochs actually trained are fewer than B (21 of
   27 here). */

enum { HALVING = 3 };  // each rung keeps the best third (Hyperband's eta)

typedef struct {
    int rungs, trials, first_epochs;  // R, n = 3^(R-1), r_0
} SearchPlan;

SearchPlan search_plan(int budget) {
    //@ exercise 9 search-plan: the most rungs R for which r_0 = B / (R * 3^(R-1)) is at least 1, its trials and r_0 (book.md 9.2).
    SearchPlan p = {1, 1, budget};
    for (int rungs = 2, trials = HALVING; rungs * trials <= budget; rungs++, trials *= HALVING)
        p = (SearchPlan){rungs, trials, budget / (rungs * trials)};
    return p;
    //@ stub
    return (SearchPlan){1, 1, budget};
    //@ end
}

int rung_epochs(SearchPlan p, int rung) {
    int epochs = p.first_epochs;
    for (int i = 0; i < rung; i++) epochs *= HALVING;
    return epochs;
}

typedef struct {
    double learning_rate;  // log-uniform in [1e-4, 1e-2]
    int batch;             // 32, 64, 128 or 256
    double dropout;        // uniform in [0, 0.6]; -1 for a model without dropout
    double weight_decay;   // log-uniform in [1e-5, 1e-1]
} TrialConfig;

// A number to three significant digits: what the tables print, and what
// the trial trains with, so that a table's row can be run again exactly.
double three_digits(double x) {
    char text[32];
    snprintf(text, sizeof text, "%.3g", x);
    return strtod(text, NULL);
}

// Trial `index` of a search: its own keyed stream, so a trial does not
// depend on how many were drawn before it.
TrialConfig draw_trial(uint64_t seed, int index, int has_dropout) {
    static const int BATCHES[4] = {32, 64, 128, 256};
    Rng rng = rng_keyed(seed, STREAM_SEARCH, (uint64_t)index, 0);
    TrialConfig c;
    c.learning_rate = three_digits(pow(10, -4 + 2 * (double)rng_uniform(&rng)));
    c.batch = BATCHES[rng_below(&rng, 4)];
    double dropout = three_digits(0.6 * (double)rng_uniform(&rng));
    c.dropout = has_dropout ? dropout : -1;
    c.weight_decay = three_digits(pow(10, -5 + 4 * (double)rng_uniform(&rng)));
    return c;
}

typedef struct {
    TrialConfig config;
    int index;   // its place in the draw
    int rungs;   // the rungs it was trained in
    int epochs;  // the epochs it has been trained to
    float loss;  // its best validation loss in those epochs (INFINITY: it diverged)
} Trial;

// Trains trial t to `epochs` epochs (going on from where it stands) and
// sets t->loss. Returns an exit code; a trial that diverges is not an
// error (its loss is INFINITY), an interruption is.
typedef int (*TrialObjective)(void *context, Trial *t, int epochs, Error *err);

// Lower loss first; equal losses in the order drawn, so the ranking never
// depends on the sort.
int compare_trials(const void *a, const void *b) {
    const Trial *x = *(const Trial *const *)a, *y = *(const Trial *const *)b;
    if (x->loss != y->loss) return x->loss < y->loss ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

void print_trial_config(const TrialConfig *c) {
    printf("lr %g, batch %d, ", c->learning_rate, c->batch);
    if (c->dropout >= 0) printf("dropout %g, ", c->dropout);
    printf("weight decay %g", c->weight_decay);
}

/* Successive halving: every trial of rung 0, then the best third of them
   in rung 1, and so on. trials: (plan.trials), filled here. Returns the
   exit code; *best is the trial of the last rung. */
int successive_halving(SearchPlan plan, uint64_t seed, int has_dropout, TrialObjective objective, void *context,
                       Trial *trials, Trial **best, Error *err) {
    Trial **alive = xmalloc((size_t)plan.trials * sizeof *alive);
    for (int i = 0; i < plan.trials; i++) {
        trials[i] = (Trial){.config = draw_trial(seed, i, has_dropout), .index = i, .loss = INFINITY};
        alive[i] = &trials[i];
    }
    int count = plan.trials, status = 0;
    for (int rung = 0; rung < plan.rungs && !status; rung++) {
        int epochs = rung_epochs(plan, rung);
        for (int k = 0; k < count && !status; k++) {
            Trial *t = alive[k];
            printf("\n---- rung %d of %d, trial %d of %d (%d in this rung): ", rung + 1, plan.rungs, t->index + 1,
                   plan.trials, count);
            print_trial_config(&t->config);
            printf(", to epoch %d ----\n", epochs);
            status = objective(context, t, epochs, err);
            t->rungs = rung + 1, t->epochs = epochs;
        }
        if (status) break;
        qsort(alive, (size_t)count, sizeof *alive, compare_trials);
        printf("\nrung %d of %d, by validation loss after %d epoch%s:\n", rung + 1, plan.rungs, epochs,
               epochs == 1 ? "" : "s");
        int keep = rung + 1 < plan.rungs ? (count + HALVING - 1) / HALVING : 1;
        for (int k = 0; k < count; k++) {
            printf("  %s trial %d: loss %.4f  (", k < keep ? "kept   " : "dropped", alive[k]->index + 1, alive[k]->loss);
            print_trial_config(&alive[k]->config);
            printf(")\n");
        }
        count = keep;
    }
    *best = alive[0];
    free(alive);
    if (!status && !isfinite((*best)->loss)) {  // the finalist diverged: the best of the rest, at their last rungs
        for (int i = 0; i < plan.trials; i++)
            if (isfinite(trials[i].loss) && (!isfinite((*best)->loss) || trials[i].loss < (*best)->loss)) *best = &trials[i];
        if (isfinite((*best)->loss)) printf("the last trial diverged; the search falls back on trial %d\n", (*best)->index + 1);
    }
    if (!status && !isfinite((*best)->loss))
        status = fail(err, EXIT_DIVERGED, "every trial of the search diverged: no configuration to choose");
    return status;
}

/* ---- Trials on the real data ------------------------------------------------ */

typedef struct {
    const Options *options;
    const FashionMnist *data;  // its test set is empty: not loaded yet
    const char *model;
    KernelKind kernel;
    GemmContext *gemm;
    SearchPlan plan;
    char dir[1024];  // the search's checkpoints: DIR/trialN/...
} Search;

// The options of one trial: its configuration, its own checkpoint
// directory, and --epochs the last rung's, so that every rung of a trial
// is the same run, continued (the run's key never changes).
Options trial_options(const Search *s, const Trial *t, char *dir, size_t size) {
    Options o = *s->options;
    snprintf(dir, size, "%s/trial%d", s->dir, t->index + 1);
    o.model = s->model, o.checkpoints = dir;
    o.learning_rate = t->config.learning_rate, o.batch = t->config.batch;
    o.dropout = t->config.dropout, o.weight_decay = t->config.weight_decay;
    o.epochs = rung_epochs(s->plan, s->plan.rungs - 1);
    return o;
}

// The lowest validation loss of the first `epochs` epochs of a history: a
// trial's score at a rung, the same whether it was trained to this rung in
// this session or (before an interruption) further.
float best_validation_loss(const History *h, int epochs) {
    float best = INFINITY;
    for (int e = 0; e < epochs && e < h->epochs; e++)
        if (h->validation_loss[e] < best) best = h->validation_loss[e];
    return best;
}

int train_trial(void *context, Trial *t, int epochs, Error *err) {
    const Search *s = context;
    char dir[1100], last[1200];
    Options o = trial_options(s, t, dir, sizeof dir);
    GraphClassifier net = build_model(o.model, o.batch, (uint64_t)o.seed, s->kernel, s->gemm);
    int status = prepare_model(&net, o.model, &o, err);
    checkpoint_path(&o, "-last.ckpt", last, sizeof last);
    if (file_exists(last)) o.resume = last;
    Model m = graph_model(&net, o.model);
    Dataset train_set = training_set(s->data, &o);
    Optimizer opt = optimizer_new(optimizer_kind(&o), (float)o.learning_rate, m.count);
    opt.workers = m.workers, opt.weight_decay = (float)o.weight_decay, opt.frozen = m.frozen;
    History *h = history_new(o.epochs, (train_set.count + o.batch - 1) / o.batch);
    Run r = {.lock = -1};
    if (!status) status = check_batch_norm_batches(m.state_count, &o, train_set.count, err);
    if (!status) status = run_open(&r, &m, &opt, &train_set, &s->data->validation, &o, h, err);
    r.until = epochs;
    if (!status) status = run_epochs(&r, &train_set, &s->data->validation, err);
    t->loss = best_validation_loss(h, epochs);
    if (status == EXIT_DIVERGED) {  // not an error for a search: a learning rate too large, ranked last
        printf("trial %d diverged: %s\n", t->index + 1, err->message);
        *err = (Error){0};
        status = 0, t->loss = INFINITY;  // whatever its epochs before (run again, it diverges again)
    }
    run_close(&r);
    history_free(h);
    optimizer_free(&opt);
    net.graph->gemm = NULL;  // the threads and buffers stay for the next trial
    graph_free(net.graph);
    return status;
}

/* ---- What the search writes ------------------------------------------------- */

void put_trials_table(ByteBuffer *b, const Search *s, const Trial *trials, const Trial *best) {
    put_text(b, "# Successive halving: %s, budget %d epochs, seed %d\n\n", s->model, s->options->budget,
             s->options->seed);
    put_text(b, "%d trials in %d rungs; rung i trains the best third of rung i-1 to %d * 3^i epochs. "
             "Loss: the lowest validation loss in the epochs trained.\n\n", s->plan.trials, s->plan.rungs,
             s->plan.first_epochs);
    put_text(b, "| trial | lr | batch | dropout | weight decay | rungs | epochs | validation loss |\n");
    put_text(b, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < s->plan.trials; i++) {
        const Trial *t = &trials[i];
        char dropout[16] = "-";
        if (t->config.dropout >= 0) snprintf(dropout, sizeof dropout, "%g", t->config.dropout);
        put_text(b, "| %d%s | %g | %d | %s | %g | %d | %d | %.4f |\n", t->index + 1, t == best ? " (chosen)" : "",
                 t->config.learning_rate, t->config.batch, dropout, t->config.weight_decay, t->rungs, t->epochs,
                 t->loss);
    }
}

void put_trials_data(ByteBuffer *b, const Search *s, const Trial *trials) {
    put_text(b, "# trial  lr  batch  dropout  weight_decay  rungs  epochs  validation_loss\n");
    for (int i = 0; i < s->plan.trials; i++) {
        const Trial *t = &trials[i];
        put_text(b, "%d %g %d %g %g %d %d %.6f\n", t->index + 1, t->config.learning_rate, t->config.batch,
                 t->config.dropout, t->config.weight_decay, t->rungs, t->epochs, t->loss);
    }
}

void put_trials_script(ByteBuffer *b, const Search *s) {
    put_text(b, "# The search's trials: validation loss against learning rate, one colour per rung reached.\n"
             "set terminal svg size 720,480 font 'sans,12'\nset output 'trials.svg'\n"
             "set title 'Successive halving on %s: every trial at the last rung it reached'\n"
             "set logscale x\nset format x '10^{%%L}'\nset xlabel 'learning rate'\n"
             "set ylabel 'best validation loss'\nset key top left\nset grid\n"
             "plot for [r=1:%d] 'trials.dat' using ($6 == r ? $2 : 1/0):8 with points pt 7 ps 1.2 "
             "title sprintf('stopped at rung %%d', r), \\\n"
             "     'trials.dat' using 2:8:1 with labels offset 1,0.6 notitle\n"
             "set terminal pngcairo size 720,480\nset output 'trials.png'\nreplot\n",
             s->model, s->plan.rungs);
}

int write_search_files(const Search *s, const Trial *trials, const Trial *best, const char *dir, FileList *files,
                       Error *err) {
    ByteBuffer b = {0};
    put_trials_table(&b, s, trials, best);
    int status = write_listed(dir, "trials.md", &b, files, err);
    if (!status) put_trials_data(&b, s, trials), status = write_listed(dir, "trials.dat", &b, files, err);
    if (!status) put_trials_script(&b, s), status = write_listed(dir, "trials.gp", &b, files, err);
    free(b.bytes);
    return status;
}

/* ---- --search --------------------------------------------------------------- */

/* The search: MODEL's trials by successive halving, trained on data->train
   and ranked on data->validation. It is given a view of the data without
   the test set, whatever the caller holds. Writes the trials' table, data
   and script into PLOTS/search-MODEL/ and puts the chosen configuration
   in *chosen. Every trial goes on from its checkpoints, so a search done
   before costs only their reading. */
int search_configuration(const Options *o, const char *model, const FashionMnist *data, KernelKind kernel,
                         GemmContext *gemm, TrialConfig *chosen, FileList *files, Error *err) {
    FashionMnist view = *data;
    view.test = (Dataset){0};
    Search s = {.options = o, .data = &view, .model = model, .kernel = kernel, .gemm = gemm,
                .plan = search_plan(o->budget)};
    snprintf(s.dir, sizeof s.dir, "%s/search-%s%s-seed%d-budget%d", o->checkpoints, model, o->quick ? "-quick" : "",
             o->seed, o->budget);
    GraphClassifier probe = build_model(model, 2, 0, KERNEL_NAIVE, NULL);
    int has_dropout = set_dropout_rates(probe.graph, 0.5) > 0;
    graph_free(probe.graph);
    printf("searching %s's learning rate, batch, %sweight decay: %d trials in %d rungs (%d, then a third each "
           "rung), from %d epoch%s to %d, on the validation split; the test set is not loaded\n", model,
           has_dropout ? "dropout, " : "", s.plan.trials, s.plan.rungs, s.plan.trials, s.plan.first_epochs,
           s.plan.first_epochs == 1 ? "" : "s", rung_epochs(s.plan, s.plan.rungs - 1));
    Trial *trials = xmalloc((size_t)s.plan.trials * sizeof *trials), *best = NULL;
    char plots[1024];
    snprintf(plots, sizeof plots, "%s/search-%s", o->plots, model);
    double start = now_seconds();
    int status = make_directory(plots, "--plots", err);  // before the trials, not after them
    if (!status) status = successive_halving(s.plan, (uint64_t)o->seed, has_dropout, train_trial, &s, trials, &best, err);
    if (!status) status = write_search_files(&s, trials, best, plots, files, err);
    if (!status) {
        *chosen = best->config;
        printf("\nthe search chose trial %d (", best->index + 1);
        print_trial_config(&best->config);
        printf("), validation loss %.4f after %d epochs; it took ", best->loss, best->epochs);
        print_duration(now_seconds() - start);
        printf(" in this session\n");
    }
    free(trials);
    return status;
}

void use_configuration(Options *o, const TrialConfig *c) {
    o->learning_rate = c->learning_rate, o->batch = c->batch;
    o->dropout = c->dropout, o->weight_decay = c->weight_decay;
}

// A +tuned row of the comparison: the search of its model, with `seed`.
int tune_options(Options *o, const char *model, int seed, const FashionMnist *data, KernelKind kernel,
                 GemmContext *gemm, FileList *files, Error *err) {
    Options search = *o;
    search.seed = seed;
    TrialConfig chosen;
    if (search_configuration(&search, model, data, kernel, gemm, &chosen, files, err)) return err->code;
    use_configuration(o, &chosen);
    return 0;
}

/* --search MODEL: the search, then the one final run of the configuration
   it chose, on the training split, tested once. `data` holds no test set
   when this starts (main.c loads the training file alone); it is loaded
   here, after the last rung, and nothing in the search could have read it. */
int search_and_test(Options *o, FashionMnist *data, KernelKind kernel, GemmContext *gemm, Error *err) {
    if (o->quick) make_quick(o, data);
    FileList *files = xmalloc(sizeof *files);
    files->count = 0;
    TrialConfig chosen;
    char plots[1024];  // the final run's pictures and tables go beside the search's
    snprintf(plots, sizeof plots, "%s/search-%s", o->plots, o->search);
    int status = search_configuration(o, o->search, data, kernel, gemm, &chosen, files, err);
    if (!status) {
        printf("\nthe final run: %s with these options, under the protocol, tested once\n", o->search);
        use_configuration(o, &chosen);
        o->models = o->search, o->plots = plots;
        if (load_dataset(o->data_dir, "t10k", &data->test, err)) status = err->code;
        else status = narrow_test_set(o, data, err);
    }
    if (files->count) printf("\nwrote %d files:\n", files->count);
    for (int i = 0; i < files->count; i++) printf("  %s\n", files->paths[i]);
    free(files);
    if (!status) status = compare_models(o, data, kernel, gemm, err);
    return status;
}
//@ end
