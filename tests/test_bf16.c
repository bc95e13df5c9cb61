/* test_bf16.c - chapter 8, part 2: the GEMM in bfloat16.
   - Rounding to bf16 against a table of cases checked by hand: ties to
     even both ways, the largest finite values, infinities, NaNs (quiet,
     signalling, payload only in the low bits), denormals, negative zero.
   - The emulation of one lane of VDPBF16PS against the instruction, where
     the CPU has it, bit for bit on a million random lanes built to hit
     denormals, cancellations, ties, overflow, infinities and NaNs, and on
     a list of single cases that each pin down one rule (the order of the
     pair, the rounding between the two steps, the flushing of inputs, of
     the step between and of the output, tininess after rounding).
   - The bf16 GEMM: every kernel this CPU runs, at 1, 2 and 3 threads and
     two blockings, against a triple loop that follows the definition
     (bf16.c's header) step by step, bit for bit, on awkward shapes and
     values, transposed and patch operands, bias and accumulation.
   - Two training steps of the basic and the deeper CNN in bf16: the same
     bits on every kernel and thread count, not fp32's bits, and close to
     them. */
#include "check.h"

#define main chapter8_main
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter8.c"
#endif
#include CHAPTER_FILE
#undef main

static int same_bits(float a, float b) { return float_bits(a) == float_bits(b); }

/* ---- Rounding ------------------------------------------------------------------ */

static void test_rounding_table(void) {
    section("bf16_round: a table of cases checked by hand");
    static const struct {
        uint32_t in;
        bf16 out;
        const char *why;
    } CASES[] = {
        {0x3F800000, 0x3F80, "1.0: exact"},
        {0x3F808000, 0x3F80, "1 + 2^-8, halfway between 1 and 1 + 2^-7: tie to even (down)"},
        {0x3F818000, 0x3F82, "1 + 3*2^-8, halfway, odd below: tie to even (up)"},
        {0x3F808001, 0x3F81, "just above halfway: up"},
        {0x3F807FFF, 0x3F80, "just below halfway: down"},
        {0xBF818000, 0xBF82, "negative tie, odd below: away from zero to even"},
        {0x3FFFFFFF, 0x4000, "rounding carries into the exponent: 2 - 2^-23 -> 2"},
        {0x7F7F0000, 0x7F7F, "the largest finite bf16, exact"},
        {0x7F7F7FFF, 0x7F7F, "the largest float below the tie: the largest bf16"},
        {0x7F7F8000, 0x7F80, "the tie above the largest bf16: to even, which is infinity"},
        {0x7F7FFFFF, 0x7F80, "the largest float: infinity"},
        {0xFF7FFFFF, 0xFF80, "the most negative float: minus infinity"},
        {0x7F800000, 0x7F80, "infinity"},
        {0xFF800000, 0xFF80, "minus infinity"},
        {0x7FC00000, 0x7FC0, "the quiet NaN"},
        {0x7F800001, 0x7FC0, "a signalling NaN with its payload in the low bits: a quiet NaN, not infinity"},
        {0xFF810000, 0xFFC1, "a signalling NaN: quieted, sign and payload kept"},
        {0x7FFFFFFF, 0x7FFF, "a NaN with every bit: no carry into the sign"},
        {0x00000000, 0x0000, "zero"},
        {0x80000000, 0x8000, "negative zero"},
        {0x00000001, 0x0000, "the smallest denormal: zero"},
        {0x007FFFFF, 0x0000, "the largest denormal: zero (it would round to 2^-126; the instruction flushes it)"},
        {0x807F8000, 0x8000, "a negative denormal: negative zero"},
        {0x00800000, 0x0080, "the smallest normal float, 2^-126: exact"},
        {0x00808000, 0x0080, "2^-126 (1 + 2^-8): a tie just above the denormals, to even"},
        {0x40490FDB, 0x4049, "pi: 3.140625"},
        {0x3DCCCCCD, 0x3DCD, "0.1: 0.10009765625"},
    };
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        bf16 got = bf16_round(bits_float(CASES[i].in));
        if (!CHECK(got == CASES[i].out))
            printf("     %08x -> %04x, want %04x (%s)\n", (unsigned)CASES[i].in, got, CASES[i].out, CASES[i].why);
    }
    CHECK(bf16_to_float(0x4049) == 3.140625f);
    CHECK(bf16_to_float(0xC000) == -2.0f);
    // Every bf16 that is not a NaN or a denormal rounds to itself.
    int all = 1;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float x = bf16_to_float((bf16)h);
        if (isnan(x) || (fabsf(x) < FLT_MIN && x != 0)) continue;
        all &= bf16_round(x) == h;
    }
    CHECK(all);
}

/* ---- The instruction ------------------------------------------------------------ */

#if HAVE_X86_KERNELS
__attribute__((target("avx512f,avx512bf16")))
static void dpbf16_16(float *t, const uint32_t *a, const uint32_t *b) {  // 16 lanes, in place
    __m512 r = _mm512_dpbf16_ps(_mm512_loadu_ps(t), (__m512bh)_mm512_loadu_si512(a), (__m512bh)_mm512_loadu_si512(b));
    _mm512_storeu_ps(t, r);
}
#endif

// A bf16 or float exponent field worth testing: mostly the edges.
static uint32_t interesting_exponent(Rng *rng) {
    static const uint32_t E[] = {0, 0, 1, 1, 2, 60, 63, 64, 65, 70, 100, 126, 127, 128, 150, 190, 253, 254, 255};
    uint32_t r = (uint32_t)(rng_uniform(rng) * 2 * (sizeof E / sizeof E[0]));
    return r < sizeof E / sizeof E[0] ? E[r] : 90 + (uint32_t)(rng_uniform(rng) * 80);
}

#if HAVE_X86_KERNELS
static bf16 random_bf16(Rng *rng) {
    uint32_t sign = (uint32_t)(rng_uniform(rng) < 0.5f), mantissa = (uint32_t)(rng_uniform(rng) * 128);
    if (rng_uniform(rng) < 0.3f) mantissa = rng_uniform(rng) < 0.5f ? 0 : 127;
    return (bf16)(sign << 15 | interesting_exponent(rng) << 7 | mantissa);
}

// A random float; sometimes minus a product of the lane, for cancellation.
static float random_t(Rng *rng, uint32_t a, uint32_t b) {
    float p = rng_uniform(rng) < 0.5f ? bf16_to_float((bf16)(a >> 16)) * bf16_to_float((bf16)(b >> 16))
                                      : bf16_to_float((bf16)a) * bf16_to_float((bf16)b);
    uint32_t u = (uint32_t)(rng_uniform(rng) < 0.5f) << 31 | interesting_exponent(rng) << 23 | (uint32_t)(rng_uniform(rng) * 8388608.0f);
    float choices[4] = {bits_float(u), -p, -p + bits_float(u & 0x80FFFFFFu), bits_float(u & 0xFFFF0000u)};
    return choices[(int)(rng_uniform(rng) * 4) & 3];
}

#endif

typedef struct {
    float t;
    bf16 a0, a1, b0, b1;
    uint32_t want;  // the result, as the hardware of the book's machine gives it
    const char *rule;
} LaneCase;

static void test_instruction_cases(void) {
    section("bf16_dot2: one case for each rule of VDPBF16PS");
    const bf16 one = 0x3F80, minus_two24 = 0xCB80;
    const LaneCase CASES[] = {
        {16777216.0f, minus_two24, one, one, one, 0x00000000, "odd pair first: (2^24 + 1) rounds to 2^24, then -2^24"},
        {16777216.0f, one, minus_two24, one, one, 0x3F800000, "so with the pair swapped the 1 survives"},
        {1.0f, 0x3380, 0x3380, one, one, 0x3F800000, "rounded between the steps: 1 + 2^-24 ties to 1, twice"},
        {0.0f, 0x0040, 0, 0x7180, 0, 0x00000000, "a denormal input is read as zero"},
        {0x1p-130f, 0, 0, 0, 0, 0x00000000, "a denormal t is read as zero"},
        {-0x1p-130f, 0, 0, 0, 0, 0x00000000, "... as -0, and -0 + 0 is +0"},
        {0.0f, 0x2000, 0, 0x1F80, 0, 0x00000000, "a denormal result (2^-127) is flushed"},
        {0.0f, 0xA000, 0, 0x1F80, 0, 0x80000000, "to a zero of its sign"},
        {0x1p-126f, one, 0xA000, 0x0080, 0x1F80, 0x00800000, "the step between is flushed too: 2^-126 - 2^-127 -> 0, then + 2^-126"},
        {0x1p-126f, 0x2000, 0, 0x1F80, 0, 0x00C00000, "a product below 2^-126 is exact, not flushed: 2^-126 + 2^-127"},
        {0x1p-126f, 0x1A00, 0, 0x9980, 0, 0x00800000, "2^-126 - 2^-151 rounds to 2^-126: not tiny"},
        {0x1p-126f, 0x1A00, 0, 0x9A00, 0, 0x00000000, "2^-126 - 2^-150 is a float with the exponent unbounded: tiny, flushed"},
        {0.0f, 0x7180, 0xF180, 0x7180, 0x7180, 0xFF800000, "each step rounds: -2^200 overflows before +2^200 comes"},
        {-0.0f, 0x8000, 0x8000, one, one, 0x80000000, "-0 + (-0) + (-0) = -0"},
        {0.0f, 0x7F80, 0, 0, 0, 0xFFC00000, "infinity times zero: x86's default NaN"},
        {0.0f, 0x7F81, 0, one, 0, 0x7FC10000, "a signalling NaN comes out quiet"},
        {bits_float(0x7FC00003), 0x7FC1, 0, one, 0, 0x7FC10000, "a NaN product before a NaN t"},
        {0.0f, 0x7FC1, 0xFFC2, one, one, 0x7FC10000, "two NaNs: the even step's a is first in the last step"},
        {0.0f, one, 0, 0x7FC3, 0, 0x7FC30000, "b's NaN when a is a number"},
        {0.0f, 0x7FC1, 0, 0x7FC3, 0, 0x7FC10000, "a's NaN before b's"},
    };
#if HAVE_X86_KERNELS
    int have = cpu_has_avx512bf16();
#endif
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const LaneCase *k = &CASES[i];
        uint32_t a = (uint32_t)k->a1 << 16 | k->a0, b = (uint32_t)k->b1 << 16 | k->b0;
        float got = bf16_dot2(k->t, a, b);
        if (!CHECK(float_bits(got) == k->want))
            printf("     %s: got %08x, want %08x\n", k->rule, (unsigned)float_bits(got), (unsigned)k->want);
#if HAVE_X86_KERNELS
        if (have) {  // the table is this hardware's, too
            float t[16], hw;
            uint32_t av[16], bv[16];
            for (int l = 0; l < 16; l++) t[l] = k->t, av[l] = a, bv[l] = b;
            dpbf16_16(t, av, bv);
            hw = t[0];
            if (!CHECK(float_bits(hw) == k->want))
                printf("     the instruction: %s: %08x, the table says %08x\n", k->rule, (unsigned)float_bits(hw), (unsigned)k->want);
        }
#endif
    }
}

static void test_instruction_random(Rng *rng) {
    section("bf16_dot2 against VDPBF16PS on a million lanes");
#if HAVE_X86_KERNELS
    if (!cpu_has_avx512bf16()) {
        skip("this CPU has no AVX512_BF16");
        return;
    }
    enum { LANES = 16, CALLS = 65536 };
    long differ = 0, nans = 0, flushed = 0;
    for (int call = 0; call < CALLS; call++) {
        float t[LANES], want[LANES];
        uint32_t a[LANES], b[LANES];
        for (int l = 0; l < LANES; l++) {
            a[l] = (uint32_t)random_bf16(rng) << 16 | random_bf16(rng);
            b[l] = (uint32_t)random_bf16(rng) << 16 | random_bf16(rng);
            t[l] = random_t(rng, a[l], b[l]);
            want[l] = bf16_dot2(t[l], a[l], b[l]);
        }
        float in[LANES];
        memcpy(in, t, sizeof t);
        dpbf16_16(t, a, b);
        for (int l = 0; l < LANES; l++) {
            nans += isnan(t[l]);
            flushed += t[l] == 0 && in[l] != 0;
            if (!same_bits(t[l], want[l]) && differ++ < 5)
                printf("     t=%08x a=%08x b=%08x: the instruction %08x, the emulation %08x\n", (unsigned)float_bits(in[l]),
                       (unsigned)a[l], (unsigned)b[l], (unsigned)float_bits(t[l]), (unsigned)float_bits(want[l]));
        }
    }
    CHECK_EQ_INT(differ, 0);
    CHECK(nans > 1000 && flushed > 1000);  // the inputs did reach the rules
    printf("   %d lanes, %ld NaN results, %ld results flushed or cancelled to zero: %ld differ\n", LANES * CALLS, nans,
           flushed, differ);
#else
    (void)rng;
    skip("not an x86-64 build");
#endif
}

/* ---- The GEMM ------------------------------------------------------------------ */

// The definition, a step at a time: C(i, j) for matrices A (M, K) and B (K, N).
static void reference_gemm(int M, int N, int K, const float *A, long lda, const float *B, long ldb, float *C,
                           const float *start, long ld_start) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float t = start ? ftz(start[i * ld_start + j]) : 0.0f;
            for (int k = 0; k < K; k += 2) {
                float a1 = k + 1 < K ? bf16_to_float(bf16_round(A[i * lda + k + 1])) : 0.0f;
                float b1 = k + 1 < K ? bf16_to_float(bf16_round(B[(long)(k + 1) * ldb + j])) : 0.0f;
                t = bf16_step(a1, b1, t);
                t = bf16_step(bf16_to_float(bf16_round(A[i * lda + k])), bf16_to_float(bf16_round(B[(long)k * ldb + j])), t);
            }
            C[(long)i * N + j] = t;
        }
}

// Values that test the rounding and the flushing: mostly ordinary, some
// ties of the rounding, denormals, tiny and huge values; all times `scale`.
static void fill_awkward(float *x, size_t n, Rng *rng, float scale) {
    for (size_t i = 0; i < n; i++) {
        float r = rng_uniform(rng), v = scale * (2 * rng_uniform(rng) - 1);
        x[i] = r < 0.85f ? v
             : r < 0.90f ? bits_float((float_bits(v) & 0xFFFF0000u) | 0x8000u)  // a tie
             : r < 0.93f ? v * 0x1p-130f                                       // a denormal
             : r < 0.96f ? v * 0x1p-62f                                        // products near 2^-126
             : r < 0.98f ? v * 0x1p60f
             : r < 0.998f ? 0.0f
             : r < 0.999f ? copysignf(INFINITY, v)
                          : bits_float(0x7F800001u);  // a NaN that cutting would make infinity
    }
}

static int same_floats(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!same_bits(a[i], b[i]) && !(isnan(a[i]) && isnan(b[i]))) return 0;
    return 1;
}

static void test_gemm_against_definition(Rng *rng) {
    section("the bf16 GEMM: every kernel, 1-3 threads, two blockings, against the definition, bit for bit");
    static const int SHAPES[][3] = {{1, 1, 1}, {7, 5, 3}, {6, 32, 2}, {13, 37, 259}, {50, 70, 301}, {25, 33, 600},
                                    {7, 5, 3}, {13, 37, 259}};
    static const char *const NAMES[] = {"portable", "avx2", "avx512", "avx512bf16"};
    for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++) {
        int M = SHAPES[s][0], N = SHAPES[s][1], K = SHAPES[s][2];
        // The last shapes again with every product near 2^-126, where the
        // sums fall among the denormals that the instruction flushes.
        float scale_a = s < 6 ? 1.0f : 0x1p-63f, scale_b = s < 6 ? 1.0f : 0x1p-62f, scale_c = s < 6 ? 1.0f : 0x1p-127f;
        float *A = malloc((size_t)M * K * sizeof(float)), *At = malloc((size_t)M * K * sizeof(float));
        float *B = malloc((size_t)K * N * sizeof(float)), *bias = malloc((size_t)N * sizeof(float));
        float *C0 = malloc((size_t)M * N * sizeof(float)), *want[3], *got = malloc((size_t)M * N * sizeof(float));
        fill_awkward(A, (size_t)M * K, rng, scale_a), fill_awkward(B, (size_t)K * N, rng, scale_b);
        fill_awkward(bias, (size_t)N, rng, scale_c), fill_awkward(C0, (size_t)M * N, rng, scale_c);
        for (int i = 0; i < M; i++)
            for (int k = 0; k < K; k++) At[(size_t)k * M + i] = A[(size_t)i * K + k];
        for (int v = 0; v < 3; v++) want[v] = malloc((size_t)M * N * sizeof(float));
        reference_gemm(M, N, K, A, K, B, N, want[0], NULL, 0);       // C = A B
        reference_gemm(M, N, K, A, K, B, N, want[1], bias, 0);       // C = bias + A B
        reference_gemm(M, N, K, A, K, B, N, want[2], C0, N);         // C += A B
        for (int kn = 0; kn < 4; kn++) {
            const Bf16Kernel *kernel = bf16_kernel_by_name(NAMES[kn]);
            if (!bf16_kernel_supported(kernel)) continue;
            for (int cell = 0; cell < 4; cell++) {
                int threads = 1 + cell % 3;
                GemmContext *ctx = cell < 3 ? gemm_context_new_bf16(kernel, threads)
                                            : gemm_context_new_bf16_blocked(kernel, 2, (Blocking){7, 12, 32});
                int ok = 1;
                gemm(ctx, M, N, K, matrix_operand(A, K), matrix_operand(B, N), got, N, 0);
                ok &= same_floats(got, want[0], (size_t)M * N);
                gemm(ctx, M, N, K, transposed_operand(At, M), matrix_operand(B, N), got, N, 0);
                ok &= same_floats(got, want[0], (size_t)M * N);
                gemm_with_bias(ctx, M, N, K, matrix_operand(A, K), matrix_operand(B, N), got, N, bias);
                ok &= same_floats(got, want[1], (size_t)M * N);
                memcpy(got, C0, (size_t)M * N * sizeof(float));
                gemm(ctx, M, N, K, matrix_operand(A, K), matrix_operand(B, N), got, N, 1);
                ok &= same_floats(got, want[2], (size_t)M * N);
                if (!CHECK(ok)) printf("     %s, M=%d N=%d K=%d, cell %d\n", NAMES[kn], M, N, K, cell);
                gemm_context_free(ctx);
            }
        }
        for (int v = 0; v < 3; v++) free(want[v]);
        free(A), free(At), free(B), free(bias), free(C0), free(got);
    }
}

// A convolution's patches as A, on every kernel: the bits of the portable one,
// and those of the definition on the patch matrix written out.
static void test_gemm_patches(Rng *rng) {
    section("the bf16 GEMM on image patches (a 3x3 convolution, odd K = 27)");
    ConvShape g = conv_shape(2, 9, 7, 3, 3, 3, 1, 10);
    int M = conv_rows(&g), K = conv_patch_size(&g), N = g.out_channels;
    size_t image_size = (size_t)g.batch * g.height * g.width * g.channels;
    float *image = malloc(image_size * sizeof(float)), *B = malloc((size_t)K * N * sizeof(float));
    float *patches = malloc((size_t)M * K * sizeof(float)), *want = malloc((size_t)M * N * sizeof(float));
    float *got = malloc((size_t)M * N * sizeof(float));
    fill_awkward(image, image_size, rng, 1.0f), fill_awkward(B, (size_t)K * N, rng, 1.0f);
    Operand P = patches_operand(image, &g, 0);
    pack_block(patches, K, &P, 0, M, 0, K);  // the patch matrix, written out
    reference_gemm(M, N, K, patches, K, B, N, want, NULL, 0);
    static const char *const NAMES[] = {"portable", "avx2", "avx512", "avx512bf16"};
    for (int kn = 0; kn < 4; kn++) {
        const Bf16Kernel *kernel = bf16_kernel_by_name(NAMES[kn]);
        if (!bf16_kernel_supported(kernel)) continue;
        GemmContext *ctx = gemm_context_new_bf16(kernel, 2);
        gemm(ctx, M, N, K, P, matrix_operand(B, N), got, N, 0);
        if (!CHECK(same_floats(got, want, (size_t)M * N))) printf("     %s\n", NAMES[kn]);
        gemm_context_free(ctx);
    }
    free(image), free(B), free(patches), free(want), free(got);
}

// Each distinct SIMD packing (avx2 uses the portable one, avx512bf16
// avx512's) against the portable one, on every kind of float (random bit
// patterns), at every length up to 40, odd ones included, and panels of
// each kernel's NR.
static void test_packings(Rng *rng) {
    section("the SIMD packings round as bf16_round does, bit for bit");
    enum { FLOATS = 2 * 40 * 32 };
    static float in[FLOATS];
    static uint32_t want[FLOATS], got[FLOATS];
    static const char *const NAMES[] = {"avx2", "avx512", "avx512bf16"};
    const Bf16Packing *tested[3];
    int count = 0;
    for (int kn = 0; kn < 3; kn++) {
        const Bf16Kernel *kernel = bf16_kernel_by_name(NAMES[kn]);
        if (!bf16_kernel_supported(kernel) || kernel->packing == &PORTABLE_PACKING) continue;
        int seen = 0;
        for (int t = 0; t < count; t++) seen |= tested[t] == kernel->packing;
        if (seen) continue;
        tested[count++] = kernel->packing;
        int ok = 1;
        for (int round = 0; round < 200; round++) {
            for (int i = 0; i < FLOATS; i++) {
                uint32_t u = (uint32_t)(rng_uniform(rng) * 65536.0f) << 16 | (uint32_t)(rng_uniform(rng) * 65536.0f);
                if (rng_uniform(rng) < 0.3f) u = (u & 0x807FFFFFu) | interesting_exponent(rng) << 23;
                in[i] = bits_float(u);
            }
            int kc = 1 + round % 40, nr = (int[]){4, 16, 32}[round % 3];
            memset(want, 0, sizeof want), memset(got, 0, sizeof got);
            pair_along_portable(want, in, kc), kernel->packing->along(got, in, kc);
            ok &= memcmp(want, got, sizeof want) == 0;
            pair_columns_portable(want, in, kc), kernel->packing->columns(got, in, kc);
            ok &= memcmp(want, got, sizeof want) == 0;
            pair_panel_portable(want, in, kc, nr), kernel->packing->panel(got, in, kc, nr);
            ok &= memcmp(want, got, sizeof want) == 0;
        }
        if (!CHECK(ok)) printf("     %s's packing\n", NAMES[kn]);
    }
    if (count == 0) printf("  skip: this CPU runs no SIMD bf16 packing (only the portable one)\n");
}

static void test_kernel_names(void) {
    section("the bf16 kernels: names, and the best one this CPU runs");
    CHECK(bf16_kernel_supported(bf16_kernel_by_name("portable")));
    CHECK(bf16_kernel_by_name("naive") == NULL);
    CHECK(bf16_kernel_supported(bf16_best_kernel()));
#if HAVE_X86_KERNELS
    CHECK(strcmp(bf16_best_kernel()->name, cpu_has_avx512bf16() ? "avx512bf16" : cpu_has_avx512f() ? "avx512"
                                                            : cpu_has_avx2_fma() ? "avx2" : "portable") == 0);
#endif
}

/* ---- Training ------------------------------------------------------------------ */

static uint32_t bf16_steps(const char *name, const Dataset *d, GemmContext *ctx, float *loss) {
    enum { BATCH = 4 };
    GraphClassifier c = build_model(name, BATCH, 5, KERNEL_BLOCKED, ctx);
    Model m = graph_model(&c, name);
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, m.count);
    float probs[BATCH * NUM_CLASSES];
    *loss = 0;
    for (long step = 0; step < 2; step++) {
        Batch batch = {.images = d->images + step * BATCH * IMAGE_SIZE, .targets = d->targets + step * BATCH * NUM_CLASSES,
                       .count = BATCH, .step = step};
        memset(m.grads, 0, m.count * sizeof(float));
        *loss += m.compute_gradients(m.net, &batch, probs);
        optimizer_update(&opt, m.params, m.grads, m.count);
    }
    uint32_t crc = crc32_update(0, (const unsigned char *)m.params, m.count * sizeof(float));
    crc = crc32_update(crc, (const unsigned char *)m.state, m.state_count * sizeof(float));
    optimizer_free(&opt);
    graph_free(c.graph);
    return crc;
}

static void test_training_steps(Rng *rng) {
    section("two training steps in bf16: the same bits on every kernel and thread count; not fp32's bits");
    static float images[8 * IMAGE_SIZE], targets[8 * NUM_CLASSES];
    for (int i = 0; i < 8 * IMAGE_SIZE; i++) images[i] = rng_uniform(rng);
    for (int i = 0; i < 8; i++) targets[i * NUM_CLASSES + i % 10] = 1;
    Dataset d = {.images = images, .targets = targets, .count = 8};
    static const char *const MODELS[] = {"basic", "deeper"};
    static const char *const NAMES[] = {"portable", "avx2", "avx512", "avx512bf16"};
    for (int mi = 0; mi < 2; mi++) {
        // The portable kernel (fmaf a library call) is the reference for the
        // basic CNN; the deeper CNN's 38 M multiply-adds an image take the
        // first emulating SIMD kernel there is.
        uint32_t reference = 0;
        const char *reference_name = NULL;
        float reference_loss = 0, loss;
        int same = 1, cells = 0;
        for (int kn = mi == 0 ? 0 : 1; kn < 4; kn++) {
            const Bf16Kernel *kernel = bf16_kernel_by_name(NAMES[kn]);
            if (!bf16_kernel_supported(kernel)) continue;
            for (int threads = 1; threads <= 3; threads++) {
                if (kn == 0 && threads > 1 && BF16_KERNEL_COUNT > 1) continue;  // slow; once is enough where others check
                uint32_t crc = bf16_steps(MODELS[mi], &d, gemm_context_new_bf16(kernel, threads), &loss);
                if (!reference_name) reference = crc, reference_name = NAMES[kn], reference_loss = loss;
                else if (crc != reference) same = 0, printf("     %s: %s at %d threads differs\n", MODELS[mi], NAMES[kn], threads);
                cells++;
            }
        }
        if (!reference_name) {
            skip("no bf16 kernel for the deeper CNN on this CPU but the portable one");
            continue;
        }
        CHECK(same && cells >= 2);
        float fp32_loss;
        uint32_t fp32 = bf16_steps(MODELS[mi], &d, gemm_context_new(gemm_best_kernel(), 2), &fp32_loss);
        CHECK(fp32 != reference);
        CHECK_NEAR(reference_loss, fp32_loss, 0.02 * fp32_loss);
        printf("   %s: weights=%08x after two bf16 steps (%d cells), %08x in fp32; loss %.6f against %.6f\n", MODELS[mi],
               (unsigned)reference, cells, (unsigned)fp32, reference_loss, fp32_loss);
    }
}

int main(void) {
    Rng rng = rng_new(16, 0);
    test_rounding_table();
    test_instruction_cases();
    test_instruction_random(&rng);
    test_kernel_names();
    test_packings(&rng);
    test_gemm_against_definition(&rng);
    test_gemm_patches(&rng);
    test_training_steps(&rng);
    return check_summary();
}
