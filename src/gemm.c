//@ from 4
/* ----------------------------------------------------------------------------
   One fast matrix multiply for every convolution and dense pass.

   What this is: C = (accumulate ? C : 0) + A @ B in single precision, the
   way Goto and van de Geijn built GEMM (and BLIS and OpenBLAS after them):
   five loops cut the problem into blocks that fit the caches, each block of
   A and B is copied ("packed") into the order the innermost loop reads, and
   a micro-kernel multiplies one packed strip of A by one packed panel of B
   into an MR x NR tile of C held in registers. The packing does all the
   adapting: A may be a matrix, its transpose, or the im2col "patch matrix"
   of an image, read straight from the image, so a convolution is one GEMM
   with no extra memory.
   What it is not: a BLAS. Single precision, no alpha or beta, one blocking
   for every machine; AVX2 and AVX-512 kernels for x86, and a portable one
   in plain C for every other machine.

   The tests (tests/test_gemm.c) hold it to a triple loop in double
   precision, and to one definition, bit for bit. Element C(i, j) is
       c = start(i, j);  for k = 0, 1, ..., K-1:  c = fma(A(i, k), B(k, j), c)
   where start is C's old value (accumulate), bias(j) (gemm_with_bias), or
   0: one rounding per step, in one fixed order, whatever the kernel, the
   blocking or the number of threads ("Determinism", at the driver). */

/* ----------------------------------------------------------------------------
   Operands: how element (r, c) of A or B is found. */

typedef struct {
    const float *data;
    long row_stride, col_stride;   // a matrix: element (r, c) = data[r*row_stride + c*col_stride]
    const ConvShape *patches;      // patches when non-NULL: data is the image; element (r, c) of the
                                   // (B*OH*OW, KH*KW*C) im2col matrix, r = (b, oh, ow), c = (kh, kw, ci),
                                   // 0 outside the image (zero padding)
    int transposed;                // with patches: the operand is the transpose, (KH*KW*C, B*OH*OW)
} Operand;

// A row-major (rows, cols) matrix with rows `ld` floats apart, and its
// transpose: the same memory read with the strides swapped.
Operand matrix_operand(const float *data, long ld) { return (Operand){data, ld, 1, NULL, 0}; }
Operand transposed_operand(const float *data, long ld) { return (Operand){data, 1, ld, NULL, 0}; }

Operand patches_operand(const float *image, const ConvShape *g, int transposed) {  // image (B, H, W, C)
    return (Operand){image, 0, 0, g, transposed};
}

/* ----------------------------------------------------------------------------
   Micro-kernels: one (MR, NR) tile of C from a packed strip of A and a
   packed panel of B. The contract, the same for every kernel:

   kernel(kc, a, rs_a, cs_a, b, c, ldc, start, ld_start) computes, for every
   i < MR and j < NR, with A(i, k) = a[i*rs_a + k*cs_a] and B(k, j) = b[k*NR + j],
       c[i*ldc + j] = fma(A(i, kc-1), B(kc-1, j), ... fma(A(i, 0), B(0, j), s) ...)
   where s = start[i*ld_start + j]: C's old value (start = c, ld_start =
   ldc), or the bias or zeros, one row for every row of the tile (ld_start
   = 0), loaded straight into the registers. Every kernel keeps this
   exactly, which is why they agree to the bit; only how many elements
   they compute at once differs.

   The strip is packed in one of two orders, whichever lets pack_a read A
   in memory order: by rows (rs_a = kc, cs_a = 1) or by columns (rs_a = 1,
   cs_a = MR). The panel is always packed k by k, NR floats each. */

typedef void MicroKernel(int kc, const float *a, long rs_a, long cs_a, const float *b,  // a (MR, kc), b (kc, NR)
                         float *c, long ldc, const float *start, long ld_start);        // c, start (MR, NR)
// start may be c itself: every kernel loads all of it before it stores
// anything (so no restrict on c and start).

typedef struct {
    const char *name;        // "portable", "avx2", "avx512"
    int nr;                  // the columns of C one call computes (MR rows)
    MicroKernel *kernel;
    int (*supported)(void);  // can this CPU run it?
} GemmKernel;

/* Every kernel computes MR = 6 rows of C at a time, and as many columns,
   NR, as its registers hold: 6 broadcasts of A and 2 loads of B feed 12
   FMAs per k, which keeps two FMA units busy (see the AVX2 kernel). One MR
   for all lets the packing of A be the same for every kernel. */
enum { MR = 6, GEMM_MAX_NR = 32 };
static const float GEMM_ZEROS[GEMM_MAX_NR];  // the start of a tile that starts from 0 (ld_start 0)

/* The portable kernel, 6x4: 24 scalar accumulators, c00..c53 (row, column).
   Per k it loads 6 values of A and 4 of B and does 24 fmaf. C's fmaf is
   exact (one rounding) everywhere: one instruction on arm64, a slow library
   call on x86 built without -mfma, which is why x86 has kernels of its own.
   It is the reference the others are tested against. */
void gemm_kernel_portable(int kc, const float *a, long rs_a, long cs_a, const float *b, float *c, long ldc,
                          const float *start, long ld_start) {
    float acc[MR][4];  // the tile of C: the compiler keeps all 24 in registers
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = start[i * ld_start + j];
    for (int k = 0; k < kc; k++, a += cs_a, b += 4)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i * rs_a], b[j], acc[i][j]);
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 4; j++) c[i * ldc + j] = acc[i][j];
}

int always_supported(void) { return 1; }

/* The x86 kernels, compiled for their instruction set with a target
   attribute and run only if the CPU has it (__builtin_cpu_supports, which
   also checks that the operating system saves the wide registers). Other
   machines never see them; -DNO_SIMD leaves them out on x86 too. */
#if HAVE_X86_KERNELS
int cpu_has_avx2_fma(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
int cpu_has_avx512f(void) { return __builtin_cpu_supports("avx512f"); }

/* AVX2 + FMA, 6x16. Twelve ymm registers (8 floats) hold the tile, row i
   in ci0, ci1; b0, b1 load 16 values of B a k; ai broadcasts one of A. Per
   k: 12 FMAs = 192 FLOPs in 6 cycles on two FMA units, the peak, and 12
   independent chains cover an FMA latency of 4-5 cycles. */
__attribute__((target("avx2,fma")))
void gemm_kernel_avx2(int kc, const float *a, long rs_a, long cs_a, const float *b, float *c, long ldc,
                      const float *start, long ld_start) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    c00 = _mm256_loadu_ps(start + 0 * ld_start), c01 = _mm256_loadu_ps(start + 0 * ld_start + 8);
    c10 = _mm256_loadu_ps(start + 1 * ld_start), c11 = _mm256_loadu_ps(start + 1 * ld_start + 8);
    c20 = _mm256_loadu_ps(start + 2 * ld_start), c21 = _mm256_loadu_ps(start + 2 * ld_start + 8);
    c30 = _mm256_loadu_ps(start + 3 * ld_start), c31 = _mm256_loadu_ps(start + 3 * ld_start + 8);
    c40 = _mm256_loadu_ps(start + 4 * ld_start), c41 = _mm256_loadu_ps(start + 4 * ld_start + 8);
    c50 = _mm256_loadu_ps(start + 5 * ld_start), c51 = _mm256_loadu_ps(start + 5 * ld_start + 8);
    for (int k = 0; k < kc; k++, a += cs_a, b += 16) {
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

/* AVX-512F, 6x32: the AVX2 kernel with registers twice as wide (zmm, 16
   floats): per k 12 FMAs of 16 lanes = 384 FLOPs, 64 FLOPs a cycle on two
   FMA units. */
__attribute__((target("avx512f")))
void gemm_kernel_avx512(int kc, const float *a, long rs_a, long cs_a, const float *b, float *c, long ldc,
                        const float *start, long ld_start) {
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    c00 = _mm512_loadu_ps(start + 0 * ld_start), c01 = _mm512_loadu_ps(start + 0 * ld_start + 16);
    c10 = _mm512_loadu_ps(start + 1 * ld_start), c11 = _mm512_loadu_ps(start + 1 * ld_start + 16);
    c20 = _mm512_loadu_ps(start + 2 * ld_start), c21 = _mm512_loadu_ps(start + 2 * ld_start + 16);
    c30 = _mm512_loadu_ps(start + 3 * ld_start), c31 = _mm512_loadu_ps(start + 3 * ld_start + 16);
    c40 = _mm512_loadu_ps(start + 4 * ld_start), c41 = _mm512_loadu_ps(start + 4 * ld_start + 16);
    c50 = _mm512_loadu_ps(start + 5 * ld_start), c51 = _mm512_loadu_ps(start + 5 * ld_start + 16);
    for (int k = 0; k < kc; k++, a += cs_a, b += 32) {
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
#endif

// Every kernel this build has, the portable one first and the widest last.
static const GemmKernel GEMM_KERNELS[] = {
    {"portable", 4, gemm_kernel_portable, always_supported},
#if HAVE_X86_KERNELS
    {"avx2", 16, gemm_kernel_avx2, cpu_has_avx2_fma},
    {"avx512", 32, gemm_kernel_avx512, cpu_has_avx512f},
#endif
};
enum { GEMM_KERNEL_COUNT = sizeof GEMM_KERNELS / sizeof GEMM_KERNELS[0] };

const GemmKernel *gemm_kernel_by_name(const char *name) {  // NULL: this build has none by that name
    for (int i = 0; i < GEMM_KERNEL_COUNT; i++)
        if (strcmp(GEMM_KERNELS[i].name, name) == 0) return &GEMM_KERNELS[i];
    return NULL;
}

int gemm_kernel_supported(const GemmKernel *kernel) { return kernel && kernel->supported(); }

// The widest kernel this CPU runs.
const GemmKernel *gemm_best_kernel(void) {
    for (int i = GEMM_KERNEL_COUNT - 1; i > 0; i--)
        if (GEMM_KERNELS[i].supported()) return &GEMM_KERNELS[i];
    return &GEMM_KERNELS[0];
}

/* ----------------------------------------------------------------------------
   Packing: copying blocks of A and B into the order the micro-kernel reads.

   pack_block copies a block of an operand's rows and columns into a dense
   array, row by row; a block of the transpose is a block of the operand
   read the other way round. Patches are read from the image here, which is
   all there is to im2col.

   Each row of a block of patches is made of "lines": for one kh, the KW * C
   columns of output pixel (b, oh, ow) are KW neighbouring pixels of image
   row ih = oh + kh - pad, side by side in memory, with zeros where kw
   reaches past the left or right edge, and all zeros when ih is above or
   below the image. */

// dst[o - from] = data[base + o] for lo <= o < hi, and 0 for the other o
// in [from, to): a line of an image with zero padding on both sides. base
// may be negative; only data[base + lo .. base + hi) is read.
void pack_line(float *dst,  // (to - from)
               const float *data, long base, long lo, long hi, long from, long to) {
    long inside_from = lo < from ? from : lo > to ? to : lo;
    long inside_to = hi > to ? to : hi < inside_from ? inside_from : hi;
    if (inside_from > from) memset(dst, 0, (size_t)(inside_from - from) * sizeof(float));
    memcpy(dst + (inside_from - from), data + base + inside_from, (size_t)(inside_to - inside_from) * sizeof(float));
    if (to > inside_to) memset(dst + (inside_to - from), 0, (size_t)(to - inside_to) * sizeof(float));
}

// Rows [row0, row0 + rows) and columns [col0, col0 + cols) of the operand
// (a matrix, or patches not transposed), row i of the block at dst + i * ld.
void pack_block(float *dst,  // (rows, ld), of which (rows, cols) written
                long ld, const Operand *op, long row0, int rows, long col0, int cols) {
    const ConvShape *g = op->patches;
    if (!g) {
        long rs = op->row_stride, cs = op->col_stride;
        const float *src = op->data + row0 * rs + col0 * cs;  // (rows, cols), rs and cs apart
        for (int i = 0; i < rows; i++, dst += ld, src += rs) {
            if (cs != 1)
                for (int j = 0; j < cols; j++) dst[j] = src[j * cs];
            else if (cols == MR) memcpy(dst, src, MR * sizeof(float));  // a strip's width: a few moves, no call
            else memcpy(dst, src, (size_t)cols * sizeof(float));
        }
        return;
    }
    int H = g->height, W = g->width, C = g->channels, KW = g->kernel_w, pad = g->pad, OH = g->out_h, OW = g->out_w;
    long line = (long)KW * C;
    // Where the block starts takes divisions, once; from there on every position
    // is counted up (a division costs as much as copying a dozen floats).
    int ow = (int)(row0 % OW), oh = (int)(row0 / OW % OH), b = (int)(row0 / OW / OH);
    for (int i = 0; i < rows; i++, dst += ld) {
        long lo = (long)(pad - ow > 0 ? pad - ow : 0) * C;  // the columns of a line inside the image
        long hi = (long)(W + pad - ow < KW ? W + pad - ow : KW) * C;
        float *d = dst;
        long from = col0 % line;
        for (long kh = col0 / line, left = cols; left > 0; kh++, from = 0) {
            long to = from + left < line ? from + left : line, ih = oh + kh - pad;
            long base = (((long)b * H + ih) * W + ow - pad) * C;  // where kw = 0, ci = 0 would be
            if (ih < 0 || ih >= H) memset(d, 0, (size_t)(to - from) * sizeof(float));
            else pack_line(d, op->data, base, lo, hi, from, to);
            d += to - from;
            left -= to - from;
        }
        if (++ow == OW) {
            ow = 0;
            if (++oh == OH) oh = 0, b++;
        }
    }
}

/* Is a strip of A packed by rows? When its rows run along memory: a
   row-major matrix, or patches (lines of KW * C floats). Otherwise by
   columns, MR neighbouring floats per k. Either way the packing reads
   memory in order. */
int pack_a_by_rows(const Operand *A) { return A->patches ? !A->transposed : A->col_stride == 1; }

/* A block of the transposed patches, packed by columns, pixel by pixel.
   Row r of the transposed patches is weight (kh, j): j = kw * C + ci runs
   along kernel row kh's line; column k is output pixel (b, oh, ow). So the
   MR weights of a strip that lie in one line, inside the image, are MR
   neighbouring floats of pixel k's line: one short copy. Strips that cross
   a line's end or the image's edge go float by float. */
void pack_patches_by_columns(float *packed,  // (ceil(rows / MR), kc, MR)
                             const Operand *A, long row0, int rows, long k0, int kc) {
    const ConvShape *g = A->patches;
    int H = g->height, W = g->width, C = g->channels, KW = g->kernel_w, pad = g->pad, OH = g->out_h, OW = g->out_w;
    long line = (long)KW * C, strip_floats = (long)MR * kc;
    int ow = (int)(k0 % OW), oh = (int)(k0 / OW % OH), b = (int)(k0 / OW / OH);
    long kh0 = row0 / line, j0 = row0 % line;  // the block's first row
    for (int k = 0; k < kc; k++) {
        long lo = (long)(pad - ow > 0 ? pad - ow : 0) * C;  // the columns of a line inside the image
        long hi = (long)(W + pad - ow < KW ? W + pad - ow : KW) * C;
        long kh = kh0, j = j0;
        float *d = packed + (size_t)k * MR;  // (MR) this pixel's column of the first strip
        for (int s = 0; s < rows; s += MR, d += strip_floats) {
            long ih = oh + kh - pad, base = (((long)b * H + ih) * W + ow - pad) * C;  // line kh starts at base
            if (rows - s >= MR && j + MR <= line && lo <= j && j + MR <= hi && ih >= 0 && ih < H) {
                memcpy(d, A->data + base + j, MR * sizeof(float));
                j += MR;
            } else {
                for (int m = 0; m < MR; m++, j++) {
                    if (j == line) j = 0, kh++, ih++, base += (long)W * C;
                    int inside = s + m < rows && ih >= 0 && ih < H && j >= lo && j < hi;
                    d[m] = inside ? A->data[base + j] : 0.0f;
                }
            }
            if (j >= line) j -= line, kh++;
        }
        if (++ow == OW) {
            ow = 0;
            if (++oh == OH) oh = 0, b++;
        }
    }
}

// Rows [k0, k0 + kc) and columns [col0, col0 + cols) of B, as panels of nr
// columns, each stored k by k; the columns of the last panel beyond `cols`
// are zeros. B is a matrix or its transpose.
void pack_b(float *packed,  // (ceil(cols / nr), kc, nr)
            const Operand *B, long k0, int kc, long col0, int cols, int nr) {
    for (int j = 0; j < cols; j += nr, packed += (size_t)kc * nr) {
        int valid = cols - j < nr ? cols - j : nr;
        pack_block(packed, nr, B, k0, kc, col0 + j, valid);
        for (int k = 0; k < kc && valid < nr; k++)
            memset(packed + (size_t)k * nr + valid, 0, (size_t)(nr - valid) * sizeof(float));
    }
}

// Rows [row0, row0 + rows) and columns [k0, k0 + kc) of A, as strips of MR
// rows, one after the other; the rows of the last strip beyond `rows` are
// zeros. Strip s starts at packed + s * MR * kc.
void pack_a(float *packed,  // (ceil(rows / MR), MR * kc)
            const Operand *A, long row0, int rows, long k0, int kc) {
    if (A->patches && A->transposed) {
        pack_patches_by_columns(packed, A, row0, rows, k0, kc);
        return;
    }
    if (!pack_a_by_rows(A)) {  // by columns: A's strips are the panels, MR wide, of its transpose
        Operand At = {A->data, A->col_stride, A->row_stride, NULL, 0};  // a matrix: its strides swapped
        pack_b(packed, &At, k0, kc, row0, rows, MR);
        return;
    }
    for (int s = 0; s < rows; s += MR, packed += (size_t)MR * kc) {
        int valid = rows - s < MR ? rows - s : MR;
        pack_block(packed, kc, A, row0 + s, valid, k0, kc);
        memset(packed + (size_t)valid * kc, 0, (size_t)(MR - valid) * kc * sizeof(float));
    }
}

/* ----------------------------------------------------------------------------
   Blocking: how big the packed blocks are.

   The micro-kernel streams an (MR, kc) strip of A and a (kc, NR) panel of
   B and keeps C in registers. Around it, three block sizes choose what
   stays in which cache, for a core with 32 KB of L1 data or more and
   512 KB of L2 or more, and an L3 that all cores share:
   - KC = 256: the strip of A in use, MR * KC * 4 = 6 KB, and the panel of
     B, KC * NR * 4 = 16 KB for AVX2 (32 KB for AVX-512), fit in L1 together.
     Longer k spreads the loads and stores of the C tile over more FMAs.
   - MC = 240: a task's packed block of A, MC * KC * 4 = 240 KB, stays in
     L2 while every panel of B passes over it. A multiple of MR.
   - NC = 256: the packed block of B, KC * NC * 4 = 256 KB, stays in L2 or
     L3, shared by every task. Our widest layer has 256 outputs.
   None is a sharp optimum: halving or doubling one keeps its block in the
   same cache. `make bench` sweeps others (Blocking); the bits never change.

   Tasks: within one block of B, the M rows of C are cut into tiles of at
   most MC rows, a multiple of MR; when M is one such tile (a batch of 64
   rows), its columns into tiles of whole panels instead, each packing its
   own, so that no core reads panels from another's cache. Finer while
   there are fewer than TASKS_WANTED and each keeps MIN_TASK_FLOPS (waking
   a thread costs about a microsecond); from the shape, never the threads. */
enum { KC = 256, MC = 240, NC = 256, TASKS_WANTED = 4 };
#define MIN_TASK_FLOPS 1e6

typedef struct { int kc, mc, nc; } Blocking;  // k in blocks of at most kc; a task's tile of C at most mc x nc

static const Blocking DEFAULT_BLOCKING = {KC, MC, NC};
//@ from 8
// Chapter 8's GEMM in bfloat16 (bf16.c): its kernels, buffers, and the loops on bf16 pairs.
typedef struct Bf16Kernel Bf16Kernel;
void bf16_buffers_free(void *buffers);
ParallelTask pack_b_task_bf16, gemm_tile_bf16;
//@ end

typedef struct GemmContext {
    const GemmKernel *kernel;
    Blocking blocking;
    Workers *workers;
    float *packed_a;  // (threads, a_floats): each worker's packed block of A, mc * kc floats
    float *packed_b;  // (nc * kc): the block of B in use, shared (tiles of columns pack their own panels)
    size_t a_floats;
    void *memory;     // what packed_a and packed_b were carved from
//@ from 8
    const Bf16Kernel *bf16;  // not NULL: the operands are rounded to bf16 and multiplied by this kernel
    void *bf16_buffers;      // its packed pairs (bf16.c)
//@ end
} GemmContext;

long round_up(long x, long multiple) { return (x + multiple - 1) / multiple * multiple; }

// A context for `kernel` (which the CPU must support) and a pool of
// `threads` threads, with packing buffers blocked as `b` says. The
// blocking changes the speed only, never a bit of the results.
GemmContext *gemm_context_new_blocked(const GemmKernel *kernel, int threads, Blocking b) {
    require(gemm_kernel_supported(kernel), "gemm_context_new: kernel %s does not run on this CPU",
            kernel ? kernel->name : "NULL");
    require(b.kc >= 1 && b.mc >= MR && b.mc % MR == 0 && b.nc >= kernel->nr && b.nc % GEMM_MAX_NR == 0,
            "gemm_context_new: blocking kc=%d mc=%d nc=%d (mc must be a multiple of %d, nc of %d)", b.kc, b.mc,
            b.nc, MR, GEMM_MAX_NR);
    GemmContext *ctx = xmalloc(sizeof *ctx);
    *ctx = (GemmContext){.kernel = kernel, .blocking = b, .workers = workers_new(threads)};
    // Whole cache lines each, so no two threads ever write the same line.
    enum { CACHE_LINE = 64, LINE_FLOATS = CACHE_LINE / sizeof(float) };
    ctx->a_floats = (size_t)round_up((long)b.mc * b.kc, LINE_FLOATS);
    size_t b_floats = (size_t)b.nc * b.kc;
    ctx->memory = xmalloc(((size_t)ctx->workers->threads * ctx->a_floats + b_floats) * sizeof(float) + CACHE_LINE);
    ctx->packed_a = (float *)(((uintptr_t)ctx->memory + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE);
    ctx->packed_b = ctx->packed_a + (size_t)ctx->workers->threads * ctx->a_floats;
    return ctx;
}

GemmContext *gemm_context_new(const GemmKernel *kernel, int threads) {
    return gemm_context_new_blocked(kernel, threads, DEFAULT_BLOCKING);
}

void gemm_context_free(GemmContext *ctx) {
    if (!ctx) return;
    workers_free(ctx->workers);
//@ from 8
    bf16_buffers_free(ctx->bf16_buffers);
//@ end
    free(ctx->memory);
    free(ctx);
}

/* ----------------------------------------------------------------------------
   The driver: five loops around the micro-kernel.

       for jc in N, step nc          loop 5: a block of columns
         for pc in K, step kc        loop 4: a block of the sum; pack B's (kc, nc) block, shared
           for ic in M, step mc      loop 3: a tile of C, one task; pack A's (mc, kc) block
             for jr in nc, step NR   loop 2: a panel of B
               for ir in mc, step MR loop 1: a strip of A -> micro-kernel

   Determinism. Element C(i, j) ends up as the chain of the definition
   (top of the file), because
   - within a block of k the micro-kernel does exactly that, in order, with
     one rounding per step (fmaf, _mm256_fmadd_ps and _mm512_fmadd_ps all
     round a*b+c once);
   - between blocks of k (loop 4, in order) the partial sum is stored to C
     and reloaded, which changes no bit;
   - the blocking and the tasks choose which elements are computed
     together, never what is added to an element or in which order; the
     zeros padding the packed edges fall in rows and columns of C that are
     never written back, and k is never padded;
   - tasks never share an element of C.
   (gcc -std=c11 does not contract a*b+c on its own, the chapter tells
   clang not to with STDC FP_CONTRACT OFF, and there is no -ffast-math.) */

typedef struct {
    const GemmContext *ctx;
    int M, N, K;
    const Operand *A, *B;
    float *C;                        // (M, N), rows ldc floats apart
    long ldc;
    const float *bias;               // (N) or NULL
    int accumulate;
    int jc, nc, pc, kc;              // the block of B in use: columns [jc, jc+nc), k in [pc, pc+kc)
    int tile_m;                      // task t is rows [t * tile_m, (t + 1) * tile_m) of C,
    int tile_n;                      // or, when tile_n > 0, all rows and columns [t * tile_n, (t + 1) * tile_n)
} GemmJob;

// Loop 4's packing, one panel of B a task.
void pack_b_task(void *context, int panel, int worker) {
    (void)worker;
    const GemmJob *job = context;
    int nr = job->ctx->kernel->nr, col = panel * nr;
    int cols = job->nc - col < nr ? job->nc - col : nr;
    pack_b(job->ctx->packed_b + (size_t)panel * job->kc * nr, job->B, job->pc, job->kc, job->jc + col, cols, nr);
}

// Loops 3, 2 and 1: one tile of C for the block of B in use. A tile of
// columns packs its panels of B itself: no other task reads them.
void gemm_tile(void *context, int task, int worker) {
    const GemmJob *job = context;
    const GemmKernel *kernel = job->ctx->kernel;
    int nr = kernel->nr, kc = job->kc, col0 = job->tile_n ? task * job->tile_n : 0;
    int ic = job->tile_n ? 0 : task * job->tile_m, rows = job->M - ic < job->tile_m ? job->M - ic : job->tile_m;
    int end = job->tile_n && col0 + job->tile_n < job->nc ? col0 + job->tile_n : job->nc;  // columns [col0, end)
    for (int jr = col0; job->tile_n && jr < end; jr += nr) pack_b_task(context, jr / nr, worker);
    float *packed_a = job->ctx->packed_a + (size_t)worker * job->ctx->a_floats;  // (rows / MR, MR, kc)
    pack_a(packed_a, job->A, ic, rows, job->pc, kc);
    int by_rows = pack_a_by_rows(job->A);
    long rs_a = by_rows ? kc : 1, cs_a = by_rows ? 1 : MR;
    // Where the sums start: from the bias, zeros or C's old value in the
    // first block of k, from C (the sums so far) in every later one.
    int first = job->pc == 0, from_c = !first || job->accumulate;
    const float *bias = first ? job->bias : NULL;  // (N)
    for (int jr = col0; jr < end; jr += nr) {
        int w = end - jr < nr ? end - jr : nr;
        const float *b = job->ctx->packed_b + (size_t)jr * kc;  // (kc, nr) panel
        for (int ir = 0; ir < rows; ir += MR) {
            const float *a = packed_a + (size_t)ir * kc;  // (MR, kc) strip
            float *c = job->C + (size_t)(ic + ir) * job->ldc + job->jc + jr;  // (MR, nr) tile, rows ldc apart
            int h = rows - ir < MR ? rows - ir : MR;
            if (h == MR && w == nr) {
                const float *start = bias ? bias + job->jc + jr : from_c ? c : GEMM_ZEROS;
                kernel->kernel(kc, a, rs_a, cs_a, b, c, job->ldc, start, start == c ? job->ldc : 0);
                continue;
            }
            // An edge tile: the kernel works on a full tile in scratch, and
            // only the h x w part that exists in C is copied in and out.
            float scratch[MR * GEMM_MAX_NR] = {0};  // (MR, nr)
            for (int y = 0; y < h && (bias || from_c); y++)
                memcpy(scratch + y * nr, bias ? bias + job->jc + jr : c + y * job->ldc, (size_t)w * sizeof(float));
            kernel->kernel(kc, a, rs_a, cs_a, b, scratch, nr, scratch, nr);
            for (int y = 0; y < h; y++) memcpy(c + y * job->ldc, scratch + y * nr, (size_t)w * sizeof(float));
        }
    }
}

// The operand has `rows` x `cols` elements and describes them sensibly.
void check_operand(const Operand *op, long rows, long cols, const char *name) {
    const ConvShape *g = op->patches;
    require(op->data || rows == 0 || cols == 0, "gemm: operand %s has no data", name);
    if (!g) return;
    check_conv_shape(g, "gemm");
    long want_rows = op->transposed ? (long)conv_patch_size(g) : (long)conv_rows(g);
    long want_cols = op->transposed ? (long)conv_rows(g) : (long)conv_patch_size(g);
    require(rows == want_rows && cols == want_cols, "gemm: operand %s is (%ld, %ld) as used, but its "
            "patches make a (%ld, %ld) matrix", name, rows, cols, want_rows, want_cols);
}

// C = (accumulate ? C : 0) + bias on every row (when not NULL) + A @ B.
void gemm_run(const GemmContext *ctx, int M, int N, int K, Operand A, Operand B, float *C, long ldc,
              int accumulate, const float *bias) {
    require(M >= 0 && N >= 0 && K >= 0 && ldc >= N, "gemm: M=%d N=%d K=%d ldc=%ld", M, N, K, ldc);
    require(!B.patches, "gemm: B is a matrix; patches go in A");
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
    const Blocking *blk = &ctx->blocking;
    int nr = ctx->kernel->nr;
    // Blocks of k as even as they can be (K = 288 is 144 + 144, not 256 + 32):
    // a short last block would load and store all of C again for little work.
    // Patches go in whole lines where a line fits (K = 288 of lines of 96 is
    // 192 + 96), so that packing copies whole lines, one call each.
    int unit = A.patches && !A.transposed ? A.patches->kernel_w * A.patches->channels : 1;
    unit = unit <= blk->kc ? unit : 1;
//@ from 8
    // bf16 multiplies k in pairs (0, 1), (2, 3), ...: with every block but
    // the last of even length, the pairs and so the bits do not depend on
    // the blocking. (kc is even in a bf16 context.)
    if (ctx->bf16 && unit % 2) unit = 2 * unit <= blk->kc ? 2 * unit : 2;
//@ end
    int units = (K + unit - 1) / unit, k_blocks = (units + blk->kc / unit - 1) / (blk->kc / unit);
    int kc_even = (units + k_blocks - 1) / k_blocks * unit;
    GemmJob job = {ctx, M, N, K, &A, &B, C, ldc, bias, accumulate, 0, 0, 0, 0, 0, 0};
    for (job.jc = 0; job.jc < N; job.jc += blk->nc) {                              // loop 5
        job.nc = N - job.jc < blk->nc ? N - job.jc : blk->nc;
        // The tasks, from the shape alone: tiles of rows, or of columns when M is one block of rows.
        int panels = (job.nc + nr - 1) / nr, by_columns = M <= blk->mc && panels > 1;
//@ from 8
        by_columns = by_columns && !ctx->bf16;  // bf16.c's tasks are tiles of rows
//@ end
        int most = by_columns ? panels : (M + MR - 1) / MR, tiles = by_columns ? 1 : (M + blk->mc - 1) / blk->mc;
        while (tiles < TASKS_WANTED && tiles < most && 2.0 * M * job.nc * kc_even / (tiles + 1) >= MIN_TASK_FLOPS)
            tiles++;
        job.tile_m = by_columns ? M : (int)round_up((M + tiles - 1) / tiles, MR);
        job.tile_n = by_columns ? (panels + tiles - 1) / tiles * nr : 0;
        int tasks = by_columns ? (job.nc + job.tile_n - 1) / job.tile_n : (M + job.tile_m - 1) / job.tile_m;
        Workers *w = tasks > 1 ? ctx->workers : NULL;  // one task: B packed alone, not waking the pool every block
        for (job.pc = 0; job.pc < K; job.pc += kc_even) {                          // loop 4
            job.kc = K - job.pc < kc_even ? K - job.pc : kc_even;
//@ from 1 to 7
            if (!job.tile_n) parallel_for(w, panels, pack_b_task, &job);  // (tiles of columns pack their own)
            parallel_for(w, tasks, gemm_tile, &job);                                // loops 3, 2, 1
//@ end
//@ from 8
            if (!job.tile_n) parallel_for(w, panels, ctx->bf16 ? pack_b_task_bf16 : pack_b_task, &job);
            parallel_for(w, tasks, ctx->bf16 ? gemm_tile_bf16 : gemm_tile, &job);  // loops 3, 2, 1
//@ end
        }
    }
}

// C (M, N), row stride ldc: C = (accumulate ? C : 0) + A (M, K) @ B (K, N).
void gemm(const GemmContext *ctx, int M, int N, int K, Operand A, Operand B, float *C, long ldc, int accumulate) {
    gemm_run(ctx, M, N, K, A, B, C, ldc, accumulate, NULL);
}

// C = `bias` (N) on every row + A @ B: a layer's bias and its product, in one pass
// over C. The same bits as filling C with the bias, then accumulating.
void gemm_with_bias(const GemmContext *ctx, int M, int N, int K, Operand A, Operand B, float *C, long ldc,
                    const float *bias) {
    require(bias != NULL, "gemm_with_bias: no bias");
    gemm_run(ctx, M, N, K, A, B, C, ldc, 0, bias);
}
//@ end
