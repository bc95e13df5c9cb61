//@ from 8
/* ----------------------------------------------------------------------------
   Mixed precision: the blocked GEMM in bfloat16 (book.md, chapter 8, part 2).

   What this is: bfloat16 ("bf16"), the top 16 bits of a float: its sign, its
   8 exponent bits and 7 of its 23 fraction bits. A float rounded to bf16
   keeps fp32's range and loses 16 bits of precision. Here the blocked GEMM
   rounds A and B to bf16 as it packs them, multiplies the bf16 values (a
   product of two 8-bit significands is exact in fp32) and adds the
   products in fp32, in pairs along k, exactly as x86's VDPBF16PS does.
   Four micro-kernels give the same bits: the instruction itself
   (AVX512_BF16), and an emulation of it in portable C, in AVX2 and in
   AVX-512F for every machine without it.
   What it is not: bf16 everywhere. Only the GEMM's operands are rounded.
   Its results, and so every activation and gradient, the weights' master
   copy, Adam's moments, batch norm, the loss and the softmax stay fp32;
   the depthwise convolution, which is not a GEMM, stays fp32 too.

   The definition every kernel keeps (the tests hold them to it, bit for
   bit). With a = bf16(A), b = bf16(B), element C(i, j) is the chain
       t = daz(start(i, j))
       for p = 0, 1, ..., ceil(K / 2) - 1:
           t = ftz(fma(a(i, 2p+1), b(2p+1, j), t))    the odd element first
           t = ftz(fma(a(i, 2p),   b(2p,   j), t))
   where start is as in the fp32 GEMM (C's old value, the bias, or 0), an
   element past K is 0, daz turns a denormal into a zero of its sign, and
   ftz does the same to a result that is tiny after rounding: one whose
   rounded value, with the exponent unbounded, is below 2^-126. That is
   Intel's pseudo-code for VDPBF16PS, with the denormal rule it states in
   words, and what the instruction does on the machine the book measures
   (tests/test_bf16.c checks it on a million lanes). The pairs are (0,
   1), (2, 3), ... of the whole sum, whatever the blocking: blocks of k are
   cut at even k. */

typedef uint16_t bf16;

/* ----------------------------------------------------------------------------
   The format. */

uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

float bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

// A bf16 widened to a float: its 16 bits on top, zeros below. Exact.
float bf16_to_float(bf16 h) { return bits_float((uint32_t)h << 16); }

/* A float rounded to the nearest bf16, ties to even, as VCVTNEPS2BF16 does:
   - the 16 bits that go are compared with half the last bit kept: above,
     round up; below, down; exactly half, up only if the kept bit is 1
     (odd), so that the result is even. Adding 0x7FFF + (kept bit) to the
     bits and cutting does all three: the carry into bit 16 happens exactly
     when the discarded part is above half, or half with an odd bit kept.
     A carry out of the fraction bumps the exponent, which is right (the
     next binade's first number), and past the largest finite value it
     gives infinity, which is right too: 0x7F7FFFFF is nearer 2^128 than
     the largest bf16, so it overflows;
   - a NaN stays a NaN: its top bits, with the quiet bit (bit 6 of the bf16)
     set, because cutting the bits of a NaN whose payload lies only in the
     low 16 would give infinity;
   - a denormal becomes a zero of its sign: the dot-product instruction
     would read a denormal bf16 as zero anyway (and the converter does so). */
bf16 bf16_round(float x) {
    uint32_t u = float_bits(x);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu))  // NaN
        return (bf16)((u >> 16) | 0x0040u);
    if ((u & 0x7F800000u) == 0) return (bf16)((u >> 16) & 0x8000u);  // zero or denormal
    return (bf16)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

/* Stochastic rounding (exercise 8.stochastic-round): x rounded up to the
   next bf16 away from zero with probability equal to how far it lies
   between its two neighbours, down otherwise, so that the rounding's
   expected value is x itself: many tiny updates, each smaller than half a
   bf16 step, then add up on average instead of all vanishing. `noise` is
   16 random bits, uniform on 0..65535. As bf16_round: NaN stays a quiet
   NaN, a denormal becomes a zero of its sign, a bf16 is kept as it is. */
bf16 bf16_round_stochastic(float x, uint32_t noise) {
    //@ exercise 8 stochastic-round: round x up with probability (its distance from the bf16 below) / (the gap), using the 16 random bits `noise`.
    uint32_t u = float_bits(x);
    if ((u & 0x7F800000u) == 0x7F800000u) return bf16_round(x);  // infinity or NaN
    if ((u & 0x7F800000u) == 0) return (bf16)((u >> 16) & 0x8000u);
    return (bf16)((u + (noise & 0xFFFFu)) >> 16);
    //@ stub
    (void)noise;
    return bf16_round(x);
    //@ end
}

/* ----------------------------------------------------------------------------
   One step of the dot product, in portable C.

   fma(a, b, t) rounds a*b + t once. To flush a tiny result we must know
   whether it is tiny after rounding with the exponent unbounded (24 bits
   kept whatever the exponent), not after IEEE's rounding to the denormal
   grid that fmaf does. The two differ only where fmaf returns exactly
   +-2^-126: then the exact sum lies within 2^-150 of it, and it is tiny
   if it is below 2^-126 - 2^-151, the midpoint between 2^-126 and the
   float below it in the unbounded format (the midpoint itself rounds to
   2^-126, the even one). a*b + t in double says which: a*b is exact in
   double (two 24-bit significands), and so is the sum whenever it is that
   close to 2^-126 (every t is a multiple of 2^-149 there, and a product
   too small to be one cannot move the sum across the midpoint). */
float ftz(float x) { return fabsf(x) < FLT_MIN ? copysignf(0.0f, x) : x; }

float bf16_step(float a, float b, float t) {
    float r = fmaf(a, b, t);
    if (fabsf(r) == FLT_MIN && fabs((double)a * b + t) < 0x1.ffffffp-127) return copysignf(0.0f, r);
    return ftz(r);
}

/* The instruction's NaNs, for tests of the instruction itself: a NaN
   operand is returned quieted, the first of a, b, t; a NaN made from
   numbers (infinity times zero, infinity minus infinity) is x86's "default
   NaN", 0xFFC00000. The GEMM's kernels are held to NaN for NaN, not to
   payloads: the emulating kernels let the FMA instruction choose. */
float bf16_step_nan(float a, float b, float t) {
    if (isnan(a) || isnan(b) || isnan(t)) return bits_float(float_bits(isnan(a) ? a : isnan(b) ? b : t) | 0x00400000u);
    float r = bf16_step(a, b, t);
    return isnan(r) ? bits_float(0xFFC00000u) : r;
}

// One 32-bit lane of VDPBF16PS: t plus two products, a pair of bf16 in
// each of a_pair and b_pair (element 2p in the low half, 2p+1 in the high).
float bf16_dot2(float t, uint32_t a_pair, uint32_t b_pair) {
    float a0 = ftz(bf16_to_float((bf16)a_pair)), a1 = ftz(bf16_to_float((bf16)(a_pair >> 16)));
    float b0 = ftz(bf16_to_float((bf16)b_pair)), b1 = ftz(bf16_to_float((bf16)(b_pair >> 16)));
    t = bf16_step_nan(a1, b1, ftz(t));
    return bf16_step_nan(a0, b0, t);
}

/* ----------------------------------------------------------------------------
   Micro-kernels. The contract is the fp32 kernels' (gemm.c), with pairs:

   kernel(kp, a, rs_a, cs_a, b, c, ldc, start, ld_start) computes the
   (MR, NR) tile from kp pairs of k. Pair p of row i of the strip is
   a[i*rs_a + p*cs_a], a 32-bit word: a(i, 2p) in its low half, a(i, 2p+1)
   in its high half. The strip is in whichever order the fp32 packing left
   it: by rows (rs_a = kp, cs_a = 1) or by columns (rs_a = 1, cs_a = MR).
   Pair p of column j of the panel is b[p*NR + j]. Both were rounded and
   flushed when packed, so a kernel never meets a denormal bf16. */

typedef void Bf16MicroKernel(int kp, const uint32_t *a, long rs_a, long cs_a,  // (MR, kp) pairs
                             const uint32_t *b,                                // (kp, NR) pairs
                             float *c, long ldc,                               // (MR, NR) tile of C
                             const float *start, long ld_start);

/* Rounding a packed block into pairs, three ways (below): a row of a
   strip packed by rows, whose pairs are neighbours; a strip packed by
   columns, whose pairs are rows 2p and 2p+1 of MR floats; a panel, whose
   pairs are rows 2p and 2p+1 of NR floats. */
typedef struct {
    void (*along)(uint32_t *pairs, const float *row, int kc);           // pairs[p] = (row[2p], row[2p+1])
    void (*columns)(uint32_t *pairs, const float *strip, int kc);       // (kc, MR) floats -> (kp, MR) pairs
    void (*panel)(uint32_t *pairs, const float *panel, int kc, int nr); // (kc, nr) floats -> (kp, nr) pairs
} Bf16Packing;

struct Bf16Kernel {
    const char *name;        // "portable", "avx2", "avx512" (emulations), "avx512bf16" (the instruction)
    Bf16MicroKernel *kernel;
    const char *fp32;        // the fp32 kernel whose NR, packing and buffers this one uses
    int (*supported)(void);
    const Bf16Packing *packing;
};

/* The portable kernel, 6x4: the definition, step by step. Slow on x86
   built without -mfma (fmaf is a library call there), which is why x86 has
   kernels of its own; it is the reference they are tested against. */
void bf16_kernel_portable(int kp, const uint32_t *a, long rs_a, long cs_a, const uint32_t *b, float *c, long ldc,
                          const float *start, long ld_start) {
    float acc[MR][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = ftz(start[i * ld_start + j]);
    for (int p = 0; p < kp; p++, a += cs_a, b += 4)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < 4; j++) {
                uint32_t ai = a[i * rs_a];
                acc[i][j] = bf16_step(bf16_to_float((bf16)(ai >> 16)), bf16_to_float((bf16)(b[j] >> 16)), acc[i][j]);
                acc[i][j] = bf16_step(bf16_to_float((bf16)ai), bf16_to_float((bf16)b[j]), acc[i][j]);
            }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 4; j++) c[i * ldc + j] = acc[i][j];
}

#if HAVE_X86_KERNELS
int cpu_has_avx512bf16(void) { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16"); }

/* The emulations on x86 flush as the instruction does by setting two bits
   of MXCSR, the SSE control register, for the length of the call: DAZ
   (0x0040) reads denormal inputs as zero, FTZ (0x8000) flushes a result
   that is tiny after rounding with the exponent unbounded, exactly the
   rule above. Then each step is one FMA. A bf16 widens to a float by a
   shift: the high half of a pair is the pair with its low 16 bits cleared,
   the low half is the pair shifted left by 16. */
enum { MXCSR_DAZ_FTZ = 0x8040 };

/* AVX2, 6x16: 12 accumulators (ymm, 8 floats) as in the fp32 kernel. Per
   pair: the odd halves of B's 16 pairs in two registers, then each row's
   odd A broadcast and two FMAs; then the same with the even halves. 12 + 2
   + 1 registers of 16, so nothing spills. */
__attribute__((target("avx2,fma")))
void bf16_kernel_avx2(int kp, const uint32_t *a, long rs_a, long cs_a, const uint32_t *b, float *c, long ldc,
                      const float *start, long ld_start) {
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | MXCSR_DAZ_FTZ);
    __m256 acc[MR][2];
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < 2; h++)
            acc[i][h] = _mm256_loadu_ps(start + i * ld_start + 8 * h);
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int p = 0; p < kp; p++, a += cs_a, b += 16) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)b), b1 = _mm256_loadu_si256((const __m256i *)(b + 8));
        __m256 odd0 = _mm256_castsi256_ps(_mm256_and_si256(b0, high)), odd1 = _mm256_castsi256_ps(_mm256_and_si256(b1, high));
        for (int i = 0; i < MR; i++) {  // unrolled: MR is a constant
            __m256 ai = _mm256_set1_ps(bits_float(a[i * rs_a] & 0xFFFF0000u));
            acc[i][0] = _mm256_fmadd_ps(ai, odd0, acc[i][0]), acc[i][1] = _mm256_fmadd_ps(ai, odd1, acc[i][1]);
        }
        __m256 even0 = _mm256_castsi256_ps(_mm256_slli_epi32(b0, 16)), even1 = _mm256_castsi256_ps(_mm256_slli_epi32(b1, 16));
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_set1_ps(bits_float(a[i * rs_a] << 16));
            acc[i][0] = _mm256_fmadd_ps(ai, even0, acc[i][0]), acc[i][1] = _mm256_fmadd_ps(ai, even1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(c + i * ldc + 8 * h, acc[i][h]);
    _mm_setcsr(csr);
}

// AVX-512F, 6x32: the AVX2 emulation with zmm registers (16 floats).
__attribute__((target("avx512f")))
void bf16_kernel_avx512(int kp, const uint32_t *a, long rs_a, long cs_a, const uint32_t *b, float *c, long ldc,
                        const float *start, long ld_start) {
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | MXCSR_DAZ_FTZ);
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < 2; h++)
            acc[i][h] = _mm512_loadu_ps(start + i * ld_start + 16 * h);
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    for (int p = 0; p < kp; p++, a += cs_a, b += 32) {
        __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 16);
        __m512 odd0 = _mm512_castsi512_ps(_mm512_and_si512(b0, high)), odd1 = _mm512_castsi512_ps(_mm512_and_si512(b1, high));
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(bits_float(a[i * rs_a] & 0xFFFF0000u));
            acc[i][0] = _mm512_fmadd_ps(ai, odd0, acc[i][0]), acc[i][1] = _mm512_fmadd_ps(ai, odd1, acc[i][1]);
        }
        __m512 even0 = _mm512_castsi512_ps(_mm512_slli_epi32(b0, 16)), even1 = _mm512_castsi512_ps(_mm512_slli_epi32(b1, 16));
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(bits_float(a[i * rs_a] << 16));
            acc[i][0] = _mm512_fmadd_ps(ai, even0, acc[i][0]), acc[i][1] = _mm512_fmadd_ps(ai, even1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < 2; h++) _mm512_storeu_ps(c + i * ldc + 16 * h, acc[i][h]);
    _mm_setcsr(csr);
}

/* AVX512_BF16, 6x32: the instruction. Registers as in the fp32 AVX-512
   kernel: 12 accumulators, two loads of B (16 pairs each) a pair of k,
   one broadcast pair of A a row. Each VDPBF16PS does 16 lanes x 2
   multiply-adds, so per pair of k 12 of them do the work of 24 fp32 FMAs:
   twice fp32's rate where the unit issues them as fast. It ignores MXCSR
   (its flushing is its own). */
__attribute__((target("avx512f,avx512bf16")))
void bf16_kernel_avx512bf16(int kp, const uint32_t *a, long rs_a, long cs_a, const uint32_t *b, float *c,
                            long ldc, const float *start, long ld_start) {
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    c00 = _mm512_loadu_ps(start + 0 * ld_start), c01 = _mm512_loadu_ps(start + 0 * ld_start + 16);
    c10 = _mm512_loadu_ps(start + 1 * ld_start), c11 = _mm512_loadu_ps(start + 1 * ld_start + 16);
    c20 = _mm512_loadu_ps(start + 2 * ld_start), c21 = _mm512_loadu_ps(start + 2 * ld_start + 16);
    c30 = _mm512_loadu_ps(start + 3 * ld_start), c31 = _mm512_loadu_ps(start + 3 * ld_start + 16);
    c40 = _mm512_loadu_ps(start + 4 * ld_start), c41 = _mm512_loadu_ps(start + 4 * ld_start + 16);
    c50 = _mm512_loadu_ps(start + 5 * ld_start), c51 = _mm512_loadu_ps(start + 5 * ld_start + 16);
    for (int p = 0; p < kp; p++, a += cs_a, b += 32) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16), ai;
        ai = (__m512bh)_mm512_set1_epi32((int)a[0]), c00 = _mm512_dpbf16_ps(c00, ai, b0), c01 = _mm512_dpbf16_ps(c01, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[rs_a]), c10 = _mm512_dpbf16_ps(c10, ai, b0), c11 = _mm512_dpbf16_ps(c11, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[2 * rs_a]), c20 = _mm512_dpbf16_ps(c20, ai, b0), c21 = _mm512_dpbf16_ps(c21, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[3 * rs_a]), c30 = _mm512_dpbf16_ps(c30, ai, b0), c31 = _mm512_dpbf16_ps(c31, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[4 * rs_a]), c40 = _mm512_dpbf16_ps(c40, ai, b0), c41 = _mm512_dpbf16_ps(c41, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[5 * rs_a]), c50 = _mm512_dpbf16_ps(c50, ai, b0), c51 = _mm512_dpbf16_ps(c51, ai, b1);
    }
    _mm512_storeu_ps(c + 0 * ldc, c00), _mm512_storeu_ps(c + 0 * ldc + 16, c01);
    _mm512_storeu_ps(c + 1 * ldc, c10), _mm512_storeu_ps(c + 1 * ldc + 16, c11);
    _mm512_storeu_ps(c + 2 * ldc, c20), _mm512_storeu_ps(c + 2 * ldc + 16, c21);
    _mm512_storeu_ps(c + 3 * ldc, c30), _mm512_storeu_ps(c + 3 * ldc + 16, c31);
    _mm512_storeu_ps(c + 4 * ldc, c40), _mm512_storeu_ps(c + 4 * ldc + 16, c41);
    _mm512_storeu_ps(c + 5 * ldc, c50), _mm512_storeu_ps(c + 5 * ldc + 16, c51);
}
#endif

/* ----------------------------------------------------------------------------
   Packing: the fp32 packing (gemm.c) into a float block, then each pair of
   k rounded into one 32-bit word. Rounding happens here, once per element
   of a block, not once per use in the kernel. A pair past kc (kc odd) is
   (value, 0). */

void pair_along_portable(uint32_t *pairs, const float *row, int kc) {
    for (int k = 0; k < kc; k += 2)
        *pairs++ = (uint32_t)bf16_round(row[k]) | (k + 1 < kc ? (uint32_t)bf16_round(row[k + 1]) << 16 : 0);
}

void pair_panel_portable(uint32_t *pairs, const float *panel, int kc, int nr) {
    for (int k = 0; k < kc; k += 2, panel += 2 * nr)
        for (int j = 0; j < nr; j++)
            *pairs++ = (uint32_t)bf16_round(panel[j]) | (k + 1 < kc ? (uint32_t)bf16_round(panel[nr + j]) << 16 : 0);
}

void pair_columns_portable(uint32_t *pairs, const float *strip, int kc) { pair_panel_portable(pairs, strip, kc, MR); }

static const Bf16Packing PORTABLE_PACKING = {pair_along_portable, pair_columns_portable, pair_panel_portable};

#if HAVE_X86_KERNELS
/* bf16_round on 16 floats at once, each result in the low half of its
   32-bit lane: the same integer steps, the NaN and denormal cases chosen
   by masks instead of branches. */
__attribute__((target("avx512f")))
static inline __m512i round_avx512(__m512i u) {
    const __m512i exponent = _mm512_set1_epi32(0x7F800000), one = _mm512_set1_epi32(1);
    __m512i top = _mm512_srli_epi32(u, 16);
    __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), _mm512_and_si512(top, one));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), exponent);
    __mmask16 tiny = _mm512_cmpeq_epi32_mask(_mm512_and_si512(u, exponent), _mm512_setzero_si512());
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(top, _mm512_set1_epi32(0x0040)));
    return _mm512_mask_mov_epi32(r, tiny, _mm512_and_si512(top, _mm512_set1_epi32(0x8000)));
}

// 8 pairs from 16 neighbours: the two halves of each 64-bit lane joined,
// then the low 32 bits of each 64-bit lane kept (VPMOVQD).
__attribute__((target("avx512f")))
void pair_along_avx512(uint32_t *pairs, const float *row, int kc) {
    int k = 0;
    for (; k + 16 <= kc; k += 16, pairs += 8) {
        __m512i r = round_avx512(_mm512_loadu_si512(row + k));
        _mm256_storeu_si256((__m256i *)pairs, _mm512_cvtepi64_epi32(_mm512_or_si512(r, _mm512_srli_epi64(r, 16))));
    }
    _mm256_zeroupper();  // as rng_uniform_fill_avx512 does before its last call (batchnorm.c)
    pair_along_portable(pairs, row + k, kc - k);
}

// Rows 2p and 2p+1, 16 columns at a time; the last columns under a mask.
__attribute__((target("avx512f")))
void pair_panel_avx512(uint32_t *pairs, const float *panel, int kc, int nr) {
    for (int k = 0; k < kc; k += 2, panel += 2 * nr, pairs += nr)
        for (int j = 0; j < nr; j += 16) {
            __mmask16 m = (__mmask16)(nr - j >= 16 ? 0xFFFF : (1u << (nr - j)) - 1);
            __m512i lo = round_avx512(_mm512_maskz_loadu_epi32(m, panel + j));
            __m512i hi = k + 1 < kc ? round_avx512(_mm512_maskz_loadu_epi32(m, panel + nr + j)) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(pairs + j, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
}

// A strip by columns: rows 2p and 2p+1 of MR floats are 2 MR neighbours;
// one load, and a permutation brings row 2p+1 under row 2p.
__attribute__((target("avx512f")))
void pair_columns_avx512(uint32_t *pairs, const float *strip, int kc) {
    __m512i up = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                  _mm512_set1_epi32(MR));  // lane i takes lane i + MR
    const __mmask16 row = (1u << MR) - 1, two_rows = (1u << 2 * MR) - 1;
    for (int k = 0; k < kc; k += 2, strip += 2 * MR, pairs += MR) {
        __m512i r = round_avx512(_mm512_maskz_loadu_epi32(k + 1 < kc ? two_rows : row, strip));
        __m512i hi = _mm512_permutexvar_epi32(up, r);
        _mm512_mask_storeu_epi32(pairs, row, _mm512_or_si512(r, _mm512_slli_epi32(hi, 16)));
    }
}

static const Bf16Packing AVX512_PACKING = {pair_along_avx512, pair_columns_avx512, pair_panel_avx512};
#endif

// Every bf16 kernel this build has, the portable one first and the fastest last.
static const Bf16Kernel BF16_KERNELS[] = {
    {"portable", bf16_kernel_portable, "portable", always_supported, &PORTABLE_PACKING},
#if HAVE_X86_KERNELS
    {"avx2", bf16_kernel_avx2, "avx2", cpu_has_avx2_fma, &PORTABLE_PACKING},
    {"avx512", bf16_kernel_avx512, "avx512", cpu_has_avx512f, &AVX512_PACKING},
    {"avx512bf16", bf16_kernel_avx512bf16, "avx512", cpu_has_avx512bf16, &AVX512_PACKING},
#endif
};
enum { BF16_KERNEL_COUNT = sizeof BF16_KERNELS / sizeof BF16_KERNELS[0] };

const Bf16Kernel *bf16_kernel_by_name(const char *name) {  // NULL: this build has none by that name
    for (int i = 0; i < BF16_KERNEL_COUNT; i++)
        if (strcmp(BF16_KERNELS[i].name, name) == 0) return &BF16_KERNELS[i];
    return NULL;
}

int bf16_kernel_supported(const Bf16Kernel *kernel) { return kernel && kernel->supported(); }

// The fastest bf16 kernel this CPU runs: the instruction where it has it.
const Bf16Kernel *bf16_best_kernel(void) {
    for (int i = BF16_KERNEL_COUNT - 1; i > 0; i--)
        if (BF16_KERNELS[i].supported()) return &BF16_KERNELS[i];
    return &BF16_KERNELS[0];
}

/* ----------------------------------------------------------------------------
   The context and the driver: gemm.c's, with pairs. */

typedef struct {
    uint32_t *a;  // (threads, a_words): each worker's block of A as pairs
    uint32_t *b;  // the block of B as pairs, shared
    size_t a_words;
} Bf16Buffers;

/* A bf16 context: an fp32 context of the same NR, for its threads and
   float packing buffers, with kc made even (pairs never straddle two
   blocks), and pair buffers beside them. */
GemmContext *gemm_context_new_bf16_blocked(const Bf16Kernel *kernel, int threads, Blocking b) {
    require(bf16_kernel_supported(kernel), "gemm_context_new_bf16: kernel %s does not run on this CPU",
            kernel ? kernel->name : "NULL");
    b.kc = (int)round_up(b.kc, 2);
    GemmContext *ctx = gemm_context_new_blocked(gemm_kernel_by_name(kernel->fp32), threads, b);
    Bf16Buffers *buffers = xmalloc(sizeof *buffers);
    enum { LINE_WORDS = 64 / sizeof(uint32_t) };
    buffers->a_words = (size_t)round_up((long)b.mc * b.kc / 2, LINE_WORDS);
    buffers->a = xmalloc((size_t)ctx->workers->threads * buffers->a_words * sizeof(uint32_t));
    buffers->b = xmalloc((size_t)b.nc * b.kc / 2 * sizeof(uint32_t));
    ctx->bf16 = kernel;
    ctx->bf16_buffers = buffers;
    return ctx;
}

GemmContext *gemm_context_new_bf16(const Bf16Kernel *kernel, int threads) {
    return gemm_context_new_bf16_blocked(kernel, threads, DEFAULT_BLOCKING);
}

void bf16_buffers_free(void *buffers) {
    Bf16Buffers *b = buffers;
    if (!b) return;
    free(b->a);
    free(b->b);
    free(b);
}

// Loop 4's packing, one panel of B a task: floats, then pairs.
void pack_b_task_bf16(void *context, int panel, int worker) {
    (void)worker;
    const GemmJob *job = context;
    int nr = job->ctx->kernel->nr, col = panel * nr, kc = job->kc;
    int cols = job->nc - col < nr ? job->nc - col : nr;
    float *floats = job->ctx->packed_b + (size_t)panel * kc * nr;  // (kc, nr)
    pack_b(floats, job->B, job->pc, kc, job->jc + col, cols, nr);
    const Bf16Buffers *buffers = job->ctx->bf16_buffers;
    job->ctx->bf16->packing->panel(buffers->b + (size_t)panel * ((kc + 1) / 2) * nr, floats, kc, nr);
}

// Loops 3, 2 and 1, as gemm_tile, on pairs.
void gemm_tile_bf16(void *context, int task, int worker) {
    const GemmJob *job = context;
    const Bf16Kernel *kernel = job->ctx->bf16;
    const Bf16Buffers *buffers = job->ctx->bf16_buffers;
    int nr = job->ctx->kernel->nr, kc = job->kc, kp = (kc + 1) / 2;
    int ic = task * job->tile_m, rows = job->M - ic < job->tile_m ? job->M - ic : job->tile_m, cols = job->nc;
    float *packed_a = job->ctx->packed_a + (size_t)worker * job->ctx->a_floats;  // (rows / MR, MR, kc)
    pack_a(packed_a, job->A, ic, rows, job->pc, kc);
    int by_rows = pack_a_by_rows(job->A);
    long rs_a = by_rows ? kp : 1, cs_a = by_rows ? 1 : MR;  // in pairs
    uint32_t *pairs_a = buffers->a + (size_t)worker * buffers->a_words;  // (rows / MR) strips of MR * kp pairs
    for (int s = 0; s < rows; s += MR) {
        const float *strip = packed_a + (size_t)s * kc;  // (MR, kc) by rows, (kc, MR) by columns
        uint32_t *pairs = pairs_a + (size_t)s * kp;
        if (!by_rows) kernel->packing->columns(pairs, strip, kc);
        else for (int i = 0; i < MR; i++) kernel->packing->along(pairs + (size_t)i * kp, strip + (size_t)i * kc, kc);
    }
    int first = job->pc == 0, from_c = !first || job->accumulate;
    const float *bias = first ? job->bias : NULL;  // (N)
    for (int jr = 0; jr < cols; jr += nr) {
        int w = cols - jr < nr ? cols - jr : nr;
        const uint32_t *b = buffers->b + (size_t)jr * kp;  // (kp, nr) panel
        for (int ir = 0; ir < rows; ir += MR) {
            const uint32_t *a = pairs_a + (size_t)ir * kp;  // a strip, MR * kp pairs
            float *c = job->C + (size_t)(ic + ir) * job->ldc + job->jc + jr;
            int h = rows - ir < MR ? rows - ir : MR;
            if (h == MR && w == nr) {
                const float *start = bias ? bias + job->jc + jr : from_c ? c : GEMM_ZEROS;
                kernel->kernel(kp, a, rs_a, cs_a, b, c, job->ldc, start, start == c ? job->ldc : 0);
                continue;
            }
            float scratch[MR * GEMM_MAX_NR] = {0};  // (MR, nr)
            for (int y = 0; y < h && (bias || from_c); y++)
                memcpy(scratch + y * nr, bias ? bias + job->jc + jr : c + y * job->ldc, (size_t)w * sizeof(float));
            kernel->kernel(kp, a, rs_a, cs_a, b, scratch, nr, scratch, nr);
            for (int y = 0; y < h; y++) memcpy(c + y * job->ldc, scratch + y * nr, (size_t)w * sizeof(float));
        }
    }
}

//@ end
