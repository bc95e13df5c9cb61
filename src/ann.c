//@ from 2
/* ----------------------------------------------------------------------------
   The ANN: 784 -> Dense(128) ReLU -> Dense(64) ReLU -> Dense(10) softmax.

//@ end
//@ from 2 to 3
   What this is: the first model of the book, with its forward and backward
   passes written out by hand from the layers above.
   What it is not: reusable for another architecture; that is what the
   automatic differentiation of chapter 3 is for.

   Memory, as in llm.c: one allocation for all parameters, one for their
   gradients (same order, so the optimiser can treat both as flat arrays),
   one for the activations and one for their gradients, each carved into
   named pointers. */
//@ end
//@ from 4
   What this is: its widths, from which ann_graph builds it on the engine.
   What it is not: hand-written passes; the engine builds every model. */
//@ end
//@ from 2

enum { ANN_LAYERS = 3 };
static const int ANN_WIDTHS[ANN_LAYERS + 1] = {IMAGE_SIZE, 128, 64, NUM_CLASSES};
//@ end
//@ from 2 to 3
// The hand-written ANN teaches backprop (chapter 2) and checks the engine
// (chapter 3); from chapter 4 on, the engine builds every model.

typedef struct {
    float *weight[ANN_LAYERS];  // weight[l]: (ANN_WIDTHS[l], ANN_WIDTHS[l+1])
    float *bias[ANN_LAYERS];    // bias[l]:   (ANN_WIDTHS[l+1])
} AnnParameters;

typedef struct {
    float *dense[ANN_LAYERS];     // dense[l]: (B, ANN_WIDTHS[l+1]) = x @ weight[l] + bias[l]
    float *relu[ANN_LAYERS - 1];  // relu[l]:  (B, ANN_WIDTHS[l+1]) = max(0, dense[l])
    float *probs;                 // (B, 10) softmax of dense[2]; no gradient needed
} AnnActivations;

typedef struct {
    AnnParameters params, grads;
    AnnActivations acts, dacts;
    float *param_memory, *grad_memory;  // (param_count) each
    float *act_memory, *dact_memory;    // (max_batch * act_count) each
    size_t param_count, act_count;  // act_count: floats of activations for max_batch images
    int max_batch;
} Ann;

// Points params at consecutive stretches of memory; returns the count.
// With memory == NULL it only counts.
size_t ann_carve_parameters(AnnParameters *p, float *memory) {
    size_t used = 0;
    for (int l = 0; l < ANN_LAYERS; l++) {
        p->weight[l] = memory ? memory + used : NULL;
        used += (size_t)ANN_WIDTHS[l] * ANN_WIDTHS[l + 1];
        p->bias[l] = memory ? memory + used : NULL;
        used += (size_t)ANN_WIDTHS[l + 1];
    }
    return used;
}

size_t ann_carve_activations(AnnActivations *a, float *memory, int batch) {
    size_t used = 0;
    for (int l = 0; l < ANN_LAYERS; l++) {
        size_t size = (size_t)batch * ANN_WIDTHS[l + 1];
        a->dense[l] = memory ? memory + used : NULL;
        used += size;
        if (l < ANN_LAYERS - 1) {
            a->relu[l] = memory ? memory + used : NULL;
            used += size;
        }
    }
    a->probs = memory ? memory + used : NULL;
    return used + (size_t)batch * NUM_CLASSES;
}

// Glorot-uniform weights from the init stream, layer by layer; zero biases.
void ann_initialize(Ann *net, uint64_t seed) {
    Rng rng = rng_new(seed, STREAM_INIT);
    memset(net->param_memory, 0, net->param_count * sizeof(float));
    for (int l = 0; l < ANN_LAYERS; l++)
        glorot_uniform(net->params.weight[l], (size_t)ANN_WIDTHS[l] * ANN_WIDTHS[l + 1],
                       ANN_WIDTHS[l], ANN_WIDTHS[l + 1], &rng);
}

Ann ann_new(int max_batch, uint64_t seed) {
    Ann net = {0};
    net.max_batch = max_batch;
    net.param_count = ann_carve_parameters(&net.params, NULL);
    net.param_memory = xmalloc(net.param_count * sizeof(float));
    net.grad_memory = xmalloc(net.param_count * sizeof(float));
    ann_carve_parameters(&net.params, net.param_memory);
    ann_carve_parameters(&net.grads, net.grad_memory);
    net.act_count = ann_carve_activations(&net.acts, NULL, max_batch);
    net.act_memory = xmalloc(net.act_count * sizeof(float));
    net.dact_memory = xmalloc(net.act_count * sizeof(float));
    ann_carve_activations(&net.acts, net.act_memory, max_batch);
    ann_carve_activations(&net.dacts, net.dact_memory, max_batch);
    ann_initialize(&net, seed);
    return net;
}

void ann_free(Ann *net) {
    free(net->param_memory);
    free(net->grad_memory);
    free(net->act_memory);
    free(net->dact_memory);
}

// The forward pass on B images; returns the mean loss, leaves the
// probabilities in acts.probs.
float ann_forward(Ann *net, const float *images, const float *targets, int B) {  // (B,784) (B,10)
    require(B >= 1 && B <= net->max_batch, "batch %d, but the ANN has room for 1 to %d images", B, net->max_batch);
    const AnnParameters *p = &net->params;
    AnnActivations *a = &net->acts;
    const float *x = images;
    for (int l = 0; l < ANN_LAYERS; l++) {
        dense_forward(a->dense[l], x, p->weight[l], p->bias[l], B, ANN_WIDTHS[l], ANN_WIDTHS[l + 1]);
        if (l == ANN_LAYERS - 1) break;
        relu_forward(a->relu[l], a->dense[l], (size_t)B * ANN_WIDTHS[l + 1]);
        x = a->relu[l];
    }
    return softmax_cross_entropy_forward(a->probs, a->dense[ANN_LAYERS - 1], targets, B, NUM_CLASSES);
}

// The backward pass: the chain rule, from the loss back to every weight.
// Adds into net->grads; the caller zeroes them once per step.
void ann_backward(Ann *net, const float *images, const float *targets, int B) {
    const AnnParameters *p = &net->params;
    const AnnActivations *a = &net->acts;
    AnnActivations *d = &net->dacts;
    memset(net->dact_memory, 0, net->act_count * sizeof(float));
    softmax_cross_entropy_backward(d->dense[ANN_LAYERS - 1], 1.0f, a->probs, targets, B, NUM_CLASSES);
    for (int l = ANN_LAYERS - 1; l >= 0; l--) {
        const float *x = l > 0 ? a->relu[l - 1] : images;
        float *dx = l > 0 ? d->relu[l - 1] : NULL;  // nothing learns from the pixels
        dense_backward(dx, net->grads.weight[l], net->grads.bias[l], d->dense[l], x, p->weight[l],
                       B, ANN_WIDTHS[l], ANN_WIDTHS[l + 1]);
        if (l > 0) relu_backward(d->dense[l - 1], d->relu[l - 1], a->dense[l - 1], (size_t)B * ANN_WIDTHS[l]);
    }
}

// The ANN seen through the training loop's Model interface. It has no
// training mode, so training and inference differ only by the backward pass.
float ann_compute_gradients(void *net, const Batch *batch, float *probs) {
    Ann *ann = net;
    float loss = ann_forward(ann, batch->images, batch->targets, batch->count);
    ann_backward(ann, batch->images, batch->targets, batch->count);
    memcpy(probs, ann->acts.probs, (size_t)batch->count * NUM_CLASSES * sizeof(float));
    return loss;
}

float ann_predict(void *net, const Batch *batch, float *probs) {
    Ann *ann = net;
    float loss = ann_forward(ann, batch->images, batch->targets, batch->count);
    memcpy(probs, ann->acts.probs, (size_t)batch->count * NUM_CLASSES * sizeof(float));
    return loss;
}

Model ann_model(Ann *net) {
    return (Model){.name = "ann", .net = net, .compute_gradients = ann_compute_gradients,
                   .predict = ann_predict, .params = net->param_memory, .grads = net->grad_memory,
                   .count = net->param_count, .max_batch = net->max_batch};
}
//@ end
