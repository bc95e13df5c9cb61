//@ from 3 to 3
/* ----------------------------------------------------------------------------
   Checking the engine against chapter 2: gradients three ways, and training.

   What this is: for one batch, the ANN's gradients from chapter 2's hand-
   derived backward pass, from the engine, and from central differences of
   the loss computed in double precision, compared parameter group by group.
   What it is not: a proof. Differences are checked on a sample of each
   group; a bug that touches one weight in ten thousand could slip through.

   Why double: a central difference (L(w+h) - L(w-h)) / 2h divides a tiny
   difference of two losses by a tiny h. In float, the losses carry only 7
   digits, so for any h the error is either rounding (too small an h) or
   curvature (too large an h), and easily 1% of the gradient. In double the
   losses carry 16 digits: with h = 1e-6 both errors fall below 1e-9. */

// |a - b| relative to the larger of the two, with a floor so that gradients
// that are zero up to rounding do not count as wrong.
double relative_error(double a, double b) {
    return fabs(a - b) / fmax(fmax(fabs(a), fabs(b)), 1e-6);
}

// The ANN's mean loss, in double, from a double copy of its parameters laid
// out as in chapter 2's memory. Written again rather than calling the float
// layers, so that it is a reference, not a copy.
double ann_loss_in_double(const double *params, const float *images, const float *targets, int B) {
    double *x = xmalloc((size_t)B * IMAGE_SIZE * sizeof(double));  // (B, width of this layer)
    double *y = xmalloc((size_t)B * IMAGE_SIZE * sizeof(double));  // (B, width of the next)
    for (size_t i = 0; i < (size_t)B * IMAGE_SIZE; i++) x[i] = images[i];
    const double *p = params;
    for (int l = 0; l < ANN_LAYERS; l++) {
        int C = ANN_WIDTHS[l], OC = ANN_WIDTHS[l + 1];
        const double *w = p, *bias = p + (size_t)C * OC;
        for (int b = 0; b < B; b++)
            for (int o = 0; o < OC; o++) {
                double s = bias[o];
                for (int c = 0; c < C; c++) s += x[b * C + c] * w[c * OC + o];
                y[b * OC + o] = (l < ANN_LAYERS - 1 && s < 0) ? 0 : s;  // ReLU, except on the logits
            }
        p += (size_t)C * OC + OC;
        double *t = x;
        x = y, y = t;
    }
    double loss = 0;  // x now holds the logits (B, 10)
    for (int b = 0; b < B; b++) {
        double max = x[b * NUM_CLASSES], sum = 0;
        for (int k = 1; k < NUM_CLASSES; k++) max = fmax(max, x[b * NUM_CLASSES + k]);
        for (int k = 0; k < NUM_CLASSES; k++) sum += exp(x[b * NUM_CLASSES + k] - max);
        for (int k = 0; k < NUM_CLASSES; k++)
            loss -= targets[b * NUM_CLASSES + k] * (x[b * NUM_CLASSES + k] - max - log(sum));
    }
    free(x);
    free(y);
    return loss / B;
}

/* Checks B images three ways and prints a table of the largest relative
   error of each pair, per parameter group. Returns 1 when every error is
   below `tolerance`. */
int check_ann_gradients(const Dataset *d, int B, uint64_t seed, int samples, double tolerance) {
    require(B >= 1 && B <= d->count, "a gradient check of %d images on a set of %d", B, d->count);
    Ann hand = ann_new(B, seed);
    GraphClassifier engine = ann_graph(B, seed);
    float *probs = xmalloc((size_t)B * NUM_CLASSES * sizeof(float));
    Batch batch = {.images = d->images, .targets = d->targets, .count = B};
    memset(hand.grad_memory, 0, hand.param_count * sizeof(float));
    ann_compute_gradients(&hand, &batch, probs);
    graph_zero_grad(engine.graph);
    graph_compute_gradients(&engine, &batch, probs);

    double *params = xmalloc(hand.param_count * sizeof(double));
    for (size_t i = 0; i < hand.param_count; i++) params[i] = hand.param_memory[i];
    Rng rng = rng_new(seed, STREAM_CHECK);
    const double h = 1e-6;
    int ok = 1;
    printf("  %-8s %7s   %-15s %-21s %s\n", "group", "size", "hand vs engine", "engine vs differences", "hand vs differences");
    size_t start = 0;
    for (int g = 0; g < 2 * ANN_LAYERS; g++) {
        int l = g / 2;
        size_t size = g % 2 ? (size_t)ANN_WIDTHS[l + 1] : (size_t)ANN_WIDTHS[l] * ANN_WIDTHS[l + 1];
        double hand_engine = 0, engine_fd = 0, hand_fd = 0;
        // An if, not fmax: gcc 12 for arm64 crashes vectorising a loop of fmax at -O3.
        for (size_t i = start; i < start + size; i++) {
            double error = relative_error(hand.grad_memory[i], engine.graph->grads[i]);
            if (error > hand_engine) hand_engine = error;
        }
        for (int s = 0; s < samples; s++) {
            size_t i = start + rng_below(&rng, (uint32_t)size);
            double saved = params[i];
            params[i] = saved + h;
            double up = ann_loss_in_double(params, d->images, d->targets, B);
            params[i] = saved - h;
            double down = ann_loss_in_double(params, d->images, d->targets, B);
            params[i] = saved;
            double difference = (up - down) / (2 * h);
            engine_fd = fmax(engine_fd, relative_error(engine.graph->grads[i], difference));
            hand_fd = fmax(hand_fd, relative_error(hand.grad_memory[i], difference));
        }
        ok &= hand_engine < tolerance && engine_fd < tolerance && hand_fd < tolerance;
        char name[32];
        snprintf(name, sizeof name, "%s%d", g % 2 ? "bias" : "weight", l + 1);
        printf("  %-8s %7zu   %-15.2g %-21.2g %.2g\n", name, size, hand_engine, engine_fd, hand_fd);
        start += size;
    }
    printf("  (largest relative error in each group; differences on %d sampled parameters per group)\n", samples);
    free(params);
    free(probs);
    graph_free(engine.graph);
    ann_free(&hand);
    return ok;
}

// Seconds per training step: the least of `rounds` timings of `steps`
// steps each. The least is the timing the rest of the machine disturbed
// least; rounds of the two models alternate, so slow spells hit both.
// Returns the number of steps each timing took.
int time_training_steps(Model *models[2], const Dataset *d, int batch, int rounds, int steps, double best[2]) {
    Dataset few = dataset_slice(d, 0, steps * batch < d->count ? steps * batch : d->count);
    int taken = (few.count + batch - 1) / batch;
    best[0] = best[1] = INFINITY;
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < 2; k++) {
            Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, models[k]->count);
            Trainer t = trainer_new(models[k], &opt, &few, batch, 1);
            EpochState s = {0};
            Error ignored = {0};  // Adam at 0.001 on real images does not diverge in 100 steps
            double start = now_seconds();
            train_epoch(&t, 1, 1, &s, NULL, NULL, &ignored);
            best[k] = fmin(best[k], (now_seconds() - start) / taken);
            trainer_free(&t);
            optimizer_free(&opt);
        }
    return taken;
}

// Trains chapter 2's hand-written ANN with the same seed and options as the
// engine's run in `engine_history` and prints how far apart the two loss
// curves are; then times both, to show what the engine's generality costs.
// Returns 0, or EXIT_BAD_GRADIENT (with the message in *err) when the
// curves differ at all.
int compare_with_hand_written(const FashionMnist *data, const Options *o, const History *engine_history,
                              Error *err) {
    printf("\nthe same training with chapter 2's hand-written ANN, for comparison:\n");
    Dataset train_set = training_set(data, o);
    Ann ann = ann_new(o->batch, (uint64_t)o->seed);
    Model model = ann_model(&ann);
    Optimizer opt = optimizer_new(optimizer_kind(o), (float)o->learning_rate, model.count);
    History *h = history_new(o->epochs, (train_set.count + o->batch - 1) / o->batch);
    int status = train(&model, &opt, &train_set, &data->validation, o->epochs, o->batch, (uint64_t)o->seed, h, err);
    double largest = 0;
    for (int i = 0; i < h->batch_count && i < engine_history->batch_count; i++)
        largest = fmax(largest, fabs(h->batch_losses[i] - engine_history->batch_losses[i]));
    // The engine runs chapter 2's kernels on the same numbers in the same
    // order, so even the rounding is the same: anything but 0 is a bug.
    if (!status) {
        printf("\nlargest difference between the two loss curves, over %d batches: %g\n", h->batch_count, largest);
        if (largest != 0 || h->batch_count != engine_history->batch_count)
            status = fail(err, EXIT_BAD_GRADIENT, "the engine and chapter 2 trained differently (loss curves "
                          "%g apart, over %d and %d batches); they run the same kernels in the same order, "
                          "so they must agree exactly: a bug in the engine", largest, engine_history->batch_count,
                          h->batch_count);
    }
    if (!status) {
        enum { ROUNDS = 5, STEPS = 100 };
        GraphClassifier engine = ann_graph(o->batch, (uint64_t)o->seed);
        Model engine_model = graph_model(&engine, "ann");
        Model *models[2] = {&model, &engine_model};
        double best[2];
        int steps = time_training_steps(models, &train_set, o->batch, ROUNDS, STEPS, best);
        printf("time per training step of %d images (best of %d rounds of %d step%s): hand-written %.3f ms, "
               "engine %.3f ms; the engine's overhead: %+.1f%%\n", o->batch, ROUNDS, steps, steps == 1 ? "" : "s",
               1e3 * best[0], 1e3 * best[1], 100 * (best[1] / best[0] - 1));
        graph_free(engine.graph);
    }
    history_free(h);
    optimizer_free(&opt);
    ann_free(&ann);
    return status;
}
//@ end
