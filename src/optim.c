//@ from 2
/* ----------------------------------------------------------------------------
   Optimisers: SGD and Adam, over one flat array of parameters.

   What this is: the update rule, applied to every parameter of a model at
   once. Because each model keeps all its parameters in one allocation (and
   its gradients in another, in the same order), an optimiser needs to know
   nothing about layers.
   What it is not: a scheduler; the learning rate is constant. */

typedef enum { OPTIMIZER_SGD, OPTIMIZER_ADAM } OptimizerKind;

typedef struct {
    OptimizerKind kind;
    float learning_rate;
    float beta1, beta2, epsilon;  // Adam's, from the protocol
    long step;                    // updates so far (Adam's bias correction needs it)
    float *m, *v;                 // (count) Adam's moment estimates, one allocation; NULL for SGD
//@ from 4
    Workers *workers;             // the model's threads, to share Adam's loop (NULL: the caller alone)
//@ end
//@ from 9
    float weight_decay;           // decoupled (AdamW): every step first scales each weight by 1 - lr * decay
    size_t frozen;                // --freeze: the first `frozen` parameters are left as they are
//@ end
} Optimizer;

Optimizer optimizer_new(OptimizerKind kind, float learning_rate, size_t count) {
    Optimizer o = {.kind = kind, .learning_rate = learning_rate, .beta1 = 0.9f, .beta2 = 0.999f, .epsilon = 1e-7f};
    if (kind == OPTIMIZER_ADAM) {
        o.m = xmalloc(2 * count * sizeof(float));
        o.v = o.m + count;
        memset(o.m, 0, 2 * count * sizeof(float));
    }
    return o;
}

void optimizer_free(Optimizer *o) {
    free(o->m);
    o->m = o->v = NULL;
}

// Plain gradient descent: a step downhill, proportional to the slope.
void sgd_update(float *params, const float *grads, size_t count, float learning_rate) {
    for (size_t i = 0; i < count; i++) params[i] -= learning_rate * grads[i];
}

/* Adam (Kingma and Ba, 2015, Algorithm 1): running averages of the gradient
   (m) and of its square (v), corrected for starting at zero, give every
   parameter a step of about learning_rate in the direction the recent
   gradients agree on, whatever the gradient's scale. Epsilon is added to
   sqrt(v_hat), as in the paper and in PyTorch; Keras adds it before the
   correction of v, which differs only for gradients near epsilon. */
void adam_update(Optimizer *o, float *params, const float *grads, size_t count) {
    //@ exercise 2 adam: count the step, update m and v, correct them for their start at zero, move each parameter (book.md 2.10).
    o->step++;
    float correction1 = 1.0f - powf(o->beta1, (float)o->step);
    float correction2 = 1.0f - powf(o->beta2, (float)o->step);
    for (size_t i = 0; i < count; i++) {
        float g = grads[i];
        o->m[i] = o->beta1 * o->m[i] + (1.0f - o->beta1) * g;
        o->v[i] = o->beta2 * o->v[i] + (1.0f - o->beta2) * g * g;
        float m_hat = o->m[i] / correction1, v_hat = o->v[i] / correction2;
        params[i] -= o->learning_rate * m_hat / (sqrtf(v_hat) + o->epsilon);
    }
    //@ stub
    (void)o, (void)params, (void)grads, (void)count;
    //@ end
}

//@ from 4
/* Adam on the model's threads. Every parameter's update depends on its own
   numbers alone, so the parameters are cut into ADAM_PARTS fixed parts and
   each part is adam_update on a view of the optimiser whose m and v start
   where the part does. Every view counts the same step, so the bias
   corrections and every bit are those of one loop over all parameters. */
enum { ADAM_PARTS = 16, ADAM_PARALLEL_FROM = 1 << 16 };  // fewer parameters: not worth waking a thread

typedef struct {
    const Optimizer *o;
    float *params;       // (count)
    const float *grads;  // (count)
    size_t count;
} AdamJob;

#if HAVE_X86_KERNELS
/* adam_update eight parameters at a time (AVX): the same operations in the
   same order (no fused multiply-add: the scalar loop has none either), each
   rounded as IEEE arithmetic rounds it, so the same bits. The compiler does
   not widen the scalar loop itself, as sqrtf may set errno. The last
   count % 8 go through the scalar loop. */
__attribute__((target("avx")))
void adam_update_avx(Optimizer *o, float *params /* (count) */, const float *grads /* (count) */, size_t count) {
    Optimizer tail = *o;  // for the last few, before the step is counted
    o->step++;
    float correction1 = 1.0f - powf(o->beta1, (float)o->step);
    float correction2 = 1.0f - powf(o->beta2, (float)o->step);
    const __m256 beta1 = _mm256_set1_ps(o->beta1), beta2 = _mm256_set1_ps(o->beta2);
    const __m256 rest1 = _mm256_set1_ps(1.0f - o->beta1), rest2 = _mm256_set1_ps(1.0f - o->beta2);
    const __m256 c1 = _mm256_set1_ps(correction1), c2 = _mm256_set1_ps(correction2);
    const __m256 rate = _mm256_set1_ps(o->learning_rate), epsilon = _mm256_set1_ps(o->epsilon);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256 g = _mm256_loadu_ps(grads + i);
        __m256 m = _mm256_add_ps(_mm256_mul_ps(beta1, _mm256_loadu_ps(o->m + i)), _mm256_mul_ps(rest1, g));
        __m256 v = _mm256_add_ps(_mm256_mul_ps(beta2, _mm256_loadu_ps(o->v + i)), _mm256_mul_ps(_mm256_mul_ps(rest2, g), g));
        _mm256_storeu_ps(o->m + i, m);
        _mm256_storeu_ps(o->v + i, v);
        __m256 m_hat = _mm256_div_ps(m, c1), v_hat = _mm256_div_ps(v, c2);
        __m256 step = _mm256_div_ps(_mm256_mul_ps(rate, m_hat), _mm256_add_ps(_mm256_sqrt_ps(v_hat), epsilon));
        _mm256_storeu_ps(params + i, _mm256_sub_ps(_mm256_loadu_ps(params + i), step));
    }
    tail.m += i, tail.v += i;
    adam_update(&tail, params + i, grads + i, count - i);
}
#endif

// The vector loop where this CPU has AVX: the same bits either way.
void adam_update_widest(Optimizer *o, float *params, const float *grads, size_t count) {
#if HAVE_X86_KERNELS
    if (__builtin_cpu_supports("avx")) {
        adam_update_avx(o, params, grads, count);
        return;
    }
#endif
    adam_update(o, params, grads, count);
}

void adam_part(void *context, int part, int worker) {
    (void)worker;
    const AdamJob *j = context;
    size_t from = j->count * (size_t)part / ADAM_PARTS, to = j->count * (size_t)(part + 1) / ADAM_PARTS;
    Optimizer view = *j->o;
    view.m += from, view.v += from;
    adam_update_widest(&view, j->params + from, j->grads + from, to - from);
}

//@ end
//@ from 9
/* Decoupled weight decay (Loshchilov and Hutter, 2019, "AdamW"). L2
   regularisation adds decay * w to the gradient, and Adam then divides it
   by sqrt(v_hat) like the rest: a weight with large gradients is hardly
   decayed at all. AdamW shrinks the weight itself, before Adam's step,
   by the same factor for every weight whatever its gradients:
       w <- w * (1 - lr * decay),  then  w <- w - lr * m_hat / (sqrt(v_hat) + eps).
   One multiply per weight, in its own loop, so every ISA gives the same
   bits and a decay of 0 gives exactly the run without it. It applies to
   every parameter, biases and batch norm's too, as PyTorch's AdamW does. */
void decay_weights(float *params, size_t count, float learning_rate, float weight_decay) {
    float keep = 1.0f - learning_rate * weight_decay;
    for (size_t i = 0; i < count; i++) params[i] *= keep;
}

//@ end
void optimizer_update(Optimizer *o, float *params, const float *grads, size_t count) {
//@ from 9
    if (o->frozen) {  // the rest, as if they were all: Adam's m and v start where they do
        Optimizer rest = *o;
        rest.frozen = 0;
        if (rest.m) rest.m += o->frozen, rest.v += o->frozen;
        optimizer_update(&rest, params + o->frozen, grads + o->frozen, count - o->frozen);
        o->step = rest.step;
        return;
    }
    if (o->weight_decay > 0) decay_weights(params, count, o->learning_rate, o->weight_decay);
//@ end
//@ from 4
    if (o->kind == OPTIMIZER_ADAM && o->workers && count >= ADAM_PARALLEL_FROM) {
        AdamJob job = {o, params, grads, count};
        parallel_for(o->workers, ADAM_PARTS, adam_part, &job);
        o->step++;  // what each part's view counted
        return;
    }
//@ end
//@ from 2 to 3
    if (o->kind == OPTIMIZER_ADAM) adam_update(o, params, grads, count);
//@ end
//@ from 4
    if (o->kind == OPTIMIZER_ADAM) adam_update_widest(o, params, grads, count);
//@ end
    else sgd_update(params, grads, count, o->learning_rate);
}
//@ end
