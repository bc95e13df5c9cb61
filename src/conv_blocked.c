//@ from 4
/* ----------------------------------------------------------------------------
   Convolutions and dense layers on the blocked GEMM.

   What this is: the same passes as the naive and im2col versions above (and
   chapter 2's dense layer), which the tests hold these to, each now one or
   two calls of gemm(): the engine's ops call these when the graph's kernel
   is KERNEL_BLOCKED.
   What it is not: new arithmetic. The sums are the definition's; only
   their order (and one rounding per multiply-add) differ, which is why
   these agree with the references to rounding, not to the bit. */

/* One-channel images (the first convolution) are the exception to "no
   patch matrix is ever built". Their patch lines are KW floats, 3 for a
   3x3 kernel: too short to read in place, and copied strip by strip they
   cost more than the 9 multiply-adds per output that use them: every 3
   floats need their own bounds checks and index arithmetic. But their
   whole patch matrix is small, K = KH*KW floats an output pixel (1.6 to
   1.8 MB at batch 64). So it is built once, transposed, (KH*KW, B*OH*OW): row k is
   the image shifted by one tap, one run of OW floats per output row
   (pack_block's lines). The forward GEMM reads its strips where they lie,
   MR neighbouring pixels per k; the weight gradient's GEMM reads its
   whole strips where they lie too, six runs along k, and packs only the
   last, partial one. Same numbers, same order: the same bits. */
typedef struct {
    float *patches_t;      // (KH*KW, B*OH*OW)
    Operand image;         // the patches of the image, transposed
    long rows, per_image;  // B*OH*OW, OH*OW
    int patch;             // KH*KW
} PatchJob;

void patches_transposed_task(void *context, int image, int worker) {
    (void)worker;
    const PatchJob *job = context;
    pack_block(job->patches_t + image * job->per_image, job->rows, &job->image, 0, job->patch,
               image * job->per_image, (int)job->per_image);
}

// The transposed patch matrix of a one-channel image, built in patches_t.
void one_channel_patches(const GemmContext *ctx,
                         float *patches_t,  // (KH*KW, B*OH*OW)
                         const float *inp,  // (B, H, W, 1)
                         const ConvShape *s) {
    long rows = (long)conv_rows(s);
    PatchJob job = {patches_t, patches_operand(inp, s, 1), rows, rows / s->batch, (int)conv_patch_size(s)};
    parallel_for(ctx->workers, s->batch, patches_transposed_task, &job);  // an image a task
}

// The scratch memory, in floats, the blocked passes of convolution `s` need:
// for one channel, the patches with a row of ones and the gradients they
// make (conv2d_one_channel_gradients); else the kernel, transposed or
// flipped.
size_t conv2d_blocked_scratch(const ConvShape *s) {
    size_t weights = conv_patch_size(s) * (size_t)s->out_channels;
    size_t patches = (conv_patch_size(s) + 1) * (conv_rows(s) + (size_t)s->out_channels);
    return s->channels == 1 && patches > weights ? patches : weights;
}

// out = bias on every row + patches(inp) @ weight: a convolution is one GEMM
// whose A is the image's im2col matrix, built inside the packing (or, for
// one channel, beforehand in `scratch`), and whose sums start from the bias.
void conv2d_forward_blocked(const GemmContext *ctx,
                            float *out,           // (B, OH, OW, OC)
                            const float *inp,     // (B, H, W, C)
                            const float *weight,  // (KH, KW, C, OC)
                            const float *bias,    // (OC)
                            const ConvShape *s,
                            float *scratch) {     // (conv2d_blocked_scratch(s))
    size_t rows = conv_rows(s);
    int OC = s->out_channels;
    Operand patches = patches_operand(inp, s, 0);
    require(scratch || s->channels != 1, "conv2d_forward_blocked: a one-channel image needs scratch");
    if (s->channels == 1) {
        one_channel_patches(ctx, scratch, inp, s);
        patches = transposed_operand(scratch, (long)rows);  // read in place, strip by strip (pack_a)
    }
    gemm_with_bias(ctx, (int)rows, OC, (int)conv_patch_size(s), patches, matrix_operand(weight, OC), out, OC, bias);
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

// dst = the transpose of src.
void transpose_copy(float *dst,        // (cols, rows)
                    const float *src,  // (rows, cols)
                    int rows, int cols) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

/* The weight gradient of a one-channel convolution, and its bias gradient
   with it when `dbias` is not NULL, in one GEMM whose A is the transposed
   patch matrix built beforehand (one_channel_patches). The bias is a
   weight whose input is always 1: give that matrix a last row of ones,
   and the GEMM's last row of C is
       dbias += sum over pixels of 1 * dout
   beside dweight, for the price of a strip's spare row (9 weights fill a
   strip and a half of 6; 10 fill the same two). It saves bias_backward's
   read of all of dout, 5.5 MB at batch 64. fma(1, x, c) is c + x rounded
   once, as bias_backward adds, in the same order of pixels: the same bits. */
void conv2d_one_channel_gradients(const GemmContext *ctx,
                                  float *dweight,     // (KH*KW, OC)
                                  float *dbias,       // (OC), or NULL
                                  const float *dout,  // (B*OH*OW, OC)
                                  const float *inp,   // (B, H, W, 1)
                                  const ConvShape *s,
                                  float *scratch) {   // (conv2d_blocked_scratch(s))
    require(scratch != NULL, "conv2d_one_channel_gradients: a one-channel image needs scratch");
    int OC = s->out_channels, rows = (int)conv_rows(s), patch = (int)conv_patch_size(s), M = patch + (dbias != NULL);
    float *patches_t = scratch;                     // (M, B*OH*OW): the patches, then (with the bias) ones
    float *grads = scratch + (size_t)M * rows;      // (M, OC): dweight, then (with the bias) dbias
    one_channel_patches(ctx, patches_t, inp, s);
    memcpy(grads, dweight, (size_t)patch * OC * sizeof(float));
    if (dbias) {
        for (int r = 0; r < rows; r++) patches_t[(size_t)patch * rows + r] = 1.0f;
        memcpy(grads + (size_t)patch * OC, dbias, (size_t)OC * sizeof(float));
    }
    gemm(ctx, M, OC, rows, matrix_operand(patches_t, rows), matrix_operand(dout, OC), grads, OC, 1);
    memcpy(dweight, grads, (size_t)patch * OC * sizeof(float));
    if (dbias) memcpy(dbias, grads + (size_t)patch * OC, (size_t)OC * sizeof(float));
}

/* dweight += patches(inp)^T @ dout. As written, A is the transposed patch
   matrix: (KH*KW*C, B*OH*OW), whose packing gathers MR neighbouring channels
   per pixel, 24 bytes at a time, and whose B (dout) every task packs again.
   Its transpose is the same sums the other way round:
       dweight^T (OC, KH*KW*C) += dout^T @ patches(inp)
   where the patches are B, packed in panels of NR neighbouring floats of
   one image row (whole cache lines when C is a multiple of 16), and the
   small dout^T is A. Each element is still one chain of multiply-adds over
   the pixels in order, from dweight's old value (copied in and out through
   `scratch`), so the bits are those of the first form; only the speed
   differs. Channel counts that are not a multiple of 16 keep the first
   form; one-channel images, with their 3-float lines, keep it with their
   transposed patches built beforehand (conv2d_one_channel_gradients). */
void conv2d_weight_gradient_blocked(const GemmContext *ctx,
                                    float *dweight,      // (KH*KW*C, OC)
                                    const float *dout,   // (B*OH*OW, OC)
                                    const float *inp,    // (B, H, W, C)
                                    const ConvShape *s,
                                    float *scratch) {    // (conv2d_blocked_scratch(s))
    int OC = s->out_channels, rows = (int)conv_rows(s), patch = (int)conv_patch_size(s);
    if (s->channels == 1) {
        conv2d_one_channel_gradients(ctx, dweight, NULL, dout, inp, s, scratch);
        return;
    }
    if (s->channels % 16 != 0) {
        gemm(ctx, patch, OC, rows, patches_operand(inp, s, 1), matrix_operand(dout, OC), dweight, OC, 1);
        return;
    }
    transpose_copy(scratch, dweight, patch, OC);
    gemm(ctx, OC, patch, rows, transposed_operand(dout, OC), patches_operand(inp, s, 0), scratch, patch, 1);
    transpose_copy(dweight, scratch, OC, patch);
}

/* The backward pass, as conv.c derives it:
   - dweight += patches(inp)^T @ dout: the transposed patch matrix as A;
   - dinp += the convolution of dout, padded by KH-1-pad, with the flipped
     kernel: again one GEMM with a patch matrix as A, so the input gradient
     needs no col2im and adds nothing from two places at once;
   - dbias += the column sums of dout.
   `flipped` is scratch (conv2d_blocked_scratch floats): first the weight
   gradient, transposed, or a one-channel image's patches (with their row
   of ones, when the bias gradient comes with them); then the flipped
   kernel. */
void conv2d_backward_blocked(const GemmContext *ctx, float *dinp, float *dweight, float *dbias,
                             const float *dout, const float *inp, const float *weight, const ConvShape *s,
                             float *flipped) {  // shapes as conv2d_backward_naive
    int OC = s->out_channels, C = s->channels;
    int rows = (int)conv_rows(s);
    if (C == 1 && dweight) {
        conv2d_one_channel_gradients(ctx, dweight, dbias, dout, inp, s, flipped);
    } else {
        if (dbias) bias_backward(dbias, dout, rows, OC);
        if (dweight) conv2d_weight_gradient_blocked(ctx, dweight, dout, inp, s, flipped);
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
