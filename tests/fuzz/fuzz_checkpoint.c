/* fuzz_checkpoint.c - libFuzzer on chapter 6's checkpoint reader.

   An input is a checkpoint file, checked as --resume and --evaluate check
   one (check_checkpoint, then read_run_snapshot) against a tiny model of
   two tensors, so an input stays small and a run fast. Whatever is accepted
   must be consistent: every section's CRC-32 right when recomputed, the
   sections ending exactly at the end of the file, the progress within the
   run's epochs and batches, every value finite. A refusal must carry one of
   the checkpoint exit codes and a message. A fuzzer cannot guess a CRC-32,
   so without help it would never get past the checksums to the checks
   behind them: inputs of even length have their checksums put right first
   (reseal), those of odd length are read as they are. Built by `make fuzz`; the seeds
   in tests/fuzz/corpus/checkpoint come from `fuzz_checkpoint -seed DIR`
   (below), which writes real checkpoints of the tiny model. */
// The chapter asks for POSIX (its lock file uses O_NOFOLLOW and lstat), but
// only before the first system header; these come first here, so ask here.
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <stdint.h>
#include <stdlib.h>

#define main chapter_main
#include "../../chapters/chapter6.c"
#undef main

enum { BATCHES = 3 };  // per epoch, for the tiny model's runs

static Graph *tiny_model(void) {
    static Graph *g;
    if (g) return g;
    g = graph_new(1);
    Node *w = graph_parameter(g, "w", (int[]){2, 3}, 2, INIT_GLOROT);
    graph_state(g, "s", (int[]){3}, 1, INIT_ONES);
    graph_compile(g, sum(g, w));
    graph_initialize(g, 1);
    return g;
}

static int consistent(const CheckpointFile *f, const RunSnapshot *s, const Graph *g) {
    size_t at = 16;
    for (int k = 0; k < CHECKPOINT_SECTIONS; k++) {
        size_t length = f->payload_size[k];
        if (f->payload_at[k] != at + 8) return 0;
        uint32_t stored = (uint32_t)f->bytes[at + 8 + length] | (uint32_t)f->bytes[at + 9 + length] << 8 |
                          (uint32_t)f->bytes[at + 10 + length] << 16 | (uint32_t)f->bytes[at + 11 + length] << 24;
        if (stored != crc32_update(0, f->bytes + at, 8 + length)) return 0;
        at += 12 + length;
    }
    int ok = at == f->size && s->run.epochs_done <= (int)s->key.epochs && s->run.epoch.batches_done < BATCHES &&
             s->history->batch_count == s->run.epochs_done * BATCHES + s->run.epoch.batches_done;
    for (size_t i = 0; i < g->param_count; i++) ok &= isfinite(s->params[i]) && isfinite(s->best_params[i]);
    for (size_t i = 0; i < g->state_count; i++) ok &= isfinite(s->state[i]) && isfinite(s->best_state[i]);
    return ok;
}

// Recomputes the CRC of every section whose length fits in the file.
static void reseal(unsigned char *bytes, size_t size) {
    for (size_t at = 16; at + 12 <= size;) {
        size_t length = (size_t)bytes[at + 4] | (size_t)bytes[at + 5] << 8 | (size_t)bytes[at + 6] << 16 |
                        (size_t)bytes[at + 7] << 24;
        if (length > size - at - 12) return;
        uint32_t crc = crc32_update(0, bytes + at, 8 + length);
        for (int i = 0; i < 4; i++) bytes[at + 8 + length + i] = (unsigned char)(crc >> 8 * i);
        at += 12 + length;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Graph *g = tiny_model();
    CheckpointFile f = {.path = "fuzz", .size = size};
    f.bytes = malloc(size ? size : 1);
    if (size) memcpy(f.bytes, data, size);
    if (size % 2 == 0) reseal(f.bytes, size);
    Error err = {0};
    RunSnapshot s;
    int status = check_checkpoint(&f, &err);
    if (!status) status = read_run_snapshot(&f, g, BATCHES, &s, &err);
    if (status) {
        if (err.code != status || !err.message[0] || status < EXIT_CHECKPOINT_UNREADABLE || status > EXIT_CHECKPOINT_MODEL)
            abort();
    } else {
        if (!consistent(&f, &s, g)) abort();
        run_snapshot_free(&s);
    }
    free(f.bytes);
    return 0;
}

// `fuzz_checkpoint -seed DIR`: writes seeds, real checkpoints of the tiny model.
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    if (*argc < 3 || strcmp((*argv)[1], "-seed") != 0) return 0;
    Graph *g = tiny_model();
    Options o = default_options();
    o.model = "ann", o.learning_rate = 0.001, o.epochs = 4;
    float moments[12] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.01f, 0.02f, 0.03f, 0.04f, 0.05f, 0.06f};
    float best[9] = {1, 2, 3, 4, 5, 6, 0.5f, 0.5f, 0.5f};
    for (int k = 0; k < 3; k++) {
        History *h = history_new(4, BATCHES);
        DataKey data = {.train_count = BATCHES * 64, .validation_count = 100, .crc = 0x5eed5eedu};
        RunSnapshot s = {.key = run_key(&o, data), .history = h, .params = g->params, .state = g->state,
                         .adam_m = moments, .adam_v = moments + 6, .best_params = best, .best_state = best + 6};
        s.run = (RunState){.epochs_done = k, .epoch = {.batches_done = k == 2 ? 0 : 1, .loss_sum = 2.5,
                           .correct = k == 2 ? 0 : 1, .seen = k == 2 ? 0 : 64}, .stopping = early_stopping_new(3), .seconds = 1};
        s.adam_step = k * BATCHES + s.run.epoch.batches_done;
        if (k) s.run.stopping.best_loss = 0.5f, s.run.stopping.best_epoch = 1, h->epochs = k;
        s.run.stopping.epochs_without_improvement = k ? k - 1 : 0;
        for (int e = 0; e < k; e++) h->validation_loss[e] = 0.5f + 0.25f * e, h->train_loss[e] = 0.7f;
        h->batch_count = (int)s.adam_step;
        for (int b = 0; b < h->batch_count; b++) h->batch_losses[b] = 1.0f / (b + 1);
        char path[512];
        snprintf(path, sizeof path, "%s/seed%d.ckpt", (*argv)[2], k);
        Error err = {0};
        if (save_checkpoint(path, g, &s, &err)) fprintf(stderr, "%s\n", err.message);
        history_free(h);
    }
    exit(0);
}
