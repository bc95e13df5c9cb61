/* bench_pass.c - one pass of one layer, timed alone: the tool behind the
   before-and-after figures of book.md 4.15 and 4.21.

   What this is: the layer table of tools/bench.c cut down to one row, run
   many times, for comparing two builds of the code on a machine whose
   speed comes and goes. Build it at each commit (in a second worktree, say)
   and run the two builds one after the other, several rounds, taking the
   best of each:

       make build/bench_pass
       build/bench_pass THREADS MODEL "LAYER" PASS [RUNS]
       build/bench_pass 1 basic "conv 13x13x32->64" 2     # the weight gradient, one thread

   PASS is 0 (forward), 1 (input gradient), 2 (weight gradient) or 3 (the
   weight and bias gradients together, as training asks for them; its
   GFLOP/s count the weight gradient's arithmetic only); MODEL and LAYER
   are as build/bench names them. It prints the best of RUNS runs (default
   200) in milliseconds, in GFLOP/s and as a share of the peak of THREADS
   cores of the widest kernel. What it is not: a test; it checks nothing.
   It is tools/bench.c without its main (so on the newest chapter, or on
   -DCHAPTER_FILE's), plus the few lines below. To compare with an older
   commit, build that commit's own copy of this tool. */
#define BENCH_NO_MAIN
#include "bench.c"

// The blocked pass alone, called directly: bench_run has no pass 3.
static void run_pass(BenchData *d, const BenchLayer *l, int pass, const GemmContext *ctx) {
    float *dx = pass == 1 ? d->dx : NULL, *dw = pass >= 2 ? d->dw : NULL, *db = pass == 3 ? d->db : NULL;
    if (l->conv && pass == 0) conv2d_forward_blocked(ctx, d->out, d->x, d->w, d->b, &d->s);
    else if (l->conv) conv2d_backward_blocked(ctx, dx, dw, db, d->dout, d->x, d->w, &d->s, d->scratch);
    else if (pass == 0) matmul_forward_blocked(ctx, d->out, d->x, d->w, d->B, d->C, d->OC);
    else matmul_backward_blocked(ctx, dx, dw, d->dout, d->x, d->w, d->B, d->C, d->OC);
    if (!l->conv && db) bias_backward(db, d->dout, d->B, d->OC);
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: %s THREADS MODEL \"LAYER\" PASS [RUNS]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]), pass = atoi(argv[4]), runs = argc == 6 ? atoi(argv[5]) : 200;
    require(threads >= 1 && threads <= MAX_THREADS && pass >= 0 && pass <= 3 && runs >= 1,
            "bench_pass: threads 1..%d, pass 0..3, runs >= 1", MAX_THREADS);
    const BenchLayer *l = bench_layer(argv[2], argv[3]);
    const GemmKernel *kernel = gemm_best_kernel();
    GemmContext *ctx = gemm_context_new(kernel, threads);
    BenchData d;
    bench_data_new(&d, l);
    double best = INFINITY;
    for (int r = 0; r < runs; r++) {
        memset(d.dx, 0, d.n_in * sizeof(float));  // the gradients start from zero, untimed
        memset(d.dw, 0, d.n_weight * sizeof(float));
        memset(d.db, 0, (size_t)l->outputs * sizeof(float));
        double start = now_seconds();
        run_pass(&d, l, pass, ctx);
        best = fmin(best, now_seconds() - start);
    }
    double gflops = 2 * bench_multiply_adds(&d, l) / best / 1e9, peak = gemm_peak_gflops(kernel) * threads;
    printf("%s %s %s, %s on %d thread%s: %.3f ms, %.1f GFLOP/s, %.1f%% of %.1f (best of %d)\n", l->model, l->name,
           pass == 3 ? "weight and bias grad" : PASS_NAMES[pass], kernel->name, threads, threads == 1 ? "" : "s",
           1e3 * best, gflops, 100 * gflops / peak, peak, runs);
    bench_data_free(&d);
    gemm_context_free(ctx);
    return 0;
}
