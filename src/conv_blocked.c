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

// The scratch, in floats, conv2d_backward_blocked needs: the flipped kernel.
size_t conv2d_blocked_scratch(const ConvShape *s) { return conv_patch_size(s) * (size_t)s->out_channels; }

// out = bias on every row + patches(inp) @ weight: a convolution is one GEMM
// whose A is the image's im2col matrix, read inside the packing, and whose
// sums start from the bias.
void conv2d_forward_blocked(const GemmContext *ctx,
                            float *out,           // (B, OH, OW, OC)
                            const float *inp,     // (B, H, W, C)
                            const float *weight,  // (KH, KW, C, OC)
                            const float *bias,    // (OC)
                            const ConvShape *s) {
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
    if (dbias) bias_backward(dbias, dout, rows, OC);
    if (dweight) gemm(ctx, patch, OC, rows, patches_operand(inp, s, 1), matrix_operand(dout, OC), dweight, OC, 1);
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
