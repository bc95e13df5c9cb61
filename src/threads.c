//@ from 4
/* ----------------------------------------------------------------------------
   The thread pool: persistent workers, one entry point (book.md 4.18).

   What this is: parallel_for(w, tasks, task, context) runs task(context, i,
   worker) once for every i < tasks. Every thread, the caller included,
   takes the next task number from a shared counter until none are left;
   the caller then waits for the others. Between calls a helper spins on a
   counter, then sleeps on a condition variable.
   What it is not: a scheduler: no queues, futures or nested calls (a task
   that called parallel_for on its own pool would wait for itself). With
   -DNO_THREADS, or without POSIX, the tasks run one after the other on the
   caller: the same results on one core.

   Why the same bits at any thread count: the caller fixes the tasks by the
   problem alone (a tile of C, a part of an array, an image of the batch),
   never by the number of threads, and a task writes only its own part of
   the output. Then every float is computed by the same operations in the
   same order, whoever runs it. `worker` (0 for the caller) chooses only
   where a task works, such as its packing buffer, never what it computes. */

#if HAVE_POSIX && !defined(NO_THREADS) && !defined(__STDC_NO_ATOMICS__)
#define HAVE_THREADS 1
#include <pthread.h>
#include <stdatomic.h>
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
    pthread_mutex_t lock;   // taken only to sleep on, or to wake, the two conditions
    pthread_cond_t wake;    // a new round of tasks, or time to quit
    pthread_cond_t done;    // the last helper finished its part of a round
    atomic_ulong round;     // counts parallel_for calls; a helper starts when it changes
    atomic_int quitting;    // workers_free: helpers leave their loop
    atomic_int busy;        // helpers not yet finished with this round
    atomic_int running;     // a parallel_for is in progress
    atomic_int next_task;   // the next task number to take
    ParallelTask *task;     // this round's job: task(context, i, worker) for i < tasks,
    void *context;          // written before `round` changes, so every helper that
    int tasks;              // sees the new round sees them too
#endif
};

/* Waking a sleeping thread takes tens of microseconds, as long as a small
   GEMM, and a training step calls parallel_for dozens of times. So an idle
   thread first watches its counter for SPIN_CHECKS looks and sleeps only
   if nothing changed (as OpenMP runtimes do). The counters are C11 atomics:
   a thread that sees a task counted done also sees what the task wrote. */
enum { SPIN_CHECKS = 1 << 16 };

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
// Runs this round's tasks until none are left.
void run_tasks(Workers *w, int worker) {
    for (int i; (i = atomic_fetch_add(&w->next_task, 1)) < w->tasks;) w->task(w->context, i, worker);
}

void *worker_main(void *argument) {
    WorkerSeat *seat = argument;
    Workers *w = seat->workers;
    unsigned long seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load(&w->round) == seen && spins < SPIN_CHECKS) spins++;
        if (spins == SPIN_CHECKS) {
            pthread_mutex_lock(&w->lock);
            while (atomic_load(&w->round) == seen && !atomic_load(&w->quitting)) pthread_cond_wait(&w->wake, &w->lock);
            pthread_mutex_unlock(&w->lock);
        }
        if (atomic_load(&w->quitting)) break;
        seen = atomic_load(&w->round);
        run_tasks(w, seat->index);
        if (atomic_fetch_sub(&w->busy, 1) == 1) {  // the last helper out: the caller may be asleep
            pthread_mutex_lock(&w->lock);
            pthread_cond_signal(&w->done);
            pthread_mutex_unlock(&w->lock);
        }
    }
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
    atomic_store(&w->quitting, 1);
    atomic_fetch_add(&w->round, 1);
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

// w may be NULL: then the caller runs every task itself.
void parallel_for(Workers *w, int tasks, ParallelTask *task, void *context) {
    if (tasks <= 0) return;
    if (!w || w->threads == 1 || tasks == 1) {
        for (int i = 0; i < tasks; i++) task(context, i, 0);
        return;
    }
#if HAVE_THREADS
    require(!atomic_exchange(&w->running, 1), "parallel_for called from inside a task of the same pool");
    w->task = task;
    w->context = context;
    w->tasks = tasks;
    atomic_store(&w->next_task, 0);
    atomic_store(&w->busy, w->threads - 1);
    pthread_mutex_lock(&w->lock);  // a helper between its last look and its sleep holds the lock
    atomic_fetch_add(&w->round, 1);
    pthread_cond_broadcast(&w->wake);
    pthread_mutex_unlock(&w->lock);
    run_tasks(w, 0);
    for (int i = 0; i < SPIN_CHECKS && atomic_load(&w->busy) > 0; i++) continue;
    if (atomic_load(&w->busy) > 0) {
        pthread_mutex_lock(&w->lock);
        while (atomic_load(&w->busy) > 0) pthread_cond_wait(&w->done, &w->lock);
        pthread_mutex_unlock(&w->lock);
    }
    atomic_store(&w->running, 0);
#endif
}
//@ end
