//@ from 8
/* ----------------------------------------------------------------------------
   Residual and depthwise-separable networks (book.md, "Chapter 8").

   What this is: the ops the two new kinds of network need, and the networks.
   - global_avg_pool: (B, H, W, C) -> (B, C), each channel's mean over the
     image; it replaces the flatten and the large dense layer;
   - depthwise_conv: one 3x3 filter per channel, "same" padding, stride 1,
     with a bias. A naive version defines it; the fast one runs along the
     channels, which NHWC keeps side by side, so the compiler can vectorise
     it, and it gives the naive version's bits;
   - pointwise_conv: the 1x1 convolution. An NHWC map is already a
     (B*H*W, C) matrix, so this is that matrix times the (C, OC) kernel:
     chapter 4's blocked GEMM as it is, no patches;
   - the skip itself is chapter 3's add, whose backward hands the gradient
     to both inputs unchanged.
   The networks downsample with chapter 4's 2x2 max pool, as the deeper CNN
   does, not with a strided convolution: the blocked convolution has no
   stride, and a pool keeps the comparison with the deeper CNN to one
   change at a time.
   What it is not: ResNet-50 or MobileNet. The networks are small, for 28x28
   images, with widths chosen to cost what the deeper CNN costs (resnet,
   plain) or a quarter of it (separable). */

/* ---- Global average pooling -------------------------------------------------- */

// One image: out (C) = the mean of x (HW, C) over its HW positions, the
// positions added in order, the channels side by side.
void global_avg_pool_forward(float *restrict out, const float *restrict x, int HW, int C) {
    for (int c = 0; c < C; c++) out[c] = 0.0f;
    for (int p = 0; p < HW; p++)
        for (int c = 0; c < C; c++) out[c] += x[(size_t)p * C + c];
    for (int c = 0; c < C; c++) out[c] /= (float)HW;
}

// Each position moved its channel's mean by 1/HW of itself.
void global_avg_pool_backward(float *restrict dx, const float *restrict dout, int HW, int C) {
    for (int p = 0; p < HW; p++)
        for (int c = 0; c < C; c++) dx[(size_t)p * C + c] += dout[c] / (float)HW;
}

// global_avg_pool: x (B, H, W, C) -> (B, C), an image per task.
void global_avg_pool_item_forward(const Graph *g, Node *n, int i) {
    (void)g;
    const Node *x = n->inputs[0];
    global_avg_pool_forward(n->value + i * n->item_size, x->value + i * x->item_size, x->shape[1] * x->shape[2],
                            x->shape[3]);
}

void global_avg_pool_item_backward(const Graph *g, Node *n, int i) {
    (void)g;
    Node *x = n->inputs[0];
    global_avg_pool_backward(x->grad + i * x->item_size, n->grad + i * n->item_size, x->shape[1] * x->shape[2],
                             x->shape[3]);
}

// The input, not the output, is what is large here: one task per image
// when it is worth waking the threads for.
void global_avg_pool_op_forward(Node *n, Graph *g) {
    ItemJob job = {g, n, global_avg_pool_item_forward};
    parallel_for(n->inputs[0]->size < ITEMS_PARALLEL_FROM ? NULL : graph_workers(g), n->shape[0], item_task, &job);
}

void global_avg_pool_op_backward(Node *n, Graph *g) {
    ItemJob job = {g, n, global_avg_pool_item_backward};
    parallel_for(n->inputs[0]->size < ITEMS_PARALLEL_FROM ? NULL : graph_workers(g), n->shape[0], item_task, &job);
}

/* ---- The depthwise convolution ------------------------------------------------ */


/* out[b][y][x][c] = bias[c] + the sum over i, j in 0..2 of
   x[b][y+i-1][x+j-1][c] * kernel[i][j][c], with 0 outside the image.
   Channel c sees only channel c: 9 weights per channel, where an ordinary
   3x3 convolution has 9 C per output channel. The kernel is (3, 3, C, 1),
   as Keras stores it (so Glorot's fans are 9C and 9, as Keras's are).

   The naive version defines the order of every sum: the taps in order
   (i, j) from 0, then the bias. The product and the sum are two
   statements, so no compiler may fuse them into one rounding. */
void depthwise_forward_naive(float *out,           // (B, H, W, C)
                             const float *x,       // (B, H, W, C)
                             const float *kernel,  // (3, 3, C)
                             const float *bias,    // (C)
                             int B, int H, int W, int C) {
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int x0 = 0; x0 < W; x0++)
                for (int c = 0; c < C; c++) {
                    float sum = 0.0f;
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++) {
                            int yy = y + i - 1, xx = x0 + j - 1;
                            if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                            float product = x[(((size_t)b * H + yy) * W + xx) * C + c] * kernel[(i * 3 + j) * C + c];
                            sum += product;
                        }
                    out[(((size_t)b * H + y) * W + x0) * C + c] = sum + bias[c];
                }
}

/* The backward pass, naive. dx gathers, for each input position, the taps
   that read it: dx[y][x] += the sum over i, j of dout[y+1-i][x+1-j] *
   kernel[i][j]. The kernel's and the bias's gradients are summed image by
   image (each image's sum over its positions, in order), and the images'
   sums added in order: the order the fast version's one task per image
   needs, written out here so that both give the same bits. */
void depthwise_backward_naive(float *dx,            // (B, H, W, C) or NULL
                              float *dkernel,       // (3, 3, C)
                              float *dbias,         // (C)
                              const float *dout,    // (B, H, W, C)
                              const float *x,       // (B, H, W, C)
                              const float *kernel,  // (3, 3, C)
                              int B, int H, int W, int C) {
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * H * W * C, *gb = dout + (size_t)b * H * W * C;
        for (int y = 0; y < H && dx; y++)
            for (int x0 = 0; x0 < W; x0++)
                for (int c = 0; c < C; c++) {
                    float sum = 0.0f;
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++) {
                            int yy = y + 1 - i, xx = x0 + 1 - j;
                            if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                            float product = gb[((size_t)yy * W + xx) * C + c] * kernel[(i * 3 + j) * C + c];
                            sum += product;
                        }
                    dx[(((size_t)b * H + y) * W + x0) * C + c] += sum;
                }
        for (int t = 0; t < 10; t++)  // taps 0..8, then the bias
            for (int c = 0; c < C; c++) {
                float sum = 0.0f;
                for (int y = 0; y < H; y++)
                    for (int x0 = 0; x0 < W; x0++) {
                        int yy = y + t / 3 - 1, xx = x0 + t % 3 - 1;
                        if (t < 9 && (yy < 0 || yy >= H || xx < 0 || xx >= W)) continue;
                        float product = gb[((size_t)y * W + x0) * C + c] * (t < 9 ? xb[((size_t)yy * W + xx) * C + c] : 1.0f);
                        sum += product;
                    }
                if (t < 9) dkernel[t * C + c] += sum;
                else dbias[c] += sum;
            }
    }
}

/* The fast version, one image per task, a row at a time. For one tap
   (i, j), the outputs of row y read input row y+i-1 shifted by j-1
   pixels: a run of pixels that is contiguous in both (less a pixel at the
   edges). With the tap's C weights written out once along a whole row,
   `kernel_rows` (9, W, C), each tap is one pass of sum += a * b along
   three contiguous rows: a loop the compiler vectorises, as wide as the
   CPU allows. Every output value still adds its taps in the naive order,
   (i, j) from 0, one vector lane per value, so the bits are the naive
   version's at any vector width. `restrict` promises the compiler that
   the arrays do not overlap, without which it would not vectorise. The
   product and the sum are two statements: no fused multiply-add. */
void depthwise_taps(float *restrict sum, const float *restrict a, const float *restrict b, int C) {
    for (int c = 0; c < C; c++) {
        float product = a[c] * b[c];
        sum[c] += product;
    }
}

void multiply_add_run(float *restrict sum, const float *restrict a, const float *restrict b, size_t n) {
    for (size_t e = 0; e < n; e++) {
        float product = a[e] * b[e];
        sum[e] += product;
    }
}

#if HAVE_X86_KERNELS
// The same loop compiled for wider vectors, where the CPU has them: the
// same two roundings per value, so the same bits.
__attribute__((target("avx2"))) void multiply_add_run_avx2(float *restrict sum, const float *restrict a,
                                                             const float *restrict b, size_t n) {
    for (size_t e = 0; e < n; e++) {
        float product = a[e] * b[e];
        sum[e] += product;
    }
}

__attribute__((target("avx512f"))) void multiply_add_run_avx512(float *restrict sum, const float *restrict a,
                                                                  const float *restrict b, size_t n) {
    for (size_t e = 0; e < n; e++) {
        float product = a[e] * b[e];
        sum[e] += product;
    }
}
#endif

typedef void MultiplyAddRun(float *restrict sum, const float *restrict a, const float *restrict b, size_t n);

// The loop for the instruction set of the GEMM's micro-kernel, which
// --kernel chose and the CPU was checked to have (portable: plain C).
MultiplyAddRun *multiply_add_run_for(const GemmContext *ctx) {
#if HAVE_X86_KERNELS
    if (strcmp(ctx->kernel->name, "avx512") == 0) return multiply_add_run_avx512;
    if (strcmp(ctx->kernel->name, "avx2") == 0) return multiply_add_run_avx2;
#endif
    (void)ctx;
    return multiply_add_run;
}

// kernel_rows[t][p][c] = kernel[t][c] for every pixel p of a row.
void depthwise_kernel_rows(float *kernel_rows, const float *kernel, int W, int C) {
    for (int t = 0; t < 9; t++)
        for (int p = 0; p < W; p++) memcpy(kernel_rows + ((size_t)t * W + p) * C, kernel + t * C, (size_t)C * sizeof(float));
}

// sum[c] += a[p][c] * b[p][c] over `pixels` pixels: one tap's weight gradient along a row.
void depthwise_row_products(float *restrict sum, const float *restrict a, const float *restrict b, int pixels, int C) {
    for (int p = 0; p < pixels; p++) depthwise_taps(sum, a + (size_t)p * C, b + (size_t)p * C, C);
}

// The pixels of a row that tap column j reaches, shifted by `shift` = j - 1
// (or 1 - j for the input gradient): [first, first + count).
void tap_columns(int shift, int W, int *first, int *count) {
    *first = shift < 0 ? -shift : 0;
    *count = W - (shift < 0 ? -shift : shift);
}

#if HAVE_X86_KERNELS
/* The forward pass and the input gradient on AVX-512, sixteen channels of
   a position at a time: the nine taps' products added in a register, in
   the naive order, then what the output starts from (the bias, or dx
   itself when bias is NULL), and each output written once. Row by row,
   each tap is added into a row in memory: nine reads and writes of every
   value. `direction` 1 is the forward pass, tap (i, j) reading position
   (y + i - 1, x + j - 1); -1 the input gradient, reading (y + 1 - i,
   x + 1 - j). */
__attribute__((target("avx512f")))
void depthwise_taps_avx512(float *restrict out, const float *restrict in, const float *restrict kernel_rows,
                           const float *restrict bias, int direction, int H, int W, int C) {  // out, in (H, W, C)
    size_t row = (size_t)W * C;
    for (int y = 0; y < H; y++)
        for (int p = 0; p < W; p++)
            for (int c0 = 0; c0 < C; c0 += 16) {
                __mmask16 lanes = C - c0 >= 16 ? 0xffff : (__mmask16)((1u << (C - c0)) - 1);
                __m512 sum = _mm512_setzero_ps();
                for (int t = 0; t < 9; t++) {
                    int yy = y + direction * (t / 3 - 1), xx = p + direction * (t % 3 - 1);
                    if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                    __m512 product = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, in + yy * row + (size_t)xx * C + c0),
                                                   _mm512_maskz_loadu_ps(lanes, kernel_rows + t * row + c0));
                    sum = _mm512_add_ps(sum, product);
                }
                float *o = out + y * row + (size_t)p * C + c0;
                __m512 start = _mm512_maskz_loadu_ps(lanes, bias ? bias + c0 : o);
                _mm512_mask_storeu_ps(o, lanes, _mm512_add_ps(sum, start));
            }
}
#endif

void depthwise_forward_image(MultiplyAddRun *run, float *restrict out, const float *restrict x,
                             const float *restrict kernel_rows, const float *restrict bias, int H, int W,
                             int C) {  // out, x (H, W, C)
#if HAVE_X86_KERNELS
    if (run == multiply_add_run_avx512) {
        depthwise_taps_avx512(out, x, kernel_rows, bias, 1, H, W, C);
        return;
    }
#endif
    size_t row = (size_t)W * C;
    for (int y = 0; y < H; y++) {
        float *o = out + y * row;
        for (size_t e = 0; e < row; e++) o[e] = 0.0f;
        for (int i = 0; i < 3; i++) {
            int yy = y + i - 1;
            if (yy < 0 || yy >= H) continue;
            for (int j = 0; j < 3; j++) {
                int first, count;
                tap_columns(j - 1, W, &first, &count);
                if (count > 0)
                    run(o + (size_t)first * C, x + yy * row + (size_t)(first + j - 1) * C,
                        kernel_rows + (i * 3 + j) * row, (size_t)count * C);
            }
        }
        for (int p = 0; p < W; p++)
            for (int c = 0; c < C; c++) o[(size_t)p * C + c] += bias[c];
    }
}

/* One image's sums for the kernel's and the bias's gradients, `part`
   (10, C): taps 0..8, then the bias; each image's own, which the caller
   adds up over the images in order. */
void depthwise_kernel_sums(float *restrict part, const float *restrict dout, const float *restrict x, int H, int W,
                           int C) {  // dout, x (H, W, C)
    size_t row = (size_t)W * C;
    memset(part, 0, (size_t)10 * C * sizeof(float));
    for (int y = 0; y < H; y++) {
        const float *g = dout + y * row;
        for (int i = 0; i < 3; i++) {
            int yy = y + i - 1;
            if (yy < 0 || yy >= H) continue;
            for (int j = 0; j < 3; j++) {
                int first, count;
                tap_columns(j - 1, W, &first, &count);
                if (count > 0)
                    depthwise_row_products(part + (i * 3 + j) * C, g + (size_t)first * C,
                                           x + yy * row + (size_t)(first + j - 1) * C, count, C);
            }
        }
        for (int p = 0; p < W; p++)
            for (int c = 0; c < C; c++) part[9 * C + c] += g[(size_t)p * C + c];
    }
}

typedef void KernelSums(float *restrict part, const float *restrict dout, const float *restrict x, int H, int W, int C);

#if HAVE_X86_KERNELS
/* The same sums on AVX-512, sixteen channels at a time, the same bits.
   Above, one tap's sum along a row waits at every pixel for the addition
   before it. Here the ten sums sit in ten registers for the whole image,
   and each pixel adds into all of them: ten additions in flight instead of
   one. Every lane still adds its products in the naive order (row by row,
   pixel by pixel, the taps that fall outside the image left out). */
__attribute__((target("avx512f")))
void depthwise_kernel_sums_avx512(float *restrict part, const float *restrict dout, const float *restrict x, int H,
                                  int W, int C) {
    for (int c0 = 0; c0 < C; c0 += 16) {
        __mmask16 lanes = C - c0 >= 16 ? 0xffff : (__mmask16)((1u << (C - c0)) - 1);
        __m512 sum[10];
        for (int t = 0; t < 10; t++) sum[t] = _mm512_setzero_ps();
        for (int y = 0; y < H; y++)
            for (int p = 0; p < W; p++) {
                __m512 g = _mm512_maskz_loadu_ps(lanes, dout + ((size_t)y * W + p) * C + c0);
                for (int t = 0; t < 9; t++) {
                    int yy = y + t / 3 - 1, xx = p + t % 3 - 1;
                    if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                    __m512 product = _mm512_mul_ps(g, _mm512_maskz_loadu_ps(lanes, x + ((size_t)yy * W + xx) * C + c0));
                    sum[t] = _mm512_add_ps(sum[t], product);
                }
                sum[9] = _mm512_add_ps(sum[9], g);
            }
        for (int t = 0; t < 10; t++) _mm512_mask_storeu_ps(part + t * C + c0, lanes, sum[t]);
    }
}
#endif

// The sums that go with the loop --kernel chose: AVX-512 has its own.
KernelSums *depthwise_kernel_sums_for(MultiplyAddRun *run) {
#if HAVE_X86_KERNELS
    if (run == multiply_add_run_avx512) return depthwise_kernel_sums_avx512;
#endif
    (void)run;
    return depthwise_kernel_sums;
}

// One image's backward: its dx (when wanted), and its own sums for the
// kernel's and the bias's gradients, `part` (10, C); `sum` (W, C) is
// working memory.
void depthwise_backward_image(MultiplyAddRun *run, float *restrict dx, float *restrict part, float *restrict sum,
                              const float *restrict dout, const float *restrict x, const float *restrict kernel_rows,
                              int H, int W, int C) {
    size_t row = (size_t)W * C;
    depthwise_kernel_sums_for(run)(part, dout, x, H, W, C);
    if (!dx) return;
#if HAVE_X86_KERNELS
    if (run == multiply_add_run_avx512) {
        depthwise_taps_avx512(dx, dout, kernel_rows, NULL, -1, H, W, C);
        return;
    }
#endif
    for (int y = 0; y < H; y++) {  // each input position gathers the taps that read it
        for (size_t e = 0; e < row; e++) sum[e] = 0.0f;
        for (int i = 0; i < 3; i++) {
            int yy = y + 1 - i;
            if (yy < 0 || yy >= H) continue;
            for (int j = 0; j < 3; j++) {
                int first, count;
                tap_columns(1 - j, W, &first, &count);
                if (count > 0)
                    run(sum + (size_t)first * C, dout + yy * row + (size_t)(first + 1 - j) * C,
                        kernel_rows + (i * 3 + j) * row, (size_t)count * C);
            }
        }
        float *d = dx + y * row;
        for (size_t e = 0; e < row; e++) d[e] += sum[e];
    }
}

// depthwise_conv on the engine: the naive version for the references, the
// fast one, an image per task, on the blocked path.
typedef struct {
    Node *node;
    MultiplyAddRun *run;
    float *kernel_rows;  // (9, W, C): each tap's weights along a row
    float *parts;        // (B, 10 C + W C): each image's sums for the kernel and bias gradients, and a row
} DepthwiseJob;

// The op's working memory: the kernel rows, then (backward) the parts.
DepthwiseJob depthwise_job(Graph *g, Node *n, int backward) {
    const Node *x = n->inputs[0];
    int B = x->shape[0], W = x->shape[2], C = x->shape[3];
    size_t rows = (size_t)9 * W * C;
    float *scratch = graph_scratch(g, rows + (backward ? (size_t)B * (10 + W) * C : 0));
    depthwise_kernel_rows(scratch, n->inputs[1]->value, W, C);
    return (DepthwiseJob){n, multiply_add_run_for(g->gemm), scratch, scratch + rows};
}

void depthwise_forward_task(void *context, int i, int worker) {
    (void)worker;
    const DepthwiseJob *j = context;
    const Node *n = j->node, *x = n->inputs[0];
    depthwise_forward_image(j->run, n->value + i * n->item_size, x->value + i * x->item_size, j->kernel_rows,
                            n->inputs[2]->value, x->shape[1], x->shape[2], x->shape[3]);
}

void depthwise_backward_task(void *context, int i, int worker) {
    (void)worker;
    const DepthwiseJob *j = context;
    const Node *n = j->node, *x = n->inputs[0];
    int W = x->shape[2], C = x->shape[3];
    float *part = j->parts + (size_t)i * (10 + W) * C;
    depthwise_backward_image(j->run, x->grad ? x->grad + i * x->item_size : NULL, part, part + 10 * C,
                             n->grad + i * n->item_size, x->value + i * x->item_size, j->kernel_rows,
                             x->shape[1], W, C);
}

Workers *depthwise_workers(const Graph *g, const Node *n) {
    return n->size < ITEMS_PARALLEL_FROM ? NULL : graph_workers(g);
}

void depthwise_op_forward(Node *n, Graph *g) {
    const Node *x = n->inputs[0];
    if (g->kernel != KERNEL_BLOCKED) {
        depthwise_forward_naive(n->value, x->value, n->inputs[1]->value, n->inputs[2]->value, x->shape[0],
                                x->shape[1], x->shape[2], x->shape[3]);
        return;
    }
    DepthwiseJob job = depthwise_job(g, n, 0);
    parallel_for(depthwise_workers(g, n), x->shape[0], depthwise_forward_task, &job);
}

void depthwise_op_backward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *kernel = n->inputs[1], *bias = n->inputs[2];
    int B = x->shape[0], C = x->shape[3];
    if (g->kernel != KERNEL_BLOCKED) {
        depthwise_backward_naive(x->grad, kernel->grad, bias->grad, n->grad, x->value, kernel->value, B, x->shape[1],
                                 x->shape[2], C);
        return;
    }
    int W = x->shape[2];
    DepthwiseJob job = depthwise_job(g, n, 1);
    parallel_for(depthwise_workers(g, n), B, depthwise_backward_task, &job);
    for (int b = 0; b < B; b++) {  // the images' sums, in order: the same at any thread count
        const float *part = job.parts + (size_t)b * (10 + W) * C;
        for (int t = 0; t < 9 * C; t++) kernel->grad[t] += part[t];
        for (int c = 0; c < C; c++) bias->grad[c] += part[9 * C + c];
    }
}

double depthwise_multiply_adds(const Node *n) { return 9.0 * (double)n->item_size; }

/* ---- The pointwise (1x1) convolution ------------------------------------------ */

/* out (B*H*W, OC) = x (B*H*W, C) @ kernel (C, OC) + bias: a dense layer
   applied at every position. No patches: the map is the matrix. The
   blocked path is chapter 4's GEMM with the bias as the sums' start; the
   references are chapter 2's loops. */
void pointwise_op_forward(Node *n, Graph *g) {
    const Node *x = n->inputs[0], *kernel = n->inputs[1], *bias = n->inputs[2];
    int C = kernel->shape[2], OC = kernel->shape[3], rows = (int)(x->size / (size_t)C);
    if (g->kernel == KERNEL_BLOCKED) {
        gemm_with_bias(g->gemm, rows, OC, C, matrix_operand(x->value, C), matrix_operand(kernel->value, OC), n->value,
                       OC, bias->value);
        return;
    }
    matmul_forward(n->value, x->value, kernel->value, rows, C, OC);
    bias_forward(n->value, bias->value, rows, OC);
}

void pointwise_op_backward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *kernel = n->inputs[1], *bias = n->inputs[2];
    int C = kernel->shape[2], OC = kernel->shape[3], rows = (int)(x->size / (size_t)C);
    if (g->kernel == KERNEL_BLOCKED)
        matmul_backward_blocked(g->gemm, x->grad, kernel->grad, n->grad, x->value, kernel->value, rows, C, OC);
    else
        matmul_backward(x->grad, kernel->grad, n->grad, x->value, kernel->value, rows, C, OC);
    if (bias->grad) bias_backward(bias->grad, n->grad, rows, OC);
}

double pointwise_multiply_adds(const Node *n) {
    const Node *kernel = n->inputs[1];
    return (double)(n->item_size / (size_t)kernel->shape[3]) * kernel->shape[2] * kernel->shape[3];
}

/* ---- The ops' constructors ------------------------------------------------------ */

const Op GLOBAL_AVG_POOL_OP = {.name = "global_avg_pool", .forward = global_avg_pool_op_forward,
                               .backward = global_avg_pool_op_backward};
const Op DEPTHWISE_OP = {.name = "depthwise_conv", .forward = depthwise_op_forward, .backward = depthwise_op_backward,
                         .multiply_adds = depthwise_multiply_adds};
const Op POINTWISE_OP = {.name = "pointwise_conv", .forward = pointwise_op_forward, .backward = pointwise_op_backward,
                         .multiply_adds = pointwise_multiply_adds};

Node *global_avg_pool(Graph *g, Node *x) {
    require(x->batched && x->rank == 4, "global_avg_pool needs x (B, H, W, C)");
    return graph_op(g, &GLOBAL_AVG_POOL_OP, (Node *[]){x}, 1, 1, &x->shape[3], 1);
}

Node *depthwise_conv(Graph *g, Node *x, Node *kernel, Node *bias) {
    require(x->batched && x->rank == 4 && !kernel->batched &&
            kernel->rank == 4 && kernel->shape[0] == 3 && kernel->shape[1] == 3 && kernel->shape[2] == x->shape[3] &&
            kernel->shape[3] == 1 && bias->rank == 1 && bias->shape[0] == x->shape[3],
            "depthwise_conv needs x (B, H, W, C), a kernel (3, 3, C, 1) and a bias (C)");
    return graph_op(g, &DEPTHWISE_OP, (Node *[]){x, kernel, bias}, 3, 1, x->shape + 1, 3);
}

Node *pointwise_conv(Graph *g, Node *x, Node *kernel, Node *bias) {
    require(x->batched && x->rank == 4 && !kernel->batched && kernel->rank == 4 && kernel->shape[0] == 1 &&
            kernel->shape[1] == 1 && kernel->shape[2] == x->shape[3] && bias->rank == 1 &&
            bias->shape[0] == kernel->shape[3], "pointwise_conv needs x (B, H, W, C), a kernel (1, 1, C, OC) and a bias (OC)");
    return graph_op(g, &POINTWISE_OP, (Node *[]){x, kernel, bias}, 3, 1,
                    (int[]){x->shape[1], x->shape[2], kernel->shape[3]}, 3);
}

/* ---- Layers and blocks ------------------------------------------------------------ */

// Batch norm with its four tensors named NAME.gamma, NAME.beta, NAME.mean, NAME.variance.
Node *batch_norm_named(Graph *g, Node *x, const char *name) {
    const char *labels[4] = {graph_label(g, "%s.gamma", name), graph_label(g, "%s.beta", name),
                             graph_label(g, "%s.mean", name), graph_label(g, "%s.variance", name)};
    return batch_norm(g, x, labels);
}

// 3x3 "same" convolution then batch norm: NAME.kernel, NAME.bias, then the batch norm's.
Node *conv3x3_bn(Graph *g, Node *x, int out_channels, const char *name) {
    Node *y = conv_layer(g, x, out_channels, 1, graph_label(g, "%s.kernel", name), graph_label(g, "%s.bias", name));
    return batch_norm_named(g, y, name);
}

Node *pointwise_bn(Graph *g, Node *x, int out_channels, const char *name) {
    Node *kernel = graph_parameter(g, graph_label(g, "%s.kernel", name), (int[]){1, 1, x->shape[3], out_channels}, 4,
                                   INIT_GLOROT);
    Node *bias = graph_parameter(g, graph_label(g, "%s.bias", name), (int[]){out_channels}, 1, INIT_ZEROS);
    return batch_norm_named(g, pointwise_conv(g, x, kernel, bias), name);
}

Node *depthwise_bn(Graph *g, Node *x, const char *name) {
    Node *kernel = graph_parameter(g, graph_label(g, "%s.kernel", name), (int[]){3, 3, x->shape[3], 1}, 4, INIT_GLOROT);
    Node *bias = graph_parameter(g, graph_label(g, "%s.bias", name), (int[]){x->shape[3]}, 1, INIT_ZEROS);
    return batch_norm_named(g, depthwise_conv(g, x, kernel, bias), name);
}

/* The residual block (He et al., 2015): conv, BN, ReLU, conv, BN, plus the
   block's input, then ReLU. Where the block changes the channel count the
   input cannot be added as it is; a 1x1 convolution and batch norm, the
   "projection", make it the right shape. Without skips (`plain`) the
   block is the two convolutions alone, and has no projection. */
Node *residual_block(Graph *g, Node *x, int out_channels, int skips, const char *name) {
    char part[LABEL_SIZE];
    snprintf(part, sizeof part, "%s.c1", name);
    Node *y = relu(g, conv3x3_bn(g, x, out_channels, part));
    snprintf(part, sizeof part, "%s.c2", name);
    y = conv3x3_bn(g, y, out_channels, part);
    if (!skips) return relu(g, y);
    Node *shortcut = x;
    if (x->shape[3] != out_channels) {
        snprintf(part, sizeof part, "%s.proj", name);
        shortcut = pointwise_bn(g, x, out_channels, part);
    }
    return relu(g, add(g, y, shortcut));
}

// The head every chapter 8 network ends with: the mean of each channel,
// then one dense layer to the ten classes.
GraphClassifier finish_classifier(Graph *g, Node *images, Node *targets, Node *x, uint64_t seed) {
    x = dense_layer(g, global_avg_pool(g, x), NUM_CLASSES, "dense.weight", "dense.bias");
    Node *loss = softmax_cross_entropy(g, x, targets);
    graph_compile(g, loss);
    graph_initialize(g, seed);
    return (GraphClassifier){.graph = g, .images = images, .targets = targets, .loss = loss};
}

/* resnet and plain: a 3x3 stem convolution, three stages of `blocks`
   blocks at 28x28, 14x14 and 7x7 (a max pool between stages), with the
   widths doubling as the maps shrink, so that every stage costs the same
   arithmetic; then global average pooling and a dense layer.
   28x28x1 -> 28x28x12 -> 14x14x24 -> 7x7x48 -> 48 -> 10.
   Convolution layers: 1 + 6 blocks + 1 dense: 20 for 3 blocks, 8 for 1.
   At 3 blocks the forward pass costs 34.94 MFLOP per image, under the
   deeper CNN's 38.19 (book.md 8.3 derives it). */
static const int RESNET_WIDTHS[3] = {12, 24, 48};

GraphClassifier residual_graph(int max_batch, uint64_t seed, int blocks, int skips) {
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = reshape(g, images, (int[]){IMAGE_ROWS, IMAGE_COLS, 1}, 3);
    x = relu(g, conv3x3_bn(g, x, RESNET_WIDTHS[0], "stem"));
    for (int stage = 0; stage < 3; stage++) {
        if (stage) x = max_pool(g, x);
        for (int b = 0; b < blocks; b++) {
            char name[16];  // short, so that NAME.c1.variance fits a label
            snprintf(name, sizeof name, "s%db%d", stage % 10 + 1, b % 100 + 1);
            x = residual_block(g, x, RESNET_WIDTHS[stage], skips, name);
        }
    }
    return finish_classifier(g, images, targets, x, seed);
}

/* separable: MobileNet's pattern (Howard et al., 2017). A 3x3 stem
   convolution, then blocks of depthwise 3x3, BN, ReLU, pointwise 1x1, BN,
   ReLU, with a max pool before the blocks marked so; then global average
   pooling and a dense layer.
   28x28x1 -> 28x28x24 -> 28x28x48 -> 14x14x64 -> 14x14x64 -> 7x7x128 -> 7x7x128 -> 128 -> 10.
   8.27 MFLOP per image, under a quarter of the deeper CNN's 38.19. */
static const struct {
    int channels, pool_before;
} SEPARABLE_BLOCKS[] = {{48, 0}, {64, 1}, {64, 0}, {128, 1}, {128, 0}};
enum { SEPARABLE_STEM = 24, SEPARABLE_BLOCK_COUNT = sizeof SEPARABLE_BLOCKS / sizeof SEPARABLE_BLOCKS[0] };

Node *separable_block(Graph *g, Node *x, int out_channels, const char *name) {
    char part[LABEL_SIZE];
    snprintf(part, sizeof part, "%s.dw", name);
    x = relu(g, depthwise_bn(g, x, part));
    snprintf(part, sizeof part, "%s.pw", name);
    return relu(g, pointwise_bn(g, x, out_channels, part));
}

GraphClassifier separable_graph(int max_batch, uint64_t seed) {
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = reshape(g, images, (int[]){IMAGE_ROWS, IMAGE_COLS, 1}, 3);
    x = relu(g, conv3x3_bn(g, x, SEPARABLE_STEM, "stem"));
    for (int b = 0; b < SEPARABLE_BLOCK_COUNT; b++) {
        if (SEPARABLE_BLOCKS[b].pool_before) x = max_pool(g, x);
        char name[16];
        snprintf(name, sizeof name, "sep%d", b % 100 + 1);
        x = separable_block(g, x, SEPARABLE_BLOCKS[b].channels, name);
    }
    return finish_classifier(g, images, targets, x, seed);
}

/* ---- Two more blocks (book.md, chapter 8's exercises); the models do not use them ---- */

/* The bottleneck block (He et al., 2016), which ResNet-50 and deeper use:
   a 1x1 convolution down to `mid` channels (NAME.a), a 3x3 convolution at
   `mid` (NAME.b), a 1x1 convolution up to `out_channels` (NAME.c), each
   with batch norm and the first two with ReLU; then the skip, as in
   residual_block (a projection NAME.proj where the channels change), the
   add and a ReLU. The parameters are made in that order: a, b, c, proj. */
Node *bottleneck_block(Graph *g, Node *x, int mid, int out_channels, const char *name) {
    //@ exercise 8 bottleneck: build the bottleneck block from pointwise_bn, conv3x3_bn, relu and add, its parameters in the order a, b, c, proj.
    char part[LABEL_SIZE];
    snprintf(part, sizeof part, "%s.a", name);
    Node *y = relu(g, pointwise_bn(g, x, mid, part));
    snprintf(part, sizeof part, "%s.b", name);
    y = relu(g, conv3x3_bn(g, y, mid, part));
    snprintf(part, sizeof part, "%s.c", name);
    y = pointwise_bn(g, y, out_channels, part);
    snprintf(part, sizeof part, "%s.proj", name);
    Node *skip = x->shape[3] == out_channels ? x : pointwise_bn(g, x, out_channels, part);
    return relu(g, add(g, y, skip));
    //@ stub
    (void)g, (void)mid, (void)out_channels, (void)name;
    return x;
    //@ end
}

/* Squeeze-and-excitation (Hu, Shen and Sun, 2018), one image, forward:
   each channel's mean over the image (the squeeze, s, C values), a small
   network from those means to one gate per channel (the excitation:
   z = relu(s @ w1 + b1), R values; gate = sigmoid(z @ w2 + b2), C values),
   and every value of x scaled by its channel's gate. The network can so
   turn channels up or down for each image. R is at most SE_MAX_REDUCED. */
enum { SE_MAX_REDUCED = 256 };

void squeeze_excite_forward(float *out,         // (HW, C)
                            float *gate,        // (C): the gates, kept for a backward pass
                            const float *x,     // (HW, C)
                            const float *w1,    // (C, R)
                            const float *b1,    // (R)
                            const float *w2,    // (R, C)
                            const float *b2,    // (C)
                            int HW, int C, int R) {
    require(R >= 1 && R <= SE_MAX_REDUCED, "squeeze_excite_forward: R = %d outside 1..%d", R, SE_MAX_REDUCED);
    //@ exercise 8 squeeze-excite: squeeze x to its channel means, excite them into one gate per channel, and scale x by the gates.
    global_avg_pool_forward(gate, x, HW, C);  // the squeeze, for now in `gate`
    float z[SE_MAX_REDUCED];
    for (int r = 0; r < R; r++) {
        float sum = b1[r];
        for (int c = 0; c < C; c++) sum += gate[c] * w1[(size_t)c * R + r];
        z[r] = sum > 0.0f ? sum : 0.0f;
    }
    for (int c = 0; c < C; c++) {
        float sum = b2[c];
        for (int r = 0; r < R; r++) sum += z[r] * w2[(size_t)r * C + c];
        gate[c] = 1.0f / (1.0f + expf(-sum));
    }
    for (int p = 0; p < HW; p++)
        for (int c = 0; c < C; c++) out[(size_t)p * C + c] = x[(size_t)p * C + c] * gate[c];
    //@ stub
    (void)w1, (void)b1, (void)w2, (void)b2, (void)R;
    for (int c = 0; c < C; c++) gate[c] = 1.0f;
    memcpy(out, x, (size_t)HW * C * sizeof(float));
    //@ end
}

// The models this file adds, by their --models names.
static const char CHAPTER8_MODELS[] = "resnet|plain|resnet8|plain8|separable";

int is_chapter8_model(const char *name) { return is_choice(name, CHAPTER8_MODELS); }

GraphClassifier chapter8_graph(const char *name, int max_batch, uint64_t seed) {
    if (strcmp(name, "separable") == 0) return separable_graph(max_batch, seed);
    int blocks = strcmp(name, "resnet8") == 0 || strcmp(name, "plain8") == 0 ? 1 : 3;
    return residual_graph(max_batch, seed, blocks, strncmp(name, "resnet", 6) == 0);
}
//@ end
