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
   same rule with momentum 0.01, the weight of the new value, and its
   default 0.1 is Keras's 0.9), epsilon 1e-3, and the
   biased variance (divided by the count) both for normalising and for the
   running average. */

static const float BN_MOMENTUM = 0.99f, BN_EPSILON = 1e-3f;

/* Training mode, per channel c over the N rows of x:
       mean = sum(x) / N,  var = sum((x - mean)^2) / N      (in double: N = B*H*W, 50,176 at batch 64)
       x_hat = (x - mean) / sqrt(var + eps),  out = gamma * x_hat + beta
   mean and 1/sqrt(var + eps), one float each per channel, are kept for the
   backward pass, which computes x_hat again from x, the same bits, row by
   row: storing x_hat would cost a pass over memory to write it, and its
   whole size in memory for each layer, for a subtraction and a product a
   value. The running averages move 1% of the way to this batch's
   statistics.

   Every loop walks x row by row, all channels of a row together, as memory
   holds them: going channel by channel down the rows would touch one float
   of every 64-byte line and make the layer several times slower.

   The rows are cut into BN_PARTS fixed parts, which the threads share out:
   each part sums its rows, and the parts' sums are added in part order. The
   parts depend on N alone, so the sums, and every bit after them, are the
   same at any number of threads (and with none: `workers` may be NULL).
   A part adds into an array on its own thread's stack and copies it out
   when done. Were the parts' sums side by side in one array, two threads
   would write one cache line at each boundary, every row, and the line
   would travel between their cores each time ("false sharing").

   The work on one row is a function of its own whose array parameters are
   `restrict`: a promise that they do not overlap. Without it the compiler
   must assume that a store to `out` may change `mean` or `gamma`, so it
   reloads them for every value and works one value at a time; with it, it
   works on a vector of channels at once. A vector lane is one channel doing
   that channel's operations in the same order, so the bits are those of one
   value at a time. */
enum { BN_MAX_CHANNELS = 1024, BN_PARTS = 16 };

typedef struct {
    float *out;                           // (N, C): what a pass writes
    const float *x, *dout;                // (N, C) each: what a pass reads
    const float *mean, *scale, *shift;    // (C) each: normalising is (x - mean) * scale, then + shift
    const float *gamma;                   // (C) training: out = gamma * x_hat + shift
    const float *inv_std;                 // (C) the backward pass: x_hat = (x - mean) * inv_std
    const float *mean_g, *mean_g_xhat;    // (C) each: the backward pass's
    double *sums, *more_sums;             // (BN_PARTS, C) each: the parts' sums
    size_t N;
    int C;
} BnJob;

size_t bn_first_row(const BnJob *j, int part) { return j->N * (size_t)part / BN_PARTS; }

// One row's C values added into sum, or (with a mean) their squared distances.
void bn_row_sums(double *restrict sum, const float *restrict x, size_t C) {
    for (size_t c = 0; c < C; c++) sum[c] += x[c];
}

void bn_row_squares(double *restrict sum, const float *restrict x, const float *restrict mean, size_t C) {
    for (size_t c = 0; c < C; c++) {
        double d = (double)x[c] - mean[c];
        sum[c] += d * d;
    }
}

// sums[part][c] = the sum of x (no mean) or of (x - mean)^2 over the part's rows.
void bn_sums_task(void *context, int part, int worker) {
    (void)worker;
    const BnJob *j = context;
    size_t C = (size_t)j->C;
    double sum[BN_MAX_CHANNELS];  // on this thread's stack (see the top)
    for (size_t c = 0; c < C; c++) sum[c] = 0;
    for (size_t i = bn_first_row(j, part); i < bn_first_row(j, part + 1); i++)
        if (j->mean) bn_row_squares(sum, j->x + i * C, j->mean, C);
        else bn_row_sums(sum, j->x + i * C, C);
    memcpy(j->sums + (size_t)part * C, sum, C * sizeof(double));
}

// Training: x_hat = (x - mean) * scale and out = gamma * x_hat + shift.
void bn_row_normalize(float *restrict out, const float *restrict x, const float *restrict mean,
                      const float *restrict scale, const float *restrict gamma, const float *restrict shift, size_t C) {
    for (size_t c = 0; c < C; c++) {
        float x_hat = (x[c] - mean[c]) * scale[c];
        out[c] = gamma[c] * x_hat + shift[c];
    }
}

// The backward pass's x_hat for one row: the forward pass's expression,
// on the same floats, so the same bits.
void bn_row_x_hat(float *restrict x_hat, const float *restrict x, const float *restrict mean,
                  const float *restrict inv_std, size_t C) {
    for (size_t c = 0; c < C; c++) x_hat[c] = (x[c] - mean[c]) * inv_std[c];
}

// Inference: out = (x - mean) * scale + shift (scale has gamma in it).
void bn_row_normalize_infer(float *restrict out, const float *restrict x, const float *restrict mean,
                            const float *restrict scale, const float *restrict shift, size_t C) {
    for (size_t c = 0; c < C; c++) out[c] = (x[c] - mean[c]) * scale[c] + shift[c];
}

void bn_normalize_task(void *context, int part, int worker) {
    (void)worker;
    const BnJob *j = context;
    size_t C = (size_t)j->C;
    for (size_t i = bn_first_row(j, part); i < bn_first_row(j, part + 1); i++)
        if (j->gamma) bn_row_normalize(j->out + i * C, j->x + i * C, j->mean, j->scale, j->gamma, j->shift, C);
        else bn_row_normalize_infer(j->out + i * C, j->x + i * C, j->mean, j->scale, j->shift, C);
}

// Adds the parts' sums in part order: the same order at any thread count.
void bn_add_parts(double *total, const double *sums, int C) {
    for (int c = 0; c < C; c++) total[c] = 0;
    for (int part = 0; part < BN_PARTS; part++)
        for (int c = 0; c < C; c++) total[c] += sums[(size_t)part * C + c];
}

void batch_norm_forward_train(Workers *workers,
                              float *out,           // (N, C)
                              float *batch_mean,    // (C) saved for backward
                              float *inv_std,       // (C) saved for backward
                              float *running_mean,  // (C) updated
                              float *running_var,   // (C) updated
                              const float *x,       // (N, C)
                              const float *gamma, const float *beta,  // (C) each
                              size_t N, int C) {
    require(C <= BN_MAX_CHANNELS, "batch_norm: %d channels, at most %d", C, BN_MAX_CHANNELS);
    double total[BN_MAX_CHANNELS];
    BnJob job = {.x = x, .N = N, .C = C};
    job.sums = xmalloc((size_t)BN_PARTS * C * sizeof(double));
    parallel_for(workers, BN_PARTS, bn_sums_task, &job);
    bn_add_parts(total, job.sums, C);
    for (int c = 0; c < C; c++) batch_mean[c] = (float)(total[c] / (double)N);
    job.mean = batch_mean;
    parallel_for(workers, BN_PARTS, bn_sums_task, &job);
    bn_add_parts(total, job.sums, C);
    for (int c = 0; c < C; c++) {
        float var = (float)(total[c] / (double)N);
        inv_std[c] = 1.0f / sqrtf(var + BN_EPSILON);
        running_mean[c] = BN_MOMENTUM * running_mean[c] + (1.0f - BN_MOMENTUM) * batch_mean[c];
        running_var[c] = BN_MOMENTUM * running_var[c] + (1.0f - BN_MOMENTUM) * var;
    }
    job.out = out, job.scale = inv_std, job.gamma = gamma, job.shift = beta;
    parallel_for(workers, BN_PARTS, bn_normalize_task, &job);
    free(job.sums);
}

// Inference mode: the running averages stand in for the batch's statistics.
void batch_norm_forward_infer(Workers *workers, float *out, const float *x, const float *gamma, const float *beta,
                              const float *running_mean, const float *running_var, size_t N, int C) {
    require(C <= BN_MAX_CHANNELS, "batch_norm: %d channels, at most %d", C, BN_MAX_CHANNELS);
    float scale[BN_MAX_CHANNELS];
    for (int c = 0; c < C; c++) scale[c] = gamma[c] / sqrtf(running_var[c] + BN_EPSILON);
    BnJob job = {.out = out, .x = x, .mean = running_mean, .scale = scale, .shift = beta, .N = N, .C = C};
    parallel_for(workers, BN_PARTS, bn_normalize_task, &job);
}

/* The backward pass (book.md derives it). With g = dout, per channel:
       dbeta  += sum(g)            dgamma += sum(g * x_hat)
       dx     += gamma * inv_std * (g - mean(g) - x_hat * mean(g * x_hat))
   The last line is the three paths from x to the loss added up: directly
   through x_hat, through the mean, and through the variance. The sums go in
   the same fixed parts as the forward pass's. */
void bn_row_gradient_sums(double *restrict sum_g, double *restrict sum_g_xhat, const float *restrict dout,
                          const float *restrict x_hat, size_t C) {
    for (size_t c = 0; c < C; c++) {
        sum_g[c] += dout[c];
        sum_g_xhat[c] += (double)dout[c] * x_hat[c];
    }
}

void bn_gradient_sums_task(void *context, int part, int worker) {
    (void)worker;
    const BnJob *j = context;
    size_t C = (size_t)j->C;
    double sum_g[BN_MAX_CHANNELS], sum_g_xhat[BN_MAX_CHANNELS];  // on this thread's stack
    float x_hat[BN_MAX_CHANNELS];  // one row's, computed again
    for (size_t c = 0; c < C; c++) sum_g[c] = sum_g_xhat[c] = 0;
    for (size_t i = bn_first_row(j, part); i < bn_first_row(j, part + 1); i++) {
        bn_row_x_hat(x_hat, j->x + i * C, j->mean, j->inv_std, C);
        bn_row_gradient_sums(sum_g, sum_g_xhat, j->dout + i * C, x_hat, C);
    }
    memcpy(j->sums + (size_t)part * C, sum_g, C * sizeof(double));
    memcpy(j->more_sums + (size_t)part * C, sum_g_xhat, C * sizeof(double));
}

void bn_row_input_gradient(float *restrict dx, const float *restrict dout, const float *restrict x_hat,
                           const float *restrict scale, const float *restrict mean_g,
                           const float *restrict mean_g_xhat, size_t C) {
    for (size_t c = 0; c < C; c++) {
        //@ exercise 5 batch-norm-dx: add the input's gradient, the three paths through x_hat, the mean and the variance (book.md 5.3).
        dx[c] += scale[c] * (dout[c] - mean_g[c] - x_hat[c] * mean_g_xhat[c]);
        //@ stub
        (void)dx, (void)dout, (void)x_hat, (void)scale, (void)mean_g, (void)mean_g_xhat;
        //@ end
    }
}

void bn_input_gradient_task(void *context, int part, int worker) {
    (void)worker;
    const BnJob *j = context;
    size_t C = (size_t)j->C;
    float x_hat[BN_MAX_CHANNELS];
    for (size_t i = bn_first_row(j, part); i < bn_first_row(j, part + 1); i++) {
        bn_row_x_hat(x_hat, j->x + i * C, j->mean, j->inv_std, C);
        bn_row_input_gradient(j->out + i * C, j->dout + i * C, x_hat, j->scale, j->mean_g, j->mean_g_xhat, C);
    }
}

void batch_norm_backward(Workers *workers,
                         float *dx,            // (N, C) or NULL
                         float *dgamma,        // (C) or NULL
                         float *dbeta,         // (C) or NULL
                         const float *dout,    // (N, C)
                         const float *x,       // (N, C) the forward pass's input
                         const float *batch_mean,  // (C) saved by the forward pass
                         const float *inv_std, // (C) saved by the forward pass
                         const float *gamma,   // (C)
                         size_t N, int C) {
    require(C <= BN_MAX_CHANNELS, "batch_norm: %d channels, at most %d", C, BN_MAX_CHANNELS);
    double sum_g[BN_MAX_CHANNELS], sum_g_xhat[BN_MAX_CHANNELS];
    float scale[BN_MAX_CHANNELS], mean_g[BN_MAX_CHANNELS], mean_g_xhat[BN_MAX_CHANNELS];
    BnJob job = {.dout = dout, .x = x, .mean = batch_mean, .inv_std = inv_std, .N = N, .C = C};
    job.sums = xmalloc(2 * (size_t)BN_PARTS * C * sizeof(double));
    job.more_sums = job.sums + (size_t)BN_PARTS * C;
    parallel_for(workers, BN_PARTS, bn_gradient_sums_task, &job);
    bn_add_parts(sum_g, job.sums, C);
    bn_add_parts(sum_g_xhat, job.more_sums, C);
    free(job.sums);
    for (int c = 0; c < C; c++) {
        if (dbeta) dbeta[c] += (float)sum_g[c];
        if (dgamma) dgamma[c] += (float)sum_g_xhat[c];
        scale[c] = gamma[c] * inv_std[c];
        mean_g[c] = (float)(sum_g[c] / (double)N);
        mean_g_xhat[c] = (float)(sum_g_xhat[c] / (double)N);
    }
    if (!dx) return;
    job.out = dx, job.scale = scale, job.mean_g = mean_g, job.mean_g_xhat = mean_g_xhat;
    parallel_for(workers, BN_PARTS, bn_input_gradient_task, &job);
}

#if HAVE_X86_KERNELS
/* rng_uniform_fill sixteen draws at a time, with AVX-512: two vectors of
   eight states, draws i..i+7 and i+8..i+15, each jumping sixteen draws at
   once (64-bit multiplies: AVX512DQ). The output's shifts, xor and
   rotation are integer operations, and 24 bits convert to a float
   exactly: the same bits as one draw at a time. */
__attribute__((target("avx512f,avx512dq")))
void rng_uniform_fill_avx512(Rng *r, float *out /* (n) */, size_t n) {
    size_t i = 0;
    if (n >= 16) {
        uint64_t A, C, s[16] = {r->state};  // s[l]: the state of draw i + l
        rng_jump(r->increment, 16, &A, &C);
        for (int l = 1; l < 16; l++) s[l] = s[l - 1] * PCG_MULTIPLIER + r->increment;
        __m512i lo = _mm512_loadu_si512(s), hi = _mm512_loadu_si512(s + 8);
        const __m512i a = _mm512_set1_epi64((long long)A), c = _mm512_set1_epi64((long long)C);
        for (; i + 16 <= n; i += 16) {
            // rng_output on each lane: ((old >> 18) ^ old) >> 27 to 32 bits, rotated right by old >> 59
            __m512i x = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(_mm512_xor_si512(_mm512_srli_epi64(lo, 18), lo), 27))),
                _mm512_cvtepi64_epi32(_mm512_srli_epi64(_mm512_xor_si512(_mm512_srli_epi64(hi, 18), hi), 27)), 1);
            __m512i rotation = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(lo, 59))),
                                                  _mm512_cvtepi64_epi32(_mm512_srli_epi64(hi, 59)), 1);
            __m512i top24 = _mm512_srli_epi32(_mm512_rorv_epi32(x, rotation), 8);
            _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_cvtepi32_ps(top24), _mm512_set1_ps(1.0f / 16777216.0f)));
            lo = _mm512_add_epi64(_mm512_mullo_epi64(lo, a), c);
            hi = _mm512_add_epi64(_mm512_mullo_epi64(hi, a), c);
        }
        _mm512_storeu_si512(s, lo);
        r->state = s[0];
        // Clean upper halves for the SSE code that runs next (the chapters'
        // default): with dirty ones, every SSE instruction that writes a
        // register waits on the register's old value. gcc omits this before
        // the call below, which it compiles as a jump.
        _mm256_zeroupper();
    }
    rng_uniform_fill(r, out + i, n - i);
}
#endif

// The widest fill this CPU has: all give the same bits.
void rng_uniform_fill_widest(Rng *r, float *out, size_t n) {
#if HAVE_X86_KERNELS
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
        rng_uniform_fill_avx512(r, out, n);
        return;
    }
#endif
    rng_uniform_fill(r, out, n);
}

/* Dropout in training: each of the n values of one item is kept with
   probability 1 - rate, from the item's own keyed stream, so the mask does
   not depend on which thread draws it or on any other item. Each value is
   multiplied by its factor, 0 or 1/(1 - rate).

   The mask is not saved. It is the stream's next n draws, and the backward
   pass opens the same stream and draws them again: a draw costs a few
   instructions, far less than writing a float to memory in the forward
   pass and reading it back in the backward one. (Batch norm's x_hat is
   computed again for the same reason.) The draws go through a block on the
   stack, small enough to stay in the fastest cache. */
enum { DROPOUT_BLOCK = 1024 };

// A value's factor: 0 where its draw falls below the rate, keep = 1/(1 - rate)
// elsewhere. Both passes draw a block first, into `draws`, then choose: in
// one loop the compiler branches on each draw, a coin toss the processor
// guesses wrong as often as the rate says, for a dozen cycles each; apart,
// the second loop has no branch.
float dropout_factor(float draw, float rate, float keep) { return draw < rate ? 0.0f : keep; }

void dropout_forward_train(float *out,      // (n)
                           const float *x,  // (n)
                           size_t n, float rate, Rng *rng) {
    float draws[DROPOUT_BLOCK], keep = 1.0f / (1.0f - rate);
    for (size_t at = 0; at < n; at += DROPOUT_BLOCK) {
        size_t m = n - at < DROPOUT_BLOCK ? n - at : DROPOUT_BLOCK;
        rng_uniform_fill_widest(rng, draws, m);
        for (size_t i = 0; i < m; i++) out[at + i] = x[at + i] * dropout_factor(draws[i], rate, keep);
    }
}

// The gradient flows where the value did, with the same factor: the same
// stream, opened again, gives the same draws.
void dropout_backward(float *dx,          // (n)
                      const float *dout,  // (n)
                      size_t n, float rate, Rng *rng) {
    float draws[DROPOUT_BLOCK], keep = 1.0f / (1.0f - rate);
    for (size_t at = 0; at < n; at += DROPOUT_BLOCK) {
        size_t m = n - at < DROPOUT_BLOCK ? n - at : DROPOUT_BLOCK;
        rng_uniform_fill_widest(rng, draws, m);
        for (size_t i = 0; i < m; i++) dx[at + i] += dout[at + i] * dropout_factor(draws[i], rate, keep);
    }
}
//@ end
