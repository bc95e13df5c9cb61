/* exercises.c - the self-checks of the book's coding exercises.

   What it is: one check per exercise that a starter chapter leaves to the
   student (`make starter`; the exercise's code is marked `//@ exercise` in
   src/). Each check tests what the code must do, not how: gradients against
   finite differences, properties, and for exact outputs a hash of them, so
   reading this file does not give the answers away. Each says what is wrong
   in words a student can act on.
   What it is not: the chapters' tests. Those (tests/test_*.c) test far more,
   and some of them spell out expected values.

   It is built against one chapter file, full or a student's:
       make check-exercise N=2.adam                 (starter/chapter2.c)
       make check-exercise N=2.adam FILE=mine.c
   or by hand:
       cc -std=c11 -I. -DCHAPTER=2 -DCHAPTER_FILE='"starter/chapter2.c"' \
          tests/exercises.c -o build/exercises -lm -pthread
       build/exercises [NAME...]      (no NAME: every exercise the file has)
   Exit code 0 when every check asked for passes, 1 otherwise, 2 for an
   unknown name. With EXERCISE_TOKEN set, the last line is "checks finished
   TOKEN" (see finish()). */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef CHAPTER
#error "build with -DCHAPTER=N and -DCHAPTER_FILE='\"path/to/chapterN.c\"'"
#endif
#define main chapter_main
#include CHAPTER_FILE
#undef main

// The verdict of one check: NULL when right, else what is wrong.
typedef const char *Check(char *why, size_t size);

#if CHAPTER >= 2
static double mismatch(double a, double b) { return fabs(a - b) / fmax(fmax(fabs(a), fabs(b)), 1e-3); }

// FNV-1a, 64 bits: a fingerprint of exact outputs, written as text first so
// that the hash does not depend on how this machine stores a float.
static uint64_t fingerprint(const char *text) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *text; text++) h = (h ^ (unsigned char)*text) * 0x100000001b3ULL;
    return h;
}
#endif

/* ---- Chapter 1 -------------------------------------------------------------- */

// (The first look at the data, Welford's update with it, stays in chapters
// 1 to 3: chapter 4 on has no use for it.)
#if CHAPTER <= 3
// The two-pass mean and variance in long double, from the definition.
static void two_pass(const double *x, int n, long double *mean, long double *var) {
    long double sum = 0, squares = 0;
    for (int i = 0; i < n; i++) sum += x[i];
    *mean = sum / n;
    for (int i = 0; i < n; i++) squares += (x[i] - *mean) * (x[i] - *mean);
    *var = squares / n;
}

static const char *check_welford(char *why, size_t size) {
    // Pixels, then the same spread far from zero, where sum_squares / n -
    // mean^2 cancels to nothing in double.
    enum { N = 1000 };
    static double x[N];
    for (int round = 0; round < 2; round++) {
        double offset = round == 0 ? 0 : 1e9;
        for (int i = 0; i < N; i++) x[i] = offset + (double)((i * 7919 + 13) % 256) / 255.0;
        RunningStats s = {0};
        for (int i = 0; i < N; i++) running_stats_add(&s, x[i]);
        long double mean, var;
        two_pass(x, N, &mean, &var);
        double got = running_stats_variance(&s);
        if (s.count != N) {
            snprintf(why, size, "after %d values the count is %ld: running_stats_add must count each value", N, s.count);
            return why;
        }
        if (fabsl(s.mean - mean) > 1e-12L * fmaxl(1, fabsl(mean))) {
            snprintf(why, size, "the mean of %d values%s is %.17g, but your running mean is %.17g. Each value moves "
                     "the mean by its difference from it, divided by the count so far.", N,
                     round ? " near 1e9" : " in [0, 1]", (double)mean, s.mean);
            return why;
        }
        if (fabsl(got - var) > 1e-6L * var) {
            snprintf(why, size, "the variance of %d values%s is %.10g, but yours is %.10g.%s", N,
                     round ? " near 1e9" : " in [0, 1]", (double)var, got,
                     round ? " In [0, 1] it was right: does m2 subtract numbers near 1e18, such as x^2 and mean^2? "
                             "Welford's m2 grows by (x - old mean) times (x - new mean)."
                           : " m2 grows by (x - old mean) times (x - new mean).");
            return why;
        }
    }
    RunningStats none = {0};
    if (running_stats_variance(&none) != 0) {
        snprintf(why, size, "with no values at all the variance must be 0");
        return why;
    }
    return NULL;
}
#endif

#if CHAPTER <= 3
static const char *check_write_idx(char *why, size_t size) {
    enum { COUNT = 3 };
    static float images[COUNT * IMAGE_SIZE];
    static unsigned char labels[COUNT];
    static unsigned char bytes[16 + COUNT * IMAGE_SIZE + 64];
    // Byte v, plus -0.4, 0 or 0.4 of a step: rounding gives v again (a pixel
    // outside [0, 1] is clamped first).
    for (int i = 0; i < COUNT * IMAGE_SIZE; i++) images[i] = ((float)((i * 37 + 11) % 256) + 0.4f * (float)(i % 3 - 1)) / 255.0f;
    images[5] = -0.5f, images[6] = 1.5f;  // out of [0, 1]: clamped
    Dataset d = {.count = COUNT, .images = images, .labels = labels};
    size_t expected = 16 + (size_t)COUNT * IMAGE_SIZE, asked = encode_idx_images(&d, NULL);
    if (asked != expected) {
        snprintf(why, size, "encode_idx_images(d, NULL) says %zu bytes for %d images; an IDX image file of them is "
                 "longer or shorter than that (book.md 1.2: the header, then the pixels)", asked, COUNT);
        return why;
    }
    memset(bytes, 0xAA, sizeof bytes);
    size_t wrote = encode_idx_images(&d, bytes);
    if (wrote != expected) {
        snprintf(why, size, "with a buffer it returned %zu, not the %zu it says without one", wrote, asked);
        return why;
    }
    if (bytes[expected] != 0xAA) {
        snprintf(why, size, "it wrote past the end of the file's bytes");
        return why;
    }
    uint32_t count = 0;
    size_t body = 0;
    Error err = {0};
    if (check_idx_header("encoded", bytes, wrote, IDX_IMAGES_MAGIC, &count, &body, &err) != 0) {
        snprintf(why, size, "chapter 1's own reader refuses your bytes: %s", err.message);
        return why;
    }
    if (count != COUNT || body != 16) {
        snprintf(why, size, "the header says %u images and a body at byte %zu; it should say %d and 16", count, body,
                 COUNT);
        return why;
    }
    for (int i = 0; i < COUNT * IMAGE_SIZE; i++) {
        int want = i == 5 ? 0 : i == 6 ? 255 : (i * 37 + 11) % 256;
        if (bytes[body + i] != want) {
            snprintf(why, size, "pixel %d of image %d holds %.4f, which should be the byte %d, but it is %d.%s",
                     i % IMAGE_SIZE, i / IMAGE_SIZE, images[i], want, bytes[body + i],
                     i == 5 || i == 6 ? " A pixel outside [0, 1] is clamped to it first."
                                      : " Multiply by 255 and round to the nearest; do not cut the fraction off.");
            return why;
        }
    }
    return NULL;
}
#endif

/* ---- Chapter 2 -------------------------------------------------------------- */

#if CHAPTER >= 2
// The mean softmax cross-entropy in double, from its definition.
static double mean_cross_entropy(const double *logits, const float *targets, int B, int K) {
    double total = 0;
    for (int b = 0; b < B; b++) {
        double largest = logits[b * K], sum = 0;
        for (int k = 1; k < K; k++) largest = fmax(largest, logits[b * K + k]);
        for (int k = 0; k < K; k++) sum += exp(logits[b * K + k] - largest);
        for (int k = 0; k < K; k++) total -= targets[b * K + k] * (logits[b * K + k] - largest - log(sum));
    }
    return total / B;
}

static const char *check_softmax_backward(char *why, size_t size) {
    enum { B = 3, K = 5 };
    float logits[B * K], targets[B * K] = {0}, probs[B * K], dlogits[B * K];
    double exact[B * K];
    Rng rng = rng_new(21, 1);
    for (int i = 0; i < B * K; i++) logits[i] = 4 * rng_uniform(&rng) - 2, exact[i] = logits[i];
    for (int b = 0; b < B; b++) targets[b * K + (b * 2) % K] = 1;
    softmax_cross_entropy_forward(probs, logits, targets, B, K);
    // Backward ADDS, and scales by dloss: start from 1 everywhere, dloss 0.5.
    for (int i = 0; i < B * K; i++) dlogits[i] = 1;
    softmax_cross_entropy_backward(dlogits, 0.5f, probs, targets, B, K);
    for (int i = 0; i < B * K; i++) {
        double saved = exact[i], step = 1e-5;
        exact[i] = saved + step;
        double up = mean_cross_entropy(exact, targets, B, K);
        exact[i] = saved - step;
        double down = mean_cross_entropy(exact, targets, B, K);
        exact[i] = saved;
        double numeric = 0.5 * (up - down) / (2 * step), got = dlogits[i] - 1.0;
        if (dlogits[i] == 1.0f && numeric != 0) {
            snprintf(why, size, "dlogits is unchanged: the backward pass must ADD its gradient into dlogits "
                     "(book.md 2.6)");
            return why;
        }
        if (mismatch(got, numeric) > 1e-3) {
            snprintf(why, size, "d(loss)/d(logit %d of image %d) is %.6f, but finite differences of the loss "
                     "give %.6f. Remember the gradient of the MEAN loss (divide by B) times dloss, added to "
                     "what dlogits held.", i % K, i / K, got, numeric);
            return why;
        }
    }
    return NULL;
}

static const char *check_adam(char *why, size_t size) {
    enum { COUNT = 6, STEPS = 4 };
    const float start[COUNT] = {0.5f, -0.25f, 1.0f, 0.0f, 2.0f, -1.5f};
    const float grads[STEPS][COUNT] = {{0.1f, -2.0f, 0.0f, 1e-4f, 3.0f, -0.5f},
                                       {0.2f, -1.0f, 0.5f, 1e-4f, -3.0f, -0.5f},
                                       {-0.1f, 0.5f, 0.5f, 0.0f, 1.0f, 0.25f},
                                       {0.05f, 0.0f, -0.5f, 1e-3f, 2.0f, 0.5f}};
    float params[COUNT];
    memcpy(params, start, sizeof params);
    Optimizer o = optimizer_new(OPTIMIZER_ADAM, 0.01f, COUNT);
    adam_update(&o, params, grads[0], COUNT);
    // The first step: m_hat = g and v_hat = g^2, so each parameter moves by
    // about the learning rate against the sign of its gradient.
    for (int i = 0; i < COUNT; i++) {
        double expected = grads[0][i] == 0 ? 0 : -0.01 * grads[0][i] / (fabs(grads[0][i]) + 1e-7);
        if (fabs((params[i] - start[i]) - expected) > 1e-6) {
            snprintf(why, size, "after the first step, parameter %d moved by %.6g; with the bias corrections, "
                     "Adam's first step is learning_rate * g / (|g| + epsilon), here %.6g. Check that the step "
                     "is counted before the corrections 1 - beta^t, and that m and v start at 0.", i,
                     params[i] - start[i], expected);
            optimizer_free(&o);
            return why;
        }
    }
    char text[1024] = "";
    size_t used = 0;
    for (int t = 1; t < STEPS; t++) adam_update(&o, params, grads[t], COUNT);
    for (int i = 0; i < COUNT; i++) used += (size_t)snprintf(text + used, sizeof text - used, "%.4e ", params[i]);
    used += (size_t)snprintf(text + used, sizeof text - used, "%ld", o.step);
    optimizer_free(&o);
    if (fingerprint(text) != 0xf88ced48b1749188ULL) {
        snprintf(why, size, "the first step is right, but after %d steps the parameters (%s) are not Adam's. "
                 "Check the running averages m = beta1 m + (1 - beta1) g and v = beta2 v + (1 - beta2) g^2, "
                 "and the corrections with the step count t.", STEPS, text);
        return why;
    }
    return NULL;
}
#endif

/* ---- Chapter 3 -------------------------------------------------------------- */

#if CHAPTER >= 3
static const char *check_mul_backward(char *why, size_t size) {
    Graph *g = graph_new(1);
    Node *a = graph_parameter(g, "a", (int[]){4}, 1, INIT_ZEROS);
    Node *b = graph_parameter(g, "b", (int[]){4}, 1, INIT_ZEROS);
    Node *c = graph_parameter(g, "c", (int[]){4}, 1, INIT_ZEROS);
    // loss = sum(a * b) + sum(a * c): a feeds two products.
    Node *loss = add(g, sum(g, mul(g, a, b)), sum(g, mul(g, a, c)));
    graph_compile(g, loss);
    const float av[4] = {1, -2, 3, 0.5f}, bv[4] = {4, 5, -6, 2}, cv[4] = {0.5f, 1, 1, -1};
    memcpy(a->value, av, sizeof av), memcpy(b->value, bv, sizeof bv), memcpy(c->value, cv, sizeof cv);
    graph_zero_grad(g);
    graph_forward(g, 1);
    graph_backward(g);
    const char *wrong = NULL;
    for (int i = 0; i < 4 && !wrong; i++) {
        if (b->grad[i] != av[i] || c->grad[i] != av[i])
            wrong = "d(sum(a*b))/db should be a: each b[i] was multiplied by a[i]";
        else if (a->grad[i] == bv[i] || a->grad[i] == cv[i])
            wrong = "a feeds two products, so its gradient is the sum of both contributions, b + c: backward "
                    "must ADD into a->grad, not set it (book.md 3.4)";
        else if (a->grad[i] != bv[i] + cv[i])
            wrong = "d(sum(a*b) + sum(a*c))/da should be b + c";
    }
    graph_free(g);
    if (!wrong) return NULL;
    snprintf(why, size, "%s", wrong);
    return why;
}
#endif

#if CHAPTER == 3  // chapter 3's own ops, which later chapters leave out
// The tanh check's loss, sum(t) + sum(tanh(t)) with t = tanh(x), in double.
static double tanh_twice_loss(const double *x, int n) {
    double loss = 0;
    for (int i = 0; i < n; i++) loss += tanh(x[i]) + tanh(tanh(x[i]));
    return loss;
}

static const char *check_tanh_backward(char *why, size_t size) {
    enum { B = 2, K = 5 };
    Graph *g = graph_new(B);
    Node *x = graph_input(g, "x", (int[]){K}, 1);
    x->requires_grad = 1;
    Node *t = tanh_of(g, x);
    // t feeds two ops, a second tanh and a sum, whose backward runs first.
    Node *loss = add(g, sum(g, tanh_of(g, t)), sum(g, t));
    graph_compile(g, loss);
    double exact[B * K];
    for (int i = 0; i < B * K; i++) x->value[i] = -2.2f + 0.47f * (float)i, exact[i] = x->value[i];
    graph_forward(g, 1);
    for (int i = 0; i < B * K; i++) x->grad[i] = 1;  // an input's gradient is the caller's: backward adds to it
    graph_backward(g);
    const char *wrong = NULL;
    for (int i = 0; i < B * K && !wrong; i++) {
        double step = 1e-6, saved = exact[i];
        exact[i] = saved + step;
        double up = tanh_twice_loss(exact, B * K);
        exact[i] = saved - step;
        double down = tanh_twice_loss(exact, B * K);
        exact[i] = saved;
        double numeric = (up - down) / (2 * step), got = x->grad[i] - 1.0;
        if (got == 0 && numeric != 0)
            snprintf(why, size, "the input's gradient is 0: tanh_op_backward must add into n->inputs[0]->grad"), wrong = why;
        else if (mismatch(got, numeric) > 1e-3)
            snprintf(why, size, "in loss = sum(t) + sum(tanh(t)), t = tanh(x), dloss/dx[%d] is %.6f, but finite "
                     "differences give %.6f. t feeds two ops, so its gradient must be the sum of both (add, do "
                     "not assign); and derive tanh's slope in terms of its own output, n->value.", i, got, numeric),
                wrong = why;
    }
    graph_free(g);
    return wrong;
}

// (1/B) sum (x w - t)^2 in double: the mean squared error check's loss.
static double mse_loss(const double *w, const float *x, const float *t, int B, int C, int K) {
    double loss = 0;
    for (int b = 0; b < B; b++)
        for (int k = 0; k < K; k++) {
            double y = 0;
            for (int c = 0; c < C; c++) y += x[b * C + c] * w[c * K + k];
            loss += (y - t[b * K + k]) * (y - t[b * K + k]);
        }
    return loss / B;
}

static const char *check_mse_backward(char *why, size_t size) {
    enum { B = 3, C = 4, K = 5 };
    Graph *g = graph_new(B);
    Node *x = graph_input(g, "x", (int[]){C}, 1), *t = graph_input(g, "t", (int[]){K}, 1);
    Node *w = graph_parameter(g, "w", (int[]){C, K}, 2, INIT_ZEROS);
    Node *loss = mean_squared_error(g, matmul(g, x, w), t);
    graph_compile(g, loss);
    Rng rng = rng_new(3, 3);
    double exact[C * K];
    for (int i = 0; i < B * C; i++) x->value[i] = 2 * rng_uniform(&rng) - 1;
    for (int i = 0; i < B * K; i++) t->value[i] = rng_uniform(&rng);
    for (int i = 0; i < C * K; i++) w->value[i] = rng_uniform(&rng) - 0.5f, exact[i] = w->value[i];
    graph_zero_grad(g);
    graph_forward(g, 1);
    graph_backward(g);
    const char *wrong = NULL;
    for (int i = 0; i < C * K && !wrong; i++) {
        double step = 1e-6, saved = exact[i];
        exact[i] = saved + step;
        double up = mse_loss(exact, x->value, t->value, B, C, K);
        exact[i] = saved - step;
        double down = mse_loss(exact, x->value, t->value, B, C, K);
        exact[i] = saved;
        double numeric = (up - down) / (2 * step), got = w->grad[i];
        if (got == 0 && numeric != 0)
            snprintf(why, size, "the weights' gradient is 0: mse_op_backward must add into pred's gradient, "
                     "times n->grad[0]"), wrong = why;
        else if (mismatch(got, numeric) > 1e-3)
            snprintf(why, size, "for loss = mean_squared_error(matmul(x, w), t), dloss/dw[%d][%d] is %.6f, but "
                     "finite differences give %.6f. Differentiate (1/B) sum (pred - t)^2 with respect to one "
                     "pred[b][k]: mind the 2 and the 1/B.", i / K, i % K, got, numeric), wrong = why;
    }
    graph_free(g);
    return wrong;
}
#endif

/* ---- Chapter 4 -------------------------------------------------------------- */

#if CHAPTER >= 4
static const char *check_avg_pool(char *why, size_t size) {
    enum { B = 2, H = 5, W = 6, C = 3, N = B * H * W * C, OH = H / 2, OW = W / 2, OUT = B * OH * OW * C };
    static float x[N], dx[N], out[OUT + 1], dout[OUT], up[OUT + 1], down[OUT + 1];
    Rng rng = rng_new(4, 5);
    for (int i = 0; i < N; i++) x[i] = 2 * rng_uniform(&rng) - 1, dx[i] = 1;
    for (int i = 0; i < OUT; i++) dout[i] = rng_uniform(&rng) - 0.5f;
    for (int i = 0; i <= OUT; i++) out[i] = NAN;
    out[OUT] = 12345;
    avg_pool_forward(out, x, B, H, W, C);
    if (out[OUT] != 12345) {
        snprintf(why, size, "avg_pool_forward wrote past its output: (B, H/2, W/2, C), the odd row or column "
                 "left out");
        return why;
    }
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++)
                for (int c = 0; c < C; c++) {
                    double mean = 0;
                    for (int dh = 0; dh < 2; dh++)
                        for (int dw = 0; dw < 2; dw++) mean += x[((b * H + 2 * oh + dh) * W + 2 * ow + dw) * C + c] / 4.0;
                    float got = out[((b * OH + oh) * OW + ow) * C + c];
                    if (!(fabs(got - mean) <= 1e-6)) {
                        snprintf(why, size, "output (image %d, row %d, column %d, channel %d) is %.6f; the mean of "
                                 "its 2x2 window is %.6f. Window (oh, ow) starts at input row 2 oh, column 2 ow.",
                                 b, oh, ow, c, got, mean);
                        return why;
                    }
                }
    avg_pool_backward(dx, dout, B, H, W, C);
    for (int i = 0; i < N; i++) {
        double saved = x[i], loss_up = 0, loss_down = 0;
        x[i] = (float)(saved + 0.5);
        avg_pool_forward(up, x, B, H, W, C);
        x[i] = (float)(saved - 0.5);
        avg_pool_forward(down, x, B, H, W, C);
        x[i] = (float)saved;
        for (int k = 0; k < OUT; k++) loss_up += up[k] * dout[k], loss_down += down[k] * dout[k];
        double numeric = loss_up - loss_down, got = dx[i] - 1.0;
        if (fabs(got - numeric) > 1e-5) {
            int c = i % C, w = i / C % W, h = i / C / W % H, b = i / C / W / H;
            snprintf(why, size, "the gradient of input (image %d, row %d, column %d, channel %d) is %.6f, but "
                     "finite differences give %.6f.%s", b, h, w, c, got, numeric,
                     h >= OH * 2 || w >= OW * 2 ? " No window covers this input."
                     : got == 0 ? " avg_pool_backward must ADD into dinp."
                                : " Every input of a window moved its output by the same share.");
            return why;
        }
    }
    return NULL;
}

static const char *check_conv_stride(char *why, size_t size) {
    enum { B = 2, H = 7, W = 6, C = 3, K = 3, OC = 4 };
    static float x[B * H * W * C], weight[K * K * C * OC], bias[OC], full[B * (H + 2) * (W + 2) * OC],
        strided[B * (H + 2) * (W + 2) * OC + 1];
    Rng rng = rng_new(4, 6);
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = 2 * rng_uniform(&rng) - 1;
    for (size_t i = 0; i < sizeof weight / sizeof weight[0]; i++) weight[i] = rng_uniform(&rng) - 0.5f;
    for (int i = 0; i < OC; i++) bias[i] = rng_uniform(&rng);
    static const int cases[][2] = {{2, 0}, {2, 1}, {3, 1}, {1, 1}};  // stride, pad
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int stride = cases[k][0], pad = cases[k][1];
        ConvShape s = conv_shape(B, H, W, C, K, K, pad, OC);
        conv2d_forward_naive(full, x, weight, bias, &s);
        int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
        size_t count = (size_t)B * OH * OW * OC;
        for (size_t i = 0; i <= count; i++) strided[i] = NAN;
        strided[count] = 12345;
        conv2d_forward_strided(strided, x, weight, bias, &s, stride);
        if (strided[count] != 12345) {
            snprintf(why, size, "with stride %d and pad %d on a %dx%d input it wrote past its %dx%d output", stride,
                     pad, H, W, OH, OW);
            return why;
        }
        for (int b = 0; b < B; b++)
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++)
                    for (int oc = 0; oc < OC; oc++) {
                        float want = full[(((size_t)b * s.out_h + oh * stride) * s.out_w + ow * stride) * OC + oc];
                        float got = strided[(((size_t)b * OH + oh) * OW + ow) * OC + oc];
                        if (!(fabsf(got - want) <= 1e-5f * fmaxf(1, fabsf(want)))) {
                            snprintf(why, size, "with stride %d and pad %d, output (image %d, row %d, column %d, "
                                     "channel %d) is %.6f, but the window that starts at input row %d, column %d "
                                     "gives %.6f. The output is %dx%d here.", stride, pad, b, oh, ow, oc, got,
                                     oh * stride - pad, ow * stride - pad, want, OH, OW);
                            return why;
                        }
                    }
    }
    return NULL;
}
#endif

/* ---- Chapter 5 -------------------------------------------------------------- */

#if CHAPTER >= 5
// sum(batch_norm(x) * r) over (N, C), training mode, in double.
static double batch_norm_loss(const double *x, const float *gamma, const float *beta, const float *r, int N, int C) {
    double loss = 0;
    for (int c = 0; c < C; c++) {
        double mean = 0, var = 0;
        for (int i = 0; i < N; i++) mean += x[i * C + c] / N;
        for (int i = 0; i < N; i++) var += (x[i * C + c] - mean) * (x[i * C + c] - mean) / N;
        for (int i = 0; i < N; i++)
            loss += r[i * C + c] * (gamma[c] * (x[i * C + c] - mean) / sqrt(var + BN_EPSILON) + beta[c]);
    }
    return loss;
}

static const char *check_batch_norm_dx(char *why, size_t size) {
    enum { N = 6, C = 3 };
    float x[N * C], r[N * C], out[N * C], dx[N * C], batch_mean[C], inv_std[C];
    float gamma[C] = {1.5f, 0.5f, -1}, beta[C] = {0.1f, 0, -0.2f}, mean[C] = {0}, var[C] = {1, 1, 1};
    float dgamma[C] = {0}, dbeta[C] = {0};
    double exact[N * C];
    Rng rng = rng_new(5, 5);
    for (int i = 0; i < N * C; i++) x[i] = 2 * rng_uniform(&rng) - 1, exact[i] = x[i], r[i] = rng_uniform(&rng) - 0.5f;
    for (int i = 0; i < N * C; i++) dx[i] = 1;
    batch_norm_forward_train(NULL, out, batch_mean, inv_std, mean, var, x, gamma, beta, N, C);
    batch_norm_backward(NULL, dx, dgamma, dbeta, r, x, batch_mean, inv_std, gamma, N, C);
    for (int i = 0; i < N * C; i++) {
        double step = 1e-6, saved = exact[i];
        exact[i] = saved + step;
        double up = batch_norm_loss(exact, gamma, beta, r, N, C);
        exact[i] = saved - step;
        double down = batch_norm_loss(exact, gamma, beta, r, N, C);
        exact[i] = saved;
        double numeric = (up - down) / (2 * step), got = dx[i] - 1.0;
        if (mismatch(got, numeric) > 1e-3) {
            snprintf(why, size, "d(loss)/dx for row %d, channel %d is %.6f, but finite differences give %.6f. "
                     "x reaches the output three ways: through x_hat directly, through the batch mean and "
                     "through the batch variance; all three add up, times gamma / sqrt(var + eps).", i / C, i % C,
                     got, numeric);
            return why;
        }
    }
    return NULL;
}
static const char *check_fold_batch_norm(char *why, size_t size) {
    enum { B = 2, H = 5, W = 5, C = 3, K = 3, OC = 4, OUT = B * H * W * OC };
    static float x[B * H * W * C], weight[K * K * C * OC], bias[OC], folded_w[K * K * C * OC], folded_b[OC],
        plain[OUT], fused[OUT];
    float gamma[OC] = {1.5f, -0.5f, 1, 0.25f}, beta[OC] = {0.1f, 0, -0.3f, 2}, mean[OC] = {0.2f, -1, 0, 0.5f},
          var[OC] = {0.5f, 2, 1e-3f, 4};
    Rng rng = rng_new(5, 6);
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = 2 * rng_uniform(&rng) - 1;
    for (size_t i = 0; i < sizeof weight / sizeof weight[0]; i++) weight[i] = rng_uniform(&rng) - 0.5f;
    for (int i = 0; i < OC; i++) bias[i] = rng_uniform(&rng) - 0.5f;
    memcpy(folded_w, weight, sizeof weight), memcpy(folded_b, bias, sizeof bias);
    ConvShape s = conv_shape(B, H, W, C, K, K, 1, OC);
    conv2d_forward_naive(plain, x, weight, bias, &s);
    fold_batch_norm(folded_w, folded_b, (size_t)K * K * C, OC, gamma, beta, mean, var);
    conv2d_forward_naive(fused, x, folded_w, folded_b, &s);
    for (int i = 0; i < OUT; i++) {
        int c = i % OC;
        double want = gamma[c] * (plain[i] - mean[c]) / sqrt(var[c] + BN_EPSILON) + beta[c];
        if (mismatch(fused[i], want) > 1e-4) {
            snprintf(why, size, "output %d, channel %d: the convolution then batch norm (inference mode, the running "
                     "mean and variance, epsilon %g) gives %.6f, the folded convolution %.6f. Write batch norm of "
                     "(bias + sum x w) as (new bias) + sum x (new w), channel by channel.", i / OC, c,
                     (double)BN_EPSILON, want, fused[i]);
            return why;
        }
    }
    return NULL;
}

// sum(r * layer_norm(x)) over (N, C), each row normalised over its C values, in double.
static double layer_norm_loss(const double *x, const double *gamma, const double *beta, const float *r, int N, int C) {
    double loss = 0;
    for (int i = 0; i < N; i++) {
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++) mean += x[i * C + c] / C;
        for (int c = 0; c < C; c++) var += (x[i * C + c] - mean) * (x[i * C + c] - mean) / C;
        for (int c = 0; c < C; c++)
            loss += r[i * C + c] * (gamma[c] * (x[i * C + c] - mean) / sqrt(var + BN_EPSILON) + beta[c]);
    }
    return loss;
}

static const char *check_layer_norm_backward(char *why, size_t size) {
    enum { N = 4, C = 5 };
    float x[N * C], r[N * C], out[N * C], x_hat[N * C], inv_std[N], dx[N * C], gamma[C], beta[C], dgamma[C], dbeta[C];
    double all[N * C + 2 * C];  // x, gamma, beta: what is differentiated, in double
    Rng rng = rng_new(5, 7);
    for (int i = 0; i < N * C; i++) x[i] = 2 * rng_uniform(&rng) - 1, r[i] = rng_uniform(&rng) - 0.5f, dx[i] = 1;
    for (int c = 0; c < C; c++) gamma[c] = 0.5f + rng_uniform(&rng), beta[c] = rng_uniform(&rng) - 0.5f, dgamma[c] = 1, dbeta[c] = 1;
    for (int i = 0; i < N * C; i++) all[i] = x[i];
    for (int c = 0; c < C; c++) all[N * C + c] = gamma[c], all[N * C + C + c] = beta[c];
    layer_norm_forward(out, x_hat, inv_std, x, gamma, beta, N, C);
    layer_norm_backward(dx, dgamma, dbeta, r, x_hat, inv_std, gamma, N, C);
    for (int i = 0; i < N * C + 2 * C; i++) {
        double step = 1e-6, saved = all[i];
        all[i] = saved + step;
        double up = layer_norm_loss(all, all + N * C, all + N * C + C, r, N, C);
        all[i] = saved - step;
        double down = layer_norm_loss(all, all + N * C, all + N * C + C, r, N, C);
        all[i] = saved;
        double numeric = (up - down) / (2 * step);
        double got = (i < N * C ? dx[i] : i < N * C + C ? dgamma[i - N * C] : dbeta[i - N * C - C]) - 1.0;
        if (mismatch(got, numeric) > 1e-3) {
            if (i < N * C)
                snprintf(why, size, "dloss/dx for row %d, channel %d is %.6f, but finite differences give %.6f. "
                         "Here the mean and variance are a row's, over its C channels: x reaches its row's outputs "
                         "through x_hat, the row's mean and the row's variance.", i / C, i % C, got, numeric);
            else
                snprintf(why, size, "dloss/d%s for channel %d is %.6f, but finite differences give %.6f (and each "
                         "gradient must be ADDED to what the array held).", i < N * C + C ? "gamma" : "beta",
                         (i - N * C) % C, got, numeric);
            return why;
        }
    }
    return NULL;
}
#endif

/* ---- Chapter 6 -------------------------------------------------------------- */

#if CHAPTER >= 6
static const char *check_lr_schedule(char *why, size_t size) {
    // lr 0.1, 10 steps of warm-up, 0 at step 110: hand-computed points.
    static const struct {
        long step, warmup, total;
        double rate;
        const char *where;
    } points[] = {
        {0, 10, 110, 0.01, "the first step of the warm-up"},
        {4, 10, 110, 0.05, "the middle of the warm-up"},
        {9, 10, 110, 0.1, "the last step of the warm-up"},
        {10, 10, 110, 0.1, "the first step after the warm-up"},
        {35, 10, 110, 0.0853553390593, "a quarter of the way down"},
        {60, 10, 110, 0.05, "half way down"},
        {109, 10, 110, 2.4671981713e-5, "the step before the end"},
        {110, 10, 110, 0, "the end"},
        {500, 10, 110, 0, "long after the end"},
        {0, 0, 100, 0.1, "the first step, with no warm-up"},
        {50, 0, 100, 0.05, "half way, with no warm-up"},
    };
    for (size_t k = 0; k < sizeof points / sizeof points[0]; k++) {
        float got = warmup_cosine_lr(0.1f, points[k].step, points[k].warmup, points[k].total);
        if (!(fabs(got - points[k].rate) <= 1e-6 * fmax(points[k].rate, 1e-3))) {
            snprintf(why, size, "with lr 0.1, warm-up %ld and total %ld, the rate at step %ld (%s) is %.9g, "
                     "which is not right.", points[k].warmup, points[k].total, points[k].step, points[k].where, got);
            return why;
        }
    }
    return NULL;
}

static const char *check_crc32(char *why, size_t size) {
    const unsigned char *text = (const unsigned char *)"123456789";
    uint32_t whole = crc32_update(0, text, 9), pieces = crc32_update(crc32_update(0, text, 4), text + 4, 5);
    if (whole != 0xCBF43926u)
        snprintf(why, size, "the CRC-32 of the nine bytes \"123456789\" is 0xCBF43926, the published check value "
                 "of this CRC; yours is 0x%08X. Start from ~crc, shift right, xor 0xEDB88320 when the bit shifted "
                 "out is 1, and invert at the end.", whole);
    else if (pieces != whole)
        snprintf(why, size, "over \"1234\" then \"56789\" it gives 0x%08X, not the 0x%08X of all nine at once: "
                 "crc32_update(crc, ...) must continue a CRC, so invert at the start as well as at the end.",
                 pieces, whole);
    else return NULL;
    return why;
}
#endif

#if CHAPTER >= 7
static const char *check_mid_p(char *why, size_t size) {
    static const struct {
        long b, c;
        double p;
    } cases[] = {
        {0, 5, 1.0 / 32},
        {9, 1, 12.0 / 1024},
        {3, 4, 93.0 / 128},
        {10, 20, 0.07075554598122835},
        {7, 7, 1},
        {0, 0, 1},
        {0, 2000, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        double p = mcnemar_mid_p(cases[k].b, cases[k].c);
        if (!(fabs(p - cases[k].p) <= 1e-9 * fmax(1, cases[k].p))) {
            snprintf(why, size, "with b = %ld and c = %ld your mid-p is %.10g, which is not right%s", cases[k].b,
                     cases[k].c, p,
                     cases[k].b == cases[k].c ? " (an even split: the two tails and the middle add up to what?)"
                     : p >= mcnemar_exact_p(cases[k].b, cases[k].c) ? ": it must be below the exact p"
                                                                     : "");
            return why;
        }
    }
    return NULL;
}

static const char *check_wilson(char *why, size_t size) {
    static const long cases[][2] = {{3, 10}, {0, 10}, {10, 10}, {9000, 10000}, {1, 1000}, {500, 1000}, {1, 1}};
    const double z = 1.959963984540054;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        long right = cases[k][0], n = cases[k][1];
        double low = -1, high = -1, p = (double)right / n;
        wilson_interval(right, n, z, &low, &high);
        const char *wrong = !(low >= 0 && high <= 1) ? "it leaves [0, 1]"
                            : !(low <= p + 1e-12 && p - 1e-12 <= high && low < high) ? "it does not hold the accuracy seen, right / n"
                                                                      : NULL;
        for (int end = 0; end < 2 && !wrong; end++) {
            double p0 = end ? high : low;
            if (fabs((p - p0) * (p - p0) - z * z * p0 * (1 - p0) / n) > 1e-12)
                wrong = end ? "its upper end is not a proportion p0 whose z standard errors reach right / n"
                            : "its lower end is not a proportion p0 whose z standard errors reach right / n";
        }
        if (wrong) {
            snprintf(why, size, "for %ld right of %ld and z = 1.96 your interval is [%.6f, %.6f]: %s", right, n, low,
                     high, wrong);
            return why;
        }
    }
    double low = -1, high = -1;
    wilson_interval(0, 0, 1.96, &low, &high);
    if (low != 0 || high != 1) {
        snprintf(why, size, "with n = 0 nothing is known: the interval is [0, 1], not [%g, %g]", low, high);
        return why;
    }
    return NULL;
}
#endif

#if CHAPTER >= 8
/* The bottleneck block: its parameters and multiply-adds against counts by
   hand, without and with a projection, and its output against the same
   block built here from the chapter's pieces (the same seed, the same
   order of parameters: the same numbers). */
static const char *check_bottleneck(char *why, size_t size) {
    for (int k = 0; k < 2; k++) {
        int out_channels = k ? 24 : 16;
        long want_parameters = k ? 968 : 392;  // a 84, b 164, c 144 (or 216, and a projection of 504)
        double want_macs = k ? 24768 : 9792;   // at 6x6: a 2304, b 5184, c 2304 (or 3456, and 13824)
        Node *out[2];
        Graph *g[2];
        for (int which = 0; which < 2; which++) {
            g[which] = graph_new(2);
            Node *x = graph_input(g[which], "x", (int[]){6, 6, 16}, 3);
            Node *y;
            if (which == 0) {
                y = bottleneck_block(g[which], x, 4, out_channels, "bt");
            } else {
                Node *a = relu(g[which], pointwise_bn(g[which], x, 4, "bt.a"));
                Node *b = relu(g[which], conv3x3_bn(g[which], a, 4, "bt.b"));
                Node *c = pointwise_bn(g[which], b, out_channels, "bt.c");
                y = relu(g[which], add(g[which], c, k ? pointwise_bn(g[which], x, out_channels, "bt.proj") : x));
            }
            out[which] = y;
            if (y == x || y->rank != 4 || y->shape[3] != out_channels) {
                snprintf(why, size, "bottleneck_block(x of 6x6x16, mid 4, out %d) should give a 6x6x%d map%s", out_channels,
                         out_channels, y == x ? ", not x itself" : "");
                graph_free(g[0]);
                if (which) graph_free(g[1]);
                return why;
            }
            graph_compile(g[which], sum(g[which], y));
            graph_initialize(g[which], 3);
            Rng rng = rng_new(4, 0);
            for (size_t i = 0; i < x->size; i++) x->value[i] = rng_uniform(&rng) - 0.5f;
            graph_forward(g[which], 1);
        }
        long parameters = (long)(g[0]->param_count + g[0]->state_count);
        double macs = model_multiply_adds(g[0]);
        int same = out[0]->size == out[1]->size && memcmp(out[0]->value, out[1]->value, out[0]->size * sizeof(float)) == 0;
        graph_free(g[0]), graph_free(g[1]);
        if (parameters != want_parameters || macs != want_macs) {
            snprintf(why, size, "16 -> %d channels at 6x6 (mid 4): %ld parameters and %.0f multiply-adds, but the block "
                     "has %ld and %.0f%s", out_channels, parameters, macs, want_parameters, want_macs,
                     k ? " (16 -> 24 needs a projection on the skip)" : "");
            return why;
        }
        if (!same) {
            snprintf(why, size, "16 -> %d channels: the right counts, but not the block's output (the order a, b, c, "
                     "proj? the skip added before the last ReLU?)", out_channels);
            return why;
        }
    }
    return NULL;
}

// Squeeze-and-excitation against a computation in double, on odd sizes.
static const char *check_squeeze_excite(char *why, size_t size) {
    enum { HW = 5, C = 7, R = 3 };
    float x[HW * C], w1[C * R], b1[R], w2[R * C], b2[C], out[HW * C], gate[C];
    Rng rng = rng_new(5, 0);
    for (int i = 0; i < HW * C; i++) x[i] = 2 * rng_uniform(&rng) - 1;
    for (int i = 0; i < C * R; i++) w1[i] = 2 * rng_uniform(&rng) - 1, w2[i] = 2 * rng_uniform(&rng) - 1;
    for (int i = 0; i < R; i++) b1[i] = rng_uniform(&rng) - 0.5f;
    for (int i = 0; i < C; i++) b2[i] = rng_uniform(&rng) - 0.5f;
    squeeze_excite_forward(out, gate, x, w1, b1, w2, b2, HW, C, R);
    double s[C], z[R], e[C];
    for (int c = 0; c < C; c++) {
        s[c] = 0;
        for (int p = 0; p < HW; p++) s[c] += x[p * C + c];
        s[c] /= HW;
    }
    for (int r = 0; r < R; r++) {
        z[r] = b1[r];
        for (int c = 0; c < C; c++) z[r] += s[c] * w1[c * R + r];
        z[r] = z[r] > 0 ? z[r] : 0;
    }
    for (int c = 0; c < C; c++) {
        double a = b2[c];
        for (int r = 0; r < R; r++) a += z[r] * w2[r * C + c];
        e[c] = 1 / (1 + exp(-a));
        if (fabs(gate[c] - e[c]) > 1e-5) {
            snprintf(why, size, "the gate of channel %d is %.6f, but sigmoid(relu(mean @ w1 + b1) @ w2 + b2) is %.6f", c,
                     gate[c], e[c]);
            return why;
        }
    }
    for (int i = 0; i < HW * C; i++)
        if (fabs(out[i] - x[i] * e[i % C]) > 1e-5) {
            snprintf(why, size, "out[%d] is %.6f, but x times its channel's gate is %.6f", i, out[i], x[i] * e[i % C]);
            return why;
        }
    return NULL;
}

/* Stochastic rounding to bf16: over all 65536 values of the noise, x must
   round up exactly (x - below) / (above - below) * 65536 times, and to one
   of its two neighbours every time; specials as bf16_round. */
static const char *check_stochastic_round(char *why, size_t size) {
    static const uint32_t XS[] = {0x3F800001, 0x3F80FFFF, 0x3F808000, 0xBF812345, 0x7F7FFFFF, 0x00812345, 0x42F6E979,
                                  0xC2F6E979};
    for (size_t i = 0; i < sizeof XS / sizeof XS[0]; i++) {
        float x = bits_float(XS[i]);
        bf16 below = (bf16)(XS[i] >> 16), above = (bf16)(below + 1);  // toward zero, and away from it
        long up = 0;
        for (uint32_t noise = 0; noise < 65536; noise++) {
            bf16 r = bf16_round_stochastic(x, noise);
            if (r != below && r != above) {
                snprintf(why, size, "x = %.9g rounded to %04x, which is neither of its neighbours %04x and %04x", x, r,
                         below, above);
                return why;
            }
            up += r == above;
        }
        if (up != (long)(XS[i] & 0xFFFF)) {
            snprintf(why, size, "x = %.9g (bits %08x) rounded away from zero %ld times in 65536, not %u: its share of "
                     "the gap", x, (unsigned)XS[i], up, (unsigned)(XS[i] & 0xFFFF));
            return why;
        }
    }
    static const uint32_t SPECIAL[] = {0x3F800000, 0x80000000, 0x7F800000, 0x7F800001, 0x00400000, 0x807FFFFF};
    for (size_t i = 0; i < sizeof SPECIAL / sizeof SPECIAL[0]; i++)
        for (uint32_t noise = 0; noise < 65536; noise += 4099) {
            float x = bits_float(SPECIAL[i]);
            if (bf16_round_stochastic(x, noise) != bf16_round(x)) {
                snprintf(why, size, "bits %08x (a bf16, an infinity, a NaN or a denormal) should round as bf16_round "
                         "does, to %04x, whatever the noise", (unsigned)SPECIAL[i], bf16_round(x));
                return why;
            }
        }
    return NULL;
}
#endif

/* ---- Chapter 9 -------------------------------------------------------------- */

#if CHAPTER >= 9
// Every budget from 1 to 400 against the definition: R rungs and 3^(R-1)
// trials with r_0 = B / (R 3^(R-1)) >= 1, and no larger R allowed.
static const char *check_search_plan(char *why, size_t size) {
    for (int budget = 1; budget <= 400; budget++) {
        SearchPlan p = search_plan(budget);
        int trials = 1;
        for (int r = 1; r < p.rungs; r++) trials *= 3;
        int more = (p.rungs + 1) * trials * 3;  // what one more rung would need
        if (p.rungs < 1 || p.trials != trials || p.first_epochs != budget / (p.rungs * trials) || p.first_epochs < 1 ||
            more <= budget) {
            snprintf(why, size, "budget %d gave %d rungs, %d trials, %d epochs first; each rung costs trials * r_0 "
                     "epochs, B / R at most, and R is as large as r_0 >= 1 allows", budget, p.rungs, p.trials,
                     p.first_epochs);
            return why;
        }
    }
    return NULL;
}

// select_items on 60 labelled items against a selection made here, for
// six sets of classes (one class to all ten) and limits 0 (all), 1, 2, 5.
static const char *check_select_items(char *why, size_t size) {
    enum { N = 60 };
    unsigned char labels[N];
    for (int i = 0; i < N; i++) labels[i] = (unsigned char)((i * 7 + i / 9) % NUM_CLASSES);
    Dataset d = {.count = N, .labels = labels};
    int items[N + 1], limits[4] = {0, 1, 2, 5};
    for (unsigned classes = 1; classes <= ALL_CLASSES; classes = classes * 3 + 1)
        for (int l = 0; l < 4; l++) {
            int want[N], wanted = 0, taken[NUM_CLASSES] = {0};
            for (int i = 0; i < N; i++)
                if ((classes >> labels[i] & 1) && (!limits[l] || taken[labels[i]] < limits[l]))
                    taken[labels[i]]++, want[wanted++] = i;
            int counted = select_items(&d, classes, limits[l], NULL);
            items[wanted] = -1;
            int got = select_items(&d, classes, limits[l], items);
            if (counted != wanted || got != wanted || memcmp(items, want, (size_t)wanted * sizeof(int)) != 0 ||
                items[wanted] != -1) {
                snprintf(why, size, "classes %03x, at most %d a class: %d items (%d when only counting), where the "
                         "first items of those classes, in order, are %d", classes, limits[l], got, counted, wanted);
                return why;
            }
        }
    return NULL;
}
#endif

/* ---- The table -------------------------------------------------------------------- */

typedef struct {
    const char *name;
    Check *check;
} Exercise;

static const Exercise EXERCISES[] = {
#if CHAPTER <= 3
    {"1.welford", check_welford},      // chapters 1 to 3
    {"1.write-idx", check_write_idx},  // chapters 1 to 3
#endif
#if CHAPTER >= 2
    {"2.softmax-backward", check_softmax_backward},
    {"2.adam", check_adam},
#endif
#if CHAPTER >= 3
    {"3.mul-backward", check_mul_backward},
#endif
#if CHAPTER == 3
    {"3.tanh-backward", check_tanh_backward},  // chapters 3 to 3
    {"3.mse-backward", check_mse_backward},    // chapters 3 to 3
#endif
#if CHAPTER >= 4
    {"4.avg-pool", check_avg_pool},
    {"4.conv-stride", check_conv_stride},
#endif
#if CHAPTER >= 5
    {"5.batch-norm-dx", check_batch_norm_dx},
    {"5.fold-batch-norm", check_fold_batch_norm},
    {"5.layer-norm-backward", check_layer_norm_backward},
#endif
#if CHAPTER >= 6
    {"6.crc32", check_crc32},
    {"6.lr-schedule", check_lr_schedule},
#endif
#if CHAPTER >= 7
    {"7.mid-p", check_mid_p},
    {"7.wilson", check_wilson},
#endif
#if CHAPTER >= 8
    {"8.bottleneck", check_bottleneck},
    {"8.squeeze-excite", check_squeeze_excite},
    {"8.stochastic-round", check_stochastic_round},
#endif
#if CHAPTER >= 9
    {"9.search-plan", check_search_plan},
    {"9.select-items", check_select_items},
#endif
};
enum { EXERCISE_COUNT = sizeof EXERCISES / sizeof EXERCISES[0] };

static int run_check(const Exercise *e) {
    char why[1024];
    const char *wrong = e->check(why, sizeof why);
    if (wrong) printf("exercise %s: not yet: %s\n", e->name, wrong);
    else printf("exercise %s: ok\n", e->name);
    return wrong == NULL;
}

// The last line, printed only when the checks got to their end: a file that
// calls exit(), crashes or loops never prints it, so tests/exercise.sh can
// tell "finished" from "stopped" (the token is made anew for each run).
static int finish(int code) {
    const char *token = getenv("EXERCISE_TOKEN");
    if (token) printf("checks finished %s\n", token);
    return fflush(stdout) == 0 ? code : 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);  // each verdict out at once: a crash later keeps it
    int all_right = 1;
    if (argc == 1)
        for (int k = 0; k < EXERCISE_COUNT; k++) all_right &= run_check(&EXERCISES[k]);
    for (int a = 1; a < argc; a++) {
        int found = 0;
        for (int k = 0; k < EXERCISE_COUNT; k++)
            if (strcmp(argv[a], EXERCISES[k].name) == 0) found = 1, all_right &= run_check(&EXERCISES[k]);
        if (!found) {
            fprintf(stderr, "no exercise '%s' in chapter %d; the exercises here:", argv[a], CHAPTER);
            for (int k = 0; k < EXERCISE_COUNT; k++) fprintf(stderr, " %s", EXERCISES[k].name);
            fprintf(stderr, "\n");
            return finish(2);
        }
    }
    return finish(all_right ? 0 : 1);
}
