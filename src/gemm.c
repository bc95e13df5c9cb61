//@ from 4
/* ----------------------------------------------------------------------------
   One fast matrix multiply for every convolution and dense pass.

   What this is: C = (accumulate ? C : 0) + A @ B in single precision, built
   the way Goto and van de Geijn built GEMM (and BLIS and OpenBLAS after
   them): a driver in portable C cuts the problem into blocks that fit the
   caches and copies ("packs") each block of A and B into the order the
   innermost loop reads; a micro-kernel, one per instruction set, multiplies
   a packed strip of A by a packed panel of B into a small MR x NR tile of C
   held in registers. The thread pool (threads.c) runs the tiles of C in
   parallel.
   An operand is either a strided matrix or the im2col "patch matrix" of an
   image, which is never built: the packing reads the patches straight from
   the image, so a convolution is one GEMM with no extra memory. (A
   one-channel image's patches, small enough, are built beforehand by
   conv_blocked.c and come here as a matrix.)
   What it is not: a BLAS. Single precision only, no alpha or beta, no
   transposed C; one blocking, derived from common cache sizes (see
   "Blocking"), not tuned for each machine; the micro-kernels are x86's
   AVX2 and AVX-512 plus a portable one in plain C, which every other
   machine uses.

   The rules the tests check (tests/test_gemm.c):
   - every kernel gives the same bits as the portable one, and any number
     of threads the same bits as one (why: "Determinism", below);
   - the answer matches a plain triple loop in double precision for any
     shape, strides, patches, padding and accumulate flag.

   Each C element is a chain of fused multiply-adds, c = fma(a, b, c), over
   k = 0, 1, ..., K-1 in order, starting from C's old value (accumulate),
   a layer's bias, the same row for every row of C (gemm_with_bias), or 0:
   one rounding per step, in one fixed order, whatever the kernel, the
   blocking or the number of threads. See "Determinism" below. */

/* ----------------------------------------------------------------------------
   Operands: how element (r, c) of A or B is found. */

typedef struct {
    const float *data;
    long row_stride, col_stride;   // MATRIX: element (r, c) = data[r*row_stride + c*col_stride]
    const ConvShape *patches;      // PATCHES when non-NULL: data is the image; element (r, c) of the
                                   // (B*OH*OW, KH*KW*C) im2col matrix, r = (b, oh, ow), c = (kh, kw, ci),
                                   // 0 outside the image (zero padding)
    int transposed;                // with patches: the operand is the transpose, (KH*KW*C, B*OH*OW)
} Operand;

// A row-major (rows, cols) matrix with rows `ld` floats apart, and its
// transpose: the same memory read with the strides swapped.
Operand matrix_operand(const float *data, long ld) { return (Operand){data, ld, 1, NULL, 0}; }
Operand transposed_operand(const float *data, long ld) { return (Operand){data, 1, ld, NULL, 0}; }

Operand patches_operand(const float *image,  // (B, H, W, C)
                        const ConvShape *g, int transposed) {
    return (Operand){image, 0, 0, g, transposed};
}

/* ----------------------------------------------------------------------------
   Micro-kernels: a (MR, NR) tile of C from a packed strip of A and panel of B.

   kernel(kc, a, rs_a, cs_a, b, ldb, c, ldc, c0, ld_c0) computes, for every
   i < MR and j < NR, with A(i, k) = a[i*rs_a + k*cs_a], B(k, j) = b[k*ldb + j],
       c[i*ldc + j] = fma(A(i, kc-1), B(kc-1, j), ... fma(A(i, 0), B(0, j), s) ...)
   where the start s is c0[i*ld_c0 + j], or 0 when c0 is NULL: C's old
   value (c0 = c, ld_c0 = ldc), or the bias, one row for every row of the
   tile (ld_c0 = 0), loaded straight into the registers. k runs upwards, one
   fused multiply-add (one rounding) per step. That is the whole contract, and
   every kernel keeps it exactly, which is why they agree to the bit. Only
   how many elements are computed at once differs.

   The strip of A may be stored by rows (rs_a = kc, cs_a = 1) or by columns
   (rs_a = 1, cs_a = MR): whichever lets the packing read memory in order
   (see pack_a); or it may be a matrix operand where it lies, if one of its
   strides is 1. The same goes for B: a packed panel (ldb = NR), or a
   row-major matrix where it lies (ldb its row stride). */

typedef void MicroKernel(int kc,
                         const float *a,  // (MR, kc) strip of A, element (i, k) at a[i*rs_a + k*cs_a]
                         long rs_a, long cs_a,
                         const float *b,  // (kc, NR) panel of B, rows ldb floats apart
                         long ldb,
                         float *c,        // (MR, NR) tile of C, rows ldc floats apart
                         long ldc,
                         const float *c0, // (MR, NR) where the sums start, rows ld_c0 apart; NULL: zeros
                         long ld_c0);
// c0 may be c itself, with ld_c0 = ldc: every kernel loads all of its start
// before it stores anything (so no restrict on c and c0).

// Runs `iterations` rounds of independent fused multiply-adds at full speed,
// to measure the machine's peak; returns a value so the work is not dropped.
typedef float PeakProbe(long iterations);

typedef struct {
    const char *name;        // "portable", "avx2", "avx512"
    int mr, nr;              // the tile of C one call computes
    MicroKernel *kernel;
    PeakProbe *probe;
    int probe_flops;         // floating-point operations per probe iteration
    int (*supported)(void);  // can this CPU run it?
} GemmKernel;

/* Every kernel computes MR = 6 rows of C at a time, and as many columns,
   NR, as its registers hold: 6 broadcasts of A and 2 loads of B feed 12
   FMAs per k, which keeps two FMA units busy (see the AVX2 kernel). One MR
   for all lets the packing of A be the same for every kernel. */
enum { MR = 6, GEMM_MAX_NR = 32 };

/* The portable kernel, 6x4: 24 scalar accumulators, c00..c53 (row, column).
   Per k it loads 6 values of A and 4 of B and does 24 fmaf. C's fmaf is
   exact (one rounding) on every machine; where the instruction set has it
   (arm64, whose 32 registers hold the 24 accumulators, the 4 values of B and
   one of A) it is one instruction, 2 to 4 per cycle; on x86 built without
   -mfma it is a call into the C library, slow but exact, which is why x86
   has kernels of its own. It is the reference the others are tested against. */
void gemm_kernel_portable(int kc, const float *a, long rs_a, long cs_a, const float *b, long ldb, float *c,
                          long ldc, const float *c0, long ld_c0) {
    float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
    float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;
    float c40 = 0, c41 = 0, c42 = 0, c43 = 0, c50 = 0, c51 = 0, c52 = 0, c53 = 0;
    float *r0 = c, *r1 = c + ldc, *r2 = c + 2 * ldc, *r3 = c + 3 * ldc, *r4 = c + 4 * ldc, *r5 = c + 5 * ldc;  // (4) each
    if (c0) {
        const float *s0 = c0, *s1 = c0 + ld_c0, *s2 = c0 + 2 * ld_c0, *s3 = c0 + 3 * ld_c0, *s4 = c0 + 4 * ld_c0,
                    *s5 = c0 + 5 * ld_c0;  // (4) each
        c00 = s0[0], c01 = s0[1], c02 = s0[2], c03 = s0[3], c10 = s1[0], c11 = s1[1], c12 = s1[2], c13 = s1[3];
        c20 = s2[0], c21 = s2[1], c22 = s2[2], c23 = s2[3], c30 = s3[0], c31 = s3[1], c32 = s3[2], c33 = s3[3];
        c40 = s4[0], c41 = s4[1], c42 = s4[2], c43 = s4[3], c50 = s5[0], c51 = s5[1], c52 = s5[2], c53 = s5[3];
    }
    for (int k = 0; k < kc; k++, a += cs_a, b += ldb) {
        float b0 = b[0], b1 = b[1], b2 = b[2], b3 = b[3], ai;
        ai = a[0], c00 = fmaf(ai, b0, c00), c01 = fmaf(ai, b1, c01), c02 = fmaf(ai, b2, c02), c03 = fmaf(ai, b3, c03);
        ai = a[rs_a], c10 = fmaf(ai, b0, c10), c11 = fmaf(ai, b1, c11), c12 = fmaf(ai, b2, c12), c13 = fmaf(ai, b3, c13);
        ai = a[2 * rs_a], c20 = fmaf(ai, b0, c20), c21 = fmaf(ai, b1, c21), c22 = fmaf(ai, b2, c22), c23 = fmaf(ai, b3, c23);
        ai = a[3 * rs_a], c30 = fmaf(ai, b0, c30), c31 = fmaf(ai, b1, c31), c32 = fmaf(ai, b2, c32), c33 = fmaf(ai, b3, c33);
        ai = a[4 * rs_a], c40 = fmaf(ai, b0, c40), c41 = fmaf(ai, b1, c41), c42 = fmaf(ai, b2, c42), c43 = fmaf(ai, b3, c43);
        ai = a[5 * rs_a], c50 = fmaf(ai, b0, c50), c51 = fmaf(ai, b1, c51), c52 = fmaf(ai, b2, c52), c53 = fmaf(ai, b3, c53);
    }
    r0[0] = c00, r0[1] = c01, r0[2] = c02, r0[3] = c03, r1[0] = c10, r1[1] = c11, r1[2] = c12, r1[3] = c13;
    r2[0] = c20, r2[1] = c21, r2[2] = c22, r2[3] = c23, r3[0] = c30, r3[1] = c31, r3[2] = c32, r3[3] = c33;
    r4[0] = c40, r4[1] = c41, r4[2] = c42, r4[3] = c43, r5[0] = c50, r5[1] = c51, r5[2] = c52, r5[3] = c53;
}

// Eight independent chains: enough to hide a 4-cycle latency on 2 units.
float peak_probe_portable(long iterations) {
    // Different starting values, or the compiler sees eight copies of one
    // chain and keeps only one (gcc does).
    float x0 = 0, x1 = 1, x2 = 2, x3 = 3, x4 = 4, x5 = 5, x6 = 6, x7 = 7;
    for (long i = 0; i < iterations; i++) {
        // x = x/2 + 1 tends to 2: no overflow, no slow subnormal numbers
        x0 = fmaf(x0, 0.5f, 1.0f), x1 = fmaf(x1, 0.5f, 1.0f), x2 = fmaf(x2, 0.5f, 1.0f), x3 = fmaf(x3, 0.5f, 1.0f);
        x4 = fmaf(x4, 0.5f, 1.0f), x5 = fmaf(x5, 0.5f, 1.0f), x6 = fmaf(x6, 0.5f, 1.0f), x7 = fmaf(x7, 0.5f, 1.0f);
    }
    return x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7;
}

int always_supported(void) { return 1; }

/* The x86 kernels. They are compiled for their instruction set with a
   target attribute, whatever flags build the rest of the program, and run
   only if the CPU says it has that set (__builtin_cpu_supports, which also
   checks that the operating system saves the wide registers). Other
   machines and compilers never see them, so never meet an instruction they
   lack. -DNO_SIMD leaves them out on x86 too, to build what arm64 runs
   (HAVE_X86_KERNELS, at the top of the chapter). */
#if HAVE_X86_KERNELS
int cpu_has_avx2_fma(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
int cpu_has_avx512f(void) { return __builtin_cpu_supports("avx512f"); }

/* AVX2 + FMA, 6x16. Registers (16 ymm of 8 floats): c00..c51, 12 of them,
   hold the 6x16 tile of C (row i in ci0, ci1); b0, b1 load 16 values of B
   per k; ai broadcasts one value of A to all 8 lanes. Per k: 12 FMAs of 8
   lanes = 192 FLOPs from 2 loads + 6 broadcasts. With 2 FMA units (Haswell
   on, Zen 2 on) that is 6 cycles per k, 32 FLOPs per cycle: the peak; and
   12 independent chains cover an FMA latency of 4-5 cycles on 2 units. */
__attribute__((target("avx2,fma")))
void gemm_kernel_avx2(int kc, const float *a, long rs_a, long cs_a, const float *b, long ldb, float *c,
                      long ldc, const float *c0, long ld_c0) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (c0) {
        c00 = _mm256_loadu_ps(c0 + 0 * ld_c0), c01 = _mm256_loadu_ps(c0 + 0 * ld_c0 + 8);
        c10 = _mm256_loadu_ps(c0 + 1 * ld_c0), c11 = _mm256_loadu_ps(c0 + 1 * ld_c0 + 8);
        c20 = _mm256_loadu_ps(c0 + 2 * ld_c0), c21 = _mm256_loadu_ps(c0 + 2 * ld_c0 + 8);
        c30 = _mm256_loadu_ps(c0 + 3 * ld_c0), c31 = _mm256_loadu_ps(c0 + 3 * ld_c0 + 8);
        c40 = _mm256_loadu_ps(c0 + 4 * ld_c0), c41 = _mm256_loadu_ps(c0 + 4 * ld_c0 + 8);
        c50 = _mm256_loadu_ps(c0 + 5 * ld_c0), c51 = _mm256_loadu_ps(c0 + 5 * ld_c0 + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
    }
    for (int k = 0; k < kc; k++, a += cs_a, b += ldb) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), ai;
        ai = _mm256_broadcast_ss(a), c00 = _mm256_fmadd_ps(ai, b0, c00), c01 = _mm256_fmadd_ps(ai, b1, c01);
        ai = _mm256_broadcast_ss(a + rs_a), c10 = _mm256_fmadd_ps(ai, b0, c10), c11 = _mm256_fmadd_ps(ai, b1, c11);
        ai = _mm256_broadcast_ss(a + 2 * rs_a), c20 = _mm256_fmadd_ps(ai, b0, c20), c21 = _mm256_fmadd_ps(ai, b1, c21);
        ai = _mm256_broadcast_ss(a + 3 * rs_a), c30 = _mm256_fmadd_ps(ai, b0, c30), c31 = _mm256_fmadd_ps(ai, b1, c31);
        ai = _mm256_broadcast_ss(a + 4 * rs_a), c40 = _mm256_fmadd_ps(ai, b0, c40), c41 = _mm256_fmadd_ps(ai, b1, c41);
        ai = _mm256_broadcast_ss(a + 5 * rs_a), c50 = _mm256_fmadd_ps(ai, b0, c50), c51 = _mm256_fmadd_ps(ai, b1, c51);
    }
    _mm256_storeu_ps(c + 0 * ldc, c00), _mm256_storeu_ps(c + 0 * ldc + 8, c01);
    _mm256_storeu_ps(c + 1 * ldc, c10), _mm256_storeu_ps(c + 1 * ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20), _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30), _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40), _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50), _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

// Twelve independent 8-lane chains, as many as the kernel keeps.
__attribute__((target("avx2,fma")))
float peak_probe_avx2(long iterations) {
    __m256 x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11;
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    // Different starting values, as in the portable probe.
    x0 = _mm256_set1_ps(0), x1 = _mm256_set1_ps(1), x2 = _mm256_set1_ps(2), x3 = _mm256_set1_ps(3);
    x4 = _mm256_set1_ps(4), x5 = _mm256_set1_ps(5), x6 = _mm256_set1_ps(6), x7 = _mm256_set1_ps(7);
    x8 = _mm256_set1_ps(8), x9 = _mm256_set1_ps(9), x10 = _mm256_set1_ps(10), x11 = _mm256_set1_ps(11);
    for (long i = 0; i < iterations; i++) {
        x0 = _mm256_fmadd_ps(x0, half, one), x1 = _mm256_fmadd_ps(x1, half, one), x2 = _mm256_fmadd_ps(x2, half, one);
        x3 = _mm256_fmadd_ps(x3, half, one), x4 = _mm256_fmadd_ps(x4, half, one), x5 = _mm256_fmadd_ps(x5, half, one);
        x6 = _mm256_fmadd_ps(x6, half, one), x7 = _mm256_fmadd_ps(x7, half, one), x8 = _mm256_fmadd_ps(x8, half, one);
        x9 = _mm256_fmadd_ps(x9, half, one), x10 = _mm256_fmadd_ps(x10, half, one), x11 = _mm256_fmadd_ps(x11, half, one);
    }
    __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)),
                               _mm256_add_ps(_mm256_add_ps(x4, x5), _mm256_add_ps(x6, x7)));
    sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_add_ps(x8, x9), _mm256_add_ps(x10, x11)));
    float lanes[8];
    _mm256_storeu_ps(lanes, sum);
    return lanes[0];
}

/* AVX-512F, 6x32: the AVX2 kernel with registers twice as wide. Registers
   (32 zmm of 16 floats): c00..c51, 12 of them, hold the 6x32 tile of C;
   b0, b1 load 32 values of B per k; ai broadcasts one value of A to all 16
   lanes. Per k: 12 FMAs of 16 lanes = 384 FLOPs from 2 loads + 6
   broadcasts; with 2 FMA units (Skylake-SP Gold/Platinum, Ice Lake, Zen 4
   at half rate) 6 cycles per k, 64 FLOPs per cycle, and 12 chains cover a
   4-cycle latency on 2 units. */
__attribute__((target("avx512f")))
void gemm_kernel_avx512(int kc, const float *a, long rs_a, long cs_a, const float *b, long ldb, float *c,
                        long ldc, const float *c0, long ld_c0) {
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (c0) {
        c00 = _mm512_loadu_ps(c0 + 0 * ld_c0), c01 = _mm512_loadu_ps(c0 + 0 * ld_c0 + 16);
        c10 = _mm512_loadu_ps(c0 + 1 * ld_c0), c11 = _mm512_loadu_ps(c0 + 1 * ld_c0 + 16);
        c20 = _mm512_loadu_ps(c0 + 2 * ld_c0), c21 = _mm512_loadu_ps(c0 + 2 * ld_c0 + 16);
        c30 = _mm512_loadu_ps(c0 + 3 * ld_c0), c31 = _mm512_loadu_ps(c0 + 3 * ld_c0 + 16);
        c40 = _mm512_loadu_ps(c0 + 4 * ld_c0), c41 = _mm512_loadu_ps(c0 + 4 * ld_c0 + 16);
        c50 = _mm512_loadu_ps(c0 + 5 * ld_c0), c51 = _mm512_loadu_ps(c0 + 5 * ld_c0 + 16);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm512_setzero_ps();
    }
    for (int k = 0; k < kc; k++, a += cs_a, b += ldb) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), ai;
        ai = _mm512_set1_ps(a[0]), c00 = _mm512_fmadd_ps(ai, b0, c00), c01 = _mm512_fmadd_ps(ai, b1, c01);
        ai = _mm512_set1_ps(a[rs_a]), c10 = _mm512_fmadd_ps(ai, b0, c10), c11 = _mm512_fmadd_ps(ai, b1, c11);
        ai = _mm512_set1_ps(a[2 * rs_a]), c20 = _mm512_fmadd_ps(ai, b0, c20), c21 = _mm512_fmadd_ps(ai, b1, c21);
        ai = _mm512_set1_ps(a[3 * rs_a]), c30 = _mm512_fmadd_ps(ai, b0, c30), c31 = _mm512_fmadd_ps(ai, b1, c31);
        ai = _mm512_set1_ps(a[4 * rs_a]), c40 = _mm512_fmadd_ps(ai, b0, c40), c41 = _mm512_fmadd_ps(ai, b1, c41);
        ai = _mm512_set1_ps(a[5 * rs_a]), c50 = _mm512_fmadd_ps(ai, b0, c50), c51 = _mm512_fmadd_ps(ai, b1, c51);
    }
    _mm512_storeu_ps(c + 0 * ldc, c00), _mm512_storeu_ps(c + 0 * ldc + 16, c01);
    _mm512_storeu_ps(c + 1 * ldc, c10), _mm512_storeu_ps(c + 1 * ldc + 16, c11);
    _mm512_storeu_ps(c + 2 * ldc, c20), _mm512_storeu_ps(c + 2 * ldc + 16, c21);
    _mm512_storeu_ps(c + 3 * ldc, c30), _mm512_storeu_ps(c + 3 * ldc + 16, c31);
    _mm512_storeu_ps(c + 4 * ldc, c40), _mm512_storeu_ps(c + 4 * ldc + 16, c41);
    _mm512_storeu_ps(c + 5 * ldc, c50), _mm512_storeu_ps(c + 5 * ldc + 16, c51);
}

__attribute__((target("avx512f")))
float peak_probe_avx512(long iterations) {
    __m512 x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11;
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    // Different starting values, as in the portable probe.
    x0 = _mm512_set1_ps(0), x1 = _mm512_set1_ps(1), x2 = _mm512_set1_ps(2), x3 = _mm512_set1_ps(3);
    x4 = _mm512_set1_ps(4), x5 = _mm512_set1_ps(5), x6 = _mm512_set1_ps(6), x7 = _mm512_set1_ps(7);
    x8 = _mm512_set1_ps(8), x9 = _mm512_set1_ps(9), x10 = _mm512_set1_ps(10), x11 = _mm512_set1_ps(11);
    for (long i = 0; i < iterations; i++) {
        x0 = _mm512_fmadd_ps(x0, half, one), x1 = _mm512_fmadd_ps(x1, half, one), x2 = _mm512_fmadd_ps(x2, half, one);
        x3 = _mm512_fmadd_ps(x3, half, one), x4 = _mm512_fmadd_ps(x4, half, one), x5 = _mm512_fmadd_ps(x5, half, one);
        x6 = _mm512_fmadd_ps(x6, half, one), x7 = _mm512_fmadd_ps(x7, half, one), x8 = _mm512_fmadd_ps(x8, half, one);
        x9 = _mm512_fmadd_ps(x9, half, one), x10 = _mm512_fmadd_ps(x10, half, one), x11 = _mm512_fmadd_ps(x11, half, one);
    }
    __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(x0, x1), _mm512_add_ps(x2, x3)),
                               _mm512_add_ps(_mm512_add_ps(x4, x5), _mm512_add_ps(x6, x7)));
    sum = _mm512_add_ps(sum, _mm512_add_ps(_mm512_add_ps(x8, x9), _mm512_add_ps(x10, x11)));
    float lanes[16];
    _mm512_storeu_ps(lanes, sum);
    return lanes[0];
}
#endif

// Every kernel this build has, the portable one first and the widest last.
static const GemmKernel GEMM_KERNELS[] = {
    {"portable", 6, 4, gemm_kernel_portable, peak_probe_portable, 8 * 2, always_supported},
#if HAVE_X86_KERNELS
    {"avx2", 6, 16, gemm_kernel_avx2, peak_probe_avx2, 12 * 8 * 2, cpu_has_avx2_fma},
    {"avx512", 6, 32, gemm_kernel_avx512, peak_probe_avx512, 12 * 16 * 2, cpu_has_avx512f},
#endif
};
enum { GEMM_KERNEL_COUNT = sizeof GEMM_KERNELS / sizeof GEMM_KERNELS[0] };

// The kernel called `name`, or NULL if this build has none by that name
// (the x86 ones exist only in x86 builds).
const GemmKernel *gemm_kernel_by_name(const char *name) {
    for (int i = 0; i < GEMM_KERNEL_COUNT; i++)
        if (strcmp(GEMM_KERNELS[i].name, name) == 0) return &GEMM_KERNELS[i];
    return NULL;
}

int gemm_kernel_supported(const GemmKernel *kernel) { return kernel && kernel->supported(); }

// The widest kernel this CPU runs. A program asks once, when it makes its
// GemmContext, and keeps the answer there.
const GemmKernel *gemm_best_kernel(void) {
    for (int i = GEMM_KERNEL_COUNT - 1; i > 0; i--)
        if (GEMM_KERNELS[i].supported()) return &GEMM_KERNELS[i];
    return &GEMM_KERNELS[0];
}

/* ----------------------------------------------------------------------------
   Blocking: how big the packed blocks are.

   The micro-kernel streams a (kc, MR) strip of A and a (kc, NR) panel of B
   and keeps C in registers. Around it, three loops choose what stays in
   which cache, for a core with 32 KB of L1 data and 512 KB of L2 or more
   (AMD since Zen 2; Intel's server cores have 1 to 2 MB), and an L3 that
   all cores share:
   - KC = 256: the B panel in use, KC * NR * 4 bytes = 16 KB for AVX2, fits
     in half of L1 and is reused by every strip of A; the other half holds
     the strips of A and C passing through. Longer k also spreads the cost of
     loading and storing the C tile over more FMAs.
   - MC = 240: the packed block of A, MC * KC * 4 bytes = 240 KB, stays in
     L2 (under half of it, leaving room for B and C) while every panel of B
     passes over it. A multiple of MR.
   - NC = 256: the packed block of B, KC * NC * 4 bytes = 256 KB, comes from
     L2 or L3. Our widest layers have 256 outputs; a multiple of every NR.
   None of the three is a sharp optimum: halving or doubling one keeps its
   block in the same level of cache (KC = 128 to 384 keeps the panel
   within L1, MC = 120 to 480 the block of A within L2), and what changes
   is only how often C's tiles are loaded and stored (KC) and B's panels
   re-read (MC), a few percent of the traffic either way. So these sizes
   are the middle of a flat range, with room in L2 to spare. They are the
   defaults; a GemmContext can be made with others (Blocking), which is
   how `make bench` sweeps them on the machine it runs on, without a
   rebuild (book.md 4.14). */
enum { KC = 256, MC = 240, NC = 256 };

typedef struct {
    int kc, mc, nc;  // the sum over k goes in blocks of at most kc; tiles of C are at most mc x nc
} Blocking;

static const Blocking DEFAULT_BLOCKING = {KC, MC, NC};

/* Tasks. The output C is cut into tiles of at most MC x NC, and each tile is
   one task. A task does the whole sum over k for its tile, so no two tasks
   ever write the same element and nothing has to be added up across tasks.
   The tiling depends only on M, N and K, never on the number of threads;
   problems with too few tiles for several threads are cut finer, rows
   first (the A block is the costlier one to pack twice) unless B is the
   patch matrix (then columns first), until there are
   TASKS_WANTED tiles or a tile would fall under MIN_TASK_FLOPS (waking a
   thread costs some 10-50 microseconds; 2 MFLOP take about 50 at full
   speed). Tile sides stay multiples of MR and of 16 (AVX2's NR), so that
   the kernels' tiles fit them with little waste. */
enum { TASKS_WANTED = 4, TILE_M_UNIT = MR, TILE_N_UNIT = 16 };

// Patch lines (KW * C floats) at least this long are read in place where
// they can be (patch_strip_in_place); shorter ones are cheaper to copy
// than to cut the sum into so many short blocks.
enum { PATCH_LINE_IN_PLACE = 48 };
#define MIN_TASK_FLOPS 2e6

/* ----------------------------------------------------------------------------
   Packing: copying blocks of A and B into the order the micro-kernel reads.

   Everything goes through pack_block, which copies a block of an operand's
   rows and columns into a dense array, row by row. A block of the transpose
   is a block of the operand read the other way round, so the same function
   packs A by rows, A by columns, and the panels of B. Patches are read from
   the image here, which is all there is to im2col.

   Each row of a block is made of "lines": runs of the operand that are
   evenly spaced in memory, with zeros where a patch hangs over the image's
   edge. Where the block starts is worked out once (with divisions); from
   there on every position is counted up, because a division costs as much
   as copying a dozen floats. */

// dst[o - from] = data[base + o * step] for lo <= o < hi, and 0 for the
// other o in [from, to): a line of an image with zero padding on both
// sides. base may be negative; only the elements inside [lo, hi) are read.
void pack_line(float *dst,  // (to - from)
               const float *data, long base, long step, long lo, long hi, long from, long to) {
    long inside_from = lo < from ? from : lo > to ? to : lo;
    long inside_to = hi > to ? to : hi < inside_from ? inside_from : hi;
    long o = from;
    for (; o < inside_from; o++) *dst++ = 0.0f;
    if (step == 1 && inside_to - inside_from >= 16) {  // long runs: the C library's copy is fastest
        memcpy(dst, data + base + inside_from, (size_t)(inside_to - inside_from) * sizeof(float));
        dst += inside_to - inside_from;
        o = inside_to;
    }
    for (; o < inside_to; o++) *dst++ = data[base + o * step];
    for (; o < to; o++) *dst++ = 0.0f;
}

// Rows [row0, row0 + rows) and columns [col0, col0 + cols) of the operand,
// row i of the block at dst + i * ld.
void pack_block(float *dst,  // (rows, ld), of which (rows, cols) written
                long ld, const Operand *op, long row0, int rows, long col0, int cols) {
    const ConvShape *g = op->patches;
    if (!g) {  // a matrix
        long rs = op->row_stride, cs = op->col_stride;
        const float *src = op->data + row0 * rs + col0 * cs;  // (rows, cols), rs and cs apart
        for (int i = 0; i < rows; i++, dst += ld, src += rs) {
            if (cs == 1)
                for (int j = 0; j < cols; j++) dst[j] = src[j];
            else
                for (int j = 0; j < cols; j++) dst[j] = src[j * cs];
        }
        return;
    }
    int H = g->height, W = g->width, C = g->channels, KW = g->kernel_w, pad = g->pad;
    int OH = g->out_h, OW = g->out_w;
    if (!op->transposed) {
        /* Row r is output pixel (b, oh, ow); its columns run over (kh, kw, ci).
           For one kh the KW * C columns are KW neighbouring pixels of image
           row ih = oh + kh - pad, which lie next to each other in memory: one
           line, with zeros where kw reaches past the left or right edge, and
           all zeros when ih is above or below the image. */
        long line = (long)KW * C;
        int ow = (int)(row0 % OW), oh = (int)(row0 / OW % OH), b = (int)(row0 / OW / OH);
        int first_kh = (int)(col0 / line);
        long first_from = col0 % line;
        int narrow = first_from + cols <= line;  // all the columns are in one line (one kh)
        for (int i = 0; i < rows; i++, dst += ld) {
            long lo = (long)(pad - ow > 0 ? pad - ow : 0) * C;             // kw inside the image, in columns
            long hi = (long)(W + pad - ow < KW ? W + pad - ow : KW) * C;
            long ih = oh + first_kh - pad;
            if (narrow && lo <= first_from && first_from + cols <= hi && ih >= 0 && ih < H) {
                // A strip packed by columns, or a panel of B, asks for a few
                // columns of many rows: one piece of one line per row, nearly
                // always inside the image.
                const float *src = op->data + (((long)b * H + ih) * W + ow - pad) * C + first_from;  // (cols)
                if (cols == MR) memcpy(dst, src, MR * sizeof(float));  // fixed sizes: a few moves, no call
                else if (cols == 16) memcpy(dst, src, 16 * sizeof(float));  // a panel of B for AVX2
                else memcpy(dst, src, (size_t)cols * sizeof(float));
            } else {
                float *d = dst;
                long from = first_from, left = cols;
                for (int kh = first_kh; left > 0; kh++, from = 0) {
                    long to = from + left < line ? from + left : line;
                    ih = oh + kh - pad;
                    long base = (((long)b * H + ih) * W + ow - pad) * C;  // where kw = 0, ci = 0 would be
                    if (ih < 0 || ih >= H) pack_line(d, NULL, 0, 1, 0, 0, from, to);
                    else pack_line(d, op->data, base, 1, lo, hi, from, to);
                    d += to - from;
                    left -= to - from;
                }
            }
            if (++ow == OW) {
                ow = 0;
                if (++oh == OH) oh = 0, b++;
            }
        }
    } else {
        /* Row r is one weight (kh, kw, ci); its columns run over the output
           pixels (b, oh, ow). Each output row (b, oh) is a line: image row
           ih = oh + kh - pad, every C-th float, with zeros where ow + kw - pad
           falls off the edge. */
        int ci = (int)(row0 % C), kw = (int)(row0 / C % KW), kh = (int)(row0 / C / KW);
        int first_ow = (int)(col0 % OW), first_oh = (int)(col0 / OW % OH), first_b = (int)(col0 / OW / OH);
        for (int i = 0; i < rows; i++, dst += ld) {
            long lo = pad - kw > 0 ? pad - kw : 0, hi = W + pad - kw < OW ? W + pad - kw : OW;
            float *d = dst;
            long from = first_ow, left = cols;
            for (int oh = first_oh, b = first_b; left > 0; from = 0, oh = oh + 1 < OH ? oh + 1 : 0, b += oh == 0) {
                long to = from + left < OW ? from + left : OW, ih = oh + kh - pad;
                long base = (((long)b * H + ih) * W + kw - pad) * C + ci;  // where ow = 0 would be
                if (ih < 0 || ih >= H) pack_line(d, NULL, 0, 1, 0, 0, from, to);
                else pack_line(d, op->data, base, C, lo, hi, from, to);
                d += to - from;
                left -= to - from;
            }
            if (++ci == C) ci = 0, kw = kw + 1 < KW ? kw + 1 : 0, kh += kw == 0;
        }
    }
}

// The same operand, read the other way round: element (r, c) of the
// result is element (c, r) of op.
Operand transpose(const Operand *op) {
    return (Operand){op->data, op->col_stride, op->row_stride, op->patches, op->patches ? !op->transposed : 0};
}

/* Should a strip of A be stored by rows? Yes when the operand's rows are
   the direction that runs along memory: a row-major matrix; patches, whose
   rows are runs of KW * C neighbouring floats; transposed patches of a
   one-channel image. Otherwise by columns: a transposed matrix (dense
   weight gradients: MR neighbouring floats per k), transposed patches of
   C channels (MR neighbouring channels per k). Either way the packing reads
   memory in order and the micro-kernel reads the strip the same way. */
int pack_a_by_rows(const Operand *A) {
    if (!A->patches) return A->col_stride <= A->row_stride;
    return !A->transposed || A->patches->channels == 1;
}

// Where the micro-kernel finds one (MR, kc) strip of A: element (i, k) at
// a[i*rs + k*cs] (see MicroKernel).
typedef struct {
    const float *a;
    long rs, cs;
} Strip;

/* A strip of the patch matrix that is already in the image, or NULL. Row r
   of the patches, for one kh, is KW * C neighbouring floats of image row
   ih = oh + kh - pad; the next output pixel's are the same run moved C
   floats on. So when the block of k is one whole kh (kc = KW * C, k0 a
   multiple of it) and the strip's MR pixels lie in one output row, all
   with their KW taps inside the image, the strip is simply the image read
   with rs = C: nothing to copy. (gemm_run chooses such blocks.) */
const float *patch_strip_in_place(const Operand *A, long row0, long k0, int kc) {
    const ConvShape *g = A->patches;
    long line = (long)g->kernel_w * g->channels;
    if (A->transposed || kc != line || k0 % line != 0) return NULL;
    int ow = (int)(row0 % g->out_w), oh = (int)(row0 / g->out_w % g->out_h), b = (int)(row0 / g->out_w / g->out_h);
    int ih = oh + (int)(k0 / line) - g->pad, first_iw = ow - g->pad, last_iw = ow + MR - 1 - g->pad + g->kernel_w - 1;
    if (ow + MR > g->out_w || ih < 0 || ih >= g->height || first_iw < 0 || last_iw >= g->width) return NULL;
    return A->data + (((long)b * g->height + ih) * g->width + first_iw) * g->channels;
}

/* Is a block of the patch matrix, rows [row0, row0 + rows) and columns
   [k0, k0 + kc), all zero padding? It is when, for every one of its output
   pixels, every kernel row kh the block's columns reach falls above or
   below the image. That happens where the padding is wide: the input
   gradient of the basic CNN's second convolution is a convolution padded
   by 2 of an 11 x 11 image into 13 x 13, whose top two and bottom two
   output rows reach past the image for one or two of the three kh. */
int patch_block_is_padding(const Operand *A, long row0, int rows, long k0, int kc) {
    const ConvShape *g = A->patches;
    if (g->pad == 0) return 0;
    long line = (long)g->kernel_w * g->channels;
    int first_kh = (int)(k0 / line), last_kh = (int)((k0 + kc - 1) / line);
    int ow = (int)(row0 % g->out_w), oh = (int)(row0 / g->out_w % g->out_h);
    for (int i = 0; i < rows; i++) {
        if (oh + last_kh - g->pad >= 0 && oh + first_kh - g->pad < g->height) return 0;
        if (++ow == g->out_w) ow = 0, oh = oh + 1 < g->out_h ? oh + 1 : 0;
    }
    return 1;
}

/* Rows [row0, row0 + rows) and columns [k0, k0 + kc) of A, as strips of MR
   rows, strips[s] for the s-th. The rows of the last strip beyond `rows`
   are zeros. A whole strip of a matrix is not copied at all: the kernel
   reads it where it lies, with the matrix's strides. Transposed, its MR
   neighbouring floats per k are one short run (rs = 1, cs = the stride);
   row-major, it is MR runs along k (rs = the stride, cs = 1), which the
   kernel reads in order, each from its own cache lines. Copying either
   cost more than the kernel's reads from a wider stride (the weight
   gradients of book.md 4.19; the first convolution's weight gradient,
   whose A is the patch matrix built beforehand, and the dense layers:
   book.md 4.21). A last, partial strip is still copied, since reading a
   whole one would run past the matrix's end. */
void pack_a(float *packed,  // (ceil(rows / MR), MR * kc)
            Strip *strips,  // (ceil(rows / MR))
            const Operand *A, long row0, int rows, long k0, int kc) {
    int by_rows = pack_a_by_rows(A);
    Operand At = transpose(A);
    for (int s = 0; s < rows; s += MR, packed += (size_t)kc * MR) {
        int valid = rows - s < MR ? rows - s : MR;
        Strip *strip = &strips[s / MR];
        const float *in_image = A->patches && valid == MR ? patch_strip_in_place(A, row0 + s, k0, kc) : NULL;
        if (in_image) {
            *strip = (Strip){in_image, A->patches->channels, 1};
        } else if (A->patches && !A->transposed && patch_block_is_padding(A, row0 + s, valid, k0, kc)) {
            *strip = (Strip){NULL, 0, 0};  // nothing to add: gemm_tile skips it
        } else if (!A->patches && !by_rows && A->row_stride == 1 && valid == MR) {
            *strip = (Strip){A->data + (row0 + s) + k0 * A->col_stride, 1, A->col_stride};
        } else if (!A->patches && by_rows && A->col_stride == 1 && valid == MR) {
            *strip = (Strip){A->data + (row0 + s) * A->row_stride + k0, A->row_stride, 1};
        } else if (by_rows) {
            pack_block(packed, kc, A, row0 + s, valid, k0, kc);
            memset(packed + (size_t)valid * kc, 0, (size_t)(MR - valid) * kc * sizeof(float));
            *strip = (Strip){packed, kc, 1};
        } else {
            pack_block(packed, MR, &At, k0, kc, row0 + s, valid);
            for (int k = 0; k < kc && valid < MR; k++)
                memset(packed + (size_t)k * MR + valid, 0, (size_t)(MR - valid) * sizeof(float));
            *strip = (Strip){packed, 1, MR};
        }
    }
}

// Rows [k0, k0 + kc) and columns [col0, col0 + cols) of B, as panels of nr
// columns, each stored k by k. The columns of the last panel beyond
// `cols` are zeros.
void pack_b(float *packed,  // (ceil(cols / nr), kc, nr)
            const Operand *B, long k0, int kc, long col0, int cols, int nr) {
    for (int j = 0; j < cols; j += nr, packed += (size_t)kc * nr) {
        int valid = cols - j < nr ? cols - j : nr;
        pack_block(packed, nr, B, k0, kc, col0 + j, valid);
        for (int k = 0; k < kc && valid < nr; k++)
            memset(packed + (size_t)k * nr + valid, 0, (size_t)(nr - valid) * sizeof(float));
    }
}

/* ----------------------------------------------------------------------------
   The driver. (Below, row(j) is element j of the bias row, the bias of
   gemm_with_bias.)

   Determinism. Element C(i, j) ends up as the chain
       c = C(i, j), row(j) or 0;  for k = 0 .. K-1:  c = fma(A(i, k), B(k, j), c)
   in every case, because
   - within a KC block the micro-kernel does exactly that for its k, in
     order, each kernel with its own instruction but the same single
     rounding (fmaf, _mm256_fmadd_ps and _mm512_fmadd_ps all compute a*b+c
     exactly, then round once to float);
   - between KC blocks the partial sum goes to C and comes back: a float
     stored and reloaded is the same float, so the chain just continues;
   - MR, NR, MC, NC only choose which elements are computed together, never
     what is added to an element or in which order; the zeros that pad the
     packed edge strips and panels fall in rows and columns of the tile that
     are never written back, and k is never padded;
   - each tile is one task, done by one thread from k = 0 to K-1, and the
     tiles depend on M, N, K alone: the number of threads decides who
     computes a tile and when, not what is computed;
   - a block of the patch matrix that is all zero padding is skipped
     (patch_block_is_padding), the same blocks whatever the kernel or the
     thread count (another Blocking may skip other blocks). Its steps would
     add products of +-0, which leave any float as it was, with two
     exceptions: a -0 may become +0, and an infinite or NaN B makes NaN.
     Training's sums start from +0 or from a bias and its weights are
     finite; a -0 could then only come from a product too small for a
     float (underflow), far from training's values. So the skips give the
     chain's bits there: the weights of a chapter 6 run are unchanged.
   So any kernel and any number of threads give the same bits. (The compiler
   must not fuse or reorder anything else here, and does not: gcc with
   -std=c11 does not contract a*b+c on its own, and the chapter tells clang
   not to with STDC FP_CONTRACT OFF; no -ffast-math.) */

typedef struct GemmContext {
    const GemmKernel *kernel;
    Blocking blocking;
    Workers *workers;
    float *packed_a;  // (threads, a_floats): each worker's packed block of A
    float *packed_b;  // (threads, b_floats): each worker's packed block of B
    char *strips;     // (threads, strip_bytes): where each worker's strips of A are, mc / MR Strips each
    size_t strip_bytes;
    long a_floats, b_floats;
    void *memory;     // what packed_a, packed_b and strips were carved from
} GemmContext;

long round_up(long x, long multiple) { return (x + multiple - 1) / multiple * multiple; }

// A context for `kernel` (which the CPU must support) and a pool of
// `threads` threads, with packing buffers for each, blocked as `b` says.
// The blocking changes the speed only, never a bit of the results (but
// in the two cases, a -0 or an infinite B, where skipping a block of
// padding differs from the chain: see Determinism).
GemmContext *gemm_context_new_blocked(const GemmKernel *kernel, int threads, Blocking b) {
    require(gemm_kernel_supported(kernel), "gemm_context_new: kernel %s does not run on this CPU",
            kernel ? kernel->name : "NULL");
    require(b.kc >= 1 && b.mc >= MR && b.mc % TILE_M_UNIT == 0 && b.nc >= TILE_N_UNIT && b.nc % TILE_N_UNIT == 0,
            "gemm_context_new: blocking kc=%d mc=%d nc=%d (mc must be a multiple of %d, nc of %d)", b.kc, b.mc,
            b.nc, TILE_M_UNIT, TILE_N_UNIT);
    require(kernel->mr == MR && kernel->nr <= GEMM_MAX_NR && b.nc % kernel->nr == 0,
            "gemm_context_new: kernel %s's tile does not fit the blocking", kernel->name);
    GemmContext *ctx = xmalloc(sizeof *ctx);
    ctx->kernel = kernel;
    ctx->blocking = b;
    ctx->workers = workers_new(threads);
    enum { CACHE_LINE = 64, LINE_FLOATS = CACHE_LINE / sizeof(float) };
    // Rounded to whole cache lines, so no two threads ever share a line.
    ctx->a_floats = round_up((long)b.mc * b.kc, LINE_FLOATS);
    ctx->b_floats = round_up(round_up(b.nc, kernel->nr) * b.kc, LINE_FLOATS);
    ctx->strip_bytes = (size_t)round_up((long)(b.mc / MR * sizeof(Strip)), CACHE_LINE);
    size_t n = (size_t)ctx->workers->threads;
    ctx->memory = xmalloc(n * ((size_t)(ctx->a_floats + ctx->b_floats) * sizeof(float) + ctx->strip_bytes) + CACHE_LINE);
    uintptr_t start = ((uintptr_t)ctx->memory + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    ctx->packed_a = (float *)start;
    ctx->packed_b = ctx->packed_a + n * (size_t)ctx->a_floats;
    ctx->strips = (char *)(ctx->packed_b + n * (size_t)ctx->b_floats);  // still on a line's start
    return ctx;
}

// The same with the default blocking: what the chapters use.
GemmContext *gemm_context_new(const GemmKernel *kernel, int threads) {
    return gemm_context_new_blocked(kernel, threads, DEFAULT_BLOCKING);
}

void gemm_context_free(GemmContext *ctx) {
    if (!ctx) return;
    workers_free(ctx->workers);
    free(ctx->memory);
    free(ctx);
}

// One GEMM call, as the tasks see it.
typedef struct {
    const GemmContext *ctx;
    int M, N, K;
    const Operand *A, *B;
    float *C;  // (M, N), rows ldc floats apart
    long ldc;
    int accumulate;
    const float *bias;            // (N) or NULL: every row of C starts as the bias (and not accumulating)
    int tile_m, tile_n, tiles_n;  // task t is tile (t / tiles_n, t % tiles_n)
    int kc;                       // the sum over k goes in blocks of kc <= the blocking's kc
} GemmJob;

/* Rows [row0 + i, row0 + i + MR) of the tile, as the chain starts them:
   the bias (when not NULL, (N)), or zeros. For a strip of A that is all
   padding, where the chain of zero products would end as it started: from
   the bias, or from 0 as +0 (each fma adds a product of +-0 to +0, which
   gives +0). */
void start_tile_rows(const GemmJob *job, int i, int row0, int col0, int rows, int cols, const float *bias) {
    int h = rows - i < MR ? rows - i : MR;
    for (int y = 0; y < h; y++) {
        float *c = job->C + (size_t)(row0 + i + y) * job->ldc + col0;  // (cols)
        if (bias) memcpy(c, bias + col0, (size_t)cols * sizeof(float));
        else memset(c, 0, (size_t)cols * sizeof(float));
    }
}

/* One tile of C, (at most tile_m, tile_n), all of K: one task.

   B is packed so that every strip of A finds its panel in one contiguous
   run; that pays when many strips use each panel. A tile of few rows
   (a dense layer's batch of 64 cut into tasks, a convolution's weight
   gradient with 9 rows) uses each panel a few times only, and copying it
   costs more than it saves: then a row-major B (NR neighbouring floats per
   k) is read where it lies, and only a last, partial panel is copied.
   The copy reads and writes each float of the panel once, and saves every
   strip that uses the panel a read from a wider stride (a row of B per k,
   in its own cache line, instead of one contiguous run): it pays when
   there are many strips, not when there are a few. Our tiles of few rows
   are those above (a few strips each); a convolution's forward pass has
   tiles of up to MC = 240 rows, 40 strips; the threshold B_IN_PLACE_ROWS
   = 8 MR lies between the two kinds. A is packed, or read in place where
   a whole strip already lies as the kernel reads it (pack_a). */
enum { B_IN_PLACE_ROWS = 8 * MR };  // tiles of at most this many rows read B in place

void gemm_tile(void *context, int task, int worker) {
    const GemmJob *job = context;
    const GemmKernel *kernel = job->ctx->kernel;
    const Operand *A = job->A, *B = job->B;
    int nr = kernel->nr;
    int row0 = task / job->tiles_n * job->tile_m, col0 = task % job->tiles_n * job->tile_n;
    int rows = job->M - row0 < job->tile_m ? job->M - row0 : job->tile_m;
    int cols = job->N - col0 < job->tile_n ? job->N - col0 : job->tile_n;
    float *packed_a = job->ctx->packed_a + (size_t)worker * job->ctx->a_floats;  // (rows/MR, MR, kc)
    float *packed_b = job->ctx->packed_b + (size_t)worker * job->ctx->b_floats;  // (cols/nr, kc, nr)
    Strip *strips = (Strip *)(job->ctx->strips + (size_t)worker * job->ctx->strip_bytes);  // (rows/MR)
    int b_in_place = !B->patches && B->col_stride == 1 && rows <= B_IN_PLACE_ROWS;
    int direct_cols = b_in_place ? cols / nr * nr : 0;  // columns [0, direct_cols) of B are read in place
    for (int k0 = 0; k0 < job->K; k0 += job->kc) {
        int kc = job->K - k0 < job->kc ? job->K - k0 : job->kc;
        const float *bias = k0 == 0 ? job->bias : NULL;  // (N) the first block starts from the bias, if any
        int load_c = job->accumulate || k0 > 0;           // C's old value is where the sums start
        pack_b(packed_b, B, k0, kc, col0 + direct_cols, cols - direct_cols, nr);
        pack_a(packed_a, strips, A, row0, rows, k0, kc);
        // Strip by strip of A: one strip (MR x kc, under 7 KB) stays in L1
        // while the panels of B stream past it from L2, and C is written
        // MR whole rows at a time. (Panel-outer, the BLIS order, keeps one
        // panel of B in L1 while the strips of A stream past it, which
        // suits many panels; ours are few, N being at most NC = 256 outputs,
        // and C's rows long.)
        for (int i = 0; i < rows; i += MR) {
            const float *a = strips[i / MR].a;  // (MR, kc) strip, rs_a and cs_a apart
            long rs_a = strips[i / MR].rs, cs_a = strips[i / MR].cs;
            if (!a) {  // all padding: its products are zeros, and adding them changes nothing
                if (!load_c) start_tile_rows(job, i, row0, col0, rows, cols, bias);
                continue;
            }
            for (int j = 0; j < cols; j += nr) {
                const float *b;  // (kc, nr) panel of B, rows ldb apart
                long ldb;
                if (j < direct_cols) b = B->data + k0 * B->row_stride + col0 + j, ldb = B->row_stride;
                else b = packed_b + (size_t)(j - direct_cols) * kc, ldb = nr;
                float *c = job->C + (size_t)(row0 + i) * job->ldc + col0 + j;  // (MR, nr) tile, rows ldc apart
                int h = rows - i < MR ? rows - i : MR, w = cols - j < nr ? cols - j : nr;
                if (h == MR && w == nr) {
                    // The bias goes straight into the registers: C is written
                    // once, never first filled with the bias and read back.
                    const float *c0 = bias ? bias + col0 + j : load_c ? c : NULL;  // (MR, nr), rows ld_c0 apart
                    long ld_c0 = bias ? 0 : job->ldc;
                    kernel->kernel(kc, a, rs_a, cs_a, b, ldb, c, job->ldc, c0, ld_c0);
                    continue;
                }
                // An edge tile: the kernel works on a full tile in scratch, and
                // only the h x w part that exists in C is copied in and out.
                float scratch[MR * GEMM_MAX_NR] = {0};  // (MR, nr)
                for (int y = 0; y < h && (bias || load_c); y++)
                    memcpy(scratch + y * nr, bias ? bias + col0 + j : c + y * job->ldc, (size_t)w * sizeof(float));
                kernel->kernel(kc, a, rs_a, cs_a, b, ldb, scratch, nr, bias || load_c ? scratch : NULL, nr);
                for (int y = 0; y < h; y++) memcpy(c + y * job->ldc, scratch + y * nr, (size_t)w * sizeof(float));
            }
        }
    }
}

// The operand has `rows` x `cols` elements and describes them sensibly.
void check_operand(const Operand *op, long rows, long cols, const char *name) {
    const ConvShape *g = op->patches;
    require(op->data || rows == 0 || cols == 0, "gemm: operand %s has no data", name);
    if (!g) return;
    require(g->batch > 0 && g->height > 0 && g->width > 0 && g->channels > 0 && g->kernel_h > 0 &&
            g->kernel_w > 0 && g->pad >= 0, "gemm: operand %s: a patch geometry with a size <= 0", name);
    require(g->out_h == g->height + 2 * g->pad - g->kernel_h + 1 && g->out_w == g->width + 2 * g->pad - g->kernel_w + 1 &&
            g->out_h > 0 && g->out_w > 0, "gemm: operand %s: output %dx%d, but a %dx%d image with a %dx%d "
            "kernel and padding %d gives %dx%d", name, g->out_h, g->out_w, g->height, g->width, g->kernel_h,
            g->kernel_w, g->pad, g->height + 2 * g->pad - g->kernel_h + 1, g->width + 2 * g->pad - g->kernel_w + 1);
    long want_rows = op->transposed ? (long)conv_patch_size(g) : (long)conv_rows(g);
    long want_cols = op->transposed ? (long)conv_rows(g) : (long)conv_patch_size(g);
    require(rows == want_rows && cols == want_cols, "gemm: operand %s is (%ld, %ld) as used, but its "
            "patches make a (%ld, %ld) matrix", name, rows, cols, want_rows, want_cols);
}

// Shared by gemm and gemm_in_task: checks, plans the tiles, and runs them,
// in parallel on `workers`, or on the caller as `worker` when that is NULL.
void gemm_run(const GemmContext *ctx, Workers *workers, int worker, int M, int N, int K, Operand A, Operand B,
              float *C, long ldc, int accumulate, const float *bias) {
    require(M >= 0 && N >= 0 && K >= 0 && ldc >= N, "gemm: M=%d N=%d K=%d ldc=%ld", M, N, K, ldc);
    check_operand(&A, M, K, "A");
    check_operand(&B, K, N, "B");
    if (M == 0 || N == 0) return;
    require(C != NULL, "gemm: no C");
    if (K == 0) {  // an empty sum
        for (int i = 0; i < M && !accumulate; i++) {
            if (bias) memcpy(C + (size_t)i * ldc, bias, (size_t)N * sizeof(float));
            else memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
        }
        return;
    }
    int kc_max = ctx->blocking.kc, mc = ctx->blocking.mc, nc = ctx->blocking.nc;  // this context's blocking
    int tiles_m = (M + mc - 1) / mc, tiles_n = (N + nc - 1) / nc;
    double flops = 2.0 * M * N * K;
    // Cut the side whose operand is cheaper to pack twice: rows (each row
    // tile packs all of B's columns again) unless B is the patch matrix.
    int columns_first = B.patches && !A.patches;
    while (tiles_m * tiles_n < TASKS_WANTED && flops / (tiles_m * tiles_n + 1) >= MIN_TASK_FLOPS) {
        int more_m = tiles_m < (M + TILE_M_UNIT - 1) / TILE_M_UNIT, more_n = tiles_n < (N + TILE_N_UNIT - 1) / TILE_N_UNIT;
        if (more_m && (!columns_first || !more_n)) tiles_m++;
        else if (more_n) tiles_n++;
        else break;
    }
    GemmJob job = {ctx, M, N, K, &A, &B, C, ldc, accumulate, bias, 0, 0, 0, 0};
    // Blocks of k as even as they can be (K = 288 is 144 + 144, not 256 + 32):
    // a short last block would load and store all of C again for little work.
    // But a patch matrix of wide lines goes one kh at a time (K = 288 is
    // 96 + 96 + 96 for C = 32), so that most of its strips need no copy
    // (patch_strip_in_place).
    job.kc = (K + (K + kc_max - 1) / kc_max - 1) / ((K + kc_max - 1) / kc_max);
    long line = A.patches && !A.transposed ? (long)A.patches->kernel_w * A.patches->channels : 0;
    if (line >= PATCH_LINE_IN_PLACE && line <= kc_max) job.kc = (int)line;
    job.tile_m = (int)round_up((M + tiles_m - 1) / tiles_m, TILE_M_UNIT);
    job.tile_n = (int)round_up((N + tiles_n - 1) / tiles_n, TILE_N_UNIT);
    job.tiles_n = (N + job.tile_n - 1) / job.tile_n;
    require(job.tile_m <= mc && job.tile_n <= nc, "gemm: a %dx%d tile outgrows the packing buffers",
            job.tile_m, job.tile_n);
    int tasks = (M + job.tile_m - 1) / job.tile_m * job.tiles_n;
    if (workers) parallel_for(workers, tasks, gemm_tile, &job);
    else
        for (int t = 0; t < tasks; t++) gemm_tile(&job, t, worker);
}

// C (M, N), row stride ldc: C = (accumulate ? C : 0) + A (M, K) @ B (K, N),
// on all of the context's threads.
void gemm(const GemmContext *ctx, int M, int N, int K, Operand A, Operand B, float *C, long ldc, int accumulate) {
    gemm_run(ctx, ctx->workers, 0, M, N, K, A, B, C, ldc, accumulate, NULL);
}

// C = `bias` on every row + A @ B: a layer's bias and its product, in one
// pass over C. The same bits as filling C with the bias, then accumulating.
void gemm_with_bias(const GemmContext *ctx, int M, int N, int K, Operand A, Operand B, float *C, long ldc,
                    const float *bias) {  // (N)
    require(bias != NULL, "gemm_with_bias: no bias");
    gemm_run(ctx, ctx->workers, 0, M, N, K, A, B, C, ldc, 0, bias);
}

// The same, for use inside a parallel_for task (one image of a batch, say):
// on the calling thread alone, with the buffers of `worker`, the number the
// task was given. Same bits as gemm.
void gemm_in_task(const GemmContext *ctx, int worker, int M, int N, int K, Operand A, Operand B, float *C,
                  long ldc, int accumulate) {
    require(worker >= 0 && worker < ctx->workers->threads, "gemm_in_task: worker %d of %d", worker,
            ctx->workers->threads);
    gemm_run(ctx, NULL, worker, M, N, K, A, B, C, ldc, accumulate, NULL);
}

//@ end
