//@ from 4
/* ----------------------------------------------------------------------------
   The thread pool: persistent workers, one entry point (book.md 4.18).

   What this is: parallel_for(w, tasks, task, context), which runs
   task(context, i, worker) once for every i < tasks, spread over a few
   threads that are created once (workers_new) and sleep on a condition
   variable between calls. Every thread, the caller included, takes the
   next task number from a shared counter until none are left; then the
   caller waits for the others to finish and returns. The GEMM's tiles,
   batch norm's sums, Adam's update and the engine's per-image ops all go
   through it.
   What it is not: a scheduler. There are no queues, futures, priorities or
   nested calls: a task must not call parallel_for on the same Workers (it
   would wait for itself; gemm_in_task is the serial GEMM for use inside a
   task). Build with -DNO_THREADS (or on a system without POSIX) and
   parallel_for runs the tasks one after the other on the caller: same
   results, one core.

   Why the same bits at any thread count: which thread runs which task,
   and when, changes from run to run; what a task computes must not. So
   the caller fixes the tasks by the problem alone (a tile of C, a part of
   an array, an image of the batch), never by the number of threads, and a
   task writes only its own part of the output and never adds into
   something another task writes. Then every float is computed by the same
   operations in the same order whoever runs it, on one thread or 256.
   (A sum split across threads and added up in whatever order they finish
   would differ in its last bits from run to run.) `worker` (0 for the
   caller, 1..threads-1 for the helpers) says which thread is running the
   task, for per-thread scratch memory such as the GEMM's packing buffers:
   where a task works, never what it computes.

   The rule the tests check (tests/test_gemm.c): parallel_for runs every
   task exactly once, at any thread count. */

#if HAVE_POSIX && !defined(NO_THREADS)
#define HAVE_THREADS 1
#include <pthread.h>
#else
#define HAVE_THREADS 0
#endif

typedef void ParallelTask(void *context, int task, int worker);

typedef struct Workers Workers;

typedef struct {
    Workers *workers;
    int index;  // 1..threads-1: the caller of parallel_for is worker 0
} WorkerSeat;

struct Workers {
    int threads;  // the caller counts as one
#if HAVE_THREADS
    pthread_t *helpers;     // (threads - 1)
    WorkerSeat *seats;      // (threads - 1): what each helper is told about itself
    pthread_mutex_t lock;   // guards every field below
    pthread_cond_t wake;    // a new round of tasks, or time to quit
    pthread_cond_t done;    // the last helper finished its part of a round
    unsigned long round;    // counts parallel_for calls; a helper wakes when it changes
    int quitting;           // workers_free: helpers leave their loop
    int busy;               // helpers not yet finished with this round
    int running;            // a parallel_for is in progress
    ParallelTask *task;     // this round's job: task(context, i, worker) for i < tasks
    void *context;
    int tasks, next_task;
#endif
};

// How many processors are online, for a default thread count (at most
// MAX_THREADS, as --threads); 1 where the system cannot tell us.
enum { MAX_THREADS = 256 };
int online_cpus(void) {
#if HAVE_POSIX && defined(_SC_NPROCESSORS_ONLN)
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : (int)n;
#else
    return 1;
#endif
}

#if HAVE_THREADS
// Runs tasks until none are left. Called, and returns, with w->lock held;
// the lock is released while a task runs, so the others can take tasks.
void run_tasks(Workers *w, int worker) {
    ParallelTask *task = w->task;
    void *context = w->context;
    while (w->next_task < w->tasks) {
        int i = w->next_task++;
        pthread_mutex_unlock(&w->lock);
        task(context, i, worker);
        pthread_mutex_lock(&w->lock);
    }
}

void *worker_main(void *argument) {
    WorkerSeat *seat = argument;
    Workers *w = seat->workers;
    unsigned long seen = 0;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (w->round == seen && !w->quitting) pthread_cond_wait(&w->wake, &w->lock);
        if (w->quitting) break;
        seen = w->round;
        run_tasks(w, seat->index);
        if (--w->busy == 0) pthread_cond_signal(&w->done);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}
#endif

// A pool of `threads` threads, the caller included (so threads - 1 are
// created). Without thread support it is a pool of one.
Workers *workers_new(int threads) {
    require(threads >= 1, "workers_new: %d threads", threads);
    Workers *w = xmalloc(sizeof *w);
    memset(w, 0, sizeof *w);
    w->threads = 1;
#if HAVE_THREADS
    int helpers = threads - 1;
    w->helpers = xmalloc(sizeof *w->helpers * (size_t)helpers);
    w->seats = xmalloc(sizeof *w->seats * (size_t)helpers);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    pthread_cond_init(&w->done, NULL);
    for (int i = 0; i < helpers; i++) {
        w->seats[i] = (WorkerSeat){w, i + 1};
        if (pthread_create(&w->helpers[i], NULL, worker_main, &w->seats[i]) != 0) {
            // Fewer threads change the speed, never the results: carry on.
            fprintf(stderr, "warning: could only start %d of %d threads\n", w->threads, threads);
            break;
        }
        w->threads++;
    }
#endif
    return w;
}

void workers_free(Workers *w) {
    if (!w) return;
#if HAVE_THREADS
    pthread_mutex_lock(&w->lock);
    w->quitting = 1;
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->threads - 1; i++) pthread_join(w->helpers[i], NULL);
    pthread_cond_destroy(&w->done);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w->helpers);
    free(w->seats);
#endif
    free(w);
}

// Runs task(context, i, worker) once for every i in [0, tasks), spread over
// the pool's threads (w may be NULL: then on the caller alone). Returns when
// all are done.
void parallel_for(Workers *w, int tasks, ParallelTask *task, void *context) {
    if (tasks <= 0) return;
    if (!w || w->threads == 1 || tasks == 1) {
        for (int i = 0; i < tasks; i++) task(context, i, 0);
        return;
    }
#if HAVE_THREADS
    pthread_mutex_lock(&w->lock);
    require(!w->running, "parallel_for called from inside a task of the same pool");
    w->running = 1;
    w->task = task;
    w->context = context;
    w->tasks = tasks;
    w->next_task = 0;
    w->busy = w->threads - 1;
    w->round++;
    pthread_cond_broadcast(&w->wake);
    run_tasks(w, 0);
    while (w->busy > 0) pthread_cond_wait(&w->done, &w->lock);
    w->running = 0;
    pthread_mutex_unlock(&w->lock);
#endif
}
//@ end
