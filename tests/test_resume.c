/* test_resume.c - chapter 6's whole program: a run stopped and resumed
   ends exactly as a run never stopped.

   Each run is ./chapter6's main() in a child process, on the first few
   hundred training images (the validation and test sets are whole), with
   its output in a log under build/resume-runs/. Stopped runs use
   --stop-after (the pause Ctrl-C makes, at a chosen step: in the middle of
   an epoch, at its end, twice) and a real SIGINT; the resumed run's result
   line and its final checkpoint (weights, batch norm's state, Adam's
   moments and step, the best weights, every batch's loss) must equal the
   uninterrupted run's, bit for bit; only the seconds may differ. Then early
   stopping end to end, --evaluate on the best checkpoint, and divergence.
   Needs Fashion-MNIST (skips without it). Built with -O2 and
   UndefinedBehaviorSanitizer: AddressSanitizer would make the runs ten
   times slower, and test_checkpoint.c has the parser under it. */
#include "check.h"

#include <signal.h>

#define main chapter6_main
// `make test-chapter N=6 FILE=...` builds this against a student's chapter.
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter6.c"
#endif
#include CHAPTER_FILE
#undef main

static const char *RUNS = "build/resume-runs";

static const char *SMALL_DATA = "build/resume-runs/data";

// Fashion-MNIST made small (tests/small_data.sh), so that each run
// validates on 200 images and tests on 1,000 rather than 6,000 and 10,000:
// the first 2,000 training images (a tenth held out for validation) and
// the first 1,000 test images.
static int make_small_data(void) {
    char command[256];
    snprintf(command, sizeof command, "sh tests/small_data.sh data %s 2000 1000", SMALL_DATA);
    return system(command) == 0;
}

// ./chapter6 with `args` (NULL-terminated) in a child, output to `log`.
// Returns the exit code, or 128 + the signal that ended it.
static int run_chapter(const char *log, const char *const *args) {
    const char *argv[40] = {"./chapter6", "--data", SMALL_DATA};
    int argc = 3;
    for (int a = 0; args[a] && argc < 39; a++) argv[argc++] = args[a];
    argv[argc] = NULL;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "w", stdout)) _exit(99);
        dup2(fileno(stdout), 2);
        exit(chapter6_main(argc, (char **)argv));
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// The `result` line of a log without its seconds, which no two runs share.
static void result_line(const char *log, char *out, size_t size) {
    FILE *f = fopen(log, "r");
    char line[512];
    out[0] = '\0';
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "result ", 7) == 0) {
            char *seconds = strstr(line, " seconds=");
            if (seconds) *seconds = '\0';
            snprintf(out, size, "%s", line);
        }
    if (f) fclose(f);
}

static int log_has(const char *log, const char *words) {
    FILE *f = fopen(log, "r");
    char line[1024];
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f)) found = strstr(line, words) != NULL;
    if (f) fclose(f);
    return found;
}

// A checkpoint read back, against a model built for it.
typedef struct {
    GraphClassifier net;
    RunSnapshot s;
    int ok;
} Loaded;

static Loaded load_run(const char *path, int train_images, int batch) {
    Loaded l = {0};
    CheckpointFile f;
    Error err = {0};
    if (open_checkpoint(path, &f, &err)) {
        printf("     %s\n", err.message);
        return l;
    }
    l.net = build_model(f.key.model, batch, 1, KERNEL_NAIVE, NULL);
    l.ok = read_run_snapshot(&f, l.net.graph, (train_images + batch - 1) / batch, &l.s, &err) == 0;
    if (!l.ok) printf("     %s\n", err.message);
    checkpoint_file_free(&f);
    return l;
}

static void loaded_free(Loaded *l) {
    if (l->ok) run_snapshot_free(&l->s);
    graph_free(l->net.graph);
}

// Everything but the seconds, bit for bit.
static int same_run(const Loaded *a, const Loaded *b) {
    if (!a->ok || !b->ok) return 0;
    const Graph *g = a->net.graph;
    size_t P = g->param_count, S = g->state_count;
    const RunSnapshot *x = &a->s, *y = &b->s;
    int same = memcmp(x->params, y->params, (4 * P + 2 * S) * sizeof(float)) == 0 && x->adam_step == y->adam_step &&
               x->run.epochs_done == y->run.epochs_done && x->run.stopped == y->run.stopped &&
               x->run.stopping.best_epoch == y->run.stopping.best_epoch &&
               x->run.stopping.best_loss == y->run.stopping.best_loss &&
               x->history->batch_count == y->history->batch_count &&
               memcmp(x->history->batch_losses, y->history->batch_losses,
                      (size_t)x->history->batch_count * sizeof(float)) == 0;
    for (int e = 0; e < x->history->epochs; e++)
        same &= x->history->validation_loss[e] == y->history->validation_loss[e] &&
                x->history->train_loss[e] == y->history->train_loss[e];
    return same;
}

static void path_of(char *out, size_t size, const char *run, const char *file) {
    snprintf(out, size, "%s/%s/%s", RUNS, run, file);
}

/* ---- Stopped and resumed equals never stopped ----------------------------- */

typedef struct {
    const char *model, *limit, *batch, *epochs;
    int train_images, batch_size;
} RunShape;

// Runs `shape` whole, then stopped after each of `stops` (0-terminated)
// and resumed each time; compares the two.
static void check_stopped_run(const RunShape *r, const char *name, const long *stops) {
    char full_dir[200], split_dir[200], log[256], full_result[512], split_result[512];
    snprintf(full_dir, sizeof full_dir, "%s/%s-full", RUNS, r->model);
    snprintf(split_dir, sizeof split_dir, "%s/%s-%s", RUNS, r->model, name);
    snprintf(log, sizeof log, "%s/%s-full.log", RUNS, r->model);
    if (access(log, F_OK) != 0) {  // the uninterrupted run, once per shape
        const char *args[] = {"--model", r->model, "--limit", r->limit, "--batch", r->batch, "--epochs", r->epochs,
                              "--checkpoints", full_dir, "--threads", "2", NULL};
        CHECK_EQ_INT(run_chapter(log, args), 0);
    }
    result_line(log, full_result, sizeof full_result);
    int paused = 1;
    char resume[512], stop[32];
    snprintf(resume, sizeof resume, "%s/%s-seed1-last.ckpt", split_dir, r->model);
    for (int k = 0; stops[k]; k++) {
        snprintf(stop, sizeof stop, "%ld", stops[k]);
        snprintf(log, sizeof log, "%s/%s-%s-%d.log", RUNS, r->model, name, k);
        // Resumed runs use one thread, the first two: the numbers must not care.
        const char *args[] = {"--model", r->model, "--limit", r->limit, "--batch", r->batch, "--epochs", r->epochs,
                              "--checkpoints", split_dir, "--stop-after", stop, "--threads", k ? "1" : "2",
                              k ? "--resume" : NULL, resume, NULL};
        paused &= run_chapter(log, args) == EXIT_INTERRUPTED && log_has(log, "to resume: ./chapter6 --data build/resume-runs/data --model");
    }
    snprintf(log, sizeof log, "%s/%s-%s-end.log", RUNS, r->model, name);
    const char *args[] = {"--model", r->model, "--limit", r->limit, "--batch", r->batch, "--epochs", r->epochs,
                          "--checkpoints", split_dir, "--threads", "1", "--resume", resume, NULL};
    CHECK_EQ_INT(run_chapter(log, args), 0);
    CHECK(paused);
    result_line(log, split_result, sizeof split_result);
    if (!CHECK(full_result[0] && strcmp(full_result, split_result) == 0))
        printf("     uninterrupted: %s\n     resumed:       %s\n", full_result, split_result);
    char full_ckpt[512];
    snprintf(full_ckpt, sizeof full_ckpt, "%s/%s-seed1-last.ckpt", full_dir, r->model);
    Loaded a = load_run(full_ckpt, r->train_images, r->batch_size), b = load_run(resume, r->train_images, r->batch_size);
    CHECK(same_run(&a, &b));
    loaded_free(&a);
    loaded_free(&b);
}

static void test_stop_and_resume(void) {
    // 640 images in batches of 64: ten steps an epoch.
    RunShape basic = {"basic", "640", "64", "3", 640, 64};
    section("basic CNN: stopped in the middle of epoch 2 (after step 15), resumed");
    check_stopped_run(&basic, "middle", (const long[]){15, 0});
    section("basic CNN: stopped at the end of epoch 1 (step 10), resumed");
    check_stopped_run(&basic, "boundary", (const long[]){10, 0});
    section("basic CNN: stopped twice (steps 4 and 23), resumed");
    check_stopped_run(&basic, "twice", (const long[]){4, 23, 0});
    // The deeper CNN: batch norm's running statistics and dropout's masks
    // must come back too. 128 images in batches of 32: four steps an epoch.
    RunShape deeper = {"deeper", "128", "32", "2", 128, 32};
    section("deeper CNN: stopped in the middle of epoch 2 (after step 6), resumed");
    check_stopped_run(&deeper, "middle", (const long[]){6, 0});
}

/* ---- A real Ctrl-C ----------------------------------------------------------- */

static void test_sigint(void) {
    section("SIGINT in the middle of a run: save, say how to resume, exit 130");
    char dir[200], log[256], ckpt[512];
    snprintf(dir, sizeof dir, "%s/basic-sigint", RUNS);
    snprintf(ckpt, sizeof ckpt, "%s/basic-seed1-last.ckpt", dir);
    const char *argv[] = {"./chapter6", "--data", SMALL_DATA, "--model", "basic", "--limit", "640", "--batch", "64",
                          "--epochs", "3", "--checkpoints", dir, NULL};
    int fds[2];
    if (pipe(fds) != 0) return;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        exit(chapter6_main(13, (char **)argv));
    }
    close(fds[1]);
    // Wait for the first progress line of training, then press Ctrl-C.
    FILE *out = fdopen(fds[0], "r");
    char line[1024], saw_resume[1024] = "";
    int signalled = 0;
    while (fgets(line, sizeof line, out)) {
        if (!signalled && strstr(line, "batch 2/10")) {
            kill(pid, SIGINT);
            signalled = 1;
        }
        if (strncmp(line, "to resume:", 10) == 0) snprintf(saw_resume, sizeof saw_resume, "%s", line);
    }
    fclose(out);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(signalled);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == EXIT_INTERRUPTED);
    CHECK(strstr(saw_resume, "--resume build/resume-runs/basic-sigint/basic-seed1-last.ckpt") != NULL);
    Loaded l = load_run(ckpt, 640, 64);
    CHECK(l.ok && l.s.run.epochs_done < 3);
    loaded_free(&l);
    // Resumed, it ends as the run that was never stopped.
    snprintf(log, sizeof log, "%s/basic-sigint-end.log", RUNS);
    const char *args[] = {"--model", "basic", "--limit", "640", "--batch", "64", "--epochs", "3",
                          "--checkpoints", dir, "--resume", ckpt, NULL};
    CHECK_EQ_INT(run_chapter(log, args), 0);
    char full[512], resumed[512], full_log[256];
    snprintf(full_log, sizeof full_log, "%s/basic-full.log", RUNS);
    result_line(full_log, full, sizeof full);
    result_line(log, resumed, sizeof resumed);
    CHECK(full[0] && strcmp(full, resumed) == 0);
}

/* ---- Early stopping end to end, --evaluate, divergence -------------------------- */

static void test_early_stopping_run(void) {
    section("early stopping: stops, and tests the best epoch's weights");
    char dir[200], log[256], best[256], last[256], evaluate_log[256], trained[512], evaluated[512];
    snprintf(dir, sizeof dir, "%s/ann-stopping", RUNS);
    snprintf(log, sizeof log, "%s/ann-stopping.log", RUNS);
    // The ANN on 300 images learns them by heart in a few epochs, and the
    // validation loss turns up: early stopping must end the run.
    const char *args[] = {"--model", "ann", "--limit", "300", "--batch", "16", "--epochs", "40", "--patience", "2",
                          "--checkpoints", dir, NULL};
    CHECK_EQ_INT(run_chapter(log, args), 0);
    CHECK(log_has(log, "early stopping after epoch"));
    path_of(last, sizeof last, "ann-stopping", "ann-seed1-last.ckpt");
    path_of(best, sizeof best, "ann-stopping", "ann-seed1-best.ckpt");
    Loaded l = load_run(last, 300, 16);
    if (CHECK(l.ok)) {
        const History *h = l.s.history;
        int argmin = 0;
        for (int e = 1; e < h->epochs; e++) argmin = h->validation_loss[e] < h->validation_loss[argmin] ? e : argmin;
        CHECK_EQ_INT(l.s.run.stopping.best_epoch, argmin + 1);
        CHECK_EQ_INT(l.s.run.epochs_done, argmin + 1 + 2);  // patience 2
        CHECK(l.s.run.stopped && l.s.run.epochs_done < 40);
        char words[64];
        snprintf(words, sizeof words, "epochs=%d best_epoch=%d", l.s.run.epochs_done, argmin + 1);
        CHECK(log_has(log, words));
        // The best checkpoint's weights are the ones tested.
        Loaded b = load_run(best, 300, 16);
        CHECK(b.ok && memcmp(b.s.params, l.s.best_params, l.net.graph->param_count * sizeof(float)) == 0);
        loaded_free(&b);
    }
    loaded_free(&l);
    // --evaluate on the last checkpoint gives the run's own result line; on
    // the best one, saved at the best epoch, the same test figures.
    snprintf(evaluate_log, sizeof evaluate_log, "%s/ann-evaluate.log", RUNS);
    CHECK_EQ_INT(run_chapter(evaluate_log, (const char *[]){"--evaluate", last, NULL}), 0);
    result_line(log, trained, sizeof trained);
    result_line(evaluate_log, evaluated, sizeof evaluated);
    if (!CHECK(trained[0] && strcmp(trained, evaluated) == 0)) printf("     %s\n     %s\n", trained, evaluated);
    CHECK(log_has(evaluate_log, "macro mean"));
    CHECK_EQ_INT(run_chapter(evaluate_log, (const char *[]){"--evaluate", best, NULL}), 0);
    result_line(evaluate_log, evaluated, sizeof evaluated);
    CHECK(strstr(trained, " seed=") && strstr(evaluated, strstr(trained, " best_epoch=")));
    // Resuming a run that has ended only tests it again.
    snprintf(log, sizeof log, "%s/ann-stopping-again.log", RUNS);
    const char *again[] = {"--model", "ann", "--limit", "300", "--batch", "16", "--epochs", "40", "--patience", "2",
                           "--checkpoints", dir, "--resume", last, NULL};
    CHECK_EQ_INT(run_chapter(log, again), 0);
    result_line(log, evaluated, sizeof evaluated);
    CHECK(strcmp(trained, evaluated) == 0);
}

static void test_divergence(void) {
    section("divergence: exit 15, and no half-written checkpoint");
    char dir[256], log[256], command[512];
    snprintf(dir, sizeof dir, "%s/ann-diverged", RUNS);
    snprintf(log, sizeof log, "%s/ann-diverged.log", RUNS);
    const char *args[] = {"--model", "ann", "--optimizer", "sgd", "--lr", "10", "--batch", "1", "--limit", "500",
                          "--epochs", "3", "--checkpoints", dir, NULL};
    CHECK_EQ_INT(run_chapter(log, args), EXIT_DIVERGED);
    snprintf(command, sizeof command, "ls %s | grep -q tmp", dir);
    CHECK(system(command) != 0);
}

/* ---- Other data, a second run on the same files, a planted lock ---------------- */

// A copy of the small data with one training pixel changed: the same sizes,
// other images (as MNIST is to Fashion-MNIST).
static int make_other_data(const char *dir) {
    char command[1024];
    snprintf(command, sizeof command, "mkdir -p %s && cp %s/*-ubyte %s/", dir, SMALL_DATA, dir);
    if (system(command) != 0) return 0;
    snprintf(command, sizeof command, "%s/train-images-idx3-ubyte", dir);
    FILE *f = fopen(command, "r+b");
    if (!f) return 0;
    int ok = fseek(f, 16 + 400, SEEK_SET) == 0;  // the first image, row 14
    int pixel = ok ? fgetc(f) : EOF;
    ok = ok && pixel != EOF && fseek(f, 16 + 400, SEEK_SET) == 0 && fputc(pixel ^ 0xff, f) != EOF;
    return (fclose(f) == 0) & ok;
}

static void test_other_data_and_locks(void) {
    section("other data refused (resume, --evaluate), one run at a time, the file that holds the weights");
    char other[256], dir[256], elsewhere[256], log[256], last[256], best[256], lock[256], words[600];
    snprintf(other, sizeof other, "%s/other-data", RUNS);
    snprintf(dir, sizeof dir, "%s/ann-other", RUNS);
    snprintf(elsewhere, sizeof elsewhere, "%s/ann-elsewhere", RUNS);
    snprintf(log, sizeof log, "%s/ann-other.log", RUNS);
    if (!CHECK(make_other_data(other))) return;
    path_of(last, sizeof last, "ann-other", "ann-seed1-last.ckpt");
    path_of(best, sizeof best, "ann-other", "ann-seed1-best.ckpt");
    path_of(lock, sizeof lock, "ann-other", "ann-seed1.lock");
    const char *args[] = {"--model", "ann", "--limit", "300", "--batch", "16", "--epochs", "2", "--data", other,
                          "--checkpoints", dir, NULL};
    CHECK_EQ_INT(run_chapter(log, args), 0);
    CHECK(access(lock, F_OK) != 0);  // the lock file goes with the run

    // The same command on the real data, resuming that run: refused, as data that do not fit, not as damage.
    const char *resume[] = {"--model", "ann", "--limit", "300", "--batch", "16", "--epochs", "2",
                            "--checkpoints", dir, "--resume", last, NULL};
    CHECK_EQ_INT(run_chapter(log, resume), EXIT_CHECKPOINT_DATA);
    CHECK(log_has(log, "learned from other data") && log_has(log, "--data DIR") && !log_has(log, "damaged"));
    CHECK_EQ_INT(run_chapter(log, (const char *[]){"--evaluate", best, NULL}), EXIT_CHECKPOINT_DATA);
    CHECK(log_has(log, "learned from other data") && !log_has(log, "damaged"));
    CHECK_EQ_INT(run_chapter(log, (const char *[]){"--evaluate", best, "--data", other, NULL}), 0);

    // Resumed into another directory, a finished run tests the weights of the file it was resumed from.
    const char *moved[] = {"--model", "ann", "--limit", "300", "--batch", "16", "--epochs", "2", "--data", other,
                           "--checkpoints", elsewhere, "--resume", last, NULL};
    CHECK_EQ_INT(run_chapter(log, moved), 0);
    snprintf(words, sizeof words, "as saved in %s\n", last);
    CHECK(log_has(log, words));

    // Another process holds the run's lock: refused at once, with its own code, naming that process.
    int fd = open(lock, O_RDWR | O_CREAT, 0644);
    struct flock hold = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (CHECK(fd >= 0 && fcntl(fd, F_SETLK, &hold) == 0)) {
        CHECK_EQ_INT(run_chapter(log, args), EXIT_CHECKPOINT_BUSY);
        snprintf(words, sizeof words, "another run (process %ld)", (long)getpid());
        CHECK(log_has(log, words) && log_has(log, "another --checkpoints DIR"));
        close(fd);  // the lock goes with it; the file left behind is no obstacle
        CHECK_EQ_INT(run_chapter(log, args), 0);
        CHECK(access(lock, F_OK) != 0);
    }
    // A link planted at the lock's name is not followed.
    char target[300];
    snprintf(target, sizeof target, "%s/planted-target", dir);
    remove(target);
    CHECK(symlink("planted-target", lock) == 0);  // relative to the link's directory: dir/planted-target
    CHECK_EQ_INT(run_chapter(log, args), EXIT_WRITE);
    CHECK(log_has(log, "lock file") && access(target, F_OK) != 0);
    remove(lock);

    // Nor is one planted at the run's own checkpoint: resuming through it is refused.
    char away[300];
    snprintf(away, sizeof away, "%s/away.ckpt", dir);
    const char *through[] = {"--model", "ann", "--limit", "300", "--batch", "16", "--epochs", "2", "--data", other,
                             "--checkpoints", dir, "--resume", last, NULL};
    if (CHECK(rename(last, away) == 0 && symlink("away.ckpt", last) == 0)) {
        CHECK_EQ_INT(run_chapter(log, through), EXIT_CHECKPOINT_UNREADABLE);
        CHECK(log_has(log, "a symbolic link where this run keeps its own checkpoint") && !log_has(log, "resuming"));
        remove(last);
        CHECK_EQ_INT(rename(away, last), 0);
    }

    // Empty paths are usage errors.
    CHECK_EQ_INT(run_chapter(log, (const char *[]){"--checkpoints", "", NULL}), EXIT_USAGE);
    CHECK(log_has(log, "--checkpoints needs a value"));
}

int main(void) {
    if (access("data/t10k-labels-idx1-ubyte", R_OK) != 0) {
        skip("no Fashion-MNIST in data/ (run `make data`)");
        return check_summary();
    }
    char command[256];
    snprintf(command, sizeof command, "rm -rf %s && mkdir -p %s", RUNS, SMALL_DATA);
    if (system(command) != 0 || !CHECK(make_small_data())) return check_summary();
    test_stop_and_resume();
    test_sigint();
    test_early_stopping_run();
    test_divergence();
    test_other_data_and_locks();
    return check_summary();
}
