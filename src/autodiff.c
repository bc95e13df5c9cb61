//@ from 3
/* ----------------------------------------------------------------------------
   Reverse-mode automatic differentiation (book.md, "Chapter 3").

   What this is: a graph of nodes, each holding a value, a gradient, and the
   op that computed it from its input nodes. Running the ops in topological
   order computes the loss; running their backward functions in the reverse
   order computes the gradient of the loss with respect to every node, by
   the chain rule, one op at a time. A new layer is a new op: a forward and a
   backward function and a row in the op table; the ordering, the memory and
   the backward pass stay as they are.
   What it is not: dynamic. The graph is built once, compiled (ordered, and
   given all its memory), then replayed for every batch; only the batch size
   may change between runs, up to the size it was compiled for.

   The rules the engine keeps, which the tests check:
   - Backward ADDS into gradients. A node that feeds two ops receives the sum
     of both contributions, which is what the chain rule says.
   - graph_backward() clears the gradients of the computed (interior) nodes
     itself, so calling it twice gives the same interior gradients; but it
     adds into the gradients of parameters, so calling it twice without
     graph_zero_grad() in between doubles them (like PyTorch). Zeroing the
     parameter gradients is the caller's job, once per optimiser step. */

//@ from 3 to 7
enum { MAX_RANK = 4, MAX_NODES = 128 };
//@ end
//@ from 8
// A 20-layer residual network has about 200 nodes (chapter 8).
enum { MAX_RANK = 4, MAX_NODES = 512, LABEL_SIZE = 32 };
//@ end
//@ from 3 to 4
enum { MAX_INPUTS = 3 };
//@ end
//@ from 5
enum { MAX_INPUTS = 5 };  // batch_norm: x, gamma, beta, running mean, running variance
//@ end

typedef struct Node Node;
typedef struct Graph Graph;

typedef struct {
    const char *name;
    void (*forward)(Node *node, Graph *graph);  // node->value from its inputs' values
    void (*backward)(Node *node, Graph *graph); // inputs' grads += from node->grad
//@ from 4
    int view;                                   // shares its input's memory (a reshape)
//@ end
//@ from 8
    double (*multiply_adds)(const Node *node);  // per image, forward; NULL: one cheap operation per value
//@ end
} Op;

typedef enum { INIT_ZEROS, INIT_ONES, INIT_GLOROT } Init;

struct Node {
    const Op *op;               // NULL for a leaf: an input or a parameter
    const char *label;          // for printing; may be NULL
    Node *inputs[MAX_INPUTS];
    int input_count;
    int rank, shape[MAX_RANK];  // shape[0] is the batch size when batched
    int batched;                // does shape[0] follow graph_set_batch()?
    size_t item_size;           // elements per batch item (batched) or in all
    size_t size;                // elements now
    float *value;               // (shape)
    float *grad;                // (shape), or NULL when no gradient is needed
    int requires_grad;          // a parameter, or a parameter upstream (tests may set it on an input)
    int is_parameter;
    Init init;                  // parameters only
    float *saved;               // what backward needs (e.g. probabilities)
    size_t saved_per_item;      // floats of `saved` per batch item
//@ from 4
    int pad;                    // conv2d: zeros on each side (0 valid, KH/2 same)
//@ end
//@ from 5
    int is_state;               // kept, not learned: BatchNorm's running statistics
    float rate;                 // dropout: the probability of dropping a value
    size_t saved_fixed;         // floats of `saved` that do not grow with the batch
//@ end
//@ from 9
    int frozen;                 // --freeze: runs as at inference, and has no backward (transfer.c)
//@ end
};

struct Graph {
    Node nodes[MAX_NODES];  // in creation order, which is also a valid order
    int count;
    Node *order[MAX_NODES]; // what graph_forward runs: the output and all it needs
    int order_count;
    Node *output;
    int max_batch, batch;
    int training;           // the mode of the last forward: dropout and batch norm differ
    uint64_t seed;          // with step, the key of the streams of ops that draw random numbers
    long step;              // the optimiser step being computed (see Batch)
    float *params, *grads;  // (param_count) each: every parameter, in creation order
    size_t param_count;
//@ from 9
    size_t frozen_params;   // --freeze: the first parameters, which the optimiser leaves alone
//@ end
    float *memory;          // values, gradients and saved buffers of all other nodes
    int compiled;           // after graph_compile() the graph is fixed
//@ from 4
    KernelKind kernel;      // how convolutions and matrix multiplies are computed
    GemmContext *gemm;      // KERNEL_BLOCKED: the micro-kernel, the threads, the packing buffers
    float *scratch;         // (scratch_size) working memory ops share, one op at a time
    size_t scratch_size;
//@ end
//@ from 5
    float *state;           // (state_count) every state node, in creation order
    size_t state_count;
//@ end
//@ from 8
    char labels[MAX_NODES][LABEL_SIZE];  // labels made up as the graph is built (graph_label)
    int label_count;
//@ end
};

// A graph with room for batches of up to max_batch items.
Graph *graph_new(int max_batch) {
    Graph *g = xmalloc(sizeof *g);
    memset(g, 0, sizeof *g);
    g->max_batch = g->batch = max_batch;
    return g;
}

void graph_free(Graph *g) {
    if (!g) return;
    free(g->params);
    free(g->grads);
    free(g->memory);
//@ from 4
    free(g->scratch);
    gemm_context_free(g->gemm);
//@ end
//@ from 5
    free(g->state);
//@ end
    free(g);
}

// Adds a node of the given shape. For a batched node, `shape` leaves out
// the batch dimension: {784} makes a node of shape (batch, 784).
Node *graph_add_node(Graph *g, const Op *op, int batched, const int *shape, int rank) {
    require(!g->compiled, "a node added after graph_compile(); build the whole graph first");
    require(g->count < MAX_NODES, "more than %d nodes", MAX_NODES);
    require(rank + batched <= MAX_RANK, "rank %d is more than %d", rank + batched, MAX_RANK);
    Node *n = &g->nodes[g->count++];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->batched = batched;
    n->rank = rank + batched;
    n->item_size = 1;
    if (batched) n->shape[0] = g->batch;
    for (int i = 0; i < rank; i++) {
        n->shape[i + batched] = shape[i];
        n->item_size *= (size_t)shape[i];
    }
    n->size = batched ? n->item_size * (size_t)g->batch : n->item_size;
    return n;
}

// A batched input (images, targets): filled by the caller, never differentiated.
Node *graph_input(Graph *g, const char *label, const int *shape, int rank) {
    Node *n = graph_add_node(g, NULL, 1, shape, rank);
    n->label = label;
    return n;
}

// A parameter: learned, so it needs a gradient; initialised by graph_initialize().
Node *graph_parameter(Graph *g, const char *label, const int *shape, int rank, Init init) {
    require(init != INIT_GLOROT || rank >= 2, "%s: Glorot needs a fan in and a fan out (rank 2 or more)", label);
    Node *n = graph_add_node(g, NULL, 0, shape, rank);
    n->label = label;
    n->is_parameter = n->requires_grad = 1;
    n->init = init;
    return n;
}

//@ from 8
// A label made of a format and numbers ("s2b1.c1.kernel"), kept by the
// graph: a network built in a loop cannot name its nodes with literals.
const char *graph_label(Graph *g, const char *format, ...) {
    require(g->label_count < MAX_NODES, "more than %d labels", MAX_NODES);
    char *label = g->labels[g->label_count++];
    va_list args;
    va_start(args, format);
    int length = vsnprintf(label, LABEL_SIZE, format, args);
    va_end(args);
    require(length >= 0 && length < LABEL_SIZE, "a label of %d characters", length);
    return label;
}

//@ end
//@ from 5
// State: kept with the parameters (a checkpoint saves it), initialised like
// them, changed by the ops that own it in training, never by the optimiser.
Node *graph_state(Graph *g, const char *label, const int *shape, int rank, Init init) {
    require(init != INIT_GLOROT, "%s: state starts at zeros or ones", label);
    Node *n = graph_add_node(g, NULL, 0, shape, rank);
    n->label = label;
    n->is_state = 1;
    n->init = init;
    return n;
}

//@ end
// Is n one of g's nodes? (Asked with ==, since C leaves < and > undefined
// between pointers into different arrays.)
int graph_owns(const Graph *g, const Node *n) {
    for (int i = 0; i < g->count; i++)
        if (&g->nodes[i] == n) return 1;
    return 0;
}

// An op node over the given inputs; it needs a gradient if any input does.
Node *graph_op(Graph *g, const Op *op, Node **inputs, int input_count,
               int batched, const int *shape, int rank) {
    for (int i = 0; i < input_count; i++)
        require(graph_owns(g, inputs[i]), "%s: an input from another graph", op->name);
    Node *n = graph_add_node(g, op, batched, shape, rank);
    n->input_count = input_count;
    for (int i = 0; i < input_count; i++) {
        n->inputs[i] = inputs[i];
        n->requires_grad |= inputs[i]->requires_grad;
    }
    return n;
}

/* Topological order: every node after all of its inputs. A depth-first walk
   from the output adds a node once all its inputs have been added, so nodes
   the output does not depend on are left out, and a node reached along two
   paths (a diamond) is added once. */
void topological_visit(Graph *g, Node *n, char *visited) {
    int index = (int)(n - g->nodes);
    if (visited[index]) return;
    visited[index] = 1;
    for (int i = 0; i < n->input_count; i++) topological_visit(g, n->inputs[i], visited);
    g->order[g->order_count++] = n;
}

// Orders the graph for `output` and gives every node its memory: one block
// for the parameters, one for their gradients (in creation order, so an
// optimiser can treat them as flat arrays), one for everything else.
void graph_compile(Graph *g, Node *output) {
    require(!g->compiled, "graph_compile() called twice");
    require(graph_owns(g, output), "graph_compile: the output is not a node of this graph");
    g->compiled = 1;
    char visited[MAX_NODES] = {0};
    g->output = output;
    g->order_count = 0;
    topological_visit(g, output, visited);
    size_t params = 0, other = 0;
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        size_t capacity = n->batched ? n->item_size * (size_t)g->max_batch : n->item_size;
//@ from 4
        if (n->op && n->op->view) continue;
//@ end
//@ from 5
        if (n->is_state) {
            g->state_count += capacity;
            continue;
        }
        other += n->saved_fixed;
//@ end
        if (n->is_parameter) params += capacity;
        else other += capacity * (1 + (n->requires_grad ? 1 : 0)) +
                      n->saved_per_item * (size_t)g->max_batch;
    }
    g->param_count = params;
    g->params = xmalloc(params * sizeof(float));
    g->grads = xmalloc(params * sizeof(float));
    g->memory = xmalloc(other * sizeof(float));
    memset(g->params, 0, params * sizeof(float));
    memset(g->grads, 0, params * sizeof(float));
    memset(g->memory, 0, other * sizeof(float));
//@ from 5
    g->state = xmalloc(g->state_count * sizeof(float));
    size_t states = 0;
//@ end
    params = other = 0;
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        size_t capacity = n->batched ? n->item_size * (size_t)g->max_batch : n->item_size;
//@ from 4
        if (n->op && n->op->view) {  // the same numbers under another shape: no copy
            n->value = n->inputs[0]->value;
            n->grad = n->inputs[0]->grad;
            continue;
        }
//@ end
//@ from 5
        if (n->is_state) {
            n->value = g->state + states;
            states += capacity;
            continue;
        }
//@ end
        if (n->is_parameter) {
            n->value = g->params + params;
            n->grad = g->grads + params;
            params += capacity;
            continue;
        }
        n->value = g->memory + other;
        other += capacity;
        if (n->requires_grad) {
            n->grad = g->memory + other;
            other += capacity;
        }
        if (n->saved_per_item) {
            n->saved = g->memory + other;
            other += n->saved_per_item * (size_t)g->max_batch;
        }
//@ from 5
        if (n->saved_fixed) {  // after the per-item part, or on its own
            if (!n->saved) n->saved = g->memory + other;
            other += n->saved_fixed;
        }
//@ end
    }
}

// Parameters in creation order from the init stream: Glorot for weights,
// zeros for biases, ones for scales. A weight's last two dimensions are its
// inputs and outputs: (C, OC) for a dense layer, and (KH, KW, C, OC) for a
// convolution kernel, whose fans are C and OC times the KH*KW positions.
// The seed is kept too: ops that draw random numbers (dropout) open keyed
// streams of it, so one seed fixes everything.
void graph_initialize(Graph *g, uint64_t seed) {
    require(g->compiled, "graph_initialize() before graph_compile(): the parameters have no memory yet");
    Rng rng = rng_new(seed, STREAM_INIT);
    g->seed = seed;
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        if (!n->is_parameter) continue;
        if (n->init == INIT_GLOROT) {
            int receptive = 1;
            for (int d = 0; d < n->rank - 2; d++) receptive *= n->shape[d];
            glorot_uniform(n->value, n->size, n->shape[n->rank - 2] * receptive,
                           n->shape[n->rank - 1] * receptive, &rng);
        } else {
            for (size_t k = 0; k < n->size; k++) n->value[k] = n->init == INIT_ONES ? 1.0f : 0.0f;
        }
    }
//@ from 5
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        if (n->is_state)
            for (size_t k = 0; k < n->size; k++) n->value[k] = n->init == INIT_ONES ? 1.0f : 0.0f;
    }
//@ end
}

//@ from 4
// Working memory for the op that runs now, at least `floats` of it: it
// grows to what the hungriest op needs (in the first full batch) and stays.
float *graph_scratch(Graph *g, size_t floats) {
    if (floats > g->scratch_size) {
        free(g->scratch);
        g->scratch = xmalloc(floats * sizeof(float));
        g->scratch_size = floats;
    }
    return g->scratch;
}

//@ end
void graph_set_batch(Graph *g, int batch) {
    require(g->compiled, "graph_set_batch() before graph_compile()");
    require(batch >= 1 && batch <= g->max_batch, "batch %d outside 1..%d", batch, g->max_batch);
    g->batch = batch;
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        if (!n->batched) continue;
        n->shape[0] = batch;
        n->size = n->item_size * (size_t)batch;
    }
}

//@ from 4
// The graph's threads: the blocked GEMM's, or none for the references.
Workers *graph_workers(const Graph *g) { return g->gemm ? g->gemm->workers : NULL; }

//@ end
//@ from 4 to 4
// Zeroes n floats. (`workers` is for chapter 5's version, which shares the work out.)
void clear_floats(Workers *workers, float *x /* (n) */, size_t n) { (void)workers; memset(x, 0, n * sizeof(float)); }
//@ end
//@ from 5
// Zeroes n floats, the large arrays in CLEAR_PARTS fixed parts on the threads:
// one core alone does not reach the memory's full speed.
enum { CLEAR_PARTS = 8, CLEAR_PARALLEL_FROM = 1 << 16 };

typedef struct {
    float *x;  // (n)
    size_t n;
} ClearJob;

void clear_part(void *context, int part, int worker) {
    (void)worker;
    const ClearJob *j = context;
    size_t from = j->n * (size_t)part / CLEAR_PARTS, to = j->n * (size_t)(part + 1) / CLEAR_PARTS;
    memset(j->x + from, 0, (to - from) * sizeof(float));
}

void clear_floats(Workers *workers, float *x /* (n) */, size_t n) {
    ClearJob job = {x, n};
    parallel_for(n < CLEAR_PARALLEL_FROM ? NULL : workers, CLEAR_PARTS, clear_part, &job);
}

//@ end
// Runs every op in order; returns the output's first value (the loss).
float graph_forward(Graph *g, int training) {
    require(g->compiled, "graph_forward() before graph_compile()");
    g->training = training;
    for (int i = 0; i < g->order_count; i++) {
        Node *n = g->order[i];
//@ from 9
        g->training = training && !n->frozen;  // a frozen batch norm uses, and keeps, its running statistics
//@ end
        if (n->op) n->op->forward(n, g);
    }
//@ from 9
    g->training = training;
//@ end
    return g->output->value[0];
}

// Clears the gradients that graph_backward() adds into: those of the
// parameters, and of any input that asked for one.
void graph_zero_grad(Graph *g) {
    require(g->compiled, "graph_zero_grad() before graph_compile()");
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        if (!n->op && n->grad) memset(n->grad, 0, n->size * sizeof(float));
    }
}

// The gradient of the output (a scalar) with respect to every node that
// needs one: seed d(output)/d(output) = 1, then the chain rule backwards.
// Only after a training forward: an inference forward computes something
// else (batch norm's, chapter 5), whose gradients would be silently wrong.
void graph_backward(Graph *g) {
    require(g->compiled, "graph_backward() before graph_compile()");
    require(g->training, "graph_backward() after an inference-mode forward; run graph_forward(g, 1) first");
    for (int i = 0; i < g->order_count; i++) {
        Node *n = g->order[i];
//@ from 2 to 3
        if (n->op && n->grad) memset(n->grad, 0, n->size * sizeof(float));
//@ end
//@ from 4
        if (n->op && n->grad) clear_floats(graph_workers(g), n->grad, n->size);
//@ end
    }
    require(g->output->size == 1 && g->output->grad, "backward needs a scalar output that depends on a parameter");
    g->output->grad[0] = 1.0f;
    for (int i = g->order_count - 1; i >= 0; i--) {
        Node *n = g->order[i];
//@ from 3 to 8
        if (n->op && n->requires_grad) n->op->backward(n, g);
//@ end
//@ from 9
        if (n->op && n->requires_grad && !n->frozen) n->op->backward(n, g);
//@ end
    }
}
//@ from 3 to 3

void print_shape(const Node *n) {
    printf("(");
    for (int d = 0; d < n->rank; d++) printf(d ? ", %d" : "%d", n->shape[d]);
    printf(")");
}

// The graph as a list, in the order it runs.
void graph_print(const Graph *g) {
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        printf("  %2d  %-22s ", (int)(n - g->nodes), n->op ? n->op->name : n->is_parameter ? "parameter" : "input");
        print_shape(n);
        if (n->label) printf("  %s", n->label);
        for (int k = 0; k < n->input_count; k++)
            printf(k ? ", %d" : "  <- %d", (int)(n->inputs[k] - g->nodes));
        printf("\n");
    }
}
//@ end

/* ---- The ops ---------------------------------------------------------------
   Each op is a forward and a backward function over its node, mostly calling
   the layer kernels of chapter 2, plus a constructor that checks shapes. The
   backward functions skip inputs that need no gradient (grad == NULL). */

//@ from 4
/* Memory-bound ops (ReLU, pooling, dropout) split their batch over the graph's
   threads, one task per item. An item's outputs are its own, so which
   thread does which item changes nothing in the result. */
typedef void ItemWork(const Graph *g, Node *n, int item);

typedef struct {
    const Graph *graph;
    Node *node;
    ItemWork *work;
} ItemJob;

void item_task(void *context, int task, int worker) {
    (void)worker;
    ItemJob *job = context;
    job->work(job->graph, job->node, task);
}

/* A small tensor is done by the calling thread alone: waking the others
   costs a few microseconds, about what one core needs to read and write
   ITEMS_PARALLEL_FROM floats (2 x 128 KB at some tens of GB/s). The dense
   layers' activations, 64 x 128 floats, are far below it; the CNNs' maps
   far above. */
enum { ITEMS_PARALLEL_FROM = 1 << 15 };

void for_each_item(Graph *g, Node *n, ItemWork *work) {
    ItemJob job = {g, n, work};
    parallel_for(n->size < ITEMS_PARALLEL_FROM ? NULL : graph_workers(g), n->shape[0], item_task, &job);
}

void relu_item_forward(const Graph *g, Node *n, int i) {
    (void)g;
    relu_forward(n->value + i * n->item_size, n->inputs[0]->value + i * n->item_size, n->item_size);
}

void relu_item_backward(const Graph *g, Node *n, int i) {
    (void)g;
    size_t at = i * n->item_size;
    relu_backward(n->inputs[0]->grad + at, n->grad + at, n->inputs[0]->value + at, n->item_size);
}
//@ end

// Adds src into dst, elementwise: the backward of every "copy" of a gradient.
void accumulate(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

// matmul: x (B, C) @ w (C, OC) -> (B, OC)
void matmul_op_forward(Node *n, Graph *g) {
//@ from 3 to 3
    (void)g;
//@ end
    const Node *x = n->inputs[0], *w = n->inputs[1];
//@ from 4
    if (g->kernel == KERNEL_BLOCKED) {
        matmul_forward_blocked(g->gemm, n->value, x->value, w->value, x->shape[0], w->shape[0], w->shape[1]);
        return;
    }
//@ end
    matmul_forward(n->value, x->value, w->value, x->shape[0], w->shape[0], w->shape[1]);
}

void matmul_op_backward(Node *n, Graph *g) {
//@ from 3 to 3
    (void)g;
//@ end
    Node *x = n->inputs[0], *w = n->inputs[1];
//@ from 4
    if (g->kernel == KERNEL_BLOCKED) {
        matmul_backward_blocked(g->gemm, x->grad, w->grad, n->grad, x->value, w->value, x->shape[0],
                                w->shape[0], w->shape[1]);
        return;
    }
//@ end
    matmul_backward(x->grad, w->grad, n->grad, x->value, w->value, x->shape[0], w->shape[0], w->shape[1]);
}

// bias_add: x (B, ..., C) + b (C) -> the shape of x; b is added along the
// last dimension, so the same op serves dense layers and (NHWC) convolutions.
void bias_add_op_forward(Node *n, Graph *g) {
    (void)g;
    const Node *x = n->inputs[0], *b = n->inputs[1];
    memcpy(n->value, x->value, n->size * sizeof(float));
    bias_forward(n->value, b->value, (int)(n->size / b->size), (int)b->size);
}

void bias_add_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *x = n->inputs[0], *b = n->inputs[1];
    if (x->grad) accumulate(x->grad, n->grad, n->size);
    if (b->grad) bias_backward(b->grad, n->grad, (int)(n->size / b->size), (int)b->size);
}

void relu_op_forward(Node *n, Graph *g) {
//@ from 3 to 3
    (void)g;
//@ end
//@ from 4
    if (n->batched) {
        for_each_item(g, n, relu_item_forward);
        return;
    }
//@ end
    relu_forward(n->value, n->inputs[0]->value, n->size);
}

void relu_op_backward(Node *n, Graph *g) {
//@ from 3 to 3
    (void)g;
//@ end
//@ from 4
    if (n->batched) {
        for_each_item(g, n, relu_item_backward);
        return;
    }
//@ end
    relu_backward(n->inputs[0]->grad, n->grad, n->inputs[0]->value, n->size);
}

// add: a + b, same shapes. d(a+b)/da = 1, so each input gets the gradient as is.
void add_op_forward(Node *n, Graph *g) {
    (void)g;
    for (size_t i = 0; i < n->size; i++) n->value[i] = n->inputs[0]->value[i] + n->inputs[1]->value[i];
}

void add_op_backward(Node *n, Graph *g) {
    (void)g;
    for (int k = 0; k < 2; k++)
        if (n->inputs[k]->grad) accumulate(n->inputs[k]->grad, n->grad, n->size);
}

// mul: a * b elementwise. d(ab)/da = b and d(ab)/db = a.
void mul_op_forward(Node *n, Graph *g) {
    (void)g;
    for (size_t i = 0; i < n->size; i++) n->value[i] = n->inputs[0]->value[i] * n->inputs[1]->value[i];
}

void mul_op_backward(Node *n, Graph *g) {
    (void)g;
    //@ exercise 3 mul-backward: add each input's share of n->grad into its grad, where it has one (book.md 3.4).
    Node *a = n->inputs[0], *b = n->inputs[1];
    for (size_t i = 0; i < n->size; i++) {
        if (a->grad) a->grad[i] += n->grad[i] * b->value[i];
        if (b->grad) b->grad[i] += n->grad[i] * a->value[i];
    }
    //@ stub
    (void)n;
    //@ end
}

// sum: every element of x -> a scalar. Each element moved the sum by 1.
void sum_op_forward(Node *n, Graph *g) {
    (void)g;
    double total = 0;
    for (size_t i = 0; i < n->inputs[0]->size; i++) total += n->inputs[0]->value[i];
    n->value[0] = (float)total;
}

void sum_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *x = n->inputs[0];
    for (size_t i = 0; i < x->size; i++) x->grad[i] += n->grad[0];
}

// softmax_cross_entropy: logits (B, K), targets (B, K) -> the mean loss, a
// scalar. Keeps the probabilities (saved) for backward and for accuracy.
void softmax_cross_entropy_op_forward(Node *n, Graph *g) {
    (void)g;
    const Node *logits = n->inputs[0], *targets = n->inputs[1];
    n->value[0] = softmax_cross_entropy_forward(n->saved, logits->value, targets->value,
                                                logits->shape[0], logits->shape[1]);
}

void softmax_cross_entropy_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *logits = n->inputs[0], *targets = n->inputs[1];
    softmax_cross_entropy_backward(logits->grad, n->grad[0], n->saved, targets->value,
                                   logits->shape[0], logits->shape[1]);
}

//@ from 4
/* conv2d: x (B, H, W, C), kernel (KH, KW, C, OC), bias (OC) -> (B, OH, OW, OC),
   with the node's `pad`. The graph's `kernel` says which implementation of
   conv.c runs; they compute the same sums (in different orders). */
ConvShape conv_shape_of(const Node *n) {
    const Node *x = n->inputs[0], *w = n->inputs[1];
    return conv_shape(x->shape[0], x->shape[1], x->shape[2], x->shape[3], w->shape[0], w->shape[1],
                      n->pad, w->shape[3]);
}

void conv2d_op_forward(Node *n, Graph *g) {
    const Node *x = n->inputs[0], *w = n->inputs[1], *b = n->inputs[2];
    ConvShape s = conv_shape_of(n);
    if (g->kernel == KERNEL_NAIVE)
        conv2d_forward_naive(n->value, x->value, w->value, b->value, &s);
    else if (g->kernel == KERNEL_IM2COL)
        conv2d_forward_im2col(n->value, x->value, w->value, b->value, &s,
                              graph_scratch(g, conv_rows(&s) * conv_patch_size(&s)));
    else {
        require(g->gemm, "conv2d: the blocked kernel without a GEMM context");
        conv2d_forward_blocked(g->gemm, n->value, x->value, w->value, b->value, &s);
    }
}

void conv2d_op_backward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *w = n->inputs[1], *b = n->inputs[2];
    ConvShape s = conv_shape_of(n);
    if (g->kernel == KERNEL_NAIVE)
        conv2d_backward_naive(x->grad, w->grad, b->grad, n->grad, x->value, w->value, &s);
    else if (g->kernel == KERNEL_IM2COL)  // the patches and their gradient
        conv2d_backward_im2col(x->grad, w->grad, b->grad, n->grad, x->value, w->value, &s,
                               graph_scratch(g, 2 * conv_rows(&s) * conv_patch_size(&s)));
    else  // the kernel turned around
        conv2d_backward_blocked(g->gemm, x->grad, w->grad, b->grad, n->grad, x->value, w->value, &s,
                                graph_scratch(g, conv2d_blocked_scratch(&s)));
}

// max_pool: x (B, H, W, C) -> (B, H/2, W/2, C), one image a task; the
// blocked path takes the vectorised backward pass, the references the plain one.
void max_pool_item_forward(const Graph *g, Node *n, int i) {
    const Node *x = n->inputs[0];
    (void)g;
    max_pool_forward(n->value + i * n->item_size, x->value + i * x->item_size, 1, x->shape[1], x->shape[2], x->shape[3]);
}

void max_pool_item_backward(const Graph *g, Node *n, int i) {
    Node *x = n->inputs[0];
    float *dinp = x->grad + i * x->item_size;
    const float *dout = n->grad + i * n->item_size, *inp = x->value + i * x->item_size;
    if (g->kernel == KERNEL_BLOCKED) max_pool_backward_fast(dinp, dout, inp, 1, x->shape[1], x->shape[2], x->shape[3]);
    else max_pool_backward(dinp, dout, inp, 1, x->shape[1], x->shape[2], x->shape[3]);
}

void max_pool_op_forward(Node *n, Graph *g) { for_each_item(g, n, max_pool_item_forward); }
void max_pool_op_backward(Node *n, Graph *g) { for_each_item(g, n, max_pool_item_backward); }

// reshape: the same numbers read with another shape. graph_compile points
// the node at its input's memory, so there is nothing to compute either way.
void reshape_op_forward(Node *n, Graph *g) { (void)n, (void)g; }
void reshape_op_backward(Node *n, Graph *g) { (void)n, (void)g; }
//@ end
//@ from 5

/* batch_norm: x (B, ..., C), gamma and beta (C), running mean and variance
   (C, state) -> the shape of x. Statistics over every dimension but the
   last. Saved: the batch's mean, then 1/sqrt(var + eps), per channel; the
   backward pass computes x_hat again from x (batchnorm.c says why). */
void batch_norm_op_forward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *gamma = n->inputs[1], *beta = n->inputs[2], *mean = n->inputs[3], *var = n->inputs[4];
    int C = gamma->shape[0];
    size_t N = x->size / (size_t)C;
    if (g->training)
        batch_norm_forward_train(graph_workers(g), n->value, n->saved, n->saved + C, mean->value, var->value, x->value,
                                 gamma->value, beta->value, N, C);
    else
        batch_norm_forward_infer(graph_workers(g), n->value, x->value, gamma->value, beta->value, mean->value, var->value, N, C);
}

void batch_norm_op_backward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *gamma = n->inputs[1], *beta = n->inputs[2];
    int C = gamma->shape[0];
    batch_norm_backward(graph_workers(g), x->grad, gamma->grad, beta->grad, n->grad, x->value, n->saved, n->saved + C,
                        gamma->value, x->size / (size_t)C, C);
}

/* dropout: x -> the shape of x. Item i of the batch draws its mask from the
   stream keyed by (seed, step, this node, i): the same masks at any thread
   count, in any order, and in a resumed run. Nothing is saved: the
   backward pass opens the same stream and draws the mask again. */
Rng dropout_stream(const Graph *g, const Node *n, int i) {
    uint64_t layer = (uint64_t)(n - g->nodes);
    return rng_keyed(g->seed, STREAM_DROPOUT, (uint64_t)g->step, layer << 32 | (uint64_t)i);
}

void dropout_item_forward(const Graph *g, Node *n, int i) {
    Rng rng = dropout_stream(g, n, i);
    size_t at = (size_t)i * n->item_size;
    dropout_forward_train(n->value + at, n->inputs[0]->value + at, n->item_size, n->rate, &rng);
}

void dropout_item_backward(const Graph *g, Node *n, int i) {
    Rng rng = dropout_stream(g, n, i);
    size_t at = (size_t)i * n->item_size;
    dropout_backward(n->inputs[0]->grad + at, n->grad + at, n->item_size, n->rate, &rng);
}

void dropout_op_forward(Node *n, Graph *g) {
    const Node *x = n->inputs[0];
    if (!g->training) {
        memcpy(n->value, x->value, n->size * sizeof(float));
        return;
    }
    for_each_item(g, n, dropout_item_forward);
}

void dropout_op_backward(Node *n, Graph *g) {
    if (n->inputs[0]->grad) for_each_item(g, n, dropout_item_backward);
}
//@ end

// The op table: the one place an op is registered.
typedef enum {
    OP_MATMUL, OP_BIAS_ADD, OP_RELU, OP_ADD, OP_MUL, OP_SUM, OP_SOFTMAX_CROSS_ENTROPY,
//@ from 4
    OP_CONV2D, OP_MAX_POOL, OP_RESHAPE,
//@ end
//@ from 5
    OP_BATCH_NORM, OP_DROPOUT,
//@ end
    OP_COUNT
} OpKind;

static const Op OPS[OP_COUNT] = {
    [OP_MATMUL] = {.name = "matmul", .forward = matmul_op_forward, .backward = matmul_op_backward},
    [OP_BIAS_ADD] = {.name = "bias_add", .forward = bias_add_op_forward, .backward = bias_add_op_backward},
    [OP_RELU] = {.name = "relu", .forward = relu_op_forward, .backward = relu_op_backward},
    [OP_ADD] = {.name = "add", .forward = add_op_forward, .backward = add_op_backward},
    [OP_MUL] = {.name = "mul", .forward = mul_op_forward, .backward = mul_op_backward},
    [OP_SUM] = {.name = "sum", .forward = sum_op_forward, .backward = sum_op_backward},
    [OP_SOFTMAX_CROSS_ENTROPY] = {.name = "softmax_cross_entropy", .forward = softmax_cross_entropy_op_forward,
                                  .backward = softmax_cross_entropy_op_backward},
//@ from 4
    [OP_CONV2D] = {.name = "conv2d", .forward = conv2d_op_forward, .backward = conv2d_op_backward},
    [OP_MAX_POOL] = {.name = "max_pool", .forward = max_pool_op_forward, .backward = max_pool_op_backward},
    [OP_RESHAPE] = {.name = "reshape", .forward = reshape_op_forward, .backward = reshape_op_backward, .view = 1},
//@ end
//@ from 5
    [OP_BATCH_NORM] = {.name = "batch_norm", .forward = batch_norm_op_forward, .backward = batch_norm_op_backward},
    [OP_DROPOUT] = {.name = "dropout", .forward = dropout_op_forward, .backward = dropout_op_backward},
//@ end
};

// The constructors: check the shapes, make the node.
Node *matmul(Graph *g, Node *x, Node *w) {
    require(x->batched && x->rank == 2 && !w->batched && w->rank == 2 && x->shape[1] == w->shape[0],
            "matmul needs x (B, C) and w (C, OC)");
    return graph_op(g, &OPS[OP_MATMUL], (Node *[]){x, w}, 2, 1, &w->shape[1], 1);
}

Node *bias_add(Graph *g, Node *x, Node *b) {
    require(!b->batched && b->rank == 1 && x->shape[x->rank - 1] == b->shape[0],
            "bias_add needs a bias as long as the last dimension of x");
    return graph_op(g, &OPS[OP_BIAS_ADD], (Node *[]){x, b}, 2, x->batched, x->shape + x->batched, x->rank - x->batched);
}

int same_shape(const Node *a, const Node *b) {
    if (a->batched != b->batched || a->rank != b->rank) return 0;
    for (int d = 0; d < a->rank; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

Node *same_shape_op(Graph *g, OpKind kind, Node **inputs, int count) {
    for (int k = 1; k < count; k++)
        require(same_shape(inputs[k], inputs[0]), "%s needs inputs of the same shape", OPS[kind].name);
    Node *x = inputs[0];
    return graph_op(g, &OPS[kind], inputs, count, x->batched, x->shape + x->batched, x->rank - x->batched);
}

Node *relu(Graph *g, Node *x) { return same_shape_op(g, OP_RELU, (Node *[]){x}, 1); }
Node *add(Graph *g, Node *a, Node *b) { return same_shape_op(g, OP_ADD, (Node *[]){a, b}, 2); }
Node *mul(Graph *g, Node *a, Node *b) { return same_shape_op(g, OP_MUL, (Node *[]){a, b}, 2); }

Node *sum(Graph *g, Node *x) {
    return graph_op(g, &OPS[OP_SUM], (Node *[]){x}, 1, 0, (int[]){1}, 1);
}

//@ from 4
// conv2d with a bias; pad 0 is "valid", KH/2 "same" (odd kernels only).
Node *conv2d(Graph *g, Node *x, Node *kernel, Node *bias, int pad) {
    require(x->batched && x->rank == 4 && !kernel->batched && kernel->rank == 4 &&
            kernel->shape[2] == x->shape[3] && bias->rank == 1 && bias->shape[0] == kernel->shape[3],
            "conv2d needs x (B, H, W, C), a kernel (KH, KW, C, OC) and a bias (OC)");
    // One `pad` for both sides of a square kernel: the blocked input
    // gradient pads dout by KH-1-pad, which is right only when KW = KH.
    require(kernel->shape[0] == kernel->shape[1] && kernel->shape[0] % 2 == 1 && pad >= 0 &&
            pad <= kernel->shape[0] / 2, "conv2d takes odd square kernels and a padding from 0 to KH/2");
    int OH = x->shape[1] + 2 * pad - kernel->shape[0] + 1, OW = x->shape[2] + 2 * pad - kernel->shape[1] + 1;
    require(OH >= 1 && OW >= 1, "conv2d: a %dx%d kernel does not fit a %dx%d image", kernel->shape[0],
            kernel->shape[1], x->shape[1], x->shape[2]);
    Node *n = graph_op(g, &OPS[OP_CONV2D], (Node *[]){x, kernel, bias}, 3, 1,
                       (int[]){OH, OW, kernel->shape[3]}, 3);
    n->pad = pad;
    return n;
}

Node *max_pool(Graph *g, Node *x) {
    require(x->batched && x->rank == 4 && x->shape[1] >= POOL && x->shape[2] >= POOL,
            "max_pool needs x (B, H, W, C) of at least 2x2");
    return graph_op(g, &OPS[OP_MAX_POOL], (Node *[]){x}, 1, 1,
                    (int[]){x->shape[1] / POOL, x->shape[2] / POOL, x->shape[3]}, 3);
}

// The same values under a new shape (of one batch item), no copy. A
// reshaped leaf would share its gradient with a node whose gradient
// graph_backward() clears, so only ops and gradient-free inputs qualify.
Node *reshape(Graph *g, Node *x, const int *shape, int rank) {
    size_t size = 1;
    for (int d = 0; d < rank; d++) size *= (size_t)shape[d];
    require(x->batched && size == x->item_size, "reshape must keep the number of values per item");
    require(x->op || !x->requires_grad, "reshape: a leaf that needs a gradient cannot be reshaped");
    return graph_op(g, &OPS[OP_RESHAPE], (Node *[]){x}, 1, 1, shape, rank);
}

Node *flatten(Graph *g, Node *x) { return reshape(g, x, (int[]){(int)x->item_size}, 1); }
//@ end
//@ from 5
// batch_norm over the last dimension of x, with its own gamma (ones), beta
// (zeros), running mean (zeros) and running variance (ones), labelled by
// `labels` in that order (string literals: the nodes keep the pointers).
Node *batch_norm(Graph *g, Node *x, const char *const labels[4]) {
    require(x->batched && x->rank >= 2, "batch_norm needs x (B, ..., C)");
    int C = x->shape[x->rank - 1];
    Node *gamma = graph_parameter(g, labels[0], (int[]){C}, 1, INIT_ONES);
    Node *beta = graph_parameter(g, labels[1], (int[]){C}, 1, INIT_ZEROS);
    Node *mean = graph_state(g, labels[2], (int[]){C}, 1, INIT_ZEROS);
    Node *var = graph_state(g, labels[3], (int[]){C}, 1, INIT_ONES);
    Node *n = graph_op(g, &OPS[OP_BATCH_NORM], (Node *[]){x, gamma, beta, mean, var}, 5, 1,
                       x->shape + 1, x->rank - 1);
    n->saved_fixed = 2 * (size_t)C;  // the batch's mean, then 1 / sqrt(var + eps)
    return n;
}

Node *dropout(Graph *g, Node *x, float rate) {
    require(x->batched && rate >= 0 && rate < 1, "dropout needs a batched x and a rate in [0, 1)");
    Node *n = graph_op(g, &OPS[OP_DROPOUT], (Node *[]){x}, 1, 1, x->shape + 1, x->rank - 1);
    n->rate = rate;
    return n;
}
//@ end

Node *softmax_cross_entropy(Graph *g, Node *logits, Node *targets) {
    require(logits->batched && targets->batched && logits->rank == 2 && targets->rank == 2 &&
            logits->shape[1] == targets->shape[1], "softmax_cross_entropy needs logits and targets (B, K)");
    // The targets are data, not something to learn: no gradient flows to them.
    require(!targets->requires_grad, "softmax_cross_entropy: the targets must not need a gradient");
    Node *n = graph_op(g, &OPS[OP_SOFTMAX_CROSS_ENTROPY], (Node *[]){logits, targets}, 2, 0, (int[]){1}, 1);
    n->saved_per_item = (size_t)logits->shape[1];  // the probabilities
    return n;
}

/* ---- Models on the engine ------------------------------------------------ */

// A classifier built on a graph: where its images and targets go in, and
// the loss node, whose saved buffer holds the probabilities.
typedef struct {
    Graph *graph;
    Node *images, *targets, *loss;
} GraphClassifier;

// The ANN of chapter 2, as a graph. Parameters are created in the order of
// chapter 2's memory (weight, bias, layer by layer), so the same seed gives
// the same initial weights, laid out the same way.
GraphClassifier ann_graph(int max_batch, uint64_t seed) {
    static const char *labels[2 * ANN_LAYERS] = {"weight1", "bias1", "weight2", "bias2", "weight3", "bias3"};
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = images;
    for (int l = 0; l < ANN_LAYERS; l++) {
        Node *w = graph_parameter(g, labels[2 * l], (int[]){ANN_WIDTHS[l], ANN_WIDTHS[l + 1]}, 2, INIT_GLOROT);
        Node *b = graph_parameter(g, labels[2 * l + 1], (int[]){ANN_WIDTHS[l + 1]}, 1, INIT_ZEROS);
        x = bias_add(g, matmul(g, x, w), b);
        if (l < ANN_LAYERS - 1) x = relu(g, x);
    }
    Node *loss = softmax_cross_entropy(g, x, targets);
    graph_compile(g, loss);
    graph_initialize(g, seed);
    return (GraphClassifier){.graph = g, .images = images, .targets = targets, .loss = loss};
}

float graph_run(GraphClassifier *c, const Batch *batch, int training, float *probs) {
    graph_set_batch(c->graph, batch->count);
    c->graph->step = batch->step;
    memcpy(c->images->value, batch->images, c->images->size * sizeof(float));
    memcpy(c->targets->value, batch->targets, c->targets->size * sizeof(float));
    float loss = graph_forward(c->graph, training);
    if (training) graph_backward(c->graph);
    memcpy(probs, c->loss->saved, (size_t)batch->count * NUM_CLASSES * sizeof(float));
    return loss;
}

float graph_compute_gradients(void *net, const Batch *batch, float *probs) {
    return graph_run(net, batch, 1, probs);
}

float graph_predict(void *net, const Batch *batch, float *probs) {
    return graph_run(net, batch, 0, probs);
}

Model graph_model(GraphClassifier *c, const char *name) {
    return (Model){.name = name, .net = c, .compute_gradients = graph_compute_gradients,
                   .predict = graph_predict, .params = c->graph->params, .grads = c->graph->grads,
                   .count = c->graph->param_count,
//@ from 4
                   .workers = graph_workers(c->graph),
//@ end
//@ from 5
                   .state = c->graph->state, .state_count = c->graph->state_count,
//@ end
//@ from 6
                   .graph = c->graph,
//@ end
//@ from 9
                   .frozen = c->graph->frozen_params,
//@ end
                   .max_batch = c->graph->max_batch};
}
//@ end
