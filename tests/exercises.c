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

static const char *check_big_endian(char *why, size_t size) {
    static const struct {
        unsigned char bytes[4];
        uint32_t value;
        const char *meaning;
    } cases[] = {
        {{0x00, 0x00, 0x08, 0x03}, 2051, "the magic number that starts every IDX image file"},
        {{0x00, 0x00, 0x08, 0x01}, 2049, "the magic number of IDX label files"},
        {{0x00, 0x00, 0xEA, 0x60}, 60000, "the number of training images"},
        {{0x00, 0x00, 0x00, 0x1C}, 28, "the rows of an image"},
        {{0x12, 0x34, 0x56, 0x78}, 0x12345678u, "0x12345678: each byte in its place"},
        {{0xFF, 0xFF, 0xFF, 0xFE}, 4294967294u, "the largest values: no sign, no overflow"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        uint32_t got = read_big_endian_u32(cases[k].bytes);
        if (got != cases[k].value) {
            snprintf(why, size, "the bytes %02x %02x %02x %02x gave %u, but they are %u, %s. The first byte is "
                     "the most significant: it is worth 256^3 = 16777216.", cases[k].bytes[0], cases[k].bytes[1],
                     cases[k].bytes[2], cases[k].bytes[3], got, cases[k].value, cases[k].meaning);
            return why;
        }
    }
    return NULL;
}

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

/* ---- Chapter 4 -------------------------------------------------------------- */

#if CHAPTER >= 4
static const char *check_max_pool_backward(char *why, size_t size) {
    enum { B = 2, H = 5, W = 6, C = 3, N = B * H * W * C, OUT = B * (H / 2) * (W / 2) * C };
    float x[N], dx[N], out[OUT], dout[OUT], up[OUT], down[OUT];
    int order[N];
    Rng rng = rng_new(4, 4);
    // Distinct values 0.1 apart, so a small step never changes a maximum.
    for (int i = 0; i < N; i++) order[i] = i;
    shuffle(order, N, &rng);
    for (int i = 0; i < N; i++) x[i] = 0.1f * (float)order[i], dx[i] = 1;
    for (int i = 0; i < OUT; i++) dout[i] = rng_uniform(&rng) - 0.5f;
    max_pool_forward(out, x, B, H, W, C);
    max_pool_backward(dx, dout, x, B, H, W, C);
    for (int i = 0; i < N; i++) {
        double step = 0.01, saved = x[i], loss_up = 0, loss_down = 0;
        x[i] = (float)(saved + step);
        max_pool_forward(up, x, B, H, W, C);
        x[i] = (float)(saved - step);
        max_pool_forward(down, x, B, H, W, C);
        x[i] = (float)saved;
        for (int k = 0; k < OUT; k++) loss_up += up[k] * dout[k], loss_down += down[k] * dout[k];
        double numeric = (loss_up - loss_down) / (2 * step), got = dx[i] - 1.0;
        if (fabs(got - numeric) > 1e-4) {
            int c = i % C, w = i / C % W, h = i / C / W % H, b = i / C / W / H;
            snprintf(why, size, "the gradient of input (image %d, row %d, column %d, channel %d) is %.5f, but "
                     "finite differences give %.5f.%s", b, h, w, c, got, numeric,
                     h >= H / POOL * POOL || w >= W / POOL * POOL
                         ? " This input is in the last row or column of an odd size, which no window covers."
                         : numeric == 0 ? " It is not its window's maximum: only the maximum gets a gradient."
                                        : " It is its window's maximum: it gets that output's gradient, added.");
            return why;
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
    float x[N * C], r[N * C], out[N * C], x_hat[N * C], dx[N * C], inv_std[C];
    float gamma[C] = {1.5f, 0.5f, -1}, beta[C] = {0.1f, 0, -0.2f}, mean[C] = {0}, var[C] = {1, 1, 1};
    float dgamma[C] = {0}, dbeta[C] = {0};
    double exact[N * C];
    Rng rng = rng_new(5, 5);
    for (int i = 0; i < N * C; i++) x[i] = 2 * rng_uniform(&rng) - 1, exact[i] = x[i], r[i] = rng_uniform(&rng) - 0.5f;
    for (int i = 0; i < N * C; i++) dx[i] = 1;
    batch_norm_forward_train(NULL, out, x_hat, inv_std, mean, var, x, gamma, beta, N, C);
    batch_norm_backward(NULL, dx, dgamma, dbeta, r, x_hat, inv_std, gamma, N, C);
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
#endif

/* ---- Chapter 6 -------------------------------------------------------------- */

#if CHAPTER >= 6
static const char *check_early_stopping(char *why, size_t size) {
    static const struct {
        int patience;
        float losses[8];
        int stop_after, best;  // the epoch it stops after (0: never, in 8), the best epoch then
    } runs[] = {
        {3, {1.0f, 0.8f, 0.9f, 0.85f, 0.8f, 0.7f, 0.6f, 0.5f}, 5, 2},  // equal to the best is no better
        {2, {2.0f, 2.5f, 1.5f, 1.6f, 1.7f, 1.0f, 0.9f, 0.8f}, 5, 3},   // an improvement resets the count
        {1, {1.0f, 0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f, 0.3f}, 0, 8},   // never worse: never stops
        {1, {1.0f, 1.1f, 0.5f, 0.4f, 0.3f, 0.2f, 0.1f, 0.0f}, 2, 1},   // patience 1: the first miss stops
    };
    for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
        EarlyStopping s = early_stopping_new(runs[k].patience);
        int stopped = 0;
        for (int e = 1; e <= 8 && !stopped; e++)
            if (early_stopping_update(&s, e, runs[k].losses[e - 1]) == STOPPING_STOP) stopped = e;
        if (stopped != runs[k].stop_after || s.best_epoch != runs[k].best) {
            snprintf(why, size, "with patience %d and validation losses %.2f %.2f %.2f %.2f %.2f %.2f %.2f %.2f, "
                     "the run should stop after epoch %d (0: not within 8) with epoch %d best; it stopped after %d "
                     "with epoch %d best. Only a strictly lower loss is an improvement; stop when the epochs "
                     "without one reach the patience.", runs[k].patience, runs[k].losses[0], runs[k].losses[1],
                     runs[k].losses[2], runs[k].losses[3], runs[k].losses[4], runs[k].losses[5], runs[k].losses[6],
                     runs[k].losses[7], runs[k].stop_after, runs[k].best, stopped, s.best_epoch);
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
// Hand-computed: with n = b + c images on which the models differ, the
// p-value is 2 * sum_{i <= min(b,c)} C(n, i) / 2^n, at most 1.
static const char *check_mcnemar(char *why, size_t size) {
    static const struct {
        long b, c;
        double p;
    } cases[] = {
        {0, 5, 2.0 / 32},                 // all five one way: 2 * (1/32)
        {9, 1, 2.0 * 11 / 1024},          // C(10,0) + C(10,1) = 11
        {10, 20, 2 * 0.049368573352694511},  // P(X <= 10), X ~ Binomial(30, 1/2)
        {7, 7, 1},                        // an even split: no evidence, p = 1 (capped)
        {0, 0, 1},                        // no image differs
        {0, 2000, 0},                     // 2^-1999 underflows to 0 in double: still a number
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        double p = mcnemar_exact_p(cases[k].b, cases[k].c);
        if (!(fabs(p - cases[k].p) <= 1e-9 * fmax(1, cases[k].p))) {
            snprintf(why, size, "with b = %ld images only the first model gets right and c = %ld only the second "
                     "does, your p is %.10g, which is not right. Sum C(n, i) / 2^n for i from 0 to min(b, c), with "
                     "n = b + c, as exp(lgamma ...) so that 2^n cannot overflow; double it; at most 1.",
                     cases[k].b, cases[k].c, p);
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
    {"1.big-endian", check_big_endian},
#if CHAPTER >= 2
    {"2.softmax-backward", check_softmax_backward},
    {"2.adam", check_adam},
#endif
#if CHAPTER >= 3
    {"3.mul-backward", check_mul_backward},
#endif
#if CHAPTER >= 4
    {"4.max-pool-backward", check_max_pool_backward},
#endif
#if CHAPTER >= 5
    {"5.batch-norm-dx", check_batch_norm_dx},
#endif
#if CHAPTER >= 6
    {"6.early-stopping", check_early_stopping},
    {"6.crc32", check_crc32},
#endif
#if CHAPTER >= 7
    {"7.mcnemar", check_mcnemar},
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
