/* bench_ch8.c - chapter 8's new ops, timed: the depthwise convolution
   against the memory's bandwidth, and the pointwise convolution against
   the peak (book.md 8.7).

       make build/bench_ch8 && build/bench_ch8 [THREADS]

   What this is: tools/bench.c's triad and peak (the same functions), then
   each depthwise and pointwise layer of the `separable` model at batch 64,
   forward and backward, on the engine as training runs them, best of 20.
   A depthwise pass does 9 multiply-adds per value it reads, so it is
   limited by memory: its figure is bytes moved per second (forward: x
   read, out written; backward: dout and x read, dx read and written), set
   against the triad's. What it is not: a test; it checks nothing. Its maps
   (at most 4.8 MB each) may sit in the caches, which the triad's 192 MB
   do not: a share above 100% means that. */
#define BENCH_NO_MAIN
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter8.c"
#endif
#include "bench.c"

enum { BENCH8_BATCH = 64, BENCH8_RUNS = 20 };

// The best of BENCH8_RUNS of one op's forward (pass 0) or backward (pass 1).
static double time_op(Graph *g, Node *n, int pass) {
    double best = INFINITY;
    for (int r = 0; r < BENCH8_RUNS; r++) {
        double start = now_seconds();
        if (pass == 0) n->op->forward(n, g);
        else n->op->backward(n, g);
        best = fmin(best, now_seconds() - start);
    }
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : online_cpus();
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: %s [THREADS]\n", argv[0]);
        return 2;
    }
    GemmContext *ctx = gemm_context_new(gemm_best_kernel(), threads);
    double triad = memory_bandwidth(ctx->workers, 8 * threads);
    double peak = all_threads_peak(ctx->workers, threads, ctx->kernel);
    printf("%s micro-kernel, %d thread%s: peak %.1f GFLOP/s, memory %.1f GB/s (triad over 192 MB)\n\n", ctx->kernel->name,
           threads, threads == 1 ? "" : "s", peak, triad);
    printf("%-34s %9s %9s %9s %8s\n", "separable's layer, batch 64", "pass", "ms", "GB/s", "of triad");
    GraphClassifier net = build_model("separable", BENCH8_BATCH, 1, KERNEL_BLOCKED, ctx);
    Graph *g = net.graph;
    Rng rng = rng_new(1, 0);
    for (int i = 0; i < g->order_count; i++) {  // every value and gradient: finite numbers
        Node *n = g->order[i];
        for (size_t k = 0; k < n->size && n->op; k++) n->value[k] = rng_uniform(&rng) - 0.5f;
        for (size_t k = 0; k < n->size && n->op && n->grad; k++) n->grad[k] = rng_uniform(&rng) - 0.5f;
    }
    for (int i = 0; i < g->order_count; i++) {
        Node *n = g->order[i];
        if (!n->op || (strcmp(n->op->name, "depthwise_conv") != 0 && strcmp(n->op->name, "pointwise_conv") != 0)) continue;
        const Node *x = n->inputs[0];
        char name[64];
        snprintf(name, sizeof name, "%s %dx%dx%d->%d", n->op->name, x->shape[1], x->shape[2], x->shape[3], n->shape[3]);
        for (int pass = 0; pass < 2; pass++) {
            double seconds = time_op(g, n, pass);
            if (n->op->multiply_adds == depthwise_multiply_adds) {
                double bytes = (pass == 0 ? 2.0 : 4.0) * (double)x->size * sizeof(float);
                printf("%-34s %9s %9.3f %9.1f %7.0f%%\n", name, pass ? "backward" : "forward", 1e3 * seconds,
                       bytes / seconds / 1e9, 100 * bytes / seconds / 1e9 / triad);
            } else {
                double flop = 2.0 * multiply_adds_per_image(n) * BENCH8_BATCH * (pass ? 2 : 1);
                printf("%-34s %9s %9.3f %9s   %.1f GFLOP/s, %.0f%% of peak\n", name, pass ? "backward" : "forward",
                       1e3 * seconds, "", flop / seconds / 1e9, 100 * flop / seconds / 1e9 / peak);
            }
        }
    }
    graph_free(g);
    return 0;
}
