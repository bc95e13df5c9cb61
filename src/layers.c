//@ from 2
/* ----------------------------------------------------------------------------
   Layers: each a forward and a backward function, side by side
   (book.md, "Chapter 2" derives every backward pass).

   One convention for all of them, the one llm.c uses:
       name_forward(outputs..., inputs..., sizes)
       name_backward(input gradients..., output gradient, saved inputs..., sizes)
   Backward functions ADD into the gradients they produce (+=), never
   overwrite; the caller zeroes gradients once per step. Adding is what the
   chain rule asks when a value feeds two places, and chapter 3 relies on it.
   A NULL input gradient means "not needed" (nothing learns from the pixels).

   Arrays are flat and row-major; every pointer has its shape beside it.
   B is the batch size, C the input width, OC the output width.
   What this is not: fast. These loops are plain C; chapter 4 brings SIMD. */

// out = inp @ weight. The loop order b, c, oc walks both weight and out
// along their rows, one contiguous stretch at a time, which the cache and
// the compiler's vectoriser like; the textbook order b, oc, c would stride
// down a column of weight, one cache line per multiply.
void matmul_forward(float *out,           // (B, OC)
                    const float *inp,     // (B, C)
                    const float *weight,  // (C, OC)
                    int B, int C, int OC) {
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * OC;
        for (int oc = 0; oc < OC; oc++) o[oc] = 0.0f;
        for (int c = 0; c < C; c++) {
            float x = inp[(size_t)b * C + c];
            const float *w = weight + (size_t)c * OC;
            for (int oc = 0; oc < OC; oc++) o[oc] += x * w[oc];
        }
    }
}

// dinp += dout @ weight^T and dweight += inp^T @ dout (either may be NULL).
void matmul_backward(float *dinp,          // (B, C) or NULL
                     float *dweight,       // (C, OC) or NULL
                     const float *dout,    // (B, OC)
                     const float *inp,     // (B, C)
                     const float *weight,  // (C, OC)
                     int B, int C, int OC) {
    for (int b = 0; b < B; b++) {
        const float *g = dout + (size_t)b * OC;
        for (int c = 0; c < C && dweight; c++) {
            float x = inp[(size_t)b * C + c];
            float *dw = dweight + (size_t)c * OC;
            for (int oc = 0; oc < OC; oc++) dw[oc] += x * g[oc];
        }
        for (int c = 0; c < C && dinp; c++) {
            const float *w = weight + (size_t)c * OC;
            float sum = 0.0f;
            for (int oc = 0; oc < OC; oc++) sum += g[oc] * w[oc];
            dinp[(size_t)b * C + c] += sum;
        }
    }
}

// out += bias, on every row.
void bias_forward(float *out,         // (B, OC)
                  const float *bias,  // (OC)
                  int B, int OC) {
    for (int b = 0; b < B; b++)
        for (int oc = 0; oc < OC; oc++) out[(size_t)b * OC + oc] += bias[oc];
}

// dbias += the column sums of dout (the bias was added to every row).
void bias_backward(float *dbias,       // (OC)
                   const float *dout,  // (B, OC)
                   int B, int OC) {
    for (int b = 0; b < B; b++)
        for (int oc = 0; oc < OC; oc++) dbias[oc] += dout[(size_t)b * OC + oc];
}

//@ from 2 to 3
// A dense (fully connected) layer: out = inp @ weight + bias.
void dense_forward(float *out, const float *inp, const float *weight, const float *bias,
                   int B, int C, int OC) {  // out (B,OC), inp (B,C), weight (C,OC), bias (OC)
    matmul_forward(out, inp, weight, B, C, OC);
    bias_forward(out, bias, B, OC);
}

void dense_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                    const float *inp, const float *weight, int B, int C, int OC) {
    bias_backward(dbias, dout, B, OC);
    matmul_backward(dinp, dweight, dout, inp, weight, B, C, OC);
}

//@ end
// out = max(0, inp), elementwise over N values.
void relu_forward(float *out, const float *inp, size_t N) {
    for (size_t i = 0; i < N; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

// The slope is 1 where the input was positive and 0 elsewhere (at exactly 0
// we take 0, as every framework does).
void relu_backward(float *dinp, const float *dout, const float *inp, size_t N) {
    for (size_t i = 0; i < N; i++) {
        // dout is read whether it is used or not: the compiler may not move a
        // read out from under a condition, and there it would cost a branch
        // per number instead of vector instructions (book.md 4.21).
        float gradient = dout[i];
        dinp[i] += inp[i] > 0.0f ? gradient : 0.0f;
    }
}

// Softmax followed by cross-entropy against the targets, averaged over the
// batch. Computed from the logits with the log-sum-exp trick: subtracting
// the row's maximum before exp() changes nothing mathematically and keeps
// exp() from overflowing. Returns the mean loss; keeps the probabilities.
float softmax_cross_entropy_forward(float *probs,          // (B, K)
                                    const float *logits,   // (B, K)
                                    const float *targets,  // (B, K) each row sums to 1
                                    int B, int K) {
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K, *t = targets + (size_t)b * K;
        float *p = probs + (size_t)b * K;
        float max = z[0];
        for (int k = 1; k < K; k++) max = z[k] > max ? z[k] : max;
        float sum = 0.0f;
        for (int k = 0; k < K; k++) sum += p[k] = expf(z[k] - max);
        float log_sum = logf(sum), loss = 0.0f;
        for (int k = 0; k < K; k++) {
            p[k] /= sum;
            loss -= t[k] * (z[k] - max - log_sum);  // -t * log(softmax(z))
        }
        total += loss;
    }
    return (float)(total / B);
}

// d(mean loss)/d(logits) = (probs - targets) / B: the famous "p - y".
void softmax_cross_entropy_backward(float *dlogits,        // (B, K)
                                    float dloss,           // gradient of the mean loss, 1 at the top
                                    const float *probs,    // (B, K)
                                    const float *targets,  // (B, K)
                                    int B, int K) {
    //@ exercise 2 softmax-backward: add dloss times d(mean loss)/d(logits) into dlogits (book.md 2.5).
    float scale = dloss / (float)B;
    for (size_t i = 0; i < (size_t)B * K; i++) dlogits[i] += scale * (probs[i] - targets[i]);
    //@ stub
    (void)dlogits, (void)dloss, (void)probs, (void)targets, (void)B, (void)K;
    //@ end
}

// Glorot (Xavier) uniform: U(-limit, limit) with limit = sqrt(6 / (fan_in +
// fan_out)), which keeps the variance of activations and of gradients about
// the same from layer to layer at the start of training.
void glorot_uniform(float *weight, size_t n, int fan_in, int fan_out, Rng *rng) {
    float limit = sqrtf(6.0f / (float)(fan_in + fan_out));
    for (size_t i = 0; i < n; i++) weight[i] = (2.0f * rng_uniform(rng) - 1.0f) * limit;
}
//@ end
