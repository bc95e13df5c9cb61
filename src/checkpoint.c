//@ from 6
/* ----------------------------------------------------------------------------
   Checkpoints: a run's whole state in one file (book.md 6.4-6.7).

   What this is: the file format, its writer and its reader. A checkpoint
   holds all a run needs to continue exactly where it stopped: the options
   that shape its numbers, where it stands (epoch, batch, the sums of the
   epoch under way, the early-stopping counters), the curves so far, the
   weights and batch norm's state, Adam's moments and step, and the best
   epoch's weights and state, which the final test uses.
   What it is not: a general format. It holds the float32 tensors of one of
   this book's models, for the chapter that wrote it.

   The layout; every number is little-endian, whatever the machine:
     header   "FMCK"  version u32  chapter u32  section count u32
     section  tag (4 ASCII bytes)  length u32  payload (length bytes)
              CRC-32 u32 of the tag, the length and the payload
   and the sections, always these, in this order:
     RUN   the options that shape the numbers: model and optimizer (u8
           length, then the letters), seed, batch, limit, epochs and
           patience (u32 each), learning rate (float64)
//@ from 7 to 8
           and, in chapter 7's files, --augment (u32: 0 or 1)
//@ end
//@ from 9
           and, in chapter 7's files, --augment (u32: 0 or 1; in chapter
           9's, a bit each for --augment and --erase)
//@ end
//@ from 8
           and, in chapter 8's, --precision (u32: 0 fp32, 1 bf16; files
           chapter 8 wrote before it had bf16 lack it, and were fp32)
//@ end
//@ from 9
           and, in chapter 9's, --weight-decay and --dropout (float64
           each; a dropout of -1: the model's own rates), the classes
           (u32, a bit each), --per-class (u32, 0: all), --freeze (u32)
           and the fingerprint of the weights --init-from gave (u32, 0:
           none)
//@ end
           then the data it learns from: training and validation images
           (u32 each) and their fingerprint (u32, data_key)
     PROG  where the run stands: epochs done, batches done of the next,
           its loss sum (float64), correct and seen (u64); the best
           validation loss (float32), its epoch, the epochs without
           improvement (u32 each), stopped (u8), seconds (float64)
     HIST  per epoch: train loss, train accuracy, validation loss,
           validation accuracy, seconds (float32 each); then every batch's
           loss (u32 count, float32 each)
     WGHT  the weights and state now, as a tensor list
     ADAM  the optimiser: step (u64), count (u32), count m, count v
     BEST  the best epoch's weights and state, as a tensor list
   A tensor list is a count (u32), then per tensor: its name (u8 length,
   letters), kind (u8: 1 parameter, 2 state), rank (u8), each dimension
   (u32), and its values (float32).

   Reading trusts nothing, as chapter 1 does with IDX: every length is
   checked against the bytes that are there, every section's checksum,
   every tensor's name and shape against the model, every number against
   its range, all before one value is copied into the model; each kind of
   damage has its own message and exit code. */

// Version 2 records the data a run learns from (DataKey); version 1 did not.
enum { CHECKPOINT_VERSION = 2, CHECKPOINT_SECTIONS = 6 };
//@ from 6 to 6
enum { CHECKPOINT_CHAPTER = 6 };
//@ end
//@ from 7 to 7
// Chapter 7 writes the same format with one more option in RUN (--augment)
// and reads chapter 6's files too: the same runs, so the comparison can
// build on the long runs chapter 6 already made.
enum { CHECKPOINT_CHAPTER = 7 };
//@ end
//@ from 8 to 8
// Chapter 8 writes chapter 7's format and reads chapter 6's and 7's files:
// their runs are the same runs. Its own files say 8, so chapter 7, which
// cannot build a resnet, refuses them before it reads a tensor.
enum { CHECKPOINT_CHAPTER = 8 };
//@ end
//@ from 9
// Chapter 9 adds two options to RUN and reads chapters 6 to 8's files,
// whose runs had no weight decay and the models' own dropout.
enum { CHECKPOINT_CHAPTER = 9 };
//@ end
static const char CHECKPOINT_MAGIC[4] = {'F', 'M', 'C', 'K'};
static const char SECTION_TAGS[CHECKPOINT_SECTIONS][5] = {"RUN ", "PROG", "HIST", "WGHT", "ADAM", "BEST"};
enum { SECTION_RUN, SECTION_PROGRESS, SECTION_HISTORY, SECTION_WEIGHTS, SECTION_ADAM, SECTION_BEST };
enum { TENSOR_PARAMETER = 1, TENSOR_STATE = 2 };
// A deeper CNN's checkpoint is about 14 MB; anything past this is not ours.
#define MAX_CHECKPOINT_BYTES ((size_t)1 << 30)

/* CRC-32 (the one of zip, PNG and Ethernet: polynomial 0xEDB88320 in its
   reflected form, start and end inverted), a bit at a time. It catches
   every error confined to 32 bits in a row, so any one flipped byte, and
   all but one in four billion of the rest. Fast enough: a checkpoint is
   checked once. */
uint32_t crc32_update(uint32_t crc, const unsigned char *bytes, size_t size) {
    //@ exercise 6 crc32: continue the CRC-32 `crc` over `size` more bytes, a bit at a time (book.md 6.5).
    crc = ~crc;
    for (size_t i = 0; i < size; i++) {
        crc ^= bytes[i];
        for (int bit = 0; bit < 8; bit++) crc = crc >> 1 ^ (0xEDB88320u & (0u - (crc & 1)));
    }
    return ~crc;
    //@ stub
    (void)bytes, (void)size;
    return crc;
    //@ end
}

/* The data a run learns from: how many training and validation images, and
   the CRC-32 of their pixels (each as the byte it was read from) and their
   labels. Other files of the same size would otherwise pass for these: MNIST
   has exactly Fashion-MNIST's counts, and a run resumed on it, or a result
   reused for it, would be another experiment's numbers under this one's name. */
typedef struct {
    uint32_t train_count, validation_count, crc;
} DataKey;

uint32_t dataset_crc(uint32_t crc, const Dataset *d) {
    unsigned char pixels[IMAGE_SIZE];
    for (int i = 0; i < d->count; i++) {
        // b / 255 was rounded to the nearest float; times 255 it rounds back to b
        for (int p = 0; p < IMAGE_SIZE; p++) pixels[p] = (unsigned char)lroundf(255.0f * d->images[(size_t)i * IMAGE_SIZE + p]);
        crc = crc32_update(crc, pixels, IMAGE_SIZE);
    }
    return crc32_update(crc, d->labels, (size_t)d->count);
}

DataKey data_key(const Dataset *train, const Dataset *validation) {
    return (DataKey){.train_count = (uint32_t)train->count, .validation_count = (uint32_t)validation->count,
                     .crc = dataset_crc(dataset_crc(0, train), validation)};
}

// The options that shape a run's numbers, and its data; a resumed run must
// have the same.
typedef struct {
    char model[24], optimizer[8];
    uint32_t seed, batch, limit, epochs, patience;
    double learning_rate;
//@ from 7 to 8
    uint32_t augment;  // 1: --augment (chapter 6's runs have 0)
//@ end
//@ from 9
    uint32_t augment;  // 1: --augment (chapter 6's runs have 0), 2: --erase, 3: both
//@ end
//@ from 8
    uint32_t precision;  // 1: --precision bf16 (chapter 6's and 7's runs have 0: fp32)
//@ end
//@ from 9
    double weight_decay, dropout;  // --weight-decay (0: none) and --dropout (-1: the model's own)
    uint32_t classes, per_class;   // a bit per class learned (0x3ff: all ten), and --per-class (0: all)
    uint32_t freeze, init_weights; // --freeze (1), and weights_fingerprint of what --init-from gave (0: none)
//@ end
    DataKey data;
} RunKey;

RunKey run_key(const Options *o, DataKey data) {
    RunKey k = {.data = data, .seed = (uint32_t)o->seed, .batch = (uint32_t)o->batch, .limit = (uint32_t)o->limit,
                .epochs = (uint32_t)o->epochs, .patience = (uint32_t)o->patience, .learning_rate = o->learning_rate};
//@ from 7 to 8
    k.augment = (uint32_t)o->augment;
//@ end
//@ from 9
    k.augment = (uint32_t)(o->augment | o->erase << 1);  // a bit each: --augment, --erase
//@ end
//@ from 8
    k.precision = strcmp(o->precision, "bf16") == 0;
//@ end
//@ from 9
    k.weight_decay = o->weight_decay, k.dropout = o->dropout;
    k.classes = o->classes ? o->classes : ALL_CLASSES, k.per_class = (uint32_t)o->per_class;
    k.freeze = (uint32_t)o->freeze, k.init_weights = o->init_weights;
//@ end
    snprintf(k.model, sizeof k.model, "%s", o->model);
    snprintf(k.optimizer, sizeof k.optimizer, "%s", o->optimizer);
    return k;
}

// A run at one moment: what a checkpoint is written from (pointing into
// the live run) and read into (with memory of its own until it is trusted).
typedef struct {
    RunKey key;
    RunState run;
    History *history;
    float *params, *state;            // (param_count), (state_count): now
    long adam_step;
    float *adam_m, *adam_v;           // (param_count) each; NULL for SGD
    float *best_params, *best_state;  // (param_count), (state_count): at the best epoch
} RunSnapshot;

/* ---- Writing -------------------------------------------------------------- */

// Bytes built in memory, written to the disk in one go.
typedef struct {
    unsigned char *bytes;
    size_t used, capacity;
} ByteBuffer;

void put_bytes(ByteBuffer *b, const void *data, size_t size) {
    if (b->used + size > b->capacity) {
        size_t larger = 2 * (b->used + size);
        unsigned char *grown = xmalloc(larger);
        if (b->used) memcpy(grown, b->bytes, b->used);
        free(b->bytes);
        b->bytes = grown, b->capacity = larger;
    }
    memcpy(b->bytes + b->used, data, size);
    b->used += size;
}

// Little-endian by arithmetic, not by memcpy: the same bytes on any machine.
void put_uint(ByteBuffer *b, uint64_t value, int bytes) {
    unsigned char out[8];
    for (int i = 0; i < bytes; i++) out[i] = (unsigned char)(value >> 8 * i);
    put_bytes(b, out, (size_t)bytes);
}

void put_f32(ByteBuffer *b, float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);  // the IEEE-754 bits, which every C compiler we target uses
    put_uint(b, bits, 4);
}

void put_f64(ByteBuffer *b, double value) {
    uint64_t bits;
    memcpy(&bits, &value, 8);
    put_uint(b, bits, 8);
}

void put_name(ByteBuffer *b, const char *name) {
    size_t length = strlen(name);
    require(length < 256, "a name of %zu letters does not fit a checkpoint", length);
    put_uint(b, length, 1);
    put_bytes(b, name, length);
}

void put_floats(ByteBuffer *b, const float *values, size_t count) {
    for (size_t i = 0; i < count; i++) put_f32(b, values[i]);
}

// Every parameter, then every state node, in the graph's creation order,
// which is also the order of g->params and g->state.
void put_tensors(ByteBuffer *b, const Graph *g, const float *params, const float *state) {
    uint32_t count = 0;
    for (int i = 0; i < g->count; i++) count += g->nodes[i].is_parameter || g->nodes[i].is_state;
    put_uint(b, count, 4);
    for (int kind = TENSOR_PARAMETER; kind <= TENSOR_STATE; kind++) {
        const float *values = kind == TENSOR_PARAMETER ? params : state;
        for (int i = 0; i < g->count; i++) {
            const Node *n = &g->nodes[i];
            if (kind == TENSOR_PARAMETER ? !n->is_parameter : !n->is_state) continue;
            put_name(b, n->label);
            put_uint(b, (uint64_t)kind, 1);
            put_uint(b, (uint64_t)n->rank, 1);
            for (int d = 0; d < n->rank; d++) put_uint(b, (uint64_t)n->shape[d], 4);
            put_floats(b, values, n->size);
            values += n->size;
        }
    }
}

void put_section(ByteBuffer *file, int which, const ByteBuffer *payload) {
    size_t start = file->used;
    put_bytes(file, SECTION_TAGS[which], 4);
    put_uint(file, payload->used, 4);
    put_bytes(file, payload->bytes, payload->used);
    put_uint(file, crc32_update(0, file->bytes + start, file->used - start), 4);
}

void put_section_payload(ByteBuffer *p, int which, const Graph *g, const RunSnapshot *s) {
    const History *h = s->history;
    switch (which) {
    case SECTION_RUN:
        put_name(p, s->key.model), put_name(p, s->key.optimizer);
        put_uint(p, s->key.seed, 4), put_uint(p, s->key.batch, 4), put_uint(p, s->key.limit, 4);
        put_uint(p, s->key.epochs, 4), put_uint(p, s->key.patience, 4), put_f64(p, s->key.learning_rate);
//@ from 7
        put_uint(p, s->key.augment, 4);
//@ end
//@ from 8
        put_uint(p, s->key.precision, 4);
//@ end
//@ from 9
        put_f64(p, s->key.weight_decay), put_f64(p, s->key.dropout);
        put_uint(p, s->key.classes, 4), put_uint(p, s->key.per_class, 4);
        put_uint(p, s->key.freeze, 4), put_uint(p, s->key.init_weights, 4);
//@ end
        put_uint(p, s->key.data.train_count, 4), put_uint(p, s->key.data.validation_count, 4);
        put_uint(p, s->key.data.crc, 4);
        break;
    case SECTION_PROGRESS:
        put_uint(p, (uint64_t)s->run.epochs_done, 4), put_uint(p, (uint64_t)s->run.epoch.batches_done, 4);
        put_f64(p, s->run.epoch.loss_sum);
        put_uint(p, (uint64_t)s->run.epoch.correct, 8), put_uint(p, (uint64_t)s->run.epoch.seen, 8);
        put_f32(p, s->run.stopping.best_loss), put_uint(p, (uint64_t)s->run.stopping.best_epoch, 4);
        put_uint(p, (uint64_t)s->run.stopping.epochs_without_improvement, 4);
        put_uint(p, (uint64_t)s->run.stopped, 1), put_f64(p, s->run.seconds);
        break;
    case SECTION_HISTORY:
        for (int e = 0; e < h->epochs; e++) {
            put_f32(p, h->train_loss[e]), put_f32(p, h->train_accuracy[e]);
            put_f32(p, h->validation_loss[e]), put_f32(p, h->validation_accuracy[e]), put_f32(p, h->seconds[e]);
        }
        put_uint(p, (uint64_t)h->batch_count, 4);
        put_floats(p, h->batch_losses, (size_t)h->batch_count);
        break;
    case SECTION_WEIGHTS: put_tensors(p, g, s->params, s->state); break;
    case SECTION_ADAM:
        put_uint(p, (uint64_t)s->adam_step, 8);
        put_uint(p, s->adam_m ? g->param_count : 0, 4);
        if (s->adam_m) put_floats(p, s->adam_m, g->param_count), put_floats(p, s->adam_v, g->param_count);
        break;
    case SECTION_BEST: put_tensors(p, g, s->best_params, s->best_state); break;
    }
}

// The whole file, in memory.
ByteBuffer checkpoint_bytes(const Graph *g, const RunSnapshot *s) {
    ByteBuffer file = {0}, payload = {0};
    put_bytes(&file, CHECKPOINT_MAGIC, 4);
    put_uint(&file, CHECKPOINT_VERSION, 4);
    put_uint(&file, CHECKPOINT_CHAPTER, 4);
    put_uint(&file, CHECKPOINT_SECTIONS, 4);
    for (int which = 0; which < CHECKPOINT_SECTIONS; which++) {
        payload.used = 0;
        put_section_payload(&payload, which, g, s);
        put_section(&file, which, &payload);
    }
    free(payload.bytes);
    return file;
}

// A fingerprint of a model's weights: the CRC-32 of its parameters and
// state as a checkpoint stores them (float32, little-endian). The result
// line prints it, so two runs can be seen to end with the same weights, bit
// for bit, on any machine.
uint32_t weights_fingerprint(const Graph *g) {
    ByteBuffer b = {0};
    put_floats(&b, g->params, g->param_count);
    put_floats(&b, g->state, g->state_count);
    uint32_t crc = crc32_update(0, b.bytes, b.used);
    free(b.bytes);
    return crc;
}

// Written whole or not at all (write_file_atomically: a temporary created
// exclusively, synced, renamed over the old file).
int save_checkpoint(const char *path, const Graph *g, const RunSnapshot *s, Error *err) {
    ByteBuffer file = checkpoint_bytes(g, s);
    int status = write_file_atomically(path, file.bytes, file.used, err);
    free(file.bytes);
    return status;
}

/* ---- Reading -------------------------------------------------------------- */

// A cursor over bytes that cannot run past the end: a read beyond it
// returns zeros and clears `ok`, so a parser checks once, at the end.
typedef struct {
    const unsigned char *bytes;
    size_t size, at;
    int ok;
} ByteReader;

const unsigned char *take(ByteReader *r, size_t size) {
    if (!r->ok || size > r->size - r->at) {
        r->ok = 0;
        return NULL;
    }
    r->at += size;
    return r->bytes + r->at - size;
}

uint64_t take_uint(ByteReader *r, int bytes) {
    const unsigned char *in = take(r, (size_t)bytes);
    uint64_t value = 0;
    for (int i = 0; in && i < bytes; i++) value |= (uint64_t)in[i] << 8 * i;
    return value;
}

float take_f32(ByteReader *r) {
    uint32_t bits = (uint32_t)take_uint(r, 4);
    float value;
    memcpy(&value, &bits, 4);
    return value;
}

double take_f64(ByteReader *r) {
    uint64_t bits = take_uint(r, 8);
    double value;
    memcpy(&value, &bits, 8);
    return value;
}

// A name into `out` (of `capacity` bytes); a longer one than fits is damage.
void take_name(ByteReader *r, char *out, size_t capacity) {
    size_t length = (size_t)take_uint(r, 1);
    const unsigned char *letters = take(r, length);
    if (!letters || length >= capacity) {
        r->ok = 0;
        out[0] = '\0';
        return;
    }
    memcpy(out, letters, length);
    out[length] = '\0';
}

// Values that must be finite (weights, moments, losses): a NaN that passed
// the checksum was written by a bug, or made by hand.
int take_floats(ByteReader *r, float *out, size_t count) {
    int finite = 1;
    for (size_t i = 0; i < count; i++) {
        out[i] = take_f32(r);
        finite &= isfinite(out[i]) != 0;
    }
    return finite;
}

// A checkpoint file in memory, its framing checked: where each section's
// payload is, and the run it belongs to.
typedef struct {
    const char *path;
    unsigned char *bytes;
    size_t size;
    size_t payload_at[CHECKPOINT_SECTIONS], payload_size[CHECKPOINT_SECTIONS];
    RunKey key;
} CheckpointFile;

void checkpoint_file_free(CheckpointFile *f) {
    free(f->bytes);
    f->bytes = NULL;
}

//@ from 6 to 6
static const char CHECKPOINT_FIX[] = "Use a checkpoint this chapter wrote (under --checkpoints DIR, "
                                     "default checkpoints/).";
//@ end
//@ from 7
// Chapter 7 finds its checkpoints by their names: the fix is to move one.
static const char CHECKPOINT_FIX[] = "Move the file away (that run is then trained afresh), or give the "
                                     "comparison another --checkpoints DIR.";
//@ end

int damaged_header(const CheckpointFile *f, uint32_t sections, Error *err) {
    return fail(err, EXIT_CHECKPOINT_DAMAGED, "%s: the header says %u sections, but a checkpoint has %d: the "
                "file is damaged. %s", f->path, sections, CHECKPOINT_SECTIONS, CHECKPOINT_FIX);
}

int check_checkpoint_header(const CheckpointFile *f, Error *err) {
    // A file shorter than the magic number is not a checkpoint unless it is its start.
    if (memcmp(f->bytes, CHECKPOINT_MAGIC, f->size < 4 ? f->size : 4) != 0)
        return fail(err, EXIT_CHECKPOINT_NOT, "%s: not a checkpoint (it does not start with 'FMCK'). %s", f->path,
                    CHECKPOINT_FIX);
    if (f->size < 16)
        return fail(err, EXIT_CHECKPOINT_TRUNCATED, "%s: only %zu bytes, too short for a checkpoint's header; "
                    "the file is truncated. %s", f->path, f->size, CHECKPOINT_FIX);
    ByteReader r = {f->bytes + 4, 12, 0, 1};
    uint32_t version = (uint32_t)take_uint(&r, 4), chapter = (uint32_t)take_uint(&r, 4);
    uint32_t sections = (uint32_t)take_uint(&r, 4);
    if (version != CHECKPOINT_VERSION)
        return fail(err, EXIT_CHECKPOINT_VERSION, "%s: format version %u, but this program reads version %d%s. %s",
                    f->path, version, CHECKPOINT_VERSION, version > CHECKPOINT_VERSION ? " (a newer program wrote it)"
                    : " (an older program wrote it, before checkpoints recorded the data they were trained on)",
                    CHECKPOINT_FIX);
//@ from 7 to 7
    if (chapter == 6) return sections == CHECKPOINT_SECTIONS ? 0 : damaged_header(f, sections, err);
//@ end
//@ from 8 to 8
    if (chapter == 6 || chapter == 7) return sections == CHECKPOINT_SECTIONS ? 0 : damaged_header(f, sections, err);
//@ end
//@ from 9
    if (chapter >= 6 && chapter <= 8) return sections == CHECKPOINT_SECTIONS ? 0 : damaged_header(f, sections, err);
//@ end
    if (chapter != CHECKPOINT_CHAPTER)
        return fail(err, EXIT_CHECKPOINT_VERSION, "%s: written by chapter %u; this is chapter %d, and each chapter "
                    "reads only its own checkpoints. Use ./chapter%u with it.", f->path, chapter, CHECKPOINT_CHAPTER,
                    chapter);
    if (sections != CHECKPOINT_SECTIONS) return damaged_header(f, sections, err);
    return 0;
}

// Each section: the tag expected next, a length that fits, a checksum
// that matches. Then nothing may follow the last.
int check_checkpoint_sections(CheckpointFile *f, Error *err) {
    size_t at = 16;
    for (int which = 0; which < CHECKPOINT_SECTIONS; which++) {
        const char *tag = SECTION_TAGS[which];
        if (f->size - at < 8)
            return fail(err, EXIT_CHECKPOINT_TRUNCATED, "%s: the file ends before section %s: it is truncated. %s",
                        f->path, tag, CHECKPOINT_FIX);
        if (memcmp(f->bytes + at, tag, 4) != 0)
            return fail(err, EXIT_CHECKPOINT_DAMAGED, "%s: section %d should be '%s' but is not: the file is "
                        "damaged. %s", f->path, which + 1, tag, CHECKPOINT_FIX);
        ByteReader r = {f->bytes + at + 4, 4, 0, 1};
        size_t length = (size_t)take_uint(&r, 4);
        if (f->size - at - 8 < 4 || length > f->size - at - 8 - 4)
            return fail(err, EXIT_CHECKPOINT_TRUNCATED, "%s: section %s promises %zu bytes and a 4-byte checksum, "
                        "but only %zu bytes are left: the file is truncated. %s", f->path, tag, length,
                        f->size - at - 8, CHECKPOINT_FIX);
        ByteReader crc = {f->bytes + at + 8 + length, 4, 0, 1};
        if ((uint32_t)take_uint(&crc, 4) != crc32_update(0, f->bytes + at, 8 + length))
            return fail(err, EXIT_CHECKPOINT_DAMAGED, "%s: section %s fails its CRC-32 check: the bytes changed "
                        "after they were written (a flipped bit, an edit, a failing disk). %s", f->path, tag,
                        CHECKPOINT_FIX);
        f->payload_at[which] = at + 8;
        f->payload_size[which] = length;
        at += 8 + length + 4;
    }
    if (at != f->size)
        return fail(err, EXIT_CHECKPOINT_TRUNCATED, "%s: %zu bytes follow the last section; a checkpoint ends "
                    "there, so this file is longer than its sections (two files joined?). %s", f->path,
                    f->size - at, CHECKPOINT_FIX);
    return 0;
}

ByteReader section_reader(const CheckpointFile *f, int which) {
    return (ByteReader){f->bytes + f->payload_at[which], f->payload_size[which], 0, 1};
}

int damaged(const CheckpointFile *f, const char *what, Error *err) {
    return fail(err, EXIT_CHECKPOINT_DAMAGED, "%s: %s, which no run writes, though the checksums match: the "
                "file was made or edited by hand, or by a bug. %s", f->path, what, CHECKPOINT_FIX);
}

// The RUN section: the options, each in the range the option parser allows.
int read_run_key(CheckpointFile *f, Error *err) {
    ByteReader r = section_reader(f, SECTION_RUN);
    RunKey *k = &f->key;
    take_name(&r, k->model, sizeof k->model), take_name(&r, k->optimizer, sizeof k->optimizer);
    k->seed = (uint32_t)take_uint(&r, 4), k->batch = (uint32_t)take_uint(&r, 4), k->limit = (uint32_t)take_uint(&r, 4);
    k->epochs = (uint32_t)take_uint(&r, 4), k->patience = (uint32_t)take_uint(&r, 4);
    k->learning_rate = take_f64(&r);
//@ from 7
    k->augment = f->bytes[8] >= 7 ? (uint32_t)take_uint(&r, 4) : 0;  // byte 8: the chapter, 6 or 7 (checked)
//@ from 7 to 8
    if (k->augment > 1) return damaged(f, "the RUN section holds an option out of its range", err);
//@ end
//@ from 9
    if (k->augment > (f->bytes[8] == 9 ? 3u : 1u)) return damaged(f, "the RUN section holds an option out of its range", err);
//@ end
//@ end
//@ from 8
    // The data key's 12 bytes end the section; 4 more before them are the
    // precision, which chapter 8's files have had since it learned bf16.
//@ from 8 to 8
    k->precision = f->bytes[8] >= 8 && r.size - r.at == 16 ? (uint32_t)take_uint(&r, 4) : 0;
//@ end
//@ from 9
    int own = f->bytes[8] == 9;  // chapter 9's files always have the precision, and two options more
    k->precision = own || (f->bytes[8] == 8 && r.size - r.at == 16) ? (uint32_t)take_uint(&r, 4) : 0;
    k->weight_decay = own ? take_f64(&r) : 0;
    k->dropout = own ? take_f64(&r) : -1;
    k->classes = own ? (uint32_t)take_uint(&r, 4) : ALL_CLASSES, k->per_class = own ? (uint32_t)take_uint(&r, 4) : 0;
    k->freeze = own ? (uint32_t)take_uint(&r, 4) : 0, k->init_weights = own ? (uint32_t)take_uint(&r, 4) : 0;
    if (!(k->weight_decay >= 0 && k->weight_decay <= 1) || !(k->dropout == -1 || (k->dropout >= 0 && k->dropout <= 0.9)) ||
        k->classes == 0 || k->classes > ALL_CLASSES || k->per_class > 54000 || k->freeze > 1)
        return damaged(f, "the RUN section holds an option out of its range", err);
//@ end
    if (k->precision > 1) return damaged(f, "the RUN section holds an option out of its range", err);
//@ end
    k->data.train_count = (uint32_t)take_uint(&r, 4), k->data.validation_count = (uint32_t)take_uint(&r, 4);
    k->data.crc = (uint32_t)take_uint(&r, 4);
    if (!r.ok || r.at != r.size) return damaged(f, "the RUN section has the wrong length", err);
    if (!is_choice(k->optimizer, "adam|sgd") || k->seed > 2147483647u || k->batch < 1 || k->batch > 4096 ||
        k->limit > 54000 || k->data.train_count < 1 || k->data.train_count > 2147483647u ||
        (k->limit && k->data.train_count > k->limit) || k->data.validation_count < 1 ||
        k->data.validation_count > VALIDATION_COUNT || k->epochs < 1 || k->epochs > 1000 || k->patience < 1 || k->patience > 1000 ||
        !(k->learning_rate >= 1e-9 && k->learning_rate <= 10))
        return damaged(f, "the RUN section holds an option out of its range", err);
    if (!is_choice(k->model, MODEL_NAMES))
        return fail(err, EXIT_CHECKPOINT_MODEL, "%s: a checkpoint of a model named '%s', which this chapter does "
                    "not build (it builds %s): the checkpoint is of another model. %s", f->path, k->model,
                    MODEL_NAMES, CHECKPOINT_FIX);
    return 0;
}

// All that can be checked without a model: the header, every section's
// framing and checksum, the run's options.
int check_checkpoint(CheckpointFile *f, Error *err) {
    int status = check_checkpoint_header(f, err);
    if (!status) status = check_checkpoint_sections(f, err);
    if (!status) status = read_run_key(f, err);
    return status;
}

/* Reads the file, bounded, and checks it (check_checkpoint). On success
   f->bytes is the caller's to free (checkpoint_file_free). */
int open_checkpoint(const char *path, CheckpointFile *f, Error *err) {
    memset(f, 0, sizeof *f);
    f->path = path;
    FILE *file = NULL;
    if (open_regular_file(path, &file, EXIT_CHECKPOINT_UNREADABLE, CHECKPOINT_FIX, err)) return err->code;
    size_t capacity = 4096;
    f->bytes = xmalloc(capacity);
    int status = read_up_to(file, path, MAX_CHECKPOINT_BYTES + 1, &f->bytes, &capacity, &f->size, err);
    fclose(file);
    if (status == EXIT_MISSING) err->code = status = EXIT_CHECKPOINT_UNREADABLE;  // read_up_to's code is for data files
    else if (f->size > MAX_CHECKPOINT_BYTES)
        status = fail(err, EXIT_CHECKPOINT_UNREADABLE, "%s: more than %zu bytes, far more than a checkpoint "
                      "of this book's models: not a checkpoint. %s", path, MAX_CHECKPOINT_BYTES, CHECKPOINT_FIX);
    if (!status) status = check_checkpoint(f, err);
    if (status) checkpoint_file_free(f);
    return status;
}

/* ---- From the file to a snapshot, checked against the model --------------- */

// A tensor list must name the model's tensors, in its order, with its shapes.
int take_tensors(const CheckpointFile *f, ByteReader *r, const char *section, const Graph *g, float *params,
                 float *state, Error *err) {
    uint32_t count = (uint32_t)take_uint(r, 4), expected = 0;
    for (int i = 0; i < g->count; i++) expected += g->nodes[i].is_parameter || g->nodes[i].is_state;
    if (r->ok && count != expected)
        return fail(err, EXIT_CHECKPOINT_MODEL, "%s: section %s holds %u tensors, but the model '%s' has %u: "
                    "the checkpoint is of another model. %s", f->path, section, count, f->key.model, expected,
                    CHECKPOINT_FIX);
    for (int kind = TENSOR_PARAMETER; kind <= TENSOR_STATE; kind++) {
        float *values = kind == TENSOR_PARAMETER ? params : state;
        for (int i = 0; i < g->count; i++) {
            const Node *n = &g->nodes[i];
            if (kind == TENSOR_PARAMETER ? !n->is_parameter : !n->is_state) continue;
            char name[256];
            take_name(r, name, sizeof name);
            int same = (int)take_uint(r, 1) == kind && (int)take_uint(r, 1) == n->rank;
            for (int d = 0; d < n->rank; d++) same &= take_uint(r, 4) == (uint64_t)n->shape[d];
            if (!r->ok) return damaged(f, "a tensor list runs past its section", err);
            if (!same || strcmp(name, n->label) != 0)
                return fail(err, EXIT_CHECKPOINT_MODEL, "%s: section %s has tensor '%s' where the model has '%s' "
                            "of another name, kind or shape: the checkpoint is of another model. %s", f->path,
                            section, name, n->label, CHECKPOINT_FIX);
            if (!take_floats(r, values, n->size) && r->ok) return damaged(f, "a tensor holds a value that is not finite", err);
            values += n->size;
        }
    }
    return r->ok && r->at == r->size ? 0 : damaged(f, "a tensor list has the wrong length", err);
}

// A run's seconds, summed over all its sessions: more than a year of
// training is not a run of this book's, whatever the checksums say.
#define MAX_RUN_SECONDS (366.0 * 24 * 3600)

// The PROG section, against what the run's options allow: `batches` is the
// number of batches in one epoch of this run.
int take_progress(const CheckpointFile *f, int batches, RunState *run, Error *err) {
    ByteReader r = section_reader(f, SECTION_PROGRESS);
    run->epochs_done = (int)take_uint(&r, 4), run->epoch.batches_done = (int)take_uint(&r, 4);
    run->epoch.loss_sum = take_f64(&r);
    run->epoch.correct = (long)take_uint(&r, 8), run->epoch.seen = (long)take_uint(&r, 8);
    run->stopping = early_stopping_new((int)f->key.patience);
    run->stopping.best_loss = take_f32(&r), run->stopping.best_epoch = (int)take_uint(&r, 4);
    run->stopping.epochs_without_improvement = (int)take_uint(&r, 4);
    run->stopped = (int)take_uint(&r, 1), run->seconds = take_f64(&r);
    const EarlyStopping *s = &run->stopping;
    int consistent = r.ok && r.at == r.size && run->epochs_done >= 0 && run->epochs_done <= (int)f->key.epochs &&
        run->epoch.batches_done >= 0 && run->epoch.batches_done < batches &&
        (run->epoch.batches_done == 0 || run->epochs_done < (int)f->key.epochs) &&
        run->epoch.seen == (long)run->epoch.batches_done * (long)f->key.batch &&
        run->epoch.correct >= 0 && run->epoch.correct <= run->epoch.seen &&
        isfinite(run->epoch.loss_sum) && run->epoch.loss_sum >= 0 &&
        s->best_epoch >= 0 && s->best_epoch <= run->epochs_done && (s->best_epoch == 0) == (run->epochs_done == 0) &&
        (s->best_epoch ? isfinite(s->best_loss) && s->best_loss >= 0 : s->best_loss == INFINITY) &&
        s->epochs_without_improvement == run->epochs_done - s->best_epoch &&
        (run->stopped == 0 || (run->stopped == 1 && run->epoch.batches_done == 0)) &&
        run->stopped == (s->epochs_without_improvement >= s->patience) &&
        isfinite(run->seconds) && run->seconds >= 0 && run->seconds <= MAX_RUN_SECONDS;
    return consistent ? 0 : damaged(f, "the PROG section does not add up (epochs, batches, counters)", err);
}

/* The HIST section, each value in its range (losses are cross-entropies,
   never negative; accuracies are fractions), and in agreement with PROG:
   the best epoch is the first with the lowest validation loss (early
   stopping keeps a loss only when it is strictly lower), and the epochs'
   seconds add up to no more than the run's. */
int take_history(const CheckpointFile *f, int batches, const RunState *run, History *h, Error *err) {
    ByteReader r = section_reader(f, SECTION_HISTORY);
    int finite = 1, in_range = 1;
    double seconds = 0;
    const EarlyStopping *s = &run->stopping;
    h->epochs = run->epochs_done;
    for (int e = 0; e < h->epochs; e++) {
        float row[5];
        finite &= take_floats(&r, row, 5);
        h->train_loss[e] = row[0], h->train_accuracy[e] = row[1];
        h->validation_loss[e] = row[2], h->validation_accuracy[e] = row[3], h->seconds[e] = row[4];
        in_range &= row[0] >= 0 && row[1] >= 0 && row[1] <= 1 && row[2] >= 0 && row[3] >= 0 && row[3] <= 1 &&
                    row[4] >= 0;
        in_range &= e + 1 < s->best_epoch ? row[2] > s->best_loss : e + 1 == s->best_epoch ? row[2] == s->best_loss
                                                                                         : row[2] >= s->best_loss;
        seconds += row[4];
    }
    if (r.ok && finite && (!in_range || seconds > run->seconds * (1 + 1e-6) + 1e-3))
        return damaged(f, "the HIST section disagrees with PROG (the best epoch, its loss, the seconds) or holds "
                       "a value out of its range", err);
    long count = (long)take_uint(&r, 4);
    if (!r.ok || count != (long)run->epochs_done * batches + run->epoch.batches_done || count > h->batch_capacity)
        return damaged(f, "the HIST section does not match the run's epochs and batches", err);
    h->batch_count = (int)count;
    finite &= take_floats(&r, h->batch_losses, (size_t)count);
    if (!r.ok || r.at != r.size || !finite) return damaged(f, "the HIST section has the wrong length or a value that is not finite", err);
    return 0;
}

int take_adam(const CheckpointFile *f, const Graph *g, long steps, RunSnapshot *s, Error *err) {
    ByteReader r = section_reader(f, SECTION_ADAM);
    int adam = strcmp(f->key.optimizer, "adam") == 0;
    s->adam_step = (long)take_uint(&r, 8);
    size_t count = (size_t)take_uint(&r, 4);
    if (!r.ok || s->adam_step != (adam ? steps : 0) || count != (adam ? g->param_count : 0))
        return damaged(f, "the ADAM section does not match the run's steps or the model's size", err);
    int finite = take_floats(&r, s->adam_m, count) & take_floats(&r, s->adam_v, count);
    for (size_t i = 0; i < count && finite; i++) finite = s->adam_v[i] >= 0;
    if (!r.ok || r.at != r.size || !finite) return damaged(f, "the ADAM section has the wrong length or a bad moment", err);
    return 0;
}

void run_snapshot_free(RunSnapshot *s) {
    free(s->params);
    history_free(s->history);
    memset(s, 0, sizeof *s);
}

/* Everything after RUN, into a snapshot with memory of its own, checked
   against the model built for it (`g`) and `batches` per epoch. Nothing of
   the live run is touched: on failure the snapshot is freed, and the run
   is as it was. */
int read_run_snapshot(const CheckpointFile *f, const Graph *g, int batches, RunSnapshot *s, Error *err) {
    size_t P = g->param_count, S = g->state_count;
    memset(s, 0, sizeof *s);
    s->key = f->key;
    s->params = xmalloc((4 * P + 2 * S) * sizeof(float));  // params, state, m, v, best params, best state
    s->state = s->params + P, s->adam_m = s->state + S, s->adam_v = s->adam_m + P;
    s->best_params = s->adam_v + P, s->best_state = s->best_params + P;
    s->history = history_new((int)f->key.epochs, batches);
    ByteReader weights = section_reader(f, SECTION_WEIGHTS), best = section_reader(f, SECTION_BEST);
    int status = take_progress(f, batches, &s->run, err);
    if (!status) status = take_history(f, batches, &s->run, s->history, err);
    if (!status) status = take_tensors(f, &weights, "WGHT", g, s->params, s->state, err);
    if (!status) status = take_adam(f, g, (long)s->run.epochs_done * batches + s->run.epoch.batches_done, s, err);
    if (!status) status = take_tensors(f, &best, "BEST", g, s->best_params, s->best_state, err);
    if (status) run_snapshot_free(s);
    return status;
}
//@ end
