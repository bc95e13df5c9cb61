/* test_bn.c - chapter 5: batch normalisation and dropout. BatchNorm three
   ways (the engine's backward against central differences of a double-
   precision reference, and its forward against a direct computation), over
   conv-shaped and dense-shaped inputs; inference with the running values;
   the running values after k steps against a hand computation; dropout's
   masks (rate, scaling, keyed streams); the deeper CNN's parameter counts;
   and a few real training steps. */
#include "check.h"

#define main chapter5_main
// `make test-chapter N=5 FILE=...` builds this against a student's chapter.
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter5.c"
#endif
#include CHAPTER_FILE
#undef main

static const double STEP = 1e-6, TOLERANCE = 1e-4;

static void fill(float *x, size_t n, float low, float high, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = low + (high - low) * rng_uniform(rng);
}

static double relative(double a, double b) { return fabs(a - b) / fmax(fmax(fabs(a), fabs(b)), 1e-3); }

/* ---- BatchNorm three ways -------------------------------------------------- */

typedef struct {
    size_t N;
    int C;
    const float *r;  // (N, C): the loss is sum(out * r)
} BnCase;

// sum(batch_norm(x) * r) in double, from the definition.
static double reference_bn_loss(const BnCase *c, const double *x, const double *gamma, const double *beta) {
    double loss = 0;
    for (int ch = 0; ch < c->C; ch++) {
        double mean = 0, var = 0;
        for (size_t i = 0; i < c->N; i++) mean += x[i * c->C + ch];
        mean /= (double)c->N;
        for (size_t i = 0; i < c->N; i++) var += (x[i * c->C + ch] - mean) * (x[i * c->C + ch] - mean);
        var /= (double)c->N;  // biased, as Keras
        for (size_t i = 0; i < c->N; i++)
            loss += (gamma[ch] * (x[i * c->C + ch] - mean) / sqrt(var + 1e-3) + beta[ch]) * c->r[i * c->C + ch];
    }
    return loss;
}

static void check_bn_case(const char *name, int B, const int *item_shape, int rank, Rng *rng) {
    section(name);
    Graph *g = graph_new(B);
    Node *x0 = graph_input(g, "x", item_shape, rank);
    x0->requires_grad = 1;
    Node *w = x0;  // the gradient checked first is x's
    Node *out = batch_norm(g, x0, (const char *const[]){"gamma", "beta", "mean", "variance"});
    Node *r = graph_input(g, "r", item_shape, rank);
    graph_compile(g, sum(g, mul(g, out, r)));
    graph_initialize(g, 1);
    Node *gamma = out->inputs[1], *beta = out->inputs[2], *mean = out->inputs[3], *var = out->inputs[4];
    int C = gamma->shape[0];
    size_t n = x0->size, N = n / (size_t)C;
    fill(x0->value, n, -2, 3, rng);
    fill(r->value, n, -1, 1, rng);
    fill(gamma->value, (size_t)C, 0.5f, 1.5f, rng);
    fill(beta->value, (size_t)C, -0.5f, 0.5f, rng);
    graph_zero_grad(g);
    graph_forward(g, 1);
    graph_backward(g);

    // The forward pass against a direct computation (in double).
    double worst_forward = 0;
    for (int ch = 0; ch < C; ch++) {
        double m = 0, v = 0;
        for (size_t i = 0; i < N; i++) m += x0->value[i * C + ch];
        m /= (double)N;
        for (size_t i = 0; i < N; i++) v += (x0->value[i * C + ch] - m) * (x0->value[i * C + ch] - m);
        v /= (double)N;
        for (size_t i = 0; i < N; i++) {
            double y = gamma->value[ch] * (x0->value[i * C + ch] - m) / sqrt(v + 1e-3) + beta->value[ch];
            worst_forward = fmax(worst_forward, fabs(y - out->value[i * C + ch]));
        }
        // One step of the running averages from (0, 1): 0.01 of the batch's.
        worst_forward = fmax(worst_forward, fabs(mean->value[ch] - 0.01 * m));
        worst_forward = fmax(worst_forward, fabs(var->value[ch] - (0.99 + 0.01 * v)));
    }
    if (!CHECK(worst_forward < 1e-5)) printf("     forward vs direct: %.3g\n", worst_forward);

    // The gradients against central differences of the double reference.
    BnCase c = {N, C, r->value};
    double *ops[3];
    const Node *nodes[3] = {w, gamma, beta};
    for (int k = 0; k < 3; k++) {
        ops[k] = malloc(nodes[k]->size * sizeof(double));
        for (size_t i = 0; i < nodes[k]->size; i++) ops[k][i] = k == 0 ? x0->value[i] : nodes[k]->value[i];
    }
    for (int k = 0; k < 3; k++) {
        double worst = 0;
        for (size_t i = 0; i < nodes[k]->size; i++) {
            double saved = ops[k][i];
            ops[k][i] = saved + STEP;
            double up = reference_bn_loss(&c, ops[0], ops[1], ops[2]);
            ops[k][i] = saved - STEP;
            double down = reference_bn_loss(&c, ops[0], ops[1], ops[2]);
            ops[k][i] = saved;
            worst = fmax(worst, relative(nodes[k]->grad[i], (up - down) / (2 * STEP)));
        }
        if (!CHECK(worst < TOLERANCE)) printf("     gradient of %s: %.3g against differences\n", k ? nodes[k]->label : "x", worst);
    }
    for (int k = 0; k < 3; k++) free(ops[k]);

    // Inference uses the running values, not the batch's.
    fill(mean->value, (size_t)C, -1, 1, rng);
    fill(var->value, (size_t)C, 0.5f, 2, rng);
    graph_forward(g, 0);
    double worst_inference = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (int)(i % (size_t)C);
        double y = gamma->value[ch] * (x0->value[i] - mean->value[ch]) / sqrt(var->value[ch] + 1e-3) + beta->value[ch];
        worst_inference = fmax(worst_inference, fabs(y - out->value[i]));
    }
    if (!CHECK(worst_inference < 1e-5)) printf("     inference vs running values: %.3g\n", worst_inference);
    graph_free(g);
}

static void test_batch_norm(Rng *rng) {
    check_bn_case("batch_norm over a conv-shaped input (3, 4, 5, 6): per channel", 3, (int[]){4, 5, 6}, 3, rng);
    check_bn_case("batch_norm over a dense-shaped input (7, 5): per feature", 7, (int[]){5}, 1, rng);
    check_bn_case("batch_norm over a batch of 2, one channel", 2, (int[]){3, 3, 1}, 3, rng);
}

// Three training steps of batch norm on constant batches: the running
// values follow running = 0.99 * running + 0.01 * batch, by hand.
static void test_running_averages(void) {
    section("running mean and variance after 3 steps, by hand");
    Graph *g = graph_new(2);
    Node *x0 = graph_input(g, "x", (int[]){1}, 1);
    Node *w = graph_parameter(g, "w", (int[]){1}, 1, INIT_ZEROS);
    Node *out = batch_norm(g, bias_add(g, x0, w), (const char *const[]){"gamma", "beta", "mean", "variance"});
    graph_compile(g, sum(g, out));
    graph_initialize(g, 1);
    double mean = 0, var = 1;
    float batches[3][2] = {{1, 3}, {2, 6}, {-1, -1}};
    for (int k = 0; k < 3; k++) {
        memcpy(x0->value, batches[k], sizeof batches[k]);
        graph_forward(g, 1);
        double m = (batches[k][0] + batches[k][1]) / 2.0, d = (batches[k][0] - batches[k][1]) / 2.0;
        mean = 0.99 * mean + 0.01 * m;
        var = 0.99 * var + 0.01 * d * d;  // the biased variance of two values: ((a-b)/2)^2
    }
    CHECK_NEAR(out->inputs[3]->value[0], mean, 1e-6);
    CHECK_NEAR(out->inputs[4]->value[0], var, 1e-6);
    // Inference changes nothing.
    graph_forward(g, 0);
    CHECK_NEAR(out->inputs[3]->value[0], mean, 1e-6);
    graph_free(g);
}

/* ---- Dropout ------------------------------------------------------------------ */

static Graph *dropout_graph(int B, int width, float rate, Node **x, Node **out) {
    Graph *g = graph_new(B);
    *x = graph_input(g, "x", (int[]){width}, 1);
    Node *w = graph_parameter(g, "w", (int[]){width}, 1, INIT_ZEROS);
    *out = dropout(g, bias_add(g, *x, w), rate);
    graph_compile(g, sum(g, *out));
    graph_initialize(g, 9);
    return g;
}

static void test_dropout(void) {
    section("dropout: the rate, inverted scaling, keyed masks, identity in inference");
    enum { B = 8, WIDTH = 5000 };
    Node *x, *out;
    Graph *g = dropout_graph(B, WIDTH, 0.25f, &x, &out);
    for (size_t i = 0; i < x->size; i++) x->value[i] = 1.0f;
    g->step = 3;
    graph_forward(g, 1);
    size_t dropped = 0;
    double total = 0;
    int only_two_values = 1;
    for (size_t i = 0; i < out->size; i++) {
        dropped += out->value[i] == 0.0f;
        total += out->value[i];
        only_two_values &= out->value[i] == 0.0f || out->value[i] == 1.0f / 0.75f;
    }
    double fraction = (double)dropped / (double)out->size;  // 40,000 draws: standard error 0.0022
    if (!CHECK(fabs(fraction - 0.25) < 0.01)) printf("     dropped %.4f\n", fraction);
    CHECK(only_two_values);
    CHECK_NEAR(total / (double)out->size, 1.0, 0.02);  // the expected value is kept
    // The gradient flows exactly where the values did, scaled the same: the
    // backward pass draws every item's mask again. (x is 1 and w 0, so each
    // output is its factor, and w's gradient the sum of the batch's.)
    graph_zero_grad(g);
    graph_backward(g);
    Node *w = out->inputs[0]->inputs[1];
    double worst = 0;
    for (int i = 0; i < WIDTH; i++) {
        double expected = 0;
        for (int b = 0; b < B; b++) expected += out->value[(size_t)b * WIDTH + i];
        worst = fmax(worst, fabs(w->grad[i] - expected));
    }
    if (!CHECK(worst < 1e-5)) printf("     the gradient is %g off where the values went\n", worst);

    // On two threads (the items shared out, 40,000 values), the same
    // outputs and gradients to the bit.
    float *first = malloc(out->size * sizeof(float)), *grad = malloc(WIDTH * sizeof(float));
    memcpy(first, out->value, out->size * sizeof(float));
    memcpy(grad, w->grad, WIDTH * sizeof(float));
    g->gemm = gemm_context_new(gemm_best_kernel(), 2);
    graph_forward(g, 1);
    graph_zero_grad(g);
    graph_backward(g);
    CHECK(memcmp(first, out->value, out->size * sizeof(float)) == 0 && memcmp(grad, w->grad, WIDTH * sizeof(float)) == 0);
    gemm_context_free(g->gemm);
    g->gemm = NULL;
    free(grad);
    // The same step gives the same masks; another step, other masks; and
    // item i's mask does not depend on the batch size (its own stream).
    graph_forward(g, 1);
    CHECK(memcmp(first, out->value, out->size * sizeof(float)) == 0);
    g->step = 4;
    graph_forward(g, 1);
    CHECK(memcmp(first, out->value, out->size * sizeof(float)) != 0);
    g->step = 3;
    graph_set_batch(g, 3);
    graph_forward(g, 1);
    CHECK(memcmp(first, out->value, 3 * WIDTH * sizeof(float)) == 0);
    graph_set_batch(g, B);
    // Inference: the identity.
    graph_forward(g, 0);
    int identity = 1;
    for (size_t i = 0; i < out->size; i++) identity &= out->value[i] == 1.0f;
    CHECK(identity);
    free(first);
    graph_free(g);
}

// The draws at once (RNG_LANES lanes, or sixteen with AVX-512) are the
// draws one at a time, bit for bit, and leave the stream where they would.
static void test_draws_at_once(void) {
    section("dropout's draws at once: the numbers and the state of one draw at a time");
    enum { MOST = 6272 };  // one image of the 14x14x32 dropout
    static float one_at_a_time[MOST], at_once[MOST];
    void (*fills[])(Rng *, float *, size_t) = {rng_uniform_fill, rng_uniform_fill_widest};
    const char *names[] = {"portable", "widest"};
    for (int f = 0; f < 2; f++) {
        int same = 1;
        for (size_t n = 0; n <= MOST; n = n < 40 ? n + 1 : MOST) {
            Rng serial = rng_keyed(5, STREAM_DROPOUT, n, 7), fast = serial;
            for (size_t i = 0; i < n; i++) one_at_a_time[i] = rng_uniform(&serial);
            rng_uniform_fill(&fast, at_once, 0);  // nothing drawn, nothing moved
            fills[f](&fast, at_once, n);
            same &= memcmp(one_at_a_time, at_once, n * sizeof(float)) == 0 && serial.state == fast.state;
            if (n == MOST) break;
        }
        if (!CHECK(same)) printf("     %s differs\n", names[f]);
    }
#if HAVE_X86_KERNELS
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")))
        skip("this CPU has no AVX512DQ: the sixteen-lane fill was not run");
#endif
    // And the op's masks are those of the keyed stream, drawn one at a time.
    enum { B = 2, WIDTH = 37 };
    Node *x, *out;
    Graph *g = dropout_graph(B, WIDTH, 0.5f, &x, &out);
    for (size_t i = 0; i < x->size; i++) x->value[i] = 1.0f;
    g->step = 11;
    graph_forward(g, 1);
    int masks = 1;
    for (int b = 0; b < B; b++) {
        Rng rng = rng_keyed(g->seed, STREAM_DROPOUT, 11, (uint64_t)(out - g->nodes) << 32 | (uint64_t)b);
        for (int i = 0; i < WIDTH; i++) masks &= out->value[b * WIDTH + i] == (rng_uniform(&rng) < 0.5f ? 0.0f : 2.0f);
    }
    CHECK(masks);
    graph_free(g);
}

/* ---- The deeper CNN ----------------------------------------------------------- */

static void test_deeper_cnn(void) {
    section("the deeper CNN: 872,426 parameters, 871,530 trained");
    GraphClassifier c = deeper_cnn_graph(2, 1, (DeeperParts){1, 1});
    CHECK_EQ_INT(c.graph->param_count + c.graph->state_count, 872426);
    CHECK_EQ_INT(c.graph->param_count, 871530);
    Model m = graph_model(&c, "deeper");
    CHECK(m.state == c.graph->state && m.state_count == 896);
    int ones = 0;  // running variances start at 1, means at 0
    for (size_t i = 0; i < m.state_count; i++) ones += m.state[i] == 1.0f;
    CHECK_EQ_INT(ones, 448);
    graph_free(c.graph);
}

static void backward_after_inference(void *unused) {
    (void)unused;
    GraphClassifier c = deeper_cnn_graph(2, 1, (DeeperParts){1, 1});
    graph_forward(c.graph, 0);
    graph_backward(c.graph);
}

static void test_real_steps(void) {
    section("a few real training steps, then inference: finite and deterministic");
    // A batch of one image cannot teach batch norm: refused, as is a last batch of one.
    char *one[] = {"chapter5", "--batch", "1", "--limit", "10", NULL};
    CHECK_EQ_INT(chapter5_main(5, one), EXIT_USAGE);
    char *last_one[] = {"chapter5", "--batch", "4", "--limit", "9", NULL};
    CHECK_EQ_INT(chapter5_main(5, last_one), EXIT_USAGE);
    CHECK_EXITS(backward_after_inference, NULL, EXIT_BUG, "bug: graph_backward() after an inference-mode forward");
    FashionMnist data;
    Error err = {0};
    if (load_fashion_mnist("data", &data, &err)) {
        skip("no Fashion-MNIST in data/ (run `make data`)");
        return;
    }
    Dataset few = dataset_slice(&data.train, 0, 16 * 4);
    Dataset check = dataset_slice(&data.validation, 0, 32);
    Evaluation results[2];
    float *state[2];
    for (int run = 0; run < 2; run++) {
        GraphClassifier c = build_model("deeper", 16, 3, KERNEL_IM2COL, NULL);
        Model m = graph_model(&c, "deeper");
        Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, m.count);
        Trainer t = trainer_new(&m, &opt, &few, 16, 3);
        EpochState s = {0};
        CHECK_EQ_INT(train_epoch(&t, 1, 1, &s, NULL, NULL, &err), 0);
        CHECK(isfinite(s.loss_sum));
        results[run] = evaluate(&m, &check);
        state[run] = malloc(m.state_count * sizeof(float));
        memcpy(state[run], m.state, m.state_count * sizeof(float));
        trainer_free(&t);
        optimizer_free(&opt);
        graph_free(c.graph);
    }
    CHECK(isfinite(results[0].loss));
    CHECK(results[0].loss == results[1].loss);
    CHECK(memcmp(state[0], state[1], 896 * sizeof(float)) == 0);
    free(state[0]), free(state[1]);
    free_fashion_mnist(&data);
}

// Two training steps of the deeper CNN (batch norm and dropout included) on
// the blocked path: 1, 2 and 3 threads give the same bits.
static float *deeper_steps(const Dataset *d, int threads) {
    GraphClassifier c = build_model("deeper", 8, 4, KERNEL_BLOCKED, gemm_context_new(gemm_best_kernel(), threads));
    Model m = graph_model(&c, "deeper");
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, m.count);
    float probs[8 * NUM_CLASSES];
    for (long step = 0; step < 2; step++) {
        Batch batch = {.images = d->images + step * 8 * IMAGE_SIZE, .targets = d->targets + step * 8 * NUM_CLASSES,
                       .count = 8, .step = step};
        memset(m.grads, 0, m.count * sizeof(float));
        m.compute_gradients(m.net, &batch, probs);
        optimizer_update(&opt, m.params, m.grads, m.count);
    }
    float *weights = malloc((m.count + m.state_count) * sizeof(float));
    memcpy(weights, m.params, m.count * sizeof(float));
    memcpy(weights + m.count, m.state, m.state_count * sizeof(float));
    optimizer_free(&opt);
    graph_free(c.graph);
    return weights;
}

static void test_threads_same_bits(Rng *rng) {
    section("the deeper CNN on the blocked path: 1, 2 and 3 threads, the same bits");
    static float images[16 * IMAGE_SIZE], targets[16 * NUM_CLASSES];
    static unsigned char labels[16];
    fill(images, 16 * IMAGE_SIZE, 0, 1, rng);
    for (int i = 0; i < 16; i++) labels[i] = (unsigned char)(i % 10), targets[i * NUM_CLASSES + i % 10] = 1;
    Dataset d = {16, images, labels, targets};
    float *one = deeper_steps(&d, 1);
    for (int threads = 2; threads <= 3; threads++) {
        float *other = deeper_steps(&d, threads);
        if (!CHECK(memcmp(one, other, 872426 * sizeof(float)) == 0)) printf("     %d threads differ from 1\n", threads);
        free(other);
    }
    free(one);
}

/* ---- The row-at-a-time passes against the plain loops, bit for bit ---------------- */

// Batch norm written out one value at a time, with the sums in the order
// batchnorm.c defines: BN_PARTS fixed parts of the rows, each summed row by
// row in double, the parts added in part order. The fast passes work on a
// vector of channels at once, a lane per channel, so they must give these
// bits exactly, at any thread count.
static void plain_batch_norm(float *out, float *x_hat, float *inv_std, float *dx, float *dgamma, float *dbeta,
                             const float *x, const float *dout, const float *gamma, const float *beta, size_t N, int C) {
    for (int c = 0; c < C; c++) {
        double part_sums[2][BN_PARTS] = {{0}}, total[2] = {0};
        for (int part = 0; part < BN_PARTS; part++)
            for (size_t i = N * part / BN_PARTS; i < N * (part + 1) / BN_PARTS; i++) part_sums[0][part] += x[i * C + c];
        for (int part = 0; part < BN_PARTS; part++) total[0] += part_sums[0][part];
        float mean = (float)(total[0] / (double)N);
        for (int part = 0; part < BN_PARTS; part++)
            for (size_t i = N * part / BN_PARTS; i < N * (part + 1) / BN_PARTS; i++) {
                double d = (double)x[i * C + c] - mean;
                part_sums[1][part] += d * d;
            }
        for (int part = 0; part < BN_PARTS; part++) total[1] += part_sums[1][part];
        inv_std[c] = 1.0f / sqrtf((float)(total[1] / (double)N) + BN_EPSILON);
        for (size_t i = 0; i < N; i++) {
            x_hat[i * C + c] = (x[i * C + c] - mean) * inv_std[c];
            out[i * C + c] = gamma[c] * x_hat[i * C + c] + beta[c];
        }
        double g_parts[2][BN_PARTS] = {{0}}, g[2] = {0};
        for (int part = 0; part < BN_PARTS; part++)
            for (size_t i = N * part / BN_PARTS; i < N * (part + 1) / BN_PARTS; i++) {
                g_parts[0][part] += dout[i * C + c];
                g_parts[1][part] += (double)dout[i * C + c] * x_hat[i * C + c];
            }
        for (int part = 0; part < BN_PARTS; part++) g[0] += g_parts[0][part], g[1] += g_parts[1][part];
        dbeta[c] += (float)g[0], dgamma[c] += (float)g[1];
        float scale = gamma[c] * inv_std[c], mean_g = (float)(g[0] / (double)N), mean_gx = (float)(g[1] / (double)N);
        for (size_t i = 0; i < N; i++) dx[i * C + c] += scale * (dout[i * C + c] - mean_g - x_hat[i * C + c] * mean_gx);
    }
}

static void test_rows_against_plain(Rng *rng) {
    section("batch norm's row passes against plain loops: the same bits, odd shapes, 1-3 threads, both modes");
    const size_t shapes[][2] = {{35, 3}, {17, 37}, {130, 64}, {64, 256}, {1000, 5}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        size_t N = shapes[k][0], C = shapes[k][1], n = N * C;
        float *x = malloc(n * sizeof(float)), *dout = malloc(n * sizeof(float)), *want = calloc(4 * n, sizeof(float));
        float *got = calloc(4 * n, sizeof(float)), gamma[256], beta[256];
        float want_small[5][256] = {{0}}, got_small[6][256] = {{0}};  // inv_std, dgamma, dbeta, running mean and var; batch mean
        fill(x, n, -2, 3, rng), fill(dout, n, -1, 1, rng), fill(gamma, C, 0.5f, 1.5f, rng), fill(beta, C, -1, 1, rng);
        plain_batch_norm(want, want + n, want_small[0], want + 2 * n, want_small[1], want_small[2], x, dout, gamma, beta, N, (int)C);
        for (int threads = 1; threads <= 3; threads++) {
            Workers *w = threads > 1 ? workers_new(threads) : NULL;
            memset(got, 0, 4 * n * sizeof(float)), memset(got_small, 0, sizeof got_small);
            batch_norm_forward_train(w, got, got_small[5], got_small[0], got_small[3], got_small[4], x, gamma, beta, N, (int)C);
            batch_norm_backward(w, got + 2 * n, got_small[1], got_small[2], dout, x, got_small[5], got_small[0], gamma, N, (int)C);
            // out and dx (x_hat is the plain loops' own: the fast passes compute it again, row by row)
            int same = memcmp(want, got, n * sizeof(float)) == 0 && memcmp(want + 2 * n, got + 2 * n, n * sizeof(float)) == 0 &&
                       memcmp(want_small, got_small, 3 * sizeof want_small[0]) == 0;
            // Inference: out = (x - running mean) * gamma / sqrt(running var + eps) + beta, value by value.
            for (size_t c = 0; c < C; c++) got_small[4][c] = 0.5f + (float)c / (float)C;
            batch_norm_forward_infer(w, got + 3 * n, x, gamma, beta, got_small[3], got_small[4], N, (int)C);
            for (size_t i = 0; i < n; i++) {
                size_t c = i % C;
                float scale = gamma[c] / sqrtf(got_small[4][c] + BN_EPSILON);
                same &= got[3 * n + i] == (x[i] - got_small[3][c]) * scale + beta[c];
            }
            if (!CHECK(same)) printf("     N %zu, C %zu, %d threads\n", N, C, threads);
            workers_free(w);
        }
        free(x), free(dout), free(want), free(got);
    }
}

int main(void) {
    Rng rng = rng_new(55, STREAM_CHECK);
    test_rows_against_plain(&rng);
    test_batch_norm(&rng);
    test_running_averages();
    test_dropout();
    test_draws_at_once();
    test_deeper_cnn();
    test_threads_same_bits(&rng);
    test_real_steps();
    return check_summary();
}
