/* chapter2.c - a dense network (the ANN) trained with hand-derived backprop.

   What it adds: flat float arrays with their shapes; a plain matrix
   multiply; dense, ReLU and softmax-cross-entropy layers with their
   backward passes derived by hand; Glorot initialisation; SGD and Adam;
   a seeded random number generator with separate streams; mini-batch
   training with live progress, validation every epoch and a test
   confusion matrix at the end.
   What it is not: general. Every gradient here is written out for this one
   network; chapter 3 replaces that with automatic differentiation.

   Build and run:   make chapter2 && ./chapter2        (./chapter2 --help)
              or:   cc -std=c11 -O3 chapters/chapter2.c -o chapter2 -lm
   Read with:       book.md, "Chapter 2: A dense network, by hand".

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

    Ann ann = ann_new(options.batch, (uint64_t)options.seed);
    Model model = ann_model(&ann);
    History *history = NULL;
    Result result;
    Error err = {0};
    status = fit_and_test(&model, &data, &options, &history, &result, &err);
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    else if (!options.overfit) print_result(&result);

    history_free(history);
    ann_free(&ann);
    free_fashion_mnist(&data);
    return finish_output(argv[0], status);
}
