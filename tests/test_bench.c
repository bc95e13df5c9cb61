/* test_bench.c - tools/bench.c, the benchmark, in the parts that can be
   checked in seconds: its training step, timed op by op outside the
   engine, is the engine's step to the bit; every op it times is timed and
   its FLOPs counted right; and it refuses at once, before minutes of work,
   a directory where it could not write its results. What it is not: a
   run of the benchmark, which takes minutes and only reports. */
#include "check.h"

#include <errno.h>
#include <sys/stat.h>

#define BENCH_NO_MAIN
#include "../tools/bench.c"

enum { TEST_BATCH = 8 };

static void fill_batch(float *images, float *targets) {
    for (int i = 0; i < TEST_BATCH; i++) {
        targets[i * NUM_CLASSES + i] = 1;
        for (int p = 0; p < IMAGE_SIZE; p++) images[i * IMAGE_SIZE + p] = (float)((p * 7 + i * 13) % 29) / 29.0f;
    }
}

static int same_floats(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

// Two copies of a model, one trained by the engine as training does it,
// the other by timed_step: the same loss, probabilities, gradients and
// weights, bit for bit, after each of two steps (the second starts from
// the first's weights and Adam's moments, and dropout draws with its step).
static void check_timed_step(const char *model) {
    static float images[TEST_BATCH * IMAGE_SIZE], targets[TEST_BATCH * NUM_CLASSES];
    float probs[2][TEST_BATCH * NUM_CLASSES];
    fill_batch(images, targets);
    GraphClassifier c[2];
    Optimizer opt[2];
    for (int v = 0; v < 2; v++) {
        c[v] = build_model(model, TEST_BATCH, 1, KERNEL_BLOCKED, gemm_context_new(gemm_best_kernel(), 2));
        opt[v] = optimizer_new(OPTIMIZER_ADAM, 0.001f, c[v].graph->param_count);
        opt[v].workers = graph_workers(c[v].graph);
    }
    StepTimes *times = calloc(1, sizeof *times);
    int same = 1;
    for (int step = 0; step < 2; step++) {
        Batch batch = {images, targets, TEST_BATCH, step};
        Model m = graph_model(&c[0], model);
        memset(m.grads, 0, m.count * sizeof(float));  // train.c's step
        float engine_loss = m.compute_gradients(m.net, &batch, probs[0]);
        optimizer_update(&opt[0], m.params, m.grads, m.count);
        float timed_loss = timed_step(&c[1], &opt[1], &batch, probs[1], times);
        size_t count = c[0].graph->param_count;
        same &= memcmp(&engine_loss, &timed_loss, sizeof(float)) == 0 &&
                same_floats(probs[0], probs[1], TEST_BATCH * NUM_CLASSES) &&
                same_floats(c[0].graph->grads, c[1].graph->grads, count) &&
                same_floats(c[0].graph->params, c[1].graph->params, count);
    }
    if (!CHECK(same)) printf("     %s: timed_step differs from the engine's step\n", model);
    // Every op that runs is timed in both passes where it has a backward.
    // The convolutions and matrix multiplies take long enough to show on any
    // clock (a small op may take less than a coarse clock's tick).
    const Graph *g = c[1].graph;
    int heavy = 0, timed = 0;
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        if (!n->op || multiply_adds_per_image(n) == 0) continue;
        heavy++;
        timed += times->forward[n - g->nodes] > 0 && times->backward[n - g->nodes] > 0;
    }
    if (!CHECK(heavy > 0 && timed == heavy)) printf("     %s: %d of %d heavy ops timed in both passes\n", model, timed, heavy);
    CHECK(times->clearing > 0 && times->adam > 0 && times->total > times->adam + times->clearing);
    free(times);
    for (int v = 0; v < 2; v++) optimizer_free(&opt[v]), graph_free(c[v].graph);
}

static void test_timed_step(void) {
    section("timed_step: the engine's step, to the bit, every heavy op timed");
    check_timed_step("ann");
    check_timed_step("basic");
    check_timed_step("deeper");  // batch norm's state and dropout's keyed streams
}

// The FLOPs a step's op is divided by count the input's gradient only
// where there is one: the first convolution's images need none.
static void test_node_flops(void) {
    section("node_flops: a convolution's backward counts the input's gradient only where it has one");
    GraphClassifier c = build_model("basic", TEST_BATCH, 1, KERNEL_NAIVE, NULL);
    const Graph *g = c.graph;
    int convs = 0, first_right = 0, second_right = 0;
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        if (n->op != &OPS[OP_CONV2D]) continue;
        double forward = node_flops(n, 0, TEST_BATCH), backward = node_flops(n, 1, TEST_BATCH);
        if (convs++ == 0) first_right = forward == 2.0 * 26 * 26 * 32 * 9 * TEST_BATCH && backward == forward;
        else second_right = forward == 2.0 * 11 * 11 * 64 * 288 * TEST_BATCH && backward == 2 * forward;
    }
    CHECK(convs == 2 && first_right && second_right);
    graph_free(c.graph);
}

// The bytes a memory-bound pass is measured against (node_bytes): the
// basic CNN's first max-pool and ReLU, counted by hand; none for a GEMM.
static void test_node_bytes(void) {
    section("node_bytes: the least a max-pool and a ReLU must move, and nothing for a convolution");
    GraphClassifier c = build_model("basic", TEST_BATCH, 1, KERNEL_NAIVE, NULL);
    const Graph *g = c.graph;
    const double X = 26.0 * 26 * 32 * TEST_BATCH, N = 13.0 * 13 * 32 * TEST_BATCH;
    int pool_right = 0, relu_right = 0, conv_none = 1, pools = 0, relus = 0;
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        if (!n->op) continue;
        double forward = node_bytes(n, 0, TEST_BATCH), backward = node_bytes(n, 1, TEST_BATCH);
        if (n->op == &OPS[OP_CONV2D]) conv_none &= forward == 0 && backward == 0;
        if (n->op == &OPS[OP_MAX_POOL] && pools++ == 0)
            pool_right = forward == 4 * (X + N) && backward == 4 * (N + 3 * X);  // dout, x, din read and written
        if (n->op == &OPS[OP_RELU] && relus++ == 0)
            relu_right = forward == 4 * (N + N) && backward == 4 * 4 * N;  // dout, x, din read and written
    }
    CHECK(pool_right);
    CHECK(relu_right);
    CHECK(conv_none);
    graph_free(c.graph);
}

// The benchmark in a directory without plots/: refused at once.
static void bench_without_plots(void *unused) {
    (void)unused;
    char *args[] = {"bench", "--threads", "1", NULL};
    if (mkdir("build/bench-without-plots", 0777) != 0 && errno != EEXIST) _exit(99);
    if (chdir("build/bench-without-plots") != 0) _exit(99);
    rmdir("plots");
    exit(bench_main(3, args));
}

static void bad_threads(void *unused) {
    (void)unused;
    char *args[] = {"bench", "--threads", "0", NULL};
    exit(bench_main(3, args));
}

static void test_command_line(void) {
    section("build/bench without a plots/ directory stops before the work (exit code 10); a bad option, 2");
    double start = now_seconds();
    CHECK_EXITS(bench_without_plots, NULL, EXIT_WRITE, "plots/.bench-probe: cannot create a file there");
    CHECK(now_seconds() - start < 5);  // the benchmark itself takes minutes
    CHECK_EXITS(bad_threads, NULL, EXIT_USAGE, "usage:");
}

int main(void) {
    test_command_line();
    test_node_flops();
    test_node_bytes();
    test_timed_step();
    return check_summary();
}
