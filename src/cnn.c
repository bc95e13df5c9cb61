//@ from 3 to 3
/* ----------------------------------------------------------------------------
   Two ops made outside the engine (book.md, chapter 3's exercises). An op is
   a forward and a backward function in an Op, and graph_op makes a node of
   it: the engine's table OPS is not needed, and neither is a change to it.

   tanh, elementwise. Its slope is 1 - tanh(x)^2, which the node's own value
   gives, so nothing more needs to be saved. */
void tanh_op_forward(Node *n, Graph *g) {
    (void)g;
    for (size_t i = 0; i < n->size; i++) n->value[i] = tanhf(n->inputs[0]->value[i]);
}

void tanh_op_backward(Node *n, Graph *g) {
    (void)g;
    //@ exercise 3 tanh-backward: add n->grad times the slope of tanh into the input's gradient, where it has one.
    Node *x = n->inputs[0];
    if (x->grad)
        for (size_t i = 0; i < n->size; i++) {
            float y = n->value[i];
            x->grad[i] += n->grad[i] * (1.0f - y * y);
        }
    //@ stub
    (void)n;
    //@ end
}

const Op TANH_OP = {.name = "tanh", .forward = tanh_op_forward, .backward = tanh_op_backward};

Node *tanh_of(Graph *g, Node *x) {
    return graph_op(g, &TANH_OP, (Node *[]){x}, 1, x->batched, x->shape + x->batched, x->rank - x->batched);
}

/* mean_squared_error: pred (B, K), targets (B, K) -> (1/B) times the sum
   over b and k of (pred - target)^2, a scalar: the mean over the batch, as
   softmax_cross_entropy takes it. */
void mse_op_forward(Node *n, Graph *g) {
    (void)g;
    const Node *pred = n->inputs[0], *targets = n->inputs[1];
    double total = 0;
    for (size_t i = 0; i < pred->size; i++) {
        double d = (double)pred->value[i] - targets->value[i];
        total += d * d;
    }
    n->value[0] = (float)(total / pred->shape[0]);
}

void mse_op_backward(Node *n, Graph *g) {
    (void)g;
    //@ exercise 3 mse-backward: add n->grad[0] times d(loss)/d(pred) into pred's gradient; the targets get none.
    Node *pred = n->inputs[0];
    const Node *targets = n->inputs[1];
    if (pred->grad) {
        float twice_over_b = 2.0f * n->grad[0] / (float)pred->shape[0];
        for (size_t i = 0; i < pred->size; i++)
            pred->grad[i] += twice_over_b * (pred->value[i] - targets->value[i]);
    }
    //@ stub
    (void)n;
    //@ end
}

const Op MSE_OP = {.name = "mean_squared_error", .forward = mse_op_forward, .backward = mse_op_backward};

Node *mean_squared_error(Graph *g, Node *pred, Node *targets) {
    require(pred->batched && targets->batched && pred->rank == 2 && targets->rank == 2 &&
            pred->shape[1] == targets->shape[1], "mean_squared_error needs pred and targets (B, K)");
    require(!targets->requires_grad, "mean_squared_error: the targets must not need a gradient");
    return graph_op(g, &MSE_OP, (Node *[]){pred, targets}, 2, 0, (int[]){1}, 1);
}
//@ end
//@ from 4
/* ----------------------------------------------------------------------------
   The models of chapter 4 on the engine, and their summary table.

   The protocol's basic CNN, built from the ops above; a table of each
   layer's output, parameters and multiply-adds per image; and build_model,
   which builds any model by the name --model takes. */

// A convolution block's parameters, Glorot kernel and zero bias.
Node *conv_layer(Graph *g, Node *x, int out_channels, int pad, const char *kernel_label,
                 const char *bias_label) {
    Node *kernel = graph_parameter(g, kernel_label, (int[]){3, 3, x->shape[3], out_channels}, 4, INIT_GLOROT);
    Node *bias = graph_parameter(g, bias_label, (int[]){out_channels}, 1, INIT_ZEROS);
    return conv2d(g, x, kernel, bias, pad);
}

Node *dense_layer(Graph *g, Node *x, int out_width, const char *weight_label, const char *bias_label) {
    Node *weight = graph_parameter(g, weight_label, (int[]){x->shape[1], out_width}, 2, INIT_GLOROT);
    Node *bias = graph_parameter(g, bias_label, (int[]){out_width}, 1, INIT_ZEROS);
    return bias_add(g, matmul(g, x, weight), bias);
}

/* The basic CNN: conv 3x3x32 valid, ReLU, max pool, conv 3x3x64 valid,
   ReLU, max pool, flatten, dense 128, ReLU, dense 10, softmax.
   28x28x1 -> 26x26x32 -> 13x13x32 -> 11x11x64 -> 5x5x64 = 1600 -> 128 -> 10.
   Each block pools before its ReLU: ReLU never changes which input of a
   window is largest, so the result and its gradient are the same to the
   bit (a NaN aside, which stops training anyway; book.md 4.7), and the
   ReLU runs on a quarter as many numbers, forward and backward. */
GraphClassifier basic_cnn_graph(int max_batch, uint64_t seed) {
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = reshape(g, images, (int[]){IMAGE_ROWS, IMAGE_COLS, 1}, 3);
    x = relu(g, max_pool(g, conv_layer(g, x, 32, 0, "kernel1", "bias1")));
    x = relu(g, max_pool(g, conv_layer(g, x, 64, 0, "kernel2", "bias2")));
    x = relu(g, dense_layer(g, flatten(g, x), 128, "weight3", "bias3"));
    x = dense_layer(g, x, NUM_CLASSES, "weight4", "bias4");
    Node *loss = softmax_cross_entropy(g, x, targets);
    graph_compile(g, loss);
    graph_initialize(g, seed);
    return (GraphClassifier){.graph = g, .images = images, .targets = targets, .loss = loss};
}
//@ from 5

/* The deeper CNN: two blocks of (conv 3x3 same, batch norm, ReLU) twice,
   max pool, dropout 0.25; then dense 256, batch norm, ReLU, dropout 0.5,
   dense 10. The convolutions and the first dense layer keep their biases
   even before batch norm (which subtracts them again), as the Keras
   original does, so the parameter count is the protocol's 872,426.
   28x28x1 -> 28x28x32 -> 14x14x32 -> 14x14x64 -> 7x7x64 = 3136 -> 256 -> 10.
   `with_batch_norm` and `with_dropout` are 1 for the protocol's model;
   chapter 7 takes one of them out at a time, to measure what each is worth
   (an ablation). Taking a layer out leaves every other layer as it was. */
typedef struct {
    int with_batch_norm, with_dropout;
} DeeperParts;

Node *maybe_batch_norm(Graph *g, Node *x, DeeperParts parts, const char *const labels[4]) {
    return parts.with_batch_norm ? batch_norm(g, x, labels) : x;
}

Node *maybe_dropout(Graph *g, Node *x, DeeperParts parts, float rate) {
    return parts.with_dropout ? dropout(g, x, rate) : x;
}

Node *conv_bn(Graph *g, Node *x, int out_channels, DeeperParts parts, const char *const labels[6]) {
    return maybe_batch_norm(g, conv_layer(g, x, out_channels, 1, labels[0], labels[1]), parts, labels + 2);
}

Node *conv_bn_relu(Graph *g, Node *x, int out_channels, DeeperParts parts, const char *const labels[6]) {
    return relu(g, conv_bn(g, x, out_channels, parts, labels));
}

// The second block of each pair pools before its ReLU, as the basic CNN does.
Node *conv_bn_pool_relu(Graph *g, Node *x, int out_channels, DeeperParts parts, const char *const labels[6]) {
    return relu(g, max_pool(g, conv_bn(g, x, out_channels, parts, labels)));
}

GraphClassifier deeper_cnn_graph(int max_batch, uint64_t seed, DeeperParts parts) {
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = reshape(g, images, (int[]){IMAGE_ROWS, IMAGE_COLS, 1}, 3);
    x = conv_bn_relu(g, x, 32, parts, (const char *const[]){"kernel1", "bias1", "bn1.gamma", "bn1.beta", "bn1.mean", "bn1.variance"});
    x = conv_bn_pool_relu(g, x, 32, parts, (const char *const[]){"kernel2", "bias2", "bn2.gamma", "bn2.beta", "bn2.mean", "bn2.variance"});
    x = maybe_dropout(g, x, parts, 0.25f);
    x = conv_bn_relu(g, x, 64, parts, (const char *const[]){"kernel3", "bias3", "bn3.gamma", "bn3.beta", "bn3.mean", "bn3.variance"});
    x = conv_bn_pool_relu(g, x, 64, parts, (const char *const[]){"kernel4", "bias4", "bn4.gamma", "bn4.beta", "bn4.mean", "bn4.variance"});
    x = maybe_dropout(g, x, parts, 0.25f);
    x = dense_layer(g, flatten(g, x), 256, "weight5", "bias5");
    x = maybe_batch_norm(g, x, parts, (const char *const[]){"bn5.gamma", "bn5.beta", "bn5.mean", "bn5.variance"});
    x = maybe_dropout(g, relu(g, x), parts, 0.5f);
    x = dense_layer(g, x, NUM_CLASSES, "weight6", "bias6");
    Node *loss = softmax_cross_entropy(g, x, targets);
    graph_compile(g, loss);
    graph_initialize(g, seed);
    return (GraphClassifier){.graph = g, .images = images, .targets = targets, .loss = loss};
}
//@ end

//@ from 9
/* --dropout RATE, one number for a search to tune: the last dropout (the
   one before the classifier) gets RATE, every earlier one RATE / 2, the
   deeper CNN's own ratio (0.25 and 0.5). The rate is read at each forward
   pass, so it can change after the graph is built. Returns how many
   dropouts there are: 0 means the model has none to set. */
int set_dropout_rates(Graph *g, double rate) {
    int count = 0;
    for (int i = g->count - 1; i >= 0; i--)
        if (g->nodes[i].op == &OPS[OP_DROPOUT]) g->nodes[i].rate = (float)(count++ == 0 ? rate : rate / 2);
    return count;
}

//@ end
//@ from 8
// Chapter 8's models, built in "Residual and depthwise-separable networks", below.
int is_chapter8_model(const char *name);
GraphClassifier chapter8_graph(const char *name, int max_batch, uint64_t seed);

//@ end
// Every model of this chapter, by the name --model takes, computed by
// `kernel` (with `gemm`, which the graph takes over, for KERNEL_BLOCKED).
GraphClassifier build_model(const char *name, int max_batch, uint64_t seed, KernelKind kernel, GemmContext *gemm) {
    GraphClassifier c = strcmp(name, "ann") == 0 ? ann_graph(max_batch, seed)
//@ from 5
                      : strcmp(name, "deeper") == 0 ? deeper_cnn_graph(max_batch, seed, (DeeperParts){1, 1})
//@ end
//@ from 7
                      : strcmp(name, "deeper-nodropout") == 0 ? deeper_cnn_graph(max_batch, seed, (DeeperParts){1, 0})
                      : strcmp(name, "deeper-nobn") == 0 ? deeper_cnn_graph(max_batch, seed, (DeeperParts){0, 1})
//@ end
//@ from 8
                      : is_chapter8_model(name) ? chapter8_graph(name, max_batch, seed)
//@ end
                      : basic_cnn_graph(max_batch, seed);
    c.graph->kernel = kernel;
    c.graph->gemm = gemm;
    return c;
}

// Multiply-adds one image costs in a node: the heavy ops only, since the
// rest (ReLU, pooling, bias) do one cheap operation per value.
double multiply_adds_per_image(const Node *n) {
//@ from 8
    if (n->op && n->op->multiply_adds) return n->op->multiply_adds(n);
//@ end
    if (n->op == &OPS[OP_CONV2D]) {
        const Node *w = n->inputs[1];
        return (double)n->item_size * w->shape[0] * w->shape[1] * w->shape[2];
    }
    if (n->op == &OPS[OP_MATMUL]) return (double)n->inputs[1]->shape[0] * n->inputs[1]->shape[1];
    return 0;
}

// The layer table printed before training, and the totals a reader can
// check against the protocol (225,034 parameters for the basic CNN).
void print_model_summary(const GraphClassifier *c, const char *name) {
    const Graph *g = c->graph;
    size_t parameters = 0;
    double total_macs = 0;
    printf("\nmodel %s, layer by layer (shapes per image):\n  %-22s %-16s %10s %14s\n", name, "layer", "output",
           "parameters", "multiply-adds");
//@ from 4 to 4
    size_t largest_patches = 0;  // floats of one image's im2col matrix
//@ end
//@ from 5
    size_t trainable = 0, largest_patches = 0;  // floats of one image's im2col matrix
//@ end
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        if (!n->op || n->op == &OPS[OP_SOFTMAX_CROSS_ENTROPY]) continue;
        size_t own = 0;
//@ from 4 to 4
        for (int k = 0; k < n->input_count; k++) own += n->inputs[k]->is_parameter ? n->inputs[k]->size : 0;
//@ end
//@ from 5
        for (int k = 0; k < n->input_count; k++) {
            if (n->inputs[k]->is_parameter) own += n->inputs[k]->size, trainable += n->inputs[k]->size;
            if (n->inputs[k]->is_state) own += n->inputs[k]->size;
        }
//@ end
        char shape[48] = "";
        for (int d = n->batched; d < n->rank; d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), d > n->batched ? "x%d" : "%d", n->shape[d]);
        double macs = multiply_adds_per_image(n);
        if (n->op == &OPS[OP_CONV2D]) {
            ConvShape s = conv_shape_of(n);
            size_t per_image = conv_rows(&s) / (size_t)s.batch * conv_patch_size(&s);
            largest_patches = per_image > largest_patches ? per_image : largest_patches;
        }
        printf("  %-22s %-16s %10zu %14.0f\n", n->op->name, shape, own, macs);
        parameters += own;
        total_macs += macs;
    }
    printf("  %-22s %-16s %10zu %14.0f   (%.2f MFLOP per image forward)\n", "total", "", parameters,
           total_macs, 2e-6 * total_macs);
//@ from 5
    if (trainable != parameters)
        printf("  %zu of the parameters are trained; the other %zu are batch norm's running statistics\n",
               trainable, parameters - trainable);
//@ end
    if (largest_patches)
        printf("  im2col would need %.1f MB at batch %d (the largest patch matrix and its gradient)\n",
               2.0 * largest_patches * g->max_batch * sizeof(float) / 1e6, g->max_batch);
}
//@ end
//@ from 5
/* ----------------------------------------------------------------------------
   Two more normalisations (book.md, chapter 5's exercises); the models do not
   use them.

   Batch norm folded into the convolution before it, for inference. In
   inference mode batch norm is gamma (y - mean) / sqrt(var + eps) + beta of
   a fixed mean and variance, and y = bias + the sum of x * weight: both are
   linear in x, so together they are one convolution, with each output
   channel's weights and bias changed. `weight` is (fan_in, C), the output
   channel last, as a kernel (KH, KW, C_in, OC) is with fan_in = KH KW C_in. */
void fold_batch_norm(float *weight, float *bias, size_t fan_in, int C, const float *gamma, const float *beta,
                     const float *running_mean, const float *running_var) {
    //@ exercise 5 fold-batch-norm: change each output channel's weights and bias so that the convolution alone gives conv + batch norm (inference).
    for (int c = 0; c < C; c++) {
        float factor = gamma[c] / sqrtf(running_var[c] + BN_EPSILON);
        bias[c] = beta[c] + factor * (bias[c] - running_mean[c]);
        for (size_t k = 0; k < fan_in; k++) weight[k * (size_t)C + c] *= factor;
    }
    //@ stub
    (void)weight, (void)bias, (void)fan_in, (void)C, (void)gamma, (void)beta, (void)running_mean, (void)running_var;
    //@ end
}

/* Layer normalisation (Ba, Kiros and Hinton, 2016): batch norm turned on its
   side. Each row of x (N, C) is normalised over its own C values, not each
   channel over the batch, so there are no running statistics and training
   and inference are the same; gamma and beta are per channel still. The
   forward pass keeps x_hat (N, C) and 1 / sqrt(var + eps) per row (N). */
void layer_norm_forward(float *out, float *x_hat, float *inv_std, const float *x, const float *gamma,
                        const float *beta, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *row = x + (size_t)i * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++) mean += row[c];
        mean /= C;
        for (int c = 0; c < C; c++) var += (row[c] - mean) * (row[c] - mean);
        var /= C;
        inv_std[i] = (float)(1.0 / sqrt(var + BN_EPSILON));
        for (int c = 0; c < C; c++) {
            size_t at = (size_t)i * C + c;
            x_hat[at] = (float)((row[c] - mean) * inv_std[i]);
            out[at] = gamma[c] * x_hat[at] + beta[c];
        }
    }
}

void layer_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dout, const float *x_hat,
                         const float *inv_std, const float *gamma, int N, int C) {
    //@ exercise 5 layer-norm-backward: add the gradients of x, gamma and beta; x reaches its row's outputs three ways (book.md 5.3, on its side).
    for (int i = 0; i < N; i++) {
        const float *g_row = dout + (size_t)i * C, *h_row = x_hat + (size_t)i * C;
        double sum_g = 0, sum_gh = 0;
        for (int c = 0; c < C; c++) {
            double g = (double)g_row[c] * gamma[c];
            sum_g += g, sum_gh += g * h_row[c];
            dgamma[c] += g_row[c] * h_row[c];
            dbeta[c] += g_row[c];
        }
        for (int c = 0; c < C; c++)
            dx[(size_t)i * C + c] += (float)(inv_std[i] * ((double)g_row[c] * gamma[c] - sum_g / C - h_row[c] * sum_gh / C));
    }
    //@ stub
    (void)dx, (void)dgamma, (void)dbeta, (void)dout, (void)x_hat, (void)inv_std, (void)gamma, (void)N, (void)C;
    //@ end
}
//@ end
