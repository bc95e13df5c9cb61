//@ from 4
/* ----------------------------------------------------------------------------
   Convolutions and dense layers on the blocked GEMM.

   The passes of the naive and im2col versions above (and chapter 2's dense
   layer), each one or two calls of gemm(), for KERNEL_BLOCKED; a
   one-channel convolution has loops of its own, below. The sums are
   the definition's; only their order (and one rounding per multiply-add)
   differ, so these agree with the references to rounding, not to the bit. */

// The scratch, in floats, conv2d_backward_blocked needs: the flipped kernel.
size_t conv2d_blocked_scratch(const ConvShape *s) { return conv_patch_size(s) * (size_t)s->out_channels; }

/* One input channel: the first convolution of both CNNs.
   As a GEMM its sums have K = 3 * 3 = 9 terms. Packing a patch row (three
   lines of three floats) then costs several times its 9 multiply-adds, and
   the weight gradient has M = 9 rows: a task per panel at most. Direct loops
   do the same multiply-adds in the same order, so they give the same bits:
   - forward: out[p][oc] starts from bias[oc] and adds x_t * w[t][oc] for
     the taps t in order; a tap in the padding multiplies a zero, as the
     packed patches do;
   - weight gradient: dw[t][oc] adds x_t(p) * dout[p][oc] for the output
     pixels p in order, and dbias[oc] adds dout[p][oc] in bias_backward's
     order, in the same pass over dout.
   Eight output channels to a vector (AVX2 and FMA, which every CPU with
   the avx2 or avx512 kernel has), the image copied with its zero border
   first so that no tap needs a bounds check. Tasks: an image each
   forward, eight channels each backward. */
enum { ONE_CHANNEL_MAX_PIXELS = 4096 };  // the padded image, on the stack

int one_channel_direct(const GemmContext *ctx, const ConvShape *s) {
#if HAVE_X86_KERNELS
//@ from 8
    if (ctx->bf16) return 0;  // in bf16 the GEMM rounds its operands as it packs them
//@ end
    return strcmp(ctx->kernel->name, "portable") != 0 && cpu_has_avx2_fma() && s->channels == 1 &&
           s->kernel_h == 3 && s->kernel_w == 3 && s->out_channels % 8 == 0 &&
           (s->height + 2 * s->pad) * (s->width + 2 * s->pad) <= ONE_CHANNEL_MAX_PIXELS;
#else
    (void)ctx, (void)s;
    return 0;
#endif
}

typedef struct {
    float *out, *dweight, *dbias;       // out (B, OH, OW, OC); dweight (3, 3, 1, OC); dbias (OC) or NULL
    const float *inp, *weight, *bias;   // inp (B, H, W, 1); weight (3, 3, 1, OC); bias (OC)
    const float *dout;                  // (B, OH, OW, OC)
    const ConvShape *s;
} OneChannelJob;

// Image b with `pad` zeros on every side: (H + 2 pad, W + 2 pad).
void pad_image(float *padded, const float *inp, const ConvShape *s, int b) {
    int H = s->height, W = s->width, pad = s->pad, PW = W + 2 * pad;
    memset(padded, 0, (size_t)(H + 2 * pad) * PW * sizeof(float));
    for (int y = 0; y < H; y++)
        memcpy(padded + (size_t)(y + pad) * PW + pad, inp + ((size_t)b * H + y) * W, (size_t)W * sizeof(float));
}

#if HAVE_X86_KERNELS
__attribute__((target("avx2,fma")))
void one_channel_forward_task(void *context, int b, int worker) {
    (void)worker;
    const OneChannelJob *j = context;
    const ConvShape *s = j->s;
    int OC = s->out_channels, PW = s->width + 2 * s->pad;
    float padded[ONE_CHANNEL_MAX_PIXELS];
    pad_image(padded, j->inp, s, b);
    float *out = j->out + (size_t)b * s->out_h * s->out_w * OC;  // (OH, OW, OC)
    for (int oh = 0; oh < s->out_h; oh++)
        for (int ow = 0; ow < s->out_w; ow++, out += OC) {  // a pixel's channels together: whole cache lines
            const float *x = padded + oh * PW + ow;           // tap t = (kh, kw) at x[kh * PW + kw]
            __m256 v[9];
            for (int t = 0; t < 9; t++) v[t] = _mm256_set1_ps(x[t / 3 * PW + t % 3]);
            for (int oc = 0; oc < OC; oc += 8) {
                __m256 sum = _mm256_loadu_ps(j->bias + oc);
                for (int t = 0; t < 9; t++) sum = _mm256_fmadd_ps(v[t], _mm256_loadu_ps(j->weight + t * OC + oc), sum);
                _mm256_storeu_ps(out + oc, sum);
            }
        }
}

__attribute__((target("avx2,fma")))
void one_channel_weight_grad_task(void *context, int task, int worker) {
    (void)worker;
    const OneChannelJob *j = context;
    const ConvShape *s = j->s;
    int OC = s->out_channels, PW = s->width + 2 * s->pad, oc = 8 * task;
    float padded[ONE_CHANNEL_MAX_PIXELS];
    __m256 dw[9], db = j->dbias ? _mm256_loadu_ps(j->dbias + oc) : _mm256_setzero_ps();
    for (int t = 0; t < 9; t++) dw[t] = _mm256_loadu_ps(j->dweight + t * OC + oc);
    const float *dout = j->dout + oc;  // row p at dout + p * OC
    for (int b = 0; b < s->batch; b++) {
        pad_image(padded, j->inp, s, b);
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++, dout += OC) {
                const float *x = padded + oh * PW + ow;
                __m256 g = _mm256_loadu_ps(dout);
                for (int t = 0; t < 9; t++) dw[t] = _mm256_fmadd_ps(_mm256_set1_ps(x[t / 3 * PW + t % 3]), g, dw[t]);
                db = _mm256_add_ps(db, g);
            }
    }
    for (int t = 0; t < 9; t++) _mm256_storeu_ps(j->dweight + t * OC + oc, dw[t]);
    if (j->dbias) _mm256_storeu_ps(j->dbias + oc, db);
}
#else  // never called: one_channel_direct is 0
void one_channel_forward_task(void *context, int b, int worker) { (void)context, (void)b, (void)worker; }
void one_channel_weight_grad_task(void *context, int task, int worker) { (void)context, (void)task, (void)worker; }
#endif

// out = bias on every row + patches(inp) @ weight: a convolution is one GEMM
// whose A is the image's im2col matrix, read inside the packing, and whose
// sums start from the bias.
void conv2d_forward_blocked(const GemmContext *ctx,
                            float *out,           // (B, OH, OW, OC)
                            const float *inp,     // (B, H, W, C)
                            const float *weight,  // (KH, KW, C, OC)
                            const float *bias,    // (OC)
                            const ConvShape *s) {
    if (one_channel_direct(ctx, s)) {
        OneChannelJob job = {.out = out, .inp = inp, .weight = weight, .bias = bias, .s = s};
        parallel_for(ctx->workers, s->batch, one_channel_forward_task, &job);
        return;
    }
    gemm_with_bias(ctx, (int)conv_rows(s), s->out_channels, (int)conv_patch_size(s), patches_operand(inp, s, 0),
                   matrix_operand(weight, s->out_channels), out, s->out_channels, bias);
}

// The kernel turned 180 degrees with C and OC swapped: (KH, KW, C, OC) ->
// (KH, KW, OC, C), tap (kh, kw) moved to (KH-1-kh, KW-1-kw).
void flip_kernel(float *flipped,       // (KH, KW, OC, C)
                 const float *weight,  // (KH, KW, C, OC)
                 const ConvShape *s) {
    int KH = s->kernel_h, KW = s->kernel_w, C = s->channels, OC = s->out_channels;
    for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++)
            for (int c = 0; c < C; c++)
                for (int oc = 0; oc < OC; oc++)
                    flipped[(((size_t)(KH - 1 - kh) * KW + (KW - 1 - kw)) * OC + oc) * C + c] =
                        weight[(((size_t)kh * KW + kw) * C + c) * OC + oc];
}

/* The backward pass, as conv.c derives it:
   - dweight += patches(inp)^T @ dout: the transposed patch matrix as A;
   - dinp += the convolution of dout, padded by KH-1-pad, with the flipped
     kernel: again one GEMM with a patch matrix as A, so the input gradient
     needs no col2im and adds nothing from two places at once;
   - dbias += the column sums of dout. */
void conv2d_backward_blocked(const GemmContext *ctx, float *dinp, float *dweight, float *dbias,
                             const float *dout, const float *inp, const float *weight, const ConvShape *s,
                             float *flipped) {  // shapes as conv2d_backward_naive; flipped: scratch, (KH, KW, OC, C)
    int OC = s->out_channels, C = s->channels, rows = (int)conv_rows(s), patch = (int)conv_patch_size(s);
    if (dweight && one_channel_direct(ctx, s)) {
        OneChannelJob job = {.dweight = dweight, .dbias = dbias, .inp = inp, .dout = dout, .s = s};
        parallel_for(ctx->workers, OC / 8, one_channel_weight_grad_task, &job);
    } else {
        if (dbias) bias_backward(dbias, dout, rows, OC);
        if (dweight) gemm(ctx, patch, OC, rows, patches_operand(inp, s, 1), matrix_operand(dout, OC), dweight, OC, 1);
    }
    if (dinp) {
        flip_kernel(flipped, weight, s);
        ConvShape back = conv_shape(s->batch, s->out_h, s->out_w, OC, s->kernel_h, s->kernel_w,
                                    s->kernel_h - 1 - s->pad, C);
        gemm(ctx, (int)conv_rows(&back), C, (int)conv_patch_size(&back), patches_operand(dout, &back, 0),
             matrix_operand(flipped, C), dinp, C, 1);
    }
}

// Dense layers: out = inp @ weight; dinp += dout @ weight^T; dweight += inp^T @ dout.
void matmul_forward_blocked(const GemmContext *ctx, float *out, const float *inp, const float *weight,
                            int B, int C, int OC) {  // out (B, OC), inp (B, C), weight (C, OC)
    gemm(ctx, B, OC, C, matrix_operand(inp, C), matrix_operand(weight, OC), out, OC, 0);
}

void matmul_backward_blocked(const GemmContext *ctx, float *dinp, float *dweight, const float *dout,
                             const float *inp, const float *weight, int B, int C, int OC) {
    if (dinp) gemm(ctx, B, C, OC, matrix_operand(dout, OC), transposed_operand(weight, OC), dinp, C, 1);
    if (dweight) gemm(ctx, C, OC, B, transposed_operand(inp, C), matrix_operand(dout, OC), dweight, OC, 1);
}
//@ end
