//@ from 9
/* ----------------------------------------------------------------------------
   Transfer learning (book.md 9.6-9.8).

   What this is: a model started from another run's weights (--init-from),
   trained with its features fixed (--freeze) or all of it (fine-tuning), on
   a subset of the classes (--classes, --per-class); and the experiment that
   asks what transfers (--transfer): pretrain on five classes, then learn the
   other five from 10, 100 or 1,000 images of each, three ways.
   What it is not: transfer between architectures or datasets. The weights
   come from a checkpoint of the same model, so every layer fits; only the
   classifier is started afresh when the classes differ, because its rows
   belong to the classes it learned.

   A fresh classifier starts at zero, not at random. Its inputs are trained
   features, which are larger than a fresh network's (tens, where a fresh
   layer's are about 1), and a random layer of 10 x 128 weights on them
   gives logits of about 10: a loss near 9 and a confident wrong guess for
   every image, which a few steps cannot undo. At zero, every logit is 0,
   the loss is ln 10, and the first steps move the classifier alone (the
   gradient into the features is W^T (p - y) = 0 while W = 0). */

// The classifier: the last dense layer's weight and bias, found from the
// loss backwards (logits = bias_add(matmul(x, weight), bias)).
void classifier_parameters(const GraphClassifier *net, Node **weight, Node **bias) {
    Node *logits = net->loss->inputs[0];
    require(logits->op == &OPS[OP_BIAS_ADD] && logits->inputs[0]->op == &OPS[OP_MATMUL],
            "the model does not end with a dense layer");
    *bias = logits->inputs[1], *weight = logits->inputs[0]->inputs[1];
}

void print_classes(unsigned classes) {
    for (int k = 0, first = 1; k < NUM_CLASSES; k++)
        if (classes >> k & 1) printf("%s%d %s", first ? "" : ", ", k, CLASS_NAMES[k]), first = 0;
}

/* --init-from: the best weights and batch norm state of a checkpoint of
   the same model, put into the model before training. The classifier keeps
   its fresh initialisation when the checkpoint learned other classes.
   Sets o->init_weights to the fingerprint of the weights it starts from,
   which becomes part of the run's key. */
// A checkpoint's messages end with the fix for a run's own files (move it
// away, or another --checkpoints DIR); for --init-from the fix is another file.
static const char INIT_FROM_FIX[] = "--init-from needs a checkpoint a run of this model wrote: its -best.ckpt.";

int init_from_refused(Error *err) {
    char *fix = strstr(err->message, CHECKPOINT_FIX);
    if (fix) snprintf(fix, sizeof err->message - (size_t)(fix - err->message), "%s", INIT_FROM_FIX);
    return err->code;
}

int init_from_checkpoint(GraphClassifier *net, const char *model, Options *o, Error *err) {
    CheckpointFile f;
    if (open_checkpoint(o->init_from, &f, err)) return init_from_refused(err);
    Graph *g = net->graph;
    int status = 0;
    if (strcmp(f.key.model, model) != 0)
        status = fail(err, EXIT_CHECKPOINT_MODEL, "%s: a checkpoint of the %s model, but this run trains %s. "
                      "--init-from copies every layer but the classifier, so it needs a checkpoint of the same "
                      "model: train %s first (for instance on other --classes), or give --model %s.", o->init_from,
                      f.key.model, model, model, f.key.model);
    float *params = xmalloc(g->param_count * sizeof(float)), *state = xmalloc((g->state_count + 1) * sizeof(float));
    ByteReader r = section_reader(&f, SECTION_BEST);
    if (!status && take_tensors(&f, &r, "BEST", g, params, state, err)) status = init_from_refused(err);
    if (!status) {
        unsigned classes = o->classes ? o->classes : ALL_CLASSES;
        Node *weight, *bias;
        classifier_parameters(net, &weight, &bias);
        int keep_classifier = f.key.classes == classes;
        if (!keep_classifier)  // a classifier at zero, over the checkpoint's
            for (Node **p = (Node *[]){weight, bias, NULL}; *p; p++)
                memset(params + ((*p)->value - g->params), 0, (*p)->size * sizeof(float));
        memcpy(g->params, params, g->param_count * sizeof(float));
        memcpy(g->state, state, g->state_count * sizeof(float));
        o->init_weights = weights_fingerprint(g);
        printf("--init-from %s: its best weights, ", o->init_from);
        if (keep_classifier) printf("all of them\n");
        else {
            printf("but the classifier (%s and %s, set to zero): it learned classes ", weight->label, bias->label);
            print_classes(f.key.classes);
            printf("; this run learns ");
            print_classes(classes);
            printf("\n");
        }
    }
    free(params);
    free(state);
    checkpoint_file_free(&f);
    return status;
}

/* --freeze: the nodes up to the last convolution (its kernel and bias
   included) are frozen. They run as at inference: batch norm with its
   running statistics, which it does not update, and dropout off, as Keras
   runs a layer with trainable = False. They have no backward pass, so the
   gradient stops at the first node after them, and the optimiser skips
   their parameters, which come first in the parameter array (they were
   made first). What trains is the rest: for the deeper CNN the fourth
   batch norm, the dense layer and its batch norm, and the classifier; for
   chapter 8's networks, whose last convolution comes just before the
   global average pooling, a batch norm and the classifier. Returns the
   frozen parameter count. */
size_t freeze_features(Graph *g) {
    int last = -1;
    for (int i = 0; i < g->count; i++) {
        const Op *op = g->nodes[i].op;
        if (op == &OPS[OP_CONV2D] || op == &DEPTHWISE_OP || op == &POINTWISE_OP) last = i;
    }
    size_t frozen = 0;
    for (int i = 0; i <= last; i++) {
        Node *n = &g->nodes[i];
        n->frozen = 1;
        if (n->is_parameter) {
            size_t end = (size_t)(n->value - g->params) + n->size;
            if (end > frozen) frozen = end;
        }
    }
    for (int i = last + 1; i < g->count; i++)  // nothing trainable may sit among the frozen parameters
        require(!g->nodes[i].is_parameter || (size_t)(g->nodes[i].value - g->params) >= frozen,
                "a parameter after the last convolution is stored before a frozen one");
    g->frozen_params = frozen;
    return frozen;
}

// What the options ask of a model just built, before it trains.
int prepare_model(GraphClassifier *net, const char *model, Options *o, Error *err) {
    if (o->dropout >= 0 && set_dropout_rates(net->graph, o->dropout) == 0)
        return fail(err, EXIT_USAGE, "--dropout %g: the %s model has no dropout to set (deeper and its chapter 7 "
                    "variants have)", o->dropout, model);
    if (o->init_from && init_from_checkpoint(net, model, o, err)) return err->code;
    if (o->freeze) {
        const Graph *g = net->graph;
        size_t frozen = freeze_features(net->graph);
        if (frozen == 0)
            return fail(err, EXIT_USAGE, "--freeze keeps the layers up to the last convolution, and the %s model "
                        "has none", model);
        printf("--freeze: the first %zu of %zu parameters (up to the last convolution) stay as they are; %zu "
               "train\n", frozen, g->param_count, g->param_count - frozen);
    }
    return 0;
}

/* ---- Data for a subset of the classes --------------------------------------- */

// --classes and --per-class for a whole program: the data cut down once,
// before anything trains or (in a search) is chosen.
int narrow_data(const Options *o, FashionMnist *data, Error *err) {
    if (!o->classes && !o->per_class) return 0;
    FashionMnist cut;
    if (fashion_mnist_subset(data, o->classes ? o->classes : ALL_CLASSES, o->per_class, &cut, err)) return err->code;
    free_fashion_mnist(data);
    *data = cut;
    printf("--classes %s, --per-class %d: %d training, %d validation, %d test images\n",
           o->classes_list ? o->classes_list : "(all)", o->per_class, data->train.count, data->validation.count,
           data->test.count);
    return 0;
}

// The test set of a search, loaded after it has chosen, cut to --classes
// as the rest of the data was (narrow_data, before the search).
int narrow_test_set(const Options *o, FashionMnist *data, Error *err) {
    if (o->classes) {
        int *items = xmalloc((size_t)data->test.count * sizeof(int) + 1);
        int count = select_items(&data->test, o->classes, 0, items);
        Dataset cut = dataset_new(count);
        copy_items(&cut, 0, &data->test, items, count);
        free(items);
        free_dataset(&data->test);
        data->test = cut;
    }
    if (data->test.count == 0)
        return fail(err, EXIT_TOO_FEW, "%s/t10k-images-idx3-ubyte: no test images%s%s; the final run needs some",
                    o->data_dir, o->classes ? " of --classes " : "", o->classes ? o->classes_list : "");
    return 0;
}

/* ---- The experiment: --transfer MODEL --------------------------------------- */

/* Pretrain MODEL on classes 0-4 (T-shirt/top, trouser, pullover, dress,
   coat), by the protocol, once. Then learn classes 5-9 (sandal, shirt,
   sneaker, bag, ankle boot) from the first 10, 100 and 1,000 training
   images of each, three ways, with --seeds seeds each:
     scratch     from a fresh initialisation, as if nothing had been learned;
     frozen      from the pretrained weights, only what follows the last
                 convolution trained (the features kept as they are);
     fine-tuned  from the pretrained weights, everything trained.
   Every run is a run of chapter 7's, with its checkpoints: a stopped
   experiment goes on where it stopped, and finished runs are reused. */
enum { TRANSFER_SIZES = 3, TRANSFER_WAYS = 3, SOURCE_CLASSES = 0x01f, TARGET_CLASSES = 0x3e0 };
static const int TRANSFER_PER_CLASS[TRANSFER_SIZES] = {10, 100, 1000};
static const char *const TRANSFER_WAY_NAMES[TRANSFER_WAYS] = {"scratch", "frozen", "fine-tuned"};

typedef struct {
    double accuracy[TRANSFER_SIZES][TRANSFER_WAYS][100];  // [size][way][seed], test accuracy in %
    int images[TRANSFER_SIZES];  // the training images each size had (fewer than 5 N where the data are short)
    int seeds, test_count;
    double source_accuracy;
} TransferResults;

void put_transfer_table(ByteBuffer *b, const TransferResults *t, const char *model) {
    put_text(b, "# Transfer: %s pretrained on classes 0-4 (%.2f%% on their test images), then classes 5-9\n\n"
             "Test accuracy (%%) on the %d test images of classes 5-9, mean ± sd over %d seed%s.\n\n"
             "| images a class | training images | scratch | frozen | fine-tuned |\n| --: | --: | --: | --: | --: |\n", model,
             t->source_accuracy, t->test_count, t->seeds, t->seeds == 1 ? "" : "s");
    for (int n = 0; n < TRANSFER_SIZES; n++) {
        put_text(b, "| %d | %d |", TRANSFER_PER_CLASS[n], t->images[n]);
        for (int w = 0; w < TRANSFER_WAYS; w++) {
            put_text(b, " ");
            put_spread(b, spread_of(t->accuracy[n][w], t->seeds), 2, t->seeds);
            put_text(b, " |");
        }
        put_text(b, "\n");
    }
}

void put_transfer_data(ByteBuffer *b, const TransferResults *t) {
    put_text(b, "# images_a_class  scratch_mean scratch_sd  frozen_mean frozen_sd  fine_tuned_mean fine_tuned_sd\n");
    for (int n = 0; n < TRANSFER_SIZES; n++) {
        put_text(b, "%d", TRANSFER_PER_CLASS[n]);
        for (int w = 0; w < TRANSFER_WAYS; w++) {
            Spread s = spread_of(t->accuracy[n][w], t->seeds);
            put_text(b, " %.4f %.4f", s.mean, s.sd);
        }
        put_text(b, "\n");
    }
}

void put_transfer_script(ByteBuffer *b, const char *model) {
    put_text(b, "# Learning curves of transfer: test accuracy against labelled images a class.\n"
             "set terminal svg size 720,480 font 'sans,12'\nset output 'transfer.svg'\n"
             "set title 'Classes 5-9 learned by %s: from scratch, or from classes 0-4'\n"
             "set logscale x\nset xrange [7:1400]\nset xlabel 'labelled training images a class'\n"
             "set ylabel 'test accuracy (%%), mean and sd over seeds'\nset key bottom right\nset grid\n"
             "plot 'transfer.dat' using 1:2:3 with yerrorlines lw 2 title 'from scratch', \\\n"
             "     'transfer.dat' using 1:4:5 with yerrorlines lw 2 title 'frozen features', \\\n"
             "     'transfer.dat' using 1:6:7 with yerrorlines lw 2 title 'fine-tuned'\n"
             "set terminal pngcairo size 720,480\nset output 'transfer.png'\nreplot\n", model);
}

int transfer_experiment(Options *o, const FashionMnist *data, KernelKind kernel, GemmContext *gemm, Error *err) {
    if (o->quick) make_quick(o, (FashionMnist *)data);
    const char *model = o->transfer;
    if (o->classes || o->per_class || o->init_from || o->freeze)
        return fail(err, EXIT_USAGE, "--transfer chooses the classes, the images a class, the starting weights and "
                    "what is frozen for each of its runs: leave out --classes, --per-class, --init-from and --freeze");
    if (strcmp(model, "ann") == 0)
        return fail(err, EXIT_USAGE, "--transfer ann: the experiment freezes the layers up to the last "
                    "convolution, and the ANN has none; give a CNN (basic, deeper, resnet, ...)");
    FileList *files = xmalloc(sizeof *files);
    files->count = 0;
    TransferResults *t = xmalloc(sizeof *t);
    t->seeds = o->seeds;
    char plots[1024], best[1100];
    snprintf(plots, sizeof plots, "%s/transfer-%s", o->plots, model);
    FashionMnist source = {0}, target[TRANSFER_SIZES];
    memset(target, 0, sizeof target);
    int status = fashion_mnist_subset(data, SOURCE_CLASSES, 0, &source, err);
    for (int n = 0; n < TRANSFER_SIZES && !status; n++) {
        status = fashion_mnist_subset(data, TARGET_CLASSES, TRANSFER_PER_CLASS[n], &target[n], err);
        t->images[n] = select_items(&data->train, TARGET_CLASSES, TRANSFER_PER_CLASS[n], NULL);
    }
    t->test_count = target[0].test.count;
    if (!status) status = make_directory(plots, "--plots", err);
    // The pretraining: one run, by the protocol, on classes 0-4.
    Options pre = *o;
    pre.classes = SOURCE_CLASSES, pre.classes_list = "0,1,2,3,4", pre.plots = plots;
    RunReport report = {0};
    if (!status) {
        printf("\n==== pretraining %s on classes 0-4 (%d training images) ====\n", model, source.train.count);
        status = run_one(&pre, model, o->seed, kernel, gemm, &source, &report, files, err);
        t->source_accuracy = 100.0 * report.test.accuracy;
        run_report_free(&report);
        pre.model = model;
        checkpoint_path(&pre, "-best.ckpt", best, sizeof best);
    }
    // The 27 runs (at 3 seeds) on classes 5-9. Their base's seed is -1, which
    // no run has: run_one prints a model's summary and draws its pictures
    // for the base's seed only, and once for the pretraining is enough.
    for (int n = 0; n < TRANSFER_SIZES && !status; n++)
        for (int w = 0; w < TRANSFER_WAYS && !status; w++)
            for (int s = 0; s < t->seeds && !status; s++) {
                Options run = *o;
                run.classes = TARGET_CLASSES, run.classes_list = "5,6,7,8,9", run.per_class = TRANSFER_PER_CLASS[n];
                run.init_from = w ? best : NULL, run.freeze = w == 1, run.plots = plots, run.seed = -1;
                run.limit = 0;  // N images a class is the limit (--quick's 500 would cut 1,000 a class short)
                printf("\n==== classes 5-9, %d images a class, %s, seed %d ====\n", TRANSFER_PER_CLASS[n],
                       TRANSFER_WAY_NAMES[w], o->seed + s);
                status = run_one(&run, model, o->seed + s, kernel, gemm, &target[n], &report, files, err);
                t->accuracy[n][w][s] = 100.0 * report.test.accuracy;
                run_report_free(&report);
            }
    ByteBuffer b = {0};
    if (!status) {
        put_transfer_table(&b, t, model);
        printf("\n%.*s", (int)b.used, b.bytes);
        status = write_listed(plots, "transfer.md", &b, files, err);
    }
    if (!status) put_transfer_data(&b, t), status = write_listed(plots, "transfer.dat", &b, files, err);
    if (!status) put_transfer_script(&b, model), status = write_listed(plots, "transfer.gp", &b, files, err);
    free(b.bytes);
    if (files->count) printf("\nwrote %d files:\n", files->count);
    for (int i = 0; i < files->count; i++) printf("  %s\n", files->paths[i]);
    free_fashion_mnist(&source);
    for (int n = 0; n < TRANSFER_SIZES; n++) free_fashion_mnist(&target[n]);
    free(t);
    free(files);
    return status;
}
//@ end
