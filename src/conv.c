//@ from 4
/* ----------------------------------------------------------------------------
   Convolution and pooling (book.md, "Chapter 4").

   What this is: the layers of a convolutional network, each a forward and a
   backward function with the convention of chapter 2 (backward ADDS into the
   gradients it produces; a NULL gradient is not wanted), in two versions
   that the tests hold against each other:
   - naive: the definition, loop for loop. Slow, and the reference.
   - im2col: every patch the kernel sees copied into a row of a matrix, so
     the convolution becomes one matrix multiply (chapter 2's), and its
     backward pass two more, with col2im to add the patch gradients back.
   What it is not: fast. Chapter 4's second half keeps these as references
   and runs the same arithmetic through a blocked, vectorised multiply.

   Layout: activations are NHWC, (batch, height, width, channels), so the C
   values of one pixel sit together; a kernel is (KH, KW, C, OC), which read
   as a (KH*KW*C, OC) matrix is exactly what a patch row multiplies. Stride
   1; `pad` zeros around the image: 0 is "valid" (the output shrinks by
   KH-1), KH/2 is "same" (it keeps its size; kernels are odd and square). */

// How the graph computes convolutions and matrix multiplies (--kernel): the
// two references here, or the blocked GEMM of chapter 4's second half.
typedef enum { KERNEL_NAIVE, KERNEL_IM2COL, KERNEL_BLOCKED } KernelKind;

// The shape of one convolution: input (B, H, W, C), kernel (KH, KW, C, OC),
// output (B, OH, OW, OC) with OH = H + 2*pad - KH + 1.
typedef struct {
    int batch, height, width, channels;
    int kernel_h, kernel_w, pad, out_channels;
    int out_h, out_w;
} ConvShape;

ConvShape conv_shape(int B, int H, int W, int C, int KH, int KW, int pad, int OC) {
    return (ConvShape){.batch = B, .height = H, .width = W, .channels = C, .kernel_h = KH,
                       .kernel_w = KW, .pad = pad, .out_channels = OC,
                       .out_h = H + 2 * pad - KH + 1, .out_w = W + 2 * pad - KW + 1};
}

// Stops the program (a bug) unless the shape is one conv_shape makes.
void check_conv_shape(const ConvShape *g, const char *who) {
    require(g->batch > 0 && g->height > 0 && g->width > 0 && g->channels > 0 && g->kernel_h > 0 &&
            g->kernel_w > 0 && g->pad >= 0, "%s: a patch geometry with a size <= 0", who);
    require(g->out_h == g->height + 2 * g->pad - g->kernel_h + 1 && g->out_w == g->width + 2 * g->pad - g->kernel_w + 1 &&
            g->out_h > 0 && g->out_w > 0, "%s: output %dx%d, but a %dx%d image with a %dx%d kernel and padding %d "
            "gives %dx%d", who, g->out_h, g->out_w, g->height, g->width, g->kernel_h, g->kernel_w, g->pad,
            g->height + 2 * g->pad - g->kernel_h + 1, g->width + 2 * g->pad - g->kernel_w + 1);
}

// The rows (output pixels) and columns (patch entries) of the im2col matrix.
size_t conv_rows(const ConvShape *s) { return (size_t)s->batch * s->out_h * s->out_w; }
size_t conv_patch_size(const ConvShape *s) { return (size_t)s->kernel_h * s->kernel_w * s->channels; }

/* The definition: out[b,oh,ow,oc] = bias[oc] + the sum over the kernel
   window of inp[b, oh+kh-pad, ow+kw-pad, c] * weight[kh,kw,c,oc], where a
   position outside the image contributes 0 (the padding). Seven loops;
   cross-correlation, strictly (the kernel is not flipped), which is what
   every deep-learning library calls convolution. */
void conv2d_forward_naive(float *out,           // (B, OH, OW, OC)
                          const float *inp,     // (B, H, W, C)
                          const float *weight,  // (KH, KW, C, OC)
                          const float *bias,    // (OC)
                          const ConvShape *s) {
    int C = s->channels, OC = s->out_channels;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++)
                for (int oc = 0; oc < OC; oc++) {
                    float sum = bias[oc];
                    for (int kh = 0; kh < s->kernel_h; kh++)
                        for (int kw = 0; kw < s->kernel_w; kw++) {
                            int ih = oh + kh - s->pad, iw = ow + kw - s->pad;
                            if (ih < 0 || ih >= s->height || iw < 0 || iw >= s->width) continue;
                            const float *x = inp + (((size_t)b * s->height + ih) * s->width + iw) * C;
                            const float *w = weight + ((size_t)kh * s->kernel_w + kw) * C * OC + oc;
                            for (int c = 0; c < C; c++) sum += x[c] * w[(size_t)c * OC];
                        }
                    out[(((size_t)b * s->out_h + oh) * s->out_w + ow) * OC + oc] = sum;
                }
}

/* The gradients, from the same sum read backwards. Each input pixel was
   used by every output whose window covered it, so
       dinp[b,ih,iw,c]    += sum over (kh, kw, oc) of dout[b, ih-kh+pad, iw-kw+pad, oc] * weight[kh,kw,c,oc]
       dweight[kh,kw,c,oc] += sum over (b, oh, ow) of inp[b, oh+kh-pad, ow+kw-pad, c] * dout[b,oh,ow,oc]
       dbias[oc]          += sum over (b, oh, ow) of dout[b,oh,ow,oc]
   (terms whose index falls outside the image or the output are left out).
   The first is again a convolution: of dout, padded by KH-1-pad, with the
   kernel turned 180 degrees and its C and OC swapped. */
void conv2d_backward_naive(float *dinp,          // (B, H, W, C) or NULL
                           float *dweight,       // (KH, KW, C, OC) or NULL
                           float *dbias,         // (OC) or NULL
                           const float *dout,    // (B, OH, OW, OC)
                           const float *inp,     // (B, H, W, C)
                           const float *weight,  // (KH, KW, C, OC)
                           const ConvShape *s) {
    int C = s->channels, OC = s->out_channels;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++) {
                const float *g = dout + (((size_t)b * s->out_h + oh) * s->out_w + ow) * OC;
                for (int oc = 0; oc < OC && dbias; oc++) dbias[oc] += g[oc];
                for (int kh = 0; kh < s->kernel_h; kh++)
                    for (int kw = 0; kw < s->kernel_w; kw++) {
                        int ih = oh + kh - s->pad, iw = ow + kw - s->pad;
                        if (ih < 0 || ih >= s->height || iw < 0 || iw >= s->width) continue;
                        size_t pixel = (((size_t)b * s->height + ih) * s->width + iw) * C;
                        size_t tap = ((size_t)kh * s->kernel_w + kw) * C * OC;
                        for (int c = 0; c < C; c++)
                            for (int oc = 0; oc < OC; oc++) {
                                if (dweight) dweight[tap + (size_t)c * OC + oc] += inp[pixel + c] * g[oc];
                                if (dinp) dinp[pixel + c] += g[oc] * weight[tap + (size_t)c * OC + oc];
                            }
                    }
            }
}

/* im2col: row (b, oh, ow) of `cols` is the patch that output pixel sees,
   in kernel order (kh, kw, c), with zeros where the window hangs over the
   edge. Then out = cols @ weight is the whole convolution in one multiply,
   at the price of KH*KW copies of the input (see the book for sizes). */
void im2col(float *cols,        // (B*OH*OW, KH*KW*C)
            const float *inp,   // (B, H, W, C)
            const ConvShape *s) {
    int C = s->channels;
    size_t row = 0;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++, row++) {
                float *patch = cols + row * conv_patch_size(s);
                for (int kh = 0; kh < s->kernel_h; kh++)
                    for (int kw = 0; kw < s->kernel_w; kw++, patch += C) {
                        int ih = oh + kh - s->pad, iw = ow + kw - s->pad;
                        if (ih < 0 || ih >= s->height || iw < 0 || iw >= s->width)
                            memset(patch, 0, (size_t)C * sizeof(float));
                        else
                            memcpy(patch, inp + (((size_t)b * s->height + ih) * s->width + iw) * C,
                                   (size_t)C * sizeof(float));
                    }
            }
}

// col2im, im2col's backward: each patch entry's gradient is ADDED to the
// input pixel it was copied from (a pixel sits in up to KH*KW patches).
void col2im(float *dinp,         // (B, H, W, C)
            const float *dcols,  // (B*OH*OW, KH*KW*C)
            const ConvShape *s) {
    int C = s->channels;
    size_t row = 0;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++, row++) {
                const float *patch = dcols + row * conv_patch_size(s);
                for (int kh = 0; kh < s->kernel_h; kh++)
                    for (int kw = 0; kw < s->kernel_w; kw++, patch += C) {
                        int ih = oh + kh - s->pad, iw = ow + kw - s->pad;
                        if (ih < 0 || ih >= s->height || iw < 0 || iw >= s->width) continue;
                        float *x = dinp + (((size_t)b * s->height + ih) * s->width + iw) * C;
                        for (int c = 0; c < C; c++) x[c] += patch[c];
                    }
            }
}

// The im2col convolution: a copy, then chapter 2's matrix multiply, then the
// bias. `cols` is scratch memory of conv_rows * conv_patch_size floats.
void conv2d_forward_im2col(float *out, const float *inp, const float *weight, const float *bias,
                           const ConvShape *s, float *cols) {  // shapes as conv2d_forward_naive
    int M = (int)conv_rows(s), K = (int)conv_patch_size(s);
    im2col(cols, inp, s);
    matmul_forward(out, cols, weight, M, K, s->out_channels);
    bias_forward(out, bias, M, s->out_channels);
}

// Its backward: dweight += cols^T @ dout and dcols = dout @ weight^T are
// chapter 2's matmul_backward; col2im adds dcols into dinp. `scratch` holds
// two im2col matrices: the patches again, and their gradient.
void conv2d_backward_im2col(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const ConvShape *s, float *scratch) {
    size_t M = conv_rows(s), K = conv_patch_size(s);
    float *cols = scratch, *dcols = dinp ? scratch + M * K : NULL;  // (M, K) each
    im2col(cols, inp, s);
    if (dcols) memset(dcols, 0, M * K * sizeof(float));
    if (dbias) bias_backward(dbias, dout, (int)M, s->out_channels);
    matmul_backward(dcols, dweight, dout, cols, weight, (int)M, (int)K, s->out_channels);
    if (dinp) col2im(dinp, dcols, s);
}

/* Max pooling, 2x2 windows with stride 2: each output is the largest of
   four inputs. An odd size is floored, as Keras and PyTorch do: 11 -> 5,
   and the last row and column are never looked at. A window's four inputs
   are read as four rows of C channels, each channel decided by
   compare-and-select, so the compiler does several channels per
   instruction (SSE2, NEON); ties keep the first maximum (strict >). */
enum { POOL = 2 };

void max_pool_forward(float *restrict out,        // (B, H/2, W/2, C)
                      const float *restrict inp,  // (B, H, W, C)
                      int B, int H, int W, int C) {
    int OH = H / POOL, OW = W / POOL;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float *o = out + (((size_t)b * OH + oh) * OW + ow) * C;                       // (C)
                const float *x00 = inp + (((size_t)b * H + POOL * oh) * W + POOL * ow) * C;   // (C) each
                const float *x01 = x00 + C, *x10 = x00 + (size_t)W * C, *x11 = x10 + C;
                for (int c = 0; c < C; c++) {
                    float m = x00[c];
                    m = x01[c] > m ? x01[c] : m;
                    m = x10[c] > m ? x10[c] : m;
                    o[c] = x11[c] > m ? x11[c] : m;
                }
            }
}

/* The gradient goes to the input that was the maximum, and only to it (the
   others did not move the output). On a tie it goes to the first maximum in
   reading order (top-left first), which is also what the forward pass's
   strict > picks. The maximum is found again from the input rather than
   saved, which costs a pass but no memory. */
void max_pool_backward(float *dinp,         // (B, H, W, C)
                       const float *dout,   // (B, H/2, W/2, C)
                       const float *inp,    // (B, H, W, C)
                       int B, int H, int W, int C) {
    int OH = H / POOL, OW = W / POOL;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++)
                for (int c = 0; c < C; c++) {
                    size_t first = (((size_t)b * H + POOL * oh) * W + POOL * ow) * C + c, best = first;
                    for (int dh = 0; dh < POOL; dh++)
                        for (int dw = 0; dw < POOL; dw++) {
                            size_t at = first + ((size_t)dh * W + dw) * C;
                            if (inp[at] > inp[best]) best = at;
                        }
                    dinp[best] += dout[(((size_t)b * OH + oh) * OW + ow) * C + c];
                }
}

/* The same gradient for the fast path, the same bits, in the forward
   pass's compare-and-select form. gcc vectorises neither `d = t ? d + g : d`
   nor && on comparisons without -fno-trapping-math, which the chapters do
   not use: hence this loop. */
void max_pool_backward_fast(float *restrict dinp,        // (B, H, W, C)
                            const float *restrict dout,  // (B, H/2, W/2, C)
                            const float *restrict inp,   // (B, H, W, C)
                            int B, int H, int W, int C) {
    int OH = H / POOL, OW = W / POOL;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                size_t first = (((size_t)b * H + POOL * oh) * W + POOL * ow) * C;
                const float *x00 = inp + first, *x01 = x00 + C, *x10 = x00 + (size_t)W * C, *x11 = x10 + C;  // (C) each
                float *d00 = dinp + first, *d01 = d00 + C, *d10 = d00 + (size_t)W * C, *d11 = d10 + C;       // (C) each
                const float *g = dout + (((size_t)b * OH + oh) * OW + ow) * C;                               // (C)
                for (int c = 0; c < C; c++) {
                    // The reference's walk through the window: the first input
                    // holds the gradient, and each strictly larger one takes it
                    // from whoever held it. The others add -0, which changes no
                    // number (not even a -0, as adding +0 would).
                    float gradient = g[c], m = x00[c];
                    float g00 = gradient, g01 = -0.0f, g10 = -0.0f, g11 = -0.0f;
                    int larger = x01[c] > m;
                    g01 = larger ? gradient : g01, g00 = larger ? -0.0f : g00;
                    m = larger ? x01[c] : m;
                    larger = x10[c] > m;
                    g10 = larger ? gradient : g10, g00 = larger ? -0.0f : g00, g01 = larger ? -0.0f : g01;
                    m = larger ? x10[c] : m;
                    larger = x11[c] > m;
                    g11 = larger ? gradient : g11, g00 = larger ? -0.0f : g00, g01 = larger ? -0.0f : g01;
                    g10 = larger ? -0.0f : g10;
                    d00[c] += g00, d01[c] += g01, d10[c] += g10, d11[c] += g11;
                }
            }
}

/* Average pooling, the windows of max pooling (2x2, stride 2, an odd last
   row or column left out): each output is the mean of its four inputs, so
   each input of a window moved it by a quarter of its own change. */
void avg_pool_forward(float *out,          // (B, H/2, W/2, C)
                      const float *inp,    // (B, H, W, C)
                      int B, int H, int W, int C) {
    //@ exercise 4 avg-pool: each output the mean of its 2x2 window, channel by channel.
    int OH = H / POOL, OW = W / POOL;
    size_t row = (size_t)W * C;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                const float *top = inp + ((size_t)b * H + (size_t)POOL * oh) * row + (size_t)POOL * ow * C;
                float *o = out + (((size_t)b * OH + oh) * OW + ow) * C;
                for (int c = 0; c < C; c++)
                    o[c] = 0.25f * ((top[c] + top[C + c]) + (top[row + c] + top[row + C + c]));
            }
    //@ stub
    (void)out, (void)inp, (void)B, (void)H, (void)W, (void)C;
    //@ end
}

void avg_pool_backward(float *dinp,        // (B, H, W, C)
                       const float *dout,  // (B, H/2, W/2, C)
                       int B, int H, int W, int C) {
    //@ exercise 4 avg-pool: add a quarter of each output's gradient into each input of its window.
    int OH = H / POOL, OW = W / POOL;
    size_t row = (size_t)W * C;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float *top = dinp + ((size_t)b * H + (size_t)POOL * oh) * row + (size_t)POOL * ow * C;
                const float *g = dout + (((size_t)b * OH + oh) * OW + ow) * C;
                for (int c = 0; c < C; c++) {
                    float quarter = 0.25f * g[c];
                    top[c] += quarter, top[C + c] += quarter, top[row + c] += quarter, top[row + C + c] += quarter;
                }
            }
    //@ stub
    (void)dinp, (void)dout, (void)B, (void)H, (void)W, (void)C;
    //@ end
}

/* A convolution with a stride: output (oh, ow) reads the input from row
   oh * stride - pad and column ow * stride - pad, so OH = (H + 2 pad - KH)
   / stride + 1, floored (OW likewise). `s` is conv_shape's stride-1 shape:
   its out_h and out_w are not this output's. A stride of 2 does a quarter
   of the work and halves the height and width, as pooling does. */
void conv2d_forward_strided(float *out,           // (B, OH, OW, OC) for this stride
                            const float *inp,     // (B, H, W, C)
                            const float *weight,  // (KH, KW, C, OC)
                            const float *bias,    // (OC)
                            const ConvShape *s, int stride) {
    //@ exercise 4 conv-stride: the convolution's sum at every stride-th position, into an output of the strided size.
    int OH = (s->height + 2 * s->pad - s->kernel_h) / stride + 1;
    int OW = (s->width + 2 * s->pad - s->kernel_w) / stride + 1;
    size_t C = (size_t)s->channels, OC = (size_t)s->out_channels;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float *o = out + (((size_t)b * OH + oh) * OW + ow) * OC;
                for (size_t oc = 0; oc < OC; oc++) o[oc] = bias[oc];
                for (int kh = 0; kh < s->kernel_h; kh++) {
                    int ih = oh * stride + kh - s->pad;
                    if (ih < 0 || ih >= s->height) continue;
                    for (int kw = 0; kw < s->kernel_w; kw++) {
                        int iw = ow * stride + kw - s->pad;
                        if (iw < 0 || iw >= s->width) continue;
                        const float *pixel = inp + (((size_t)b * s->height + ih) * s->width + iw) * C;
                        const float *taps = weight + ((size_t)kh * s->kernel_w + kw) * C * OC;
                        for (size_t c = 0; c < C; c++)
                            for (size_t oc = 0; oc < OC; oc++) o[oc] += pixel[c] * taps[c * OC + oc];
                    }
                }
            }
    //@ stub
    (void)out, (void)inp, (void)weight, (void)bias, (void)s, (void)stride;
    //@ end
}
//@ end
