//@ from 2
/* ----------------------------------------------------------------------------
   Training: mini-batches, progress, validation, the test, the summary.

   What this is: the loop every model of the book is trained with. It sees a
   model only through the small Model interface below, so it does not care
   whether gradients come from hand-written backward passes (chapter 2) or
   from automatic differentiation (chapter 3 on).
   What it is not: clever. One pass over the shuffled training images per
   epoch, an optimiser step per batch, an evaluation per epoch. */

// One mini-batch as a model sees it. `step` numbers the optimiser steps of
// the whole run (0, 1, 2, ...) and follows from the epoch and the batch
// alone. The ANN ignores it; a model that draws random numbers while it
// trains keys them by it (dropout, chapter 5).
typedef struct {
    const float *images;   // (count, 784)
    const float *targets;  // (count, 10)
    int count;
    long step;
} Batch;

typedef struct {
    const char *name;  // for the summary line: "ann", ...
    void *net;
    // Forward and backward in training mode: fills probs (count, 10),
    // ADDS the gradients into grads, returns the mean loss.
    float (*compute_gradients)(void *net, const Batch *batch, float *probs);
    // Forward only, in inference mode: fills probs (count, 10), returns the mean loss.
    float (*predict)(void *net, const Batch *batch, float *probs);
    float *params, *grads;  // (count) each, in the same order
    size_t count;
    int max_batch;          // the most images one call may take
//@ from 5
    // What the model keeps without learning it by gradient (BatchNorm's
    // running statistics): the optimiser never touches it, but a checkpoint
    // must save it with the parameters. NULL and 0 for a model without it.
    float *state;           // (state_count)
    size_t state_count;
//@ end
//@ from 4
    Workers *workers;       // the threads its ops run on, which the optimiser may share (NULL: none)
//@ end
//@ from 6
    struct Graph *graph;    // the tensors' names and shapes, for a checkpoint
//@ end
//@ from 9
    size_t frozen;          // --freeze: the first parameters, which the optimiser leaves as they are
//@ end
} Model;
int argmax(const float *row, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) best = row[i] > row[best] ? i : best;
    return best;
}

/* Is standard output a terminal? Only POSIX can tell (isatty), so elsewhere
   the answer is no and progress comes as plain lines. isatty is declared here
   rather than by including unistd.h, which not every system has. */
#if defined(__unix__) || defined(__APPLE__)
int isatty(int fd);
int stdout_is_terminal(void) { return isatty(1); }
#else
int stdout_is_terminal(void) { return 0; }
#endif

typedef struct {
    int terminal;                // update one line in place, or print plain lines
    double start, last;          // seconds: when training started, when we last printed
    long done, total;            // training images seen so far, and in the whole run
    double epoch_start;          // seconds: when this epoch's training started
    long epoch_done;             // training images seen so far in this epoch
} Progress;

void print_duration(double seconds) {
    long s = seconds > 0 ? (long)(seconds + 0.5) : 0;
    if (s >= 3600) printf("%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else printf("%ld:%02ld", s / 60, s % 60);
}

// One progress report. On a terminal: at most ten a second, and at the last
// batch of an epoch. In a log: at each quarter of an epoch, so the log stays
// readable; the epoch's own summary line (printed by train) ends it.
// Images/s counts this epoch's training only; the ETA divides what is left by
// the rate of the whole run so far, which from epoch 2 on includes the
// validation pauses, since they recur (the final test is not foreseen).
void report_progress(Progress *p, int epoch, int epochs, int batch, int batches,
                     double loss, double accuracy) {
    double now = now_seconds();
    int last_batch = batch == batches;
    int quarter = batches >= 4 && batch % (batches / 4) == 0;
    if (p->terminal ? !(last_batch || now - p->last >= 0.1) : !(quarter && !last_batch)) return;
    p->last = now;
    double rate = p->epoch_done / fmax(now - p->epoch_start, 1e-9);
    double overall_rate = p->done / fmax(now - p->start, 1e-9);
    printf("%sepoch %d/%d  batch %d/%d  loss %.4f  accuracy %.2f%%  %.0f images/s  ETA ",
           p->terminal ? "\r" : "", epoch, epochs, batch, batches, loss, 100 * accuracy, rate);
    print_duration((p->total - p->done) / fmax(overall_rate, 1e-9));
    printf(p->terminal ? "   " : "\n");
    fflush(stdout);
}

// Per-epoch curves (and the loss of every batch), for reports and plots.
enum { MAX_EPOCHS = 1000 };
typedef struct {
    int epochs;
    float train_loss[MAX_EPOCHS], train_accuracy[MAX_EPOCHS];
    float validation_loss[MAX_EPOCHS], validation_accuracy[MAX_EPOCHS];
    float seconds[MAX_EPOCHS];  // training time of each epoch, without validation
    float *batch_losses;        // (batch_count) in training order
    int batch_count, batch_capacity;
} History;

History *history_new(int epochs, int batches_per_epoch) {
    History *h = xmalloc(sizeof *h);
    memset(h, 0, sizeof *h);
    h->batch_capacity = epochs * batches_per_epoch;
    h->batch_losses = xmalloc((size_t)h->batch_capacity * sizeof(float));
    return h;
}

void history_free(History *h) {
    if (h) free(h->batch_losses);
    free(h);
}

// What the loop needs besides the model: the data, the order of this
// epoch, and one batch's worth of buffers, allocated once.
typedef struct {
    Model *model;
    Optimizer *optimizer;
    const Dataset *data;
    int batch;
    uint64_t seed;
    int *order;               // (data->count) this epoch's order
    float *images, *targets;  // (batch, 784) and (batch, 10): the batch, gathered
    float *probs;             // (batch, 10)
//@ from 6
    const volatile sig_atomic_t *interrupted;  // set by the Ctrl-C handler; NULL: never
    long stop_after;          // --stop-after: pause once this many steps are done (0: never)
//@ end
//@ from 7
    int augment;              // --augment: shift and flip each training image as it is gathered
//@ end
//@ from 9
    int erase;                // --erase: random erasing of each training image as it is gathered
//@ end
} Trainer;

Trainer trainer_new(Model *model, Optimizer *optimizer, const Dataset *data, int batch, uint64_t seed) {
    require(batch >= 1 && batch <= model->max_batch, "batch %d, but the model takes 1 to %d images",
            batch, model->max_batch);
    Trainer t = {.model = model, .optimizer = optimizer, .data = data, .batch = batch, .seed = seed};
    t.order = xmalloc((size_t)data->count * sizeof(int));
    t.images = xmalloc((size_t)batch * (IMAGE_SIZE + 2 * NUM_CLASSES) * sizeof(float));
    t.targets = t.images + (size_t)batch * IMAGE_SIZE;
    t.probs = t.targets + (size_t)batch * NUM_CLASSES;
    return t;
}

void trainer_free(Trainer *t) {
    free(t->order);
    free(t->images);
}

// The order of one epoch, from (seed, epoch) alone: the identity, shuffled
// by the epoch's own keyed stream. No epoch depends on the one before.
void epoch_order(int *order, int count, uint64_t seed, int epoch) {
    for (int i = 0; i < count; i++) order[i] = i;
    Rng rng = rng_keyed(seed, STREAM_SHUFFLE, (uint64_t)epoch, 0);
    shuffle(order, count, &rng);
}

//@ from 6
// Should training pause after `steps_done` optimiser steps of the run? When
// Ctrl-C was pressed, or --stop-after asks for it (the same pause, at a
// step chosen in advance: how the tests and the book interrupt a run at
// an exact place).
int should_pause(const Trainer *t, long steps_done) {
    return (t->interrupted && *t->interrupted) || (t->stop_after && steps_done >= t->stop_after);
}

//@ end
//@ from 7
/* --augment (book.md 7.6): each training image, each time it is used, is
   shifted by -2 to 2 pixels in each direction (the pixels shifted in are
   black, the background) and, half of the time, mirrored left to right.
   A shirt is a shirt a pixel to the left and in a mirror, so the model
   sees more shirts than there are. The draw is keyed by (seed, epoch,
   image), like dropout's, so a resumed run draws the same. */
void augment_image(float *image, uint64_t seed, int epoch, int item) {  // (28, 28), in place
    Rng rng = rng_keyed(seed, STREAM_AUGMENT, (uint64_t)epoch, (uint64_t)item);
    int dx = (int)rng_below(&rng, 5) - 2, dy = (int)rng_below(&rng, 5) - 2, mirror = (int)rng_below(&rng, 2);
    float original[IMAGE_SIZE];
    memcpy(original, image, sizeof original);
    for (int r = 0; r < IMAGE_ROWS; r++)
        for (int c = 0; c < IMAGE_COLS; c++) {
            int from_r = r - dy, from_c = mirror ? IMAGE_COLS - 1 - (c - dx) : c - dx;
            int inside = from_r >= 0 && from_r < IMAGE_ROWS && from_c >= 0 && from_c < IMAGE_COLS;
            image[r * IMAGE_COLS + c] = inside ? original[from_r * IMAGE_COLS + from_c] : 0.0f;
        }
}

//@ end
//@ from 9
/* --erase (book.md 9.9): random erasing (Zhong, Zheng, Kang, Li and Yang,
   2017). Half of the time, a rectangle of the image is painted over with
   noise: its area a uniform 2% to 40% of the image, its height over its
   width from 0.3 to 3.3 (the logarithm uniform), its place uniform among
   those where it fits. Clothes in photographs are folded, covered by an
   arm or cut by the frame; a model that must tell a shirt from a coat with
   a part hidden learns to use every part of it, not the one patch that
   suffices on the training set. Shifts and mirrors (--augment) teach where
   and which way round; erasing teaches what to do when a part is missing.
   Its own keyed stream, so --augment's draws stay as chapter 7 made them. */
enum { ERASE_TRIES = 10 };

void erase_image(float *image, uint64_t seed, int epoch, int item) {  // (28, 28), in place
    Rng rng = rng_keyed(seed, STREAM_ERASE, (uint64_t)epoch, (uint64_t)item);
    if (rng_below(&rng, 2)) return;
    for (int attempt = 0; attempt < ERASE_TRIES; attempt++) {
        float area = (0.02f + 0.38f * rng_uniform(&rng)) * IMAGE_SIZE;
        float ratio = expf(logf(0.3f) * (1.0f - 2.0f * rng_uniform(&rng)));  // 0.3 to 1/0.3
        int h = (int)(sqrtf(area * ratio) + 0.5f), w = (int)(sqrtf(area / ratio) + 0.5f);
        if (h < 1 || w < 1 || h > IMAGE_ROWS || w > IMAGE_COLS) continue;
        int top = (int)rng_below(&rng, (uint32_t)(IMAGE_ROWS - h + 1));
        int left = (int)rng_below(&rng, (uint32_t)(IMAGE_COLS - w + 1));
        for (int r = top; r < top + h; r++)
            for (int c = left; c < left + w; c++) image[r * IMAGE_COLS + c] = rng_uniform(&rng);
        return;
    }
}

//@ end
const char *optimizer_name(const Optimizer *o) { return o->kind == OPTIMIZER_ADAM ? "adam" : "sgd"; }

// A loss that is infinite or not a number poisons every weight it touches
// (NaN - anything is NaN), so training stops at the first one.
int diverged(Error *err, const Optimizer *o, int epoch, int batch, int batches, float loss) {
    return fail(err, EXIT_DIVERGED, "epoch %d, batch %d of %d: the loss is %g, not a finite number, "
                "so training stopped. The likely cause is a learning rate too large for %s "
                "(--lr %g): each step overshoots and the weights grow until a number overflows. "
                "Try a learning rate ten times smaller%s.", epoch, batch, batches, loss,
                optimizer_name(o), o->learning_rate, o->kind == OPTIMIZER_SGD ? ", or --optimizer adam" : "");
}

// The sums over an epoch's batches so far, from which its means come.
typedef struct {
    double loss_sum;     // the batch losses, each times its images
    long correct, seen;  // training images classified right, and seen
//@ from 6
    // How many of the epoch's batches are done. A checkpoint saves this
    // struct, so a run interrupted in the middle of an epoch resumes there.
    int batches_done;
//@ end
} EpochState;

//@ from 2 to 5
// One pass over the training data in this epoch's order, adding to *s.
// Returns 0, or EXIT_DIVERGED with the message in *err.
//@ end
//@ from 6
// One pass over the training data in this epoch's order, from the batch
// *s has reached to the last, adding to *s. Returns 0, EXIT_DIVERGED with
// the message in *err, or EXIT_INTERRUPTED after the batch during which
// Ctrl-C was pressed.
//@ end
int train_epoch(Trainer *t, int epoch, int epochs, EpochState *s, Progress *progress, History *h, Error *err) {
    Model *m = t->model;
    const Dataset *d = t->data;
    int batches = (d->count + t->batch - 1) / t->batch;
    epoch_order(t->order, d->count, t->seed, epoch);
    if (progress) {
        progress->epoch_start = now_seconds();
        progress->epoch_done = 0;
    }
//@ from 2 to 5
    for (int b = 0; b < batches; b++) {
//@ end
//@ from 6
    for (int b = s->batches_done; b < batches; b++) {
//@ end
        int first = b * t->batch, n = d->count - first < t->batch ? d->count - first : t->batch;
        for (int i = 0; i < n; i++) {
            int item = t->order[first + i];
            memcpy(t->images + (size_t)i * IMAGE_SIZE, d->images + (size_t)item * IMAGE_SIZE, IMAGE_SIZE * sizeof(float));
            memcpy(t->targets + (size_t)i * NUM_CLASSES, d->targets + (size_t)item * NUM_CLASSES, NUM_CLASSES * sizeof(float));
//@ from 7
            if (t->augment) augment_image(t->images + (size_t)i * IMAGE_SIZE, t->seed, epoch, item);
//@ end
//@ from 9
            if (t->erase) erase_image(t->images + (size_t)i * IMAGE_SIZE, t->seed, epoch, item);
//@ end
        }
        Batch batch = {.images = t->images, .targets = t->targets, .count = n,
                       .step = (long)(epoch - 1) * batches + b};
        memset(m->grads, 0, m->count * sizeof(float));
        float batch_loss = m->compute_gradients(m->net, &batch, t->probs);
        if (!isfinite(batch_loss)) {
            if (progress && progress->terminal) printf("\n");
            return diverged(err, t->optimizer, epoch, b + 1, batches, batch_loss);
        }
        optimizer_update(t->optimizer, m->params, m->grads, m->count);
        for (int i = 0; i < n; i++) s->correct += argmax(t->probs + i * NUM_CLASSES, NUM_CLASSES) == d->labels[t->order[first + i]];
        s->loss_sum += (double)batch_loss * n;
        s->seen += n;
//@ from 6
        s->batches_done = b + 1;
//@ end
        if (h && h->batch_count < h->batch_capacity) h->batch_losses[h->batch_count++] = batch_loss;
        if (progress) {
            progress->done += n;
            progress->epoch_done += n;
            report_progress(progress, epoch, epochs, b + 1, batches, s->loss_sum / s->seen, (double)s->correct / s->seen);
        }
//@ from 6
        if (b + 1 < batches && should_pause(t, batch.step + 1)) return EXIT_INTERRUPTED;
//@ end
    }
    return 0;
}

typedef struct {
    float loss, accuracy;
    int confusion[NUM_CLASSES][NUM_CLASSES];  // [true class][predicted class]
} Evaluation;

//@ from 2 to 6
// Loss, accuracy and confusion matrix on a whole dataset, in inference mode.
Evaluation evaluate(Model *m, const Dataset *d) {
//@ end
//@ from 7
// Loss, accuracy and confusion matrix on a whole dataset, in inference
// mode; and when `guesses` is not NULL, each image's predicted class and
// the probability the model gave it (for McNemar's test and the galleries).
Evaluation evaluate_each(Model *m, const Dataset *d, unsigned char *guesses, float *confidence) {  // (count) each
//@ end
    Evaluation e = {0};
    float *probs = xmalloc((size_t)m->max_batch * NUM_CLASSES * sizeof(float));  // (max_batch, 10)
    double loss_sum = 0;
    int correct = 0;
    for (int first = 0; first < d->count; first += m->max_batch) {
        int n = d->count - first < m->max_batch ? d->count - first : m->max_batch;
        Batch batch = {.images = d->images + (size_t)first * IMAGE_SIZE,
                       .targets = d->targets + (size_t)first * NUM_CLASSES, .count = n};
        float loss = m->predict(m->net, &batch, probs);
        loss_sum += (double)loss * n;
        for (int i = 0; i < n; i++) {
            int truth = d->labels[first + i], guess = argmax(probs + i * NUM_CLASSES, NUM_CLASSES);
            e.confusion[truth][guess]++;
            correct += truth == guess;
//@ from 7
            if (guesses) guesses[first + i] = (unsigned char)guess, confidence[first + i] = probs[i * NUM_CLASSES + guess];
//@ end
        }
    }
    free(probs);
    e.loss = d->count ? (float)(loss_sum / d->count) : 0;
    e.accuracy = d->count ? (float)correct / (float)d->count : 0;
    return e;
}
//@ from 7

Evaluation evaluate(Model *m, const Dataset *d) { return evaluate_each(m, d, NULL, NULL); }
//@ end

void print_confusion(const Evaluation *e) {
    printf("\nconfusion matrix (rows: true class, columns: predicted class)\n%13s", "");
    for (int k = 0; k < NUM_CLASSES; k++) printf(" %5.5s", CLASS_NAMES[k]);
    printf("\n");
    for (int t = 0; t < NUM_CLASSES; t++) {
        printf("  %-11s", CLASS_NAMES[t]);
        for (int k = 0; k < NUM_CLASSES; k++) printf(" %5d", e->confusion[t][k]);
        printf("\n");
    }
}

//@ from 6
// Per class: of the images given this class, how many were it (precision);
// of the images of this class, how many were found (recall); and F1, their
// harmonic mean, which is high only when both are. Then their plain means
// over the classes (macro averages), each class counting the same.
typedef struct {
    double precision[NUM_CLASSES], recall[NUM_CLASSES], f1[NUM_CLASSES];
    double macro_precision, macro_recall, macro_f1;
} ClassFigures;

ClassFigures class_figures(const Evaluation *e) {
    const int (*confusion)[NUM_CLASSES] = e->confusion;  // [true class][predicted class]
    ClassFigures f = {0};
    for (int k = 0; k < NUM_CLASSES; k++) {
        long predicted = 0, actual = 0;
        for (int j = 0; j < NUM_CLASSES; j++) predicted += confusion[j][k], actual += confusion[k][j];
        double precision = predicted ? (double)confusion[k][k] / predicted : 0;
        double recall = actual ? (double)confusion[k][k] / actual : 0;
        f.precision[k] = precision, f.recall[k] = recall;
        f.f1[k] = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0;
        f.macro_precision += precision, f.macro_recall += recall, f.macro_f1 += f.f1[k];
    }
    f.macro_precision /= NUM_CLASSES, f.macro_recall /= NUM_CLASSES, f.macro_f1 /= NUM_CLASSES;
    return f;
}

void print_class_report(const Evaluation *e) {
    ClassFigures f = class_figures(e);
    printf("\n%-13s %9s %9s %9s\n", "class", "precision", "recall", "F1");
    for (int k = 0; k < NUM_CLASSES; k++)
        printf("  %-11s %9.4f %9.4f %9.4f\n", CLASS_NAMES[k], f.precision[k], f.recall[k], f.f1[k]);
    printf("  %-11s %9.4f %9.4f %9.4f\n", "macro mean", f.macro_precision, f.macro_recall, f.macro_f1);
}

//@ end
//@ from 2 to 5
// Trains for `epochs` epochs with validation after each, filling history.
// Returns 0, or EXIT_DIVERGED with the message in *err.
int train(Model *m, Optimizer *opt, const Dataset *train_set, const Dataset *validation,
          int epochs, int batch, uint64_t seed, History *h, Error *err) {
    Trainer t = trainer_new(m, opt, train_set, batch, seed);
    Progress progress = {.terminal = stdout_is_terminal(), .start = now_seconds(),
                         .total = (long)epochs * train_set->count};
    int status = 0;
    for (int epoch = 1; epoch <= epochs && !status; epoch++) {
        double start = now_seconds();
        EpochState s = {0};
        status = train_epoch(&t, epoch, epochs, &s, &progress, h, err);
        if (status) break;
        double seconds = now_seconds() - start;
        float loss = (float)(s.loss_sum / s.seen), accuracy = (float)s.correct / (float)s.seen;
        Evaluation v = evaluate(m, validation);
        if (!isfinite(v.loss)) {
            status = fail(err, EXIT_DIVERGED, "epoch %d: the validation loss is %g, not a finite number: "
                          "the weights have grown too large. Try a smaller learning rate (--lr %g now).",
                          epoch, v.loss, opt->learning_rate);
            break;
        }
        int e = h->epochs++;
        h->train_loss[e] = loss, h->train_accuracy[e] = accuracy, h->seconds[e] = (float)seconds;
        h->validation_loss[e] = v.loss, h->validation_accuracy[e] = v.accuracy;
        printf("%sepoch %d/%d  train loss %.4f accuracy %.2f%%  validation loss %.4f accuracy %.2f%%  "
               "%.2f s  %.0f images/s\n", progress.terminal ? "\r" : "", epoch, epochs, loss,
               100 * accuracy, v.loss, 100 * v.accuracy, seconds, train_set->count / seconds);
    }
    trainer_free(&t);
    return status;
}
//@ end

// The debugging habit: a model that cannot learn a handful of images by
// heart has a bug, and this finds out in seconds rather than hours.
int overfit(Model *m, Optimizer *opt, const Dataset *few, int batch, uint64_t seed, Error *err) {
    enum { MAX_OVERFIT_EPOCHS = 1000 };
    Trainer t = trainer_new(m, opt, few, batch < few->count ? batch : few->count, seed);
    Evaluation e = {0};
    int epoch, status = 0;
    printf("overfitting %d training images: training on them until every one is right\n", few->count);
    for (epoch = 1; epoch <= MAX_OVERFIT_EPOCHS && !status; epoch++) {
        EpochState s = {0};
        status = train_epoch(&t, epoch, MAX_OVERFIT_EPOCHS, &s, NULL, NULL, err);
        if (status) break;
        e = evaluate(m, few);
        if (epoch % 10 == 0 || e.accuracy == 1.0f)
            printf("epoch %d  loss %.4f  accuracy %.2f%%\n", epoch, e.loss, 100 * e.accuracy);
        if (e.accuracy == 1.0f) break;
    }
    trainer_free(&t);
    if (status) return status;
    if (e.accuracy == 1.0f) {
        printf("all %d images right after %d epochs: the model and its gradients can learn.\n", few->count, epoch);
        return 0;
    }
    return fail(err, EXIT_NOT_LEARNING, "after %d epochs only %.2f%% of %d images are right: "
                "something is wrong (the gradients? the learning rate?)", MAX_OVERFIT_EPOCHS,
                100 * e.accuracy, few->count);
}

// The protocol's training set, or its first --limit images.
Dataset training_set(const FashionMnist *data, const Options *o) {
    Dataset d = data->train;
    if (o->limit && o->limit < d.count) d.count = o->limit;
    return d;
}

// The line a script reads: the last line a chapter prints.
typedef struct {
    const char *model;
    int epochs, seed;
//@ from 6
    int best_epoch;  // the epoch whose weights were tested
    uint32_t weights;  // their fingerprint (weights_fingerprint)
//@ end
    float test_loss, test_accuracy;
    double seconds;
} Result;

void print_result(const Result *r) {
    printf("result model=%s epochs=%d ", r->model, r->epochs);
//@ from 6
    printf("best_epoch=%d ", r->best_epoch);
//@ end
    printf("seed=%d test_loss=%.4f test_accuracy=%.4f ", r->seed, r->test_loss, r->test_accuracy);
//@ from 6
    printf("weights=%08x ", (unsigned)r->weights);
//@ end
    printf("seconds=%.1f\n", r->seconds);
}

//@ from 6
/* ----------------------------------------------------------------------------
   Early stopping (book.md 6.2): watch the validation loss after every
   epoch, remember the best, and stop when it has not improved for
   `patience` epochs in a row. The loss and not the accuracy: the loss
   still moves when the accuracy is stuck on a plateau, and it rises first
   when the model starts to learn its training images by heart. */

typedef struct {
    int patience;
    float best_loss;    // the lowest validation loss so far (infinite before the first epoch)
    int best_epoch;     // the epoch that reached it (0 before the first epoch)
    int epochs_without_improvement;
} EarlyStopping;

typedef enum { STOPPING_IMPROVED, STOPPING_WAIT, STOPPING_STOP } StoppingDecision;

EarlyStopping early_stopping_new(int patience) {
    return (EarlyStopping){.patience = patience, .best_loss = INFINITY};
}

// What to do after `epoch`, whose validation loss was `loss`. Only a loss
// strictly lower than the best counts as an improvement (as in Keras).
StoppingDecision early_stopping_update(EarlyStopping *s, int epoch, float loss) {
    if (loss < s->best_loss) {
        s->best_loss = loss;
        s->best_epoch = epoch;
        s->epochs_without_improvement = 0;
        return STOPPING_IMPROVED;
    }
    return ++s->epochs_without_improvement >= s->patience ? STOPPING_STOP : STOPPING_WAIT;
}

/* A learning rate that changes with the step (book.md, chapter 6's
   exercises): a linear warm-up over the first `warmup` steps, from
   lr / warmup at step 0 up to lr at step warmup - 1, then half a cosine,
   from lr at step `warmup` down to 0 at step `total`, and 0 after it.
   Steps count from 0; warmup 0 means no warm-up. Not used by the runs of
   the chapters, whose rate stays fixed. */
float warmup_cosine_lr(float lr, long step, long warmup, long total) {
    //@ exercise 6 lr-schedule: the rate at `step`: the warm-up's straight line, then the half cosine down to 0 at `total`.
    if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (step >= total) return 0.0f;
    const double half_turn = acos(-1.0);
    double done = (double)(step - warmup) / (double)(total - warmup);
    return (float)(lr * 0.5 * (1.0 + cos(half_turn * done)));
    //@ stub
    (void)step, (void)warmup, (void)total;
    return lr;
    //@ end
}

// Where a run stands: everything but the tensors and the history that a
// checkpoint must hold for a resumed run to go on exactly as this one would.
typedef struct {
    int epochs_done;        // complete epochs, validated
    EpochState epoch;       // the epoch after them, when it is under way
    EarlyStopping stopping;
    int stopped;            // early stopping has ended the run (only the test is left)
    double seconds;         // training time so far, over every session of the run
} RunState;

//@ end
//@ from 4
// The most memory the program held at once, where the system can tell
// (getrusage reports kilobytes on Linux, bytes on macOS).
void print_peak_memory(void) {
#if HAVE_POSIX
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) == 0) {
#ifdef __APPLE__
        double megabytes = (double)usage.ru_maxrss / 1e6;
#else
        double megabytes = (double)usage.ru_maxrss * 1024 / 1e6;
#endif
        printf("peak memory: %.0f MB\n", megabytes);
    }
#endif
}

//@ end
// Untrained, the network should be unsure: about 1/10 for every class,
// so a loss near -ln(1/10). Far from it, the initialisation is off.
void print_initial_loss(Model *m, const Dataset *validation) {
    Evaluation before = evaluate(m, validation);
    printf("initial validation loss %.4f (a uniform guess over 10 classes gives ln(10) = %.4f)%s\n",
           before.loss, log(10.0), fabs(before.loss - log(10.0)) > 0.5 ? "  <- suspicious" : "");
}

// The test: the confusion matrix, the loss and the accuracy, into *result.
void test_model(Model *m, const Dataset *test, Result *result) {
    Evaluation e = evaluate(m, test);
    print_confusion(&e);
//@ from 6
    print_class_report(&e);
//@ end
    printf("\ntest loss %.4f, test accuracy %.2f%% (%d images)\n", e.loss, 100 * e.accuracy, test->count);
    result->test_loss = e.loss;
    result->test_accuracy = e.accuracy;
}

//@ from 6
// Defined with the checkpoints, further down: it needs the engine's graph.
int run_protocol(Model *m, Optimizer *opt, const Dataset *train_set, const Dataset *validation,
                 const Options *o, History *h, Result *result, Error *err);

//@ end
OptimizerKind optimizer_kind(const Options *o) {
    return strcmp(o->optimizer, "sgd") == 0 ? OPTIMIZER_SGD : OPTIMIZER_ADAM;
}

//@ from 5
// Batch norm normalises a dense layer's features over the batch: one
// image alone is its own mean, normalises to 0 and trains nothing. So a
// model with batch norm (state_count > 0) refuses a batch of one image.
int check_batch_norm_batches(size_t state_count, const Options *o, int training_images, Error *err) {
    int images = o->overfit && o->overfit < training_images ? o->overfit : training_images;
    int batch = o->batch < images ? o->batch : images;
    if (state_count && (batch == 1 || images % batch == 1))
        return fail(err, EXIT_USAGE, "--batch %d on %d images leaves a batch of one image, which batch "
                    "normalisation cannot learn from (it normalises every feature to 0); choose another "
                    "--batch or --limit", o->batch, images);
    return 0;
}

//@ end
// Everything after the model is built: the sanity check, training (or
// overfitting), the test. Fills *history and *result; returns the exit
// code, with the message in *err when it is not 0.
int fit_and_test(Model *m, const FashionMnist *data, const Options *o, History **history,
                 Result *result, Error *err) {
    Dataset train_set = training_set(data, o);
//@ from 5
    if (check_batch_norm_batches(m->state_count, o, train_set.count, err)) return err->code;
//@ end
    printf("model %s: %zu parameters; optimizer %s, learning rate %g, batch %d, seed %d\n",
           m->name, m->count, o->optimizer, o->learning_rate, o->batch, o->seed);
    Optimizer opt = optimizer_new(optimizer_kind(o), (float)o->learning_rate, m->count);
//@ from 4
    opt.workers = m->workers;
//@ end
//@ from 9
    opt.weight_decay = (float)o->weight_decay, opt.frozen = m->frozen;
//@ end
    int status = 0;
    *result = (Result){.model = m->name, .seed = o->seed};
    if (o->overfit) {
        Dataset few = dataset_slice(&train_set, 0, o->overfit < train_set.count ? o->overfit : train_set.count);
        status = overfit(m, &opt, &few, o->batch, (uint64_t)o->seed, err);
    } else {
//@ from 2 to 5
        print_initial_loss(m, &data->validation);
        *history = history_new(o->epochs, (train_set.count + o->batch - 1) / o->batch);
        printf("training on %d images, validating on %d, %d epoch%s\n", train_set.count,
               data->validation.count, o->epochs, o->epochs == 1 ? "" : "s");
        double start = now_seconds();
        status = train(m, &opt, &train_set, &data->validation, o->epochs, o->batch, (uint64_t)o->seed, *history, err);
        result->seconds = now_seconds() - start;
        result->epochs = o->epochs;
//@ end
//@ from 6
//@ from 6 to 8
        if (!o->resume) print_initial_loss(m, &data->validation);  // a resumed run is not untrained
//@ end
//@ from 9
        if (!o->resume && !o->init_from) print_initial_loss(m, &data->validation);  // nor is a transferred one
//@ end
        *history = history_new(o->epochs, (train_set.count + o->batch - 1) / o->batch);
        printf("training on %d images, validating on %d, at most %d epochs, stopping after %d without "
               "improvement\n", train_set.count, data->validation.count, o->epochs, o->patience);
        status = run_protocol(m, &opt, &train_set, &data->validation, o, *history, result, err);
//@ end
    }
    if (!status && !o->overfit) test_model(m, &data->test, result);
    optimizer_free(&opt);
    return status;
}
//@ end
