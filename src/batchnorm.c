//@ from 5
/* ----------------------------------------------------------------------------
   Batch normalisation and dropout (book.md, "Chapter 5").

   What this is: the two layers that let the deeper CNN train fast and
   generalise, each a forward and a backward function with chapter 2's
   convention (backward ADDS), and each with two modes:
   - batch_norm: in training, every channel is normalised with the mean and
     variance of this batch, and running averages of both are kept; in
     inference, the running averages are used, so one image's answer does
     not depend on the others in its batch.
   - dropout: in training, each value is kept with probability 1 - rate and
     scaled by 1/(1 - rate) ("inverted" dropout, so the expected value is
     unchanged); in inference it is the identity.
   What it is not: a general normaliser. Statistics are taken over every
   dimension but the last (the channel of NHWC, the feature of a dense
   layer), which is what the protocol's BatchNorm layers do.

   The protocol's constants are Keras's: momentum 0.99 for the running
   averages (running = 0.99 * running + 0.01 * batch; PyTorch writes the
   same thing as momentum 0.1 of the new value), epsilon 1e-3, and the
   biased variance (divided by the count) both for normalising and for the
   running average. */

static const float BN_MOMENTUM = 0.99f, BN_EPSILON = 1e-3f;

/* Training mode, per channel c over the N rows of x:
       mean = sum(x) / N,  var = sum((x - mean)^2) / N      (in double: N is up to 50,176)
       x_hat = (x - mean) / sqrt(var + eps),  out = gamma * x_hat + beta
   x_hat and 1/sqrt(var + eps) are kept for the backward pass, and the
   running averages move 1% of the way to this batch's statistics.
   Every loop walks x row by row, all channels of a row together, as memory
   holds them: going channel by channel down the rows would touch one float
   of every 64-byte line and make the layer several times slower. */
enum { BN_MAX_CHANNELS = 1024 };

void batch_norm_forward_train(float *out,           // (N, C)
                              float *x_hat,         // (N, C) saved for backward
                              float *inv_std,       // (C) saved for backward
                              float *running_mean,  // (C) updated
                              float *running_var,   // (C) updated
                              const float *x,       // (N, C)
                              const float *gamma, const float *beta,  // (C) each
                              size_t N, int C) {
    require(C <= BN_MAX_CHANNELS, "batch_norm: %d channels, at most %d", C, BN_MAX_CHANNELS);
    double sum[BN_MAX_CHANNELS] = {0}, squares[BN_MAX_CHANNELS] = {0};
    float mean[BN_MAX_CHANNELS];
    for (size_t i = 0; i < N; i++)
        for (int c = 0; c < C; c++) sum[c] += x[i * C + c];
    for (int c = 0; c < C; c++) mean[c] = (float)(sum[c] / (double)N);
    for (size_t i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            double d = (double)x[i * C + c] - mean[c];
            squares[c] += d * d;
        }
    for (int c = 0; c < C; c++) {
        float var = (float)(squares[c] / (double)N);
        inv_std[c] = 1.0f / sqrtf(var + BN_EPSILON);
        running_mean[c] = BN_MOMENTUM * running_mean[c] + (1.0f - BN_MOMENTUM) * mean[c];
        running_var[c] = BN_MOMENTUM * running_var[c] + (1.0f - BN_MOMENTUM) * var;
    }
    for (size_t i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            x_hat[i * C + c] = (x[i * C + c] - mean[c]) * inv_std[c];
            out[i * C + c] = gamma[c] * x_hat[i * C + c] + beta[c];
        }
}

// Inference mode: the running averages stand in for the batch's statistics.
void batch_norm_forward_infer(float *out, const float *x, const float *gamma, const float *beta,
                              const float *running_mean, const float *running_var, size_t N, int C) {
    require(C <= BN_MAX_CHANNELS, "batch_norm: %d channels, at most %d", C, BN_MAX_CHANNELS);
    float scale[BN_MAX_CHANNELS];
    for (int c = 0; c < C; c++) scale[c] = gamma[c] / sqrtf(running_var[c] + BN_EPSILON);
    for (size_t i = 0; i < N; i++)
        for (int c = 0; c < C; c++) out[i * C + c] = (x[i * C + c] - running_mean[c]) * scale[c] + beta[c];
}

/* The backward pass (book.md derives it). With g = dout, per channel:
       dbeta  += sum(g)            dgamma += sum(g * x_hat)
       dx     += gamma * inv_std * (g - mean(g) - x_hat * mean(g * x_hat))
   The last line is the three paths from x to the loss added up: directly
   through x_hat, through the mean, and through the variance. */
void batch_norm_backward(float *dx,            // (N, C) or NULL
                         float *dgamma,        // (C) or NULL
                         float *dbeta,         // (C) or NULL
                         const float *dout,    // (N, C)
                         const float *x_hat,   // (N, C)
                         const float *inv_std, // (C)
                         const float *gamma,   // (C)
                         size_t N, int C) {
    require(C <= BN_MAX_CHANNELS, "batch_norm: %d channels, at most %d", C, BN_MAX_CHANNELS);
    double sum_g[BN_MAX_CHANNELS] = {0}, sum_g_xhat[BN_MAX_CHANNELS] = {0};
    float scale[BN_MAX_CHANNELS], mean_g[BN_MAX_CHANNELS], mean_g_xhat[BN_MAX_CHANNELS];
    for (size_t i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            sum_g[c] += dout[i * C + c];
            sum_g_xhat[c] += (double)dout[i * C + c] * x_hat[i * C + c];
        }
    for (int c = 0; c < C; c++) {
        if (dbeta) dbeta[c] += (float)sum_g[c];
        if (dgamma) dgamma[c] += (float)sum_g_xhat[c];
        scale[c] = gamma[c] * inv_std[c];
        mean_g[c] = (float)(sum_g[c] / (double)N);
        mean_g_xhat[c] = (float)(sum_g_xhat[c] / (double)N);
    }
    if (!dx) return;
    for (size_t i = 0; i < N; i++)
        for (int c = 0; c < C; c++)
            dx[i * C + c] += scale[c] * (dout[i * C + c] - mean_g[c] - x_hat[i * C + c] * mean_g_xhat[c]);
}

/* Dropout in training: each of the n values of one item is kept with
   probability 1 - rate, from the item's own keyed stream, so the mask does
   not depend on which thread draws it or on any other item. The mask is
   saved as the factor each value was multiplied by (0 or 1/(1 - rate)). */
void dropout_forward_train(float *out,        // (n)
                           float *mask,       // (n) saved for backward
                           const float *x,    // (n)
                           size_t n, float rate, Rng *rng) {
    float keep = 1.0f / (1.0f - rate);
    for (size_t i = 0; i < n; i++) {
        mask[i] = rng_uniform(rng) < rate ? 0.0f : keep;
        out[i] = x[i] * mask[i];
    }
}

// The gradient flows where the value did, with the same factor.
void dropout_backward(float *dx, const float *dout, const float *mask, size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += dout[i] * mask[i];
}
//@ end
