/* test_conv.c - chapter 4: convolution and pooling. Each conv case is
   checked three ways: the engine's backward pass (with the naive and the
   im2col kernels) against central differences of an independent double-
   precision reference, and the two kernels against each other, forward and
   both gradients. Then max pooling exactly (ties, odd sizes), reshape
   without a copy, the basic CNN's shapes and 225,034 parameters, and a few
   real training steps. */
#include "check.h"

#define main chapter4_main
// `make test-chapter N=4 FILE=...` builds this against a student's chapter.
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter4.c"
#endif
#include CHAPTER_FILE
#undef main

static const double STEP = 1e-6, TOLERANCE = 1e-4;

static void fill(float *x, size_t n, float low, float high, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = low + (high - low) * rng_uniform(rng);
}

// Relative error, with a floor: a gradient element is a float sum of up to
// 75 products of size ~1 here, good to a few 1e-7 absolute (2.2e-7 seen),
// so one that happens to be near 0 is judged against 0.01 (allowing 1e-6),
// not against itself.
static double relative(double a, double b) { return fabs(a - b) / fmax(fmax(fabs(a), fabs(b)), 1e-2); }

/* ---- Convolution, three ways ---------------------------------------------- */

typedef struct {
    ConvShape s;
    float *r;  // (B, OH, OW, OC) the loss is sum(out * r)
} ConvCase;

// sum over the output of conv(x, w, b) * r, in double, straight from the
// definition (written again here, not calling the chapter).
static double reference_conv_loss(const ConvCase *c, const double *x, const double *w, const double *b) {
    const ConvShape *s = &c->s;
    double loss = 0;
    for (int n = 0; n < s->batch; n++)
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++)
                for (int oc = 0; oc < s->out_channels; oc++) {
                    double sum = b[oc];
                    for (int kh = 0; kh < s->kernel_h; kh++)
                        for (int kw = 0; kw < s->kernel_w; kw++)
                            for (int ci = 0; ci < s->channels; ci++) {
                                int ih = oh - s->pad + kh, iw = ow - s->pad + kw;
                                if (ih >= 0 && ih < s->height && iw >= 0 && iw < s->width)
                                    sum += x[((n * s->height + ih) * s->width + iw) * s->channels + ci] *
                                           w[((kh * s->kernel_w + kw) * s->channels + ci) * s->out_channels + oc];
                            }
                    loss += sum * c->r[((n * s->out_h + oh) * s->out_w + ow) * s->out_channels + oc];
                }
    return loss;
}

// Largest relative error between `analytic` and central differences of the
// reference, over every element of the `which` operand (0 x, 1 w, 2 b).
static double against_differences(const ConvCase *c, double *ops[3], size_t sizes[3], int which, const float *analytic) {
    double worst = 0;
    for (size_t i = 0; i < sizes[which]; i++) {
        double saved = ops[which][i];
        ops[which][i] = saved + STEP;
        double up = reference_conv_loss(c, ops[0], ops[1], ops[2]);
        ops[which][i] = saved - STEP;
        double down = reference_conv_loss(c, ops[0], ops[1], ops[2]);
        ops[which][i] = saved;
        worst = fmax(worst, relative(analytic[i], (up - down) / (2 * STEP)));
    }
    return worst;
}

// The largest |a - b| over two arrays, relative to the largest |a|.
static double max_difference(const float *a, const float *b, size_t n) {
    double largest = 0, difference = 0;
    for (size_t i = 0; i < n; i++) largest = fmax(largest, fabs(a[i])), difference = fmax(difference, fabs(a[i] - b[i]));
    return difference / fmax(largest, 1e-30);
}

static void check_conv_case(int B, int H, int W, int C, int K, int pad, int OC, Rng *rng) {
    char name[128];
    snprintf(name, sizeof name, "conv2d %s: x (%d,%d,%d,%d), kernel (%d,%d,%d,%d)", pad ? "same" : "valid",
             B, H, W, C, K, K, C, OC);
    section(name);
    float *grads[2][3];  // [kernel][x, w, b]
    float *outs[2];
    ConvCase c = {conv_shape(B, H, W, C, K, K, pad, OC), NULL};
    size_t sizes[3] = {(size_t)B * H * W * C, (size_t)K * K * C * OC, (size_t)OC}, out_size = conv_rows(&c.s) * OC;
    c.r = malloc(out_size * sizeof(float));
    fill(c.r, out_size, -1, 1, rng);
    double *ops[3];
    float *values[3];
    for (int k = 0; k < 3; k++) {
        values[k] = malloc(sizes[k] * sizeof(float));
        fill(values[k], sizes[k], -1, 1, rng);
        ops[k] = malloc(sizes[k] * sizeof(double));
        for (size_t i = 0; i < sizes[k]; i++) ops[k][i] = values[k][i];
    }
    for (int kernel = 0; kernel < 2; kernel++) {
        Graph *g = graph_new(B);
        g->kernel = kernel == 0 ? KERNEL_NAIVE : KERNEL_IM2COL;
        Node *x0 = graph_input(g, "x", (int[]){H, W, C}, 3);
        x0->requires_grad = 1;
        Node *w = graph_parameter(g, "w", (int[]){K, K, C, OC}, 4, INIT_ZEROS);
        Node *b = graph_parameter(g, "b", (int[]){OC}, 1, INIT_ZEROS);
        Node *out = conv2d(g, x0, w, b, pad);
        Node *r = graph_input(g, "r", out->shape + 1, 3);
        graph_compile(g, sum(g, mul(g, out, r)));
        memcpy(x0->value, values[0], sizes[0] * sizeof(float));
        memcpy(w->value, values[1], sizes[1] * sizeof(float));
        memcpy(b->value, values[2], sizes[2] * sizeof(float));
        memcpy(r->value, c.r, out_size * sizeof(float));
        graph_zero_grad(g);
        graph_forward(g, 1);
        graph_backward(g);
        Node *nodes[3] = {x0, w, b};
        outs[kernel] = malloc(out_size * sizeof(float));
        memcpy(outs[kernel], out->value, out_size * sizeof(float));
        for (int k = 0; k < 3; k++) {
            grads[kernel][k] = malloc(sizes[k] * sizeof(float));
            memcpy(grads[kernel][k], nodes[k]->grad, sizes[k] * sizeof(float));
            double worst = against_differences(&c, ops, sizes, k, grads[kernel][k]);
            if (!CHECK(worst < TOLERANCE))
                printf("     %s, gradient of %s: relative error %.3g against differences\n",
                       kernel ? "im2col" : "naive", "xwb" + k, worst);
        }
        graph_free(g);
    }
    // naive and im2col: the same sums, added in different orders, so they
    // differ by rounding. A sum whose terms cancel can come out near 0 with
    // the rounding of its larger terms, so each array's differences are
    // measured against its largest value, not element by element.
    double worst = max_difference(outs[0], outs[1], out_size);
    for (int k = 0; k < 3; k++) worst = fmax(worst, max_difference(grads[0][k], grads[1][k], sizes[k]));
    if (!CHECK(worst < 1e-5)) printf("     naive vs im2col: %.3g of the largest value\n", worst);
    for (int k = 0; k < 3; k++) free(values[k]), free(ops[k]), free(grads[0][k]), free(grads[1][k]);
    free(outs[0]), free(outs[1]), free(c.r);
}

static void test_conv_three_ways(Rng *rng) {
    check_conv_case(2, 5, 7, 1, 3, 0, 3, rng);  // odd sizes, one channel, valid
    check_conv_case(1, 6, 5, 3, 3, 1, 2, rng);  // three channels, same, a batch of 1
    check_conv_case(2, 4, 4, 2, 3, 1, 4, rng);
    check_conv_case(1, 7, 6, 2, 5, 2, 3, rng);  // a 5x5 kernel, same
    check_conv_case(1, 3, 3, 1, 3, 0, 1, rng);  // the output is one pixel
}

/* ---- Max pooling, exactly -------------------------------------------------- */

// The forward pass as the definition reads, window by window: the
// chapter's vectorised max_pool_forward must give its bits.
static void max_pool_forward_reference(float *out, const float *inp, int B, int H, int W, int C) {
    int OH = H / 2, OW = W / 2;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float *o = out + (((size_t)b * OH + oh) * OW + ow) * C;
                const float *x = inp + (((size_t)b * H + 2 * oh) * W + 2 * ow) * C;
                for (int c = 0; c < C; c++) o[c] = x[c];
                for (int dh = 0; dh < 2; dh++)
                    for (int dw = 0; dw < 2; dw++) {
                        const float *y = x + ((size_t)dh * W + dw) * C;
                        for (int c = 0; c < C; c++) o[c] = y[c] > o[c] ? y[c] : o[c];
                    }
            }
}

static void test_max_pool(void) {
    section("max_pool: 2x2 windows, odd sizes floored, ties to the first maximum");
    // One image 5x5, one channel: values chosen so each window's maximum is
    // known; the last row and column (index 4) are never looked at.
    float x[25] = {1, 2, 0, 0, 99,
                   3, 4, 0, 5, 99,
                   7, 7, 1, 1, 99,
                   7, 7, 1, 2, 99,
                   99, 99, 99, 99, 99};
    float out[4], expected[4] = {4, 5, 7, 2};
    max_pool_forward(out, x, 1, 5, 5, 1);
    CHECK(memcmp(out, expected, sizeof out) == 0);
    float dout[4] = {1, 2, 3, 4}, dx[25] = {0};
    max_pool_backward(dx, dout, x, 1, 5, 5, 1);
    float dx_expected[25] = {0};
    dx_expected[6] = 1;   // 4 at (1,1)
    dx_expected[8] = 2;   // 5 at (1,3)
    dx_expected[10] = 3;  // a four-way tie of 7s: the first, at (2,0)
    dx_expected[18] = 4;  // 2 at (3,3)
    CHECK(memcmp(dx, dx_expected, sizeof dx) == 0);

    // Channels stay apart: two channels interleaved (NHWC), each its own maximum.
    float y[2 * 2 * 2] = {1, -1, 2, -2, 3, -3, 0, -4}, pooled[2];
    max_pool_forward(pooled, y, 1, 2, 2, 2);
    CHECK(pooled[0] == 3 && pooled[1] == -1);

    // The vectorised passes of the fast path give the same bits as these,
    // ties and -0 included: random values rounded to a few levels, so that
    // windows often tie, on odd sizes, with a gradient that already holds
    // numbers (and -0, which `+= 0` would have turned into +0).
    enum { B = 3, H = 7, W = 9, C = 19, N = B * H * W * C, P = B * (H / 2) * (W / 2) * C };
    static float v[N], slow[P], fast[P], g_in[P], d_slow[N], d_fast[N];
    Rng rng = rng_new(7, STREAM_CHECK);
    for (int i = 0; i < N; i++) v[i] = (float)(int)(4 * rng_uniform(&rng)) - 2.0f;
    for (int i = 0; i < N; i++) d_slow[i] = d_fast[i] = i % 5 == 0 ? -0.0f : rng_uniform(&rng);
    for (int i = 0; i < P; i++) g_in[i] = rng_uniform(&rng) - 0.5f;
    max_pool_forward_reference(slow, v, B, H, W, C);
    max_pool_forward(fast, v, B, H, W, C);
    CHECK(memcmp(slow, fast, sizeof slow) == 0);
    max_pool_backward(d_slow, g_in, v, B, H, W, C);
    max_pool_backward_fast(d_fast, g_in, v, B, H, W, C);
    CHECK(memcmp(d_slow, d_fast, sizeof d_slow) == 0);

    // The engine's node: 11 -> 5, as in the basic CNN.
    Graph *g = graph_new(1);
    Node *in = graph_input(g, "x", (int[]){11, 11, 3}, 3);
    Node *p = max_pool(g, in);
    CHECK(p->shape[1] == 5 && p->shape[2] == 5 && p->shape[3] == 3);
    graph_free(g);
}

/* ---- Reshape and flatten share memory -------------------------------------- */

static void test_reshape_is_a_view(Rng *rng) {
    section("reshape and flatten: no copy, gradients pass through");
    Graph *g = graph_new(2);
    Node *x = graph_input(g, "x", (int[]){12}, 1);
    Node *w = graph_parameter(g, "w", (int[]){12}, 1, INIT_ZEROS);
    Node *y = bias_add(g, x, w);                         // an op, so reshape may take it
    Node *image = reshape(g, y, (int[]){2, 2, 3}, 3);    // (B, 2, 2, 3)
    Node *flat = flatten(g, image);                      // (B, 12)
    Node *r = graph_input(g, "r", (int[]){12}, 1);
    graph_compile(g, sum(g, mul(g, flat, r)));
    CHECK(image->value == y->value && flat->value == y->value && flat->grad == y->grad);
    CHECK(image->rank == 4 && image->shape[1] == 2 && image->shape[3] == 3 && flat->shape[1] == 12);
    fill(x->value, 24, -1, 1, rng);
    fill(r->value, 24, -1, 1, rng);
    graph_zero_grad(g);
    graph_forward(g, 1);
    graph_backward(g);
    int right = 1;  // d/dw of sum((x + w) * r) = the column sums of r
    for (int i = 0; i < 12; i++) right &= fabsf(w->grad[i] - (r->value[i] + r->value[12 + i])) < 1e-6f;
    CHECK(right);
    graph_free(g);
}

static void reshape_leaf_with_gradient(void *unused) {
    (void)unused;
    Graph *g = graph_new(1);
    Node *x = graph_input(g, "x", (int[]){4}, 1);
    x->requires_grad = 1;
    reshape(g, x, (int[]){2, 2}, 2);
}

static void conv_too_large(void *unused) {
    (void)unused;
    Graph *g = graph_new(1);
    Node *x = graph_input(g, "x", (int[]){2, 2, 1}, 3);
    Node *w = graph_parameter(g, "w", (int[]){3, 3, 1, 1}, 4, INIT_ZEROS);
    Node *b = graph_parameter(g, "b", (int[]){1}, 1, INIT_ZEROS);
    conv2d(g, x, w, b, 0);
}

static void conv_not_square(void *unused) {
    (void)unused;
    Graph *g = graph_new(1);
    Node *x = graph_input(g, "x", (int[]){7, 7, 1}, 3);
    Node *w = graph_parameter(g, "w", (int[]){3, 5, 1, 1}, 4, INIT_ZEROS);
    Node *b = graph_parameter(g, "b", (int[]){1}, 1, INIT_ZEROS);
    conv2d(g, x, w, b, 0);
}

static void test_misuse(void) {
    section("misuse of the new ops stops the program (exit code 70)");
    CHECK_EXITS(reshape_leaf_with_gradient, NULL, EXIT_BUG, "bug: reshape: a leaf that needs a gradient");
    CHECK_EXITS(conv_too_large, NULL, EXIT_BUG, "bug: conv2d: a 3x3 kernel does not fit a 2x2 image");
    CHECK_EXITS(conv_not_square, NULL, EXIT_BUG, "bug: conv2d takes odd square kernels");
}

/* ---- The basic CNN ----------------------------------------------------------- */

static void test_basic_cnn_shapes(void) {
    section("the basic CNN: shapes of the protocol, 225,034 parameters");
    GraphClassifier c = basic_cnn_graph(4, 1);
    Graph *g = c.graph;
    CHECK_EQ_INT(g->param_count, 225034);
    int expected[][3] = {{26, 26, 32}, {13, 13, 32}, {11, 11, 64}, {5, 5, 64}};
    int found = 0, shapes_right = 1;
    double macs = 0;
    for (int i = 0; i < g->order_count; i++) {
        Node *n = g->order[i];
        macs += multiply_adds_per_image(n);
        if (n->op == &OPS[OP_CONV2D] || n->op == &OPS[OP_MAX_POOL]) {
            for (int d = 0; d < 3; d++) shapes_right &= found < 4 && n->shape[d + 1] == expected[found][d];
            found++;
        }
        if (n->op == &OPS[OP_RESHAPE] && n->rank == 2) shapes_right &= n->shape[1] == 1600;
    }
    CHECK(shapes_right && found == 4);
    // 26*26*32*9 + 11*11*64*288 + 1600*128 + 128*10 = 2,631,040: the protocol's 5.3 MFLOP.
    CHECK_NEAR(macs, 2631040, 0);
    graph_free(g);
}

static void test_training_steps(void) {
    section("the basic CNN on real images: the loss falls, and twice is the same");
    FashionMnist data;
    Error err = {0};
    if (load_fashion_mnist("data", &data, &err)) {
        skip("no Fashion-MNIST in data/ (run `make data`)");
        return;
    }
    Dataset few = dataset_slice(&data.train, 0, 32 * 12);
    float losses[2][2];
    float *weights[2];
    for (int run = 0; run < 2; run++) {
        GraphClassifier c = build_model("basic", 32, 7, KERNEL_IM2COL, NULL);
        Model m = graph_model(&c, "basic");
        Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, m.count);
        Evaluation before = evaluate(&m, &few);
        Trainer t = trainer_new(&m, &opt, &few, 32, 7);
        EpochState s = {0};
        CHECK_EQ_INT(train_epoch(&t, 1, 1, &s, NULL, NULL, &err), 0);
        Evaluation after = evaluate(&m, &few);
        losses[run][0] = before.loss, losses[run][1] = after.loss;
        weights[run] = malloc(m.count * sizeof(float));
        memcpy(weights[run], m.params, m.count * sizeof(float));
        trainer_free(&t);
        optimizer_free(&opt);
        graph_free(c.graph);
    }
    if (!CHECK(losses[0][1] < losses[0][0] - 0.3f)) printf("     loss %.4f -> %.4f\n", losses[0][0], losses[0][1]);
    CHECK(losses[0][0] == losses[1][0] && losses[0][1] == losses[1][1]);
    CHECK(memcmp(weights[0], weights[1], 225034 * sizeof(float)) == 0);
    free(weights[0]), free(weights[1]);
    free_fashion_mnist(&data);

    char *overfit[] = {"chapter4", "--overfit", "20", "--batch", "20", NULL};
    CHECK_EQ_INT(chapter4_main(5, overfit), 0);
    char *ann[] = {"chapter4", "--model", "ann", "--epochs", "1", "--limit", "500", NULL};
    CHECK_EQ_INT(chapter4_main(7, ann), 0);
    char *bad[] = {"chapter4", "--kernel", "fastest", NULL};
    CHECK_EQ_INT(chapter4_main(3, bad), EXIT_USAGE);
}

/* ---- The blocked path ------------------------------------------------------------
   The blocked GEMM against the references on the conv cases; every micro-
   kernel this CPU has, and 1, 2 and 3 threads, give the same bits; a kernel
   the CPU lacks is refused with its own exit code. */

// One training step of a small basic CNN (forward, backward, Adam) with the
// given kernel and threads; returns the weights after it (the caller frees).
// Eight images: enough rows for every thread's share of every GEMM.
enum { STEP_BATCH = 8 };
static float *one_step(const Dataset *d, const char *kernel_name, int threads, float *loss) {
    GemmContext *ctx = gemm_context_new(gemm_kernel_by_name(kernel_name), threads);
    GraphClassifier c = build_model("basic", STEP_BATCH, 5, KERNEL_BLOCKED, ctx);
    Model m = graph_model(&c, "basic");
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, m.count);
    Batch batch = {.images = d->images, .targets = d->targets, .count = STEP_BATCH};
    float probs[STEP_BATCH * NUM_CLASSES];
    memset(m.grads, 0, m.count * sizeof(float));
    *loss = m.compute_gradients(m.net, &batch, probs);
    optimizer_update(&opt, m.params, m.grads, m.count);
    float *weights = malloc(m.count * sizeof(float));
    memcpy(weights, m.params, m.count * sizeof(float));
    optimizer_free(&opt);
    graph_free(c.graph);
    return weights;
}

static void test_blocked_same_bits(Rng *rng) {
    section("blocked GEMM: every kernel and thread count, the same bits; close to naive");
    static float images[STEP_BATCH * IMAGE_SIZE], targets[STEP_BATCH * NUM_CLASSES];
    static unsigned char labels[STEP_BATCH];
    fill(images, STEP_BATCH * IMAGE_SIZE, 0, 1, rng);
    for (int i = 0; i < STEP_BATCH; i++) labels[i] = (unsigned char)(i % 10), targets[i * NUM_CLASSES + i % 10] = 1;
    Dataset d = {STEP_BATCH, images, labels, targets};
    float reference_loss, loss;
    float *reference = one_step(&d, "portable", 1, &reference_loss);
    const char *kernels[] = {"portable", "avx2", "avx512"};
    for (int k = 0; k < 3; k++) {
        if (!gemm_kernel_supported(gemm_kernel_by_name(kernels[k]))) {
            char why[96];
            snprintf(why, sizeof why, "the %s kernel: this CPU or build does not have it", kernels[k]);
            skip(why);
            continue;
        }
        // The portable kernel, the reference at 1 thread, calls fmaf, which
        // is slow: it runs again only at 3 threads, where the fixed tasks
        // fall to the threads most unevenly.
        for (int threads = k == 0 ? 3 : 1; threads <= 3; threads++) {
            float *w = one_step(&d, kernels[k], threads, &loss);
            if (!CHECK(loss == reference_loss && memcmp(w, reference, 225034 * sizeof(float)) == 0))
                printf("     %s with %d threads differs from portable with 1\n", kernels[k], threads);
            free(w);
        }
    }
    free(reference);
}

static void check_blocked_conv(int B, int H, int W, int C, int K, int pad, int OC, Rng *rng) {
    ConvShape s = conv_shape(B, H, W, C, K, K, pad, OC);
    size_t nx = (size_t)B * H * W * C, nw = (size_t)K * K * C * OC, no = conv_rows(&s) * OC;
    float *x = malloc(nx * sizeof(float)), *w = malloc(nw * sizeof(float)), *b = malloc(OC * sizeof(float));
    float *dout = malloc(no * sizeof(float)), *out[2], *dx[2], *dw[2], *db[2];
    fill(x, nx, -1, 1, rng), fill(w, nw, -1, 1, rng), fill(b, (size_t)OC, -1, 1, rng), fill(dout, no, -1, 1, rng);
    GemmContext *ctx = gemm_context_new(gemm_best_kernel(), 2);
    float *flipped = malloc(conv2d_blocked_scratch(&s) * sizeof(float));
    for (int v = 0; v < 2; v++) {
        out[v] = malloc(no * sizeof(float)), dx[v] = calloc(nx, sizeof(float));
        dw[v] = calloc(nw, sizeof(float)), db[v] = calloc((size_t)OC, sizeof(float));
        if (v == 0) {
            conv2d_forward_naive(out[v], x, w, b, &s);
            conv2d_backward_naive(dx[v], dw[v], db[v], dout, x, w, &s);
        } else {
            conv2d_forward_blocked(ctx, out[v], x, w, b, &s);
            conv2d_backward_blocked(ctx, dx[v], dw[v], db[v], dout, x, w, &s, flipped);
        }
    }
    double worst = fmax(fmax(max_difference(out[0], out[1], no), max_difference(dx[0], dx[1], nx)),
                        fmax(max_difference(dw[0], dw[1], nw), max_difference(db[0], db[1], (size_t)OC)));
    if (!CHECK(worst < 1e-5))
        printf("     blocked vs naive, x (%d,%d,%d,%d) k %d pad %d oc %d: %.3g\n", B, H, W, C, K, pad, OC, worst);
    for (int v = 0; v < 2; v++) free(out[v]), free(dx[v]), free(dw[v]), free(db[v]);
    free(x), free(w), free(b), free(dout), free(flipped);
    gemm_context_free(ctx);
}

// The forward pass and the weight gradient as the blocked path computes
// them against their definitions as one GEMM each: the same bits, out
// starting from the bias and dweight added to what it held before.
static void check_blocked_forms(int B, int H, int W, int C, int pad, int OC, Rng *rng) {
    ConvShape s = conv_shape(B, H, W, C, 3, 3, pad, OC);
    int rows = (int)conv_rows(&s), patch = (int)conv_patch_size(&s);
    size_t nx = (size_t)B * H * W * C, nw = (size_t)patch * OC, no = (size_t)rows * OC;
    float *x = malloc(nx * sizeof(float)), *dout = malloc(no * sizeof(float)), *bias = malloc(OC * sizeof(float));
    float *w = malloc(nw * sizeof(float)), *scratch = malloc(conv2d_blocked_scratch(&s) * sizeof(float));
    float *direct = malloc(nw * sizeof(float)), *blocked = malloc(nw * sizeof(float));
    float *out_direct = malloc(no * sizeof(float)), *out_blocked = malloc(no * sizeof(float));
    fill(x, nx, -1, 1, rng), fill(dout, no, -1, 1, rng), fill(direct, nw, -1, 1, rng), fill(bias, OC, -1, 1, rng);
    fill(w, nw, -1, 1, rng);
    memcpy(blocked, direct, nw * sizeof(float));
    for (int r = 0; r < rows; r++) memcpy(out_direct + (size_t)r * OC, bias, OC * sizeof(float));
    GemmContext *ctx = gemm_context_new(gemm_best_kernel(), 2);
    gemm(ctx, rows, OC, patch, patches_operand(x, &s, 0), matrix_operand(w, OC), out_direct, OC, 1);
    conv2d_forward_blocked(ctx, out_blocked, x, w, bias, &s);
    gemm(ctx, patch, OC, rows, patches_operand(x, &s, 1), matrix_operand(dout, OC), direct, OC, 1);
    conv2d_backward_blocked(ctx, NULL, blocked, NULL, dout, x, w, &s, scratch);
    int forward_same = CHECK(memcmp(out_direct, out_blocked, no * sizeof(float)) == 0);
    int weight_same = CHECK(memcmp(direct, blocked, nw * sizeof(float)) == 0);
    // The backward pass with the bias gradient too: the bits of the GEMM
    // and bias_backward.
    float *db_direct = malloc(OC * sizeof(float)), *db_blocked = malloc(OC * sizeof(float));
    fill(db_direct, OC, -1, 1, rng);
    memcpy(db_blocked, db_direct, OC * sizeof(float));
    memcpy(blocked, direct, nw * sizeof(float));
    gemm(ctx, patch, OC, rows, patches_operand(x, &s, 1), matrix_operand(dout, OC), direct, OC, 1);
    bias_backward(db_direct, dout, rows, OC);
    conv2d_backward_blocked(ctx, NULL, blocked, db_blocked, dout, x, w, &s, scratch);
    int both_same = CHECK(memcmp(direct, blocked, nw * sizeof(float)) == 0 &&
                          memcmp(db_direct, db_blocked, OC * sizeof(float)) == 0);
    if (!forward_same || !weight_same || !both_same)
        printf("     x (%d,%d,%d,%d) pad %d oc %d\n", B, H, W, C, pad, OC);
    free(db_direct), free(db_blocked);
    gemm_context_free(ctx);
    free(x), free(w), free(dout), free(bias), free(scratch), free(direct), free(blocked), free(out_direct), free(out_blocked);
}

// Adam shared out over threads gives the bits of one loop, step after step.
static void test_adam_on_threads(Rng *rng) {
    section("Adam on the model's threads: the same bits as one loop");
    enum { COUNT = 100003, STEPS = 3 };  // past ADAM_PARALLEL_FROM, and not a multiple of the parts
    float *params[2], *grads = malloc(COUNT * sizeof(float));
    Optimizer opt[2];
    GemmContext *ctx = gemm_context_new(gemm_best_kernel(), 3);
    for (int v = 0; v < 2; v++) {
        params[v] = malloc(COUNT * sizeof(float));
        opt[v] = optimizer_new(OPTIMIZER_ADAM, 0.001f, COUNT);
    }
    fill(params[0], COUNT, -1, 1, rng);
    memcpy(params[1], params[0], COUNT * sizeof(float));
    opt[1].workers = ctx->workers;
    for (int step = 0; step < STEPS; step++) {
        fill(grads, COUNT, -1, 1, rng);
        for (int v = 0; v < 2; v++) optimizer_update(&opt[v], params[v], grads, COUNT);
    }
    CHECK(opt[0].step == STEPS && opt[1].step == STEPS);
    CHECK(memcmp(params[0], params[1], COUNT * sizeof(float)) == 0);
    CHECK(memcmp(opt[0].m, opt[1].m, 2 * COUNT * sizeof(float)) == 0);  // m and v, one allocation
    for (int v = 0; v < 2; v++) free(params[v]), optimizer_free(&opt[v]);
    free(grads);
    gemm_context_free(ctx);
}

static void test_blocked_against_naive(Rng *rng) {
    section("blocked convolutions against the naive ones, forward and both gradients");
    check_blocked_conv(2, 5, 7, 1, 3, 0, 3, rng);
    check_blocked_conv(1, 6, 5, 3, 3, 1, 2, rng);
    check_blocked_conv(3, 13, 13, 32, 3, 0, 64, rng);  // the basic CNN's second layer, 3 images
    check_blocked_conv(1, 7, 6, 2, 5, 2, 3, rng);
    check_blocked_conv(2, 9, 7, 16, 3, 1, 20, rng);  // 16 channels: the transposed weight gradient
    // Their other forms, bit for bit: 5 strips of 6 rows and one of 2 (OC
    // 32), odd ones, and one-channel images (both first convolutions).
    check_blocked_forms(2, 9, 7, 16, 1, 20, rng);
    check_blocked_forms(3, 13, 13, 32, 0, 64, rng);
    check_blocked_forms(4, 28, 28, 32, 1, 32, rng);
    check_blocked_forms(3, 28, 28, 1, 0, 32, rng);
    check_blocked_forms(2, 28, 28, 1, 1, 32, rng);
    check_blocked_forms(2, 5, 7, 1, 1, 3, rng);
    check_blocked_forms(1, 5, 7, 1, 1, 8, rng);   // one-channel direct loops: one vector of channels,
    check_blocked_forms(3, 4, 3, 1, 0, 16, rng);  // and outputs of one column,
    check_blocked_forms(2, 60, 60, 1, 2, 24, rng);  // a padding of 2, the largest padded image on the stack,
    check_blocked_forms(1, 62, 62, 1, 1, 8, rng);
    // Dense: blocked against chapter 2's loops.
    enum { BD = 5, CD = 37, OD = 19 };
    float x[BD * CD], w[CD * OD], g[BD * OD], out[2][BD * OD], dx[2][BD * CD] = {{0}}, dw[2][CD * OD] = {{0}};
    fill(x, BD * CD, -1, 1, rng), fill(w, CD * OD, -1, 1, rng), fill(g, BD * OD, -1, 1, rng);
    GemmContext *ctx = gemm_context_new(gemm_best_kernel(), 2);
    matmul_forward(out[0], x, w, BD, CD, OD);
    matmul_backward(dx[0], dw[0], g, x, w, BD, CD, OD);
    matmul_forward_blocked(ctx, out[1], x, w, BD, CD, OD);
    matmul_backward_blocked(ctx, dx[1], dw[1], g, x, w, BD, CD, OD);
    CHECK(max_difference(out[0], out[1], BD * OD) < 1e-5 && max_difference(dx[0], dx[1], BD * CD) < 1e-5 &&
          max_difference(dw[0], dw[1], CD * OD) < 1e-5);
    gemm_context_free(ctx);
}

static void test_missing_kernel(void) {
    section("a kernel the CPU lacks is refused (exit code 16)");
    const char *missing = NULL;
    const char *kernels[] = {"avx2", "avx512"};
    for (int k = 0; k < 2 && !missing; k++)
        if (!gemm_kernel_supported(gemm_kernel_by_name(kernels[k]))) missing = kernels[k];
    if (!missing) {
        skip("this CPU has every kernel: nothing to refuse");
        return;
    }
    Options o = default_options();
    o.kernel = missing;
    KernelKind kind;
    GemmContext *gemm;
    Error err = {0};
    CHECK_EQ_INT(choose_kernel(&o, &kind, &gemm, &err), EXIT_NO_KERNEL);
    CHECK(gemm == NULL && strstr(err.message, "Use --kernel auto") != NULL);
    // Through main, and before the data: a missing directory does not matter yet.
    char *args[] = {"chapter4", "--kernel", (char *)missing, "--data", "build/no/such/dir", NULL};
    CHECK_EQ_INT(chapter4_main(5, args), EXIT_NO_KERNEL);
}

int main(void) {
    Rng rng = rng_new(44, STREAM_CHECK);
    test_blocked_against_naive(&rng);
    test_blocked_same_bits(&rng);
    test_adam_on_threads(&rng);
    test_missing_kernel();
    test_conv_three_ways(&rng);
    test_max_pool();
    test_reshape_is_a_view(&rng);
    test_misuse();
    test_basic_cnn_shapes();
    test_training_steps();
    return check_summary();
}
