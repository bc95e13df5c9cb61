/* test_checkpoint.c - chapter 6: early stopping and the checkpoint file.

   Early stopping on scripted validation losses; CRC-32 against its
   published check value; a checkpoint written and read back bit for bit
   (a model without state, and the deeper CNN with batch norm's); every
   kind of bad file refused with its own exit code, and a few hundred random
   byte flips and truncations; nothing loaded from a file that fails; a
   write that fails part-way (a file-size limit, as a full disk would) and
   a writer killed at random moments, each leaving the old checkpoint
   loadable. Built with AddressSanitizer, as every parser here is: the
   reader must not read a byte it was not given. The runs of the whole
   program (resume, Ctrl-C) are in test_resume.c. */
#include "check.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define main chapter6_main
// `make test-chapter N=6 FILE=...` builds this against a student's chapter.
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter6.c"
#endif
#include CHAPTER_FILE
#undef main

static const char *DIR_ = "build/checkpoint-files";

/* ---- Early stopping ------------------------------------------------------- */

static void test_early_stopping(void) {
    section("early stopping on scripted validation losses");
    // Best at epoch 2; epochs 3, 4 and 5 do not beat it; patience 3 stops at 5.
    const float losses[] = {1.0f, 0.8f, 0.9f, 0.85f, 0.8f, 0.7f};
    const StoppingDecision expected[] = {STOPPING_IMPROVED, STOPPING_IMPROVED, STOPPING_WAIT, STOPPING_WAIT,
                                         STOPPING_STOP};
    EarlyStopping s = early_stopping_new(3);
    int right = 1;
    for (int e = 0; e < 5; e++) right &= early_stopping_update(&s, e + 1, losses[e]) == expected[e];
    CHECK(right);
    CHECK_EQ_INT(s.best_epoch, 2);
    CHECK(s.best_loss == 0.8f);  // epoch 5 equalled it: equal is not better
    CHECK_EQ_INT(s.epochs_without_improvement, 3);

    // An improvement resets the count; patience 1 stops at the first miss.
    s = early_stopping_new(2);
    CHECK(early_stopping_update(&s, 1, 2.0f) == STOPPING_IMPROVED);
    CHECK(early_stopping_update(&s, 2, 2.5f) == STOPPING_WAIT);
    CHECK(early_stopping_update(&s, 3, 1.5f) == STOPPING_IMPROVED);
    CHECK(early_stopping_update(&s, 4, 1.6f) == STOPPING_WAIT);
    CHECK(early_stopping_update(&s, 5, 1.7f) == STOPPING_STOP);
    CHECK_EQ_INT(s.best_epoch, 3);
    s = early_stopping_new(1);
    CHECK(early_stopping_update(&s, 1, 1.0f) == STOPPING_IMPROVED);
    CHECK(early_stopping_update(&s, 2, 1.0f) == STOPPING_STOP);
    // A NaN loss is never an improvement (the program stops on it anyway).
    s = early_stopping_new(3);
    CHECK(early_stopping_update(&s, 1, NAN) == STOPPING_WAIT);
    CHECK_EQ_INT(s.best_epoch, 0);
}

static void test_crc32(void) {
    section("CRC-32");
    CHECK(crc32_update(0, (const unsigned char *)"123456789", 9) == 0xCBF43926u);  // the standard check value
    CHECK(crc32_update(0, NULL, 0) == 0);
    // In pieces or at once: the same.
    const unsigned char *text = (const unsigned char *)"The quick brown fox jumps over the lazy dog";
    CHECK(crc32_update(crc32_update(0, text, 10), text + 10, 33) == crc32_update(0, text, 43));
    CHECK(crc32_update(0, text, 43) == 0x414FA339u);
}

/* ---- A snapshot with made-up contents that add up -------------------------- */

typedef struct {
    GraphClassifier net;
    Options options;
    RunSnapshot s;
    float *memory;
    int batches;
} Fixture;

static void fill(float *x, size_t n, Rng *rng) {
    for (size_t i = 0; i < n; i++) x[i] = rng_uniform(rng) - 0.5f;
}

// The data the fixture's runs learned from (made up: no data is read here).
static const DataKey FIXTURE_DATA = {.train_count = 640, .validation_count = 6000, .crc = 0x5eed5eedu};

// A run of `model` two epochs and three batches in, with random tensors.
static void fixture_new(Fixture *f, const char *model, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->net = build_model(model, 8, 1, KERNEL_NAIVE, NULL);
    f->options = default_options();
    f->options.model = model;
    f->options.limit = 640;
    f->options.learning_rate = 0.001;
    f->batches = 10;
    Graph *g = f->net.graph;
    size_t P = g->param_count, S = g->state_count;
    f->memory = malloc((4 * P + 2 * S) * sizeof(float));
    Rng rng = rng_new(seed, 99);
    fill(f->memory, 4 * P + 2 * S, &rng);
    RunSnapshot *s = &f->s;
    s->key = run_key(&f->options, FIXTURE_DATA);
    s->params = f->memory, s->state = s->params + P, s->adam_m = s->state + S, s->adam_v = s->adam_m + P;
    s->best_params = s->adam_v + P, s->best_state = s->best_params + P;
    for (size_t i = 0; i < P; i++) s->adam_v[i] = fabsf(s->adam_v[i]);
    s->adam_step = 2 * f->batches + 3;
    s->run = (RunState){.epochs_done = 2, .epoch = {.batches_done = 3, .loss_sum = 123.25, .correct = 100, .seen = 3 * 64},
                        .stopping = early_stopping_new(3), .seconds = 4.5};
    s->run.stopping.best_loss = 0.375f, s->run.stopping.best_epoch = 1, s->run.stopping.epochs_without_improvement = 1;
    s->history = history_new(30, f->batches);
    s->history->epochs = 2;
    for (int e = 0; e < 2; e++) {
        s->history->train_loss[e] = 1.0f / (e + 1), s->history->train_accuracy[e] = 0.5f;
        s->history->validation_loss[e] = 0.375f + e, s->history->validation_accuracy[e] = 0.25f, s->history->seconds[e] = 2;
    }
    s->history->batch_count = 2 * f->batches + 3;
    fill(s->history->batch_losses, (size_t)s->history->batch_count, &rng);
}

static void fixture_free(Fixture *f) {
    history_free(f->s.history);
    free(f->memory);
    graph_free(f->net.graph);
}

static int same_floats(const float *a, const float *b, size_t n) { return n == 0 || memcmp(a, b, n * sizeof(float)) == 0; }

static int same_snapshot(const RunSnapshot *a, const RunSnapshot *b, const Graph *g) {
    size_t P = g->param_count, S = g->state_count;
    const History *x = a->history, *y = b->history;
    int same = same_floats(a->params, b->params, P) && same_floats(a->state, b->state, S) &&
               same_floats(a->adam_m, b->adam_m, P) && same_floats(a->adam_v, b->adam_v, P) &&
               same_floats(a->best_params, b->best_params, P) && same_floats(a->best_state, b->best_state, S) &&
               a->adam_step == b->adam_step && memcmp(&a->key, &b->key, sizeof a->key) == 0;
    same &= a->run.epochs_done == b->run.epochs_done && a->run.epoch.batches_done == b->run.epoch.batches_done &&
            a->run.epoch.loss_sum == b->run.epoch.loss_sum && a->run.epoch.correct == b->run.epoch.correct &&
            a->run.epoch.seen == b->run.epoch.seen && a->run.stopping.best_loss == b->run.stopping.best_loss &&
            a->run.stopping.best_epoch == b->run.stopping.best_epoch && a->run.seconds == b->run.seconds &&
            a->run.stopping.epochs_without_improvement == b->run.stopping.epochs_without_improvement &&
            a->run.stopped == b->run.stopped;
    same &= x->epochs == y->epochs && x->batch_count == y->batch_count &&
            same_floats(x->batch_losses, y->batch_losses, (size_t)x->batch_count);
    for (int e = 0; e < x->epochs; e++)
        same &= x->train_loss[e] == y->train_loss[e] && x->validation_loss[e] == y->validation_loss[e] &&
                x->train_accuracy[e] == y->train_accuracy[e] && x->validation_accuracy[e] == y->validation_accuracy[e] &&
                x->seconds[e] == y->seconds[e];
    return same;
}

// Opens and reads a checkpoint against `g`; the exit code (0: it loaded).
static int load(const char *path, const Graph *g, int batches, RunSnapshot *out, Error *err) {
    CheckpointFile f;
    RunSnapshot s;
    int status = open_checkpoint(path, &f, err);
    if (status) return status;
    status = read_run_snapshot(&f, g, batches, &s, err);
    checkpoint_file_free(&f);
    if (!status && out) *out = s;
    else if (!status) run_snapshot_free(&s);
    return status;
}

static ByteBuffer read_whole(const char *path) {
    ByteBuffer b = {0};
    FILE *f = fopen(path, "rb");
    unsigned char chunk[65536];
    size_t got;
    while (f && (got = fread(chunk, 1, sizeof chunk, f)) > 0) put_bytes(&b, chunk, got);
    if (f) fclose(f);
    return b;
}

static void write_whole(const char *path, const unsigned char *bytes, size_t size) {
    FILE *f = fopen(path, "wb");
    if (size) fwrite(bytes, 1, size, f);
    fclose(f);
}

static void test_round_trip(const char *model) {
    printf("-- a %s checkpoint, written and read back\n", model);
    Fixture f;
    fixture_new(&f, model, 1);
    char path[256];
    snprintf(path, sizeof path, "%s/%s.ckpt", DIR_, model);
    Error err = {0};
    CHECK_EQ_INT(save_checkpoint(path, f.net.graph, &f.s, &err), 0);
    RunSnapshot back;
    int status = load(path, f.net.graph, f.batches, &back, &err);
    if (!CHECK(status == 0)) printf("     %s\n", err.message);
    if (status == 0) {
        CHECK(same_snapshot(&f.s, &back, f.net.graph));
        run_snapshot_free(&back);
    }
    // The bytes are the format's, not the machine's: the header, then RUN.
    ByteBuffer b = read_whole(path);
    CHECK(b.used > 32 && memcmp(b.bytes, "FMCK\2\0\0\0\6\0\0\0\6\0\0\0RUN ", 20) == 0);
    free(b.bytes);
    fixture_free(&f);
}

/* ---- Bad files -------------------------------------------------------------- */

// Recomputes every section's CRC, so a test can change what is inside a
// section and see the check behind the checksum.
static void reseal(unsigned char *bytes, size_t size) {
    size_t at = 16;
    while (at + 12 <= size) {
        size_t length = (size_t)bytes[at + 4] | (size_t)bytes[at + 5] << 8 | (size_t)bytes[at + 6] << 16 |
                        (size_t)bytes[at + 7] << 24;
        if (at + 12 + length > size) return;
        uint32_t crc = crc32_update(0, bytes + at, 8 + length);
        for (int i = 0; i < 4; i++) bytes[at + 8 + length + i] = (unsigned char)(crc >> 8 * i);
        at += 12 + length;
    }
}

// Where section `which` starts (its tag), in a well-formed file.
static size_t section_at(const unsigned char *bytes, int which) {
    size_t at = 16;
    for (int k = 0; k < which; k++)
        at += 12 + ((size_t)bytes[at + 4] | (size_t)bytes[at + 5] << 8 | (size_t)bytes[at + 6] << 16 |
                    (size_t)bytes[at + 7] << 24);
    return at;
}

typedef struct {
    const char *what;
    int code;
    const char *words;  // in the message
} Expect;

static void expect_refused(const char *path, const Graph *g, int batches, Expect e) {
    Error err = {0};
    int status = load(path, g, batches, NULL, &err);
    if (!CHECK(status == e.code && strstr(err.message, e.words) && strstr(err.message, path)))
        printf("     %s: exit %d (expected %d): %s\n", e.what, status, e.code, err.message);
}

static void test_bad_files(void) {
    section("bad checkpoints, each refused with its own code and message");
    Fixture f;
    fixture_new(&f, "ann", 2);
    Graph *g = f.net.graph;
    char good[256], bad[256];
    snprintf(good, sizeof good, "%s/good.ckpt", DIR_);
    snprintf(bad, sizeof bad, "%s/bad.ckpt", DIR_);
    Error err = {0};
    save_checkpoint(good, g, &f.s, &err);
    ByteBuffer b = read_whole(good);
    unsigned char *copy = malloc(b.used + 16);

    expect_refused("no file", g, f.batches, (Expect){"missing", EXIT_CHECKPOINT_UNREADABLE, "No such file"});
    expect_refused(DIR_, g, f.batches, (Expect){"a directory", EXIT_CHECKPOINT_UNREADABLE, "a directory"});
    char fifo[256];
    snprintf(fifo, sizeof fifo, "%s/fifo", DIR_);
    remove(fifo);
    if (mkfifo(fifo, 0600) == 0)  // refused at once, not waited on
        expect_refused(fifo, g, f.batches, (Expect){"a FIFO", EXIT_CHECKPOINT_UNREADABLE, "a pipe"});
    write_whole(bad, b.bytes, 0);
    expect_refused(bad, g, f.batches, (Expect){"empty", EXIT_CHECKPOINT_TRUNCATED, "truncated"});
    write_whole(bad, (const unsigned char *)"P5\n28 28\n255\n", 13);
    expect_refused(bad, g, f.batches, (Expect){"a PGM", EXIT_CHECKPOINT_NOT, "not a checkpoint"});

    memcpy(copy, b.bytes, b.used);
    copy[4] = 3;  // version 3
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"newer", EXIT_CHECKPOINT_VERSION, "a newer program"});
    copy[4] = 1;  // version 1, from before the data were recorded
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"older", EXIT_CHECKPOINT_VERSION, "before checkpoints recorded the data"});
    memcpy(copy, b.bytes, b.used);
    copy[8] = 5;  // chapter 5
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"chapter 5", EXIT_CHECKPOINT_VERSION, "written by chapter 5"});
    memcpy(copy, b.bytes, b.used);
    copy[12] = 7;
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"sections", EXIT_CHECKPOINT_DAMAGED, "sections"});

    write_whole(bad, b.bytes, b.used - 1);
    expect_refused(bad, g, f.batches, (Expect){"one byte short", EXIT_CHECKPOINT_TRUNCATED, "truncated"});
    {   // the numbers in the message add up: BEST's payload and checksum need 1 byte more than is left
        size_t best = section_at(b.bytes, SECTION_BEST), length = b.used - best - 12;
        char words[160];
        snprintf(words, sizeof words, "promises %zu bytes and a 4-byte checksum, but only %zu bytes are left", length,
                 length + 3);
        expect_refused(bad, g, f.batches, (Expect){"one byte short, the numbers", EXIT_CHECKPOINT_TRUNCATED, words});
    }
    write_whole(bad, b.bytes, 20);
    expect_refused(bad, g, f.batches, (Expect){"cut in a header", EXIT_CHECKPOINT_TRUNCATED, "truncated"});
    memcpy(copy, b.bytes, b.used);
    copy[b.used] = 0;
    write_whole(bad, copy, b.used + 1);
    expect_refused(bad, g, f.batches, (Expect){"a byte too many", EXIT_CHECKPOINT_TRUNCATED, "longer than"});

    size_t weights = section_at(b.bytes, SECTION_WEIGHTS);
    memcpy(copy, b.bytes, b.used);
    copy[weights + 200] ^= 0x01;  // one bit of a weight
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"a flipped bit", EXIT_CHECKPOINT_DAMAGED, "CRC-32"});
    memcpy(copy, b.bytes, b.used);
    memcpy(copy + weights, "WGHX", 4);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"a wrong tag", EXIT_CHECKPOINT_DAMAGED, "should be 'WGHT'"});

    // Behind the checksum: contents no run writes, resealed.
    memcpy(copy, b.bytes, b.used);
    size_t last = b.used - 12;  // the last value of BEST, a float
    memcpy(copy + last, (unsigned char[]){0, 0, 0xc0, 0x7f}, 4);  // a NaN
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"NaN weight", EXIT_CHECKPOINT_DAMAGED, "not finite"});
    memcpy(copy, b.bytes, b.used);
    size_t progress = section_at(b.bytes, SECTION_PROGRESS) + 8;
    copy[progress + 4] = 200;  // 200 batches done of an epoch of 10
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"batches", EXIT_CHECKPOINT_DAMAGED, "PROG"});
    // Forged values that pass every checksum (PROG: epochs 4, batches 4, loss sum 8, correct 8, seen 8,
    // best loss 4 at +32, best epoch 4 at +36, epochs without improvement 4 at +40, stopped 1, seconds 8 at +45).
    memcpy(copy, b.bytes, b.used);
    memcpy(copy + progress + 32, (unsigned char[]){0, 0, 0x80, 0xbf}, 4);  // a best validation loss of -1
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"a negative best loss", EXIT_CHECKPOINT_DAMAGED, "PROG section does not add up"});
    memcpy(copy, b.bytes, b.used);
    copy[progress + 36] = 2, copy[progress + 40] = 0;  // best epoch 2, where the history's best is epoch 1
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"a best epoch against the history", EXIT_CHECKPOINT_DAMAGED, "HIST section disagrees"});
    memcpy(copy, b.bytes, b.used);
    memcpy(copy + progress + 45, (unsigned char[]){0x9c, 0x75, 0x88, 0x3c, 0xe4, 0xa6, 0x2e, 0x7e}, 8);  // 1e300 s
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"1e300 seconds", EXIT_CHECKPOINT_DAMAGED, "PROG section does not add up"});
    memcpy(copy, b.bytes, b.used);
    memset(copy + progress + 4, 0, 28);  // between epochs (no batch done, no sums)...
    copy[progress + 44] = 1;             // ...stopped, with 1 epoch of patience 3 without improvement
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"stopped too soon", EXIT_CHECKPOINT_DAMAGED, "PROG section does not add up"});
    memcpy(copy, b.bytes, b.used);
    size_t history = section_at(b.bytes, SECTION_HISTORY) + 8;
    memcpy(copy + history + 4, (unsigned char[]){0, 0, 0x80, 0x3f + 1}, 4);  // a train accuracy of 4
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"an accuracy over 1", EXIT_CHECKPOINT_DAMAGED, "HIST section disagrees"});
    memcpy(copy, b.bytes, b.used);
    memcpy(copy + history + 16, (unsigned char[]){0, 0, 0x20, 0x41}, 4);  // epoch 1 took 10 s of a 4.5 s run
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"more seconds than the run", EXIT_CHECKPOINT_DAMAGED, "HIST section disagrees"});
    memcpy(copy, b.bytes, b.used);
    size_t run = section_at(b.bytes, SECTION_RUN) + 8;  // "ann": length 3, then the letters
    copy[run + 1] = 'x';
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"unknown model", EXIT_CHECKPOINT_MODEL, "'xnn'"});
    // RUN ends with the data: training images, validation images, fingerprint (u32 each).
    size_t run_end = section_at(b.bytes, SECTION_PROGRESS) - 4;
    memcpy(copy, b.bytes, b.used);
    memset(copy + run_end - 8, 0, 4);  // no validation images
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"no validation images", EXIT_CHECKPOINT_DAMAGED, "RUN"});
    memcpy(copy, b.bytes, b.used);
    copy[run_end - 11] = 3;  // 640 -> 0x300 = 768 training images, more than --limit 640
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"more images than --limit", EXIT_CHECKPOINT_DAMAGED, "RUN"});
    // A tensor of another shape: weight1's first dimension, 784 -> 785.
    memcpy(copy, b.bytes, b.used);
    size_t first_tensor = weights + 8 + 4, dims = first_tensor + 1 + strlen("weight1") + 2;
    CHECK(memcmp(copy + first_tensor + 1, "weight1", 7) == 0 && copy[dims] == (784 & 255));
    copy[dims] = 785 & 255;
    reseal(copy, b.used);
    write_whole(bad, copy, b.used);
    expect_refused(bad, g, f.batches, (Expect){"another shape", EXIT_CHECKPOINT_MODEL, "another model"});

    // Another model: the deeper CNN's checkpoint read as the ANN.
    Fixture d;
    fixture_new(&d, "deeper", 3);
    char deeper[256];
    snprintf(deeper, sizeof deeper, "%s/deeper-as-ann.ckpt", DIR_);
    save_checkpoint(deeper, d.net.graph, &d.s, &err);
    expect_refused(deeper, g, f.batches, (Expect){"another model", EXIT_CHECKPOINT_MODEL, "another model"});
    fixture_free(&d);

    // --resume with other options: refused before anything is read into the run.
    CheckpointFile file;
    CHECK_EQ_INT(open_checkpoint(good, &file, &err), 0);
    Options o = f.options;
    CHECK_EQ_INT(check_resume_key(&file, &o, &FIXTURE_DATA, &err), 0);
    o.seed = 2;
    CHECK_EQ_INT(check_resume_key(&file, &o, &FIXTURE_DATA, &err), EXIT_CHECKPOINT_OPTIONS);
    CHECK(strstr(err.message, "--seed") && strstr(err.message, "--limit 640"));
    o = f.options, o.model = "basic";
    CHECK_EQ_INT(check_resume_key(&file, &o, &FIXTURE_DATA, &err), EXIT_CHECKPOINT_MODEL);
    o = f.options, o.learning_rate = 0.002;
    CHECK_EQ_INT(check_resume_key(&file, &o, &FIXTURE_DATA, &err), EXIT_CHECKPOINT_OPTIONS);
    // Other data, of the same size or not: refused as not fitting, not as damage, and the fix named.
    o = f.options;
    DataKey other = FIXTURE_DATA;
    other.crc ^= 1;
    CHECK_EQ_INT(check_resume_key(&file, &o, &other, &err), EXIT_CHECKPOINT_DATA);
    CHECK(strstr(err.message, "other data") && strstr(err.message, "--data") && !strstr(err.message, "damaged"));
    other = FIXTURE_DATA, other.validation_count = 600;
    CHECK_EQ_INT(check_resume_key(&file, &o, &other, &err), EXIT_CHECKPOINT_DATA);
    CHECK(strstr(err.message, "640 training and 6000 validation") && strstr(err.message, "gives 640 and 600"));
    checkpoint_file_free(&file);

    free(copy);
    free(b.bytes);
    fixture_free(&f);
}

// Every single-byte change and every truncation must be refused: CRC-32
// catches all errors within 32 bits, and a header byte changes a field
// that is checked.
static void test_random_damage(void) {
    section("random byte flips and truncations");
    Fixture f;
    fixture_new(&f, "ann", 4);
    char good[256], bad[256];
    snprintf(good, sizeof good, "%s/random-good.ckpt", DIR_);
    snprintf(bad, sizeof bad, "%s/random-bad.ckpt", DIR_);
    Error err = {0};
    save_checkpoint(good, f.net.graph, &f.s, &err);
    ByteBuffer b = read_whole(good);
    unsigned char *copy = malloc(b.used);
    Rng rng = rng_new(7, 7);
    int refused = 0, tries = 300;
    for (int k = 0; k < tries; k++) {
        memcpy(copy, b.bytes, b.used);
        // Half in the first 400 bytes, where the small sections are.
        size_t at = k % 2 ? rng_below(&rng, 400) : rng_below(&rng, (uint32_t)b.used);
        copy[at] ^= (unsigned char)(1 + rng_below(&rng, 255));
        write_whole(bad, copy, b.used);
        refused += load(bad, f.net.graph, f.batches, NULL, &err) != 0;
    }
    CHECK_EQ_INT(refused, tries);
    refused = 0;
    for (int k = 0; k < 100; k++) {
        size_t size = k < 40 ? (size_t)k : rng_below(&rng, (uint32_t)b.used);
        write_whole(bad, b.bytes, size);
        refused += load(bad, f.net.graph, f.batches, NULL, &err) != 0;
    }
    CHECK_EQ_INT(refused, 100);
    free(copy);
    free(b.bytes);
    fixture_free(&f);
}

/* ---- Nothing partially loaded ------------------------------------------------- */

static void test_nothing_partially_loaded(void) {
    section("a checkpoint that fails at its last section changes nothing");
    Fixture f;
    fixture_new(&f, "deeper", 5);
    Graph *g = f.net.graph;
    char bad[256];
    snprintf(bad, sizeof bad, "%s/late-damage.ckpt", DIR_);
    Error err = {0};
    save_checkpoint(bad, g, &f.s, &err);
    ByteBuffer b = read_whole(bad);
    memcpy(b.bytes + b.used - 12, (unsigned char[]){0, 0, 0x80, 0x7f}, 4);  // +infinity, last of BEST
    reseal(b.bytes, b.used);
    write_whole(bad, b.bytes, b.used);
    free(b.bytes);

    Options o = f.options;
    o.resume = bad;
    Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, g->param_count);
    History *h = history_new(30, f.batches);
    Model m = graph_model(&f.net, "deeper");
    Run r = {.model = &m, .graph = g, .optimizer = &opt, .options = &o, .key = f.s.key,
             .run = {.stopping = early_stopping_new(3)}, .history = h, .lock = -1};
    r.best = calloc(g->param_count + g->state_count, sizeof(float));
    size_t P = g->param_count, S = g->state_count;
    float *before = malloc((P + S) * sizeof(float));
    memcpy(before, g->params, P * sizeof(float));
    memcpy(before + P, g->state, S * sizeof(float));
    CHECK_EQ_INT(resume_run(&r, f.batches, &err), EXIT_CHECKPOINT_DAMAGED);
    CHECK(same_floats(before, g->params, P) && same_floats(before + P, g->state, S));
    CHECK(opt.step == 0 && r.run.epochs_done == 0 && h->epochs == 0 && h->batch_count == 0);
    float zero = 0;
    int m_untouched = 1;
    for (size_t i = 0; i < P; i++) m_untouched &= opt.m[i] == zero;
    CHECK(m_untouched);
    free(before);
    free(r.best);
    history_free(h);
    optimizer_free(&opt);
    fixture_free(&f);
}

// Does `path` load, against f's model, as `one` or (if not NULL) `other`?
static int loads_as(const char *path, const Fixture *f, const RunSnapshot *one, const RunSnapshot *other) {
    RunSnapshot back;
    Error err = {0};
    if (load(path, f->net.graph, f->batches, &back, &err) != 0) return 0;
    int same = same_snapshot(one, &back, f->net.graph) || (other && same_snapshot(other, &back, f->net.graph));
    run_snapshot_free(&back);
    return same;
}

/* ---- Crashes while writing ------------------------------------------------------- */

static int temporaries_in(const char *dir, const char *prefix) {
    char command[512];
    snprintf(command, sizeof command, "ls %s | grep -c '^%s.*\\.tmp$'", dir, prefix);
    FILE *p = popen(command, "r");
    int count = 0;
    if (p && fscanf(p, "%d", &count) != 1) count = -1;
    if (p) pclose(p);
    return count;
}

// In a child: a file-size limit of `bytes`, then a save over `path`. The
// system refuses the write past the limit (EFBIG), as a full disk would.
static int save_with_size_limit(const char *path, Fixture *f, rlim_t bytes) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit limit = {bytes, bytes};
        signal(SIGXFSZ, SIG_IGN);  // otherwise the signal would kill the child
        setrlimit(RLIMIT_FSIZE, &limit);
        Error err = {0};
        _exit(save_checkpoint(path, f->net.graph, &f->s, &err));
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void test_failed_write(void) {
    section("a write that fails part-way leaves the old checkpoint");
    Fixture old, new_;
    fixture_new(&old, "ann", 6);
    fixture_new(&new_, "ann", 7);
    char path[256];
    snprintf(path, sizeof path, "%s/crash.ckpt", DIR_);
    Error err = {0};
    save_checkpoint(path, old.net.graph, &old.s, &err);
    int refused = 1, intact = 1;
    rlim_t limits[] = {0, 1, 100, 4096, 100000, 400000};
    for (int k = 0; k < 6; k++) {
        refused &= save_with_size_limit(path, &new_, limits[k]) == EXIT_WRITE;
        intact &= loads_as(path, &old, &old.s, NULL);
    }
    CHECK(refused);
    CHECK(intact);
    CHECK_EQ_INT(temporaries_in(DIR_, "crash.ckpt"), 0);  // a failed write cleans up
    fixture_free(&old);
    fixture_free(&new_);
}

// A writer killed (SIGKILL: no clean-up at all) at random moments while it
// saves one of two checkpoints over and over: the file is always whole,
// one or the other.
static void test_killed_writer(void) {
    section("a writer killed at random moments");
    Fixture a, b;
    fixture_new(&a, "ann", 8);
    fixture_new(&b, "ann", 9);
    char path[256];
    snprintf(path, sizeof path, "%s/killed.ckpt", DIR_);
    Error err = {0};
    save_checkpoint(path, a.net.graph, &a.s, &err);
    Rng rng = rng_new(11, 11);
    int whole = 1, kills = 12;
    for (int k = 0; k < kills; k++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0;; i++) save_checkpoint(path, i % 2 ? a.net.graph : b.net.graph, i % 2 ? &a.s : &b.s, &err);
        }
        struct timespec pause = {0, (long)(1 + rng_below(&rng, 40)) * 1000000L};
        nanosleep(&pause, NULL);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        whole &= loads_as(path, &a, &a.s, &b.s);
    }
    CHECK(whole);
    // A killed writer cannot remove its temporary; it stays beside the
    // checkpoint, with a name no run reads (book.md 6.6).
    char command[512];
    snprintf(command, sizeof command, "rm -f %s/killed.ckpt.*.tmp", DIR_);
    CHECK(system(command) == 0);
    fixture_free(&a);
    fixture_free(&b);
}

int main(void) {
    char command[256];
    snprintf(command, sizeof command, "rm -rf %s && mkdir -p %s", DIR_, DIR_);
    if (system(command) != 0) return 1;
    test_early_stopping();
    test_crc32();
    test_round_trip("ann");
    test_round_trip("deeper");
    test_bad_files();
    test_random_damage();
    test_nothing_partially_loaded();
    test_failed_write();
    test_killed_writer();
    return check_summary();
}
