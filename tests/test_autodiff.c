/* test_autodiff.c - chapter 3: every op checked three ways (hand-derived,
   engine, finite differences of an independent double-precision reference),
   the classic autodiff mistakes as property tests, the lesson that float
   finite differences are too coarse, and the engine's training against
   chapter 2's, bit for bit. */
#include "check.h"
#include <sys/stat.h>  // mkdir: tests may use POSIX

#define main chapter3_main
// `make test-chapter N=3 FILE=...` builds this against a student's chapter.
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter3.c"
#endif
#include CHAPTER_FILE
#undef main

/* Errors are measured with the chapter's relative_error, whose floor is
   1e-6, not test_ann.c's 1e-3. Below the floor an error is measured
   against the floor, so any absolute error under tolerance x floor passes:
   1e-7 with test_ann.c's numbers, which suits its inputs of order 1, but
   many of the ANN's gradients are smaller than that (first-layer weights
   that see dim pixels), and a wrong one would pass. With 1e-6, only
   gradients that are zero up to float rounding escape. The one-op cases
   sum a handful of float terms, so their float rounding stays near 1e-6
   relative; 1e-4 leaves room for that and none for a wrong formula (see
   test_ann.c). The whole ANN sums hundreds of terms per gradient, so
   ./chapter3 and test_whole_ann_three_ways accept 1e-3. */
static const double STEP = 1e-6, TOLERANCE = 1e-4;

// One training-mode forward and backward of n images, through the Model
// interface's entry point.
static float compute(GraphClassifier *net, const float *images, const float *targets, int n, float *probs) {
    Batch batch = {.images = images, .targets = targets, .count = n};
    return graph_compute_gradients(net, &batch, probs);
}

static void fill(float *x, size_t n, float low, float high, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = low + (high - low) * rng_uniform(rng);
}

/* ---- Every op, three ways ---------------------------------------------------
   Each case builds a one-op graph whose loss is L = sum(op(inputs) * r) for
   fixed random weights r (so dL/d(output) = r), or the op's own scalar. The
   reference computes L in double from double copies of the inputs. */
enum { B = 3, C = 4, OC = 5, MAX_WRT = 2 };

typedef struct Case Case;
struct Case {
    const char *name;
    Graph *graph;
    Node *wrt[MAX_WRT];          // the nodes differentiated against
    int wrt_count;
    float hand[MAX_WRT][64];     // the gradients derived by hand
    float r[B * OC];             // the output weights
    double (*reference)(const Case *c, double *const *x);
};

// Ends a case's graph with the weighted sum, compiles it, fills its inputs.
static Node *weighted_loss(Case *c, Node *out) {
    Node *r = graph_input(c->graph, "r", out->shape + 1, out->rank - 1);
    Node *loss = sum(c->graph, mul(c->graph, out, r));
    graph_compile(c->graph, loss);
    memcpy(r->value, c->r, r->size * sizeof(float));
    return loss;
}

static Node *input_with_grad(Graph *g, int width) {
    Node *x = graph_input(g, "x", (int[]){width}, 1);
    x->requires_grad = 1;
    return x;
}

static void check_three_ways(Case *c) {
    section(c->name);
    graph_zero_grad(c->graph);
    graph_forward(c->graph, 1);
    graph_backward(c->graph);
    double *x[MAX_WRT];
    for (int k = 0; k < c->wrt_count; k++) {
        x[k] = malloc(c->wrt[k]->size * sizeof(double));
        for (size_t i = 0; i < c->wrt[k]->size; i++) x[k][i] = c->wrt[k]->value[i];
    }
    for (int k = 0; k < c->wrt_count; k++) {
        double hand_engine = 0, engine_fd = 0, hand_fd = 0;
        for (size_t i = 0; i < c->wrt[k]->size; i++) {
            double saved = x[k][i];
            x[k][i] = saved + STEP;
            double up = c->reference(c, x);
            x[k][i] = saved - STEP;
            double down = c->reference(c, x);
            x[k][i] = saved;
            double fd = (up - down) / (2 * STEP), engine = c->wrt[k]->grad[i], hand = c->hand[k][i];
            hand_engine = fmax(hand_engine, relative_error(hand, engine));
            engine_fd = fmax(engine_fd, relative_error(engine, fd));
            hand_fd = fmax(hand_fd, relative_error(hand, fd));
        }
        if (!CHECK(hand_engine < TOLERANCE && engine_fd < TOLERANCE && hand_fd < TOLERANCE))
            printf("     input %d: hand vs engine %.3g, engine vs differences %.3g, hand vs differences %.3g\n",
                   k, hand_engine, engine_fd, hand_fd);
    }
    for (int k = 0; k < c->wrt_count; k++) free(x[k]);
    graph_free(c->graph);
}

static double reference_matmul(const Case *c, double *const *x) {
    double L = 0;
    for (int b = 0; b < B; b++)
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int i = 0; i < C; i++) s += x[0][b * C + i] * x[1][i * OC + o];
            L += s * c->r[b * OC + o];
        }
    return L;
}

static void test_matmul(Rng *rng) {
    Case c = {"matmul: x (3,4) @ w (4,5)", graph_new(B), {0}, 2, {{0}}, {0}, reference_matmul};
    fill(c.r, B * OC, -1, 1, rng);
    c.wrt[0] = input_with_grad(c.graph, C);
    c.wrt[1] = graph_parameter(c.graph, "w", (int[]){C, OC}, 2, INIT_ZEROS);
    weighted_loss(&c, matmul(c.graph, c.wrt[0], c.wrt[1]));
    fill(c.wrt[0]->value, B * C, -1, 1, rng);
    fill(c.wrt[1]->value, C * OC, -1, 1, rng);
    matmul_backward(c.hand[0], c.hand[1], c.r, c.wrt[0]->value, c.wrt[1]->value, B, C, OC);  // chapter 2
    check_three_ways(&c);
}

static double reference_bias_add(const Case *c, double *const *x) {
    double L = 0;
    for (int b = 0; b < B; b++)
        for (int o = 0; o < OC; o++) L += (x[0][b * OC + o] + x[1][o]) * c->r[b * OC + o];
    return L;
}

static void test_bias_add(Rng *rng) {
    Case c = {"bias_add: x (3,5) + b (5)", graph_new(B), {0}, 2, {{0}}, {0}, reference_bias_add};
    fill(c.r, B * OC, -1, 1, rng);
    c.wrt[0] = input_with_grad(c.graph, OC);
    c.wrt[1] = graph_parameter(c.graph, "b", (int[]){OC}, 1, INIT_ZEROS);
    weighted_loss(&c, bias_add(c.graph, c.wrt[0], c.wrt[1]));
    fill(c.wrt[0]->value, B * OC, -1, 1, rng);
    fill(c.wrt[1]->value, OC, -1, 1, rng);
    memcpy(c.hand[0], c.r, sizeof c.r);       // d(x + b)/dx = 1
    bias_backward(c.hand[1], c.r, B, OC);      // chapter 2
    check_three_ways(&c);
}

static double reference_relu(const Case *c, double *const *x) {
    double L = 0;
    for (int i = 0; i < B * OC; i++) L += (x[0][i] > 0 ? x[0][i] : 0) * c->r[i];
    return L;
}

static void test_relu(Rng *rng) {
    Case c = {"relu: (3,5)", graph_new(B), {0}, 1, {{0}}, {0}, reference_relu};
    fill(c.r, B * OC, -1, 1, rng);
    c.wrt[0] = input_with_grad(c.graph, OC);
    weighted_loss(&c, relu(c.graph, c.wrt[0]));
    for (int i = 0; i < B * OC; i++) {  // away from the kink at 0
        float u = rng_uniform(rng);
        c.wrt[0]->value[i] = (i % 2 ? 1.0f : -1.0f) * (0.1f + u);
    }
    relu_backward(c.hand[0], c.r, c.wrt[0]->value, B * OC);  // chapter 2
    check_three_ways(&c);
}

static double reference_add(const Case *c, double *const *x) {
    double L = 0;
    for (int i = 0; i < B * OC; i++) L += (x[0][i] + x[1][i]) * c->r[i];
    return L;
}

static double reference_mul(const Case *c, double *const *x) {
    double L = 0;
    for (int i = 0; i < B * OC; i++) L += x[0][i] * x[1][i] * c->r[i];
    return L;
}

static void test_add_and_mul(Rng *rng) {
    for (int is_mul = 0; is_mul < 2; is_mul++) {
        Case c = {is_mul ? "mul: (3,5) * (3,5)" : "add: (3,5) + (3,5)", graph_new(B), {0}, 2, {{0}}, {0},
                  is_mul ? reference_mul : reference_add};
        fill(c.r, B * OC, -1, 1, rng);
        c.wrt[0] = input_with_grad(c.graph, OC);
        c.wrt[1] = input_with_grad(c.graph, OC);
        weighted_loss(&c, (is_mul ? mul : add)(c.graph, c.wrt[0], c.wrt[1]));
        fill(c.wrt[0]->value, B * OC, -1, 1, rng);
        fill(c.wrt[1]->value, B * OC, -1, 1, rng);
        for (int i = 0; i < B * OC; i++) {  // by hand: d(a+b) = 1, d(ab)/da = b, d(ab)/db = a
            c.hand[0][i] = is_mul ? c.r[i] * c.wrt[1]->value[i] : c.r[i];
            c.hand[1][i] = is_mul ? c.r[i] * c.wrt[0]->value[i] : c.r[i];
        }
        check_three_ways(&c);
    }
}

static double reference_sum(const Case *c, double *const *x) {
    (void)c;
    double L = 0;
    for (int i = 0; i < B * OC; i++) L += x[0][i];
    return L;
}

static void test_sum(Rng *rng) {
    Case c = {"sum: (3,5) -> scalar", graph_new(B), {0}, 1, {{0}}, {0}, reference_sum};
    c.wrt[0] = input_with_grad(c.graph, OC);
    graph_compile(c.graph, sum(c.graph, c.wrt[0]));
    fill(c.wrt[0]->value, B * OC, -1, 1, rng);
    for (int i = 0; i < B * OC; i++) c.hand[0][i] = 1;
    check_three_ways(&c);
}

static float softmax_targets[B * OC];

static double reference_softmax_cross_entropy(const Case *c, double *const *x) {
    (void)c;
    double L = 0;
    for (int b = 0; b < B; b++) {
        double sum_exp = 0;
        for (int k = 0; k < OC; k++) sum_exp += exp(x[0][b * OC + k]);
        for (int k = 0; k < OC; k++) L -= softmax_targets[b * OC + k] * log(exp(x[0][b * OC + k]) / sum_exp);
    }
    return L / B;
}

static void test_softmax_cross_entropy(Rng *rng) {
    Case c = {"softmax_cross_entropy: (3,5) -> mean loss", graph_new(B), {0}, 1, {{0}}, {0},
              reference_softmax_cross_entropy};
    c.wrt[0] = input_with_grad(c.graph, OC);
    Node *targets = graph_input(c.graph, "targets", (int[]){OC}, 1);
    Node *loss = softmax_cross_entropy(c.graph, c.wrt[0], targets);
    graph_compile(c.graph, loss);
    fill(c.wrt[0]->value, B * OC, -2, 2, rng);
    for (int b = 0; b < B; b++) softmax_targets[b * OC + (b * 2) % OC] = 1;
    memcpy(targets->value, softmax_targets, sizeof softmax_targets);
    float probs[B * OC];
    softmax_cross_entropy_forward(probs, c.wrt[0]->value, softmax_targets, B, OC);  // chapter 2
    softmax_cross_entropy_backward(c.hand[0], 1.0f, probs, softmax_targets, B, OC);
    check_three_ways(&c);
}

/* ---- The classic mistakes ---------------------------------------------------- */

// A parameter of n values; each test fills it (after graph_compile gives
// it memory) with random numbers.
static Node *vector_parameter(Graph *g, const char *label, int n) {
    return graph_parameter(g, label, (int[]){n}, 1, INIT_ZEROS);
}

static void test_node_used_twice(Rng *rng) {
    section("a node used twice: d(sum(w*w))/dw = 2w");
    Graph *g = graph_new(1);
    Node *w = vector_parameter(g, "w", 6);
    graph_compile(g, sum(g, mul(g, w, w)));
    fill(w->value, 6, -1, 1, rng);
    graph_zero_grad(g);
    graph_forward(g, 1);
    graph_backward(g);
    int exact = 1;
    for (int i = 0; i < 6; i++) exact &= w->grad[i] == 2 * w->value[i];  // w + w is exact in float
    CHECK(exact);
    graph_free(g);
}

static void test_same_input_twice_to_add(Rng *rng) {
    section("one node as both inputs of add: d(sum(w+w))/dw = 2");
    Graph *g = graph_new(1);
    Node *w = vector_parameter(g, "w", 5);
    graph_compile(g, sum(g, add(g, w, w)));
    fill(w->value, 5, -1, 1, rng);
    graph_zero_grad(g);
    graph_forward(g, 1);
    graph_backward(g);
    int two = 1;
    for (int i = 0; i < 5; i++) two &= w->grad[i] == 2.0f;  // an op that sets instead of adds gives 1
    CHECK(two);
    graph_free(g);
}

static void test_diamond(Rng *rng) {
    section("a diamond: x feeds two paths that meet again");
    // L = sum(relu(x) * a + relu(x) * c), so dL/dx = (a + c) where x > 0.
    Graph *g = graph_new(1);
    Node *x = vector_parameter(g, "x", 8), *a = vector_parameter(g, "a", 8), *c = vector_parameter(g, "c", 8);
    Node *top = relu(g, x);
    graph_compile(g, sum(g, add(g, mul(g, top, a), mul(g, top, c))));
    fill(x->value, 8, -1, 1, rng);
    fill(a->value, 8, -1, 1, rng);
    fill(c->value, 8, -1, 1, rng);
    graph_zero_grad(g);
    graph_forward(g, 1);
    graph_backward(g);
    int right = 1;
    for (int i = 0; i < 8; i++) right &= fabsf(x->grad[i] - (x->value[i] > 0 ? a->value[i] + c->value[i] : 0)) < 1e-6f;
    CHECK(right);
    // The shared node appears once in the order, before both of its users.
    int appearances = 0;
    for (int i = 0; i < g->order_count; i++) appearances += g->order[i] == top;
    CHECK_EQ_INT(appearances, 1);
    graph_free(g);
}

static void test_parameter_as_input(Rng *rng) {
    section("a parameter feeding three ops directly");
    // L = sum(relu(w)) + sum(w * w) + sum(x + w): one w of shape (4) used by
    // relu, by mul (twice) and as the bias of a batch of 2.
    Graph *g = graph_new(2);
    Node *w = vector_parameter(g, "w", 4);
    Node *x = graph_input(g, "x", (int[]){4}, 1);
    Node *penalty = add(g, sum(g, relu(g, w)), sum(g, mul(g, w, w)));
    Node *loss = add(g, penalty, sum(g, bias_add(g, x, w)));
    graph_compile(g, loss);
    fill(w->value, 4, -1, 1, rng);
    fill(x->value, 8, -1, 1, rng);
    graph_zero_grad(g);
    float value = graph_forward(g, 1);
    graph_backward(g);
    int right = 1;
    double expected_value = 0;
    for (int i = 0; i < 4; i++) {
        float expected = (w->value[i] > 0 ? 1.0f : 0.0f) + 2 * w->value[i] + 2;  // bias added to 2 rows
        right &= fabsf(w->grad[i] - expected) < 1e-6f;
        expected_value += fmax(w->value[i], 0) + w->value[i] * w->value[i] + x->value[i] + x->value[4 + i] + 2 * w->value[i];
    }
    CHECK(right);
    CHECK_NEAR(value, expected_value, 1e-5);
    CHECK(x->grad == NULL);  // an input nobody asked a gradient for gets none
    graph_free(g);
}

// The ANN graph on a batch of synthetic images.
static GraphClassifier small_ann(int batch, float *images, float *targets, Rng *rng) {
    GraphClassifier net = ann_graph(batch, 11);
    fill(images, (size_t)batch * IMAGE_SIZE, 0, 1, rng);
    memset(targets, 0, (size_t)batch * NUM_CLASSES * sizeof(float));
    for (int i = 0; i < batch; i++) targets[i * NUM_CLASSES + i % NUM_CLASSES] = 1;
    return net;
}

static void test_repeated_backward_and_zeroing(Rng *rng) {
    section("backward twice, and forgetting to zero");
    enum { N = 4 };
    static float images[2][N * IMAGE_SIZE], targets[2][N * NUM_CLASSES];
    float probs[N * NUM_CLASSES];
    GraphClassifier net = small_ann(N, images[0], targets[0], rng);
    fill(images[1], N * IMAGE_SIZE, 0, 1, rng);
    memcpy(targets[1], targets[0], sizeof targets[0]);
    Graph *g = net.graph;
    size_t count = g->param_count;
    float *first = malloc(count * sizeof(float)), *second_alone = malloc(count * sizeof(float));
    Node *logits = net.loss->inputs[0];
    float *logits_grad = malloc(logits->size * sizeof(float));

    graph_zero_grad(g);
    compute(&net, images[0], targets[0], N, probs);
    memcpy(first, g->grads, count * sizeof(float));
    memcpy(logits_grad, logits->grad, logits->size * sizeof(float));
    // Backward again, no forward, no zeroing: parameters get twice, interior nodes the same.
    graph_backward(g);
    // (Up to rounding: each gradient is a sum over the batch, and adding the
    // terms again one by one onto the first sum rounds differently from 2x.
    // Errors are measured against the largest gradient, since a sum whose
    // terms cancel has a relative error that means nothing.)
    float scale = 0;
    for (size_t i = 0; i < count; i++) scale = fmaxf(scale, fabsf(first[i]));
    int doubled = 1;
    for (size_t i = 0; i < count; i++) doubled &= fabsf(g->grads[i] - 2 * first[i]) <= 1e-6f * scale;
    CHECK(doubled);
    CHECK(memcmp(logits_grad, logits->grad, logits->size * sizeof(float)) == 0);

    // The second batch alone...
    graph_zero_grad(g);
    compute(&net, images[1], targets[1], N, probs);
    memcpy(second_alone, g->grads, count * sizeof(float));
    // ...and after the first without zeroing in between: the sum, not the second.
    graph_zero_grad(g);
    compute(&net, images[0], targets[0], N, probs);
    compute(&net, images[1], targets[1], N, probs);
    int summed = 1, differs = 0;
    for (size_t i = 0; i < count; i++) {
        summed &= fabsf(g->grads[i] - (first[i] + second_alone[i])) <= 1e-6f * scale;
        differs |= g->grads[i] != second_alone[i];
    }
    CHECK(summed);
    CHECK(differs);
    free(first);
    free(second_alone);
    free(logits_grad);
    graph_free(g);
}

/* ---- Why finite differences are taken in double ------------------------- */

static void test_float_differences_are_too_coarse(Rng *rng) {
    section("finite differences: float fails where double passes");
    enum { N = 8 };
    static float images[N * IMAGE_SIZE], targets[N * NUM_CLASSES];
    float probs[N * NUM_CLASSES];
    GraphClassifier net = small_ann(N, images, targets, rng);
    Graph *g = net.graph;
    graph_zero_grad(g);
    compute(&net, images, targets, N, probs);
    double *params = malloc(g->param_count * sizeof(double));
    for (size_t i = 0; i < g->param_count; i++) params[i] = g->params[i];
    double worst_float = 0, worst_double = 0;
    for (int s = 0; s < 40; s++) {
        size_t i = rng_below(rng, (uint32_t)g->param_count);
        float saved = g->params[i];
        const float h = 1e-3f;  // about the best step in float
        g->params[i] = saved + h;
        float up = graph_forward(g, 0);
        g->params[i] = saved - h;
        float down = graph_forward(g, 0);
        g->params[i] = saved;
        worst_float = fmax(worst_float, relative_error((up - down) / (2 * h), g->grads[i]));
        double p = params[i];
        params[i] = p + STEP;
        double up_d = ann_loss_in_double(params, images, targets, N);
        params[i] = p - STEP;
        double down_d = ann_loss_in_double(params, images, targets, N);
        params[i] = p;
        worst_double = fmax(worst_double, relative_error((up_d - down_d) / (2 * STEP), g->grads[i]));
    }
    printf("     largest relative error: float differences %.3g, double differences %.3g\n", worst_float, worst_double);
    CHECK(worst_double < 1e-3);
    CHECK(worst_float > 1e-2);
    free(params);
    graph_free(g);
}

static void test_whole_ann_three_ways(Rng *rng) {
    section("the whole ANN three ways (the check ./chapter3 prints)");
    enum { N = 8 };
    static float images[N * IMAGE_SIZE], targets[N * NUM_CLASSES];
    unsigned char labels[N];
    fill(images, N * IMAGE_SIZE, 0, 1, rng);
    for (int i = 0; i < N; i++) labels[i] = (unsigned char)(i % NUM_CLASSES), targets[i * NUM_CLASSES + i % NUM_CLASSES] = 1;
    Dataset d = {N, images, labels, targets};
    CHECK(check_ann_gradients(&d, N, 5, 30, 1e-3));
    // A set smaller than eight images: the check takes what there is, and
    // reads nothing past it (the sanitizers watch).
    Dataset one = dataset_slice(&d, 0, 1);
    CHECK(check_ann_gradients(&one, 1, 5, 30, 1e-3));
}

/* ---- Misuse stops the program -----------------------------------------------
   Each of these would otherwise write through a NULL pointer or past a
   buffer, or quietly compute the wrong thing; require() stops the program
   with exit code 70 and says what was wrong. Each runs in a child process. */

static Graph *tiny_graph(Node **out) {  // sum(x + w) over a batch of up to 2
    Graph *g = graph_new(2);
    Node *w = vector_parameter(g, "w", 3);
    Node *x = graph_input(g, "x", (int[]){3}, 1);
    *out = sum(g, bias_add(g, x, w));
    return g;
}

static void node_after_compile(void *unused) {
    (void)unused;
    Node *out;
    Graph *g = tiny_graph(&out);
    graph_compile(g, out);
    relu(g, out);
}

static void forward_before_compile(void *unused) {
    (void)unused;
    Node *out;
    Graph *g = tiny_graph(&out);
    graph_forward(g, 1);
}

static void batch_too_large(void *unused) {
    (void)unused;
    Node *out;
    Graph *g = tiny_graph(&out);
    graph_compile(g, out);
    graph_set_batch(g, 3);
}

static void input_from_another_graph(void *unused) {
    (void)unused;
    Node *out, *other_out;
    Graph *g = tiny_graph(&out);
    tiny_graph(&other_out);
    add(g, out, other_out);
}

static void compile_foreign_output(void *unused) {
    (void)unused;
    Node *out, *other_out;
    Graph *g = tiny_graph(&out);
    tiny_graph(&other_out);
    graph_compile(g, other_out);
}

static void targets_with_gradient(void *unused) {
    (void)unused;
    Graph *g = graph_new(2);
    Node *logits = input_with_grad(g, 10), *targets = input_with_grad(g, 10);
    softmax_cross_entropy(g, logits, targets);
}

static void shapes_differ(void *unused) {
    (void)unused;
    Graph *g = graph_new(2);
    Node *a = graph_input(g, "a", (int[]){2, 6}, 2), *b = graph_input(g, "b", (int[]){3, 4}, 2);
    add(g, a, b);  // 12 values each, but not the same shape
}

// Gradients of an inference-mode forward would be silently wrong once batch
// norm (chapter 5) behaves differently in the two modes.
static void backward_after_inference(void *unused) {
    (void)unused;
    Node *out;
    Graph *g = tiny_graph(&out);
    graph_compile(g, out);
    graph_forward(g, 0);
    graph_backward(g);
}

static void test_misuse_stops(void) {
    section("misusing the engine stops the program (exit code 70)");
    CHECK_EXITS(node_after_compile, NULL, EXIT_BUG, "bug: a node added after graph_compile()");
    CHECK_EXITS(forward_before_compile, NULL, EXIT_BUG, "bug: graph_forward() before graph_compile()");
    CHECK_EXITS(batch_too_large, NULL, EXIT_BUG, "bug: batch 3 outside 1..2");
    CHECK_EXITS(input_from_another_graph, NULL, EXIT_BUG, "bug: add: an input from another graph");
    CHECK_EXITS(compile_foreign_output, NULL, EXIT_BUG, "bug: graph_compile: the output is not a node of this graph");
    CHECK_EXITS(targets_with_gradient, NULL, EXIT_BUG, "bug: softmax_cross_entropy: the targets must not need a gradient");
    CHECK_EXITS(shapes_differ, NULL, EXIT_BUG, "bug: add needs inputs of the same shape");
    CHECK_EXITS(backward_after_inference, NULL, EXIT_BUG, "bug: graph_backward() after an inference-mode forward");
}

/* ---- Initialisation ---------------------------------------------------------- */

static void test_initialization(void) {
    section("graph_initialize: Glorot fans for dense and convolution weights");
    Graph *g = graph_new(1);
    Node *dense = graph_parameter(g, "dense", (int[]){300, 100}, 2, INIT_GLOROT);
    Node *kernel = graph_parameter(g, "kernel", (int[]){3, 3, 16, 32}, 4, INIT_GLOROT);
    Node *bias = graph_parameter(g, "bias", (int[]){32}, 1, INIT_ZEROS);
    Node *scale = graph_parameter(g, "scale", (int[]){32}, 1, INIT_ONES);
    Node *total = add(g, add(g, sum(g, dense), sum(g, kernel)), add(g, sum(g, bias), sum(g, scale)));
    graph_compile(g, total);
    graph_initialize(g, 3);
    // Dense (C, OC): sqrt(6 / (C + OC)). Kernel (KH, KW, C, OC): every one
    // of the KH*KW positions adds C inputs and OC outputs to the fans.
    const Node *weights[2] = {dense, kernel};
    double limits[2] = {sqrt(6.0 / (300 + 100)), sqrt(6.0 / (9 * 16 + 9 * 32))};
    for (int k = 0; k < 2; k++) {
        double largest = 0;
        for (size_t i = 0; i < weights[k]->size; i++) largest = fmax(largest, fabs(weights[k]->value[i]));
        if (!CHECK(largest <= limits[k] && largest > 0.99 * limits[k]))
            printf("     %s: largest %.4f, limit %.4f\n", weights[k]->label, largest, limits[k]);
    }
    int zeros = 1, ones = 1;
    for (int i = 0; i < 32; i++) zeros &= bias->value[i] == 0.0f, ones &= scale->value[i] == 1.0f;
    CHECK(zeros && ones);
    graph_free(g);
}

/* ---- Training through the engine ------------------------------------------ */

static void test_training_matches_chapter_2(void) {
    section("engine training: deterministic, and equal to chapter 2's");
    FashionMnist data;
    Error err = {0};
    if (load_fashion_mnist("data", &data, &err)) {
        skip("no Fashion-MNIST in data/ (run `make data`)");
        return;
    }
    Dataset few = dataset_slice(&data.train, 0, 64 * 30 + 17);  // 30 full steps and a partial one
    float *weights[3];
    for (int run = 0; run < 3; run++) {
        Ann ann = ann_new(64, 1);
        GraphClassifier engine = ann_graph(64, 1);
        Model m = run < 2 ? graph_model(&engine, "ann") : ann_model(&ann);
        Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, m.count);
        Trainer t = trainer_new(&m, &opt, &few, 64, 1);
        EpochState s = {0};
        Error ignored = {0};
        CHECK_EQ_INT(train_epoch(&t, 1, 1, &s, NULL, NULL, &ignored), 0);
        weights[run] = malloc(m.count * sizeof(float));
        memcpy(weights[run], m.params, m.count * sizeof(float));
        trainer_free(&t);
        optimizer_free(&opt);
        graph_free(engine.graph);
        ann_free(&ann);
    }
    CHECK(memcmp(weights[0], weights[1], 109386 * sizeof(float)) == 0);  // same seed, same engine
    // The engine calls chapter 2's kernels on the same numbers in the same
    // order, so not even the rounding differs: the weights are bit for bit
    // the same. (An engine with kernels of its own would agree only to
    // rounding, and this check would compare with a tolerance instead.)
    double largest = 0;
    for (int i = 0; i < 109386; i++) largest = fmax(largest, fabs(weights[0][i] - weights[2][i]));
    if (!CHECK(memcmp(weights[0], weights[2], 109386 * sizeof(float)) == 0))
        printf("     largest weight difference engine vs chapter 2: %g\n", largest);
    for (int run = 0; run < 3; run++) free(weights[run]);

    char *args[] = {"chapter3", "--limit", "1000", "--epochs", "1", NULL};
    CHECK_EQ_INT(chapter3_main(5, args), 0);

    // The comparison with chapter 2 is a check that can fail: a curve that
    // differs in one batch by one unit in the last place fails it.
    Options o = default_options();
    o.limit = 300, o.epochs = 1, o.learning_rate = 0.001;
    Dataset train_set = training_set(&data, &o);
    GraphClassifier engine = ann_graph(o.batch, 1);
    Model m = graph_model(&engine, "ann");
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, m.count);
    History *h = history_new(1, (train_set.count + 63) / 64);
    CHECK_EQ_INT(train(&m, &opt, &train_set, &data.validation, 1, 64, 1, h, &err), 0);
    CHECK_EQ_INT(compare_with_hand_written(&data, &o, h, &err), 0);
    h->batch_losses[2] = nextafterf(h->batch_losses[2], INFINITY);
    CHECK_EQ_INT(compare_with_hand_written(&data, &o, h, &err), EXIT_BAD_GRADIENT);
    CHECK(strstr(err.message, "the engine and chapter 2 trained differently") != NULL);
    history_free(h);
    optimizer_free(&opt);
    graph_free(engine.graph);
    free_fashion_mnist(&data);
}

/* ---- Small data sets ----------------------------------------------------------
   A --data directory may hold fewer images than the protocol's; chapter 3
   must work down to the smallest set that still has a validation image, and
   refuse a smaller one with its own exit code. */

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

static void write_idx_split(const char *dir, const char *split, int n) {
    char path[256];
    unsigned char header[16];
    snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte", dir, split);
    FILE *f = fopen(path, "wb");
    put_u32(header, IDX_IMAGES_MAGIC), put_u32(header + 4, (uint32_t)n), put_u32(header + 8, 28), put_u32(header + 12, 28);
    fwrite(header, 1, 16, f);
    for (int i = 0; i < n * IMAGE_SIZE; i++) fputc((i * 7 + i / IMAGE_SIZE) % 256, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte", dir, split);
    f = fopen(path, "wb");
    put_u32(header, IDX_LABELS_MAGIC), put_u32(header + 4, (uint32_t)n);
    fwrite(header, 1, 8, f);
    for (int i = 0; i < n; i++) fputc(i % 10, f);
    fclose(f);
}

static void test_small_data_sets(void) {
    section("small --data sets: 10 training images work, 5 are refused");
    mkdir("build", 0777);
    mkdir("build/small_sets", 0777);
    write_idx_split("build/small_sets", "t10k", 3);
    write_idx_split("build/small_sets", "train", 10);
    char *args[] = {"chapter3", "--data", "build/small_sets", "--epochs", "1", "--no-compare", NULL};
    CHECK_EQ_INT(chapter3_main(6, args), 0);
    char *one[] = {"chapter3", "--data", "build/small_sets", "--epochs", "1", "--limit", "1", NULL};
    CHECK_EQ_INT(chapter3_main(7, one), 0);
    write_idx_split("build/small_sets", "train", 5);
    CHECK_EQ_INT(chapter3_main(6, args), EXIT_TOO_FEW);
}

int main(void) {
    Rng rng = rng_new(2024, STREAM_CHECK);
    test_matmul(&rng);
    test_bias_add(&rng);
    test_relu(&rng);
    test_add_and_mul(&rng);
    test_sum(&rng);
    test_softmax_cross_entropy(&rng);
    test_node_used_twice(&rng);
    test_same_input_twice_to_add(&rng);
    test_diamond(&rng);
    test_parameter_as_input(&rng);
    test_repeated_backward_and_zeroing(&rng);
    test_float_differences_are_too_coarse(&rng);
    test_whole_ann_three_ways(&rng);
    test_initialization();
    test_misuse_stops();
    test_training_matches_chapter_2();
    test_small_data_sets();
    return check_summary();
}
