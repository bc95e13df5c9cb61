/* test_ann.c - chapter 2: the random numbers, the initialisation, every
   backward pass against finite differences of an independent double-
   precision forward pass, Adam against hand-worked numbers, determinism,
   a short real training run, --overfit, and bad options. */
#include "check.h"

#define main chapter2_main
// `make test-chapter N=2 FILE=...` builds this against a student's chapter.
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter2.c"
#endif
#include CHAPTER_FILE
#undef main

/* ---- Gradient checking ----------------------------------------------------
   The reference forward passes below are written again, in double, without
   looking at the chapter's code: a bug copied into both would hide itself.
   Central differences (f(x+h) - f(x-h)) / 2h have error O(h^2) from the
   Taylor series plus rounding of about 1e-16 * |f| / h; with h = 1e-6 in
   double both are below 1e-9, far under what we test for.

   Tolerance: the chapter's backward passes run in float, whose relative
   precision is 2^-24 = 6e-8; a gradient that sums a few hundred terms can be
   off by some 1e-6 relative. A wrong formula is off by order 1. So we accept
   a relative error below 1e-4, measured as |a-b| / max(|a|, |b|, 1e-3): the
   floor keeps tiny gradients, whose relative error means nothing, from
   failing on rounding alone. */
enum { MAX_ELEMENTS = 4096 };
static const double FD_STEP = 1e-6, GRADIENT_TOLERANCE = 1e-4;

static double relative_error(double a, double b) {
    return fabs(a - b) / fmax(fmax(fabs(a), fabs(b)), 1e-3);
}

static void fill_uniform(float *x, size_t n, float low, float high, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = low + (high - low) * rng_uniform(rng);
}

// Inputs away from ReLU's kink at 0, so a finite step never crosses it.
static void fill_away_from_zero(float *x, size_t n, Rng *rng) {
    for (size_t i = 0; i < n; i++) {
        float u = rng_uniform(rng);
        x[i] = (u < 0.5f ? -1.0f : 1.0f) * (0.05f + u);
    }
}

// A scalar of a layer's output: sum(out * r), so dL/dout = r.
static double dot_with(const double *out, const float *r, size_t n) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += out[i] * r[i];
    return sum;
}

// The reference dense layer: out = x @ w + b, in double.
static void reference_dense(double *out, const double *x, const double *w, const double *b, int B, int C, int OC) {
    for (int i = 0; i < B; i++)
        for (int o = 0; o < OC; o++) {
            double s = b[o];
            for (int c = 0; c < C; c++) s += x[i * C + c] * w[c * OC + o];
            out[i * OC + o] = s;
        }
}

// The reference mean cross-entropy of softmax(z) against t, in double.
static double reference_softmax_cross_entropy(const double *z, const float *t, int B, int K) {
    double total = 0;
    for (int i = 0; i < B; i++) {
        double sum = 0;
        for (int k = 0; k < K; k++) sum += exp(z[i * K + k]);
        for (int k = 0; k < K; k++) total -= t[i * K + k] * log(exp(z[i * K + k]) / sum);
    }
    return total / B;
}

// The point where a gradient is checked: up to four float arrays (inputs,
// parameters, the output weights r), and double copies of those that get
// perturbed; objectives read the copies.
typedef struct { const float *arrays[4]; size_t sizes[4]; double *scratch[4]; } Point;

static double dense_objective(const Point *p, const void *context) {
    const int *dims = context;  // B, C, OC
    int B = dims[0], C = dims[1], OC = dims[2];
    double out[MAX_ELEMENTS];
    reference_dense(out, p->scratch[0], p->scratch[1], p->scratch[2], B, C, OC);
    return dot_with(out, p->arrays[3], (size_t)B * OC);  // arrays[3]: r
}

// Central differences in double of the objective with respect to every
// element of arrays[which], against `analytic`; the largest relative error.
static double check_against_differences(Point *p, int which, const float *analytic,
                                        double (*objective)(const Point *, const void *),
                                        const void *context) {
    for (int a = 0; a < 4; a++)
        for (size_t i = 0; p->scratch[a] && i < p->sizes[a]; i++) p->scratch[a][i] = p->arrays[a][i];
    double worst = 0;
    for (size_t i = 0; i < p->sizes[which]; i++) {
        double saved = p->scratch[which][i];
        p->scratch[which][i] = saved + FD_STEP;
        double up = objective(p, context);
        p->scratch[which][i] = saved - FD_STEP;
        double down = objective(p, context);
        p->scratch[which][i] = saved;
        worst = fmax(worst, relative_error((up - down) / (2 * FD_STEP), analytic[i]));
    }
    return worst;
}

static void test_dense_gradients(void) {
    section("dense backward against finite differences");
    enum { B = 3, C = 5, OC = 4 };
    Rng rng = rng_new(7, STREAM_CHECK);
    float x[B * C], w[C * OC], b[OC], r[B * OC], out[B * OC];
    fill_uniform(x, B * C, -1, 1, &rng);
    fill_uniform(w, C * OC, -1, 1, &rng);
    fill_uniform(b, OC, -1, 1, &rng);
    fill_uniform(r, B * OC, -1, 1, &rng);
    float dx[B * C] = {0}, dw[C * OC] = {0}, db[OC] = {0};
    dense_forward(out, x, w, b, B, C, OC);
    dense_backward(dx, dw, db, r, x, w, B, C, OC);  // dout = r
    double sx[B * C], sw[C * OC], sb[OC];
    Point p = {{x, w, b, r}, {B * C, C * OC, OC, B * OC}, {sx, sw, sb, NULL}};
    int dims[3] = {B, C, OC};
    CHECK(check_against_differences(&p, 0, dx, dense_objective, dims) < GRADIENT_TOLERANCE);
    CHECK(check_against_differences(&p, 1, dw, dense_objective, dims) < GRADIENT_TOLERANCE);
    CHECK(check_against_differences(&p, 2, db, dense_objective, dims) < GRADIENT_TOLERANCE);
    // The forward pass itself, against the reference.
    double ref[B * OC];
    reference_dense(ref, sx, sw, sb, B, C, OC);
    double worst = 0;
    for (int i = 0; i < B * OC; i++) worst = fmax(worst, fabs(ref[i] - out[i]));
    CHECK(worst < 1e-5);
    // Backward adds: a second call doubles the gradients (up to rounding).
    float dw_once[C * OC];
    memcpy(dw_once, dw, sizeof dw);
    dense_backward(NULL, dw, db, r, x, w, B, C, OC);
    int doubled = 1;
    for (int i = 0; i < C * OC; i++) doubled &= fabsf(dw[i] - 2 * dw_once[i]) <= 1e-6f * fabsf(dw[i]);
    CHECK(doubled);
}

static double relu_objective(const Point *p, const void *context) {
    size_t n = *(const size_t *)context;
    double out[MAX_ELEMENTS];
    for (size_t i = 0; i < n; i++) out[i] = p->scratch[0][i] > 0 ? p->scratch[0][i] : 0;
    return dot_with(out, p->arrays[1], n);
}

static void test_relu_gradients(void) {
    section("relu backward against finite differences");
    enum { N = 40 };
    Rng rng = rng_new(8, STREAM_CHECK);
    float x[N], r[N], out[N], dx[N] = {0};
    fill_away_from_zero(x, N, &rng);
    fill_uniform(r, N, -1, 1, &rng);
    relu_forward(out, x, N);
    relu_backward(dx, r, x, N);
    double sx[N];
    size_t n = N;
    Point p = {{x, r}, {N, N}, {sx, NULL}};
    CHECK(check_against_differences(&p, 0, dx, relu_objective, &n) < GRADIENT_TOLERANCE);
    int zero_where_negative = 1;
    for (int i = 0; i < N; i++) zero_where_negative &= x[i] > 0 || (dx[i] == 0 && out[i] == 0);
    CHECK(zero_where_negative);
}

static double softmax_objective(const Point *p, const void *context) {
    const int *dims = context;
    return reference_softmax_cross_entropy(p->scratch[0], p->arrays[1], dims[0], dims[1]);
}

static void test_softmax_cross_entropy(void) {
    section("softmax cross-entropy: forward, backward, stability");
    enum { B = 4, K = 10 };
    Rng rng = rng_new(9, STREAM_CHECK);
    float z[B * K], t[B * K] = {0}, probs[B * K], dz[B * K] = {0};
    fill_uniform(z, B * K, -3, 3, &rng);
    for (int i = 0; i < B; i++) t[i * K + (i * 3) % K] = 1.0f;           // one-hot rows...
    for (int k = 0; k < K; k++) t[(B - 1) * K + k] = 1.0f / K;           // ...and one soft row
    float loss = softmax_cross_entropy_forward(probs, z, t, B, K);
    softmax_cross_entropy_backward(dz, 1.0f, probs, t, B, K);
    double sz[B * K];
    Point p = {{z, t}, {B * K, B * K}, {sz, NULL}};
    int dims[2] = {B, K};
    CHECK(check_against_differences(&p, 0, dz, softmax_objective, dims) < GRADIENT_TOLERANCE);
    CHECK_NEAR(loss, reference_softmax_cross_entropy(sz, t, B, K), 1e-5);
    double row_sum = 0;
    for (int k = 0; k < K; k++) row_sum += probs[k];
    CHECK_NEAR(row_sum, 1.0, 1e-6);
    // Logits of 1000 would overflow exp() without the max subtraction.
    float big[K], big_probs[K], one_hot[K] = {0};
    for (int k = 0; k < K; k++) big[k] = 1000.0f + k;
    one_hot[K - 1] = 1;
    float big_loss = softmax_cross_entropy_forward(big_probs, big, one_hot, 1, K);
    CHECK(isfinite(big_loss));
    CHECK_NEAR(big_loss, 0.4586, 1e-4);  // -log(1 / sum_j e^-j) for j = 0..9
    // Equal logits: the loss of a uniform guess, ln(10).
    float flat[K] = {0}, flat_probs[K];
    CHECK_NEAR(softmax_cross_entropy_forward(flat_probs, flat, one_hot, 1, K), log(10.0), 1e-6);
}

/* The whole ANN: ann_backward against differences of a double-precision
   forward pass of the same network, for a sample of every parameter group
   (all 109,386 would take minutes for no more confidence). */
static double reference_ann_loss(const double *params, const float *images, const float *targets, int B) {
    enum { MAX_B = 8 };
    double a[MAX_B * 128], h[MAX_B * 128], xin[MAX_B * IMAGE_SIZE];
    const double *x = NULL, *p = params;
    for (int i = 0; i < B * IMAGE_SIZE; i++) xin[i] = images[i];
    x = xin;
    for (int l = 0; l < ANN_LAYERS; l++) {
        int C = ANN_WIDTHS[l], OC = ANN_WIDTHS[l + 1];
        reference_dense(a, x, p, p + (size_t)C * OC, B, C, OC);
        p += (size_t)C * OC + OC;
        if (l == ANN_LAYERS - 1) break;
        for (int i = 0; i < B * OC; i++) h[i] = a[i] > 0 ? a[i] : 0;
        x = h;
    }
    return reference_softmax_cross_entropy(a, targets, B, NUM_CLASSES);
}

static void test_ann_gradients(void) {
    section("the whole ANN against finite differences");
    enum { B = 4 };
    Ann net = ann_new(B, 3);
    Rng rng = rng_new(10, STREAM_CHECK);
    float images[B * IMAGE_SIZE], targets[B * NUM_CLASSES] = {0};
    fill_uniform(images, B * IMAGE_SIZE, 0, 1, &rng);
    for (int i = 0; i < B; i++) targets[i * NUM_CLASSES + i] = 1;
    fill_uniform(net.param_memory, net.param_count, -0.3f, 0.3f, &rng);  // nonzero biases too
    memset(net.grad_memory, 0, net.param_count * sizeof(float));
    float loss = ann_forward(&net, images, targets, B);
    ann_backward(&net, images, targets, B);
    double *params = malloc(net.param_count * sizeof(double));
    for (size_t i = 0; i < net.param_count; i++) params[i] = net.param_memory[i];
    CHECK_NEAR(loss, reference_ann_loss(params, images, targets, B), 1e-5);
    double worst = 0;
    size_t group_start = 0;
    for (int l = 0; l < ANN_LAYERS; l++)
        for (int is_bias = 0; is_bias < 2; is_bias++) {
            size_t size = is_bias ? (size_t)ANN_WIDTHS[l + 1] : (size_t)ANN_WIDTHS[l] * ANN_WIDTHS[l + 1];
            for (int s = 0; s < 25; s++) {
                size_t i = group_start + rng_below(&rng, (uint32_t)size);
                double saved = params[i];
                params[i] = saved + FD_STEP;
                double up = reference_ann_loss(params, images, targets, B);
                params[i] = saved - FD_STEP;
                double down = reference_ann_loss(params, images, targets, B);
                params[i] = saved;
                worst = fmax(worst, relative_error((up - down) / (2 * FD_STEP), net.grad_memory[i]));
            }
            group_start += size;
        }
    CHECK_EQ_INT(group_start, 109386);
    if (!CHECK(worst < GRADIENT_TOLERANCE)) printf("     largest relative error %.3g\n", worst);
    free(params);
    ann_free(&net);
}

/* ---- Random numbers and initialisation ---------------------------------- */

static void test_rng(void) {
    section("PCG32: reference values, streams, bounds, shuffle");
    // The first outputs of the reference pcg32-demo, seeded with 42, stream 54.
    Rng r = rng_new(42, 54);
    const uint32_t expected[6] = {0xa15c02b7, 0x7b47f409, 0xba1d3330, 0x83d2f293, 0xbfa4784b, 0xcbed606e};
    int same = 1;
    for (int i = 0; i < 6; i++) same &= rng_next(&r) == expected[i];
    CHECK(same);
    // Reproducible: the same seed and stream give the same numbers, however
    // much another generator is used in between.
    Rng a = rng_new(1, STREAM_INIT), b = rng_new(1, STREAM_INIT), other = rng_new(1, STREAM_SHUFFLE);
    int equal = 1;
    for (int i = 0; i < 100; i++) {
        uint32_t x = rng_next(&a);
        rng_next(&other);
        equal &= x == rng_next(&b);
    }
    CHECK(equal);
    // The streams this book uses select the reference's sequences: seed 1,
    // streams 1 (init) and 2 (shuffle), worked out with a separate
    // implementation of the reference's pcg32_srandom_r and pcg32_random_r
    // (one that gives the values above for seed 42, stream 54).
    const uint32_t init_1[3] = {0xc9828f91, 0x1592e274, 0xc0262657};
    const uint32_t shuffle_1[3] = {0x0f5deba9, 0x5bd7525b, 0xb2473657};
    Rng init_stream = rng_new(1, STREAM_INIT), shuffle_stream = rng_new(1, STREAM_SHUFFLE);
    int both_right = 1;
    for (int i = 0; i < 3; i++)
        both_right &= rng_next(&init_stream) == init_1[i] && rng_next(&shuffle_stream) == shuffle_1[i];
    CHECK(both_right);
    // Independent: with the same seed, the init and shuffle streams are
    // different sequences, not one sequence shifted. Of 1000 outputs, count
    // the positions where the shuffle stream, offset by 0 to 9 draws, equals
    // the init stream; for unrelated 32-bit numbers that is almost surely 0.
    enum { DRAWS = 1000, SHIFTS = 10 };
    uint32_t init[DRAWS], shuffled[DRAWS + SHIFTS];
    Rng s1 = rng_new(1, STREAM_INIT), s2 = rng_new(1, STREAM_SHUFFLE);
    for (int i = 0; i < DRAWS; i++) init[i] = rng_next(&s1);
    for (int i = 0; i < DRAWS + SHIFTS; i++) shuffled[i] = rng_next(&s2);
    int matches = 0;
    for (int shift = 0; shift < SHIFTS; shift++)
        for (int i = 0; i < DRAWS; i++) matches += init[i] == shuffled[i + shift];
    CHECK_EQ_INT(matches, 0);
    Rng seed2 = rng_new(2, STREAM_INIT), seed1 = rng_new(1, STREAM_INIT);
    CHECK(rng_next(&seed2) != rng_next(&seed1));
    // rng_below stays in range and is roughly uniform: of 100000 draws each
    // of 10 values gets 10000, give or take 5 standard deviations of 95.
    int counts[10] = {0}, in_range = 1;
    for (int i = 0; i < 100000; i++) {
        uint32_t v = rng_below(&a, 10);
        in_range &= v < 10;
        if (v < 10) counts[v]++;
    }
    CHECK(in_range);
    int balanced = 1;
    for (int k = 0; k < 10; k++) balanced &= abs(counts[k] - 10000) < 5 * 95;
    CHECK(balanced);
    float lowest = 1, highest = 0;
    for (int i = 0; i < 100000; i++) {
        float u = rng_uniform(&a);
        lowest = fminf(lowest, u), highest = fmaxf(highest, u);
    }
    CHECK(lowest >= 0 && lowest < 1e-3 && highest < 1 && highest > 0.999);
    int items[100], seen[100] = {0}, permutation = 1, moved = 0;
    for (int i = 0; i < 100; i++) items[i] = i;
    shuffle(items, 100, &a);
    for (int i = 0; i < 100; i++) seen[items[i]]++, moved += items[i] != i;
    for (int i = 0; i < 100; i++) permutation &= seen[i] == 1;
    CHECK(permutation);
    CHECK(moved > 80);
}

static void test_glorot(void) {
    section("Glorot uniform bounds");
    enum { FAN_IN = 784, FAN_OUT = 128, N = FAN_IN * FAN_OUT };
    static float w[N];
    Rng rng = rng_new(5, STREAM_INIT);
    glorot_uniform(w, N, FAN_IN, FAN_OUT, &rng);
    double limit = sqrt(6.0 / (FAN_IN + FAN_OUT)), largest = 0, sum = 0, squares = 0;
    for (int i = 0; i < N; i++) {
        largest = fmax(largest, fabs(w[i]));
        sum += w[i];
        squares += (double)w[i] * w[i];
    }
    CHECK(largest <= limit);
    CHECK(largest > 0.999 * limit);
    CHECK_NEAR(sum / N, 0.0, 0.01 * limit);
    CHECK_NEAR(squares / N, limit * limit / 3, 0.01 * limit * limit);  // variance of U(-a,a) is a^2/3
    // In the ANN every layer has its own limit, sqrt(6 / (in + out)): the
    // weights fill that range, and no more, layer by layer.
    Ann net = ann_new(8, 1);
    int biases_zero = 1;
    for (int l = 0; l < ANN_LAYERS; l++) {
        size_t n = (size_t)ANN_WIDTHS[l] * ANN_WIDTHS[l + 1];
        double layer_limit = sqrt(6.0 / (ANN_WIDTHS[l] + ANN_WIDTHS[l + 1])), layer_largest = 0;
        for (size_t i = 0; i < n; i++) layer_largest = fmax(layer_largest, fabs(net.params.weight[l][i]));
        if (!CHECK(layer_largest <= layer_limit && layer_largest > 0.99 * layer_limit))
            printf("     layer %d: largest weight %.4f, limit %.4f\n", l + 1, layer_largest, layer_limit);
        for (int o = 0; o < ANN_WIDTHS[l + 1]; o++) biases_zero &= net.params.bias[l][o] == 0.0f;
    }
    CHECK(biases_zero);
    CHECK_EQ_INT(net.param_count, 109386);
    ann_free(&net);
}

/* ---- Optimisers ----------------------------------------------------------- */

static void test_optimizers(void) {
    section("Adam and SGD against values worked out by hand");
    /* One parameter at 1.0, gradients 0.5 then 0.25, protocol settings.
       Step 1: m = 0.05, v = 0.00025; corrected m = 0.5, v = 0.25; the step is
       0.001 * 0.5 / (0.5 + 1e-7), so p = 0.9990000002.
       Step 2: m = 0.07, v = 0.00031225; corrected by 1 - 0.9^2 = 0.19 and
       1 - 0.999^2 = 0.001999: m = 0.368421, v = 0.156203, so
       p = 0.9990000002 - 0.001 * 0.368421 / (0.395225 + 1e-7) = 0.9980678208. */
    float p = 1.0f, g = 0.5f;
    Optimizer adam = optimizer_new(OPTIMIZER_ADAM, 0.001f, 1);
    optimizer_update(&adam, &p, &g, 1);
    CHECK_NEAR(p, 0.9990000002, 1e-7);
    g = 0.25f;
    optimizer_update(&adam, &p, &g, 1);
    CHECK_NEAR(p, 0.9980678208, 2e-7);
    CHECK_EQ_INT(adam.step, 2);
    optimizer_free(&adam);
    /* Those steps barely feel epsilon; a tiny gradient shows where it goes
       and how big it is. With g = 1e-7 the first step is
       0.001 * g / (|g| + eps): 0.0005 for the protocol's eps = 1e-7 added to
       sqrt(v_hat) (as in the paper and PyTorch); 0.00091 for eps = 1e-8;
       3.2e-7 for eps inside the square root. */
    float tiny = 1.0f, tiny_g = 1e-7f;
    Optimizer fresh = optimizer_new(OPTIMIZER_ADAM, 0.001f, 1);
    CHECK(fresh.beta1 == 0.9f && fresh.beta2 == 0.999f && fresh.epsilon == 1e-7f);
    optimizer_update(&fresh, &tiny, &tiny_g, 1);
    CHECK_NEAR(tiny, 1.0 - 0.0005, 1e-6);
    optimizer_free(&fresh);
    float q[2] = {1.0f, -2.0f}, gq[2] = {0.5f, -0.25f};
    Optimizer sgd = optimizer_new(OPTIMIZER_SGD, 0.1f, 2);
    optimizer_update(&sgd, q, gq, 2);
    CHECK_NEAR(q[0], 0.95, 1e-7);
    CHECK_NEAR(q[1], -1.975, 1e-7);
}

/* ---- The training loop, with a model that only watches -------------------
   A fake model that learns nothing but records what the loop hands it:
   image i carries its own index in its first pixel, and the model "predicts"
   the right class for every third image and the next class for the rest, so
   the accuracy and the confusion matrix the loop reports are known exactly.
   Its loss on a batch is the mean index of the batch's images, so the mean
   loss over an epoch is right only if batches are weighted by their size.
   And it sets its one gradient to 1, so the loop must zero it before every
   batch, and SGD must then move its one parameter by -learning_rate. */
enum { WATCHED = 64 * 3 + 17 };  // three full batches of 64 and a partial one

typedef struct {
    int seen[WATCHED];          // how often each image was trained on
    int order[WATCHED], count;  // the images in the order they came
    int calls, last_n;          // compute_gradients calls, and the size of the last
    int targets_match;          // did every image come with its own one-hot target?
    int grads_zeroed;           // was the gradient 0 at the start of every batch?
    long steps[8];              // the step of each of the first eight batches
    float *grad;                // (1) the model's gradient
    int poison_call;            // when > 0: the loss of this call (1, 2, ...) is NaN
} Watcher;

static float watcher_guess(const float *images, int n, float *probs) {
    double index_sum = 0;
    for (int i = 0; i < n; i++) {
        int item = (int)images[(size_t)i * IMAGE_SIZE], label = item % NUM_CLASSES;
        int guess = item % 3 == 0 ? label : (label + 1) % NUM_CLASSES;
        for (int k = 0; k < NUM_CLASSES; k++) probs[i * NUM_CLASSES + k] = k == guess;
        index_sum += item;
    }
    return (float)(index_sum / n);
}

static float watcher_compute_gradients(void *net, const Batch *batch, float *probs) {
    Watcher *w = net;
    const float *images = batch->images, *targets = batch->targets;
    int n = batch->count;
    for (int i = 0; i < n; i++) {
        int item = (int)images[(size_t)i * IMAGE_SIZE];
        w->seen[item]++;
        w->order[w->count++ % WATCHED] = item;
        for (int k = 0; k < NUM_CLASSES; k++)
            w->targets_match &= targets[i * NUM_CLASSES + k] == (k == item % NUM_CLASSES);
    }
    w->grads_zeroed &= *w->grad == 0;
    *w->grad = 1;
    if (w->calls < 8) w->steps[w->calls] = batch->step;
    w->calls++, w->last_n = n;
    float loss = watcher_guess(images, n, probs);
    return w->calls == w->poison_call ? NAN : loss;
}

static float watcher_predict(void *net, const Batch *batch, float *probs) {
    (void)net;
    return watcher_guess(batch->images, batch->count, probs);
}

// One whole epoch from its start; its mean loss and accuracy.
static int epoch_means(Trainer *t, int epoch, int epochs, float *loss, float *accuracy, Error *err) {
    EpochState s = {0};
    int status = train_epoch(t, epoch, epochs, &s, NULL, NULL, err);
    *loss = s.seen ? (float)(s.loss_sum / s.seen) : 0;
    *accuracy = s.seen ? (float)s.correct / (float)s.seen : 0;
    return status;
}

static void watcher_reset(Watcher *w, float *grad) {
    memset(w, 0, sizeof *w);
    w->targets_match = w->grads_zeroed = 1;
    w->grad = grad;
}

static void test_training_loop(void) {
    section("the training loop: every image once per epoch, reshuffled, exact accounting");
    static float images[WATCHED * IMAGE_SIZE], targets[WATCHED * NUM_CLASSES];
    static unsigned char labels[WATCHED];
    int right = 0;
    for (int i = 0; i < WATCHED; i++) {
        images[(size_t)i * IMAGE_SIZE] = (float)i;
        labels[i] = (unsigned char)(i % NUM_CLASSES);
        targets[i * NUM_CLASSES + labels[i]] = 1;
        right += i % 3 == 0;
    }
    const double mean_index = (WATCHED - 1) / 2.0;
    Dataset d = {WATCHED, images, labels, targets};
    static Watcher w;
    float param = 0, grad = 0;
    watcher_reset(&w, &grad);
    Model m = {.name = "watcher", .net = &w, .compute_gradients = watcher_compute_gradients,
               .predict = watcher_predict, .params = &param, .grads = &grad, .count = 1, .max_batch = 64};
    Optimizer sgd = optimizer_new(OPTIMIZER_SGD, 0.5f, 1);

    Trainer t = trainer_new(&m, &sgd, &d, 64, 5);
    float loss, accuracy;
    Error err = {0};
    CHECK_EQ_INT(epoch_means(&t, 1, 2, &loss, &accuracy, &err), 0);
    int once = 1, identity = 1;
    for (int i = 0; i < WATCHED; i++) once &= w.seen[i] == 1, identity &= w.order[i] == i;
    CHECK(once);
    CHECK(!identity);
    CHECK_EQ_INT(w.calls, 4);
    CHECK_EQ_INT(w.last_n, 17);
    CHECK(w.targets_match);
    CHECK(w.grads_zeroed);
    CHECK_NEAR(param, -0.5 * 4, 0);  // four steps of -0.5 * 1, exact in float
    CHECK_NEAR(loss, mean_index, 1e-4);
    CHECK_NEAR(accuracy, (double)right / WATCHED, 1e-6);
    int first_epoch[WATCHED];
    memcpy(first_epoch, w.order, sizeof first_epoch);
    epoch_means(&t, 2, 2, &loss, &accuracy, &err);
    int twice = 1;
    for (int i = 0; i < WATCHED; i++) twice &= w.seen[i] == 2;
    CHECK(twice);
    CHECK(memcmp(first_epoch, w.order, sizeof first_epoch) != 0);  // a new order every epoch
    // Steps number the batches of the whole run: 0-3 in epoch 1, 4-7 in epoch 2.
    int steps_right = 1;
    for (int k = 0; k < 8; k++) steps_right &= w.steps[k] == k;
    CHECK(steps_right);
    int second_epoch[WATCHED];
    memcpy(second_epoch, w.order, sizeof second_epoch);  // the second epoch wrote over the first
    trainer_free(&t);

    // The same seed gives the same first-epoch order; and an epoch's order
    // comes from (seed, epoch) alone: a fresh trainer that starts at epoch 2
    // (as a resumed run would) sees the second epoch's order.
    watcher_reset(&w, &grad);
    t = trainer_new(&m, &sgd, &d, 64, 5);
    epoch_means(&t, 1, 1, &loss, &accuracy, &err);
    CHECK(memcmp(first_epoch, w.order, sizeof first_epoch) == 0);
    trainer_free(&t);
    watcher_reset(&w, &grad);
    t = trainer_new(&m, &sgd, &d, 64, 5);
    epoch_means(&t, 2, 2, &loss, &accuracy, &err);
    CHECK(memcmp(second_epoch, w.order, sizeof second_epoch) == 0);
    CHECK_EQ_INT(w.steps[0], 4);
    trainer_free(&t);

    // A NaN loss stops the epoch at that batch, before the optimiser moves,
    // with EXIT_DIVERGED and a message that says where and what to try.
    watcher_reset(&w, &grad);
    w.poison_call = 2;
    param = 0;
    t = trainer_new(&m, &sgd, &d, 64, 5);
    CHECK_EQ_INT(epoch_means(&t, 3, 5, &loss, &accuracy, &err), EXIT_DIVERGED);
    CHECK_EQ_INT(w.calls, 2);
    CHECK_NEAR(param, -0.5, 0);  // one step, not two
    if (!CHECK(strstr(err.message, "epoch 3, batch 2 of 4") && strstr(err.message, "learning rate") &&
               strstr(err.message, "--lr 0.5")))
        printf("     message: %s\n", err.message);
    trainer_free(&t);
    optimizer_free(&sgd);

    // evaluate(), in batches of 50 with a partial last one of 9: the mean
    // index only if the batches are weighted by size (unweighted: 120.4).
    m.max_batch = 50;
    Evaluation e = evaluate(&m, &d);
    CHECK_NEAR(e.accuracy, (double)right / WATCHED, 1e-6);
    CHECK_NEAR(e.loss, mean_index, 1e-4);
    int total = 0, confusion_right = 1;
    for (int truth = 0; truth < NUM_CLASSES; truth++)
        for (int guess = 0; guess < NUM_CLASSES; guess++) {
            int expected = 0;
            for (int i = truth; i < WATCHED; i += NUM_CLASSES)
                expected += guess == (i % 3 == 0 ? truth : (truth + 1) % NUM_CLASSES);
            confusion_right &= e.confusion[truth][guess] == expected;
            total += e.confusion[truth][guess];
        }
    CHECK(confusion_right);
    CHECK_EQ_INT(total, WATCHED);
}

/* ---- Training, on the real data ----------------------------------------- */

static void train_small(FashionMnist *data, int seed, Ann *net, Evaluation *validation) {
    *net = ann_new(64, (uint64_t)seed);
    Model model = ann_model(net);
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, model.count);
    Dataset few = dataset_slice(&data->train, 0, 4000);
    History *h = history_new(1, (few.count + 63) / 64);
    Error err = {0};
    CHECK_EQ_INT(train(&model, &opt, &few, &data->validation, 1, 64, (uint64_t)seed, h, &err), 0);
    *validation = evaluate(&model, &data->validation);
    history_free(h);
    optimizer_free(&opt);
}

// SGD with a learning rate of 10 on single images overflows within the
// first epoch: the run must stop with EXIT_DIVERGED and print no result line.
static void run_diverging(void *unused) {
    (void)unused;
    char *args[] = {"chapter2", "--optimizer", "sgd", "--lr", "10", "--batch", "1", "--epochs", "3",
                    "--limit", "500", NULL};
    if (!freopen("build/diverged.out", "w", stdout)) _exit(99);
    int status = chapter2_main(11, args);
    fflush(stdout);
    FILE *out = fopen("build/diverged.out", "r");
    char line[512];
    while (out && fgets(line, sizeof line, out))
        if (strncmp(line, "result", 6) == 0 || strstr(line, "nan")) status = 98;
    if (out) fclose(out);
    exit(status);
}

static void test_training(void) {
    section("training on real data: learns, and is deterministic");
    FashionMnist data;
    Error err = {0};
    if (load_fashion_mnist("data", &data, &err)) {
        skip("no Fashion-MNIST in data/ (run `make data`)");
        return;
    }
    Ann first, second, third;
    Evaluation v1, v2, v3;
    train_small(&data, 1, &first, &v1);
    train_small(&data, 1, &second, &v2);
    train_small(&data, 2, &third, &v3);
    if (!CHECK(v1.accuracy > 0.75f)) printf("     validation accuracy %.4f after one epoch of 4000 images\n", v1.accuracy);
    CHECK(memcmp(first.param_memory, second.param_memory, first.param_count * sizeof(float)) == 0);
    CHECK(v1.loss == v2.loss && v1.accuracy == v2.accuracy);
    CHECK(memcmp(first.param_memory, third.param_memory, first.param_count * sizeof(float)) != 0);
    ann_free(&first);
    ann_free(&second);
    ann_free(&third);
    free_fashion_mnist(&data);

    char *overfit_args[] = {"chapter2", "--overfit", "100", NULL};
    CHECK_EQ_INT(chapter2_main(3, overfit_args), 0);
    CHECK_EXITS(run_diverging, NULL, EXIT_DIVERGED, "not a finite number");
}

/* ---- Bugs stop the program ----------------------------------------------
   A batch larger than the buffers were made for would write past them;
   require() stops the program first, with exit code 70 and "bug:". */
static float few_images[8 * IMAGE_SIZE], few_targets[8 * NUM_CLASSES];
static unsigned char few_labels[8];

static void forward_too_large(void *unused) {
    (void)unused;
    Ann net = ann_new(4, 1);
    ann_forward(&net, few_images, few_targets, 5);
    ann_free(&net);
}

static void trainer_too_large(void *unused) {
    (void)unused;
    Ann net = ann_new(4, 1);
    Model m = ann_model(&net);
    Optimizer sgd = optimizer_new(OPTIMIZER_SGD, 0.1f, m.count);
    Dataset d = {8, few_images, few_labels, few_targets};
    Trainer t = trainer_new(&m, &sgd, &d, 8, 1);
    trainer_free(&t);
    optimizer_free(&sgd);
    ann_free(&net);
}

static void test_bugs_stop(void) {
    section("a batch larger than the buffers stops the program (exit code 70)");
    CHECK_EXITS(forward_too_large, NULL, EXIT_BUG, "bug: batch 5, but the ANN has room for 1 to 4");
    CHECK_EXITS(trainer_too_large, NULL, EXIT_BUG, "bug: batch 8, but the model takes 1 to 4");
}

static void test_bad_options(void) {
    section("bad options get the usage and exit code 2");
    char *cases[][3] = {
        {"chapter2", "--epochs", "-1"}, {"chapter2", "--batch", "0"}, {"chapter2", "--lr", "abc"},
        {"chapter2", "--optimizer", "rmsprop"}, {"chapter2", "--epochs", "2.5"}, {"chapter2", "--frobnicate", "1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) CHECK_EQ_INT(chapter2_main(3, cases[i]), EXIT_USAGE);
    char *missing[] = {"chapter2", "--seed", NULL};
    CHECK_EQ_INT(chapter2_main(2, missing), EXIT_USAGE);
    Options o;
    Error err = {0};
    // A forgotten value: the next option is not taken for a directory's name.
    char *forgotten[] = {"chapter2", "--data", "--help", NULL};
    CHECK_EQ_INT(parse_options(3, forgotten, &o, &err), EXIT_USAGE);
    CHECK(strstr(err.message, "'--help', looks like an option") && strstr(err.message, "./--help"));
    char *dotted[] = {"chapter2", "--data", "./--help", NULL};
    CHECK_EQ_INT(parse_options(3, dotted, &o, &err), 0);
    CHECK(strcmp(o.data_dir, "./--help") == 0);
    char *sgd[] = {"chapter2", "--optimizer", "sgd", NULL};
    CHECK_EQ_INT(parse_options(3, sgd, &o, &err), 0);
    CHECK_NEAR(o.learning_rate, 0.01, 0);
}

// Output that cannot be written (a full disk) is an error, not a success.
static void help_to_full_disk(void *unused) {
    (void)unused;
    char *args[] = {"chapter2", "--help", NULL};
    if (!freopen("/dev/full", "w", stdout)) _exit(99);
    exit(chapter2_main(2, args));
}

static void test_exit_codes(void) {
    section("exit codes: one table, every code once, all in --help; stdout checked");
    int unique = 1;
    for (int i = 0; i < EXIT_TABLE_ROWS; i++)
        for (int j = 0; j < i; j++) unique &= EXIT_TABLE[i].code != EXIT_TABLE[j].code;
    CHECK(unique);
    CHECK(EXIT_DIVERGED == 15 && EXIT_TOO_FEW == 14 && EXIT_BUG == 70 && EXIT_NOT_LEARNING == 12);
    CHECK_EXITS(help_to_full_disk, NULL, EXIT_WRITE, "could not write the output");
}

int main(void) {
    test_rng();
    test_glorot();
    test_dense_gradients();
    test_relu_gradients();
    test_softmax_cross_entropy();
    test_ann_gradients();
    test_optimizers();
    test_training_loop();
    test_bugs_stop();
    test_bad_options();
    test_exit_codes();
    test_training();
    return check_summary();
}
