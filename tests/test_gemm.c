/* test_gemm.c - chapter 4's blocked matrix multiply (src/gemm.c): the
   answer against a plain triple loop in double precision, on awkward
   shapes, strides and patch geometries; the exact order of every sum
   (a chain of fmaf in k order, bit for bit); every kernel this CPU runs
   bit-identical to the portable one; 1, 2 and 3 threads bit-identical;
   parallel_for running every task exactly once; the packing; the guards.
   Kernels this CPU lacks (AVX-512 on most machines) are skipped, and say so. */
#include "check.h"

#define main chapter4_main
// `make test-chapter N=4 FILE=...` builds this against a student's chapter.
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter4.c"
#endif
#include CHAPTER_FILE
#undef main

// The patches of a (B, H, W, C) image under a KH x KW kernel: the output
// channels do not matter to the patch matrix.
static ConvShape conv_geometry(int B, int H, int W, int C, int KH, int KW, int pad) {
    return conv_shape(B, H, W, C, KH, KW, pad, 1);
}

// Element (r, c) of an operand, straight from the definition in gemm.c:
// the im2col matrix's row r = (b, oh, ow), column c = (kh, kw, ci), 0
// outside the image. Independent of the packing code it checks.
static double element(const Operand *op, long r, long c) {
    const ConvShape *g = op->patches;
    if (!g) return op->data[r * op->row_stride + c * op->col_stride];
    if (op->transposed) {
        long t = r;
        r = c, c = t;
    }
    long ow = r % g->out_w, oh = r / g->out_w % g->out_h, b = r / g->out_w / g->out_h;
    long ci = c % g->channels, kw = c / g->channels % g->kernel_w, kh = c / g->channels / g->kernel_w;
    long ih = oh + kh - g->pad, iw = ow + kw - g->pad;
    if (ih < 0 || ih >= g->height || iw < 0 || iw >= g->width) return 0;
    return op->data[((b * g->height + ih) * g->width + iw) * g->channels + ci];
}

static float *random_array(size_t n, uint64_t seed) {  // (n) in [-1, 1)
    float *x = malloc(n * sizeof(float) + 1);
    Rng r = rng_new(seed, STREAM_CHECK);
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * rng_uniform(&r) - 1.0f;
    return x;
}

// One problem: its operands own their memory.
typedef struct {
    int M, N, K, accumulate;
    long ldc;
    Operand A, B;
    ConvShape *geometry;  // the patches', if any: Operand points at it, so it has a fixed home
    float *a, *b, *c_before;  // c_before: (M, ldc), what C holds before the call
} Problem;

static void problem_free(Problem *p) {
    free(p->a);
    free(p->b);
    free(p->c_before);
    free(p->geometry);
}

// A matrix operand of (rows, cols), stored plainly or transposed, with
// rows (or columns) `extra` floats longer than needed: strided.
static Operand make_matrix(float **memory, int rows, int cols, int transposed, int extra, uint64_t seed) {
    long ld = (transposed ? rows : cols) + extra;
    long n = (transposed ? cols : rows) * ld;
    *memory = random_array((size_t)n, seed);
    return transposed ? transposed_operand(*memory, ld) : matrix_operand(*memory, ld);
}

static Problem matrix_problem(int M, int N, int K, int a_transposed, int b_transposed, int extra, int accumulate,
                              uint64_t seed) {
    Problem p = {.M = M, .N = N, .K = K, .accumulate = accumulate, .ldc = N + extra};
    p.A = make_matrix(&p.a, M, K, a_transposed, extra, seed);
    p.B = make_matrix(&p.b, K, N, b_transposed, extra, seed + 1);
    p.c_before = random_array((size_t)M * p.ldc + 1, seed + 2);
    return p;
}

/* Patches as A, a matrix as B:
   role 0: PATCHES (rows, KK) @ B (KK, N)             the forward pass
   role 1: PATCHES^T (KK, rows) @ B (rows, N)         the weight gradient
   role 2, 3: the same with B stored transposed */
static Problem patch_problem(ConvShape g, int role, int other, int accumulate, uint64_t seed) {
    Problem p = {.accumulate = accumulate};
    long rows = (long)conv_rows(&g), kk = (long)conv_patch_size(&g);
    p.geometry = xmalloc(sizeof g);
    *p.geometry = g;
    float *image = random_array((size_t)g.batch * g.height * g.width * g.channels, seed);
    int transposed = role % 2 == 1;
    p.M = (int)(transposed ? kk : rows), p.K = (int)(transposed ? rows : kk), p.N = other;
    p.a = image, p.A = patches_operand(image, p.geometry, transposed);
    p.B = make_matrix(&p.b, p.K, p.N, role >= 2, role >= 2, seed + 1);
    p.ldc = p.N;
    p.c_before = random_array((size_t)p.M * p.ldc + 1, seed + 2);
    return p;
}

// C for the problem, computed with the given context.
static float *run(const GemmContext *ctx, const Problem *p) {  // (M, ldc)
    float *c = xmalloc((size_t)p->M * p->ldc * sizeof(float) + 1);
    memcpy(c, p->c_before, (size_t)p->M * p->ldc * sizeof(float));
    gemm(ctx, p->M, p->N, p->K, p->A, p->B, c, p->ldc, p->accumulate);
    return c;
}

// The answer within float rounding of a double-precision sum, and the
// columns past N (the stride's gap) untouched.
static int matches_reference(const Problem *p, const float *c) {
    int ok = 1;
    for (int i = 0; i < p->M; i++) {
        for (int j = 0; j < p->N; j++) {
            double sum = p->accumulate ? p->c_before[(size_t)i * p->ldc + j] : 0, size = fabs(sum);
            for (int k = 0; k < p->K; k++) {
                double t = element(&p->A, i, k) * element(&p->B, k, j);
                sum += t;
                size += fabs(t);
            }
            // each of the K + 1 roundings is at most 2^-24 of the running size
            if (fabs(c[(size_t)i * p->ldc + j] - sum) > (p->K + 1) * size * 0x1p-24 + 1e-30) ok = 0;
        }
        for (long j = p->N; j < p->ldc; j++)
            if (c[(size_t)i * p->ldc + j] != p->c_before[(size_t)i * p->ldc + j]) ok = 0;
    }
    return ok;
}

// The promised order, bit for bit: for each element, fmaf over k upwards
// from C's old value or 0.
static int matches_fma_chain(const Problem *p, const float *c) {
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < p->N; j++) {
            float sum = p->accumulate ? p->c_before[(size_t)i * p->ldc + j] : 0.0f;
            for (int k = 0; k < p->K; k++) sum = fmaf((float)element(&p->A, i, k), (float)element(&p->B, k, j), sum);
            if (memcmp(&sum, &c[(size_t)i * p->ldc + j], sizeof sum) != 0) return 0;
        }
    return 1;
}

enum { MAX_PROBLEMS = 80 };

// The awkward shapes: sizes of 1, K = 9 and N = 10 as in the networks,
// M, N, K not multiples of any MR, NR or KC, K and M past KC and MC,
// N past NC, every transposition and stride, both accumulate modes.
static int make_problems(Problem *ps) {
    int n = 0;
    static const int shapes[][3] = {
        {1, 1, 1}, {1, 10, 9}, {7, 10, 9}, {6, 16, 256}, {13, 17, 300}, {5, 33, 513}, {250, 37, 70}, {19, 259, 31},
        {64, 10, 64}, {2, 3, 1},
    };
    for (int s = 0; s < 10; s++)
        for (int variant = 0; variant < 4; variant++)
            ps[n] = matrix_problem(shapes[s][0], shapes[s][1], shapes[s][2], variant & 1, variant >> 1,
                                   (s + variant) % 3, (s + variant) % 2, 100 + 10 * (uint64_t)n), n++;
    // Patch geometries: valid and same padding, padding of k - 1 (the input
    // gradient), odd sizes, C = 1 and 3 and 8, a non-square kernel, 1x1.
    ConvShape geometries[] = {
        conv_geometry(2, 5, 7, 1, 3, 3, 0), conv_geometry(1, 6, 5, 3, 3, 3, 1), conv_geometry(3, 4, 4, 3, 3, 3, 2),
        conv_geometry(2, 9, 7, 8, 3, 2, 1), conv_geometry(1, 1, 1, 1, 1, 1, 0), conv_geometry(1, 7, 3, 2, 5, 3, 2),
    };
    for (int gi = 0; gi < 6; gi++)
        for (int role = 0; role < 4; role++)
            ps[n] = patch_problem(geometries[gi], role, role < 2 ? 10 + gi : 33 + gi, (gi + role) % 2,
                                  500 + 10 * (uint64_t)n), n++;
    // A bigger convolution, to cross KC and MC in the patches.
    ps[n++] = patch_problem(conv_geometry(3, 13, 11, 32, 3, 3, 1), 0, 40, 1, 900);
    ps[n++] = patch_problem(conv_geometry(3, 13, 11, 32, 3, 3, 1), 1, 40, 1, 901);
    require(n <= MAX_PROBLEMS, "too many problems");
    return n;
}

static void test_against_reference(Problem *ps, int n) {
    section("gemm against a double-precision triple loop, and the fmaf chain bit for bit");
    const GemmKernel *kernels[] = {gemm_kernel_by_name("portable"), gemm_best_kernel()};
    for (int kk = 0; kk < 2; kk++) {
        GemmContext *ctx = gemm_context_new(kernels[kk], 2);
        int near = 0, exact = 0;
        for (int i = 0; i < n; i++) {
            float *c = run(ctx, &ps[i]);
            int ok = matches_reference(&ps[i], c), bits = matches_fma_chain(&ps[i], c);
            if (!ok || !bits)
                printf("     kernel %s, problem %d: M=%d N=%d K=%d%s%s\n", kernels[kk]->name, i, ps[i].M, ps[i].N,
                       ps[i].K, ok ? "" : ", wrong answer", bits ? "" : ", not the fmaf chain");
            near += ok;
            exact += bits;
            free(c);
        }
        CHECK_EQ_INT(near, n);
        CHECK_EQ_INT(exact, n);
        gemm_context_free(ctx);
    }
}

static void test_kernels_identical(Problem *ps, int n) {
    section("every kernel this CPU runs gives the portable kernel's bits");
    GemmContext *portable = gemm_context_new(gemm_kernel_by_name("portable"), 1);
    static const char *const names[] = {"avx2", "avx512"};
    for (int k = 0; k < 2; k++) {
        const GemmKernel *kernel = gemm_kernel_by_name(names[k]);
        char why[128];
        if (!gemm_kernel_supported(kernel)) {
            snprintf(why, sizeof why, "kernel %s: %s", names[k],
                     kernel ? "this CPU lacks the instructions" : "not built on this machine (x86-64 only)");
            skip(why);
            continue;
        }
        GemmContext *ctx = gemm_context_new(kernel, 1);
        int same = 0;
        for (int i = 0; i < n; i++) {
            float *want = run(portable, &ps[i]), *got = run(ctx, &ps[i]);
            same += memcmp(want, got, (size_t)ps[i].M * ps[i].ldc * sizeof(float)) == 0;
            free(want);
            free(got);
        }
        printf("     %s: %d of %d problems identical\n", names[k], same, n);
        CHECK_EQ_INT(same, n);
        gemm_context_free(ctx);
    }
    gemm_context_free(portable);
}

static void test_threads_identical(void) {
    section("1, 2 and 3 threads give the same bits");
    // Big enough to be cut into several tasks: a convolution's forward pass,
    // its weight gradient (small output, long sum) and a dense layer.
    ConvShape g = conv_geometry(8, 13, 13, 32, 3, 3, 0);
    Problem ps[] = {
        patch_problem(g, 0, 64, 1, 7), patch_problem(g, 1, 64, 1, 8), matrix_problem(64, 128, 784, 0, 0, 0, 0, 9),
        matrix_problem(784, 128, 64, 1, 0, 0, 1, 10), matrix_problem(500, 300, 40, 0, 1, 3, 0, 11),
        // M one block of rows: tiles of columns, the last panel partial
        matrix_problem(64, 100, 784, 0, 0, 0, 0, 12), matrix_problem(17, 300, 500, 0, 1, 2, 1, 13),
    };
    const GemmKernel *kernel = gemm_best_kernel();
    GemmContext *ctx[3];
    for (int t = 0; t < 3; t++) ctx[t] = gemm_context_new(kernel, t + 1);
    for (int i = 0; i < 7; i++) {
        float *one = run(ctx[0], &ps[i]);
        for (int t = 1; t < 3; t++) {
            float *many = run(ctx[t], &ps[i]);
            if (!CHECK(memcmp(one, many, (size_t)ps[i].M * ps[i].ldc * sizeof(float)) == 0))
                printf("     problem %d, %d threads\n", i, t + 1);
            free(many);
        }
        free(one);
    }
    for (int t = 0; t < 3; t++) gemm_context_free(ctx[t]);
    for (int i = 0; i < 7; i++) problem_free(&ps[i]);
}

static void test_blockings_identical(Problem *ps, int n) {
    section("every blocking gives the same bits (what make bench sweeps)");
    const GemmKernel *kernel = gemm_best_kernel();
    GemmContext *standard = gemm_context_new(kernel, 2);
    // Odd, tiny and large blocks: a kc of 1 and 7 cuts every sum into many
    // pieces, an mc of 6 and an nc of 32 make many small tiles.
    Blocking blockings[] = {{1, 6, 32}, {7, 12, 32}, {64, 120, 128}, {100, 480, 512}, {1000, 960, 256}};
    for (int b = 0; b < 5; b++) {
        GemmContext *ctx = gemm_context_new_blocked(kernel, 2, blockings[b]);
        int same = 0;
        for (int i = 0; i < n; i++) {
            float *want = run(standard, &ps[i]), *got = run(ctx, &ps[i]);
            same += memcmp(want, got, (size_t)ps[i].M * ps[i].ldc * sizeof(float)) == 0;
            free(want);
            free(got);
        }
        if (!CHECK(same == n)) printf("     kc %d, mc %d, nc %d: %d of %d problems identical\n", blockings[b].kc,
                                      blockings[b].mc, blockings[b].nc, same, n);
        gemm_context_free(ctx);
    }
    gemm_context_free(standard);
}

// gemm_with_bias (a convolution's bias and product in one pass) gives the
// bits of filling C with the bias and accumulating, with the default
// blocking and with one that cuts every sum and tile small, for the
// portable kernel and the best one (each reads the bias its own way);
// and, for K = 0, just the bias.
static void test_with_bias(Problem *ps, int n) {
    section("gemm_with_bias: the bits of filling C with the bias, then accumulating");
    const GemmKernel *portable = gemm_kernel_by_name("portable"), *best = gemm_best_kernel();
    GemmContext *contexts[4] = {gemm_context_new(best, 2), gemm_context_new_blocked(best, 2, (Blocking){7, 12, 32}),
                                gemm_context_new(portable, 2),
                                gemm_context_new_blocked(portable, 2, (Blocking){7, 12, 32})};
    for (int k = 0; k < 4; k++) {
        int same = 0;
        for (int i = 0; i < n; i++) {
            const Problem *p = &ps[i];
            float *bias = random_array((size_t)p->N, 500 + (uint64_t)i);
            size_t bytes = (size_t)p->M * p->ldc * sizeof(float);
            float *want = xmalloc(bytes), *got = xmalloc(bytes);
            memcpy(want, p->c_before, bytes), memcpy(got, p->c_before, bytes);
            for (int r = 0; r < p->M; r++) memcpy(want + (size_t)r * p->ldc, bias, (size_t)p->N * sizeof(float));
            gemm(contexts[k], p->M, p->N, p->K, p->A, p->B, want, p->ldc, 1);
            gemm_with_bias(contexts[k], p->M, p->N, p->K, p->A, p->B, got, p->ldc, bias);
            same += memcmp(want, got, bytes) == 0;
            free(bias), free(want), free(got);
        }
        if (!CHECK(same == n)) printf("     context %d: %d of %d problems identical\n", k, same, n);
    }
    float a[1] = {0}, b[1] = {0}, c[3 * 4], bias[4] = {1, -2, 3, -4};
    for (int i = 0; i < 12; i++) c[i] = 9;
    gemm_with_bias(contexts[0], 3, 4, 0, matrix_operand(a, 1), matrix_operand(b, 4), c, 4, bias);
    CHECK(memcmp(c, bias, sizeof bias) == 0 && memcmp(c + 4, bias, sizeof bias) == 0 && memcmp(c + 8, bias, sizeof bias) == 0);
    for (int k = 0; k < 4; k++) gemm_context_free(contexts[k]);
}

// parallel_for: every task exactly once, on a worker the pool has.
typedef struct {
    int *runs;     // (tasks)
    int *workers;  // (tasks): who ran it
} Tally;

static void count_task(void *context, int task, int worker) {
    Tally *t = context;
    t->runs[task]++;
    t->workers[task] = worker;
}

static void test_parallel_for(void) {
    section("parallel_for runs every task exactly once");
    static const int task_counts[] = {0, 1, 2, 7, 1000};
    for (int threads = 1; threads <= 3; threads++) {
        Workers *w = workers_new(threads);
        CHECK_EQ_INT(w->threads, HAVE_THREADS ? threads : 1);
        for (int round = 0; round < 3; round++)  // the pool is reused
            for (int c = 0; c < 5; c++) {
                int n = task_counts[c], once = 0, in_pool = 0;
                Tally t = {xmalloc(sizeof(int) * (size_t)n + 1), xmalloc(sizeof(int) * (size_t)n + 1)};
                memset(t.runs, 0, sizeof(int) * (size_t)n);
                parallel_for(w, n, count_task, &t);
                for (int i = 0; i < n; i++) {
                    once += t.runs[i] == 1;
                    in_pool += t.workers[i] >= 0 && t.workers[i] < w->threads;
                }
                CHECK_EQ_INT(once, n);
                CHECK_EQ_INT(in_pool, n);
                free(t.runs);
                free(t.workers);
            }
        workers_free(w);
    }
    int runs[3] = {0}, workers[3] = {0};
    Tally t = {runs, workers};
    parallel_for(NULL, 3, count_task, &t);  // no pool: on the caller
    CHECK(runs[0] == 1 && runs[1] == 1 && runs[2] == 1);
    CHECK(online_cpus() >= 1);
}

static void test_edges(void) {
    section("empty sums and empty outputs");
    GemmContext *ctx = gemm_context_new(gemm_best_kernel(), 2);
    float c[6] = {1, 2, 3, 4, 5, 6}, a[1] = {0}, b[1] = {0};
    gemm(ctx, 2, 3, 0, matrix_operand(a, 0), matrix_operand(b, 3), c, 3, 1);  // K = 0, accumulate: unchanged
    CHECK(c[0] == 1 && c[5] == 6);
    gemm(ctx, 2, 3, 0, matrix_operand(a, 0), matrix_operand(b, 3), c, 3, 0);  // K = 0: C = 0
    CHECK(c[0] == 0 && c[5] == 0);
    gemm(ctx, 0, 3, 5, matrix_operand(a, 5), matrix_operand(b, 3), NULL, 3, 0);  // M = 0: returns, C never touched
    gemm_context_free(ctx);
}

static void test_kernel_table(void) {
    section("the kernel table");
    const GemmKernel *best = gemm_best_kernel();
    CHECK(gemm_kernel_supported(best));
    CHECK(gemm_kernel_supported(gemm_kernel_by_name("portable")));
    CHECK(gemm_kernel_by_name("sse9") == NULL);
    CHECK(!gemm_kernel_supported(NULL));
    printf("     best kernel here: %s\n", best->name);
}

// What must stop the program (exit 70, a bug) does.
static void bad_geometry(void *unused) {
    (void)unused;
    GemmContext *ctx = gemm_context_new(gemm_kernel_by_name("portable"), 1);
    ConvShape g = conv_geometry(1, 5, 5, 1, 3, 3, 0);
    g.out_h = 5;  // should be 3
    float image[25] = {0}, w[9] = {0}, out[25];
    gemm(ctx, 15, 1, 9, patches_operand(image, &g, 0), matrix_operand(w, 1), out, 1, 0);
}

static void wrong_size(void *unused) {
    (void)unused;
    GemmContext *ctx = gemm_context_new(gemm_kernel_by_name("portable"), 1);
    ConvShape g = conv_geometry(1, 5, 5, 1, 3, 3, 0);
    float image[25] = {0}, w[9] = {0}, out[25];
    gemm(ctx, 10, 1, 9, patches_operand(image, &g, 0), matrix_operand(w, 1), out, 1, 0);  // M should be 9
}

static void patches_as_b(void *unused) {
    (void)unused;
    GemmContext *ctx = gemm_context_new(gemm_kernel_by_name("portable"), 1);
    ConvShape g = conv_geometry(1, 5, 5, 1, 3, 3, 0);
    float image[25] = {0}, a[9] = {0}, out[9];
    gemm(ctx, 1, 9, 9, matrix_operand(a, 9), patches_operand(image, &g, 1), out, 9, 0);
}

static void nested(void *context, int task, int worker) {
    (void)task, (void)worker;
    parallel_for(context, 4, count_task, NULL);
}

static void nested_parallel_for(void *unused) {
    (void)unused;
    Workers *w = workers_new(2);
    parallel_for(w, 2, nested, w);
}

static void test_guards(void) {
    section("misuse stops with exit 70");
    CHECK_EXITS(bad_geometry, NULL, EXIT_BUG, "output 5x3, but a 5x5 image");
    CHECK_EXITS(wrong_size, NULL, EXIT_BUG, "patches make a (9, 9) matrix");
    CHECK_EXITS(patches_as_b, NULL, EXIT_BUG, "patches go in A");
    if (HAVE_THREADS) CHECK_EXITS(nested_parallel_for, NULL, EXIT_BUG, "inside a task");
}

/* The packing, against the definition of each operand's elements: pack_a
   by rows and by columns (as pack_a_by_rows chooses) and pack_b, on every
   kind of operand, blocks that start anywhere and end anywhere, with the
   zeros that pad a last strip or panel. The GEMM tests above would catch
   most wrong packings too; these name the routine. */
static int strip_matches(const Operand *A, const float *packed, long row0, int rows, long k0, int kc) {
    int by_rows = pack_a_by_rows(A);
    for (int s = 0; s < rows; s += MR)
        for (int i = 0; i < MR; i++)
            for (int k = 0; k < kc; k++) {
                const float *strip = packed + (size_t)s * kc;
                float got = by_rows ? strip[i * kc + k] : strip[k * MR + i];
                double want = s + i < rows ? element(A, row0 + s + i, k0 + k) : 0.0;
                if (got != (float)want) return 0;
            }
    return 1;
}

static int panels_match(const Operand *B, const float *packed, long k0, int kc, long col0, int cols, int nr) {
    for (int j = 0; j < cols; j += nr)
        for (int k = 0; k < kc; k++)
            for (int x = 0; x < nr; x++) {
                double want = j + x < cols ? element(B, k0 + k, col0 + j + x) : 0.0;
                if (packed[(size_t)j * kc + (size_t)k * nr + x] != (float)want) return 0;
            }
    return 1;
}

static void test_packing(void) {
    section("pack_a and pack_b copy exactly the operand's elements, and zeros past its edge");
    ConvShape g[] = {conv_geometry(2, 5, 7, 3, 3, 3, 1), conv_geometry(1, 6, 6, 1, 5, 5, 2),
                     conv_geometry(2, 4, 6, 8, 3, 2, 0)};
    float *m = random_array(40 * 50, 31);
    int wrong_a = 0, wrong_b = 0, checked = 0;
    float *packed = xmalloc(sizeof(float) * 64 * 400);
    for (int v = 0; v < 8; v++) {
        Operand op;
        long rows, cols;
        float *image = NULL;
        if (v < 2) {  // a matrix and its transpose, strided
            op = v ? transposed_operand(m, 50) : matrix_operand(m, 50);
            rows = v ? 50 : 40, cols = v ? 40 : 45;
        } else {  // patches and transposed patches
            ConvShape *s = &g[(v - 2) / 2];
            image = random_array((size_t)s->batch * s->height * s->width * s->channels, 40 + (uint64_t)v);
            op = patches_operand(image, s, v % 2);
            rows = v % 2 ? (long)conv_patch_size(s) : (long)conv_rows(s);
            cols = v % 2 ? (long)conv_rows(s) : (long)conv_patch_size(s);
        }
        static const int starts[][2] = {{0, 0}, {1, 2}, {5, 7}, {13, 3}};
        for (int t = 0; t < 4; t++) {
            long r0 = starts[t][0] % rows, c0 = starts[t][1] % cols;
            int nrows = (int)(rows - r0 < 17 ? rows - r0 : 17), ncols = (int)(cols - c0 < 23 ? cols - c0 : 23);
            pack_a(packed, &op, r0, nrows, c0, ncols);
            wrong_a += !strip_matches(&op, packed, r0, nrows, c0, ncols);
            if (!op.patches) {
                for (int nr = 4; nr <= GEMM_MAX_NR; nr *= 2) {
                    pack_b(packed, &op, r0, nrows, c0, ncols, nr);
                    wrong_b += !panels_match(&op, packed, r0, nrows, c0, ncols, nr);
                }
            }
            checked++;
        }
        free(image);
    }
    printf("     %d blocks packed\n", checked);
    CHECK_EQ_INT(wrong_a, 0);
    CHECK_EQ_INT(wrong_b, 0);
    free(packed), free(m);
}

/* Adam's vector versions (AVX, and the threaded parts) against
   the scalar loop, bit for bit: the same operations in the same order, on
   counts that leave every kind of tail, for several steps. */
typedef void AdamVersion(Optimizer *, float *, const float *, size_t);

static void test_adam_versions(void) {
    section("Adam: every vector version and the threaded parts give the scalar loop's bits");
    const size_t counts[] = {0, 1, 3, 15, 16, 17, 33, 1001, 70001};
#if HAVE_X86_KERNELS
    struct { const char *name; AdamVersion *update; int present; } versions[] = {
        {"avx", adam_update_avx, __builtin_cpu_supports("avx")},
        {"widest", adam_update_widest, 1},
        {"optimizer_update", NULL, 1},
    };
#else
    struct { const char *name; AdamVersion *update; int present; } versions[] = {{"optimizer_update", NULL, 1}};
#endif
    Workers *workers = workers_new(3);
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        size_t n = counts[k];
        float *grads = malloc((n + 1) * 3 * sizeof(float)), *want = malloc((n + 1) * sizeof(float));
        float *got = malloc((n + 1) * sizeof(float));
        Rng rng = rng_new(7, n);
        for (size_t i = 0; i < 3 * n; i++) grads[i] = (rng_uniform(&rng) - 0.5f) * (i % 7 == 0 ? 1e-6f : 1.0f);
        Optimizer scalar = optimizer_new(OPTIMIZER_ADAM, 0.001f, n);
        for (size_t i = 0; i < n; i++) want[i] = (float)i / 7.0f - 1.0f;
        for (int step = 0; step < 3; step++) adam_update(&scalar, want, grads + step * n, n);
        for (size_t v = 0; v < sizeof versions / sizeof versions[0]; v++) {
            if (!versions[v].present) continue;
            Optimizer o = optimizer_new(OPTIMIZER_ADAM, 0.001f, n);
            o.workers = workers;
            for (size_t i = 0; i < n; i++) got[i] = (float)i / 7.0f - 1.0f;
            for (int step = 0; step < 3; step++)
                if (versions[v].update) versions[v].update(&o, got, grads + step * n, n);
                else optimizer_update(&o, got, grads + step * n, n);
            int same = o.step == scalar.step && (n == 0 || (memcmp(got, want, n * sizeof(float)) == 0 &&
                       memcmp(o.m, scalar.m, 2 * n * sizeof(float)) == 0));
            if (!CHECK(same)) printf("     %s, %zu parameters\n", versions[v].name, n);
            optimizer_free(&o);
        }
        optimizer_free(&scalar);
        free(grads), free(want), free(got);
    }
    workers_free(workers);
}

int main(void) {
    test_adam_versions();
    static Problem ps[MAX_PROBLEMS];
    int n = make_problems(ps);
    test_kernel_table();
    test_parallel_for();
    test_edges();
    test_against_reference(ps, n);
    test_kernels_identical(ps, n);
    test_threads_identical();
    test_blockings_identical(ps, n);
    test_with_bias(ps, n);
    test_packing();
    test_guards();
    for (int i = 0; i < n; i++) problem_free(&ps[i]);
    return check_summary();
}
