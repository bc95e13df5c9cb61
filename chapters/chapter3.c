/* chapter3.c - reverse-mode automatic differentiation, written by hand.

   What it adds: a small autodiff engine (nodes with a value, a gradient
   and the op that made them; a table of ops, each a forward and a backward
   function; a topological order; a backward pass that accumulates), a
   gradient checker in double precision, and the ANN of chapter 2 rebuilt
   on the engine and trained exactly as before.
   What it is not: a tensor library. The graph is built once and replayed
   for every batch; there is no broadcasting, no views, no dynamic shapes
   beyond the batch size.

   Build and run:   make chapter3 && ./chapter3        (./chapter3 --help)
              or:   cc -std=c11 -O3 chapters/chapter3.c -o chapter3 -lm
   Read with:       book.md, "Chapter 3: Automatic differentiation".

   Generated from src/ by `make chapters`; edit src/, not this file. */

// POSIX functions (open, fstat, isatty; threads in chapter 4) are used only
// where the system has them, inside `#if HAVE_POSIX`; this asks the C library
// to declare them, and changes nothing elsewhere.
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__unix__) || defined(__APPLE__)
#define HAVE_POSIX 1
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#else
#define HAVE_POSIX 0
#endif

// Arithmetic as written, with no multiply and add fused into one rounding
// behind our back: one reason fewer for two compilers or machines to print
// different numbers (expf and logf, which differ between C libraries, remain
// one). gcc -std=c11 already works this way (its default gnu mode needs
// -ffp-contract=off); clang, which would fuse on arm64, has to be told.
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* ----------------------------------------------------------------------------
   Exit codes: one per kind of failure, so a script (or a test) can tell them
   apart. This one table makes both the names the code uses and the list that
   `./chapterN --help` prints: EXIT_CODES(X) calls X once per row, and each
   use below passes an X that turns a row into what it needs (an enum
   constant, a row of EXIT_TABLE). A later chapter adds a failure by adding a
   row; the codes of earlier chapters never change. */

#define EXIT_CODES(X)                                                                       \
    X(EXIT_USAGE, 2, "a bad command-line option")                                           \
    X(EXIT_MISSING, 3, "a data file is missing, unreadable, or not a regular file")         \
    X(EXIT_GZIPPED, 4, "a data file is still gzip-compressed")                              \
    X(EXIT_BAD_MAGIC, 5, "a data file is not an IDX file of the expected kind")             \
    X(EXIT_BAD_SHAPE, 6, "the images are not 28x28")                                        \
    X(EXIT_BAD_LENGTH, 7, "a data file is truncated, or longer than its header says")       \
    X(EXIT_COUNT_MISMATCH, 8, "images and labels differ in number")                         \
    X(EXIT_BAD_LABEL, 9, "a label is outside 0-9")                                          \
    X(EXIT_WRITE, 10, "an output file, or the standard output, could not be written")       \
    X(EXIT_NO_MEMORY, 11, "out of memory")                                                  \
    X(EXIT_TOO_FEW, 14, "too few images: a split would be empty")                           \
    X(EXIT_NOT_LEARNING, 12, "--overfit never reached 100%")                                \
    X(EXIT_DIVERGED, 15, "training diverged: the loss is not a finite number")              \
    X(EXIT_BAD_GRADIENT, 13, "a self-check failed (the gradients, or engine vs chapter 2)") \
    X(EXIT_BUG, 70, "an internal check failed: a bug (70 is BSD's EX_SOFTWARE)")           \
    /* end of EXIT_CODES */

#define EXIT_CODE_AS_ENUM(name, code, meaning) name = code,
enum { EXIT_CODES(EXIT_CODE_AS_ENUM) };

typedef struct {
    int code;
    const char *name, *meaning;
} ExitCode;

#define EXIT_CODE_AS_ROW(name, code, meaning) {code, #name, meaning},
static const ExitCode EXIT_TABLE[] = {EXIT_CODES(EXIT_CODE_AS_ROW)};
enum { EXIT_TABLE_ROWS = sizeof EXIT_TABLE / sizeof EXIT_TABLE[0] };

// An error on its way up to main(): the exit code and a message that names
// the file, what was found and the fix. Functions that can fail on bad input
// fill one in and return its code, so nothing exits from deep inside.
typedef struct {
    int code;
    char message[640];
} Error;

int fail(Error *err, int code, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(err->message, sizeof err->message, format, args);
    va_end(args);
    err->code = code;
    return code;
}

// Out of memory is not something a user can fix by editing input, so it
// stops the program at once, naming the line that asked (as llm.c does).
void *malloc_check(size_t size, const char *file, int line) {
    void *memory = malloc(size ? size : 1);
    if (!memory) {
        fprintf(stderr, "%s:%d: out of memory allocating %zu bytes\n", file, line, size);
        exit(EXIT_NO_MEMORY);
    }
    return memory;
}
#define xmalloc(size) malloc_check((size), __FILE__, __LINE__)

// A broken promise between parts of the program (a batch larger than the
// buffers were made for, an op given inputs of the wrong shape) is a bug
// for the programmer to fix, not the user: stop with the file and line.
#define require(condition, ...)                                   \
    do {                                                          \
        if (!(condition)) {                                       \
            fprintf(stderr, "%s:%d: bug: ", __FILE__, __LINE__);  \
            fprintf(stderr, __VA_ARGS__);                         \
            fprintf(stderr, "\n");                                \
            exit(EXIT_BUG);                                       \
        }                                                         \
    } while (0)

// Wall-clock seconds (C11's timespec_get; clock() would count CPU time).
double now_seconds(void) {
    struct timespec t;
    timespec_get(&t, TIME_UTC);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// SplitMix64's finaliser (Steele, Lea and Flood, 2014): every input bit
// changes about half of the output bits, so structured numbers (a time, a
// counter, a key) come out well spread.
uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Writes `size` bytes to `path` through a temporary file and a rename, so a
   reader never sees half a file and a failed write leaves the old one intact.
   The temporary's name ends in 16 hex digits mixed from the clock and the
   address of a local variable (which differs from run to run where the
   system randomises addresses), and it is created with C11's "x" mode,
   which refuses a name that exists, a symlink included: a file or link
   planted under a guessed name is never followed, another name is tried.
   Any failure removes the temporary. */
int write_file_atomically(const char *path, const void *bytes, size_t size, Error *err) {
    char temp[1100];
    FILE *f = NULL;
    int local = 0;
    uint64_t noise = mix64((uint64_t)time(NULL)) ^ mix64((uint64_t)clock()) ^
                     mix64((uint64_t)(uintptr_t)&local) ^ mix64((uint64_t)(1e9 * now_seconds()));
    errno = 0;
    for (int attempt = 0; attempt < 100 && !f; attempt++) {
        snprintf(temp, sizeof temp, "%s.%016llx.tmp", path, (unsigned long long)mix64(noise + (uint64_t)attempt));
        errno = 0;
        f = fopen(temp, "wbx");
        if (!f && errno != EEXIST) break;
    }
    if (!f)
        return fail(err, EXIT_WRITE, "%s: cannot create a file there (%s); does the directory "
                    "exist, and may we write to it?", path, errno ? strerror(errno) : "no free name");
    errno = 0;
    int ok = fwrite(bytes, 1, size, f) == size;
    ok &= fclose(f) == 0;
    ok = ok && rename(temp, path) == 0;
    if (!ok) {
        int why = errno;
        remove(temp);
        return fail(err, EXIT_WRITE, "%s: writing failed (%s)", path, why ? strerror(why) : "disk full?");
    }
    return 0;
}

// Everything printed must reach its destination. A full disk or a closed
// pipe shows only when the buffered output is written, so main() ends with
// this. Returns the exit status to use.
int finish_output(const char *program, int status) {
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "%s: could not write the output (%s)\n", program,
                errno ? strerror(errno) : "write error");
        return status ? status : EXIT_WRITE;
    }
    return status;
}
/* ----------------------------------------------------------------------------
   Random numbers: PCG32 (O'Neill, pcg-random.org), with streams.

   What this is: our own generator, so the same seed gives the same numbers on
   every machine and C library (rand() promises neither), and separate
   streams, so that drawing one more number for, say, shuffling never shifts
   the numbers that initialise the weights or drop units out.
   What it is not: cryptographic.

   PCG32 is a 64-bit linear congruential generator whose output is scrambled
   by a xorshift and a data-dependent rotation. The increment of the LCG
   must be odd; each odd increment gives an independent sequence, a stream. */

typedef struct {
    uint64_t state;
    uint64_t increment;  // odd: (stream << 1) | 1
} Rng;

// One stream per use, so the uses never disturb each other.
enum { STREAM_INIT = 1, STREAM_SHUFFLE = 2, STREAM_CHECK = 4 };

#define PCG_MULTIPLIER 6364136223846793005ULL
// The output: the old state's 64 bits scrambled down to 32.
uint32_t rng_output(uint64_t old) {
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rotation = (uint32_t)(old >> 59u);
    return (xorshifted >> rotation) | (xorshifted << ((32u - rotation) & 31u));
}

uint32_t rng_next(Rng *r) {
    uint64_t old = r->state;
    r->state = old * PCG_MULTIPLIER + r->increment;
    return rng_output(old);
}

// The seeding of the reference implementation (pcg32_srandom_r).
Rng rng_new(uint64_t seed, uint64_t stream) {
    Rng r = {0, (stream << 1u) | 1u};
    rng_next(&r);
    r.state += seed;
    rng_next(&r);
    return r;
}

/* A keyed stream: the numbers for one purpose at one place in the run, for
   instance (seed, STREAM_SHUFFLE, epoch 3, 0), the order of epoch 3. Anyone
   can open it at any time, in any order, on any thread, and get the same
   numbers; nothing depends on what was drawn before. The key is mixed into
   the starting state; the purpose picks the stream. */
Rng rng_keyed(uint64_t seed, uint64_t purpose, uint64_t step, uint64_t item) {
    return rng_new(mix64(mix64(mix64(seed) ^ step) ^ item), purpose);
}

// Uniform in [0, 1): the top 24 bits, exactly representable in a float.
float rng_unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }
float rng_uniform(Rng *r) { return rng_unit(rng_next(r)); }

// Uniform integer in [0, bound), without the bias of rng_next() % bound:
// values below 2^32 mod bound are rejected, leaving a multiple of bound.
uint32_t rng_below(Rng *r, uint32_t bound) {
    uint32_t threshold = (0u - bound) % bound;
    for (;;) {
        uint32_t x = rng_next(r);
        if (x >= threshold) return x % bound;
    }
}

// Fisher-Yates: every permutation equally likely.
void shuffle(int *items, int n, Rng *r) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(r, (uint32_t)i + 1);
        int t = items[i];
        items[i] = items[j];
        items[j] = t;
    }
}
/* ----------------------------------------------------------------------------
   The IDX format (book.md, "Chapter 1").

   What this is: a reader for the four Fashion-MNIST files, which checks every
   promise the header makes before trusting a byte of the body, and turns the
   bytes into the arrays the networks eat.
   What it is not: a general IDX reader. It accepts unsigned-byte images of
   28x28 and unsigned-byte labels, the only kinds this book needs.

   An IDX file is a big-endian header followed by raw bytes:
       bytes 0-1   zero
       byte  2     element type (0x08 = unsigned byte)
       byte  3     rank: 3 for images (count, rows, cols), 1 for labels
       then one 4-byte big-endian size per dimension, then the data.
   So the magic number, read as one big-endian int, is 0x00000803 = 2051 for
   images and 0x00000801 = 2049 for labels. */

enum { IMAGE_ROWS = 28, IMAGE_COLS = 28, IMAGE_SIZE = IMAGE_ROWS * IMAGE_COLS, NUM_CLASSES = 10 };
enum { IDX_IMAGES_MAGIC = 2051, IDX_LABELS_MAGIC = 2049 };

static const char *const CLASS_NAMES[NUM_CLASSES] = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
};

// The byte order of the file, not of this machine: most significant first.
uint32_t read_big_endian_u32(const unsigned char *bytes) {
    return (uint32_t)bytes[0] << 24 | (uint32_t)bytes[1] << 16 |
           (uint32_t)bytes[2] << 8 | (uint32_t)bytes[3];
}

/* Opens a file for reading, refusing anything but a regular file: a
   FIFO would block the program forever, and a device such as /dev/zero
   never ends. Under POSIX the file is opened without blocking (a FIFO with
   no writer would block in fopen itself), asked what it is (fstat), and
   only then handed to stdio; elsewhere fopen is all there is. The message
   carries the system's reason (no such file, permission denied, ...), the
   exit code is the caller's, and so is the fix the message ends with. */
int open_regular_file(const char *path, FILE **file, int code, const char *fix, Error *err) {
#if HAVE_POSIX
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) return fail(err, code, "%s: cannot open the file (%s). %s", path, strerror(errno), fix);
    struct stat info;
    memset(&info, 0, sizeof info);
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
        close(fd);
        return fail(err, code, "%s: not a regular file (%s). %s", path,
                    S_ISDIR(info.st_mode) ? "a directory" : "a pipe, a device or a socket", fix);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    *file = fdopen(fd, "rb");
    if (!*file) close(fd);
#else
    *file = fopen(path, "rb");
#endif
    if (!*file) return fail(err, code, "%s: cannot open the file (%s). %s", path, strerror(errno), fix);
    return 0;
}

int open_data_file(const char *path, FILE **file, Error *err) {
    return open_regular_file(path, file, EXIT_MISSING, "Run `make data` to fetch Fashion-MNIST, "
                             "or pass --data DIR for a directory that holds it.", err);
}

// Reads until `limit` bytes are in the buffer or the file ends, growing the
// buffer as it goes, so a header that promises 4 GB costs nothing until the
// bytes are really there. Returns 0, or an error code.
int read_up_to(FILE *f, const char *path, size_t limit, unsigned char **buffer, size_t *capacity,
               size_t *used, Error *err) {
    while (*used < limit) {
        if (*used == *capacity) {
            size_t larger_capacity = *capacity * 2 > limit ? limit : *capacity * 2;
            unsigned char *larger = realloc(*buffer, larger_capacity);
            if (!larger) return fail(err, EXIT_NO_MEMORY, "%s: out of memory reading the file", path);
            *buffer = larger;
            *capacity = larger_capacity;
        }
        size_t got = fread(*buffer + *used, 1, *capacity - *used, f);
        *used += got;
        if (got == 0) break;
    }
    if (ferror(f)) return fail(err, EXIT_MISSING, "%s: the file could not be read to the end (%s)", path, strerror(errno));
    return 0;
}

// How many bytes an IDX file whose first bytes are `bytes` should have, or
// 0 when these bytes are not yet a header of the `magic` kind (in which
// case check_idx_header says what is wrong).
size_t idx_expected_size(const unsigned char *bytes, size_t size, uint32_t magic) {
    if (size < 8 || read_big_endian_u32(bytes) != magic) return 0;
    size_t header = 4 + 4 * (size_t)bytes[3], items = magic == IDX_IMAGES_MAGIC ? IMAGE_SIZE : 1;
    return header + (size_t)read_big_endian_u32(bytes + 4) * items;
}

/* Reads an IDX file of the `magic` kind into memory, never more than its
   header promises plus one byte (the byte that tells a file that is too
   long). On success *bytes is the caller's to free; check_idx_header then
   checks what was read. */
int read_idx_file(const char *path, uint32_t magic, unsigned char **bytes, size_t *size, Error *err) {
    enum { LONGEST_HEADER = 16 };  // images: magic, count, rows, columns
    FILE *f = NULL;
    if (open_data_file(path, &f, err)) return err->code;
    size_t capacity = LONGEST_HEADER, used = 0;
    unsigned char *buffer = xmalloc(capacity);
    int status = read_up_to(f, path, LONGEST_HEADER, &buffer, &capacity, &used, err);
    size_t expected = idx_expected_size(buffer, used, magic);
    if (!status && expected >= used) status = read_up_to(f, path, expected + 1, &buffer, &capacity, &used, err);
    fclose(f);
    if (status) {
        free(buffer);
        return status;
    }
    *bytes = buffer;
    *size = used;
    return 0;
}
// Checks an IDX header against what we expect: the magic number, the rank,
// and (for images) 28x28. On success *count is the first dimension and
// *body the offset of the data. Every check names the file and the fix.
// The magic number's third byte is the element type and its fourth the
// rank, so checking the whole magic (2051 or 2049) checks both at once; the
// rank also fixes where the header ends.
int check_idx_header(const char *path, const unsigned char *bytes, size_t size,
                     uint32_t magic, uint32_t *count, size_t *body, Error *err) {
    const char *kind = magic == IDX_IMAGES_MAGIC ? "images" : "labels";
    if (size >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b)
        return fail(err, EXIT_GZIPPED, "%s: the file is still gzip-compressed. Decompress it: "
                    "`mv %s %s.gz && gunzip %s.gz` (or run `make data`, which does).", path, path, path, path);
    if (size < 4)
        return fail(err, EXIT_BAD_LENGTH, "%s: only %zu bytes, too short for an IDX header; "
                    "the download was cut short. Delete it and run `make data`.", path, size);
    uint32_t found = read_big_endian_u32(bytes);
    if (found != magic)
        return fail(err, EXIT_BAD_MAGIC, "%s: magic number %u (0x%08x), expected %u for IDX %s. "
                    "This is not the right file; check the name or run `make data`.",
                    path, found, found, magic, kind);
    size_t rank = bytes[3], header = 4 + 4 * rank;
    if (size < header)
        return fail(err, EXIT_BAD_LENGTH, "%s: the header is cut short (%zu of %zu bytes). "
                    "Delete the file and run `make data`.", path, size, header);
    *count = read_big_endian_u32(bytes + 4);
    if (magic == IDX_IMAGES_MAGIC) {
        uint32_t rows = read_big_endian_u32(bytes + 8), cols = read_big_endian_u32(bytes + 12);
        if (rows != IMAGE_ROWS || cols != IMAGE_COLS)
            return fail(err, EXIT_BAD_SHAPE, "%s: images of %ux%u, expected %dx%d. This is not "
                        "Fashion-MNIST; run `make data`.", path, rows, cols, IMAGE_ROWS, IMAGE_COLS);
    }
    *body = header;
    size_t items = magic == IDX_IMAGES_MAGIC ? IMAGE_SIZE : 1;
    size_t expected = header + (size_t)*count * items;
    if (size < expected)
        return fail(err, EXIT_BAD_LENGTH, "%s: %zu bytes, but the header promises %zu (%u %s): "
                    "the file is truncated. Delete it and run `make data`.", path, size, expected,
                    *count, kind);
    if (size > expected)
        return fail(err, EXIT_BAD_LENGTH, "%s: more bytes than the %zu the header promises (%u %s): "
                    "the file is too long. Delete it and run `make data`.", path, expected, *count, kind);
    return 0;
}

// A labelled set of images. A split of a dataset is a Dataset too: the same
// arrays, offset, so splitting copies nothing.
typedef struct {
    int count;
    float *images;          // (count, 784) pixels in [0,1], row-major 28x28
    unsigned char *labels;  // (count) class index 0-9
    float *targets;         // (count, 10) one-hot: targets[i][labels[i]] = 1
} Dataset;

// The images and labels of one split (e.g. "train" or "t10k"), checked
// against each other and turned into floats and one-hot targets.
int load_dataset(const char *dir, const char *split, Dataset *out, Error *err) {
    char image_path[1024], label_path[1024];
    snprintf(image_path, sizeof image_path, "%s/%s-images-idx3-ubyte", dir, split);
    snprintf(label_path, sizeof label_path, "%s/%s-labels-idx1-ubyte", dir, split);
    unsigned char *image_bytes = NULL, *label_bytes = NULL;
    size_t image_size = 0, label_size = 0, image_body = 0, label_body = 0;
    uint32_t image_count = 0, label_count = 0;
    err->code = 0;
    if (read_idx_file(image_path, IDX_IMAGES_MAGIC, &image_bytes, &image_size, err) ||
        check_idx_header(image_path, image_bytes, image_size, IDX_IMAGES_MAGIC,
                         &image_count, &image_body, err) ||
        read_idx_file(label_path, IDX_LABELS_MAGIC, &label_bytes, &label_size, err) ||
        check_idx_header(label_path, label_bytes, label_size, IDX_LABELS_MAGIC,
                         &label_count, &label_body, err)) {
        free(image_bytes);
        free(label_bytes);
        return err->code;
    }
    if (image_count != label_count) {
        fail(err, EXIT_COUNT_MISMATCH, "%s has %u images but %s has %u labels. The two files "
             "come from different sets; run `make data`.", image_path, image_count,
             label_path, label_count);
    } else {
        for (uint32_t i = 0; i < label_count; i++) {
            unsigned label = label_bytes[label_body + i];
            if (label >= NUM_CLASSES) {
                fail(err, EXIT_BAD_LABEL, "%s: label %u of item %u is outside 0-9. The file is "
                     "corrupt; delete it and run `make data`.", label_path, label, i);
                break;
            }
        }
    }
    if (err->code == 0) {
        int n = (int)image_count;
        out->count = n;
        out->images = xmalloc((size_t)n * IMAGE_SIZE * sizeof(float));
        out->labels = xmalloc((size_t)n);
        out->targets = xmalloc((size_t)n * NUM_CLASSES * sizeof(float));
        for (size_t i = 0; i < (size_t)n * IMAGE_SIZE; i++)
            out->images[i] = image_bytes[image_body + i] / 255.0f;
        memcpy(out->labels, label_bytes + label_body, (size_t)n);
        memset(out->targets, 0, (size_t)n * NUM_CLASSES * sizeof(float));
        for (int i = 0; i < n; i++) out->targets[i * NUM_CLASSES + out->labels[i]] = 1.0f;
    }
    free(image_bytes);
    free(label_bytes);
    return err->code;
}

void free_dataset(Dataset *d) {
    free(d->images);
    free(d->labels);
    free(d->targets);
    *d = (Dataset){0};
}

// Items [first, first + count) of a dataset, sharing its memory.
Dataset dataset_slice(const Dataset *d, int first, int count) {
    return (Dataset){
        .count = count,
        .images = d->images + (size_t)first * IMAGE_SIZE,
        .labels = d->labels + first,
        .targets = d->targets + (size_t)first * NUM_CLASSES,
    };
}

/* The other way: the bytes of an IDX image file holding d's images, the
   header (magic, count, rows, columns, each big-endian) and then one byte
   a pixel, 255 x rounded to the nearest, x clamped to [0, 1] first. With
   `out` NULL it writes nothing and returns the size; else it fills `out`
   (that many bytes) and returns the same. */
size_t encode_idx_images(const Dataset *d, unsigned char *out) {
    size_t pixels = (size_t)d->count * IMAGE_SIZE, header_size = 16;
    if (out) {
        const uint32_t fields[4] = {IDX_IMAGES_MAGIC, (uint32_t)d->count, IMAGE_ROWS, IMAGE_COLS};
        for (int f = 0; f < 4; f++)
            for (int byte = 0; byte < 4; byte++)
                out[4 * f + byte] = (unsigned char)(fields[f] >> (8 * (3 - byte)) & 0xFF);
        for (size_t i = 0; i < pixels; i++) {
            float x = fminf(1.0f, fmaxf(0.0f, d->images[i]));
            out[header_size + i] = (unsigned char)lroundf(255.0f * x);
        }
    }
    return header_size + pixels;
}

/* The protocol's split: validation is the last 6,000 training images (the
   Keras validation_split=0.1 convention), training the first 54,000. The
   test set stays untouched until the very end. */
enum { VALIDATION_COUNT = 6000 };

typedef struct {
    Dataset all_training;  // owns the memory of train and validation
    Dataset train, validation, test;
} FashionMnist;

void free_fashion_mnist(FashionMnist *data) {
    free_dataset(&data->all_training);
    free_dataset(&data->test);
}

int load_fashion_mnist(const char *dir, FashionMnist *data, Error *err) {
    *data = (FashionMnist){0};
    if (load_dataset(dir, "train", &data->all_training, err)) return err->code;
    if (load_dataset(dir, "t10k", &data->test, err)) {
        free_dataset(&data->all_training);
        return err->code;
    }
    int n = data->all_training.count;
    int validation = n > VALIDATION_COUNT ? VALIDATION_COUNT : n / 10;
    // An empty split trains on nothing, or reports an accuracy of 0 images.
    if (validation == 0 || data->test.count == 0) {
        fail(err, EXIT_TOO_FEW, "%s/%s-images-idx3-ubyte: %d images; at least %d are needed "
             "(a tenth is held out for validation, and the test set must not be empty). Run "
             "`make data`, or pass --data DIR for a directory with more.", dir,
             validation == 0 ? "train" : "t10k", validation == 0 ? n : 0, validation == 0 ? 10 : 1);
        free_fashion_mnist(data);
        return err->code;
    }
    data->train = dataset_slice(&data->all_training, 0, n - validation);
    data->validation = dataset_slice(&data->all_training, n - validation, validation);
    return 0;
}
/* ----------------------------------------------------------------------------
   Pictures: images in the terminal and in PGM/PPM files.

   What this is: the smallest way to look at data without a library. PGM
   (grey) and PPM (colour) are a text header and raw bytes, which every image
   viewer and `convert` read; a 5x7 pixel font puts labels on them.
   What it is not: a plotting library. Curves are left to gnuplot (chapter 7).

   A binary PGM is "P5\n<width> <height>\n255\n" followed by width*height
   bytes, row by row; a PPM is the same with "P6" and three bytes (R,G,B)
   per pixel. */

typedef struct {
    int width, height, channels;  // channels: 1 grey (PGM), 3 colour (PPM)
    unsigned char *pixels;        // (height, width, channels)
} Picture;

Picture picture_new(int width, int height, int channels, unsigned char background) {
    Picture p = {.width = width, .height = height, .channels = channels};
    size_t size = (size_t)width * height * channels;
    p.pixels = xmalloc(size);
    memset(p.pixels, background, size);
    return p;
}

void picture_free(Picture *p) {
    free(p->pixels);
    p->pixels = NULL;
}

// Sets a square of scale x scale pixels to one colour (grey: colour[0]).
void picture_put(Picture *p, int x, int y, int scale, const unsigned char *colour) {
    for (int dy = 0; dy < scale; dy++)
        for (int dx = 0; dx < scale; dx++) {
            int px = x + dx, py = y + dy;
            if (px < 0 || py < 0 || px >= p->width || py >= p->height) continue;
            memcpy(p->pixels + ((size_t)py * p->width + px) * p->channels, colour, p->channels);
        }
}

// Draws a 28x28 image with pixels in [0,1], each pixel as scale x scale.
void picture_draw_image(Picture *p, int x, int y, int scale, const float *image) {  // (28,28)
    for (int r = 0; r < IMAGE_ROWS; r++)
        for (int c = 0; c < IMAGE_COLS; c++) {
            unsigned char v = (unsigned char)lroundf(255.0f * image[r * IMAGE_COLS + c]);
            unsigned char colour[3] = {v, v, v};
            picture_put(p, x + c * scale, y + r * scale, scale, colour);
        }
}

/* A 5x7 font: seven rows per character, the five low bits of each row are
   its pixels, most significant on the left. Lower case is drawn as upper. */
enum { GLYPH_WIDTH = 5, GLYPH_HEIGHT = 7, GLYPH_ADVANCE = 6 };
static const unsigned char FONT[128][GLYPH_HEIGHT] = {
    ['A'] = {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}, ['B'] = {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},
    ['C'] = {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}, ['D'] = {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C},
    ['E'] = {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}, ['F'] = {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},
    ['G'] = {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}, ['H'] = {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},
    ['I'] = {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}, ['J'] = {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},
    ['K'] = {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}, ['L'] = {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},
    ['M'] = {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}, ['N'] = {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},
    ['O'] = {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, ['P'] = {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},
    ['Q'] = {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}, ['R'] = {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},
    ['S'] = {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}, ['T'] = {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},
    ['U'] = {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}, ['V'] = {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},
    ['W'] = {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}, ['X'] = {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},
    ['Y'] = {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04}, ['Z'] = {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},
    ['0'] = {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, ['1'] = {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
    ['2'] = {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, ['3'] = {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
    ['4'] = {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, ['5'] = {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
    ['6'] = {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, ['7'] = {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
    ['8'] = {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, ['9'] = {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},
    ['-'] = {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}, ['/'] = {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00},
    ['.'] = {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}, [':'] = {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00},
    ['%'] = {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}, ['='] = {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00},
};

// Draws text with its top-left corner at (x, y); each font pixel is
// scale x scale. Returns the x just after the last character.
int picture_draw_text(Picture *p, int x, int y, int scale, const char *text,
                      const unsigned char *colour) {
    for (; *text; text++, x += GLYPH_ADVANCE * scale) {
        unsigned char ch = (unsigned char)*text;
        if (ch >= 'a' && ch <= 'z') ch = (unsigned char)(ch - 'a' + 'A');
        if (ch >= 128) continue;
        for (int row = 0; row < GLYPH_HEIGHT; row++)
            for (int col = 0; col < GLYPH_WIDTH; col++)
                if (FONT[ch][row] >> (GLYPH_WIDTH - 1 - col) & 1)
                    picture_put(p, x + col * scale, y + row * scale, scale, colour);
    }
    return x;
}

int picture_write(const Picture *p, const char *path, Error *err) {
    char header[64];
    int header_size = snprintf(header, sizeof header, "P%d\n%d %d\n255\n",
                               p->channels == 1 ? 5 : 6, p->width, p->height);
    size_t body = (size_t)p->width * p->height * p->channels;
    unsigned char *file = xmalloc(header_size + body);
    memcpy(file, header, header_size);
    memcpy(file + header_size, p->pixels, body);
    int status = write_file_atomically(path, file, header_size + body, err);
    free(file);
    return status;
}

/* In the terminal: one character per pixel pair. Two image rows are averaged
   into one text row, because a character cell is about twice as tall as it is
   wide; the ramp runs from dark (space) to bright (@). */
void print_images_as_text(const Dataset *d, const int *items, int n) {
    static const char RAMP[] = " .:-=+*#%@";
    const int levels = (int)sizeof RAMP - 1;
    for (int i = 0; i < n; i++)
        printf("%-*.*s", IMAGE_COLS + 2, IMAGE_COLS, CLASS_NAMES[d->labels[items[i]]]);
    printf("\n");
    for (int r = 0; r < IMAGE_ROWS; r += 2) {
        for (int i = 0; i < n; i++) {
            const float *image = d->images + (size_t)items[i] * IMAGE_SIZE;  // (28,28)
            for (int c = 0; c < IMAGE_COLS; c++) {
                float v = 0.5f * (image[r * IMAGE_COLS + c] + image[(r + 1) * IMAGE_COLS + c]);
                int level = (int)(v * levels);
                putchar(RAMP[level < levels ? level : levels - 1]);
            }
            printf("  ");
        }
        printf("\n");
    }
}
/* ----------------------------------------------------------------------------
   A first look at the data: shapes, class counts, pixel statistics, a few
   images in the terminal and a labelled sample grid on disk.

   What this is: the checks to make before training anything, because a model
   trained on the wrong data fails quietly.
   What it is not: a data pipeline; nothing here changes the data. */

void print_split_shape(const char *name, const Dataset *d) {
    printf("  %-10s images (%d, %d) float in [0,1]   labels (%d,) 0-9   targets (%d, %d) one-hot\n",
           name, d->count, IMAGE_SIZE, d->count, d->count, NUM_CLASSES);
}

void count_classes(const Dataset *d, int *counts) {  // counts: (10)
    memset(counts, 0, NUM_CLASSES * sizeof(int));
    for (int i = 0; i < d->count; i++) counts[d->labels[i]]++;
}

void print_class_counts(const FashionMnist *data) {
    const Dataset *splits[] = {&data->train, &data->validation, &data->test};
    const char *names[] = {"train", "validation", "test"};
    printf("\nimages per class:\n  %-13s %8s %11s %8s\n", "class", names[0], names[1], names[2]);
    int counts[3][NUM_CLASSES];
    for (int s = 0; s < 3; s++) count_classes(splits[s], counts[s]);
    for (int k = 0; k < NUM_CLASSES; k++)
        printf("  %d %-11s %8d %11d %8d\n", k, CLASS_NAMES[k], counts[0][k], counts[1][k], counts[2][k]);
}

// Mean and standard deviation of all pixels, summed in double: a float sum of
// 42 million values would lose the low digits long before the end.
void pixel_statistics(const Dataset *d, double *mean, double *std) {
    double sum = 0, sum_squares = 0;
    size_t n = (size_t)d->count * IMAGE_SIZE;
    for (size_t i = 0; i < n; i++) {
        sum += d->images[i];
        sum_squares += (double)d->images[i] * d->images[i];
    }
    *mean = n ? sum / n : 0;
    *std = n ? sqrt(fmax(0, sum_squares / n - *mean * *mean)) : 0;
}

/* Welford's running mean and variance: one value at a time, in one pass.
   The sum of squares above is fine for pixels in [0, 1], but its
   sum_squares / n - mean^2 subtracts two nearly equal numbers when the
   mean is large against the spread, and loses every digit; Welford's
   update never forms them. `m2` is the sum of the squared deviations from
   the mean so far. */
typedef struct {
    long count;
    double mean, m2;
} RunningStats;

void running_stats_add(RunningStats *s, double x) {
    double before = x - s->mean;
    s->count += 1;
    s->mean += before / (double)s->count;
    s->m2 += before * (x - s->mean);
}

// The variance of the values so far, divided by their count as
// pixel_statistics does (0 for none).
double running_stats_variance(const RunningStats *s) { return s->count > 0 ? s->m2 / (double)s->count : 0; }

// The first `per_class` training images of every class, one row per class,
// each row headed by the class name.
int write_sample_grid(const Dataset *d, int per_class, const char *path, Error *err) {
    const int scale = 2, cell = (IMAGE_COLS + 2) * scale, label_width = 12 * GLYPH_ADVANCE * scale;
    Picture p = picture_new(label_width + per_class * cell, NUM_CLASSES * cell, 1, 0);
    const unsigned char white[1] = {255};
    for (int k = 0; k < NUM_CLASSES; k++) {
        int y = k * cell;
        picture_draw_text(&p, scale, y + (cell - GLYPH_HEIGHT * scale) / 2, scale, CLASS_NAMES[k], white);
        for (int i = 0, shown = 0; i < d->count && shown < per_class; i++)
            if (d->labels[i] == k)
                picture_draw_image(&p, label_width + shown++ * cell + scale, y + scale, scale,
                                   d->images + (size_t)i * IMAGE_SIZE);
    }
    int status = picture_write(&p, path, err);
    picture_free(&p);
    return status;
}
/* ----------------------------------------------------------------------------
   Command-line options.

   What this is: one table of options, from which both the parser and the
   --help text are made, so the two cannot disagree. A later chapter adds an
   option by adding a row.
   What it is not: getopt. Options are long (--name value), and every number
   is checked against its range. */

typedef struct {
    const char *data_dir;
    int help;
    int epochs, batch, seed, limit, overfit;
    double learning_rate;  // 0 until parsed: then the optimiser's default
    const char *optimizer;
    int no_compare;
} Options;

Options default_options(void) {
    return (Options){
        .data_dir = "data",
        .batch = 64, .seed = 1, .optimizer = "adam",
        .epochs = 10,
    };
}

typedef enum { OPTION_FLAG, OPTION_INT, OPTION_REAL, OPTION_TEXT } OptionKind;

typedef struct {
    const char *name, *value_name, *help;
    OptionKind kind;
    void *target;       // where the parsed value goes: int*, double* or const char**
    double min, max;    // the accepted range of a number
    const char *choices;  // for text: the accepted words, "a|b", or NULL for any
} OptionSpec;

enum { MAX_OPTIONS = 32 };

// The table. Its targets point into *o, so it is made for each parse.
int option_table(Options *o, OptionSpec *specs) {
    int n = 0;
    specs[n++] = (OptionSpec){.name = "--data", .value_name = "DIR", .help = "where the four IDX files are (default: data)",
                              .kind = OPTION_TEXT, .target = &o->data_dir};
    specs[n++] = (OptionSpec){.name = "--epochs", .value_name = "N", .help = "training epochs (default: 10)",
                              .kind = OPTION_INT, .target = &o->epochs, .min = 1, .max = 1000};
    specs[n++] = (OptionSpec){.name = "--batch", .value_name = "N", .help = "images per mini-batch (default: 64)",
                              .kind = OPTION_INT, .target = &o->batch, .min = 1, .max = 4096};
    specs[n++] = (OptionSpec){.name = "--lr", .value_name = "RATE", .help = "learning rate (default: 0.001 for adam, 0.01 for sgd)",
                              .kind = OPTION_REAL, .target = &o->learning_rate, .min = 1e-9, .max = 10};
    specs[n++] = (OptionSpec){.name = "--optimizer", .value_name = "NAME", .help = "adam or sgd (default: adam)",
                              .kind = OPTION_TEXT, .target = &o->optimizer, .choices = "adam|sgd"};
    specs[n++] = (OptionSpec){.name = "--seed", .value_name = "N", .help = "seed of every random stream (default: 1)",
                              .kind = OPTION_INT, .target = &o->seed, .min = 0, .max = 2147483647};
    specs[n++] = (OptionSpec){.name = "--limit", .value_name = "N", .help = "train on the first N training images only",
                              .kind = OPTION_INT, .target = &o->limit, .min = 1, .max = 54000};
    specs[n++] = (OptionSpec){.name = "--overfit", .value_name = "N", .help = "train on N images until all are right (a debugging check)",
                              .kind = OPTION_INT, .target = &o->overfit, .min = 1, .max = 54000};
    specs[n++] = (OptionSpec){.name = "--no-compare", .value_name = NULL, .help = "skip the second training run with chapter 2's hand-written ANN",
                              .kind = OPTION_FLAG, .target = &o->no_compare};
    specs[n++] = (OptionSpec){.name = "--help", .value_name = NULL, .help = "print this help and exit",
                              .kind = OPTION_FLAG, .target = &o->help};
    return n;
}

void print_usage(FILE *out, const char *program) {
    Options scratch;
    OptionSpec specs[MAX_OPTIONS];
    int n = option_table(&scratch, specs);
    fprintf(out, "usage: %s [options]\n\noptions:\n", program);
    for (int i = 0; i < n; i++) {
        char left[40];
        snprintf(left, sizeof left, "%s %s", specs[i].name, specs[i].value_name ? specs[i].value_name : "");
        fprintf(out, "  %-20s %s\n", left, specs[i].help);
    }
    fprintf(out, "\nexit codes:\n    0  success\n");
    for (int code = 1; code < 256; code++)  // in order of code, whatever the table's order
        for (int i = 0; i < EXIT_TABLE_ROWS; i++)
            if (EXIT_TABLE[i].code == code) fprintf(out, "  %3d  %s\n", code, EXIT_TABLE[i].meaning);
}

// Is `word` one of the '|'-separated words in `choices`?
int is_choice(const char *word, const char *choices) {
    size_t length = strlen(word);
    for (const char *c = choices; *c; c += strcspn(c, "|"), c += *c == '|')
        if (strcspn(c, "|") == length && strncmp(c, word, length) == 0) return 1;
    return 0;
}

int parse_option_value(const OptionSpec *spec, const char *text, Error *err) {
    char *end = NULL;
    if (spec->kind == OPTION_TEXT) {
        // "--plots --help" means a forgotten value, not a directory named --help.
        if (!spec->choices && strncmp(text, "--", 2) == 0) {
            int path = strcmp(spec->value_name, "DIR") == 0 || strcmp(spec->value_name, "FILE") == 0;
            return fail(err, EXIT_USAGE, "%s needs a value (%s), but the next word, '%s', looks like an option%s%s",
                        spec->name, spec->value_name, text,
                        path ? "; to name a file or directory that begins with --, write ./" : "", path ? text : "");
        }
        if (*text == '\0')  // an empty DIR or FILE would be the current directory, or no file at all
            return fail(err, EXIT_USAGE, "%s needs a value (%s), not an empty word", spec->name, spec->value_name);
        if (spec->choices && !is_choice(text, spec->choices))
            return fail(err, EXIT_USAGE, "%s takes one of %s, not '%s'", spec->name, spec->choices, text);
        *(const char **)spec->target = text;
        return 0;
    }
    double value = strtod(text, &end);
    if (end == text || *end != '\0' || !(value >= spec->min && value <= spec->max))
        return fail(err, EXIT_USAGE, "%s takes a number from %g to %g, not '%s'",
                    spec->name, spec->min, spec->max, text);
    if (spec->kind == OPTION_REAL) {
        *(double *)spec->target = value;
        return 0;
    }
    if (value != floor(value))
        return fail(err, EXIT_USAGE, "%s takes a whole number, not '%s'", spec->name, text);
    *(int *)spec->target = (int)value;
    return 0;
}

int parse_options(int argc, char **argv, Options *o, Error *err) {
    *o = default_options();
    OptionSpec specs[MAX_OPTIONS];
    int n = option_table(o, specs);
    for (int a = 1; a < argc; a++) {
        const OptionSpec *spec = NULL;
        for (int i = 0; i < n && !spec; i++)
            if (strcmp(argv[a], specs[i].name) == 0) spec = &specs[i];
        if (!spec) return fail(err, EXIT_USAGE, "unknown option '%s'", argv[a]);
        if (spec->kind == OPTION_FLAG) {
            *(int *)spec->target = 1;
            continue;
        }
        if (a + 1 >= argc) return fail(err, EXIT_USAGE, "%s needs a value (%s)", spec->name, spec->value_name);
        if (parse_option_value(spec, argv[++a], err)) return err->code;
    }
    if (o->learning_rate == 0) o->learning_rate = strcmp(o->optimizer, "sgd") == 0 ? 0.01 : 0.001;
    return 0;
}
/* ----------------------------------------------------------------------------
   Layers: each a forward and a backward function, side by side
   (book.md, "Chapter 2" derives every backward pass).

   One convention for all of them, the one llm.c uses:
       name_forward(outputs..., inputs..., sizes)
       name_backward(input gradients..., output gradient, saved inputs..., sizes)
   Backward functions ADD into the gradients they produce (+=), never
   overwrite; the caller zeroes gradients once per step. Adding is what the
   chain rule asks when a value feeds two places, and chapter 3 relies on it.
   A NULL input gradient means "not needed" (nothing learns from the pixels).

   Arrays are flat and row-major; every pointer has its shape beside it.
   B is the batch size, C the input width, OC the output width.
   What this is not: fast. These loops are plain C; chapter 4 brings SIMD. */

// out = inp @ weight. The loop order b, c, oc walks both weight and out
// along their rows, one contiguous stretch at a time, which the cache and
// the compiler's vectoriser like; the textbook order b, oc, c would stride
// down a column of weight, one cache line per multiply.
void matmul_forward(float *out,           // (B, OC)
                    const float *inp,     // (B, C)
                    const float *weight,  // (C, OC)
                    int B, int C, int OC) {
    for (int b = 0; b < B; b++) {
        float *o = out + (size_t)b * OC;
        for (int oc = 0; oc < OC; oc++) o[oc] = 0.0f;
        for (int c = 0; c < C; c++) {
            float x = inp[(size_t)b * C + c];
            const float *w = weight + (size_t)c * OC;
            for (int oc = 0; oc < OC; oc++) o[oc] += x * w[oc];
        }
    }
}

// dinp += dout @ weight^T and dweight += inp^T @ dout (either may be NULL).
void matmul_backward(float *dinp,          // (B, C) or NULL
                     float *dweight,       // (C, OC) or NULL
                     const float *dout,    // (B, OC)
                     const float *inp,     // (B, C)
                     const float *weight,  // (C, OC)
                     int B, int C, int OC) {
    for (int b = 0; b < B; b++) {
        const float *g = dout + (size_t)b * OC;
        for (int c = 0; c < C && dweight; c++) {
            float x = inp[(size_t)b * C + c];
            float *dw = dweight + (size_t)c * OC;
            for (int oc = 0; oc < OC; oc++) dw[oc] += x * g[oc];
        }
        for (int c = 0; c < C && dinp; c++) {
            const float *w = weight + (size_t)c * OC;
            float sum = 0.0f;
            for (int oc = 0; oc < OC; oc++) sum += g[oc] * w[oc];
            dinp[(size_t)b * C + c] += sum;
        }
    }
}

// out += bias, on every row.
void bias_forward(float *out,         // (B, OC)
                  const float *bias,  // (OC)
                  int B, int OC) {
    for (int b = 0; b < B; b++)
        for (int oc = 0; oc < OC; oc++) out[(size_t)b * OC + oc] += bias[oc];
}

// dbias += the column sums of dout (the bias was added to every row).
void bias_backward(float *dbias,       // (OC)
                   const float *dout,  // (B, OC)
                   int B, int OC) {
    for (int b = 0; b < B; b++)
        for (int oc = 0; oc < OC; oc++) dbias[oc] += dout[(size_t)b * OC + oc];
}

// A dense (fully connected) layer: out = inp @ weight + bias.
void dense_forward(float *out, const float *inp, const float *weight, const float *bias,
                   int B, int C, int OC) {  // out (B,OC), inp (B,C), weight (C,OC), bias (OC)
    matmul_forward(out, inp, weight, B, C, OC);
    bias_forward(out, bias, B, OC);
}

void dense_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                    const float *inp, const float *weight, int B, int C, int OC) {
    bias_backward(dbias, dout, B, OC);
    matmul_backward(dinp, dweight, dout, inp, weight, B, C, OC);
}

// out = max(0, inp), elementwise over N values.
void relu_forward(float *out, const float *inp, size_t N) {
    for (size_t i = 0; i < N; i++) out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

// The slope is 1 where the input was positive and 0 elsewhere (at exactly 0
// we take 0, as every framework does).
void relu_backward(float *dinp, const float *dout, const float *inp, size_t N) {
    for (size_t i = 0; i < N; i++) {
        // dout is read whether it is used or not: the compiler may not move a
        // read out from under a condition, and there it would cost a branch
        // per number instead of vector instructions (book.md 4.21).
        float gradient = dout[i];
        dinp[i] += inp[i] > 0.0f ? gradient : 0.0f;
    }
}

// Softmax followed by cross-entropy against the targets, averaged over the
// batch. Computed from the logits with the log-sum-exp trick: subtracting
// the row's maximum before exp() changes nothing mathematically and keeps
// exp() from overflowing. Returns the mean loss; keeps the probabilities.
float softmax_cross_entropy_forward(float *probs,          // (B, K)
                                    const float *logits,   // (B, K)
                                    const float *targets,  // (B, K) each row sums to 1
                                    int B, int K) {
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        const float *z = logits + (size_t)b * K, *t = targets + (size_t)b * K;
        float *p = probs + (size_t)b * K;
        float max = z[0];
        for (int k = 1; k < K; k++) max = z[k] > max ? z[k] : max;
        float sum = 0.0f;
        for (int k = 0; k < K; k++) sum += p[k] = expf(z[k] - max);
        float log_sum = logf(sum), loss = 0.0f;
        for (int k = 0; k < K; k++) {
            p[k] /= sum;
            loss -= t[k] * (z[k] - max - log_sum);  // -t * log(softmax(z))
        }
        total += loss;
    }
    return (float)(total / B);
}

// d(mean loss)/d(logits) = (probs - targets) / B: the famous "p - y".
void softmax_cross_entropy_backward(float *dlogits,        // (B, K)
                                    float dloss,           // gradient of the mean loss, 1 at the top
                                    const float *probs,    // (B, K)
                                    const float *targets,  // (B, K)
                                    int B, int K) {
    float scale = dloss / (float)B;
    for (size_t i = 0; i < (size_t)B * K; i++) dlogits[i] += scale * (probs[i] - targets[i]);
}

// Glorot (Xavier) uniform: U(-limit, limit) with limit = sqrt(6 / (fan_in +
// fan_out)), which keeps the variance of activations and of gradients about
// the same from layer to layer at the start of training.
void glorot_uniform(float *weight, size_t n, int fan_in, int fan_out, Rng *rng) {
    float limit = sqrtf(6.0f / (float)(fan_in + fan_out));
    for (size_t i = 0; i < n; i++) weight[i] = (2.0f * rng_uniform(rng) - 1.0f) * limit;
}
/* ----------------------------------------------------------------------------
   Optimisers: SGD and Adam, over one flat array of parameters.

   What this is: the update rule, applied to every parameter of a model at
   once. Because each model keeps all its parameters in one allocation (and
   its gradients in another, in the same order), an optimiser needs to know
   nothing about layers.
   What it is not: a scheduler; the learning rate is constant. */

typedef enum { OPTIMIZER_SGD, OPTIMIZER_ADAM } OptimizerKind;

typedef struct {
    OptimizerKind kind;
    float learning_rate;
    float beta1, beta2, epsilon;  // Adam's, from the protocol
    long step;                    // updates so far (Adam's bias correction needs it)
    float *m, *v;                 // (count) Adam's moment estimates, one allocation; NULL for SGD
} Optimizer;

Optimizer optimizer_new(OptimizerKind kind, float learning_rate, size_t count) {
    Optimizer o = {.kind = kind, .learning_rate = learning_rate, .beta1 = 0.9f, .beta2 = 0.999f, .epsilon = 1e-7f};
    if (kind == OPTIMIZER_ADAM) {
        o.m = xmalloc(2 * count * sizeof(float));
        o.v = o.m + count;
        memset(o.m, 0, 2 * count * sizeof(float));
    }
    return o;
}

void optimizer_free(Optimizer *o) {
    free(o->m);
    o->m = o->v = NULL;
}

// Plain gradient descent: a step downhill, proportional to the slope.
void sgd_update(float *params, const float *grads, size_t count, float learning_rate) {
    for (size_t i = 0; i < count; i++) params[i] -= learning_rate * grads[i];
}

/* Adam (Kingma and Ba, 2015, Algorithm 1): running averages of the gradient
   (m) and of its square (v), corrected for starting at zero, give every
   parameter a step of about learning_rate in the direction the recent
   gradients agree on, whatever the gradient's scale. Epsilon is added to
   sqrt(v_hat), as in the paper and in PyTorch; Keras adds it before the
   correction of v, which differs only for gradients near epsilon. */
void adam_update(Optimizer *o, float *params, const float *grads, size_t count) {
    o->step++;
    float correction1 = 1.0f - powf(o->beta1, (float)o->step);
    float correction2 = 1.0f - powf(o->beta2, (float)o->step);
    for (size_t i = 0; i < count; i++) {
        float g = grads[i];
        o->m[i] = o->beta1 * o->m[i] + (1.0f - o->beta1) * g;
        o->v[i] = o->beta2 * o->v[i] + (1.0f - o->beta2) * g * g;
        float m_hat = o->m[i] / correction1, v_hat = o->v[i] / correction2;
        params[i] -= o->learning_rate * m_hat / (sqrtf(v_hat) + o->epsilon);
    }
}

void optimizer_update(Optimizer *o, float *params, const float *grads, size_t count) {
    if (o->kind == OPTIMIZER_ADAM) adam_update(o, params, grads, count);
    else sgd_update(params, grads, count, o->learning_rate);
}
/* ----------------------------------------------------------------------------
   Training: mini-batches, progress, validation, the test, the summary.

   What this is: the loop every model of the book is trained with. It sees a
   model only through the small Model interface below, so it does not care
   whether gradients come from hand-written backward passes (chapter 2) or
   from automatic differentiation (chapter 3 on).
   What it is not: clever. One pass over the shuffled training images per
   epoch, an optimiser step per batch, an evaluation per epoch. */

// One mini-batch as a model sees it. `step` numbers the optimiser steps of
// the whole run (0, 1, 2, ...) and follows from the epoch and the batch
// alone. The ANN ignores it; a model that draws random numbers while it
// trains keys them by it (dropout, chapter 5).
typedef struct {
    const float *images;   // (count, 784)
    const float *targets;  // (count, 10)
    int count;
    long step;
} Batch;

typedef struct {
    const char *name;  // for the summary line: "ann", ...
    void *net;
    // Forward and backward in training mode: fills probs (count, 10),
    // ADDS the gradients into grads, returns the mean loss.
    float (*compute_gradients)(void *net, const Batch *batch, float *probs);
    // Forward only, in inference mode: fills probs (count, 10), returns the mean loss.
    float (*predict)(void *net, const Batch *batch, float *probs);
    float *params, *grads;  // (count) each, in the same order
    size_t count;
    int max_batch;          // the most images one call may take
} Model;
int argmax(const float *row, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) best = row[i] > row[best] ? i : best;
    return best;
}

/* Is standard output a terminal? Only POSIX can tell (isatty), so elsewhere
   the answer is no and progress comes as plain lines. isatty is declared here
   rather than by including unistd.h, which not every system has. */
#if defined(__unix__) || defined(__APPLE__)
int isatty(int fd);
int stdout_is_terminal(void) { return isatty(1); }
#else
int stdout_is_terminal(void) { return 0; }
#endif

typedef struct {
    int terminal;                // update one line in place, or print plain lines
    double start, last;          // seconds: when training started, when we last printed
    long done, total;            // training images seen so far, and in the whole run
    double epoch_start;          // seconds: when this epoch's training started
    long epoch_done;             // training images seen so far in this epoch
} Progress;

void print_duration(double seconds) {
    long s = seconds > 0 ? (long)(seconds + 0.5) : 0;
    if (s >= 3600) printf("%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else printf("%ld:%02ld", s / 60, s % 60);
}

// One progress report. On a terminal: at most ten a second, and at the last
// batch of an epoch. In a log: at each quarter of an epoch, so the log stays
// readable; the epoch's own summary line (printed by train) ends it.
// Images/s counts this epoch's training only; the ETA divides what is left by
// the rate of the whole run so far, which from epoch 2 on includes the
// validation pauses, since they recur (the final test is not foreseen).
void report_progress(Progress *p, int epoch, int epochs, int batch, int batches,
                     double loss, double accuracy) {
    double now = now_seconds();
    int last_batch = batch == batches;
    int quarter = batches >= 4 && batch % (batches / 4) == 0;
    if (p->terminal ? !(last_batch || now - p->last >= 0.1) : !(quarter && !last_batch)) return;
    p->last = now;
    double rate = p->epoch_done / fmax(now - p->epoch_start, 1e-9);
    double overall_rate = p->done / fmax(now - p->start, 1e-9);
    printf("%sepoch %d/%d  batch %d/%d  loss %.4f  accuracy %.2f%%  %.0f images/s  ETA ",
           p->terminal ? "\r" : "", epoch, epochs, batch, batches, loss, 100 * accuracy, rate);
    print_duration((p->total - p->done) / fmax(overall_rate, 1e-9));
    printf(p->terminal ? "   " : "\n");
    fflush(stdout);
}

// Per-epoch curves (and the loss of every batch), for reports and plots.
enum { MAX_EPOCHS = 1000 };
typedef struct {
    int epochs;
    float train_loss[MAX_EPOCHS], train_accuracy[MAX_EPOCHS];
    float validation_loss[MAX_EPOCHS], validation_accuracy[MAX_EPOCHS];
    float seconds[MAX_EPOCHS];  // training time of each epoch, without validation
    float *batch_losses;        // (batch_count) in training order
    int batch_count, batch_capacity;
} History;

History *history_new(int epochs, int batches_per_epoch) {
    History *h = xmalloc(sizeof *h);
    memset(h, 0, sizeof *h);
    h->batch_capacity = epochs * batches_per_epoch;
    h->batch_losses = xmalloc((size_t)h->batch_capacity * sizeof(float));
    return h;
}

void history_free(History *h) {
    if (h) free(h->batch_losses);
    free(h);
}

// What the loop needs besides the model: the data, the order of this
// epoch, and one batch's worth of buffers, allocated once.
typedef struct {
    Model *model;
    Optimizer *optimizer;
    const Dataset *data;
    int batch;
    uint64_t seed;
    int *order;               // (data->count) this epoch's order
    float *images, *targets;  // (batch, 784) and (batch, 10): the batch, gathered
    float *probs;             // (batch, 10)
} Trainer;

Trainer trainer_new(Model *model, Optimizer *optimizer, const Dataset *data, int batch, uint64_t seed) {
    require(batch >= 1 && batch <= model->max_batch, "batch %d, but the model takes 1 to %d images",
            batch, model->max_batch);
    Trainer t = {.model = model, .optimizer = optimizer, .data = data, .batch = batch, .seed = seed};
    t.order = xmalloc((size_t)data->count * sizeof(int));
    t.images = xmalloc((size_t)batch * (IMAGE_SIZE + 2 * NUM_CLASSES) * sizeof(float));
    t.targets = t.images + (size_t)batch * IMAGE_SIZE;
    t.probs = t.targets + (size_t)batch * NUM_CLASSES;
    return t;
}

void trainer_free(Trainer *t) {
    free(t->order);
    free(t->images);
}

// The order of one epoch, from (seed, epoch) alone: the identity, shuffled
// by the epoch's own keyed stream. No epoch depends on the one before.
void epoch_order(int *order, int count, uint64_t seed, int epoch) {
    for (int i = 0; i < count; i++) order[i] = i;
    Rng rng = rng_keyed(seed, STREAM_SHUFFLE, (uint64_t)epoch, 0);
    shuffle(order, count, &rng);
}

const char *optimizer_name(const Optimizer *o) { return o->kind == OPTIMIZER_ADAM ? "adam" : "sgd"; }

// A loss that is infinite or not a number poisons every weight it touches
// (NaN - anything is NaN), so training stops at the first one.
int diverged(Error *err, const Optimizer *o, int epoch, int batch, int batches, float loss) {
    return fail(err, EXIT_DIVERGED, "epoch %d, batch %d of %d: the loss is %g, not a finite number, "
                "so training stopped. The likely cause is a learning rate too large for %s "
                "(--lr %g): each step overshoots and the weights grow until a number overflows. "
                "Try a learning rate ten times smaller%s.", epoch, batch, batches, loss,
                optimizer_name(o), o->learning_rate, o->kind == OPTIMIZER_SGD ? ", or --optimizer adam" : "");
}

// The sums over an epoch's batches so far, from which its means come.
typedef struct {
    double loss_sum;     // the batch losses, each times its images
    long correct, seen;  // training images classified right, and seen
} EpochState;

// One pass over the training data in this epoch's order, adding to *s.
// Returns 0, or EXIT_DIVERGED with the message in *err.
int train_epoch(Trainer *t, int epoch, int epochs, EpochState *s, Progress *progress, History *h, Error *err) {
    Model *m = t->model;
    const Dataset *d = t->data;
    int batches = (d->count + t->batch - 1) / t->batch;
    epoch_order(t->order, d->count, t->seed, epoch);
    if (progress) {
        progress->epoch_start = now_seconds();
        progress->epoch_done = 0;
    }
    for (int b = 0; b < batches; b++) {
        int first = b * t->batch, n = d->count - first < t->batch ? d->count - first : t->batch;
        for (int i = 0; i < n; i++) {
            int item = t->order[first + i];
            memcpy(t->images + (size_t)i * IMAGE_SIZE, d->images + (size_t)item * IMAGE_SIZE, IMAGE_SIZE * sizeof(float));
            memcpy(t->targets + (size_t)i * NUM_CLASSES, d->targets + (size_t)item * NUM_CLASSES, NUM_CLASSES * sizeof(float));
        }
        Batch batch = {.images = t->images, .targets = t->targets, .count = n,
                       .step = (long)(epoch - 1) * batches + b};
        memset(m->grads, 0, m->count * sizeof(float));
        float batch_loss = m->compute_gradients(m->net, &batch, t->probs);
        if (!isfinite(batch_loss)) {
            if (progress && progress->terminal) printf("\n");
            return diverged(err, t->optimizer, epoch, b + 1, batches, batch_loss);
        }
        optimizer_update(t->optimizer, m->params, m->grads, m->count);
        for (int i = 0; i < n; i++) s->correct += argmax(t->probs + i * NUM_CLASSES, NUM_CLASSES) == d->labels[t->order[first + i]];
        s->loss_sum += (double)batch_loss * n;
        s->seen += n;
        if (h && h->batch_count < h->batch_capacity) h->batch_losses[h->batch_count++] = batch_loss;
        if (progress) {
            progress->done += n;
            progress->epoch_done += n;
            report_progress(progress, epoch, epochs, b + 1, batches, s->loss_sum / s->seen, (double)s->correct / s->seen);
        }
    }
    return 0;
}

typedef struct {
    float loss, accuracy;
    int confusion[NUM_CLASSES][NUM_CLASSES];  // [true class][predicted class]
} Evaluation;

// Loss, accuracy and confusion matrix on a whole dataset, in inference mode.
Evaluation evaluate(Model *m, const Dataset *d) {
    Evaluation e = {0};
    float *probs = xmalloc((size_t)m->max_batch * NUM_CLASSES * sizeof(float));  // (max_batch, 10)
    double loss_sum = 0;
    int correct = 0;
    for (int first = 0; first < d->count; first += m->max_batch) {
        int n = d->count - first < m->max_batch ? d->count - first : m->max_batch;
        Batch batch = {.images = d->images + (size_t)first * IMAGE_SIZE,
                       .targets = d->targets + (size_t)first * NUM_CLASSES, .count = n};
        float loss = m->predict(m->net, &batch, probs);
        loss_sum += (double)loss * n;
        for (int i = 0; i < n; i++) {
            int truth = d->labels[first + i], guess = argmax(probs + i * NUM_CLASSES, NUM_CLASSES);
            e.confusion[truth][guess]++;
            correct += truth == guess;
        }
    }
    free(probs);
    e.loss = d->count ? (float)(loss_sum / d->count) : 0;
    e.accuracy = d->count ? (float)correct / (float)d->count : 0;
    return e;
}

void print_confusion(const Evaluation *e) {
    printf("\nconfusion matrix (rows: true class, columns: predicted class)\n%13s", "");
    for (int k = 0; k < NUM_CLASSES; k++) printf(" %5.5s", CLASS_NAMES[k]);
    printf("\n");
    for (int t = 0; t < NUM_CLASSES; t++) {
        printf("  %-11s", CLASS_NAMES[t]);
        for (int k = 0; k < NUM_CLASSES; k++) printf(" %5d", e->confusion[t][k]);
        printf("\n");
    }
}

// Trains for `epochs` epochs with validation after each, filling history.
// Returns 0, or EXIT_DIVERGED with the message in *err.
int train(Model *m, Optimizer *opt, const Dataset *train_set, const Dataset *validation,
          int epochs, int batch, uint64_t seed, History *h, Error *err) {
    Trainer t = trainer_new(m, opt, train_set, batch, seed);
    Progress progress = {.terminal = stdout_is_terminal(), .start = now_seconds(),
                         .total = (long)epochs * train_set->count};
    int status = 0;
    for (int epoch = 1; epoch <= epochs && !status; epoch++) {
        double start = now_seconds();
        EpochState s = {0};
        status = train_epoch(&t, epoch, epochs, &s, &progress, h, err);
        if (status) break;
        double seconds = now_seconds() - start;
        float loss = (float)(s.loss_sum / s.seen), accuracy = (float)s.correct / (float)s.seen;
        Evaluation v = evaluate(m, validation);
        if (!isfinite(v.loss)) {
            status = fail(err, EXIT_DIVERGED, "epoch %d: the validation loss is %g, not a finite number: "
                          "the weights have grown too large. Try a smaller learning rate (--lr %g now).",
                          epoch, v.loss, opt->learning_rate);
            break;
        }
        int e = h->epochs++;
        h->train_loss[e] = loss, h->train_accuracy[e] = accuracy, h->seconds[e] = (float)seconds;
        h->validation_loss[e] = v.loss, h->validation_accuracy[e] = v.accuracy;
        printf("%sepoch %d/%d  train loss %.4f accuracy %.2f%%  validation loss %.4f accuracy %.2f%%  "
               "%.2f s  %.0f images/s\n", progress.terminal ? "\r" : "", epoch, epochs, loss,
               100 * accuracy, v.loss, 100 * v.accuracy, seconds, train_set->count / seconds);
    }
    trainer_free(&t);
    return status;
}

// The debugging habit: a model that cannot learn a handful of images by
// heart has a bug, and this finds out in seconds rather than hours.
int overfit(Model *m, Optimizer *opt, const Dataset *few, int batch, uint64_t seed, Error *err) {
    enum { MAX_OVERFIT_EPOCHS = 1000 };
    Trainer t = trainer_new(m, opt, few, batch < few->count ? batch : few->count, seed);
    Evaluation e = {0};
    int epoch, status = 0;
    printf("overfitting %d training images: training on them until every one is right\n", few->count);
    for (epoch = 1; epoch <= MAX_OVERFIT_EPOCHS && !status; epoch++) {
        EpochState s = {0};
        status = train_epoch(&t, epoch, MAX_OVERFIT_EPOCHS, &s, NULL, NULL, err);
        if (status) break;
        e = evaluate(m, few);
        if (epoch % 10 == 0 || e.accuracy == 1.0f)
            printf("epoch %d  loss %.4f  accuracy %.2f%%\n", epoch, e.loss, 100 * e.accuracy);
        if (e.accuracy == 1.0f) break;
    }
    trainer_free(&t);
    if (status) return status;
    if (e.accuracy == 1.0f) {
        printf("all %d images right after %d epochs: the model and its gradients can learn.\n", few->count, epoch);
        return 0;
    }
    return fail(err, EXIT_NOT_LEARNING, "after %d epochs only %.2f%% of %d images are right: "
                "something is wrong (the gradients? the learning rate?)", MAX_OVERFIT_EPOCHS,
                100 * e.accuracy, few->count);
}

// The protocol's training set, or its first --limit images.
Dataset training_set(const FashionMnist *data, const Options *o) {
    Dataset d = data->train;
    if (o->limit && o->limit < d.count) d.count = o->limit;
    return d;
}

// The line a script reads: the last line a chapter prints.
typedef struct {
    const char *model;
    int epochs, seed;
    float test_loss, test_accuracy;
    double seconds;
} Result;

void print_result(const Result *r) {
    printf("result model=%s epochs=%d ", r->model, r->epochs);
    printf("seed=%d test_loss=%.4f test_accuracy=%.4f ", r->seed, r->test_loss, r->test_accuracy);
    printf("seconds=%.1f\n", r->seconds);
}

// Untrained, the network should be unsure: about 1/10 for every class,
// so a loss near -ln(1/10). Far from it, the initialisation is off.
void print_initial_loss(Model *m, const Dataset *validation) {
    Evaluation before = evaluate(m, validation);
    printf("initial validation loss %.4f (a uniform guess over 10 classes gives ln(10) = %.4f)%s\n",
           before.loss, log(10.0), fabs(before.loss - log(10.0)) > 0.5 ? "  <- suspicious" : "");
}

// The test: the confusion matrix, the loss and the accuracy, into *result.
void test_model(Model *m, const Dataset *test, Result *result) {
    Evaluation e = evaluate(m, test);
    print_confusion(&e);
    printf("\ntest loss %.4f, test accuracy %.2f%% (%d images)\n", e.loss, 100 * e.accuracy, test->count);
    result->test_loss = e.loss;
    result->test_accuracy = e.accuracy;
}

OptimizerKind optimizer_kind(const Options *o) {
    return strcmp(o->optimizer, "sgd") == 0 ? OPTIMIZER_SGD : OPTIMIZER_ADAM;
}

// Everything after the model is built: the sanity check, training (or
// overfitting), the test. Fills *history and *result; returns the exit
// code, with the message in *err when it is not 0.
int fit_and_test(Model *m, const FashionMnist *data, const Options *o, History **history,
                 Result *result, Error *err) {
    Dataset train_set = training_set(data, o);
    printf("model %s: %zu parameters; optimizer %s, learning rate %g, batch %d, seed %d\n",
           m->name, m->count, o->optimizer, o->learning_rate, o->batch, o->seed);
    Optimizer opt = optimizer_new(optimizer_kind(o), (float)o->learning_rate, m->count);
    int status = 0;
    *result = (Result){.model = m->name, .seed = o->seed};
    if (o->overfit) {
        Dataset few = dataset_slice(&train_set, 0, o->overfit < train_set.count ? o->overfit : train_set.count);
        status = overfit(m, &opt, &few, o->batch, (uint64_t)o->seed, err);
    } else {
        print_initial_loss(m, &data->validation);
        *history = history_new(o->epochs, (train_set.count + o->batch - 1) / o->batch);
        printf("training on %d images, validating on %d, %d epoch%s\n", train_set.count,
               data->validation.count, o->epochs, o->epochs == 1 ? "" : "s");
        double start = now_seconds();
        status = train(m, &opt, &train_set, &data->validation, o->epochs, o->batch, (uint64_t)o->seed, *history, err);
        result->seconds = now_seconds() - start;
        result->epochs = o->epochs;
    }
    if (!status && !o->overfit) test_model(m, &data->test, result);
    optimizer_free(&opt);
    return status;
}
/* ----------------------------------------------------------------------------
   The ANN: 784 -> Dense(128) ReLU -> Dense(64) ReLU -> Dense(10) softmax.

   What this is: the first model of the book, with its forward and backward
   passes written out by hand from the layers above.
   What it is not: reusable for another architecture; that is what the
   automatic differentiation of chapter 3 is for.

   Memory, as in llm.c: one allocation for all parameters, one for their
   gradients (same order, so the optimiser can treat both as flat arrays),
   one for the activations and one for their gradients, each carved into
   named pointers. */

enum { ANN_LAYERS = 3 };
static const int ANN_WIDTHS[ANN_LAYERS + 1] = {IMAGE_SIZE, 128, 64, NUM_CLASSES};
// The hand-written ANN teaches backprop (chapter 2) and checks the engine
// (chapter 3); from chapter 4 on, the engine builds every model.

typedef struct {
    float *weight[ANN_LAYERS];  // weight[l]: (ANN_WIDTHS[l], ANN_WIDTHS[l+1])
    float *bias[ANN_LAYERS];    // bias[l]:   (ANN_WIDTHS[l+1])
} AnnParameters;

typedef struct {
    float *dense[ANN_LAYERS];     // dense[l]: (B, ANN_WIDTHS[l+1]) = x @ weight[l] + bias[l]
    float *relu[ANN_LAYERS - 1];  // relu[l]:  (B, ANN_WIDTHS[l+1]) = max(0, dense[l])
    float *probs;                 // (B, 10) softmax of dense[2]; no gradient needed
} AnnActivations;

typedef struct {
    AnnParameters params, grads;
    AnnActivations acts, dacts;
    float *param_memory, *grad_memory;  // (param_count) each
    float *act_memory, *dact_memory;    // (max_batch * act_count) each
    size_t param_count, act_count;  // act_count: floats of activations for max_batch images
    int max_batch;
} Ann;

// Points params at consecutive stretches of memory; returns the count.
// With memory == NULL it only counts.
size_t ann_carve_parameters(AnnParameters *p, float *memory) {
    size_t used = 0;
    for (int l = 0; l < ANN_LAYERS; l++) {
        p->weight[l] = memory ? memory + used : NULL;
        used += (size_t)ANN_WIDTHS[l] * ANN_WIDTHS[l + 1];
        p->bias[l] = memory ? memory + used : NULL;
        used += (size_t)ANN_WIDTHS[l + 1];
    }
    return used;
}

size_t ann_carve_activations(AnnActivations *a, float *memory, int batch) {
    size_t used = 0;
    for (int l = 0; l < ANN_LAYERS; l++) {
        size_t size = (size_t)batch * ANN_WIDTHS[l + 1];
        a->dense[l] = memory ? memory + used : NULL;
        used += size;
        if (l < ANN_LAYERS - 1) {
            a->relu[l] = memory ? memory + used : NULL;
            used += size;
        }
    }
    a->probs = memory ? memory + used : NULL;
    return used + (size_t)batch * NUM_CLASSES;
}

// Glorot-uniform weights from the init stream, layer by layer; zero biases.
void ann_initialize(Ann *net, uint64_t seed) {
    Rng rng = rng_new(seed, STREAM_INIT);
    memset(net->param_memory, 0, net->param_count * sizeof(float));
    for (int l = 0; l < ANN_LAYERS; l++)
        glorot_uniform(net->params.weight[l], (size_t)ANN_WIDTHS[l] * ANN_WIDTHS[l + 1],
                       ANN_WIDTHS[l], ANN_WIDTHS[l + 1], &rng);
}

Ann ann_new(int max_batch, uint64_t seed) {
    Ann net = {0};
    net.max_batch = max_batch;
    net.param_count = ann_carve_parameters(&net.params, NULL);
    net.param_memory = xmalloc(net.param_count * sizeof(float));
    net.grad_memory = xmalloc(net.param_count * sizeof(float));
    ann_carve_parameters(&net.params, net.param_memory);
    ann_carve_parameters(&net.grads, net.grad_memory);
    net.act_count = ann_carve_activations(&net.acts, NULL, max_batch);
    net.act_memory = xmalloc(net.act_count * sizeof(float));
    net.dact_memory = xmalloc(net.act_count * sizeof(float));
    ann_carve_activations(&net.acts, net.act_memory, max_batch);
    ann_carve_activations(&net.dacts, net.dact_memory, max_batch);
    ann_initialize(&net, seed);
    return net;
}

void ann_free(Ann *net) {
    free(net->param_memory);
    free(net->grad_memory);
    free(net->act_memory);
    free(net->dact_memory);
}

// The forward pass on B images; returns the mean loss, leaves the
// probabilities in acts.probs.
float ann_forward(Ann *net, const float *images, const float *targets, int B) {  // (B,784) (B,10)
    require(B >= 1 && B <= net->max_batch, "batch %d, but the ANN has room for 1 to %d images", B, net->max_batch);
    const AnnParameters *p = &net->params;
    AnnActivations *a = &net->acts;
    const float *x = images;
    for (int l = 0; l < ANN_LAYERS; l++) {
        dense_forward(a->dense[l], x, p->weight[l], p->bias[l], B, ANN_WIDTHS[l], ANN_WIDTHS[l + 1]);
        if (l == ANN_LAYERS - 1) break;
        relu_forward(a->relu[l], a->dense[l], (size_t)B * ANN_WIDTHS[l + 1]);
        x = a->relu[l];
    }
    return softmax_cross_entropy_forward(a->probs, a->dense[ANN_LAYERS - 1], targets, B, NUM_CLASSES);
}

// The backward pass: the chain rule, from the loss back to every weight.
// Adds into net->grads; the caller zeroes them once per step.
void ann_backward(Ann *net, const float *images, const float *targets, int B) {
    const AnnParameters *p = &net->params;
    const AnnActivations *a = &net->acts;
    AnnActivations *d = &net->dacts;
    memset(net->dact_memory, 0, net->act_count * sizeof(float));
    softmax_cross_entropy_backward(d->dense[ANN_LAYERS - 1], 1.0f, a->probs, targets, B, NUM_CLASSES);
    for (int l = ANN_LAYERS - 1; l >= 0; l--) {
        const float *x = l > 0 ? a->relu[l - 1] : images;
        float *dx = l > 0 ? d->relu[l - 1] : NULL;  // nothing learns from the pixels
        dense_backward(dx, net->grads.weight[l], net->grads.bias[l], d->dense[l], x, p->weight[l],
                       B, ANN_WIDTHS[l], ANN_WIDTHS[l + 1]);
        if (l > 0) relu_backward(d->dense[l - 1], d->relu[l - 1], a->dense[l - 1], (size_t)B * ANN_WIDTHS[l]);
    }
}

// The ANN seen through the training loop's Model interface. It has no
// training mode, so training and inference differ only by the backward pass.
float ann_compute_gradients(void *net, const Batch *batch, float *probs) {
    Ann *ann = net;
    float loss = ann_forward(ann, batch->images, batch->targets, batch->count);
    ann_backward(ann, batch->images, batch->targets, batch->count);
    memcpy(probs, ann->acts.probs, (size_t)batch->count * NUM_CLASSES * sizeof(float));
    return loss;
}

float ann_predict(void *net, const Batch *batch, float *probs) {
    Ann *ann = net;
    float loss = ann_forward(ann, batch->images, batch->targets, batch->count);
    memcpy(probs, ann->acts.probs, (size_t)batch->count * NUM_CLASSES * sizeof(float));
    return loss;
}

Model ann_model(Ann *net) {
    return (Model){.name = "ann", .net = net, .compute_gradients = ann_compute_gradients,
                   .predict = ann_predict, .params = net->param_memory, .grads = net->grad_memory,
                   .count = net->param_count, .max_batch = net->max_batch};
}
/* ----------------------------------------------------------------------------
   Reverse-mode automatic differentiation (book.md, "Chapter 3").

   What this is: a graph of nodes, each holding a value, a gradient, and the
   op that computed it from its input nodes. Running the ops in topological
   order computes the loss; running their backward functions in the reverse
   order computes the gradient of the loss with respect to every node, by
   the chain rule, one op at a time. A new layer is a new op: a forward and a
   backward function and a row in the op table; the ordering, the memory and
   the backward pass stay as they are.
   What it is not: dynamic. The graph is built once, compiled (ordered, and
   given all its memory), then replayed for every batch; only the batch size
   may change between runs, up to the size it was compiled for.

   The rules the engine keeps, which the tests check:
   - Backward ADDS into gradients. A node that feeds two ops receives the sum
     of both contributions, which is what the chain rule says.
   - graph_backward() clears the gradients of the computed (interior) nodes
     itself, so calling it twice gives the same interior gradients; but it
     adds into the gradients of parameters, so calling it twice without
     graph_zero_grad() in between doubles them (like PyTorch). Zeroing the
     parameter gradients is the caller's job, once per optimiser step. */

enum { MAX_RANK = 4, MAX_NODES = 128 };
enum { MAX_INPUTS = 3 };

typedef struct Node Node;
typedef struct Graph Graph;

typedef struct {
    const char *name;
    void (*forward)(Node *node, Graph *graph);  // node->value from its inputs' values
    void (*backward)(Node *node, Graph *graph); // inputs' grads += from node->grad
} Op;

typedef enum { INIT_ZEROS, INIT_ONES, INIT_GLOROT } Init;

struct Node {
    const Op *op;               // NULL for a leaf: an input or a parameter
    const char *label;          // for printing; may be NULL
    Node *inputs[MAX_INPUTS];
    int input_count;
    int rank, shape[MAX_RANK];  // shape[0] is the batch size when batched
    int batched;                // does shape[0] follow graph_set_batch()?
    size_t item_size;           // elements per batch item (batched) or in all
    size_t size;                // elements now
    float *value;               // (shape)
    float *grad;                // (shape), or NULL when no gradient is needed
    int requires_grad;          // a parameter, or a parameter upstream (tests may set it on an input)
    int is_parameter;
    Init init;                  // parameters only
    float *saved;               // what backward needs (e.g. probabilities)
    size_t saved_per_item;      // floats of `saved` per batch item
};

struct Graph {
    Node nodes[MAX_NODES];  // in creation order, which is also a valid order
    int count;
    Node *order[MAX_NODES]; // what graph_forward runs: the output and all it needs
    int order_count;
    Node *output;
    int max_batch, batch;
    int training;           // the mode of the last forward: dropout and batch norm differ
    uint64_t seed;          // with step, the key of the streams of ops that draw random numbers
    long step;              // the optimiser step being computed (see Batch)
    float *params, *grads;  // (param_count) each: every parameter, in creation order
    size_t param_count;
    float *memory;          // values, gradients and saved buffers of all other nodes
    int compiled;           // after graph_compile() the graph is fixed
};

// A graph with room for batches of up to max_batch items.
Graph *graph_new(int max_batch) {
    Graph *g = xmalloc(sizeof *g);
    memset(g, 0, sizeof *g);
    g->max_batch = g->batch = max_batch;
    return g;
}

void graph_free(Graph *g) {
    if (!g) return;
    free(g->params);
    free(g->grads);
    free(g->memory);
    free(g);
}

// Adds a node of the given shape. For a batched node, `shape` leaves out
// the batch dimension: {784} makes a node of shape (batch, 784).
Node *graph_add_node(Graph *g, const Op *op, int batched, const int *shape, int rank) {
    require(!g->compiled, "a node added after graph_compile(); build the whole graph first");
    require(g->count < MAX_NODES, "more than %d nodes", MAX_NODES);
    require(rank + batched <= MAX_RANK, "rank %d is more than %d", rank + batched, MAX_RANK);
    Node *n = &g->nodes[g->count++];
    memset(n, 0, sizeof *n);
    n->op = op;
    n->batched = batched;
    n->rank = rank + batched;
    n->item_size = 1;
    if (batched) n->shape[0] = g->batch;
    for (int i = 0; i < rank; i++) {
        n->shape[i + batched] = shape[i];
        n->item_size *= (size_t)shape[i];
    }
    n->size = batched ? n->item_size * (size_t)g->batch : n->item_size;
    return n;
}

// A batched input (images, targets): filled by the caller, never differentiated.
Node *graph_input(Graph *g, const char *label, const int *shape, int rank) {
    Node *n = graph_add_node(g, NULL, 1, shape, rank);
    n->label = label;
    return n;
}

// A parameter: learned, so it needs a gradient; initialised by graph_initialize().
Node *graph_parameter(Graph *g, const char *label, const int *shape, int rank, Init init) {
    require(init != INIT_GLOROT || rank >= 2, "%s: Glorot needs a fan in and a fan out (rank 2 or more)", label);
    Node *n = graph_add_node(g, NULL, 0, shape, rank);
    n->label = label;
    n->is_parameter = n->requires_grad = 1;
    n->init = init;
    return n;
}

// Is n one of g's nodes? (Asked with ==, since C leaves < and > undefined
// between pointers into different arrays.)
int graph_owns(const Graph *g, const Node *n) {
    for (int i = 0; i < g->count; i++)
        if (&g->nodes[i] == n) return 1;
    return 0;
}

// An op node over the given inputs; it needs a gradient if any input does.
Node *graph_op(Graph *g, const Op *op, Node **inputs, int input_count,
               int batched, const int *shape, int rank) {
    for (int i = 0; i < input_count; i++)
        require(graph_owns(g, inputs[i]), "%s: an input from another graph", op->name);
    Node *n = graph_add_node(g, op, batched, shape, rank);
    n->input_count = input_count;
    for (int i = 0; i < input_count; i++) {
        n->inputs[i] = inputs[i];
        n->requires_grad |= inputs[i]->requires_grad;
    }
    return n;
}

/* Topological order: every node after all of its inputs. A depth-first walk
   from the output adds a node once all its inputs have been added, so nodes
   the output does not depend on are left out, and a node reached along two
   paths (a diamond) is added once. */
void topological_visit(Graph *g, Node *n, char *visited) {
    int index = (int)(n - g->nodes);
    if (visited[index]) return;
    visited[index] = 1;
    for (int i = 0; i < n->input_count; i++) topological_visit(g, n->inputs[i], visited);
    g->order[g->order_count++] = n;
}

// Orders the graph for `output` and gives every node its memory: one block
// for the parameters, one for their gradients (in creation order, so an
// optimiser can treat them as flat arrays), one for everything else.
void graph_compile(Graph *g, Node *output) {
    require(!g->compiled, "graph_compile() called twice");
    require(graph_owns(g, output), "graph_compile: the output is not a node of this graph");
    g->compiled = 1;
    char visited[MAX_NODES] = {0};
    g->output = output;
    g->order_count = 0;
    topological_visit(g, output, visited);
    size_t params = 0, other = 0;
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        size_t capacity = n->batched ? n->item_size * (size_t)g->max_batch : n->item_size;
        if (n->is_parameter) params += capacity;
        else other += capacity * (1 + (n->requires_grad ? 1 : 0)) +
                      n->saved_per_item * (size_t)g->max_batch;
    }
    g->param_count = params;
    g->params = xmalloc(params * sizeof(float));
    g->grads = xmalloc(params * sizeof(float));
    g->memory = xmalloc(other * sizeof(float));
    memset(g->params, 0, params * sizeof(float));
    memset(g->grads, 0, params * sizeof(float));
    memset(g->memory, 0, other * sizeof(float));
    params = other = 0;
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        size_t capacity = n->batched ? n->item_size * (size_t)g->max_batch : n->item_size;
        if (n->is_parameter) {
            n->value = g->params + params;
            n->grad = g->grads + params;
            params += capacity;
            continue;
        }
        n->value = g->memory + other;
        other += capacity;
        if (n->requires_grad) {
            n->grad = g->memory + other;
            other += capacity;
        }
        if (n->saved_per_item) {
            n->saved = g->memory + other;
            other += n->saved_per_item * (size_t)g->max_batch;
        }
    }
}

// Parameters in creation order from the init stream: Glorot for weights,
// zeros for biases, ones for scales. A weight's last two dimensions are its
// inputs and outputs: (C, OC) for a dense layer, and (KH, KW, C, OC) for a
// convolution kernel, whose fans are C and OC times the KH*KW positions.
// The seed is kept too: ops that draw random numbers (dropout) open keyed
// streams of it, so one seed fixes everything.
void graph_initialize(Graph *g, uint64_t seed) {
    require(g->compiled, "graph_initialize() before graph_compile(): the parameters have no memory yet");
    Rng rng = rng_new(seed, STREAM_INIT);
    g->seed = seed;
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        if (!n->is_parameter) continue;
        if (n->init == INIT_GLOROT) {
            int receptive = 1;
            for (int d = 0; d < n->rank - 2; d++) receptive *= n->shape[d];
            glorot_uniform(n->value, n->size, n->shape[n->rank - 2] * receptive,
                           n->shape[n->rank - 1] * receptive, &rng);
        } else {
            for (size_t k = 0; k < n->size; k++) n->value[k] = n->init == INIT_ONES ? 1.0f : 0.0f;
        }
    }
}

void graph_set_batch(Graph *g, int batch) {
    require(g->compiled, "graph_set_batch() before graph_compile()");
    require(batch >= 1 && batch <= g->max_batch, "batch %d outside 1..%d", batch, g->max_batch);
    g->batch = batch;
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        if (!n->batched) continue;
        n->shape[0] = batch;
        n->size = n->item_size * (size_t)batch;
    }
}

// Runs every op in order; returns the output's first value (the loss).
float graph_forward(Graph *g, int training) {
    require(g->compiled, "graph_forward() before graph_compile()");
    g->training = training;
    for (int i = 0; i < g->order_count; i++) {
        Node *n = g->order[i];
        if (n->op) n->op->forward(n, g);
    }
    return g->output->value[0];
}

// Clears the gradients that graph_backward() adds into: those of the
// parameters, and of any input that asked for one.
void graph_zero_grad(Graph *g) {
    require(g->compiled, "graph_zero_grad() before graph_compile()");
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        if (!n->op && n->grad) memset(n->grad, 0, n->size * sizeof(float));
    }
}

// The gradient of the output (a scalar) with respect to every node that
// needs one: seed d(output)/d(output) = 1, then the chain rule backwards.
// Only after a training forward: an inference forward computes something
// else (batch norm's, chapter 5), whose gradients would be silently wrong.
void graph_backward(Graph *g) {
    require(g->compiled, "graph_backward() before graph_compile()");
    require(g->training, "graph_backward() after an inference-mode forward; run graph_forward(g, 1) first");
    for (int i = 0; i < g->order_count; i++) {
        Node *n = g->order[i];
        if (n->op && n->grad) memset(n->grad, 0, n->size * sizeof(float));
    }
    require(g->output->size == 1 && g->output->grad, "backward needs a scalar output that depends on a parameter");
    g->output->grad[0] = 1.0f;
    for (int i = g->order_count - 1; i >= 0; i--) {
        Node *n = g->order[i];
        if (n->op && n->requires_grad) n->op->backward(n, g);
    }
}

void print_shape(const Node *n) {
    printf("(");
    for (int d = 0; d < n->rank; d++) printf(d ? ", %d" : "%d", n->shape[d]);
    printf(")");
}

// The graph as a list, in the order it runs.
void graph_print(const Graph *g) {
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        printf("  %2d  %-22s ", (int)(n - g->nodes), n->op ? n->op->name : n->is_parameter ? "parameter" : "input");
        print_shape(n);
        if (n->label) printf("  %s", n->label);
        for (int k = 0; k < n->input_count; k++)
            printf(k ? ", %d" : "  <- %d", (int)(n->inputs[k] - g->nodes));
        printf("\n");
    }
}

/* ---- The ops ---------------------------------------------------------------
   Each op is a forward and a backward function over its node, mostly calling
   the layer kernels of chapter 2, plus a constructor that checks shapes. The
   backward functions skip inputs that need no gradient (grad == NULL). */


// Adds src into dst, elementwise: the backward of every "copy" of a gradient.
void accumulate(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

// matmul: x (B, C) @ w (C, OC) -> (B, OC)
void matmul_op_forward(Node *n, Graph *g) {
    (void)g;
    const Node *x = n->inputs[0], *w = n->inputs[1];
    matmul_forward(n->value, x->value, w->value, x->shape[0], w->shape[0], w->shape[1]);
}

void matmul_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *x = n->inputs[0], *w = n->inputs[1];
    matmul_backward(x->grad, w->grad, n->grad, x->value, w->value, x->shape[0], w->shape[0], w->shape[1]);
}

// bias_add: x (B, ..., C) + b (C) -> the shape of x; b is added along the
// last dimension, so the same op serves dense layers and (NHWC) convolutions.
void bias_add_op_forward(Node *n, Graph *g) {
    (void)g;
    const Node *x = n->inputs[0], *b = n->inputs[1];
    memcpy(n->value, x->value, n->size * sizeof(float));
    bias_forward(n->value, b->value, (int)(n->size / b->size), (int)b->size);
}

void bias_add_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *x = n->inputs[0], *b = n->inputs[1];
    if (x->grad) accumulate(x->grad, n->grad, n->size);
    if (b->grad) bias_backward(b->grad, n->grad, (int)(n->size / b->size), (int)b->size);
}

void relu_op_forward(Node *n, Graph *g) {
    (void)g;
    relu_forward(n->value, n->inputs[0]->value, n->size);
}

void relu_op_backward(Node *n, Graph *g) {
    (void)g;
    relu_backward(n->inputs[0]->grad, n->grad, n->inputs[0]->value, n->size);
}

// add: a + b, same shapes. d(a+b)/da = 1, so each input gets the gradient as is.
void add_op_forward(Node *n, Graph *g) {
    (void)g;
    for (size_t i = 0; i < n->size; i++) n->value[i] = n->inputs[0]->value[i] + n->inputs[1]->value[i];
}

void add_op_backward(Node *n, Graph *g) {
    (void)g;
    for (int k = 0; k < 2; k++)
        if (n->inputs[k]->grad) accumulate(n->inputs[k]->grad, n->grad, n->size);
}

// mul: a * b elementwise. d(ab)/da = b and d(ab)/db = a.
void mul_op_forward(Node *n, Graph *g) {
    (void)g;
    for (size_t i = 0; i < n->size; i++) n->value[i] = n->inputs[0]->value[i] * n->inputs[1]->value[i];
}

void mul_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *a = n->inputs[0], *b = n->inputs[1];
    for (size_t i = 0; i < n->size; i++) {
        if (a->grad) a->grad[i] += n->grad[i] * b->value[i];
        if (b->grad) b->grad[i] += n->grad[i] * a->value[i];
    }
}

// sum: every element of x -> a scalar. Each element moved the sum by 1.
void sum_op_forward(Node *n, Graph *g) {
    (void)g;
    double total = 0;
    for (size_t i = 0; i < n->inputs[0]->size; i++) total += n->inputs[0]->value[i];
    n->value[0] = (float)total;
}

void sum_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *x = n->inputs[0];
    for (size_t i = 0; i < x->size; i++) x->grad[i] += n->grad[0];
}

// softmax_cross_entropy: logits (B, K), targets (B, K) -> the mean loss, a
// scalar. Keeps the probabilities (saved) for backward and for accuracy.
void softmax_cross_entropy_op_forward(Node *n, Graph *g) {
    (void)g;
    const Node *logits = n->inputs[0], *targets = n->inputs[1];
    n->value[0] = softmax_cross_entropy_forward(n->saved, logits->value, targets->value,
                                                logits->shape[0], logits->shape[1]);
}

void softmax_cross_entropy_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *logits = n->inputs[0], *targets = n->inputs[1];
    softmax_cross_entropy_backward(logits->grad, n->grad[0], n->saved, targets->value,
                                   logits->shape[0], logits->shape[1]);
}


// The op table: the one place an op is registered.
typedef enum {
    OP_MATMUL, OP_BIAS_ADD, OP_RELU, OP_ADD, OP_MUL, OP_SUM, OP_SOFTMAX_CROSS_ENTROPY,
    OP_COUNT
} OpKind;

static const Op OPS[OP_COUNT] = {
    [OP_MATMUL] = {.name = "matmul", .forward = matmul_op_forward, .backward = matmul_op_backward},
    [OP_BIAS_ADD] = {.name = "bias_add", .forward = bias_add_op_forward, .backward = bias_add_op_backward},
    [OP_RELU] = {.name = "relu", .forward = relu_op_forward, .backward = relu_op_backward},
    [OP_ADD] = {.name = "add", .forward = add_op_forward, .backward = add_op_backward},
    [OP_MUL] = {.name = "mul", .forward = mul_op_forward, .backward = mul_op_backward},
    [OP_SUM] = {.name = "sum", .forward = sum_op_forward, .backward = sum_op_backward},
    [OP_SOFTMAX_CROSS_ENTROPY] = {.name = "softmax_cross_entropy", .forward = softmax_cross_entropy_op_forward,
                                  .backward = softmax_cross_entropy_op_backward},
};

// The constructors: check the shapes, make the node.
Node *matmul(Graph *g, Node *x, Node *w) {
    require(x->batched && x->rank == 2 && !w->batched && w->rank == 2 && x->shape[1] == w->shape[0],
            "matmul needs x (B, C) and w (C, OC)");
    return graph_op(g, &OPS[OP_MATMUL], (Node *[]){x, w}, 2, 1, &w->shape[1], 1);
}

Node *bias_add(Graph *g, Node *x, Node *b) {
    require(!b->batched && b->rank == 1 && x->shape[x->rank - 1] == b->shape[0],
            "bias_add needs a bias as long as the last dimension of x");
    return graph_op(g, &OPS[OP_BIAS_ADD], (Node *[]){x, b}, 2, x->batched, x->shape + x->batched, x->rank - x->batched);
}

int same_shape(const Node *a, const Node *b) {
    if (a->batched != b->batched || a->rank != b->rank) return 0;
    for (int d = 0; d < a->rank; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

Node *same_shape_op(Graph *g, OpKind kind, Node **inputs, int count) {
    for (int k = 1; k < count; k++)
        require(same_shape(inputs[k], inputs[0]), "%s needs inputs of the same shape", OPS[kind].name);
    Node *x = inputs[0];
    return graph_op(g, &OPS[kind], inputs, count, x->batched, x->shape + x->batched, x->rank - x->batched);
}

Node *relu(Graph *g, Node *x) { return same_shape_op(g, OP_RELU, (Node *[]){x}, 1); }
Node *add(Graph *g, Node *a, Node *b) { return same_shape_op(g, OP_ADD, (Node *[]){a, b}, 2); }
Node *mul(Graph *g, Node *a, Node *b) { return same_shape_op(g, OP_MUL, (Node *[]){a, b}, 2); }

Node *sum(Graph *g, Node *x) {
    return graph_op(g, &OPS[OP_SUM], (Node *[]){x}, 1, 0, (int[]){1}, 1);
}


Node *softmax_cross_entropy(Graph *g, Node *logits, Node *targets) {
    require(logits->batched && targets->batched && logits->rank == 2 && targets->rank == 2 &&
            logits->shape[1] == targets->shape[1], "softmax_cross_entropy needs logits and targets (B, K)");
    // The targets are data, not something to learn: no gradient flows to them.
    require(!targets->requires_grad, "softmax_cross_entropy: the targets must not need a gradient");
    Node *n = graph_op(g, &OPS[OP_SOFTMAX_CROSS_ENTROPY], (Node *[]){logits, targets}, 2, 0, (int[]){1}, 1);
    n->saved_per_item = (size_t)logits->shape[1];  // the probabilities
    return n;
}

/* ---- Models on the engine ------------------------------------------------ */

// A classifier built on a graph: where its images and targets go in, and
// the loss node, whose saved buffer holds the probabilities.
typedef struct {
    Graph *graph;
    Node *images, *targets, *loss;
} GraphClassifier;

// The ANN of chapter 2, as a graph. Parameters are created in the order of
// chapter 2's memory (weight, bias, layer by layer), so the same seed gives
// the same initial weights, laid out the same way.
GraphClassifier ann_graph(int max_batch, uint64_t seed) {
    static const char *labels[2 * ANN_LAYERS] = {"weight1", "bias1", "weight2", "bias2", "weight3", "bias3"};
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = images;
    for (int l = 0; l < ANN_LAYERS; l++) {
        Node *w = graph_parameter(g, labels[2 * l], (int[]){ANN_WIDTHS[l], ANN_WIDTHS[l + 1]}, 2, INIT_GLOROT);
        Node *b = graph_parameter(g, labels[2 * l + 1], (int[]){ANN_WIDTHS[l + 1]}, 1, INIT_ZEROS);
        x = bias_add(g, matmul(g, x, w), b);
        if (l < ANN_LAYERS - 1) x = relu(g, x);
    }
    Node *loss = softmax_cross_entropy(g, x, targets);
    graph_compile(g, loss);
    graph_initialize(g, seed);
    return (GraphClassifier){.graph = g, .images = images, .targets = targets, .loss = loss};
}

float graph_run(GraphClassifier *c, const Batch *batch, int training, float *probs) {
    graph_set_batch(c->graph, batch->count);
    c->graph->step = batch->step;
    memcpy(c->images->value, batch->images, c->images->size * sizeof(float));
    memcpy(c->targets->value, batch->targets, c->targets->size * sizeof(float));
    float loss = graph_forward(c->graph, training);
    if (training) graph_backward(c->graph);
    memcpy(probs, c->loss->saved, (size_t)batch->count * NUM_CLASSES * sizeof(float));
    return loss;
}

float graph_compute_gradients(void *net, const Batch *batch, float *probs) {
    return graph_run(net, batch, 1, probs);
}

float graph_predict(void *net, const Batch *batch, float *probs) {
    return graph_run(net, batch, 0, probs);
}

Model graph_model(GraphClassifier *c, const char *name) {
    return (Model){.name = name, .net = c, .compute_gradients = graph_compute_gradients,
                   .predict = graph_predict, .params = c->graph->params, .grads = c->graph->grads,
                   .count = c->graph->param_count,
                   .max_batch = c->graph->max_batch};
}
/* ----------------------------------------------------------------------------
   Two ops made outside the engine (book.md, chapter 3's exercises). An op is
   a forward and a backward function in an Op, and graph_op makes a node of
   it: the engine's table OPS is not needed, and neither is a change to it.

   tanh, elementwise. Its slope is 1 - tanh(x)^2, which the node's own value
   gives, so nothing more needs to be saved. */
void tanh_op_forward(Node *n, Graph *g) {
    (void)g;
    for (size_t i = 0; i < n->size; i++) n->value[i] = tanhf(n->inputs[0]->value[i]);
}

void tanh_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *x = n->inputs[0];
    if (x->grad)
        for (size_t i = 0; i < n->size; i++) {
            float y = n->value[i];
            x->grad[i] += n->grad[i] * (1.0f - y * y);
        }
}

const Op TANH_OP = {.name = "tanh", .forward = tanh_op_forward, .backward = tanh_op_backward};

Node *tanh_of(Graph *g, Node *x) {
    return graph_op(g, &TANH_OP, (Node *[]){x}, 1, x->batched, x->shape + x->batched, x->rank - x->batched);
}

/* mean_squared_error: pred (B, K), targets (B, K) -> (1/B) times the sum
   over b and k of (pred - target)^2, a scalar: the mean over the batch, as
   softmax_cross_entropy takes it. */
void mse_op_forward(Node *n, Graph *g) {
    (void)g;
    const Node *pred = n->inputs[0], *targets = n->inputs[1];
    double total = 0;
    for (size_t i = 0; i < pred->size; i++) {
        double d = (double)pred->value[i] - targets->value[i];
        total += d * d;
    }
    n->value[0] = (float)(total / pred->shape[0]);
}

void mse_op_backward(Node *n, Graph *g) {
    (void)g;
    Node *pred = n->inputs[0];
    const Node *targets = n->inputs[1];
    if (pred->grad) {
        float twice_over_b = 2.0f * n->grad[0] / (float)pred->shape[0];
        for (size_t i = 0; i < pred->size; i++)
            pred->grad[i] += twice_over_b * (pred->value[i] - targets->value[i]);
    }
}

const Op MSE_OP = {.name = "mean_squared_error", .forward = mse_op_forward, .backward = mse_op_backward};

Node *mean_squared_error(Graph *g, Node *pred, Node *targets) {
    require(pred->batched && targets->batched && pred->rank == 2 && targets->rank == 2 &&
            pred->shape[1] == targets->shape[1], "mean_squared_error needs pred and targets (B, K)");
    require(!targets->requires_grad, "mean_squared_error: the targets must not need a gradient");
    return graph_op(g, &MSE_OP, (Node *[]){pred, targets}, 2, 0, (int[]){1}, 1);
}
/* ----------------------------------------------------------------------------
   Checking the engine against chapter 2: gradients three ways, and training.

   What this is: for one batch, the ANN's gradients from chapter 2's hand-
   derived backward pass, from the engine, and from central differences of
   the loss computed in double precision, compared parameter group by group.
   What it is not: a proof. Differences are checked on a sample of each
   group; a bug that touches one weight in ten thousand could slip through.

   Why double: a central difference (L(w+h) - L(w-h)) / 2h divides a tiny
   difference of two losses by a tiny h. In float, the losses carry only 7
   digits, so for any h the error is either rounding (too small an h) or
   curvature (too large an h), and easily 1% of the gradient. In double the
   losses carry 16 digits: with h = 1e-6 both errors fall below 1e-9. */

// |a - b| relative to the larger of the two, with a floor so that gradients
// that are zero up to rounding do not count as wrong.
double relative_error(double a, double b) {
    return fabs(a - b) / fmax(fmax(fabs(a), fabs(b)), 1e-6);
}

// The ANN's mean loss, in double, from a double copy of its parameters laid
// out as in chapter 2's memory. Written again rather than calling the float
// layers, so that it is a reference, not a copy.
double ann_loss_in_double(const double *params, const float *images, const float *targets, int B) {
    double *x = xmalloc((size_t)B * IMAGE_SIZE * sizeof(double));  // (B, width of this layer)
    double *y = xmalloc((size_t)B * IMAGE_SIZE * sizeof(double));  // (B, width of the next)
    for (size_t i = 0; i < (size_t)B * IMAGE_SIZE; i++) x[i] = images[i];
    const double *p = params;
    for (int l = 0; l < ANN_LAYERS; l++) {
        int C = ANN_WIDTHS[l], OC = ANN_WIDTHS[l + 1];
        const double *w = p, *bias = p + (size_t)C * OC;
        for (int b = 0; b < B; b++)
            for (int o = 0; o < OC; o++) {
                double s = bias[o];
                for (int c = 0; c < C; c++) s += x[b * C + c] * w[c * OC + o];
                y[b * OC + o] = (l < ANN_LAYERS - 1 && s < 0) ? 0 : s;  // ReLU, except on the logits
            }
        p += (size_t)C * OC + OC;
        double *t = x;
        x = y, y = t;
    }
    double loss = 0;  // x now holds the logits (B, 10)
    for (int b = 0; b < B; b++) {
        double max = x[b * NUM_CLASSES], sum = 0;
        for (int k = 1; k < NUM_CLASSES; k++) max = fmax(max, x[b * NUM_CLASSES + k]);
        for (int k = 0; k < NUM_CLASSES; k++) sum += exp(x[b * NUM_CLASSES + k] - max);
        for (int k = 0; k < NUM_CLASSES; k++)
            loss -= targets[b * NUM_CLASSES + k] * (x[b * NUM_CLASSES + k] - max - log(sum));
    }
    free(x);
    free(y);
    return loss / B;
}

/* Checks B images three ways and prints a table of the largest relative
   error of each pair, per parameter group. Returns 1 when every error is
   below `tolerance`. */
int check_ann_gradients(const Dataset *d, int B, uint64_t seed, int samples, double tolerance) {
    require(B >= 1 && B <= d->count, "a gradient check of %d images on a set of %d", B, d->count);
    Ann hand = ann_new(B, seed);
    GraphClassifier engine = ann_graph(B, seed);
    float *probs = xmalloc((size_t)B * NUM_CLASSES * sizeof(float));
    Batch batch = {.images = d->images, .targets = d->targets, .count = B};
    memset(hand.grad_memory, 0, hand.param_count * sizeof(float));
    ann_compute_gradients(&hand, &batch, probs);
    graph_zero_grad(engine.graph);
    graph_compute_gradients(&engine, &batch, probs);

    double *params = xmalloc(hand.param_count * sizeof(double));
    for (size_t i = 0; i < hand.param_count; i++) params[i] = hand.param_memory[i];
    Rng rng = rng_new(seed, STREAM_CHECK);
    const double h = 1e-6;
    int ok = 1;
    printf("  %-8s %7s   %-15s %-21s %s\n", "group", "size", "hand vs engine", "engine vs differences", "hand vs differences");
    size_t start = 0;
    for (int g = 0; g < 2 * ANN_LAYERS; g++) {
        int l = g / 2;
        size_t size = g % 2 ? (size_t)ANN_WIDTHS[l + 1] : (size_t)ANN_WIDTHS[l] * ANN_WIDTHS[l + 1];
        double hand_engine = 0, engine_fd = 0, hand_fd = 0;
        // An if, not fmax: gcc 12 for arm64 crashes vectorising a loop of fmax at -O3.
        for (size_t i = start; i < start + size; i++) {
            double error = relative_error(hand.grad_memory[i], engine.graph->grads[i]);
            if (error > hand_engine) hand_engine = error;
        }
        for (int s = 0; s < samples; s++) {
            size_t i = start + rng_below(&rng, (uint32_t)size);
            double saved = params[i];
            params[i] = saved + h;
            double up = ann_loss_in_double(params, d->images, d->targets, B);
            params[i] = saved - h;
            double down = ann_loss_in_double(params, d->images, d->targets, B);
            params[i] = saved;
            double difference = (up - down) / (2 * h);
            engine_fd = fmax(engine_fd, relative_error(engine.graph->grads[i], difference));
            hand_fd = fmax(hand_fd, relative_error(hand.grad_memory[i], difference));
        }
        ok &= hand_engine < tolerance && engine_fd < tolerance && hand_fd < tolerance;
        char name[32];
        snprintf(name, sizeof name, "%s%d", g % 2 ? "bias" : "weight", l + 1);
        printf("  %-8s %7zu   %-15.2g %-21.2g %.2g\n", name, size, hand_engine, engine_fd, hand_fd);
        start += size;
    }
    printf("  (largest relative error in each group; differences on %d sampled parameters per group)\n", samples);
    free(params);
    free(probs);
    graph_free(engine.graph);
    ann_free(&hand);
    return ok;
}

// Seconds per training step: the least of `rounds` timings of `steps`
// steps each. The least is the timing the rest of the machine disturbed
// least; rounds of the two models alternate, so slow spells hit both.
// Returns the number of steps each timing took.
int time_training_steps(Model *models[2], const Dataset *d, int batch, int rounds, int steps, double best[2]) {
    Dataset few = dataset_slice(d, 0, steps * batch < d->count ? steps * batch : d->count);
    int taken = (few.count + batch - 1) / batch;
    best[0] = best[1] = INFINITY;
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < 2; k++) {
            Optimizer opt = optimizer_new(OPTIMIZER_ADAM, 0.001f, models[k]->count);
            Trainer t = trainer_new(models[k], &opt, &few, batch, 1);
            EpochState s = {0};
            Error ignored = {0};  // Adam at 0.001 on real images does not diverge in 100 steps
            double start = now_seconds();
            train_epoch(&t, 1, 1, &s, NULL, NULL, &ignored);
            best[k] = fmin(best[k], (now_seconds() - start) / taken);
            trainer_free(&t);
            optimizer_free(&opt);
        }
    return taken;
}

// Trains chapter 2's hand-written ANN with the same seed and options as the
// engine's run in `engine_history` and prints how far apart the two loss
// curves are; then times both, to show what the engine's generality costs.
// Returns 0, or EXIT_BAD_GRADIENT (with the message in *err) when the
// curves differ at all.
int compare_with_hand_written(const FashionMnist *data, const Options *o, const History *engine_history,
                              Error *err) {
    printf("\nthe same training with chapter 2's hand-written ANN, for comparison:\n");
    Dataset train_set = training_set(data, o);
    Ann ann = ann_new(o->batch, (uint64_t)o->seed);
    Model model = ann_model(&ann);
    Optimizer opt = optimizer_new(optimizer_kind(o), (float)o->learning_rate, model.count);
    History *h = history_new(o->epochs, (train_set.count + o->batch - 1) / o->batch);
    int status = train(&model, &opt, &train_set, &data->validation, o->epochs, o->batch, (uint64_t)o->seed, h, err);
    double largest = 0;
    for (int i = 0; i < h->batch_count && i < engine_history->batch_count; i++)
        largest = fmax(largest, fabs(h->batch_losses[i] - engine_history->batch_losses[i]));
    // The engine runs chapter 2's kernels on the same numbers in the same
    // order, so even the rounding is the same: anything but 0 is a bug.
    if (!status) {
        printf("\nlargest difference between the two loss curves, over %d batches: %g\n", h->batch_count, largest);
        if (largest != 0 || h->batch_count != engine_history->batch_count)
            status = fail(err, EXIT_BAD_GRADIENT, "the engine and chapter 2 trained differently (loss curves "
                          "%g apart, over %d and %d batches); they run the same kernels in the same order, "
                          "so they must agree exactly: a bug in the engine", largest, engine_history->batch_count,
                          h->batch_count);
    }
    if (!status) {
        enum { ROUNDS = 5, STEPS = 100 };
        GraphClassifier engine = ann_graph(o->batch, (uint64_t)o->seed);
        Model engine_model = graph_model(&engine, "ann");
        Model *models[2] = {&model, &engine_model};
        double best[2];
        int steps = time_training_steps(models, &train_set, o->batch, ROUNDS, STEPS, best);
        printf("time per training step of %d images (best of %d rounds of %d step%s): hand-written %.3f ms, "
               "engine %.3f ms; the engine's overhead: %+.1f%%\n", o->batch, ROUNDS, steps, steps == 1 ? "" : "s",
               1e3 * best[0], 1e3 * best[1], 100 * (best[1] / best[0] - 1));
        graph_free(engine.graph);
    }
    history_free(h);
    optimizer_free(&opt);
    ann_free(&ann);
    return status;
}
/* ----------------------------------------------------------------------------
   The program. */

enum { CONTINUE = -1 };

// Parses the options and loads the data. Returns CONTINUE when there is work
// to do, otherwise the exit code (0 after --help).
int begin(int argc, char **argv, Options *options, FashionMnist *data) {
    Error err = {0};
    if (parse_options(argc, argv, options, &err)) {
        fprintf(stderr, "%s: %s\n\n", argv[0], err.message);
        print_usage(stderr, argv[0]);
        return err.code;
    }
    if (options->help) {
        print_usage(stdout, argv[0]);
        return 0;
    }
    if (load_fashion_mnist(options->data_dir, data, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.message);
        return err.code;
    }
    printf("Fashion-MNIST: %d training, %d validation, %d test images\n",
           data->train.count, data->validation.count, data->test.count);
    return CONTINUE;
}

int main(int argc, char **argv) {
    Options options;
    FashionMnist data;
    int status = begin(argc, argv, &options, &data);
    if (status != CONTINUE) return finish_output(argv[0], status);

    // Eight images, or all there are when a small --data set has fewer.
    int check_batch = data.train.count < 8 ? data.train.count : 8;
    printf("\ngradients of the ANN on %d training image%s, three ways:\n", check_batch, check_batch == 1 ? "" : "s");
    if (!check_ann_gradients(&data.train, check_batch, (uint64_t)options.seed, 50, 1e-3)) {
        fprintf(stderr, "%s: the gradient check failed: the engine, chapter 2 and the finite "
                "differences disagree (see the table above)\n", argv[0]);
        free_fashion_mnist(&data);
        return finish_output(argv[0], EXIT_BAD_GRADIENT);
    }

    GraphClassifier ann = ann_graph(options.batch, (uint64_t)options.seed);
    printf("\nthe ANN as a graph, in the order it runs:\n");
    graph_print(ann.graph);
    Model model = graph_model(&ann, "ann");
    History *history = NULL;
    Result result;
    Error err = {0};
    status = fit_and_test(&model, &data, &options, &history, &result, &err);
    if (!status && !options.overfit && !options.no_compare)
        status = compare_with_hand_written(&data, &options, history, &err);
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    else if (!options.overfit) print_result(&result);

    history_free(history);
    graph_free(ann.graph);
    free_fashion_mnist(&data);
    return finish_output(argv[0], status);
}
