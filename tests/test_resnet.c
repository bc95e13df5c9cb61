/* test_resnet.c - chapter 8: residual and depthwise-separable networks.
   Each new op (add, global average pooling, the depthwise and the pointwise
   convolution) three ways: the engine's backward, on the references and on
   the blocked path, against central differences of a double-precision
   reference of the loss sum(op(x) * r), on odd shapes. The fast depthwise
   convolution against the naive one, bit for bit, and on the engine at 1,
   2 and 3 threads and on every micro-kernel. The parameter and FLOP counts
   of the five new models against counts written out by hand. resnet, plain
   and separable trained two steps: the same bits at 1, 2 and 3 threads. */
#include "check.h"

#define main chapter8_main
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter8.c"
#endif
#include CHAPTER_FILE
#undef main

static const double STEP = 1e-3, TOLERANCE = 1e-4;

static void fill(float *x, size_t n, float low, float high, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = low + (high - low) * rng_uniform(rng);
}

static double relative(double a, double b) { return fabs(a - b) / fmax(fmax(fabs(a), fabs(b)), 1e-2); }

/* ---- Each op against finite differences ------------------------------------- */

enum { OP_ADD_CASE, OP_GAP_CASE, OP_DEPTHWISE_CASE, OP_POINTWISE_CASE };

typedef struct {
    int op, B, H, W, C, OC;
    const float *r;  // (the output's shape): the loss is sum(out * r)
} OpCase;

// sum(op(in[0], in[1], in[2]) * r) in double, from each op's definition.
static double reference_loss(const OpCase *k, double *const *in) {
    int B = k->B, H = k->H, W = k->W, C = k->C;
    double loss = 0;
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                size_t at = (((size_t)b * H + y) * W + x) * C;
                if (k->op == OP_ADD_CASE)
                    for (int c = 0; c < C; c++) loss += (in[0][at + c] + in[1][at + c]) * k->r[at + c];
                if (k->op == OP_GAP_CASE)
                    for (int c = 0; c < C; c++) loss += in[0][at + c] / (H * W) * k->r[b * C + c];
                if (k->op == OP_DEPTHWISE_CASE)
                    for (int c = 0; c < C; c++) {
                        double out = in[2][c];
                        for (int i = 0; i < 3; i++)
                            for (int j = 0; j < 3; j++) {
                                int yy = y + i - 1, xx = x + j - 1;
                                if (yy >= 0 && yy < H && xx >= 0 && xx < W)
                                    out += in[0][(((size_t)b * H + yy) * W + xx) * C + c] * in[1][(i * 3 + j) * C + c];
                            }
                        loss += out * k->r[at + c];
                    }
                if (k->op == OP_POINTWISE_CASE)
                    for (int o = 0; o < k->OC; o++) {
                        double out = in[2][o];
                        for (int c = 0; c < C; c++) out += in[0][at + c] * in[1][c * k->OC + o];
                        loss += out * k->r[(((size_t)b * H + y) * W + x) * k->OC + o];
                    }
            }
    return loss;
}

// The op's graph: its inputs (x needs a gradient too), then sum(op * r).
static Node *build_case(Graph *g, const OpCase *k, Node **leaves, int *leaf_count) {
    int shape[3] = {k->H, k->W, k->C};
    Node *x = graph_input(g, "x", shape, 3), *out = NULL;
    x->requires_grad = 1;
    leaves[0] = x, *leaf_count = 1;
    if (k->op == OP_ADD_CASE) {
        Node *y = graph_input(g, "y", shape, 3);
        y->requires_grad = 1;
        leaves[(*leaf_count)++] = y;
        out = add(g, x, y);
    } else if (k->op == OP_GAP_CASE) {
        out = global_avg_pool(g, x);
    } else if (k->op == OP_DEPTHWISE_CASE) {
        Node *w = graph_parameter(g, "kernel", (int[]){3, 3, k->C, 1}, 4, INIT_GLOROT);
        Node *b = graph_parameter(g, "bias", (int[]){k->C}, 1, INIT_ZEROS);
        leaves[1] = w, leaves[2] = b, *leaf_count = 3;
        out = depthwise_conv(g, x, w, b);
    } else {
        Node *w = graph_parameter(g, "kernel", (int[]){1, 1, k->C, k->OC}, 4, INIT_GLOROT);
        Node *b = graph_parameter(g, "bias", (int[]){k->OC}, 1, INIT_ZEROS);
        leaves[1] = w, leaves[2] = b, *leaf_count = 3;
        out = pointwise_conv(g, x, w, b);
    }
    Node *r = graph_input(g, "r", out->shape + 1, out->rank - 1);
    graph_compile(g, sum(g, mul(g, out, r)));
    return r;
}

static void check_op_case(const char *name, OpCase k, KernelKind kind, GemmContext *gemm, Rng *rng) {
    printf("-- %s, %s (B %d, %dx%dx%d)\n", name, kind == KERNEL_BLOCKED ? gemm->kernel->name : "naive", k.B, k.H, k.W, k.C);
    Graph *g = graph_new(k.B);
    g->kernel = kind, g->gemm = gemm;
    Node *leaves[3];
    int count;
    Node *r = build_case(g, &k, leaves, &count);
    graph_initialize(g, 7);
    for (int i = 0; i < count; i++) fill(leaves[i]->value, leaves[i]->size, -1, 1, rng);  // biases not 0
    fill(r->value, r->size, -1, 1, rng);
    k.r = r->value;
    graph_zero_grad(g);
    graph_forward(g, 1);
    graph_backward(g);
    double *in[3];
    for (int i = 0; i < count; i++) {
        in[i] = malloc(leaves[i]->size * sizeof(double));
        for (size_t e = 0; e < leaves[i]->size; e++) in[i][e] = leaves[i]->value[e];
    }
    CHECK(relative(g->output->value[0], reference_loss(&k, in)) < 1e-4);  // the forward pass
    for (int i = 0; i < count; i++) {
        double worst = 0;
        for (size_t e = 0; e < leaves[i]->size; e++) {
            double saved = in[i][e];
            in[i][e] = saved + STEP;
            double up = reference_loss(&k, in);
            in[i][e] = saved - STEP;
            double down = reference_loss(&k, in);
            in[i][e] = saved;
            double d = relative(leaves[i]->grad[e], (up - down) / (2 * STEP));
            worst = d > worst ? d : worst;
        }
        if (!CHECK(worst < TOLERANCE)) printf("     %s: worst relative difference %g\n", leaves[i]->label, worst);
    }
    for (int i = 0; i < count; i++) free(in[i]);
    g->gemm = NULL;
    graph_free(g);
}

static void test_ops_against_finite_differences(Rng *rng) {
    static const char *const NAMES[4] = {"add", "global_avg_pool", "depthwise_conv", "pointwise_conv"};
    GemmContext *portable = gemm_context_new(gemm_kernel_by_name("portable"), 1);
    GemmContext *best = gemm_context_new(gemm_best_kernel(), 3);
    for (int op = 0; op < 4; op++) {
        OpCase k = {.op = op, .B = 3, .H = 5, .W = 7, .C = 5, .OC = 3};
        check_op_case(NAMES[op], k, KERNEL_NAIVE, NULL, rng);
        check_op_case(NAMES[op], k, KERNEL_BLOCKED, portable, rng);
        k.H = 1, k.W = 3, k.C = 17;  // an image narrower than the filter, and an odd channel count
        check_op_case(NAMES[op], k, KERNEL_BLOCKED, best, rng);
    }
    gemm_context_free(portable);
    gemm_context_free(best);
}

/* ---- The fast depthwise convolution gives the naive one's bits -------------- */

static void test_depthwise_fast_is_naive(Rng *rng) {
    section("depthwise_conv: the fast version gives the naive version's bits");
    enum { B = 3, H = 6, W = 5, C = 19 };
    size_t n = (size_t)B * H * W * C;
    float *x = malloc(n * sizeof(float)), *dout = malloc(n * sizeof(float)), kernel[9 * C], bias[C];
    float *out[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    float *dx[2] = {calloc(n, sizeof(float)), calloc(n, sizeof(float))};
    float dk[2][9 * C], db[2][C], part[10 * C], row[W * C], rows[9 * W * C];
    fill(x, n, -1, 1, rng), fill(dout, n, -1, 1, rng), fill(kernel, 9 * C, -1, 1, rng), fill(bias, C, -1, 1, rng);
    fill(dk[0], 9 * C, -1, 1, rng), fill(db[0], C, -1, 1, rng);  // backward adds to what is there
    memcpy(dk[1], dk[0], sizeof dk[0]), memcpy(db[1], db[0], sizeof db[0]);
    depthwise_forward_naive(out[0], x, kernel, bias, B, H, W, C);
    depthwise_backward_naive(dx[0], dk[0], db[0], dout, x, kernel, B, H, W, C);
    depthwise_kernel_rows(rows, kernel, W, C);
    // The fast version with each loop this CPU has (its AVX-512 loop also
    // takes the kernel's sums sixteen channels at a time, C = 19 a partial vector).
    const char *names[] = {"portable", "avx2", "avx512"};
    for (int k = 0; k < 3; k++) {
        const GemmKernel *kernel_k = gemm_kernel_by_name(names[k]);
        if (!gemm_kernel_supported(kernel_k)) {
            char why[96];
            snprintf(why, sizeof why, "the %s loops: this CPU or build does not have them", names[k]);
            skip(why);
            continue;
        }
        GemmContext *ctx = gemm_context_new(kernel_k, 1);
        MultiplyAddRun *run = multiply_add_run_for(ctx);
        float dk1[9 * C], db1[C];
        memcpy(dk1, dk[1], sizeof dk1), memcpy(db1, db[1], sizeof db1);
        memset(dx[1], 0, n * sizeof(float));
        for (int b = 0; b < B; b++) {
            size_t at = (size_t)b * H * W * C;
            depthwise_forward_image(run, out[1] + at, x + at, rows, bias, H, W, C);
            depthwise_backward_image(run, dx[1] + at, part, row, dout + at, x + at, rows, H, W, C);
            for (int t = 0; t < 9 * C; t++) dk1[t] += part[t];
            for (int c = 0; c < C; c++) db1[c] += part[9 * C + c];
        }
        int same = memcmp(out[0], out[1], n * sizeof(float)) == 0 && memcmp(dx[0], dx[1], n * sizeof(float)) == 0 &&
                   memcmp(dk[0], dk1, sizeof dk1) == 0 && memcmp(db[0], db1, sizeof db1) == 0;
        if (!CHECK(same)) printf("     the %s loops differ from the naive version\n", names[k]);
        // The forward pass and the kernel's sums on edge shapes (H, W, C):
        // one row or column, C of 16 exactly, or not.
        static const int shapes[][3] = {{1, 1, 16}, {1, 2, 7}, {2, 1, 33}, {3, 2, 16}, {4, 3, 5}};
        int edges_same = 1;
        for (int e = 0; e < 5; e++) {
            int h = shapes[e][0], w = shapes[e][1], c = shapes[e][2];
            float sums[2][10 * 33], outs[2][4 * 3 * 33], taps[9 * 3 * 33];
            depthwise_kernel_sums(sums[0], dout, x, h, w, c);
            depthwise_kernel_sums_for(run)(sums[1], dout, x, h, w, c);
            edges_same &= memcmp(sums[0], sums[1], (size_t)10 * c * sizeof(float)) == 0;
            depthwise_forward_naive(outs[0], x, dout, x + n - c, 1, h, w, c);  // a kernel and a bias from the inputs
            depthwise_kernel_rows(taps, dout, w, c);
            depthwise_forward_image(run, outs[1], x, taps, x + n - c, h, w, c);
            edges_same &= memcmp(outs[0], outs[1], (size_t)h * w * c * sizeof(float)) == 0;
            float dxs[2][4 * 3 * 33] = {{0}}, dks[9 * 33] = {0}, dbs[33] = {0}, scratch[3 * 33];
            depthwise_backward_naive(dxs[0], dks, dbs, x, dout + 1, dout, 1, h, w, c);  // dout's floats the kernel
            depthwise_backward_image(run, dxs[1], sums[1], scratch, x, dout + 1, taps, h, w, c);
            edges_same &= memcmp(dxs[0], dxs[1], (size_t)h * w * c * sizeof(float)) == 0;
        }
        if (!CHECK(edges_same)) printf("     the %s loops differ from the naive version on an edge shape\n", names[k]);
        gemm_context_free(ctx);
    }
    // and a hand-computed value: the corner of image 0, channel 0 (4 taps inside the image)
    float corner = 0.0f;
    for (int i = 1; i < 3; i++)
        for (int j = 1; j < 3; j++) {
            float product = x[(((size_t)(i - 1)) * W + (j - 1)) * C] * kernel[(i * 3 + j) * C];
            corner += product;
        }
    CHECK(out[1][0] == corner + bias[0]);
    free(x), free(dout), free(out[0]), free(out[1]), free(dx[0]), free(dx[1]);
}

// The op on the engine, forward and backward: the bits of every kernel and
// thread count are those of the naive reference (large enough to be threaded).
static void test_depthwise_threads_and_kernels(Rng *rng) {
    section("depthwise_conv on the engine: naive, and every micro-kernel at 1, 2 and 3 threads, the same bits");
    enum { B = 8, H = 14, W = 14, C = 32 };
    size_t n = (size_t)B * H * W * C;
    float *x = malloc(n * sizeof(float)), *r = malloc(n * sizeof(float)), kernel[9 * C], bias[C];
    fill(x, n, -1, 1, rng), fill(r, n, -1, 1, rng), fill(kernel, 9 * C, -1, 1, rng), fill(bias, C, -1, 1, rng);
    float *reference = NULL;
    size_t floats = 2 * n + 10 * C;
    const char *kernels[3] = {"portable", "avx2", "avx512"};
    for (int cell = 0; cell < 1 + 3 * 3; cell++) {
        const GemmKernel *gk = cell ? gemm_kernel_by_name(kernels[(cell - 1) / 3]) : NULL;
        if (cell && !gemm_kernel_supported(gk)) continue;
        Graph *g = graph_new(B);
        if (cell) g->kernel = KERNEL_BLOCKED, g->gemm = gemm_context_new(gk, 1 + (cell - 1) % 3);
        Node *xn = graph_input(g, "x", (int[]){H, W, C}, 3);
        xn->requires_grad = 1;
        Node *w = graph_parameter(g, "kernel", (int[]){3, 3, C, 1}, 4, INIT_GLOROT);
        Node *b = graph_parameter(g, "bias", (int[]){C}, 1, INIT_ZEROS);
        Node *out = depthwise_conv(g, xn, w, b), *rn = graph_input(g, "r", (int[]){H, W, C}, 3);
        graph_compile(g, sum(g, mul(g, out, rn)));
        memcpy(xn->value, x, n * sizeof(float)), memcpy(rn->value, r, n * sizeof(float));
        memcpy(w->value, kernel, sizeof kernel), memcpy(b->value, bias, sizeof bias);
        graph_zero_grad(g);
        graph_forward(g, 1);
        graph_backward(g);
        float *bits = malloc(floats * sizeof(float));
        memcpy(bits, out->value, n * sizeof(float));
        memcpy(bits + n, xn->grad, n * sizeof(float));
        memcpy(bits + 2 * n, w->grad, 9 * C * sizeof(float));
        memcpy(bits + 2 * n + 9 * C, b->grad, C * sizeof(float));
        if (!reference) reference = bits;
        else {
            if (!CHECK(memcmp(bits, reference, floats * sizeof(float)) == 0))
                printf("     %s, %d threads\n", gk->name, 1 + (cell - 1) % 3);
            free(bits);
        }
        graph_free(g);
    }
    free(reference), free(x), free(r);
}

/* ---- Parameters and FLOPs, counted by hand ----------------------------------- */

// Parameters of a 3x3 convolution C -> OC with its bias, and of its batch
// norm (gamma, beta, running mean and variance: Keras counts all four).
static long conv3(long C, long OC) { return 9 * C * OC + OC; }
static long bn(long C) { return 4 * C; }
static long pointwise(long C, long OC) { return C * OC + OC; }
static long depthwise(long C) { return 9 * C + C; }

static void test_counts(void) {
    section("parameters and multiply-adds per image of the new models, against counts by hand");
    // A block of two 3x3 convolutions at C channels (and batch norms), and
    // the first block of a stage, from C/2 channels, with its projection.
    long same12 = 2 * (conv3(12, 12) + bn(12)), same24 = 2 * (conv3(24, 24) + bn(24)), same48 = 2 * (conv3(48, 48) + bn(48));
    long first24 = conv3(12, 24) + conv3(24, 24) + 2 * bn(24), first48 = conv3(24, 48) + conv3(48, 48) + 2 * bn(48);
    long proj24 = pointwise(12, 24) + bn(24), proj48 = pointwise(24, 48) + bn(48);
    long stem = conv3(1, 12) + bn(12), head = 48 * 10 + 10;
    long resnet = stem + 3 * same12 + first24 + proj24 + 2 * same24 + first48 + proj48 + 2 * same48 + head;
    long resnet8 = stem + same12 + first24 + proj24 + first48 + proj48 + head;
    CHECK_EQ_INT(resnet, 155314);
    // Multiply-adds: a 3x3 convolution at HxW, C -> OC, costs H W 9 C OC.
    double at28 = 28 * 28 * 9, at14 = 14 * 14 * 9, at7 = 7 * 7 * 9;
    double resnet_macs = at28 * 12 + 6 * at28 * 144 + at14 * 12 * 24 + 5 * at14 * 576 + 14 * 14 * 12 * 24 +
                         at7 * 24 * 48 + 5 * at7 * 48 * 48 + 7 * 7 * 24 * 48 + 480;
    double resnet8_macs = at28 * 12 + 2 * at28 * 144 + at14 * 12 * 24 + at14 * 576 + 14 * 14 * 12 * 24 + at7 * 24 * 48 +
                          at7 * 48 * 48 + 7 * 7 * 24 * 48 + 480;
    double projection_macs = 14 * 14 * 12 * 24 + 7 * 7 * 24 * 48;
    // separable: stem 1 -> 24 at 28x28, then (depthwise, pointwise) blocks.
    long separable = conv3(1, 24) + bn(24) + depthwise(24) + bn(24) + pointwise(24, 48) + bn(48) + depthwise(48) + bn(48) +
                     pointwise(48, 64) + bn(64) + depthwise(64) + bn(64) + pointwise(64, 64) + bn(64) + depthwise(64) +
                     bn(64) + pointwise(64, 128) + bn(128) + depthwise(128) + bn(128) + pointwise(128, 128) + bn(128) +
                     128 * 10 + 10;
    double separable_macs = at28 * 24 + at28 * 24 + 28 * 28 * 24 * 48 + at14 * 48 + 14 * 14 * 48 * 64 + at14 * 64 +
                            14 * 14 * 64 * 64 + at7 * 64 + 7 * 7 * 64 * 128 + at7 * 128 + 7 * 7 * 128 * 128 + 1280;
    struct {
        const char *name;
        long parameters;
        double macs;
    } want[5] = {{"resnet", resnet, resnet_macs}, {"plain", resnet - proj24 - proj48, resnet_macs - projection_macs},
                 {"resnet8", resnet8, resnet8_macs}, {"plain8", resnet8 - proj24 - proj48, resnet8_macs - projection_macs},
                 {"separable", separable, separable_macs}};
    for (int i = 0; i < 5; i++) {
        GraphClassifier c = build_model(want[i].name, 1, 1, KERNEL_NAIVE, NULL);
        CHECK_EQ_INT(c.graph->param_count + c.graph->state_count, want[i].parameters);
        if (!CHECK(model_multiply_adds(c.graph) == want[i].macs))
            printf("     %s: %.0f multiply-adds, by hand %.0f\n", want[i].name, model_multiply_adds(c.graph), want[i].macs);
        graph_free(c.graph);
    }
    // The budgets of issue and book: resnet at most the deeper CNN's
    // arithmetic, separable at most a quarter of its parameters and arithmetic.
    GraphClassifier deeper = build_model("deeper", 1, 1, KERNEL_NAIVE, NULL);
    double deeper_macs = model_multiply_adds(deeper.graph);
    long deeper_parameters = (long)(deeper.graph->param_count + deeper.graph->state_count);
    graph_free(deeper.graph);
    CHECK(resnet_macs <= deeper_macs);
    CHECK(4 * separable_macs <= deeper_macs && 4 * separable <= deeper_parameters);
    CHECK_EQ_INT(resnet8_macs, 5278368);
    CHECK_EQ_INT(separable, 41274);
}

/* ---- Training: the same bits at any thread count ------------------------------ */

static uint32_t model_steps(const char *name, const Dataset *d, const GemmKernel *kernel, int threads) {
    enum { BATCH = 2 };  // batch norm needs two images; the GEMMs have rows for every thread
    GraphClassifier c = build_model(name, BATCH, 5, KERNEL_BLOCKED, gemm_context_new(kernel, threads));
    Model m = graph_model(&c, name);
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, m.count);
    float probs[BATCH * NUM_CLASSES];
    for (long step = 0; step < 2; step++) {
        Batch batch = {.images = d->images + step * BATCH * IMAGE_SIZE, .targets = d->targets + step * BATCH * NUM_CLASSES,
                       .count = BATCH, .step = step};
        memset(m.grads, 0, m.count * sizeof(float));
        m.compute_gradients(m.net, &batch, probs);
        optimizer_update(&opt, m.params, m.grads, m.count);
    }
    uint32_t crc = crc32_update(0, (const unsigned char *)m.params, m.count * sizeof(float));
    crc = crc32_update(crc, (const unsigned char *)m.state, m.state_count * sizeof(float));
    optimizer_free(&opt);
    graph_free(c.graph);
    return crc;
}

static void test_training_same_bits(Rng *rng) {
    section("resnet, plain and separable: two training steps, the same bits at 1, 2 and 3 threads; resnet and separable also on the portable kernel");
    static float images[8 * IMAGE_SIZE], targets[8 * NUM_CLASSES];
    fill(images, 8 * IMAGE_SIZE, 0, 1, rng);
    for (int i = 0; i < 8; i++) targets[i * NUM_CLASSES + i % 10] = 1;
    Dataset d = {.images = images, .targets = targets, .count = 8};
    const char *models[3] = {"resnet", "plain", "separable"};
    for (int i = 0; i < 3; i++) {
        // The portable kernel calls fmaf, which is slow: it is the reference
        // for resnet and separable (whose depthwise loop is compiled once per
        // instruction set); plain has no code of its own that depends on it.
        uint32_t one = model_steps(models[i], &d, i == 1 ? gemm_best_kernel() : gemm_kernel_by_name("portable"), 1);
        int same = 1;
        for (int threads = i == 1 ? 2 : 1; threads <= 3; threads++)
            same &= model_steps(models[i], &d, gemm_best_kernel(), threads) == one;
        if (!CHECK(same)) printf("     %s\n", models[i]);
        printf("   %s: weights=%08x after two steps\n", models[i], (unsigned)one);
    }
}

int main(void) {
    Rng rng = rng_new(8, 0);
    test_ops_against_finite_differences(&rng);
    test_depthwise_fast_is_naive(&rng);
    test_depthwise_threads_and_kernels(&rng);
    test_counts();
    test_training_same_bits(&rng);
    return check_summary();
}
