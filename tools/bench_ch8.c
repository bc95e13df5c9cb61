/* bench_ch8.c - chapter 8's new ops, timed: the depthwise convolution
   against the memory's bandwidth, and the pointwise convolution against
   the peak (book.md 8.7); and the GEMM in bf16 (part 2).

       make build/bench_ch8 && build/bench_ch8 [THREADS]
       build/bench_ch8 --bf16 [THREADS] [ROUNDS]

   What this is: tools/bench.c's triad and peak (the same functions), then
   each depthwise and pointwise layer of the `separable` model at batch 64,
   forward and backward, on the engine as training runs them, best of 20.
   A depthwise pass does 9 multiply-adds per value it reads, so it is
   limited by memory: its figure is bytes moved per second (forward: x
   read, out written; backward: dout and x read, dx read and written), set
   against the triad's. What it is not: a test; it checks nothing. Its maps
   (at most 4.8 MB each) may sit in the caches, which the triad's 192 MB
   do not: a share above 100% means that.

   With --bf16: the bf16 peak (a probe of independent VDPBF16PS chains,
   where the CPU has AVX512_BF16; elsewhere the emulations do two fp32 FMAs
   per pair, so fp32's peak is theirs), then the deeper CNN's training
   step at batch 64 in fp32 and in bf16 on every bf16 kernel this CPU runs,
   alternating, ROUNDS times (default 7) of 10 steps each, the median
   round of each; then every convolution and dense layer of the step in
   bf16 against the bf16 peak, with the bytes its GEMM moves against
   fp32's: A and B as the micro-kernel reads them (2 bytes an element in
   bf16, 4 in fp32) and C read and written (fp32 in both). */
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

/* ---- bf16 ---------------------------------------------------------------- */

#if HAVE_X86_KERNELS
// Twelve independent chains of VDPBF16PS, as many as the kernel keeps: x +=
// 2 * (1 * 2^-20) a lane a step, which stays far from overflow and from
// the denormals for any run this takes.
__attribute__((target("avx512f,avx512bf16")))
static float peak_probe_avx512bf16(long iterations) {
    __m512 x[12];
    for (int i = 0; i < 12; i++) x[i] = _mm512_set1_ps((float)i);
    const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3F803F80), b = (__m512bh)_mm512_set1_epi32(0x35803580);
    for (long it = 0; it < iterations; it++)
        for (int i = 0; i < 12; i++) x[i] = _mm512_dpbf16_ps(x[i], a, b);
    __m512 sum = x[0];
    for (int i = 1; i < 12; i++) sum = _mm512_add_ps(sum, x[i]);
    float lanes[16];
    _mm512_storeu_ps(lanes, sum);
    return lanes[0];
}
#endif

// One core's bf16 peak in GFLOP/s (a product and its sum: 2 FLOPs), best of
// 20 runs of at least 5 ms, as gemm_peak_gflops.
static double bf16_peak_gflops(void) {
#if HAVE_X86_KERNELS
    long iterations = 1000;
    volatile float sink = 0;
    double best = 0;
    for (int run = 0; run < 20;) {
        double start = now_seconds();
        sink = sink + peak_probe_avx512bf16(iterations);
        double seconds = now_seconds() - start;
        if (seconds < 0.005) {
            iterations *= 2;
            continue;
        }
        best = fmax(best, 12.0 * 16 * 2 * 2 * (double)iterations / seconds * 1e-9);
        run++;
    }
    return best;
#else
    return 0;
#endif
}

typedef struct {
    double gflops[MAX_THREADS];
} Bf16PeakJob;

static void bf16_peak_task(void *context, int task, int worker) {
    (void)worker;
    ((Bf16PeakJob *)context)->gflops[task] = bf16_peak_gflops();
}

// Every thread at once, best of PEAK_ROUNDS rounds (all_threads_peak).
static double bf16_all_threads_peak(Workers *workers, int threads) {
    double best = 0;
    for (int round = 0; round < PEAK_ROUNDS; round++) {
        Bf16PeakJob job;
        parallel_for(workers, threads, bf16_peak_task, &job);
        double sum = 0;
        for (int t = 0; t < threads; t++) sum += job.gflops[t];
        best = fmax(best, sum);
    }
    return best;
}

enum { BF16_MAX_CONTEXTS = 5, BF16_MAX_ROUNDS = 31 };

typedef struct {
    const char *name;
    GraphClassifier c;
    Optimizer opt;
    StepTimes *times;               // over every timed round
    double round_ms[BF16_MAX_ROUNDS];
} StepRunner;

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *x, int n) {
    double sorted[BF16_MAX_ROUNDS];
    memcpy(sorted, x, (size_t)n * sizeof(double));
    qsort(sorted, (size_t)n, sizeof(double), compare_doubles);
    return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

// M, N and K of a GEMM layer's forward pass at this batch (0 for other ops).
static void layer_mnk(const Node *n, int batch, double *M, double *N, double *K) {
    double macs = multiply_adds_per_image(n);
    *M = *N = *K = 0;
    if (macs <= 0 || strcmp(n->op->name, "depthwise_conv") == 0) return;
    *N = n->shape[n->rank - 1];
    double positions = 1;
    for (int d = n->batched; d < n->rank - 1; d++) positions *= n->shape[d];
    *M = positions * batch;
    *K = macs / (positions * *N);
}

static int bench_bf16(int threads, int rounds) {
    enum { BATCH = BENCH_BATCH };
    GemmContext *fp32 = gemm_context_new(gemm_best_kernel(), threads);
    double fp32_peak = all_threads_peak(fp32->workers, threads, fp32->kernel);
    int hardware = 0;
#if HAVE_X86_KERNELS
    hardware = cpu_has_avx512bf16();
#endif
    double peak = hardware ? bf16_all_threads_peak(fp32->workers, threads) : fp32_peak;
    printf("%d thread%s: fp32 peak (%s) %.1f GFLOP/s; bf16 peak %.1f GFLOP/s (%s)\n\n", threads, threads == 1 ? "" : "s",
           fp32->kernel->name, fp32_peak, peak, hardware ? "VDPBF16PS" : "no AVX512_BF16: the emulations' peak is fp32's");
    StepRunner runners[BF16_MAX_CONTEXTS];
    int count = 0;
    runners[count++] = (StepRunner){.name = "fp32"};
    static const char *const NAMES[] = {"avx2", "avx512", "avx512bf16"};
    for (int k = 0; k < 3; k++)
        if (bf16_kernel_supported(bf16_kernel_by_name(NAMES[k]))) runners[count++] = (StepRunner){.name = NAMES[k]};
    for (int r = 0; r < count; r++) {
        GemmContext *ctx = r == 0 ? fp32 : gemm_context_new_bf16(bf16_kernel_by_name(runners[r].name), threads);
        runners[r].c = build_model("deeper", BATCH, 1, KERNEL_BLOCKED, ctx);
        runners[r].opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, runners[r].c.graph->param_count);
        runners[r].opt.workers = graph_workers(runners[r].c.graph);
        runners[r].times = xmalloc(sizeof(StepTimes));
        memset(runners[r].times, 0, sizeof(StepTimes));
    }
    float *images = xmalloc((size_t)BATCH * IMAGE_SIZE * sizeof(float)), probs[BATCH * NUM_CLASSES];
    float *targets = xmalloc((size_t)BATCH * NUM_CLASSES * sizeof(float));
    Rng rng = rng_new(3, STREAM_CHECK);
    for (size_t i = 0; i < (size_t)BATCH * IMAGE_SIZE; i++) images[i] = rng_uniform(&rng);
    memset(targets, 0, (size_t)BATCH * NUM_CLASSES * sizeof(float));
    for (int i = 0; i < BATCH; i++) targets[i * NUM_CLASSES + i % NUM_CLASSES] = 1;
    StepTimes *scratch = xmalloc(sizeof *scratch);
    for (int round = -1; round < rounds; round++)  // round -1 warms every runner up, untimed
        for (int r = 0; r < count; r++) {
            StepTimes *t = round < 0 ? scratch : runners[r].times;
            double before = t->total;
            for (int step = 0; step < STEP_RUNS; step++) {
                Batch batch = {images, targets, BATCH, step};
                timed_step(&runners[r].c, &runners[r].opt, &batch, probs, t);
            }
            if (round >= 0) runners[r].round_ms[round] = 1e3 * (t->total - before) / STEP_RUNS;
        }
    double fp32_ms = median(runners[0].round_ms, rounds);
    printf("the deeper CNN's training step, batch 64, median of %d rounds of %d steps, alternating:\n", rounds, STEP_RUNS);
    printf("    %-22s %9s %9s %9s\n", "precision, kernel", "ms", "images/s", "vs fp32");
    for (int r = 0; r < count; r++) {
        double ms = median(runners[r].round_ms, rounds);
        char label[40];
        snprintf(label, sizeof label, r == 0 ? "fp32, %s" : "bf16, %s", r == 0 ? fp32->kernel->name : runners[r].name);
        printf("    %-22s %9.2f %9.0f %8.2fx\n", label, ms, BATCH / ms * 1e3, fp32_ms / ms);
    }
    const StepRunner *fast = &runners[count - 1], *slow = &runners[0];
    const Graph *g = fast->c.graph;
    double timed_steps = (double)rounds * STEP_RUNS;
    printf("\nits convolutions and dense layers, bf16 (%s) against fp32 (%s); bytes: the GEMM's A and B as the kernel "
           "reads them, C read and written\n", fast->name, fp32->kernel->name);
    printf("    %-14s %-9s %9s %9s %9s %8s %9s\n", "op", "pass", "fp32 ms", "bf16 ms", "GFLOP/s", "% peak", "bytes");
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        double M, N, K;
        if (!n->op) continue;
        layer_mnk(n, BATCH, &M, &N, &K);
        if (M == 0) continue;
        int index = (int)(n - g->nodes);
        for (int pass = 0; pass < 2; pass++) {
            double ms16 = 1e3 * (pass ? fast->times->backward : fast->times->forward)[index] / timed_steps;
            double ms32 = 1e3 * (pass ? slow->times->backward : slow->times->forward)[index] / timed_steps;
            double flops = node_flops(n, pass, BATCH), gemms = flops / (2 * M * N * K);
            // Every GEMM of a pass multiplies two of (M, K), (K, N), (M, N) and writes the third.
            double operands = gemms * (M * K + K * N), c_bytes = gemms * 2 * 4 * M * N / gemms;
            double ratio = (2 * operands + gemms * c_bytes) / (4 * operands + gemms * c_bytes);
            printf("    %-14s %-9s %9.3f %9.3f %9.1f %7.1f%% %8.0f%%\n", pass ? "" : n->op->name, pass ? "backward" : "forward",
                   ms32, ms16, flops / (ms16 * 1e-3) / 1e9, 100 * flops / (ms16 * 1e-3) / 1e9 / peak, 100 * ratio);
        }
    }
    for (int r = 0; r < count; r++) {
        free(runners[r].times);
        optimizer_free(&runners[r].opt);
        graph_free(runners[r].c.graph);
    }
    free(scratch), free(images), free(targets);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--bf16") == 0) {
        int threads = argc > 2 ? atoi(argv[2]) : online_cpus(), rounds = argc > 3 ? atoi(argv[3]) : 7;
        if (threads < 1 || threads > 256 || rounds < 1 || rounds > BF16_MAX_ROUNDS) {
            fprintf(stderr, "usage: %s --bf16 [THREADS] [ROUNDS, at most %d]\n", argv[0], BF16_MAX_ROUNDS);
            return 2;
        }
        return bench_bf16(threads, rounds);
    }
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
