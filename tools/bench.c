/* bench.c - how fast each layer runs, against what the machine can do:
   the measurements book.md chapter 4 quotes.

   What this is: a program of its own, built on the newest chapter, which
   it includes whole (as the tests do). First the machine: each
   micro-kernel's peak (an FMA probe, one thread and all of them) and the
   memory bandwidth (a triad over arrays far larger than the caches). Then
   every convolution and dense layer of the three models at batch 64, each
   pass (forward, input gradient, weight gradient), in every version this
   CPU runs, each first checked against the naive version: GFLOP/s and the
   share of the peak; the basic CNN's convolutions against the project's
   targets; the blocking swept; and a training step of each model, op by op.
   The table is also written as data, with a gnuplot script that draws it
   as a roofline, under plots/.
   What it is not: a timed test, or part of a chapter. Speeds vary from run
   to run and machine to machine; the tests check correctness, this only
   reports. The chapters keep only what it measures with (each kernel's
   FMA probe, a GemmContext of any blocking) and no timing hooks: it times
   the ops by walking the compiled graph and calling each op's forward and
   backward itself (timed_step).

       make bench                  build/bench, then one epoch of each model
       build/bench [--threads N]   N threads for the blocked versions (default:
                                   the CPUs online); the references run on one
       make bench-chapter FILE=mine4.c [CFLAGS=...] [BENCH_ARGS=...]
                                   the same on another chapter (4 on): its
                                   kernels, and the steps of the models it has

   Exit codes: 0 done, 2 a bad option, 10 plots/ cannot be written (found
   out before the work, not after minutes of it). Writes plots/bench.dat
   and plots/roofline.gp.
   (No #include of its own: the chapter's come first, after the feature
   macros it defines, or POSIX's fdopen would go undeclared.) */
#define main chapter_main
// Another chapter, from 4 on (a student's copy, say): make bench-chapter FILE=...
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter7.c"
#endif
#include CHAPTER_FILE
#undef main

typedef struct {
    const char *model, *name;
    int conv;                     // 1: a 3x3 convolution, 0: a dense layer
    int size, channels, outputs;  // conv: (size, size, channels) -> outputs; dense: channels -> outputs
    int pad;
} BenchLayer;

static const BenchLayer BENCH_LAYERS[] = {
    {"ann", "dense 784->128", 0, 0, 784, 128, 0},
    {"ann", "dense 128->64", 0, 0, 128, 64, 0},
    {"ann", "dense 64->10", 0, 0, 64, 10, 0},
    {"basic", "conv 28x28x1->32", 1, 28, 1, 32, 0},
    {"basic", "conv 13x13x32->64", 1, 13, 32, 64, 0},
    {"basic", "dense 1600->128", 0, 0, 1600, 128, 0},
    {"basic", "dense 128->10", 0, 0, 128, 10, 0},
    {"deeper", "conv 28x28x1->32", 1, 28, 1, 32, 1},
    {"deeper", "conv 28x28x32->32", 1, 28, 32, 32, 1},
    {"deeper", "conv 14x14x32->64", 1, 14, 32, 64, 1},
    {"deeper", "conv 14x14x64->64", 1, 14, 64, 64, 1},
    {"deeper", "dense 3136->256", 0, 0, 3136, 256, 0},
    {"deeper", "dense 256->10", 0, 0, 256, 10, 0},
};
enum { BENCH_LAYER_COUNT = sizeof BENCH_LAYERS / sizeof BENCH_LAYERS[0], BENCH_BATCH = 64 };
static const char *const PASS_NAMES[3] = {"forward", "input grad", "weight grad"};

// One layer's operands and outputs, allocated once per layer.
typedef struct {
    ConvShape s;              // conv only
    int B, C, OC;             // dense only
    size_t n_in, n_weight, n_out;
    float *x, *w, *b, *dout;  // inputs: (n_in), (n_weight), (OC), (n_out)
    float *out, *dx, *dw, *db, *scratch;
} BenchData;

void bench_data_new(BenchData *d, const BenchLayer *l) {
    memset(d, 0, sizeof *d);
    if (l->conv) {
        d->s = conv_shape(BENCH_BATCH, l->size, l->size, l->channels, 3, 3, l->pad, l->outputs);
        d->n_in = (size_t)BENCH_BATCH * l->size * l->size * l->channels;
        d->n_weight = conv_patch_size(&d->s) * (size_t)l->outputs;
        d->n_out = conv_rows(&d->s) * (size_t)l->outputs;
        d->scratch = xmalloc(2 * conv_rows(&d->s) * conv_patch_size(&d->s) * sizeof(float));
    } else {
        d->B = BENCH_BATCH, d->C = l->channels, d->OC = l->outputs;
        d->n_in = (size_t)d->B * d->C, d->n_weight = (size_t)d->C * d->OC, d->n_out = (size_t)d->B * d->OC;
    }
    size_t sizes[] = {d->n_in, d->n_weight, (size_t)l->outputs, d->n_out};
    float **inputs[] = {&d->x, &d->w, &d->b, &d->dout};
    Rng rng = rng_new(17, STREAM_CHECK);
    for (int k = 0; k < 4; k++) {
        *inputs[k] = xmalloc(sizes[k] * sizeof(float));
        for (size_t i = 0; i < sizes[k]; i++) (*inputs[k])[i] = 2 * rng_uniform(&rng) - 1;
    }
    d->out = xmalloc(d->n_out * sizeof(float));
    d->dx = xmalloc(d->n_in * sizeof(float));
    d->dw = xmalloc(d->n_weight * sizeof(float));
    d->db = xmalloc((size_t)l->outputs * sizeof(float));
}

void bench_data_free(BenchData *d) {
    float *buffers[] = {d->x, d->w, d->b, d->dout, d->out, d->dx, d->dw, d->db, d->scratch};
    for (int k = 0; k < 9; k++) free(buffers[k]);
}

// The gradient a pass adds to, set to zero: apart from the pass, as in
// training, where clearing the gradients is a step of its own.
void bench_clear(BenchData *d, int pass) {
    if (pass == 1) memset(d->dx, 0, d->n_in * sizeof(float));
    if (pass == 2) memset(d->dw, 0, d->n_weight * sizeof(float));
}

// Runs one pass of one layer with one version (ctx NULL: `kind` is naive or
// im2col); the result is in out, dx or dw. Gradients start from zero
// (bench_clear, first).
void bench_run(BenchData *d, const BenchLayer *l, int pass, KernelKind kind, const GemmContext *ctx) {
    float *dx = pass == 1 ? d->dx : NULL, *dw = pass == 2 ? d->dw : NULL;
    if (l->conv) {
        if (kind == KERNEL_NAIVE && pass == 0) conv2d_forward_naive(d->out, d->x, d->w, d->b, &d->s);
        else if (kind == KERNEL_NAIVE) conv2d_backward_naive(dx, dw, NULL, d->dout, d->x, d->w, &d->s);
        else if (kind == KERNEL_IM2COL && pass == 0) conv2d_forward_im2col(d->out, d->x, d->w, d->b, &d->s, d->scratch);
        else if (kind == KERNEL_IM2COL) conv2d_backward_im2col(dx, dw, NULL, d->dout, d->x, d->w, &d->s, d->scratch);
        else if (pass == 0) conv2d_forward_blocked(ctx, d->out, d->x, d->w, d->b, &d->s);
        else conv2d_backward_blocked(ctx, dx, dw, NULL, d->dout, d->x, d->w, &d->s, d->scratch);
    } else {
        if (kind != KERNEL_BLOCKED && pass == 0) matmul_forward(d->out, d->x, d->w, d->B, d->C, d->OC);
        else if (kind != KERNEL_BLOCKED) matmul_backward(dx, dw, d->dout, d->x, d->w, d->B, d->C, d->OC);
        else if (pass == 0) matmul_forward_blocked(ctx, d->out, d->x, d->w, d->B, d->C, d->OC);
        else matmul_backward_blocked(ctx, dx, dw, d->dout, d->x, d->w, d->B, d->C, d->OC);
    }
}

// Multiply-adds of one pass of one layer at batch 64 (the same for all passes).
double bench_multiply_adds(const BenchData *d, const BenchLayer *l) {
    return l->conv ? (double)conv_rows(&d->s) * conv_patch_size(&d->s) * l->outputs : (double)d->B * d->C * d->OC;
}

// The result of a pass: the array it writes.
const float *bench_result(const BenchData *d, int pass, size_t *n) {
    *n = pass == 0 ? d->n_out : pass == 1 ? d->n_in : d->n_weight;
    return pass == 0 ? d->out : pass == 1 ? d->dx : d->dw;
}

// The largest |a - b| relative to the largest |a|.
// (With ifs rather than fmax: gcc 12 for arm64 crashes, an internal
// compiler error, vectorising a loop of fmax at -O3.)
double largest_difference(const float *a, const float *b, size_t n) {
    double largest = 0, difference = 0;
    for (size_t i = 0; i < n; i++) {
        double size = fabs(a[i]), gap = fabs((double)a[i] - b[i]);
        if (size > largest) largest = size;
        if (gap > difference) difference = gap;
    }
    return difference / fmax(largest, 1e-30);
}

// Seconds of one pass: the best of several runs, the least disturbed, as
// the peak is the best of its runs (gemm_peak_gflops): at least 5, and
// more, up to 50, while they have taken under half a second in all (on a
// shared machine a slow spell can outlast a quarter of a second); one run
// for the slow references.
enum { BENCH_MIN_RUNS = 5, BENCH_MAX_RUNS = 50 };
#define BENCH_SECONDS 0.5
double bench_time(BenchData *d, const BenchLayer *l, int pass, KernelKind kind, const GemmContext *ctx) {
    int blocked = kind == KERNEL_BLOCKED;
    double best = INFINITY, spent = 0;
    for (int r = 0; r < (blocked ? BENCH_MAX_RUNS : 1) && (r < BENCH_MIN_RUNS || spent < BENCH_SECONDS); r++) {
        bench_clear(d, pass);
        double start = now_seconds();
        bench_run(d, l, pass, kind, ctx);
        double seconds = now_seconds() - start;
        best = fmin(best, seconds);
        spent += seconds;
    }
    return best;
}

// Text built in memory, then written in one go with write_file_atomically.
typedef struct {
    char *bytes;
    size_t used, capacity;
} Text;

void text_printf(Text *t, const char *format, ...) {
    for (;;) {
        va_list args;
        va_start(args, format);
        int n = vsnprintf(t->bytes ? t->bytes + t->used : NULL, t->bytes ? t->capacity - t->used : 0, format, args);
        va_end(args);
        if (n >= 0 && t->bytes && t->used + (size_t)n < t->capacity) {
            t->used += (size_t)n;
            return;
        }
        size_t larger = (t->capacity + (size_t)(n > 0 ? n : 0) + 1) * 2;
        char *grown = xmalloc(larger);
        if (t->bytes) memcpy(grown, t->bytes, t->used);
        free(t->bytes);
        t->bytes = grown, t->capacity = larger;
    }
}

// A roofline: the peak as a flat line, the bandwidth as a slope, every
// measured pass as a point at its arithmetic intensity.
static const char ROOFLINE_SCRIPT[] =
    "# plots/roofline.gp - draws plots/bench.dat (written by build/bench, make bench) as a roofline.\n"
    "# Run from the top of the repository: gnuplot plots/roofline.gp (writes plots/roofline.svg).\n"
    "set terminal svg size 900,600\nset output 'plots/roofline.svg'\n"
    "set logscale xy\nset xlabel 'FLOPs per byte (at least)'\nset ylabel 'GFLOP/s'\nset key left top\n"
    "peak = %.1f\nbandwidth = %.1f\n"
    "roof(x) = x * bandwidth < peak ? x * bandwidth : peak\n"
    "plot [0.1:1000] roof(x) title 'roofline (measured peak and bandwidth)' lw 2, \\\n"
    "  'plots/bench.dat' using 7:(strcol(4) eq 'naive' ? $5 : 1/0) title 'naive' pt 6, \\\n"
    "  'plots/bench.dat' using 7:(strcol(4) eq 'im2col' ? $5 : 1/0) title 'im2col' pt 4, \\\n"
    "  'plots/bench.dat' using 7:(strcol(4) ne 'naive' && strcol(4) ne 'im2col' && strstrt(strcol(4), '/1') == 0 ? $5 : "
    "1/0) title 'blocked' pt 7\n";

/* The peak: each kernel's instruction set running independent chains of
   fused multiply-adds, as many as its micro-kernel keeps, with nothing to
   load or store. Each probe returns a value so the work is not dropped. */
typedef float PeakProbe(long iterations);

// Eight independent chains: enough to hide a 4-cycle latency on 2 units.
float peak_probe_portable(long iterations) {
    // Different starting values, or the compiler sees eight copies of one
    // chain and keeps only one (gcc does).
    float x0 = 0, x1 = 1, x2 = 2, x3 = 3, x4 = 4, x5 = 5, x6 = 6, x7 = 7;
    for (long i = 0; i < iterations; i++) {
        // x = x/2 + 1 tends to 2: no overflow, no slow subnormal numbers
        x0 = fmaf(x0, 0.5f, 1.0f), x1 = fmaf(x1, 0.5f, 1.0f), x2 = fmaf(x2, 0.5f, 1.0f), x3 = fmaf(x3, 0.5f, 1.0f);
        x4 = fmaf(x4, 0.5f, 1.0f), x5 = fmaf(x5, 0.5f, 1.0f), x6 = fmaf(x6, 0.5f, 1.0f), x7 = fmaf(x7, 0.5f, 1.0f);
    }
    return x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7;
}

#if HAVE_X86_KERNELS
// Twelve independent 8-lane chains, as many as the kernel keeps.
__attribute__((target("avx2,fma")))
float peak_probe_avx2(long iterations) {
    __m256 x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11;
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    // Different starting values, as in the portable probe.
    x0 = _mm256_set1_ps(0), x1 = _mm256_set1_ps(1), x2 = _mm256_set1_ps(2), x3 = _mm256_set1_ps(3);
    x4 = _mm256_set1_ps(4), x5 = _mm256_set1_ps(5), x6 = _mm256_set1_ps(6), x7 = _mm256_set1_ps(7);
    x8 = _mm256_set1_ps(8), x9 = _mm256_set1_ps(9), x10 = _mm256_set1_ps(10), x11 = _mm256_set1_ps(11);
    for (long i = 0; i < iterations; i++) {
        x0 = _mm256_fmadd_ps(x0, half, one), x1 = _mm256_fmadd_ps(x1, half, one), x2 = _mm256_fmadd_ps(x2, half, one);
        x3 = _mm256_fmadd_ps(x3, half, one), x4 = _mm256_fmadd_ps(x4, half, one), x5 = _mm256_fmadd_ps(x5, half, one);
        x6 = _mm256_fmadd_ps(x6, half, one), x7 = _mm256_fmadd_ps(x7, half, one), x8 = _mm256_fmadd_ps(x8, half, one);
        x9 = _mm256_fmadd_ps(x9, half, one), x10 = _mm256_fmadd_ps(x10, half, one), x11 = _mm256_fmadd_ps(x11, half, one);
    }
    __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)),
                               _mm256_add_ps(_mm256_add_ps(x4, x5), _mm256_add_ps(x6, x7)));
    sum = _mm256_add_ps(sum, _mm256_add_ps(_mm256_add_ps(x8, x9), _mm256_add_ps(x10, x11)));
    float lanes[8];
    _mm256_storeu_ps(lanes, sum);
    return lanes[0];
}

__attribute__((target("avx512f")))
float peak_probe_avx512(long iterations) {
    __m512 x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11;
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    // Different starting values, as in the portable probe.
    x0 = _mm512_set1_ps(0), x1 = _mm512_set1_ps(1), x2 = _mm512_set1_ps(2), x3 = _mm512_set1_ps(3);
    x4 = _mm512_set1_ps(4), x5 = _mm512_set1_ps(5), x6 = _mm512_set1_ps(6), x7 = _mm512_set1_ps(7);
    x8 = _mm512_set1_ps(8), x9 = _mm512_set1_ps(9), x10 = _mm512_set1_ps(10), x11 = _mm512_set1_ps(11);
    for (long i = 0; i < iterations; i++) {
        x0 = _mm512_fmadd_ps(x0, half, one), x1 = _mm512_fmadd_ps(x1, half, one), x2 = _mm512_fmadd_ps(x2, half, one);
        x3 = _mm512_fmadd_ps(x3, half, one), x4 = _mm512_fmadd_ps(x4, half, one), x5 = _mm512_fmadd_ps(x5, half, one);
        x6 = _mm512_fmadd_ps(x6, half, one), x7 = _mm512_fmadd_ps(x7, half, one), x8 = _mm512_fmadd_ps(x8, half, one);
        x9 = _mm512_fmadd_ps(x9, half, one), x10 = _mm512_fmadd_ps(x10, half, one), x11 = _mm512_fmadd_ps(x11, half, one);
    }
    __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(x0, x1), _mm512_add_ps(x2, x3)),
                               _mm512_add_ps(_mm512_add_ps(x4, x5), _mm512_add_ps(x6, x7)));
    sum = _mm512_add_ps(sum, _mm512_add_ps(_mm512_add_ps(x8, x9), _mm512_add_ps(x10, x11)));
    float lanes[16];
    _mm512_storeu_ps(lanes, sum);
    return lanes[0];
}
#endif

// The probe of a kernel's instruction set, and its FLOPs per iteration.
PeakProbe *peak_probe(const GemmKernel *kernel, int *flops) {
#if HAVE_X86_KERNELS
    if (strcmp(kernel->name, "avx2") == 0) return *flops = 12 * 8 * 2, peak_probe_avx2;
    if (strcmp(kernel->name, "avx512") == 0) return *flops = 12 * 16 * 2, peak_probe_avx512;
#endif
    return *flops = 8 * 2, peak_probe_portable;
}

// One core's peak for this kernel's instruction set, in GFLOP/s: the probe's
// independent FMA chains, best of 20 runs of at least
// 5 ms each (the best, because other programs on the machine only ever
// make a run slower).
double gemm_peak_gflops(const GemmKernel *kernel) {
    require(gemm_kernel_supported(kernel), "gemm_peak_gflops: kernel does not run on this CPU");
    int probe_flops;
    PeakProbe *probe = peak_probe(kernel, &probe_flops);
    long iterations = 1000;
    volatile float sink = 0;  // so the probe's result is used
    double best = 0;
    for (int run = 0; run < 20;) {
        double start = now_seconds();
        sink = sink + probe(iterations);
        double seconds = now_seconds() - start;
        if (seconds < 0.005) {
            iterations *= 2;
            continue;
        }
        double gflops = (double)probe_flops * (double)iterations / seconds * 1e-9;
        best = gflops > best ? gflops : best;
        run++;
    }
    return best;
}

// All threads running a kernel's FMA probe at once: the machine's peak.
typedef struct {
    const GemmKernel *kernel;
    double gflops[MAX_THREADS];
} PeakJob;

void peak_task(void *context, int task, int worker) {
    (void)worker;
    PeakJob *job = context;
    job->gflops[task] = gemm_peak_gflops(job->kernel);
}

// The best of a few rounds of all threads at once: a round in which another
// program held one of the cores reads low (by half, with two cores), as a
// one-core probe's single run would.
enum { PEAK_ROUNDS = 5 };
double all_threads_peak(Workers *workers, int threads, const GemmKernel *kernel) {
    double best = 0;
    for (int round = 0; round < PEAK_ROUNDS; round++) {
        PeakJob job = {.kernel = kernel};
        parallel_for(workers, threads, peak_task, &job);
        double sum = 0;
        for (int t = 0; t < threads; t++) sum += job.gflops[t];
        best = fmax(best, sum);
    }
    return best;
}

// Memory bandwidth: a[i] = b[i] + 3 c[i] over three 64 MB arrays, split into
// equal parts, one per task; bytes moved per second, best of 5.
typedef struct {
    float *a, *b, *c;
    size_t n;
    int parts;
} TriadJob;

void triad_task(void *context, int task, int worker) {
    (void)worker;
    TriadJob *t = context;
    size_t from = t->n * (size_t)task / (size_t)t->parts, to = t->n * (size_t)(task + 1) / (size_t)t->parts;
    for (size_t i = from; i < to; i++) t->a[i] = t->b[i] + 3.0f * t->c[i];
}

double memory_bandwidth(Workers *w, int parts) {
    TriadJob t = {.n = (size_t)16 << 20, .parts = parts};
    t.a = xmalloc(3 * t.n * sizeof(float));
    t.b = t.a + t.n, t.c = t.b + t.n;
    for (size_t i = 0; i < 3 * t.n; i++) t.a[i] = 1.0f;
    double best = INFINITY;
    for (int r = 0; r < 5; r++) {
        double start = now_seconds();
        parallel_for(w, parts, triad_task, &t);
        best = fmin(best, now_seconds() - start);
    }
    free(t.a);
    return 3.0 * (double)t.n * sizeof(float) / best / 1e9;
}

/* The blocking, swept: the same passes timed with other KC, MC and NC, so
   the defaults in gemm.c are a measurement on this machine rather than a
   belief. Five passes that stand for the rest: the basic CNN's second
   convolution (each pass), and from the deeper CNN its slowest kind of
   pass, a weight gradient with a long sum, and its widest layer, where NC
   matters (256 outputs). A pass alone, run again and again over the same data,
   finds its operands in the caches more than in a training step: the
   sweep shows what each size does, and book.md 4.14 what the whole step
   made of it. */
typedef struct {
    const char *model, *layer, *label;
    int pass;
} SweepPass;

static const SweepPass SWEEP_PASSES[] = {
    {"basic", "conv 13x13x32->64", "b.conv2 fwd", 0},
    {"basic", "conv 13x13x32->64", "b.conv2 in", 1},
    {"basic", "conv 13x13x32->64", "b.conv2 wt", 2},
    {"deeper", "conv 28x28x32->32", "d.conv2 wt", 2},
    {"deeper", "dense 3136->256", "d.dense fwd", 0},
};
enum { SWEEP_PASS_COUNT = sizeof SWEEP_PASSES / sizeof SWEEP_PASSES[0] };

const BenchLayer *bench_layer(const char *model, const char *name) {
    for (int i = 0; i < BENCH_LAYER_COUNT; i++)
        if (strcmp(BENCH_LAYERS[i].model, model) == 0 && strcmp(BENCH_LAYERS[i].name, name) == 0) return &BENCH_LAYERS[i];
    require(0, "bench_layer: no layer %s %s", model, name);
    return NULL;
}

// Prints the sweep and adds its rows to `data`; the best total time is named.
void sweep_blocking(const GemmKernel *kernel, int threads, Text *data) {
    static const int kcs[] = {64, 128, 256, 384, 512}, mcs[] = {120, 240, 480}, ncs[] = {128, 256};
    enum { KCS = sizeof kcs / sizeof kcs[0], MCS = sizeof mcs / sizeof mcs[0], NCS = sizeof ncs / sizeof ncs[0] };
    BenchData d[SWEEP_PASS_COUNT];    // used: those of the first pass of each layer
    BenchData *arrays[SWEEP_PASS_COUNT];
    const BenchLayer *layers[SWEEP_PASS_COUNT];
    printf("\nthe blocking, swept (%s on %d thread%s): GFLOP/s of each pass; * marks gemm.c's default\n",
           kernel->name, threads, threads == 1 ? "" : "s");
    printf("   %4s %4s %4s", "KC", "MC", "NC");
    for (int p = 0; p < SWEEP_PASS_COUNT; p++) {
        layers[p] = bench_layer(SWEEP_PASSES[p].model, SWEEP_PASSES[p].layer);
        arrays[p] = &d[p];
        for (int q = 0; q < p; q++)  // passes of one layer share its arrays
            if (layers[q] == layers[p]) arrays[p] = arrays[q];
        if (arrays[p] == &d[p]) bench_data_new(&d[p], layers[p]);
        printf(" %11s", SWEEP_PASSES[p].label);
    }
    printf(" %10s\n", "total ms");
    text_printf(data, "# sweep: KC MC NC, then GFLOP/s of:");
    for (int p = 0; p < SWEEP_PASS_COUNT; p++) text_printf(data, " %s", SWEEP_PASSES[p].label);
    text_printf(data, "\n");
    Blocking best = DEFAULT_BLOCKING;
    double best_total = INFINITY;
    for (int i = 0; i < KCS * MCS * NCS; i++) {
        Blocking b = {kcs[i / (MCS * NCS)], mcs[i / NCS % MCS], ncs[i % NCS]};
        if (b.nc % kernel->nr != 0) continue;
        GemmContext *ctx = gemm_context_new_blocked(kernel, threads, b);
        int is_default = b.kc == KC && b.mc == MC && b.nc == NC;
        double total = 0;
        printf(" %s %4d %4d %4d", is_default ? "*" : " ", b.kc, b.mc, b.nc);
        text_printf(data, "#sweep %d %d %d", b.kc, b.mc, b.nc);
        for (int p = 0; p < SWEEP_PASS_COUNT; p++) {
            double seconds = bench_time(arrays[p], layers[p], SWEEP_PASSES[p].pass, KERNEL_BLOCKED, ctx);
            double gflops = 2 * bench_multiply_adds(arrays[p], layers[p]) / seconds / 1e9;
            total += seconds;
            printf(" %11.1f", gflops);
            text_printf(data, " %.2f", gflops);
        }
        printf(" %10.2f\n", 1e3 * total);
        text_printf(data, "\n");
        if (total < best_total) best_total = total, best = b;
        gemm_context_free(ctx);
    }
    printf("   fastest in all (this run): KC %d, MC %d, NC %d\n", best.kc, best.mc, best.nc);
    for (int p = 0; p < SWEEP_PASS_COUNT; p++)
        if (arrays[p] == &d[p]) bench_data_free(&d[p]);
}

/* A training step, op by op: each model's graph at batch 64 on random
   images, a few steps to warm up, then STEP_RUNS steps with every op's
   forward and backward timed. This is the whole step as training runs it,
   caches cold between layers and all, where the table above times each
   pass alone and warm; the two together say where the time goes.
   Convolutions and matrix multiplies show their GFLOP/s. */
enum { STEP_WARMUP = 3, STEP_RUNS = 10 };

// Seconds of each part of a step, added up over the steps timed.
typedef struct {
    double forward[MAX_NODES], backward[MAX_NODES];  // each node's op, by its index in graph->nodes
    double zeroing;   // the weights' gradients set to zero (train.c, before every step)
    double clearing;  // graph_backward's zeroing of the other gradients
    double adam;      // the optimiser's update
    double total;     // the whole step, batch in and probabilities out included
} StepTimes;

/* One training step, exactly as training takes it (train.c: the weights'
   gradients zeroed, graph_compute_gradients, optimizer_update), with
   graph_run, graph_forward and graph_backward written out step for step,
   so that each op's forward and backward can be timed on its own. The
   engine has no timing hooks; tests/test_bench.c checks that this gives
   the engine's bits. Returns the loss. */
float timed_step(GraphClassifier *c, Optimizer *opt, const Batch *batch,
                 float *probs,  // (batch->count, NUM_CLASSES)
                 StepTimes *t) {
    Graph *g = c->graph;
    double step_start = now_seconds(), start = step_start;
    memset(g->grads, 0, g->param_count * sizeof(float));
    t->zeroing += now_seconds() - start;
    // graph_run
    graph_set_batch(g, batch->count);
    g->step = batch->step;
    memcpy(c->images->value, batch->images, c->images->size * sizeof(float));
    memcpy(c->targets->value, batch->targets, c->targets->size * sizeof(float));
    // graph_forward(g, 1)
    g->training = 1;
    for (int i = 0; i < g->order_count; i++) {
        Node *n = g->order[i];
        if (!n->op) continue;
        start = now_seconds();
        n->op->forward(n, g);
        t->forward[n - g->nodes] += now_seconds() - start;
    }
    // graph_backward(g)
    start = now_seconds();
    for (int i = 0; i < g->order_count; i++) {
        Node *n = g->order[i];
        if (n->op && n->grad) clear_floats(graph_workers(g), n->grad, n->size);
    }
    t->clearing += now_seconds() - start;
    g->output->grad[0] = 1.0f;
    for (int i = g->order_count - 1; i >= 0; i--) {
        Node *n = g->order[i];
        if (!n->op || !n->requires_grad) continue;
        start = now_seconds();
        n->op->backward(n, g);
        t->backward[n - g->nodes] += now_seconds() - start;
    }
    memcpy(probs, c->loss->saved, (size_t)batch->count * NUM_CLASSES * sizeof(float));
    float loss = g->output->value[0];
    start = now_seconds();
    optimizer_update(opt, g->params, g->grads, g->param_count);
    t->adam += now_seconds() - start;
    t->total += now_seconds() - step_start;
    return loss;
}

// FLOPs of one node's forward (pass 0) or backward (pass 1) at this batch.
double node_flops(const Node *n, int pass, int batch) {
    double forward = 2.0 * multiply_adds_per_image(n) * batch;
    if (pass == 0 || forward == 0) return forward;
    return forward * (n->inputs[0]->grad ? 2 : 1);  // the weights' gradient, and the input's if it needs one
}

/* The bytes a pass of a memory-bound op must move at the least: each
   tensor it reads, read once; each it writes, written once; each gradient
   it adds into, read and written once; 4 bytes a float. With N the
   output's floats and X the input's (both at this batch):
       op          forward                    backward
       relu        X + N                      dout, x, din r/w: 4N
       bias_add    X + N                      dout, din r/w: 3N (dbias is small)
       max_pool    X + N                      dout N, x X, din r/w 2X
       batch_norm  X + N                      dout, x, din r/w: 4N (x_hat is computed again)
       dropout     X + N (no mask saved)      dout, din r/w: 3N
   Its GB/s is these bytes over its time; against the triad's bandwidth,
   how close it comes to moving them at the speed of memory. At the
   deeper CNN's shapes (6.4 MB for a 28x28x32 map at batch 64) a tensor
   may still be in the last-level cache, so a share above 100% is
   possible. 0 for the ops whose arithmetic is their cost, and the loss. */
double node_bytes(const Node *n, int pass, int batch) {
    double N = (double)n->item_size * batch, X = (double)n->inputs[0]->item_size * batch;
    double din = n->inputs[0]->grad ? 2 : 0;  // the input's gradient, read and written, when it has one
    const char *op = n->op->name;  // by name: chapter 4 has no batch_norm or dropout (make bench-chapter)
    if (strcmp(op, "relu") == 0) return 4 * (pass ? (2 + din) * N : X + N);
    if (strcmp(op, "bias_add") == 0) return 4 * (pass ? (1 + din) * N : X + N);
    if (strcmp(op, "max_pool") == 0) return 4 * (pass ? N + (1 + din) * X : X + N);
    if (strcmp(op, "batch_norm") == 0) return 4 * (pass ? (2 + din) * N : X + N);
    if (strcmp(op, "dropout") == 0) return 4 * (pass ? (1 + din) * N : X + N);
    return 0;
}

void print_step_row(const Node *n, int index, const StepTimes *t, int batch, double step_seconds, double peak,
                    double bandwidth) {
    char shape[48] = "";
    for (int d = n->batched; d < n->rank; d++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), d > n->batched ? "x%d" : "%d", n->shape[d]);
    for (int pass = 0; pass < 2; pass++) {
        double seconds = (pass ? t->backward : t->forward)[index] / STEP_RUNS;
        double flops = node_flops(n, pass, batch);
        printf("    %-12s %-10s %-9s %8.2f %6.1f%%", pass ? "" : n->op->name, pass ? "" : shape, pass ? "backward" : "forward",
               1e3 * seconds, 100 * seconds / step_seconds);
        double bytes = node_bytes(n, pass, batch);
        if (flops > 0) printf(" %8.1f %6.1f%%", flops / seconds / 1e9, 100 * flops / seconds / 1e9 / peak);
        else if (bytes > 0) printf(" %16s %8.1f %6.0f%%", "", bytes / seconds / 1e9, 100 * bytes / seconds / 1e9 / bandwidth);
        printf("\n");
    }
}

// The step breakdown of one model (kernel and threads as the bench's).
void bench_training_step(const char *name, const GemmKernel *kernel, int threads, double peak, double bandwidth) {
    enum { BATCH = BENCH_BATCH };
    GraphClassifier c = build_model(name, BATCH, 1, KERNEL_BLOCKED, gemm_context_new(kernel, threads));
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, c.graph->param_count);
    opt.workers = graph_workers(c.graph);  // as training has it
    float *images = xmalloc((size_t)BATCH * IMAGE_SIZE * sizeof(float));     // (BATCH, 784)
    float *targets = xmalloc((size_t)BATCH * NUM_CLASSES * sizeof(float));   // (BATCH, 10)
    float probs[BATCH * NUM_CLASSES];                                        // (BATCH, 10)
    Rng rng = rng_new(3, STREAM_CHECK);
    for (size_t i = 0; i < (size_t)BATCH * IMAGE_SIZE; i++) images[i] = rng_uniform(&rng);
    memset(targets, 0, (size_t)BATCH * NUM_CLASSES * sizeof(float));
    for (int i = 0; i < BATCH; i++) targets[i * NUM_CLASSES + i % NUM_CLASSES] = 1;
    StepTimes *times = xmalloc(sizeof *times), *warmup = xmalloc(sizeof *warmup);
    memset(times, 0, sizeof *times);
    memset(warmup, 0, sizeof *warmup);
    for (int step = 0; step < STEP_WARMUP + STEP_RUNS; step++) {
        Batch batch = {images, targets, BATCH, step};
        timed_step(&c, &opt, &batch, probs, step < STEP_WARMUP ? warmup : times);
    }
    const Graph *g = c.graph;
    double step = times->total / STEP_RUNS, flops = 0, gemm_seconds = 0, other_seconds = 0;
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        if (!n->op) continue;
        int index = (int)(n - g->nodes), heavy = multiply_adds_per_image(n) > 0;
        for (int pass = 0; pass < 2; pass++) flops += node_flops(n, pass, BATCH);
        double seconds = (times->forward[index] + times->backward[index]) / STEP_RUNS;
        if (heavy) gemm_seconds += seconds;
        else other_seconds += seconds;
    }
    printf("\n  %s: %.2f ms a step, %.0f images/s; %.1f GFLOP/s over the whole step, %.1f%% of the peak\n", name,
           1e3 * step, BATCH / step, flops / step / 1e9, 100 * flops / step / 1e9 / peak);
    printf("    %-12s %-10s %-9s %8s %7s %8s %7s %8s %7s\n", "op", "output", "pass", "ms", "share", "GFLOP/s", "% peak",
           "GB/s", "% triad");
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        if (n->op && n->op != &OPS[OP_RESHAPE]) print_step_row(n, (int)(n - g->nodes), times, BATCH, step, peak, bandwidth);
    }
    double zeroing = times->zeroing / STEP_RUNS, clearing = times->clearing / STEP_RUNS, adam = times->adam / STEP_RUNS;
    // Their bytes: zeroing and clearing write each float once; Adam reads
    // the gradient and reads and writes the weight, m and v: 7 floats a weight.
    double cleared = 0, P = (double)g->param_count;
    for (int i = 0; i < g->order_count; i++)
        if (g->order[i]->op && g->order[i]->grad) cleared += (double)g->order[i]->size;
    const struct { const char *what; double seconds, bytes; } parts[] = {
        {"zeroing the weights' gradients", zeroing, 4 * P},
        {"clearing the other gradients", clearing, 4 * cleared},
        {"Adam", adam, 4 * 7 * P},
    };
    for (int k = 0; k < 3; k++)
        printf("    %-32s %8.2f %6.1f%% %16s %8.1f %6.0f%%\n", parts[k].what, 1e3 * parts[k].seconds,
               100 * parts[k].seconds / step, "", parts[k].bytes / parts[k].seconds / 1e9,
               100 * parts[k].bytes / parts[k].seconds / 1e9 / bandwidth);
    double rest = step - gemm_seconds - other_seconds - zeroing - clearing - adam;
    printf("    %-32s %8.2f %6.1f%%\n", "the rest (batch in, probs out)", 1e3 * rest, 100 * rest / step);
    printf("    convolutions and matrix multiplies %.2f ms (%.0f%%), at %.1f GFLOP/s; every other op %.2f ms (%.0f%%)\n",
           1e3 * gemm_seconds, 100 * gemm_seconds / step, flops / gemm_seconds / 1e9, 1e3 * other_seconds,
           100 * other_seconds / step);
    free(times), free(warmup), free(images), free(targets);
    optimizer_free(&opt);
    graph_free(c.graph);
}

/* The targets for the fast path: the basic
   CNN's convolutions at 70% of one core's peak in the forward pass and 60%
   in the gradients, for the instruction set in use. The first
   convolution's input gradient is never computed (the images need none).
   Each pass is timed again here, on one thread, a minute or so after the
   table timed it, and the better of the two counts: other programs only
   ever make a run slower, and a slow spell of this machine can last the
   few seconds of one look (the same reason bench_time keeps the best run).
   Beside each layer, what the roofline allows one core: its intensity
   times one core's bandwidth, at most the peak (section 4.12). */
void report_targets(double core_share[][3],    // (BENCH_LAYER_COUNT, 3): % of one core's peak, NAN if not run
                 const double *roof_share,  // (BENCH_LAYER_COUNT): % the roofline allows one core
                 const GemmKernel *kernel, double peak_one) {
    static const double bar[3] = {70, 60, 60};
    GemmContext *ctx = gemm_context_new(kernel, 1);
    printf("\nthe basic CNN's convolutions against the targets, %s kernel (%% of its peak on one core, on one "
           "thread; the better of the table's look, if it took one, and a second one now):\n", kernel->name);
    for (int i = 0; i < BENCH_LAYER_COUNT; i++) {
        const BenchLayer *l = &BENCH_LAYERS[i];
        if (strcmp(l->model, "basic") != 0 || !l->conv) continue;
        BenchData d;
        bench_data_new(&d, l);
        printf("  %-19s (the roofline allows %.0f%%)", l->name, roof_share[i]);
        for (int pass = 0; pass < 3; pass++) {
            if (isnan(core_share[i][pass])) continue;
            double seconds = bench_time(&d, l, pass, KERNEL_BLOCKED, ctx);
            double share = fmax(core_share[i][pass], 100 * 2 * bench_multiply_adds(&d, l) / seconds / 1e9 / peak_one);
            printf("  %s %5.1f%% (bar %.0f%%: %s)", PASS_NAMES[pass], share, bar[pass],
                   share >= bar[pass] ? "met" : "not met");
        }
        printf("\n");
        bench_data_free(&d);
    }
    gemm_context_free(ctx);
}

/* The benchmark. Returns 0, or EXIT_WRITE when its files cannot be written.
   `threads` threads for the blocked versions; the references run on one. */
int run_benchmark(int threads, Error *err) {
    // The results go to plots/ at the end: find out now, not after minutes
    // of work, whether a file can be made there (as the end will make it).
    const char *probe = "plots/.bench-probe";
    if (write_file_atomically(probe, "", 0, err)) return err->code;
    remove(probe);
    // Every kernel of the chapter's table that this CPU runs, in the
    // table's order: the portable one first, the widest last.
    const GemmKernel *kernels[GEMM_KERNEL_COUNT];
    int kernel_count = 0;
    double peak_one[GEMM_KERNEL_COUNT], peak_all[GEMM_KERNEL_COUNT];
    Workers *workers = workers_new(threads);
    printf("the machine: %d thread%s\n", threads, threads == 1 ? "" : "s");
    for (int k = 0; k < GEMM_KERNEL_COUNT; k++) {
        const GemmKernel *kernel = &GEMM_KERNELS[k];
        if (!gemm_kernel_supported(kernel)) {
            printf("  %-8s  not on this CPU\n", kernel->name);
            continue;
        }
        peak_one[kernel_count] = gemm_peak_gflops(kernel);
        peak_all[kernel_count] = all_threads_peak(workers, threads, kernel);
        printf("  %-8s  peak %6.1f GFLOP/s on one core, %6.1f on %d (FMA probe)\n", kernel->name,
               peak_one[kernel_count], peak_all[kernel_count], threads);
        kernels[kernel_count++] = kernel;
    }
    double bandwidth_one = memory_bandwidth(workers, 1), bandwidth_all = memory_bandwidth(workers, threads);
    printf("  memory    %.1f GB/s from one core, %.1f from %d (triad over 192 MB)\n\n", bandwidth_one,
           bandwidth_all, threads);
    workers_free(workers);

    Text data = {0};
    text_printf(&data, "# model layer pass version GFLOP/s percent_of_peak flops_per_byte (from build/bench;"
                        " a version ending in /1 ran on one thread, its percent of one core's peak)\n");
    printf("every layer at batch %d: GFLOP/s, and %% of the peak of what runs it (the references: one core "
           "of the widest kernel; blocked: its kernel on %d thread%s%s)\n", BENCH_BATCH, threads, threads == 1 ? "" : "s",
           threads > 1 ? ", and KERNEL/1 on one thread, of one core's peak" : "");
    printf("  %-7s %-19s %-11s %-9s %8s %7s  %s\n", "model", "layer", "pass", "version", "GFLOP/s", "% peak",
           "checked against naive");
    double core_share[BENCH_LAYER_COUNT][3];  // % of one core's peak, the widest kernel on one thread
    double roof_share[BENCH_LAYER_COUNT];     // the most the roofline allows one core, in % of its peak
    for (int i = 0; i < BENCH_LAYER_COUNT; i++) {
        const BenchLayer *l = &BENCH_LAYERS[i];
        BenchData d;
        bench_data_new(&d, l);
        for (int pass = 0; pass < 3; pass++) {
            core_share[i][pass] = NAN;
            if (l->conv && l->channels == 1 && pass == 1) continue;  // the images need no gradient
            size_t n;
            bench_clear(&d, pass);
            bench_run(&d, l, pass, KERNEL_NAIVE, NULL);
            const float *result = bench_result(&d, pass, &n);
            float *reference = xmalloc(n * sizeof(float));
            memcpy(reference, result, n * sizeof(float));
            double macs = bench_multiply_adds(&d, l);
            // Bytes a pass must at least move: its three matrices once (the roofline's x axis).
            double bytes = 4.0 * (d.n_in + d.n_weight + d.n_out);
            roof_share[i] = fmin(100, 100 * 2 * macs / bytes * bandwidth_one / peak_one[kernel_count - 1]);
            // naive, im2col, each kernel on all threads, and (with more than
            // one thread) the widest on one: the targets are per core.
            for (int v = 0; v < 2 + kernel_count + (threads > 1); v++) {
                KernelKind kind = v == 0 ? KERNEL_NAIVE : v == 1 ? KERNEL_IM2COL : KERNEL_BLOCKED;
                int one_core = v == 2 + kernel_count, k = one_core ? kernel_count - 1 : v - 2;
                GemmContext *ctx = v >= 2 ? gemm_context_new(kernels[k], one_core ? 1 : threads) : NULL;
                double seconds = bench_time(&d, l, pass, kind, ctx);
                double difference = largest_difference(reference, bench_result(&d, pass, &n), n);
                double gflops = 2 * macs / seconds / 1e9;
                double peak = v < 2 || one_core ? peak_one[kernel_count - 1] : peak_all[k];
                char version[32];
                snprintf(version, sizeof version, "%s%s", v == 0 ? "naive" : v == 1 ? "im2col" : kernels[k]->name,
                         one_core ? "/1" : "");
                printf("  %-7s %-19s %-11s %-9s %8.1f %6.1f%%  %s (%.1e)\n", l->model, l->name, PASS_NAMES[pass],
                       version, gflops, 100 * gflops / peak, difference < 1e-4 ? "ok" : "DIFFERS", difference);
                text_printf(&data, "%s \"%s\" \"%s\" %s %.2f %.2f %.3f\n", l->model, l->name, PASS_NAMES[pass], version,
                        gflops, 100 * gflops / peak, 2 * macs / bytes);
                gemm_context_free(ctx);
                int widest_on_one = one_core || (threads == 1 && v == 2 + kernel_count - 1);
                if (widest_on_one) core_share[i][pass] = 100 * gflops / peak;
            }
            free(reference);
        }
        bench_data_free(&d);
    }
    // The targets hold for every vector kernel (the portable one alone where
    // there is none); the table timed only the widest on one core.
    for (int k = kernel_count > 1 ? 1 : 0; k < kernel_count; k++) {
        double shares[BENCH_LAYER_COUNT][3], roof[BENCH_LAYER_COUNT];
        for (int i = 0; i < BENCH_LAYER_COUNT; i++) {
            roof[i] = fmin(100, roof_share[i] * peak_one[kernel_count - 1] / peak_one[k]);  // a lower peak: more of it
            for (int p = 0; p < 3; p++) shares[i][p] = k == kernel_count - 1 || isnan(core_share[i][p]) ? core_share[i][p] : 0;
        }
        report_targets(shares, roof, kernels[k], peak_one[k]);
    }
    sweep_blocking(kernels[kernel_count - 1], threads, &data);
    printf("\na training step, op by op (batch %d, %s on %d thread%s, the mean of %d steps after %d unmeasured; "
           "%% peak: of %.1f GFLOP/s; GB/s: the least a memory-bound pass must move, over its time (node_bytes); "
           "%% triad: of %.1f GB/s):\n", BENCH_BATCH, kernels[kernel_count - 1]->name, threads, threads == 1 ? "" : "s",
           STEP_RUNS, STEP_WARMUP, peak_all[kernel_count - 1], bandwidth_all);
    static const char *const step_models[] = {"ann", "basic", "deeper"};
    for (size_t i = 0; i < sizeof step_models / sizeof step_models[0]; i++)
        if (is_choice(step_models[i], MODEL_NAMES))  // the models this chapter builds
            bench_training_step(step_models[i], kernels[kernel_count - 1], threads, peak_all[kernel_count - 1],
                                bandwidth_all);
    Text script = {0};
    text_printf(&script, ROOFLINE_SCRIPT, peak_all[kernel_count - 1], bandwidth_all);
    int status = write_file_atomically("plots/bench.dat", data.bytes, data.used, err) ||
                 write_file_atomically("plots/roofline.gp", script.bytes, script.used, err);
    free(data.bytes);
    free(script.bytes);
    if (!status) printf("\nwrote plots/bench.dat and plots/roofline.gp (gnuplot plots/roofline.gp draws "
                        "plots/roofline.svg)\n");
    return status ? err->code : 0;
}

/* The command line: build/bench [--threads N]. */
int bench_main(int argc, char **argv) {
    int threads = online_cpus();
    for (int i = 1; i < argc; i++) {
        char *end = NULL;
        long n = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
        if (strcmp(argv[i], "--threads") == 0 && end && end != argv[i + 1] && !*end && n >= 1 && n <= MAX_THREADS) {
            threads = (int)n, i++;
        } else {
            int help = strcmp(argv[i], "--help") == 0;
            if (!help) fprintf(stderr, "%s: %s: not an option, or --threads without a number from 1 to %d\n", argv[0],
                               argv[i], MAX_THREADS);
            fprintf(help ? stdout : stderr, "usage: %s [--threads N]   (N from 1 to %d; default: the CPUs online, here %d)\n"
                    "measures this machine's peak and every layer's speed; writes plots/bench.dat and plots/roofline.gp\n",
                    argv[0], MAX_THREADS, online_cpus());
            return help ? 0 : EXIT_USAGE;
        }
    }
    Error err = {0};
    int status = run_benchmark(threads, &err);
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    return finish_output(argv[0], status);
}

// tools/bench_pass.c and tests/test_bench.c include this file without its main.
#ifndef BENCH_NO_MAIN
int main(int argc, char **argv) { return bench_main(argc, argv); }
#endif
