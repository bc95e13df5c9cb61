//@ from 6
/* ----------------------------------------------------------------------------
   The protocol's run: early stopping, checkpoints, Ctrl-C and exact resume
   (book.md 6.2-6.9).

   What this is: the training loop of chapter 2 wrapped in what a long run
   needs. After every epoch: validation, the early-stopping decision, the
   best weights kept (in memory and in checkpoints/MODEL-seedN-best.ckpt),
   and the whole run saved to checkpoints/MODEL-seedN-last.ckpt. On Ctrl-C
   or SIGTERM: finish the batch, save, print the command that resumes, exit
   130. With --resume: the run goes on from the checkpoint so exactly that
   its weights and its result are bit for bit those of a run never stopped.
   What it is not: a scheduler. One run, one model, one seed; chapter 7
   runs many. */

/* The one variable of the book outside every function. A signal handler
   runs between any two instructions of the program, so it may do almost
   nothing: C allows it to set a `volatile sig_atomic_t` and little more
   (no printf, no malloc, no file). The training loop looks at the flag
   after each batch. The handler also puts the default action back, so a
   second Ctrl-C stops the program at once, the way Ctrl-C usually does. */
static volatile sig_atomic_t interrupted_by;  // the signal's number, 0 while none came

void on_interrupt(int signal_number) {
    interrupted_by = signal_number;
    signal(signal_number, SIG_DFL);
}

void catch_interrupts(void) {
    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
}

// After training, Ctrl-C stops the program at once again (the test is short).
void release_interrupts(void) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}

// A live run: the model and optimiser it trains, where it stands, and the
// weights (then state) of its best epoch so far.
typedef struct {
    Model *model;
    Graph *graph;
    Optimizer *optimizer;
    const Options *options;
    RunKey key;
    RunState run;
    History *history;
    float *best;  // (param_count + state_count)
    char best_path[1100], last_path[1100], lock_path[1100];
    const char *best_saved_in;  // the file that holds the best weights: best_path, or the one resumed from
    int lock;                   // the lock file's descriptor while the run holds it, else -1
//@ from 9
    int until;                  // the last epoch to train now (a search's rung); 0: the key's epochs
//@ end
} Run;

RunSnapshot run_snapshot(const Run *r) {
    const Graph *g = r->graph;
    return (RunSnapshot){.key = r->key, .run = r->run, .history = r->history, .params = g->params,
                         .state = g->state, .adam_step = r->optimizer->step, .adam_m = r->optimizer->m,
                         .adam_v = r->optimizer->v, .best_params = r->best, .best_state = r->best + g->param_count};
}

int save_run(const Run *r, const char *path, Error *err) {
    RunSnapshot s = run_snapshot(r);
    return save_checkpoint(path, r->graph, &s, err);
}

// A directory and those above it, made if they are not there (where the
// system can).
int make_directory(const char *path, const char *option, Error *err) {
#if HAVE_POSIX
    char partial[1024];
    size_t length = strlen(path);
    if (length >= sizeof partial)
        return fail(err, EXIT_USAGE, "%s: a path of %zu characters is too long here (at most %zu)", option, length,
                    sizeof partial - 1);
    for (size_t end = 1; end <= length; end++) {
        if (end < length && path[end] != '/') continue;
        memcpy(partial, path, end);
        partial[end] = '\0';
        if (mkdir(partial, 0777) != 0 && errno != EEXIST)
            return fail(err, EXIT_WRITE, "%s: cannot make the directory (%s); choose another with %s DIR", partial,
                        strerror(errno), option);
    }
    struct stat info;  // there already, but perhaps as a file: say so now, not after hours of training
    if (stat(path, &info) != 0 || !S_ISDIR(info.st_mode))
        return fail(err, EXIT_WRITE, "%s: not a directory; choose another with %s DIR", path, option);
#else
    (void)path, (void)option, (void)err;
#endif
    return 0;
}

// Where a run's files go: DIR/MODEL-seedN-best.ckpt, -last.ckpt, and .lock
// while it runs (`ending`: "-best.ckpt", "-last.ckpt", ".lock"); chapter 7:
// MODEL-augment-seedN... for a run with --augment, MODEL-quick-seedN... for
// --quick.
void checkpoint_path(const Options *o, const char *ending, char *path, size_t size) {
//@ from 6 to 6
    snprintf(path, size, "%s/%s-seed%d%s", o->checkpoints, o->model, o->seed, ending);
//@ end
//@ from 7
    // --quick's runs are runs of their own (fewer images): a name of their own too.
//@ from 7 to 8
    snprintf(path, size, "%s/%s%s%s-seed%d%s", o->checkpoints, o->model, o->augment ? "-augment" : "",
             o->quick ? "-quick" : "", o->seed, ending);
//@ end
//@ from 9
    // Chapter 9's options too, where they are not the defaults: tuned runs
    // sit beside the notebooks' and reuse neither's checkpoints.
    char tuned[128] = "", dropout[24] = "", subset[64] = "", start[32] = "";
    if (o->dropout >= 0) snprintf(dropout, sizeof dropout, "-dropout%g", o->dropout);
    if (o->learning_rate != 0.001 || o->batch != 64 || o->weight_decay != 0 || o->dropout >= 0)
        snprintf(tuned, sizeof tuned, "-lr%g-batch%d-wd%g%s", o->learning_rate, o->batch, o->weight_decay, dropout);
    // And a transfer run's: its classes, images per class, and the weights it started from.
    if (o->classes || o->per_class)
        snprintf(subset, sizeof subset, "-classes%03x-per%d", o->classes ? o->classes : ALL_CLASSES, o->per_class);
    if (o->init_from) snprintf(start, sizeof start, "-from%08x%s", o->init_weights, o->freeze ? "-frozen" : "");
    snprintf(path, size, "%s/%s%s%s%s%s%s%s%s-seed%d%s", o->checkpoints, o->model, o->augment ? "-augment" : "",
             o->erase ? "-erase" : "", strcmp(o->precision, "bf16") == 0 ? "-bf16" : "", o->quick ? "-quick" : "",
             tuned, subset, start, o->seed, ending);
//@ end
//@ end
}

// The checkpoints directory, made if it is not there.
int make_checkpoint_paths(Run *r, Error *err) {
    const Options *o = r->options;
    if (make_directory(o->checkpoints, "--checkpoints", err)) return err->code;
    checkpoint_path(o, "-best.ckpt", r->best_path, sizeof r->best_path);
    checkpoint_path(o, "-last.ckpt", r->last_path, sizeof r->last_path);
    checkpoint_path(o, ".lock", r->lock_path, sizeof r->lock_path);
    return 0;
}

/* One run at a time on a pair of checkpoints: two runs writing the same
   MODEL-seedN files would each end by reporting weights that the other may
   have written over. A run holds a POSIX record lock (fcntl) on
   DIR/MODEL-seedN.lock while it trains. The system drops the lock when the
   process ends, however it ends, so a crash never leaves a run locked out.
   The file is opened without following a link and must be a regular file
   (a FIFO planted there would otherwise block), and it is removed at the
   end. A run that ends removes the name while holding the lock, so a run
   that opened the old file just before must check, once locked, that the
   name is still its file; if not, it tries again. */
int lock_run(Run *r, Error *err) {
#if HAVE_POSIX
    for (int attempt = 0; attempt < 10; attempt++) {
        int fd = open(r->lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
        if (fd < 0)
            return fail(err, EXIT_WRITE, "%s: cannot open the run's lock file (%s). Remove what is at that name, "
                        "or choose another --checkpoints DIR.", r->lock_path, strerror(errno));
        struct stat held, named;
        if (fstat(fd, &held) != 0 || !S_ISREG(held.st_mode)) {
            close(fd);
            return fail(err, EXIT_WRITE, "%s: the run's lock file is not a regular file. Remove it, or choose "
                        "another --checkpoints DIR.", r->lock_path);
        }
        struct flock lock = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        if (fcntl(fd, F_SETLK, &lock) != 0) {
            int why = errno;
            struct flock holder = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
            long pid = fcntl(fd, F_GETLK, &holder) == 0 && holder.l_type != F_UNLCK ? (long)holder.l_pid : 0;
            close(fd);
            if (why != EACCES && why != EAGAIN)
                return fail(err, EXIT_WRITE, "%s: cannot lock the run's lock file (%s); choose another "
                            "--checkpoints DIR.", r->lock_path, strerror(why));
            return fail(err, EXIT_CHECKPOINT_BUSY, "%s: another run (process %ld) is training into %s and %s; two "
                        "runs writing one pair of checkpoints would each report weights the other may have "
                        "written. Wait until it ends, or give this run another --checkpoints DIR.", r->lock_path,
                        pid, r->best_path, r->last_path);
        }
        if (lstat(r->lock_path, &named) == 0 && named.st_dev == held.st_dev && named.st_ino == held.st_ino) {
            r->lock = fd;
            return 0;
        }
        close(fd);  // the run before removed the name after we opened it: that lock guards nothing
    }
    return fail(err, EXIT_CHECKPOINT_BUSY, "%s: other runs keep taking the lock; give this run another "
                "--checkpoints DIR.", r->lock_path);
#else
    (void)r, (void)err;
    return 0;
#endif
}

void unlock_run(Run *r) {
#if HAVE_POSIX
    if (r->lock < 0) return;
    unlink(r->lock_path);  // while still locked: see lock_run
    close(r->lock);
    r->lock = -1;
#else
    (void)r;
#endif
}

// A word as the shell reads it back: quoted unless it is plainly safe.
void print_shell_word(const char *word) {
    if (*word && strspn(word, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./=:,+-") == strlen(word)) {
        printf("%s", word);
        return;
    }
    putchar('\'');
    for (const char *c = word; *c; c++) printf(*c == '\'' ? "'\\''" : "%c", *c);
    putchar('\'');
}

// The command that continues this run: the same words, without an earlier
// --resume or --stop-after, and (chapter 6) with --resume FILE. Chapter 7
// finds its checkpoints by itself: the same command goes on.
void print_resume_command(const Options *o, const char *path) {
    printf("to resume:");
    for (int a = 0; a < o->argc; a++) {
        if (a > 0 && a + 1 < o->argc && (!strcmp(o->argv[a], "--resume") || !strcmp(o->argv[a], "--stop-after"))) {
            a++;
            continue;
        }
        putchar(' ');
        print_shell_word(o->argv[a]);
    }
//@ from 6 to 6
    printf(" --resume ");
    print_shell_word(path);
//@ end
//@ from 7
    (void)path;
//@ end
    printf("\n");
}

int save_and_pause(const Run *r, int epoch, Error *err) {
    Error saving = {0};
    if (save_run(r, r->last_path, &saving)) {
        *err = saving;
        return err->code;
    }
    const char *why = interrupted_by == SIGINT ? "Ctrl-C" : interrupted_by ? "SIGTERM" : "--stop-after";
    printf("\n%s: stopped in epoch %d after batch %d; saved %s\n", why, epoch, r->run.epoch.batches_done, r->last_path);
    print_resume_command(r->options, r->last_path);
    return fail(err, EXIT_INTERRUPTED, "interrupted (%s); the run can be resumed from %s", why, r->last_path);
}

// After a validated epoch: keep the best weights, decide, save.
int end_epoch(Run *r, int epoch, float validation_loss, Error *err) {
    Graph *g = r->graph;
    StoppingDecision decision = early_stopping_update(&r->run.stopping, epoch, validation_loss);
    r->run.epochs_done = epoch;
    r->run.epoch = (EpochState){0};
    r->run.stopped = decision == STOPPING_STOP;
    if (decision == STOPPING_IMPROVED) {
        memcpy(r->best, g->params, g->param_count * sizeof(float));
        memcpy(r->best + g->param_count, g->state, g->state_count * sizeof(float));
        if (save_run(r, r->best_path, err)) return err->code;
        r->best_saved_in = r->best_path;
    }
    if (save_run(r, r->last_path, err)) return err->code;
    if (decision == STOPPING_STOP)
        printf("early stopping after epoch %d: the validation loss has not improved for %d epochs; the best "
               "was %.4f, at epoch %d\n", epoch, r->run.stopping.patience, r->run.stopping.best_loss,
               r->run.stopping.best_epoch);
    return 0;
}

// Validation after an epoch, its line, its row of the history.
int validate_epoch(Run *r, const Dataset *validation, int epoch, int terminal, double seconds, long images,
                   Error *err) {
    const EpochState *s = &r->run.epoch;
    Evaluation v = evaluate(r->model, validation);
    if (!isfinite(v.loss))
        return fail(err, EXIT_DIVERGED, "epoch %d: the validation loss is %g, not a finite number: the weights "
                    "have grown too large. Try a smaller learning rate (--lr %g now).", epoch, v.loss,
                    r->options->learning_rate);
    History *h = r->history;
    int e = h->epochs++;
    h->train_loss[e] = (float)(s->loss_sum / s->seen), h->train_accuracy[e] = (float)s->correct / (float)s->seen;
    h->validation_loss[e] = v.loss, h->validation_accuracy[e] = v.accuracy, h->seconds[e] = (float)seconds;
    printf("%sepoch %d/%d  train loss %.4f accuracy %.2f%%  validation loss %.4f accuracy %.2f%%  "
           "%.2f s  %.0f images/s%s\n", terminal ? "\r" : "", epoch, (int)r->key.epochs, h->train_loss[e],
           100 * h->train_accuracy[e], v.loss, 100 * v.accuracy, seconds, images / fmax(seconds, 1e-9),
           v.loss < r->run.stopping.best_loss ? "  (best so far)" : "");
    return 0;
}

// Epochs until early stopping, --epochs, Ctrl-C or divergence.
int run_epochs(Run *r, const Dataset *train_set, const Dataset *validation, Error *err) {
    const Options *o = r->options;
    Trainer t = trainer_new(r->model, r->optimizer, train_set, o->batch, (uint64_t)o->seed);
    t.interrupted = &interrupted_by;
    t.stop_after = o->stop_after;
//@ from 7
    t.augment = o->augment;
//@ end
//@ from 9
    t.erase = o->erase;
//@ end
    int batches = (train_set->count + o->batch - 1) / o->batch, status = 0;
    int last_epoch = (int)r->key.epochs;
//@ from 9
    if (r->until && r->until < last_epoch) last_epoch = r->until;
//@ end
    long remaining = ((long)last_epoch - r->run.epochs_done) * train_set->count - r->run.epoch.seen;
    Progress progress = {.terminal = stdout_is_terminal(), .start = now_seconds(), .total = remaining};
    catch_interrupts();
    while (!status && !r->run.stopped && r->run.epochs_done < last_epoch) {
        int epoch = r->run.epochs_done + 1;
        long seen_before = r->run.epoch.seen;
        double start = now_seconds();
        status = train_epoch(&t, epoch, (int)r->key.epochs, &r->run.epoch, &progress, r->history, err);
        double seconds = now_seconds() - start;
        r->run.seconds += seconds;
        if (status == EXIT_INTERRUPTED) status = save_and_pause(r, epoch, err);
        if (status) break;  // diverged: the last checkpoint, of a good epoch, stays as it was
        status = validate_epoch(r, validation, epoch, progress.terminal, seconds, r->run.epoch.seen - seen_before, err);
        if (!status) status = end_epoch(r, epoch, r->history->validation_loss[epoch - 1], err);
        if (!status && !r->run.stopped && epoch < (int)r->key.epochs && should_pause(&t, (long)epoch * batches))
            status = save_and_pause(r, epoch + 1, err);
    }
    release_interrupts();
    trainer_free(&t);
    return status;
}

/* ---- Resuming --------------------------------------------------------------- */

//@ from 6 to 6
static const char RESUME_ADVICE[] = "";
//@ end
//@ from 7
static const char RESUME_ADVICE[] = " For a comparison with other options, give it another --checkpoints DIR.";
//@ end

// A checkpoint's run must have learned from these data (DataKey): a resumed
// run, a result reused by chapter 7 or an --evaluate would otherwise mix two
// experiments. Not damage: the file is sound, it belongs to other data.
int check_data_key(const CheckpointFile *f, const Options *o, const DataKey *here, Error *err) {
    const DataKey *k = &f->key.data;
    if (k->train_count == here->train_count && k->validation_count == here->validation_count && k->crc == here->crc)
        return 0;
    return fail(err, EXIT_CHECKPOINT_DATA, "%s: the run that saved this checkpoint learned from other data: %u "
                "training and %u validation images with fingerprint %08x, where --data %s gives %u and %u with "
                "%08x. The file is sound; it belongs to other data. Pass the --data DIR that run had.%s", f->path,
                k->train_count, k->validation_count, k->crc, o->data_dir, here->train_count,
                here->validation_count, here->crc, RESUME_ADVICE);
}

// A resumed run must be the same run: the same model, every option that
// shapes its numbers (not --threads or --kernel: the blocked kernels give
// the same bits on any of them), and the same data.
int check_resume_key(const CheckpointFile *f, const Options *o, const DataKey *data, Error *err) {
    RunKey want = run_key(o, *data);
    const RunKey *k = &f->key;
    if (strcmp(k->model, want.model) != 0)
        return fail(err, EXIT_CHECKPOINT_MODEL, "%s: a checkpoint of the %s model, but this run trains --model %s. "
                    "Add --model %s to resume it.", f->path, k->model, want.model, k->model);
    const char *differs = strcmp(k->optimizer, want.optimizer) ? "--optimizer" : k->learning_rate != want.learning_rate ? "--lr"
                        : k->seed != want.seed ? "--seed" : k->batch != want.batch ? "--batch" : k->limit != want.limit ? "--limit"
                        : k->epochs != want.epochs ? "--epochs" : k->patience != want.patience ? "--patience" : NULL;
//@ from 7
//@ from 7 to 8
    if (!differs && k->augment != want.augment) differs = "--augment";
//@ end
//@ from 9
    if (!differs && k->augment != want.augment) differs = (k->augment ^ want.augment) & 1 ? "--augment" : "--erase";
//@ end
//@ end
//@ from 9
    if (!differs && k->weight_decay != want.weight_decay) differs = "--weight-decay";
    if (!differs && k->dropout != want.dropout) differs = "--dropout";
    if (!differs && k->classes != want.classes) differs = "--classes";
    if (!differs && k->per_class != want.per_class) differs = "--per-class";
    if (!differs && k->freeze != want.freeze) differs = "--freeze";
    if (!differs && k->init_weights != want.init_weights) differs = "--init-from";
//@ end
//@ from 8
    static const char *const PRECISIONS[2] = {"fp32", "bf16"};
    if (!differs && k->precision != want.precision)
        return fail(err, EXIT_CHECKPOINT_PRECISION, "%s: a checkpoint of a run in %s, but this run multiplies in %s "
                    "(--precision %s). A run resumed in another precision would not be the same run: its numbers "
                    "would differ from the first step on. Add --precision %s to resume it, or give this run another "
                    "--checkpoints DIR.", f->path, PRECISIONS[k->precision], PRECISIONS[want.precision],
                    PRECISIONS[want.precision], PRECISIONS[k->precision]);
//@ end
    if (!differs) return check_data_key(f, o, data, err);
    return fail(err, EXIT_CHECKPOINT_OPTIONS, "%s: this command's %s differs from the run that saved the checkpoint, "
                "and a resumed run must be the same run or its numbers would differ. That run had --model %s "
                "--optimizer %s --lr %g --seed %u --batch %u --epochs %u --patience %u%s%.0u.%s", f->path, differs,
                k->model, k->optimizer, k->learning_rate, k->seed, k->batch, k->epochs, k->patience,
                k->limit ? " --limit " : "", k->limit, RESUME_ADVICE);
}

void history_copy(History *to, const History *from) {
    float *batch_losses = to->batch_losses;
    int capacity = to->batch_capacity;
    require(from->batch_count <= capacity, "a history of %d batches into room for %d", from->batch_count, capacity);
    *to = *from;
    to->batch_losses = batch_losses, to->batch_capacity = capacity;
    memcpy(to->batch_losses, from->batch_losses, (size_t)from->batch_count * sizeof(float));
}

/* A run's own checkpoints are files this program wrote, by renaming, under
   --checkpoints DIR. A symbolic link at one of their names was planted:
   following it would resume from, and test, whatever it points to. */
int refuse_link(const char *path, Error *err) {
#if HAVE_POSIX
    struct stat info;
    if (lstat(path, &info) == 0 && S_ISLNK(info.st_mode))
        return fail(err, EXIT_CHECKPOINT_UNREADABLE, "%s: a symbolic link where this run keeps its own checkpoint; "
                    "it is never followed. Remove the link (the run then starts afresh), or give --checkpoints "
                    "another DIR.", path);
#endif
    (void)path, (void)err;
    return 0;
}

// Reads the whole checkpoint, checks it, and only then puts it in place.
int resume_run(Run *r, int batches, Error *err) {
    CheckpointFile f;
    RunSnapshot s;
    if (strcmp(r->options->resume, r->last_path) == 0 && refuse_link(r->last_path, err)) return err->code;
    if (open_checkpoint(r->options->resume, &f, err)) return err->code;
    int status = check_resume_key(&f, r->options, &r->key.data, err);
    if (!status) status = read_run_snapshot(&f, r->graph, batches, &s, err);
    checkpoint_file_free(&f);
    if (status) return status;
    Graph *g = r->graph;
    memcpy(g->params, s.params, g->param_count * sizeof(float));
    memcpy(g->state, s.state, g->state_count * sizeof(float));
    memcpy(r->best, s.best_params, g->param_count * sizeof(float));
    memcpy(r->best + g->param_count, s.best_state, g->state_count * sizeof(float));
    r->optimizer->step = s.adam_step;
    if (r->optimizer->m) {
        memcpy(r->optimizer->m, s.adam_m, g->param_count * sizeof(float));
        memcpy(r->optimizer->v, s.adam_v, g->param_count * sizeof(float));
    }
    r->run = s.run;
    history_copy(r->history, s.history);
    // The best weights are in the file resumed from (its BEST section), and
    // in this run's -best.ckpt only if that is where the run was saving.
    r->best_saved_in = strcmp(r->options->resume, r->last_path) == 0 ? r->best_path : r->options->resume;
    printf("resuming from %s: %d epoch%s done, %d batch%s of the next; best validation loss %.4f at epoch %d\n",
           r->options->resume, r->run.epochs_done, r->run.epochs_done == 1 ? "" : "s", r->run.epoch.batches_done,
           r->run.epoch.batches_done == 1 ? "" : "es", r->run.stopping.best_loss, r->run.stopping.best_epoch);
    run_snapshot_free(&s);
    return 0;
}

/* ---- The run ---------------------------------------------------------------- */

/* A run on m, ready to train: its key, a copy of the weights as the best so
   far, its checkpoint files and their lock, and, with --resume, the state
   it goes on from. run_close() releases what run_open() took, whatever
   run_open() returned. */
int run_open(Run *r, Model *m, Optimizer *opt, const Dataset *train_set, const Dataset *validation,
             const Options *o, History *h, Error *err) {
    Graph *g = m->graph;
    *r = (Run){.model = m, .graph = g, .optimizer = opt, .options = o, .key = run_key(o, data_key(train_set, validation)),
               .run = {.stopping = early_stopping_new(o->patience)}, .history = h, .lock = -1};
    r->best = xmalloc((g->param_count + g->state_count) * sizeof(float));
    memcpy(r->best, g->params, g->param_count * sizeof(float));
    memcpy(r->best + g->param_count, g->state, g->state_count * sizeof(float));
    int batches = (train_set->count + o->batch - 1) / o->batch;
    int status = make_checkpoint_paths(r, err);
    if (!status) status = lock_run(r, err);
    if (!status && o->resume) status = resume_run(r, batches, err);
    if (!status) printf("checkpoints: %s (best) and %s (the latest, to resume from); %s while it runs\n",
                        r->best_path, r->last_path, r->lock_path);
    return status;
}

void run_close(Run *r) {
    unlock_run(r);
    free(r->best);
    r->best = NULL;
}

/* Trains m under the protocol (or goes on with the run --resume names),
   then puts the best epoch's weights and state back in the model, for the
   test. Fills h and, in r, the epochs, the best epoch and the seconds. */
int run_protocol(Model *m, Optimizer *opt, const Dataset *train_set, const Dataset *validation,
                 const Options *o, History *h, Result *result, Error *err) {
    Graph *g = m->graph;
    Run r;
    int status = run_open(&r, m, opt, train_set, validation, o, h, err);
    if (!status) status = run_epochs(&r, train_set, validation, err);
    if (!status) {
        if (!r.run.stopped) printf("reached --epochs %d\n", (int)r.key.epochs);
        printf("testing the weights of epoch %d (validation loss %.4f), as saved in %s\n",
               r.run.stopping.best_epoch, r.run.stopping.best_loss, r.best_saved_in ? r.best_saved_in : r.best_path);
        memcpy(g->params, r.best, g->param_count * sizeof(float));
        memcpy(g->state, r.best + g->param_count, g->state_count * sizeof(float));
    }
    result->epochs = r.run.epochs_done;
    result->best_epoch = r.run.stopping.best_epoch;
    result->weights = weights_fingerprint(g);
    result->seconds = r.run.seconds;
    run_close(&r);
    return status;
}

/* ---- --evaluate --------------------------------------------------------------- */

// The test set on the best weights of a checkpoint, read and checked
// against the model built for it (`m`, of the model the file names).
int evaluate_checkpoint(Model *m, const CheckpointFile *f, const Options *o, const FashionMnist *data,
                        Result *result, Error *err) {
    Graph *g = m->graph;
    Dataset train_set = data->train;
    if (f->key.limit && (int)f->key.limit < train_set.count) train_set.count = (int)f->key.limit;
    DataKey here = data_key(&train_set, &data->validation);
    if (check_data_key(f, o, &here, err)) return err->code;
    RunSnapshot s;
    if (read_run_snapshot(f, g, (train_set.count + (int)f->key.batch - 1) / (int)f->key.batch, &s, err)) return err->code;
    memcpy(g->params, s.best_params, g->param_count * sizeof(float));
    memcpy(g->state, s.best_state, g->state_count * sizeof(float));
    printf("%s: model %s, seed %u, %d epoch%s trained%s; testing the weights of epoch %d (validation loss %.4f)\n",
           f->path, f->key.model, f->key.seed, s.run.epochs_done, s.run.epochs_done == 1 ? "" : "s",
           s.run.stopped ? " (stopped early)" : "", s.run.stopping.best_epoch, s.run.stopping.best_loss);
    *result = (Result){.model = m->name, .seed = (int)f->key.seed, .epochs = s.run.epochs_done,
                       .best_epoch = s.run.stopping.best_epoch, .weights = weights_fingerprint(g),
                       .seconds = s.run.seconds};
    run_snapshot_free(&s);
    return 0;
}
//@ end
