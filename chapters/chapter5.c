/* chapter5.c - batch normalisation and dropout: the deeper CNN.

   What it adds: a third kind of leaf, state (batch norm's running mean and
   variance: kept and saved, never trained); batch_norm and dropout as ops,
   each with a training and an inference mode; dropout masks from keyed
   random streams, the same at any thread count; the deeper CNN of the
   protocol (872,426 parameters, 871,530 trained); --model deeper.
   What it is not: the full protocol yet. It trains a fixed number of epochs
   and tests the last weights; early stopping and checkpoints are chapter 6.

   Build and run:   make chapter5 && ./chapter5        (./chapter5 --help)
              or:   cc -std=c11 -O3 chapters/chapter5.c -o chapter5 -lm -pthread
   Read with:       book.md, "Chapter 5: Batch normalisation and dropout".

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
#include <sys/resource.h>  // getrusage: the peak memory
#else
#define HAVE_POSIX 0
#endif

// The x86 SIMD code (gemm.c's micro-kernels, Adam's vector loops) is built
// on x86-64 by gcc or clang, unless -DNO_SIMD asks for what arm64 runs.
// Each function is compiled for its own instruction set (a target
// attribute) and called only where the CPU has that set.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(NO_SIMD)
#define HAVE_X86_KERNELS 1
#include <immintrin.h>
#else
#define HAVE_X86_KERNELS 0
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
    X(EXIT_NO_KERNEL, 16, "--kernel names a micro-kernel this CPU or build does not have")  \
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
enum { STREAM_DROPOUT = 3 };

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

/* n draws of rng_uniform at once: the same numbers in the same order, and
   the same state after. One draw at a time, each 64-bit multiply waits for
   the one before. But k steps s -> a s + c in a row are one step
       s -> A s + C,   A = a^k,   C = c (a^(k-1) + ... + a + 1)   (mod 2^64),
   so k = RNG_LANES states a draw apart can each jump k draws at once,
   independently, and the processor overlaps them. */
enum { RNG_LANES = 4 };

void rng_jump(uint64_t increment, int steps, uint64_t *A, uint64_t *C) {
    *A = 1, *C = 0;
    for (int i = 0; i < steps; i++) *A *= PCG_MULTIPLIER, *C = *C * PCG_MULTIPLIER + increment;
}

void rng_uniform_fill(Rng *r, float *out /* (n) */, size_t n) {
    size_t i = 0;
    if (n >= RNG_LANES) {
        uint64_t A, C, s[RNG_LANES] = {r->state};  // s[l]: the state of draw i + l
        rng_jump(r->increment, RNG_LANES, &A, &C);
        for (int l = 1; l < RNG_LANES; l++) s[l] = s[l - 1] * PCG_MULTIPLIER + r->increment;
        for (; i + RNG_LANES <= n; i += RNG_LANES)
            for (int l = 0; l < RNG_LANES; l++) {
                out[i + l] = rng_unit(rng_output(s[l]));
                s[l] = s[l] * A + C;
            }
        r->state = s[0];
    }
    for (; i < n; i++) out[i] = rng_uniform(r);
}

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
    const char *model, *kernel;
    int threads;
} Options;

// The models --model builds, and a checkpoint may hold.
static const char MODEL_NAMES[] = "ann|basic|deeper";

Options default_options(void) {
    return (Options){
        .data_dir = "data",
        .batch = 64, .seed = 1, .optimizer = "adam",
        .epochs = 10,
        .kernel = "auto",
        .model = "deeper",
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
    specs[n++] = (OptionSpec){.name = "--model", .value_name = "NAME", .help = "ann, basic or deeper (default: deeper)",
                              .kind = OPTION_TEXT, .target = &o->model, .choices = MODEL_NAMES};
    specs[n++] = (OptionSpec){.name = "--kernel", .value_name = "NAME", .help = "how convolutions and matrix multiplies are computed: naive, "
                              "im2col (the references), or the blocked GEMM with the portable, avx2 or avx512 "
                              "micro-kernel; auto picks the widest this CPU runs (default: auto)",
                              .kind = OPTION_TEXT, .target = &o->kernel, .choices = "auto|naive|im2col|portable|avx2|avx512"};
    specs[n++] = (OptionSpec){.name = "--threads", .value_name = "N", .help = "threads for the blocked GEMM (default: the CPUs online)",
                              .kind = OPTION_INT, .target = &o->threads, .min = 1, .max = 256};
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
   Convolution and pooling (book.md, "Chapter 4").

   What this is: the layers of a convolutional network, each a forward and a
   backward function with the convention of chapter 2 (backward ADDS into the
   gradients it produces; a NULL gradient is not wanted), in two versions
   that the tests hold against each other:
   - naive: the definition, loop for loop. Slow, and the reference.
   - im2col: every patch the kernel sees copied into a row of a matrix, so
     the convolution becomes one matrix multiply (chapter 2's), and its
     backward pass two more, with col2im to add the patch gradients back.
   What it is not: fast. Chapter 4's second half keeps these as references
   and runs the same arithmetic through a blocked, vectorised multiply.

   Layout: activations are NHWC, (batch, height, width, channels), so the C
   values of one pixel sit together; a kernel is (KH, KW, C, OC), which read
   as a (KH*KW*C, OC) matrix is exactly what a patch row multiplies. Stride
   1; `pad` zeros around the image: 0 is "valid" (the output shrinks by
   KH-1), KH/2 is "same" (it keeps its size; kernels are odd and square). */

// How the graph computes convolutions and matrix multiplies (--kernel): the
// two references here, or the blocked GEMM of chapter 4's second half.
typedef enum { KERNEL_NAIVE, KERNEL_IM2COL, KERNEL_BLOCKED } KernelKind;

// The shape of one convolution: input (B, H, W, C), kernel (KH, KW, C, OC),
// output (B, OH, OW, OC) with OH = H + 2*pad - KH + 1.
typedef struct {
    int batch, height, width, channels;
    int kernel_h, kernel_w, pad, out_channels;
    int out_h, out_w;
} ConvShape;

ConvShape conv_shape(int B, int H, int W, int C, int KH, int KW, int pad, int OC) {
    return (ConvShape){.batch = B, .height = H, .width = W, .channels = C, .kernel_h = KH,
                       .kernel_w = KW, .pad = pad, .out_channels = OC,
                       .out_h = H + 2 * pad - KH + 1, .out_w = W + 2 * pad - KW + 1};
}

// Stops the program (a bug) unless the shape is one conv_shape makes.
void check_conv_shape(const ConvShape *g, const char *who) {
    require(g->batch > 0 && g->height > 0 && g->width > 0 && g->channels > 0 && g->kernel_h > 0 &&
            g->kernel_w > 0 && g->pad >= 0, "%s: a patch geometry with a size <= 0", who);
    require(g->out_h == g->height + 2 * g->pad - g->kernel_h + 1 && g->out_w == g->width + 2 * g->pad - g->kernel_w + 1 &&
            g->out_h > 0 && g->out_w > 0, "%s: output %dx%d, but a %dx%d image with a %dx%d kernel and padding %d "
            "gives %dx%d", who, g->out_h, g->out_w, g->height, g->width, g->kernel_h, g->kernel_w, g->pad,
            g->height + 2 * g->pad - g->kernel_h + 1, g->width + 2 * g->pad - g->kernel_w + 1);
}

// The rows (output pixels) and columns (patch entries) of the im2col matrix.
size_t conv_rows(const ConvShape *s) { return (size_t)s->batch * s->out_h * s->out_w; }
size_t conv_patch_size(const ConvShape *s) { return (size_t)s->kernel_h * s->kernel_w * s->channels; }

/* The definition: out[b,oh,ow,oc] = bias[oc] + the sum over the kernel
   window of inp[b, oh+kh-pad, ow+kw-pad, c] * weight[kh,kw,c,oc], where a
   position outside the image contributes 0 (the padding). Seven loops;
   cross-correlation, strictly (the kernel is not flipped), which is what
   every deep-learning library calls convolution. */
void conv2d_forward_naive(float *out,           // (B, OH, OW, OC)
                          const float *inp,     // (B, H, W, C)
                          const float *weight,  // (KH, KW, C, OC)
                          const float *bias,    // (OC)
                          const ConvShape *s) {
    int C = s->channels, OC = s->out_channels;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++)
                for (int oc = 0; oc < OC; oc++) {
                    float sum = bias[oc];
                    for (int kh = 0; kh < s->kernel_h; kh++)
                        for (int kw = 0; kw < s->kernel_w; kw++) {
                            int ih = oh + kh - s->pad, iw = ow + kw - s->pad;
                            if (ih < 0 || ih >= s->height || iw < 0 || iw >= s->width) continue;
                            const float *x = inp + (((size_t)b * s->height + ih) * s->width + iw) * C;
                            const float *w = weight + ((size_t)kh * s->kernel_w + kw) * C * OC + oc;
                            for (int c = 0; c < C; c++) sum += x[c] * w[(size_t)c * OC];
                        }
                    out[(((size_t)b * s->out_h + oh) * s->out_w + ow) * OC + oc] = sum;
                }
}

/* The gradients, from the same sum read backwards. Each input pixel was
   used by every output whose window covered it, so
       dinp[b,ih,iw,c]    += sum over (kh, kw, oc) of dout[b, ih-kh+pad, iw-kw+pad, oc] * weight[kh,kw,c,oc]
       dweight[kh,kw,c,oc] += sum over (b, oh, ow) of inp[b, oh+kh-pad, ow+kw-pad, c] * dout[b,oh,ow,oc]
       dbias[oc]          += sum over (b, oh, ow) of dout[b,oh,ow,oc]
   (terms whose index falls outside the image or the output are left out).
   The first is again a convolution: of dout, padded by KH-1-pad, with the
   kernel turned 180 degrees and its C and OC swapped. */
void conv2d_backward_naive(float *dinp,          // (B, H, W, C) or NULL
                           float *dweight,       // (KH, KW, C, OC) or NULL
                           float *dbias,         // (OC) or NULL
                           const float *dout,    // (B, OH, OW, OC)
                           const float *inp,     // (B, H, W, C)
                           const float *weight,  // (KH, KW, C, OC)
                           const ConvShape *s) {
    int C = s->channels, OC = s->out_channels;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++) {
                const float *g = dout + (((size_t)b * s->out_h + oh) * s->out_w + ow) * OC;
                for (int oc = 0; oc < OC && dbias; oc++) dbias[oc] += g[oc];
                for (int kh = 0; kh < s->kernel_h; kh++)
                    for (int kw = 0; kw < s->kernel_w; kw++) {
                        int ih = oh + kh - s->pad, iw = ow + kw - s->pad;
                        if (ih < 0 || ih >= s->height || iw < 0 || iw >= s->width) continue;
                        size_t pixel = (((size_t)b * s->height + ih) * s->width + iw) * C;
                        size_t tap = ((size_t)kh * s->kernel_w + kw) * C * OC;
                        for (int c = 0; c < C; c++)
                            for (int oc = 0; oc < OC; oc++) {
                                if (dweight) dweight[tap + (size_t)c * OC + oc] += inp[pixel + c] * g[oc];
                                if (dinp) dinp[pixel + c] += g[oc] * weight[tap + (size_t)c * OC + oc];
                            }
                    }
            }
}

/* im2col: row (b, oh, ow) of `cols` is the patch that output pixel sees,
   in kernel order (kh, kw, c), with zeros where the window hangs over the
   edge. Then out = cols @ weight is the whole convolution in one multiply,
   at the price of KH*KW copies of the input (see the book for sizes). */
void im2col(float *cols,        // (B*OH*OW, KH*KW*C)
            const float *inp,   // (B, H, W, C)
            const ConvShape *s) {
    int C = s->channels;
    size_t row = 0;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++, row++) {
                float *patch = cols + row * conv_patch_size(s);
                for (int kh = 0; kh < s->kernel_h; kh++)
                    for (int kw = 0; kw < s->kernel_w; kw++, patch += C) {
                        int ih = oh + kh - s->pad, iw = ow + kw - s->pad;
                        if (ih < 0 || ih >= s->height || iw < 0 || iw >= s->width)
                            memset(patch, 0, (size_t)C * sizeof(float));
                        else
                            memcpy(patch, inp + (((size_t)b * s->height + ih) * s->width + iw) * C,
                                   (size_t)C * sizeof(float));
                    }
            }
}

// col2im, im2col's backward: each patch entry's gradient is ADDED to the
// input pixel it was copied from (a pixel sits in up to KH*KW patches).
void col2im(float *dinp,         // (B, H, W, C)
            const float *dcols,  // (B*OH*OW, KH*KW*C)
            const ConvShape *s) {
    int C = s->channels;
    size_t row = 0;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++, row++) {
                const float *patch = dcols + row * conv_patch_size(s);
                for (int kh = 0; kh < s->kernel_h; kh++)
                    for (int kw = 0; kw < s->kernel_w; kw++, patch += C) {
                        int ih = oh + kh - s->pad, iw = ow + kw - s->pad;
                        if (ih < 0 || ih >= s->height || iw < 0 || iw >= s->width) continue;
                        float *x = dinp + (((size_t)b * s->height + ih) * s->width + iw) * C;
                        for (int c = 0; c < C; c++) x[c] += patch[c];
                    }
            }
}

// The im2col convolution: a copy, then chapter 2's matrix multiply, then the
// bias. `cols` is scratch memory of conv_rows * conv_patch_size floats.
void conv2d_forward_im2col(float *out, const float *inp, const float *weight, const float *bias,
                           const ConvShape *s, float *cols) {  // shapes as conv2d_forward_naive
    int M = (int)conv_rows(s), K = (int)conv_patch_size(s);
    im2col(cols, inp, s);
    matmul_forward(out, cols, weight, M, K, s->out_channels);
    bias_forward(out, bias, M, s->out_channels);
}

// Its backward: dweight += cols^T @ dout and dcols = dout @ weight^T are
// chapter 2's matmul_backward; col2im adds dcols into dinp. `scratch` holds
// two im2col matrices: the patches again, and their gradient.
void conv2d_backward_im2col(float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, const ConvShape *s, float *scratch) {
    size_t M = conv_rows(s), K = conv_patch_size(s);
    float *cols = scratch, *dcols = dinp ? scratch + M * K : NULL;  // (M, K) each
    im2col(cols, inp, s);
    if (dcols) memset(dcols, 0, M * K * sizeof(float));
    if (dbias) bias_backward(dbias, dout, (int)M, s->out_channels);
    matmul_backward(dcols, dweight, dout, cols, weight, (int)M, (int)K, s->out_channels);
    if (dinp) col2im(dinp, dcols, s);
}

/* Max pooling, 2x2 windows with stride 2: each output is the largest of
   four inputs. An odd size is floored, as Keras and PyTorch do: 11 -> 5,
   and the last row and column are never looked at. A window's four inputs
   are read as four rows of C channels, each channel decided by
   compare-and-select, so the compiler does several channels per
   instruction (SSE2, NEON); ties keep the first maximum (strict >). */
enum { POOL = 2 };

void max_pool_forward(float *restrict out,        // (B, H/2, W/2, C)
                      const float *restrict inp,  // (B, H, W, C)
                      int B, int H, int W, int C) {
    int OH = H / POOL, OW = W / POOL;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float *o = out + (((size_t)b * OH + oh) * OW + ow) * C;                       // (C)
                const float *x00 = inp + (((size_t)b * H + POOL * oh) * W + POOL * ow) * C;   // (C) each
                const float *x01 = x00 + C, *x10 = x00 + (size_t)W * C, *x11 = x10 + C;
                for (int c = 0; c < C; c++) {
                    float m = x00[c];
                    m = x01[c] > m ? x01[c] : m;
                    m = x10[c] > m ? x10[c] : m;
                    o[c] = x11[c] > m ? x11[c] : m;
                }
            }
}

/* The gradient goes to the input that was the maximum, and only to it (the
   others did not move the output). On a tie it goes to the first maximum in
   reading order (top-left first), which is also what the forward pass's
   strict > picks. The maximum is found again from the input rather than
   saved, which costs a pass but no memory. */
void max_pool_backward(float *dinp,         // (B, H, W, C)
                       const float *dout,   // (B, H/2, W/2, C)
                       const float *inp,    // (B, H, W, C)
                       int B, int H, int W, int C) {
    int OH = H / POOL, OW = W / POOL;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++)
                for (int c = 0; c < C; c++) {
                    size_t first = (((size_t)b * H + POOL * oh) * W + POOL * ow) * C + c, best = first;
                    for (int dh = 0; dh < POOL; dh++)
                        for (int dw = 0; dw < POOL; dw++) {
                            size_t at = first + ((size_t)dh * W + dw) * C;
                            if (inp[at] > inp[best]) best = at;
                        }
                    dinp[best] += dout[(((size_t)b * OH + oh) * OW + ow) * C + c];
                }
}

/* The same gradient for the fast path, the same bits, in the forward
   pass's compare-and-select form. gcc vectorises neither `d = t ? d + g : d`
   nor && on comparisons without -fno-trapping-math, which the chapters do
   not use: hence this loop. */
void max_pool_backward_fast(float *restrict dinp,        // (B, H, W, C)
                            const float *restrict dout,  // (B, H/2, W/2, C)
                            const float *restrict inp,   // (B, H, W, C)
                            int B, int H, int W, int C) {
    int OH = H / POOL, OW = W / POOL;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                size_t first = (((size_t)b * H + POOL * oh) * W + POOL * ow) * C;
                const float *x00 = inp + first, *x01 = x00 + C, *x10 = x00 + (size_t)W * C, *x11 = x10 + C;  // (C) each
                float *d00 = dinp + first, *d01 = d00 + C, *d10 = d00 + (size_t)W * C, *d11 = d10 + C;       // (C) each
                const float *g = dout + (((size_t)b * OH + oh) * OW + ow) * C;                               // (C)
                for (int c = 0; c < C; c++) {
                    // The reference's walk through the window: the first input
                    // holds the gradient, and each strictly larger one takes it
                    // from whoever held it. The others add -0, which changes no
                    // number (not even a -0, as adding +0 would).
                    float gradient = g[c], m = x00[c];
                    float g00 = gradient, g01 = -0.0f, g10 = -0.0f, g11 = -0.0f;
                    int larger = x01[c] > m;
                    g01 = larger ? gradient : g01, g00 = larger ? -0.0f : g00;
                    m = larger ? x01[c] : m;
                    larger = x10[c] > m;
                    g10 = larger ? gradient : g10, g00 = larger ? -0.0f : g00, g01 = larger ? -0.0f : g01;
                    m = larger ? x10[c] : m;
                    larger = x11[c] > m;
                    g11 = larger ? gradient : g11, g00 = larger ? -0.0f : g00, g01 = larger ? -0.0f : g01;
                    g10 = larger ? -0.0f : g10;
                    d00[c] += g00, d01[c] += g01, d10[c] += g10, d11[c] += g11;
                }
            }
}

/* Average pooling, the windows of max pooling (2x2, stride 2, an odd last
   row or column left out): each output is the mean of its four inputs, so
   each input of a window moved it by a quarter of its own change. */
void avg_pool_forward(float *out,          // (B, H/2, W/2, C)
                      const float *inp,    // (B, H, W, C)
                      int B, int H, int W, int C) {
    int OH = H / POOL, OW = W / POOL;
    size_t row = (size_t)W * C;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                const float *top = inp + ((size_t)b * H + (size_t)POOL * oh) * row + (size_t)POOL * ow * C;
                float *o = out + (((size_t)b * OH + oh) * OW + ow) * C;
                for (int c = 0; c < C; c++)
                    o[c] = 0.25f * ((top[c] + top[C + c]) + (top[row + c] + top[row + C + c]));
            }
}

void avg_pool_backward(float *dinp,        // (B, H, W, C)
                       const float *dout,  // (B, H/2, W/2, C)
                       int B, int H, int W, int C) {
    int OH = H / POOL, OW = W / POOL;
    size_t row = (size_t)W * C;
    for (int b = 0; b < B; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float *top = dinp + ((size_t)b * H + (size_t)POOL * oh) * row + (size_t)POOL * ow * C;
                const float *g = dout + (((size_t)b * OH + oh) * OW + ow) * C;
                for (int c = 0; c < C; c++) {
                    float quarter = 0.25f * g[c];
                    top[c] += quarter, top[C + c] += quarter, top[row + c] += quarter, top[row + C + c] += quarter;
                }
            }
}

/* A convolution with a stride: output (oh, ow) reads the input from row
   oh * stride - pad and column ow * stride - pad, so OH = (H + 2 pad - KH)
   / stride + 1, floored (OW likewise). `s` is conv_shape's stride-1 shape:
   its out_h and out_w are not this output's. A stride of 2 does a quarter
   of the work and halves the height and width, as pooling does. */
void conv2d_forward_strided(float *out,           // (B, OH, OW, OC) for this stride
                            const float *inp,     // (B, H, W, C)
                            const float *weight,  // (KH, KW, C, OC)
                            const float *bias,    // (OC)
                            const ConvShape *s, int stride) {
    int OH = (s->height + 2 * s->pad - s->kernel_h) / stride + 1;
    int OW = (s->width + 2 * s->pad - s->kernel_w) / stride + 1;
    size_t C = (size_t)s->channels, OC = (size_t)s->out_channels;
    for (int b = 0; b < s->batch; b++)
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                float *o = out + (((size_t)b * OH + oh) * OW + ow) * OC;
                for (size_t oc = 0; oc < OC; oc++) o[oc] = bias[oc];
                for (int kh = 0; kh < s->kernel_h; kh++) {
                    int ih = oh * stride + kh - s->pad;
                    if (ih < 0 || ih >= s->height) continue;
                    for (int kw = 0; kw < s->kernel_w; kw++) {
                        int iw = ow * stride + kw - s->pad;
                        if (iw < 0 || iw >= s->width) continue;
                        const float *pixel = inp + (((size_t)b * s->height + ih) * s->width + iw) * C;
                        const float *taps = weight + ((size_t)kh * s->kernel_w + kw) * C * OC;
                        for (size_t c = 0; c < C; c++)
                            for (size_t oc = 0; oc < OC; oc++) o[oc] += pixel[c] * taps[c * OC + oc];
                    }
                }
            }
}
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
/* ----------------------------------------------------------------------------
   One fast matrix multiply for every convolution and dense pass.

   What this is: C = (accumulate ? C : 0) + A @ B in single precision, the
   way Goto and van de Geijn built GEMM (and BLIS and OpenBLAS after them):
   five loops cut the problem into blocks that fit the caches, each block of
   A and B is copied ("packed") into the order the innermost loop reads, and
   a micro-kernel multiplies one packed strip of A by one packed panel of B
   into an MR x NR tile of C held in registers. The packing does all the
   adapting: A may be a matrix, its transpose, or the im2col "patch matrix"
   of an image, read straight from the image, so a convolution is one GEMM
   with no extra memory.
   What it is not: a BLAS. Single precision, no alpha or beta, one blocking
   for every machine; AVX2 and AVX-512 kernels for x86, and a portable one
   in plain C for every other machine.

   The tests (tests/test_gemm.c) hold it to a triple loop in double
   precision, and to one definition, bit for bit. Element C(i, j) is
       c = start(i, j);  for k = 0, 1, ..., K-1:  c = fma(A(i, k), B(k, j), c)
   where start is C's old value (accumulate), bias(j) (gemm_with_bias), or
   0: one rounding per step, in one fixed order, whatever the kernel, the
   blocking or the number of threads ("Determinism", at the driver). */

/* ----------------------------------------------------------------------------
   Operands: how element (r, c) of A or B is found. */

typedef struct {
    const float *data;
    long row_stride, col_stride;   // a matrix: element (r, c) = data[r*row_stride + c*col_stride]
    const ConvShape *patches;      // patches when non-NULL: data is the image; element (r, c) of the
                                   // (B*OH*OW, KH*KW*C) im2col matrix, r = (b, oh, ow), c = (kh, kw, ci),
                                   // 0 outside the image (zero padding)
    int transposed;                // with patches: the operand is the transpose, (KH*KW*C, B*OH*OW)
} Operand;

// A row-major (rows, cols) matrix with rows `ld` floats apart, and its
// transpose: the same memory read with the strides swapped.
Operand matrix_operand(const float *data, long ld) { return (Operand){data, ld, 1, NULL, 0}; }
Operand transposed_operand(const float *data, long ld) { return (Operand){data, 1, ld, NULL, 0}; }

Operand patches_operand(const float *image, const ConvShape *g, int transposed) {  // image (B, H, W, C)
    return (Operand){image, 0, 0, g, transposed};
}

/* ----------------------------------------------------------------------------
   Micro-kernels: one (MR, NR) tile of C from a packed strip of A and a
   packed panel of B. The contract, the same for every kernel:

   kernel(kc, a, rs_a, cs_a, b, c, ldc, start, ld_start) computes, for every
   i < MR and j < NR, with A(i, k) = a[i*rs_a + k*cs_a] and B(k, j) = b[k*NR + j],
       c[i*ldc + j] = fma(A(i, kc-1), B(kc-1, j), ... fma(A(i, 0), B(0, j), s) ...)
   where s = start[i*ld_start + j]: C's old value (start = c, ld_start =
   ldc), or the bias or zeros, one row for every row of the tile (ld_start
   = 0), loaded straight into the registers. Every kernel keeps this
   exactly, which is why they agree to the bit; only how many elements
   they compute at once differs.

   The strip is packed in one of two orders, whichever lets pack_a read A
   in memory order: by rows (rs_a = kc, cs_a = 1) or by columns (rs_a = 1,
   cs_a = MR). The panel is always packed k by k, NR floats each. */

typedef void MicroKernel(int kc, const float *a, long rs_a, long cs_a, const float *b,  // a (MR, kc), b (kc, NR)
                         float *c, long ldc, const float *start, long ld_start);        // c, start (MR, NR)
// start may be c itself: every kernel loads all of it before it stores
// anything (so no restrict on c and start).

typedef struct {
    const char *name;        // "portable", "avx2", "avx512"
    int nr;                  // the columns of C one call computes (MR rows)
    MicroKernel *kernel;
    int (*supported)(void);  // can this CPU run it?
} GemmKernel;

/* Every kernel computes MR = 6 rows of C at a time, and as many columns,
   NR, as its registers hold: 6 broadcasts of A and 2 loads of B feed 12
   FMAs per k, which keeps two FMA units busy (see the AVX2 kernel). One MR
   for all lets the packing of A be the same for every kernel. */
enum { MR = 6, GEMM_MAX_NR = 32 };
static const float GEMM_ZEROS[GEMM_MAX_NR];  // the start of a tile that starts from 0 (ld_start 0)

/* The portable kernel, 6x4: 24 scalar accumulators, c00..c53 (row, column).
   Per k it loads 6 values of A and 4 of B and does 24 fmaf. C's fmaf is
   exact (one rounding) everywhere: one instruction on arm64, a slow library
   call on x86 built without -mfma, which is why x86 has kernels of its own.
   It is the reference the others are tested against. */
void gemm_kernel_portable(int kc, const float *a, long rs_a, long cs_a, const float *b, float *c, long ldc,
                          const float *start, long ld_start) {
    float acc[MR][4];  // the tile of C: the compiler keeps all 24 in registers
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = start[i * ld_start + j];
    for (int k = 0; k < kc; k++, a += cs_a, b += 4)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i * rs_a], b[j], acc[i][j]);
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 4; j++) c[i * ldc + j] = acc[i][j];
}

int always_supported(void) { return 1; }

/* The x86 kernels, compiled for their instruction set with a target
   attribute and run only if the CPU has it (__builtin_cpu_supports, which
   also checks that the operating system saves the wide registers). Other
   machines never see them; -DNO_SIMD leaves them out on x86 too. */
#if HAVE_X86_KERNELS
int cpu_has_avx2_fma(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
int cpu_has_avx512f(void) { return __builtin_cpu_supports("avx512f"); }

/* AVX2 + FMA, 6x16. Twelve ymm registers (8 floats) hold the tile, row i
   in ci0, ci1; b0, b1 load 16 values of B a k; ai broadcasts one of A. Per
   k: 12 FMAs = 192 FLOPs in 6 cycles on two FMA units, the peak, and 12
   independent chains cover an FMA latency of 4-5 cycles. */
__attribute__((target("avx2,fma")))
void gemm_kernel_avx2(int kc, const float *a, long rs_a, long cs_a, const float *b, float *c, long ldc,
                      const float *start, long ld_start) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    c00 = _mm256_loadu_ps(start + 0 * ld_start), c01 = _mm256_loadu_ps(start + 0 * ld_start + 8);
    c10 = _mm256_loadu_ps(start + 1 * ld_start), c11 = _mm256_loadu_ps(start + 1 * ld_start + 8);
    c20 = _mm256_loadu_ps(start + 2 * ld_start), c21 = _mm256_loadu_ps(start + 2 * ld_start + 8);
    c30 = _mm256_loadu_ps(start + 3 * ld_start), c31 = _mm256_loadu_ps(start + 3 * ld_start + 8);
    c40 = _mm256_loadu_ps(start + 4 * ld_start), c41 = _mm256_loadu_ps(start + 4 * ld_start + 8);
    c50 = _mm256_loadu_ps(start + 5 * ld_start), c51 = _mm256_loadu_ps(start + 5 * ld_start + 8);
    for (int k = 0; k < kc; k++, a += cs_a, b += 16) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), ai;
        ai = _mm256_broadcast_ss(a), c00 = _mm256_fmadd_ps(ai, b0, c00), c01 = _mm256_fmadd_ps(ai, b1, c01);
        ai = _mm256_broadcast_ss(a + rs_a), c10 = _mm256_fmadd_ps(ai, b0, c10), c11 = _mm256_fmadd_ps(ai, b1, c11);
        ai = _mm256_broadcast_ss(a + 2 * rs_a), c20 = _mm256_fmadd_ps(ai, b0, c20), c21 = _mm256_fmadd_ps(ai, b1, c21);
        ai = _mm256_broadcast_ss(a + 3 * rs_a), c30 = _mm256_fmadd_ps(ai, b0, c30), c31 = _mm256_fmadd_ps(ai, b1, c31);
        ai = _mm256_broadcast_ss(a + 4 * rs_a), c40 = _mm256_fmadd_ps(ai, b0, c40), c41 = _mm256_fmadd_ps(ai, b1, c41);
        ai = _mm256_broadcast_ss(a + 5 * rs_a), c50 = _mm256_fmadd_ps(ai, b0, c50), c51 = _mm256_fmadd_ps(ai, b1, c51);
    }
    _mm256_storeu_ps(c + 0 * ldc, c00), _mm256_storeu_ps(c + 0 * ldc + 8, c01);
    _mm256_storeu_ps(c + 1 * ldc, c10), _mm256_storeu_ps(c + 1 * ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20), _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30), _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40), _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50), _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

/* AVX-512F, 6x32: the AVX2 kernel with registers twice as wide (zmm, 16
   floats): per k 12 FMAs of 16 lanes = 384 FLOPs, 64 FLOPs a cycle on two
   FMA units. */
__attribute__((target("avx512f")))
void gemm_kernel_avx512(int kc, const float *a, long rs_a, long cs_a, const float *b, float *c, long ldc,
                        const float *start, long ld_start) {
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    c00 = _mm512_loadu_ps(start + 0 * ld_start), c01 = _mm512_loadu_ps(start + 0 * ld_start + 16);
    c10 = _mm512_loadu_ps(start + 1 * ld_start), c11 = _mm512_loadu_ps(start + 1 * ld_start + 16);
    c20 = _mm512_loadu_ps(start + 2 * ld_start), c21 = _mm512_loadu_ps(start + 2 * ld_start + 16);
    c30 = _mm512_loadu_ps(start + 3 * ld_start), c31 = _mm512_loadu_ps(start + 3 * ld_start + 16);
    c40 = _mm512_loadu_ps(start + 4 * ld_start), c41 = _mm512_loadu_ps(start + 4 * ld_start + 16);
    c50 = _mm512_loadu_ps(start + 5 * ld_start), c51 = _mm512_loadu_ps(start + 5 * ld_start + 16);
    for (int k = 0; k < kc; k++, a += cs_a, b += 32) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), ai;
        ai = _mm512_set1_ps(a[0]), c00 = _mm512_fmadd_ps(ai, b0, c00), c01 = _mm512_fmadd_ps(ai, b1, c01);
        ai = _mm512_set1_ps(a[rs_a]), c10 = _mm512_fmadd_ps(ai, b0, c10), c11 = _mm512_fmadd_ps(ai, b1, c11);
        ai = _mm512_set1_ps(a[2 * rs_a]), c20 = _mm512_fmadd_ps(ai, b0, c20), c21 = _mm512_fmadd_ps(ai, b1, c21);
        ai = _mm512_set1_ps(a[3 * rs_a]), c30 = _mm512_fmadd_ps(ai, b0, c30), c31 = _mm512_fmadd_ps(ai, b1, c31);
        ai = _mm512_set1_ps(a[4 * rs_a]), c40 = _mm512_fmadd_ps(ai, b0, c40), c41 = _mm512_fmadd_ps(ai, b1, c41);
        ai = _mm512_set1_ps(a[5 * rs_a]), c50 = _mm512_fmadd_ps(ai, b0, c50), c51 = _mm512_fmadd_ps(ai, b1, c51);
    }
    _mm512_storeu_ps(c + 0 * ldc, c00), _mm512_storeu_ps(c + 0 * ldc + 16, c01);
    _mm512_storeu_ps(c + 1 * ldc, c10), _mm512_storeu_ps(c + 1 * ldc + 16, c11);
    _mm512_storeu_ps(c + 2 * ldc, c20), _mm512_storeu_ps(c + 2 * ldc + 16, c21);
    _mm512_storeu_ps(c + 3 * ldc, c30), _mm512_storeu_ps(c + 3 * ldc + 16, c31);
    _mm512_storeu_ps(c + 4 * ldc, c40), _mm512_storeu_ps(c + 4 * ldc + 16, c41);
    _mm512_storeu_ps(c + 5 * ldc, c50), _mm512_storeu_ps(c + 5 * ldc + 16, c51);
}
#endif

// Every kernel this build has, the portable one first and the widest last.
static const GemmKernel GEMM_KERNELS[] = {
    {"portable", 4, gemm_kernel_portable, always_supported},
#if HAVE_X86_KERNELS
    {"avx2", 16, gemm_kernel_avx2, cpu_has_avx2_fma},
    {"avx512", 32, gemm_kernel_avx512, cpu_has_avx512f},
#endif
};
enum { GEMM_KERNEL_COUNT = sizeof GEMM_KERNELS / sizeof GEMM_KERNELS[0] };

const GemmKernel *gemm_kernel_by_name(const char *name) {  // NULL: this build has none by that name
    for (int i = 0; i < GEMM_KERNEL_COUNT; i++)
        if (strcmp(GEMM_KERNELS[i].name, name) == 0) return &GEMM_KERNELS[i];
    return NULL;
}

int gemm_kernel_supported(const GemmKernel *kernel) { return kernel && kernel->supported(); }

// The widest kernel this CPU runs.
const GemmKernel *gemm_best_kernel(void) {
    for (int i = GEMM_KERNEL_COUNT - 1; i > 0; i--)
        if (GEMM_KERNELS[i].supported()) return &GEMM_KERNELS[i];
    return &GEMM_KERNELS[0];
}

/* ----------------------------------------------------------------------------
   Packing: copying blocks of A and B into the order the micro-kernel reads.

   pack_block copies a block of an operand's rows and columns into a dense
   array, row by row; a block of the transpose is a block of the operand
   read the other way round. Patches are read from the image here, which is
   all there is to im2col.

   Each row of a block of patches is made of "lines": for one kh, the KW * C
   columns of output pixel (b, oh, ow) are KW neighbouring pixels of image
   row ih = oh + kh - pad, side by side in memory, with zeros where kw
   reaches past the left or right edge, and all zeros when ih is above or
   below the image. */

// dst[o - from] = data[base + o] for lo <= o < hi, and 0 for the other o
// in [from, to): a line of an image with zero padding on both sides. base
// may be negative; only data[base + lo .. base + hi) is read.
void pack_line(float *dst,  // (to - from)
               const float *data, long base, long lo, long hi, long from, long to) {
    long inside_from = lo < from ? from : lo > to ? to : lo;
    long inside_to = hi > to ? to : hi < inside_from ? inside_from : hi;
    if (inside_from > from) memset(dst, 0, (size_t)(inside_from - from) * sizeof(float));
    memcpy(dst + (inside_from - from), data + base + inside_from, (size_t)(inside_to - inside_from) * sizeof(float));
    if (to > inside_to) memset(dst + (inside_to - from), 0, (size_t)(to - inside_to) * sizeof(float));
}

// Rows [row0, row0 + rows) and columns [col0, col0 + cols) of the operand
// (a matrix, or patches not transposed), row i of the block at dst + i * ld.
void pack_block(float *dst,  // (rows, ld), of which (rows, cols) written
                long ld, const Operand *op, long row0, int rows, long col0, int cols) {
    const ConvShape *g = op->patches;
    if (!g) {
        long rs = op->row_stride, cs = op->col_stride;
        const float *src = op->data + row0 * rs + col0 * cs;  // (rows, cols), rs and cs apart
        for (int i = 0; i < rows; i++, dst += ld, src += rs) {
            if (cs != 1)
                for (int j = 0; j < cols; j++) dst[j] = src[j * cs];
            else if (cols == MR) memcpy(dst, src, MR * sizeof(float));  // a strip's width: a few moves, no call
            else memcpy(dst, src, (size_t)cols * sizeof(float));
        }
        return;
    }
    int H = g->height, W = g->width, C = g->channels, KW = g->kernel_w, pad = g->pad, OH = g->out_h, OW = g->out_w;
    long line = (long)KW * C;
    // Where the block starts takes divisions, once; from there on every position
    // is counted up (a division costs as much as copying a dozen floats).
    int ow = (int)(row0 % OW), oh = (int)(row0 / OW % OH), b = (int)(row0 / OW / OH);
    for (int i = 0; i < rows; i++, dst += ld) {
        long lo = (long)(pad - ow > 0 ? pad - ow : 0) * C;  // the columns of a line inside the image
        long hi = (long)(W + pad - ow < KW ? W + pad - ow : KW) * C;
        float *d = dst;
        long from = col0 % line;
        for (long kh = col0 / line, left = cols; left > 0; kh++, from = 0) {
            long to = from + left < line ? from + left : line, ih = oh + kh - pad;
            long base = (((long)b * H + ih) * W + ow - pad) * C;  // where kw = 0, ci = 0 would be
            if (ih < 0 || ih >= H) memset(d, 0, (size_t)(to - from) * sizeof(float));
            else pack_line(d, op->data, base, lo, hi, from, to);
            d += to - from;
            left -= to - from;
        }
        if (++ow == OW) {
            ow = 0;
            if (++oh == OH) oh = 0, b++;
        }
    }
}

/* Is a strip of A packed by rows? When its rows run along memory: a
   row-major matrix, or patches (lines of KW * C floats). Otherwise by
   columns, MR neighbouring floats per k. Either way the packing reads
   memory in order. */
int pack_a_by_rows(const Operand *A) { return A->patches ? !A->transposed : A->col_stride == 1; }

/* A block of the transposed patches, packed by columns, pixel by pixel.
   Row r of the transposed patches is weight (kh, j): j = kw * C + ci runs
   along kernel row kh's line; column k is output pixel (b, oh, ow). So the
   MR weights of a strip that lie in one line, inside the image, are MR
   neighbouring floats of pixel k's line: one short copy. Strips that cross
   a line's end or the image's edge go float by float. */
void pack_patches_by_columns(float *packed,  // (ceil(rows / MR), kc, MR)
                             const Operand *A, long row0, int rows, long k0, int kc) {
    const ConvShape *g = A->patches;
    int H = g->height, W = g->width, C = g->channels, KW = g->kernel_w, pad = g->pad, OH = g->out_h, OW = g->out_w;
    long line = (long)KW * C, strip_floats = (long)MR * kc;
    int ow = (int)(k0 % OW), oh = (int)(k0 / OW % OH), b = (int)(k0 / OW / OH);
    long kh0 = row0 / line, j0 = row0 % line;  // the block's first row
    for (int k = 0; k < kc; k++) {
        long lo = (long)(pad - ow > 0 ? pad - ow : 0) * C;  // the columns of a line inside the image
        long hi = (long)(W + pad - ow < KW ? W + pad - ow : KW) * C;
        long kh = kh0, j = j0;
        float *d = packed + (size_t)k * MR;  // (MR) this pixel's column of the first strip
        for (int s = 0; s < rows; s += MR, d += strip_floats) {
            long ih = oh + kh - pad, base = (((long)b * H + ih) * W + ow - pad) * C;  // line kh starts at base
            if (rows - s >= MR && j + MR <= line && lo <= j && j + MR <= hi && ih >= 0 && ih < H) {
                memcpy(d, A->data + base + j, MR * sizeof(float));
                j += MR;
            } else {
                for (int m = 0; m < MR; m++, j++) {
                    if (j == line) j = 0, kh++, ih++, base += (long)W * C;
                    int inside = s + m < rows && ih >= 0 && ih < H && j >= lo && j < hi;
                    d[m] = inside ? A->data[base + j] : 0.0f;
                }
            }
            if (j >= line) j -= line, kh++;
        }
        if (++ow == OW) {
            ow = 0;
            if (++oh == OH) oh = 0, b++;
        }
    }
}

// Rows [k0, k0 + kc) and columns [col0, col0 + cols) of B, as panels of nr
// columns, each stored k by k; the columns of the last panel beyond `cols`
// are zeros. B is a matrix or its transpose.
void pack_b(float *packed,  // (ceil(cols / nr), kc, nr)
            const Operand *B, long k0, int kc, long col0, int cols, int nr) {
    for (int j = 0; j < cols; j += nr, packed += (size_t)kc * nr) {
        int valid = cols - j < nr ? cols - j : nr;
        pack_block(packed, nr, B, k0, kc, col0 + j, valid);
        for (int k = 0; k < kc && valid < nr; k++)
            memset(packed + (size_t)k * nr + valid, 0, (size_t)(nr - valid) * sizeof(float));
    }
}

// Rows [row0, row0 + rows) and columns [k0, k0 + kc) of A, as strips of MR
// rows, one after the other; the rows of the last strip beyond `rows` are
// zeros. Strip s starts at packed + s * MR * kc.
void pack_a(float *packed,  // (ceil(rows / MR), MR * kc)
            const Operand *A, long row0, int rows, long k0, int kc) {
    if (A->patches && A->transposed) {
        pack_patches_by_columns(packed, A, row0, rows, k0, kc);
        return;
    }
    if (!pack_a_by_rows(A)) {  // by columns: A's strips are the panels, MR wide, of its transpose
        Operand At = {A->data, A->col_stride, A->row_stride, NULL, 0};  // a matrix: its strides swapped
        pack_b(packed, &At, k0, kc, row0, rows, MR);
        return;
    }
    for (int s = 0; s < rows; s += MR, packed += (size_t)MR * kc) {
        int valid = rows - s < MR ? rows - s : MR;
        pack_block(packed, kc, A, row0 + s, valid, k0, kc);
        memset(packed + (size_t)valid * kc, 0, (size_t)(MR - valid) * kc * sizeof(float));
    }
}

/* ----------------------------------------------------------------------------
   Blocking: how big the packed blocks are.

   The micro-kernel streams an (MR, kc) strip of A and a (kc, NR) panel of
   B and keeps C in registers. Around it, three block sizes choose what
   stays in which cache, for a core with 32 KB of L1 data or more and
   512 KB of L2 or more, and an L3 that all cores share:
   - KC = 256: the strip of A in use, MR * KC * 4 = 6 KB, and the panel of
     B, KC * NR * 4 = 16 KB for AVX2 (32 KB for AVX-512), fit in L1 together.
     Longer k spreads the loads and stores of the C tile over more FMAs.
   - MC = 240: a task's packed block of A, MC * KC * 4 = 240 KB, stays in
     L2 while every panel of B passes over it. A multiple of MR.
   - NC = 256: the packed block of B, KC * NC * 4 = 256 KB, stays in L2 or
     L3, shared by every task. Our widest layer has 256 outputs.
   None is a sharp optimum: halving or doubling one keeps its block in the
   same cache. `make bench` sweeps others (Blocking); the bits never change.

   Tasks: within one block of B, the M rows of C are cut into tiles of at
   most MC rows, a multiple of MR; when M is one such tile (a batch of 64
   rows), its columns into tiles of whole panels instead, each packing its
   own, so that no core reads panels from another's cache. Finer while
   there are fewer than TASKS_WANTED and each keeps MIN_TASK_FLOPS (waking
   a thread costs about a microsecond); from the shape, never the threads. */
enum { KC = 256, MC = 240, NC = 256, TASKS_WANTED = 4 };
#define MIN_TASK_FLOPS 1e6

typedef struct { int kc, mc, nc; } Blocking;  // k in blocks of at most kc; a task's tile of C at most mc x nc

static const Blocking DEFAULT_BLOCKING = {KC, MC, NC};

typedef struct GemmContext {
    const GemmKernel *kernel;
    Blocking blocking;
    Workers *workers;
    float *packed_a;  // (threads, a_floats): each worker's packed block of A, mc * kc floats
    float *packed_b;  // (nc * kc): the block of B in use, shared (tiles of columns pack their own panels)
    size_t a_floats;
    void *memory;     // what packed_a and packed_b were carved from
} GemmContext;

long round_up(long x, long multiple) { return (x + multiple - 1) / multiple * multiple; }

// A context for `kernel` (which the CPU must support) and a pool of
// `threads` threads, with packing buffers blocked as `b` says. The
// blocking changes the speed only, never a bit of the results.
GemmContext *gemm_context_new_blocked(const GemmKernel *kernel, int threads, Blocking b) {
    require(gemm_kernel_supported(kernel), "gemm_context_new: kernel %s does not run on this CPU",
            kernel ? kernel->name : "NULL");
    require(b.kc >= 1 && b.mc >= MR && b.mc % MR == 0 && b.nc >= kernel->nr && b.nc % GEMM_MAX_NR == 0,
            "gemm_context_new: blocking kc=%d mc=%d nc=%d (mc must be a multiple of %d, nc of %d)", b.kc, b.mc,
            b.nc, MR, GEMM_MAX_NR);
    GemmContext *ctx = xmalloc(sizeof *ctx);
    *ctx = (GemmContext){.kernel = kernel, .blocking = b, .workers = workers_new(threads)};
    // Whole cache lines each, so no two threads ever write the same line.
    enum { CACHE_LINE = 64, LINE_FLOATS = CACHE_LINE / sizeof(float) };
    ctx->a_floats = (size_t)round_up((long)b.mc * b.kc, LINE_FLOATS);
    size_t b_floats = (size_t)b.nc * b.kc;
    ctx->memory = xmalloc(((size_t)ctx->workers->threads * ctx->a_floats + b_floats) * sizeof(float) + CACHE_LINE);
    ctx->packed_a = (float *)(((uintptr_t)ctx->memory + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE);
    ctx->packed_b = ctx->packed_a + (size_t)ctx->workers->threads * ctx->a_floats;
    return ctx;
}

GemmContext *gemm_context_new(const GemmKernel *kernel, int threads) {
    return gemm_context_new_blocked(kernel, threads, DEFAULT_BLOCKING);
}

void gemm_context_free(GemmContext *ctx) {
    if (!ctx) return;
    workers_free(ctx->workers);
    free(ctx->memory);
    free(ctx);
}

/* ----------------------------------------------------------------------------
   The driver: five loops around the micro-kernel.

       for jc in N, step nc          loop 5: a block of columns
         for pc in K, step kc        loop 4: a block of the sum; pack B's (kc, nc) block, shared
           for ic in M, step mc      loop 3: a tile of C, one task; pack A's (mc, kc) block
             for jr in nc, step NR   loop 2: a panel of B
               for ir in mc, step MR loop 1: a strip of A -> micro-kernel

   Determinism. Element C(i, j) ends up as the chain of the definition
   (top of the file), because
   - within a block of k the micro-kernel does exactly that, in order, with
     one rounding per step (fmaf, _mm256_fmadd_ps and _mm512_fmadd_ps all
     round a*b+c once);
   - between blocks of k (loop 4, in order) the partial sum is stored to C
     and reloaded, which changes no bit;
   - the blocking and the tasks choose which elements are computed
     together, never what is added to an element or in which order; the
     zeros padding the packed edges fall in rows and columns of C that are
     never written back, and k is never padded;
   - tasks never share an element of C.
   (gcc -std=c11 does not contract a*b+c on its own, the chapter tells
   clang not to with STDC FP_CONTRACT OFF, and there is no -ffast-math.) */

typedef struct {
    const GemmContext *ctx;
    int M, N, K;
    const Operand *A, *B;
    float *C;                        // (M, N), rows ldc floats apart
    long ldc;
    const float *bias;               // (N) or NULL
    int accumulate;
    int jc, nc, pc, kc;              // the block of B in use: columns [jc, jc+nc), k in [pc, pc+kc)
    int tile_m;                      // task t is rows [t * tile_m, (t + 1) * tile_m) of C,
    int tile_n;                      // or, when tile_n > 0, all rows and columns [t * tile_n, (t + 1) * tile_n)
} GemmJob;

// Loop 4's packing, one panel of B a task.
void pack_b_task(void *context, int panel, int worker) {
    (void)worker;
    const GemmJob *job = context;
    int nr = job->ctx->kernel->nr, col = panel * nr;
    int cols = job->nc - col < nr ? job->nc - col : nr;
    pack_b(job->ctx->packed_b + (size_t)panel * job->kc * nr, job->B, job->pc, job->kc, job->jc + col, cols, nr);
}

// Loops 3, 2 and 1: one tile of C for the block of B in use. A tile of
// columns packs its panels of B itself: no other task reads them.
void gemm_tile(void *context, int task, int worker) {
    const GemmJob *job = context;
    const GemmKernel *kernel = job->ctx->kernel;
    int nr = kernel->nr, kc = job->kc, col0 = job->tile_n ? task * job->tile_n : 0;
    int ic = job->tile_n ? 0 : task * job->tile_m, rows = job->M - ic < job->tile_m ? job->M - ic : job->tile_m;
    int end = job->tile_n && col0 + job->tile_n < job->nc ? col0 + job->tile_n : job->nc;  // columns [col0, end)
    for (int jr = col0; job->tile_n && jr < end; jr += nr) pack_b_task(context, jr / nr, worker);
    float *packed_a = job->ctx->packed_a + (size_t)worker * job->ctx->a_floats;  // (rows / MR, MR, kc)
    pack_a(packed_a, job->A, ic, rows, job->pc, kc);
    int by_rows = pack_a_by_rows(job->A);
    long rs_a = by_rows ? kc : 1, cs_a = by_rows ? 1 : MR;
    // Where the sums start: from the bias, zeros or C's old value in the
    // first block of k, from C (the sums so far) in every later one.
    int first = job->pc == 0, from_c = !first || job->accumulate;
    const float *bias = first ? job->bias : NULL;  // (N)
    for (int jr = col0; jr < end; jr += nr) {
        int w = end - jr < nr ? end - jr : nr;
        const float *b = job->ctx->packed_b + (size_t)jr * kc;  // (kc, nr) panel
        for (int ir = 0; ir < rows; ir += MR) {
            const float *a = packed_a + (size_t)ir * kc;  // (MR, kc) strip
            float *c = job->C + (size_t)(ic + ir) * job->ldc + job->jc + jr;  // (MR, nr) tile, rows ldc apart
            int h = rows - ir < MR ? rows - ir : MR;
            if (h == MR && w == nr) {
                const float *start = bias ? bias + job->jc + jr : from_c ? c : GEMM_ZEROS;
                kernel->kernel(kc, a, rs_a, cs_a, b, c, job->ldc, start, start == c ? job->ldc : 0);
                continue;
            }
            // An edge tile: the kernel works on a full tile in scratch, and
            // only the h x w part that exists in C is copied in and out.
            float scratch[MR * GEMM_MAX_NR] = {0};  // (MR, nr)
            for (int y = 0; y < h && (bias || from_c); y++)
                memcpy(scratch + y * nr, bias ? bias + job->jc + jr : c + y * job->ldc, (size_t)w * sizeof(float));
            kernel->kernel(kc, a, rs_a, cs_a, b, scratch, nr, scratch, nr);
            for (int y = 0; y < h; y++) memcpy(c + y * job->ldc, scratch + y * nr, (size_t)w * sizeof(float));
        }
    }
}

// The operand has `rows` x `cols` elements and describes them sensibly.
void check_operand(const Operand *op, long rows, long cols, const char *name) {
    const ConvShape *g = op->patches;
    require(op->data || rows == 0 || cols == 0, "gemm: operand %s has no data", name);
    if (!g) return;
    check_conv_shape(g, "gemm");
    long want_rows = op->transposed ? (long)conv_patch_size(g) : (long)conv_rows(g);
    long want_cols = op->transposed ? (long)conv_rows(g) : (long)conv_patch_size(g);
    require(rows == want_rows && cols == want_cols, "gemm: operand %s is (%ld, %ld) as used, but its "
            "patches make a (%ld, %ld) matrix", name, rows, cols, want_rows, want_cols);
}

// C = (accumulate ? C : 0) + bias on every row (when not NULL) + A @ B.
void gemm_run(const GemmContext *ctx, int M, int N, int K, Operand A, Operand B, float *C, long ldc,
              int accumulate, const float *bias) {
    require(M >= 0 && N >= 0 && K >= 0 && ldc >= N, "gemm: M=%d N=%d K=%d ldc=%ld", M, N, K, ldc);
    require(!B.patches, "gemm: B is a matrix; patches go in A");
    check_operand(&A, M, K, "A");
    check_operand(&B, K, N, "B");
    if (M == 0 || N == 0) return;
    require(C != NULL, "gemm: no C");
    if (K == 0) {  // an empty sum
        for (int i = 0; i < M && !accumulate; i++) {
            if (bias) memcpy(C + (size_t)i * ldc, bias, (size_t)N * sizeof(float));
            else memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
        }
        return;
    }
    const Blocking *blk = &ctx->blocking;
    int nr = ctx->kernel->nr;
    // Blocks of k as even as they can be (K = 288 is 144 + 144, not 256 + 32):
    // a short last block would load and store all of C again for little work.
    // Patches go in whole lines where a line fits (K = 288 of lines of 96 is
    // 192 + 96), so that packing copies whole lines, one call each.
    int unit = A.patches && !A.transposed ? A.patches->kernel_w * A.patches->channels : 1;
    unit = unit <= blk->kc ? unit : 1;
    int units = (K + unit - 1) / unit, k_blocks = (units + blk->kc / unit - 1) / (blk->kc / unit);
    int kc_even = (units + k_blocks - 1) / k_blocks * unit;
    GemmJob job = {ctx, M, N, K, &A, &B, C, ldc, bias, accumulate, 0, 0, 0, 0, 0, 0};
    for (job.jc = 0; job.jc < N; job.jc += blk->nc) {                              // loop 5
        job.nc = N - job.jc < blk->nc ? N - job.jc : blk->nc;
        // The tasks, from the shape alone: tiles of rows, or of columns when M is one block of rows.
        int panels = (job.nc + nr - 1) / nr, by_columns = M <= blk->mc && panels > 1;
        int most = by_columns ? panels : (M + MR - 1) / MR, tiles = by_columns ? 1 : (M + blk->mc - 1) / blk->mc;
        while (tiles < TASKS_WANTED && tiles < most && 2.0 * M * job.nc * kc_even / (tiles + 1) >= MIN_TASK_FLOPS)
            tiles++;
        job.tile_m = by_columns ? M : (int)round_up((M + tiles - 1) / tiles, MR);
        job.tile_n = by_columns ? (panels + tiles - 1) / tiles * nr : 0;
        int tasks = by_columns ? (job.nc + job.tile_n - 1) / job.tile_n : (M + job.tile_m - 1) / job.tile_m;
        Workers *w = tasks > 1 ? ctx->workers : NULL;  // one task: B packed alone, not waking the pool every block
        for (job.pc = 0; job.pc < K; job.pc += kc_even) {                          // loop 4
            job.kc = K - job.pc < kc_even ? K - job.pc : kc_even;
            if (!job.tile_n) parallel_for(w, panels, pack_b_task, &job);  // (tiles of columns pack their own)
            parallel_for(w, tasks, gemm_tile, &job);                                // loops 3, 2, 1
        }
    }
}

// C (M, N), row stride ldc: C = (accumulate ? C : 0) + A (M, K) @ B (K, N).
void gemm(const GemmContext *ctx, int M, int N, int K, Operand A, Operand B, float *C, long ldc, int accumulate) {
    gemm_run(ctx, M, N, K, A, B, C, ldc, accumulate, NULL);
}

// C = `bias` (N) on every row + A @ B: a layer's bias and its product, in one pass
// over C. The same bits as filling C with the bias, then accumulating.
void gemm_with_bias(const GemmContext *ctx, int M, int N, int K, Operand A, Operand B, float *C, long ldc,
                    const float *bias) {
    require(bias != NULL, "gemm_with_bias: no bias");
    gemm_run(ctx, M, N, K, A, B, C, ldc, 0, bias);
}
/* ----------------------------------------------------------------------------
   Convolutions and dense layers on the blocked GEMM.

   The passes of the naive and im2col versions above (and chapter 2's dense
   layer), each one or two calls of gemm(), for KERNEL_BLOCKED; a
   one-channel convolution has loops of its own, below. The sums are
   the definition's; only their order (and one rounding per multiply-add)
   differ, so these agree with the references to rounding, not to the bit. */

// The scratch, in floats, conv2d_backward_blocked needs: the flipped kernel.
size_t conv2d_blocked_scratch(const ConvShape *s) { return conv_patch_size(s) * (size_t)s->out_channels; }

/* One input channel: the first convolution of both CNNs.
   As a GEMM its sums have K = 3 * 3 = 9 terms. Packing a patch row (three
   lines of three floats) then costs several times its 9 multiply-adds, and
   the weight gradient has M = 9 rows: a task per panel at most. Direct loops
   do the same multiply-adds in the same order, so they give the same bits:
   - forward: out[p][oc] starts from bias[oc] and adds x_t * w[t][oc] for
     the taps t in order; a tap in the padding multiplies a zero, as the
     packed patches do;
   - weight gradient: dw[t][oc] adds x_t(p) * dout[p][oc] for the output
     pixels p in order, and dbias[oc] adds dout[p][oc] in bias_backward's
     order, in the same pass over dout.
   Eight output channels to a vector (AVX2 and FMA, which every CPU with
   the avx2 or avx512 kernel has), the image copied with its zero border
   first so that no tap needs a bounds check. Tasks: an image each
   forward, eight channels each backward. */
enum { ONE_CHANNEL_MAX_PIXELS = 4096 };  // the padded image, on the stack

int one_channel_direct(const GemmContext *ctx, const ConvShape *s) {
#if HAVE_X86_KERNELS
    return strcmp(ctx->kernel->name, "portable") != 0 && cpu_has_avx2_fma() && s->channels == 1 &&
           s->kernel_h == 3 && s->kernel_w == 3 && s->out_channels % 8 == 0 &&
           (s->height + 2 * s->pad) * (s->width + 2 * s->pad) <= ONE_CHANNEL_MAX_PIXELS;
#else
    (void)ctx, (void)s;
    return 0;
#endif
}

typedef struct {
    float *out, *dweight, *dbias;       // out (B, OH, OW, OC); dweight (3, 3, 1, OC); dbias (OC) or NULL
    const float *inp, *weight, *bias;   // inp (B, H, W, 1); weight (3, 3, 1, OC); bias (OC)
    const float *dout;                  // (B, OH, OW, OC)
    const ConvShape *s;
} OneChannelJob;

// Image b with `pad` zeros on every side: (H + 2 pad, W + 2 pad).
void pad_image(float *padded, const float *inp, const ConvShape *s, int b) {
    int H = s->height, W = s->width, pad = s->pad, PW = W + 2 * pad;
    memset(padded, 0, (size_t)(H + 2 * pad) * PW * sizeof(float));
    for (int y = 0; y < H; y++)
        memcpy(padded + (size_t)(y + pad) * PW + pad, inp + ((size_t)b * H + y) * W, (size_t)W * sizeof(float));
}

#if HAVE_X86_KERNELS
__attribute__((target("avx2,fma")))
void one_channel_forward_task(void *context, int b, int worker) {
    (void)worker;
    const OneChannelJob *j = context;
    const ConvShape *s = j->s;
    int OC = s->out_channels, PW = s->width + 2 * s->pad;
    float padded[ONE_CHANNEL_MAX_PIXELS];
    pad_image(padded, j->inp, s, b);
    float *out = j->out + (size_t)b * s->out_h * s->out_w * OC;  // (OH, OW, OC)
    for (int oh = 0; oh < s->out_h; oh++)
        for (int ow = 0; ow < s->out_w; ow++, out += OC) {  // a pixel's channels together: whole cache lines
            const float *x = padded + oh * PW + ow;           // tap t = (kh, kw) at x[kh * PW + kw]
            __m256 v[9];
            for (int t = 0; t < 9; t++) v[t] = _mm256_set1_ps(x[t / 3 * PW + t % 3]);
            for (int oc = 0; oc < OC; oc += 8) {
                __m256 sum = _mm256_loadu_ps(j->bias + oc);
                for (int t = 0; t < 9; t++) sum = _mm256_fmadd_ps(v[t], _mm256_loadu_ps(j->weight + t * OC + oc), sum);
                _mm256_storeu_ps(out + oc, sum);
            }
        }
}

__attribute__((target("avx2,fma")))
void one_channel_weight_grad_task(void *context, int task, int worker) {
    (void)worker;
    const OneChannelJob *j = context;
    const ConvShape *s = j->s;
    int OC = s->out_channels, PW = s->width + 2 * s->pad, oc = 8 * task;
    float padded[ONE_CHANNEL_MAX_PIXELS];
    __m256 dw[9], db = j->dbias ? _mm256_loadu_ps(j->dbias + oc) : _mm256_setzero_ps();
    for (int t = 0; t < 9; t++) dw[t] = _mm256_loadu_ps(j->dweight + t * OC + oc);
    const float *dout = j->dout + oc;  // row p at dout + p * OC
    for (int b = 0; b < s->batch; b++) {
        pad_image(padded, j->inp, s, b);
        for (int oh = 0; oh < s->out_h; oh++)
            for (int ow = 0; ow < s->out_w; ow++, dout += OC) {
                const float *x = padded + oh * PW + ow;
                __m256 g = _mm256_loadu_ps(dout);
                for (int t = 0; t < 9; t++) dw[t] = _mm256_fmadd_ps(_mm256_set1_ps(x[t / 3 * PW + t % 3]), g, dw[t]);
                db = _mm256_add_ps(db, g);
            }
    }
    for (int t = 0; t < 9; t++) _mm256_storeu_ps(j->dweight + t * OC + oc, dw[t]);
    if (j->dbias) _mm256_storeu_ps(j->dbias + oc, db);
}
#else  // never called: one_channel_direct is 0
void one_channel_forward_task(void *context, int b, int worker) { (void)context, (void)b, (void)worker; }
void one_channel_weight_grad_task(void *context, int task, int worker) { (void)context, (void)task, (void)worker; }
#endif

// out = bias on every row + patches(inp) @ weight: a convolution is one GEMM
// whose A is the image's im2col matrix, read inside the packing, and whose
// sums start from the bias.
void conv2d_forward_blocked(const GemmContext *ctx,
                            float *out,           // (B, OH, OW, OC)
                            const float *inp,     // (B, H, W, C)
                            const float *weight,  // (KH, KW, C, OC)
                            const float *bias,    // (OC)
                            const ConvShape *s) {
    if (one_channel_direct(ctx, s)) {
        OneChannelJob job = {.out = out, .inp = inp, .weight = weight, .bias = bias, .s = s};
        parallel_for(ctx->workers, s->batch, one_channel_forward_task, &job);
        return;
    }
    gemm_with_bias(ctx, (int)conv_rows(s), s->out_channels, (int)conv_patch_size(s), patches_operand(inp, s, 0),
                   matrix_operand(weight, s->out_channels), out, s->out_channels, bias);
}

// The kernel turned 180 degrees with C and OC swapped: (KH, KW, C, OC) ->
// (KH, KW, OC, C), tap (kh, kw) moved to (KH-1-kh, KW-1-kw).
void flip_kernel(float *flipped,       // (KH, KW, OC, C)
                 const float *weight,  // (KH, KW, C, OC)
                 const ConvShape *s) {
    int KH = s->kernel_h, KW = s->kernel_w, C = s->channels, OC = s->out_channels;
    for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++)
            for (int c = 0; c < C; c++)
                for (int oc = 0; oc < OC; oc++)
                    flipped[(((size_t)(KH - 1 - kh) * KW + (KW - 1 - kw)) * OC + oc) * C + c] =
                        weight[(((size_t)kh * KW + kw) * C + c) * OC + oc];
}

/* The backward pass, as conv.c derives it:
   - dweight += patches(inp)^T @ dout: the transposed patch matrix as A;
   - dinp += the convolution of dout, padded by KH-1-pad, with the flipped
     kernel: again one GEMM with a patch matrix as A, so the input gradient
     needs no col2im and adds nothing from two places at once;
   - dbias += the column sums of dout. */
void conv2d_backward_blocked(const GemmContext *ctx, float *dinp, float *dweight, float *dbias,
                             const float *dout, const float *inp, const float *weight, const ConvShape *s,
                             float *flipped) {  // shapes as conv2d_backward_naive; flipped: scratch, (KH, KW, OC, C)
    int OC = s->out_channels, C = s->channels, rows = (int)conv_rows(s), patch = (int)conv_patch_size(s);
    if (dweight && one_channel_direct(ctx, s)) {
        OneChannelJob job = {.dweight = dweight, .dbias = dbias, .inp = inp, .dout = dout, .s = s};
        parallel_for(ctx->workers, OC / 8, one_channel_weight_grad_task, &job);
    } else {
        if (dbias) bias_backward(dbias, dout, rows, OC);
        if (dweight) gemm(ctx, patch, OC, rows, patches_operand(inp, s, 1), matrix_operand(dout, OC), dweight, OC, 1);
    }
    if (dinp) {
        flip_kernel(flipped, weight, s);
        ConvShape back = conv_shape(s->batch, s->out_h, s->out_w, OC, s->kernel_h, s->kernel_w,
                                    s->kernel_h - 1 - s->pad, C);
        gemm(ctx, (int)conv_rows(&back), C, (int)conv_patch_size(&back), patches_operand(dout, &back, 0),
             matrix_operand(flipped, C), dinp, C, 1);
    }
}

// Dense layers: out = inp @ weight; dinp += dout @ weight^T; dweight += inp^T @ dout.
void matmul_forward_blocked(const GemmContext *ctx, float *out, const float *inp, const float *weight,
                            int B, int C, int OC) {  // out (B, OC), inp (B, C), weight (C, OC)
    gemm(ctx, B, OC, C, matrix_operand(inp, C), matrix_operand(weight, OC), out, OC, 0);
}

void matmul_backward_blocked(const GemmContext *ctx, float *dinp, float *dweight, const float *dout,
                             const float *inp, const float *weight, int B, int C, int OC) {
    if (dinp) gemm(ctx, B, C, OC, matrix_operand(dout, OC), transposed_operand(weight, OC), dinp, C, 1);
    if (dweight) gemm(ctx, C, OC, B, transposed_operand(inp, C), matrix_operand(dout, OC), dweight, OC, 1);
}
/* ----------------------------------------------------------------------------
   Batch normalisation and dropout (book.md, "Chapter 5").

   What this is: the two layers that let the deeper CNN train fast and
   generalise, each a forward and a backward function with chapter 2's
   convention (backward ADDS), and each with two modes:
   - batch_norm: in training, every channel is normalised with the mean and
     variance of this batch, and running averages of both are kept; in
     inference, the running averages are used, so one image's answer does
     not depend on the others in its batch.
   - dropout: in training, each value is kept with probability 1 - rate and
     scaled by 1/(1 - rate) ("inverted" dropout, so the expected value is
     unchanged); in inference it is the identity.
   What it is not: a general normaliser. Statistics are taken over every
   dimension but the last (the channel of NHWC, the feature of a dense
   layer), which is what the protocol's BatchNorm layers do.

   The protocol's constants are Keras's: momentum 0.99 for the running
   averages (running = 0.99 * running + 0.01 * batch; PyTorch writes the
   same rule with momentum 0.01, the weight of the new value, and its
   default 0.1 is Keras's 0.9), epsilon 1e-3, and the
   biased variance (divided by the count) both for normalising and for the
   running average. */

static const float BN_MOMENTUM = 0.99f, BN_EPSILON = 1e-3f;

/* Training mode, per channel c over the N rows of x:
       mean = sum(x) / N,  var = sum((x - mean)^2) / N      (in double: N = B*H*W, 50,176 at batch 64)
       x_hat = (x - mean) / sqrt(var + eps),  out = gamma * x_hat + beta
   mean and 1/sqrt(var + eps), one float each per channel, are kept for the
   backward pass, which computes x_hat again from x, the same bits, row by
   row: storing x_hat would cost a pass over memory to write it, and its
   whole size in memory for each layer, for a subtraction and a product a
   value. The running averages move 1% of the way to this batch's
   statistics.

   Every loop walks x row by row, all channels of a row together, as memory
   holds them: going channel by channel down the rows would touch one float
   of every 64-byte line and make the layer several times slower.

   The rows are cut into BN_PARTS fixed parts, which the threads share out:
   each part sums its rows, and the parts' sums are added in part order. The
   parts depend on N alone, so the sums, and every bit after them, are the
   same at any number of threads (and with none: `workers` may be NULL).
   A part adds into an array on its own thread's stack and copies it out
   when done. Were the parts' sums side by side in one array, two threads
   would write one cache line at each boundary, every row, and the line
   would travel between their cores each time ("false sharing").

   The work on one row is a function of its own whose array parameters are
   `restrict`: a promise that they do not overlap. Without it the compiler
   must assume that a store to `out` may change `mean` or `gamma`, so it
   reloads them for every value and works one value at a time; with it, it
   works on a vector of channels at once. A vector lane is one channel doing
   that channel's operations in the same order, so the bits are those of one
   value at a time. */
enum { BN_MAX_CHANNELS = 1024, BN_PARTS = 16 };

typedef struct {
    float *out;                           // (N, C): what a pass writes
    const float *x, *dout;                // (N, C) each: what a pass reads
    const float *mean, *scale, *shift;    // (C) each: normalising is (x - mean) * scale, then + shift
    const float *gamma;                   // (C) training: out = gamma * x_hat + shift
    const float *inv_std;                 // (C) the backward pass: x_hat = (x - mean) * inv_std
    const float *mean_g, *mean_g_xhat;    // (C) each: the backward pass's
    double *sums, *more_sums;             // (BN_PARTS, C) each: the parts' sums
    size_t N;
    int C;
} BnJob;

size_t bn_first_row(const BnJob *j, int part) { return j->N * (size_t)part / BN_PARTS; }

// One row's C values added into sum, or (with a mean) their squared distances.
void bn_row_sums(double *restrict sum, const float *restrict x, size_t C) {
    for (size_t c = 0; c < C; c++) sum[c] += x[c];
}

void bn_row_squares(double *restrict sum, const float *restrict x, const float *restrict mean, size_t C) {
    for (size_t c = 0; c < C; c++) {
        double d = (double)x[c] - mean[c];
        sum[c] += d * d;
    }
}

// sums[part][c] = the sum of x (no mean) or of (x - mean)^2 over the part's rows.
void bn_sums_task(void *context, int part, int worker) {
    (void)worker;
    const BnJob *j = context;
    size_t C = (size_t)j->C;
    double sum[BN_MAX_CHANNELS];  // on this thread's stack (see the top)
    for (size_t c = 0; c < C; c++) sum[c] = 0;
    for (size_t i = bn_first_row(j, part); i < bn_first_row(j, part + 1); i++)
        if (j->mean) bn_row_squares(sum, j->x + i * C, j->mean, C);
        else bn_row_sums(sum, j->x + i * C, C);
    memcpy(j->sums + (size_t)part * C, sum, C * sizeof(double));
}

// Training: x_hat = (x - mean) * scale and out = gamma * x_hat + shift.
void bn_row_normalize(float *restrict out, const float *restrict x, const float *restrict mean,
                      const float *restrict scale, const float *restrict gamma, const float *restrict shift, size_t C) {
    for (size_t c = 0; c < C; c++) {
        float x_hat = (x[c] - mean[c]) * scale[c];
        out[c] = gamma[c] * x_hat + shift[c];
    }
}

// The backward pass's x_hat for one row: the forward pass's expression,
// on the same floats, so the same bits.
void bn_row_x_hat(float *restrict x_hat, const float *restrict x, const float *restrict mean,
                  const float *restrict inv_std, size_t C) {
    for (size_t c = 0; c < C; c++) x_hat[c] = (x[c] - mean[c]) * inv_std[c];
}

// Inference: out = (x - mean) * scale + shift (scale has gamma in it).
void bn_row_normalize_infer(float *restrict out, const float *restrict x, const float *restrict mean,
                            const float *restrict scale, const float *restrict shift, size_t C) {
    for (size_t c = 0; c < C; c++) out[c] = (x[c] - mean[c]) * scale[c] + shift[c];
}

void bn_normalize_task(void *context, int part, int worker) {
    (void)worker;
    const BnJob *j = context;
    size_t C = (size_t)j->C;
    for (size_t i = bn_first_row(j, part); i < bn_first_row(j, part + 1); i++)
        if (j->gamma) bn_row_normalize(j->out + i * C, j->x + i * C, j->mean, j->scale, j->gamma, j->shift, C);
        else bn_row_normalize_infer(j->out + i * C, j->x + i * C, j->mean, j->scale, j->shift, C);
}

// Adds the parts' sums in part order: the same order at any thread count.
void bn_add_parts(double *total, const double *sums, int C) {
    for (int c = 0; c < C; c++) total[c] = 0;
    for (int part = 0; part < BN_PARTS; part++)
        for (int c = 0; c < C; c++) total[c] += sums[(size_t)part * C + c];
}

void batch_norm_forward_train(Workers *workers,
                              float *out,           // (N, C)
                              float *batch_mean,    // (C) saved for backward
                              float *inv_std,       // (C) saved for backward
                              float *running_mean,  // (C) updated
                              float *running_var,   // (C) updated
                              const float *x,       // (N, C)
                              const float *gamma, const float *beta,  // (C) each
                              size_t N, int C) {
    require(C <= BN_MAX_CHANNELS, "batch_norm: %d channels, at most %d", C, BN_MAX_CHANNELS);
    double total[BN_MAX_CHANNELS];
    BnJob job = {.x = x, .N = N, .C = C};
    job.sums = xmalloc((size_t)BN_PARTS * C * sizeof(double));
    parallel_for(workers, BN_PARTS, bn_sums_task, &job);
    bn_add_parts(total, job.sums, C);
    for (int c = 0; c < C; c++) batch_mean[c] = (float)(total[c] / (double)N);
    job.mean = batch_mean;
    parallel_for(workers, BN_PARTS, bn_sums_task, &job);
    bn_add_parts(total, job.sums, C);
    for (int c = 0; c < C; c++) {
        float var = (float)(total[c] / (double)N);
        inv_std[c] = 1.0f / sqrtf(var + BN_EPSILON);
        running_mean[c] = BN_MOMENTUM * running_mean[c] + (1.0f - BN_MOMENTUM) * batch_mean[c];
        running_var[c] = BN_MOMENTUM * running_var[c] + (1.0f - BN_MOMENTUM) * var;
    }
    job.out = out, job.scale = inv_std, job.gamma = gamma, job.shift = beta;
    parallel_for(workers, BN_PARTS, bn_normalize_task, &job);
    free(job.sums);
}

// Inference mode: the running averages stand in for the batch's statistics.
void batch_norm_forward_infer(Workers *workers, float *out, const float *x, const float *gamma, const float *beta,
                              const float *running_mean, const float *running_var, size_t N, int C) {
    require(C <= BN_MAX_CHANNELS, "batch_norm: %d channels, at most %d", C, BN_MAX_CHANNELS);
    float scale[BN_MAX_CHANNELS];
    for (int c = 0; c < C; c++) scale[c] = gamma[c] / sqrtf(running_var[c] + BN_EPSILON);
    BnJob job = {.out = out, .x = x, .mean = running_mean, .scale = scale, .shift = beta, .N = N, .C = C};
    parallel_for(workers, BN_PARTS, bn_normalize_task, &job);
}

/* The backward pass (book.md derives it). With g = dout, per channel:
       dbeta  += sum(g)            dgamma += sum(g * x_hat)
       dx     += gamma * inv_std * (g - mean(g) - x_hat * mean(g * x_hat))
   The last line is the three paths from x to the loss added up: directly
   through x_hat, through the mean, and through the variance. The sums go in
   the same fixed parts as the forward pass's. */
void bn_row_gradient_sums(double *restrict sum_g, double *restrict sum_g_xhat, const float *restrict dout,
                          const float *restrict x_hat, size_t C) {
    for (size_t c = 0; c < C; c++) {
        sum_g[c] += dout[c];
        sum_g_xhat[c] += (double)dout[c] * x_hat[c];
    }
}

void bn_gradient_sums_task(void *context, int part, int worker) {
    (void)worker;
    const BnJob *j = context;
    size_t C = (size_t)j->C;
    double sum_g[BN_MAX_CHANNELS], sum_g_xhat[BN_MAX_CHANNELS];  // on this thread's stack
    float x_hat[BN_MAX_CHANNELS];  // one row's, computed again
    for (size_t c = 0; c < C; c++) sum_g[c] = sum_g_xhat[c] = 0;
    for (size_t i = bn_first_row(j, part); i < bn_first_row(j, part + 1); i++) {
        bn_row_x_hat(x_hat, j->x + i * C, j->mean, j->inv_std, C);
        bn_row_gradient_sums(sum_g, sum_g_xhat, j->dout + i * C, x_hat, C);
    }
    memcpy(j->sums + (size_t)part * C, sum_g, C * sizeof(double));
    memcpy(j->more_sums + (size_t)part * C, sum_g_xhat, C * sizeof(double));
}

void bn_row_input_gradient(float *restrict dx, const float *restrict dout, const float *restrict x_hat,
                           const float *restrict scale, const float *restrict mean_g,
                           const float *restrict mean_g_xhat, size_t C) {
    for (size_t c = 0; c < C; c++) {
        dx[c] += scale[c] * (dout[c] - mean_g[c] - x_hat[c] * mean_g_xhat[c]);
    }
}

void bn_input_gradient_task(void *context, int part, int worker) {
    (void)worker;
    const BnJob *j = context;
    size_t C = (size_t)j->C;
    float x_hat[BN_MAX_CHANNELS];
    for (size_t i = bn_first_row(j, part); i < bn_first_row(j, part + 1); i++) {
        bn_row_x_hat(x_hat, j->x + i * C, j->mean, j->inv_std, C);
        bn_row_input_gradient(j->out + i * C, j->dout + i * C, x_hat, j->scale, j->mean_g, j->mean_g_xhat, C);
    }
}

void batch_norm_backward(Workers *workers,
                         float *dx,            // (N, C) or NULL
                         float *dgamma,        // (C) or NULL
                         float *dbeta,         // (C) or NULL
                         const float *dout,    // (N, C)
                         const float *x,       // (N, C) the forward pass's input
                         const float *batch_mean,  // (C) saved by the forward pass
                         const float *inv_std, // (C) saved by the forward pass
                         const float *gamma,   // (C)
                         size_t N, int C) {
    require(C <= BN_MAX_CHANNELS, "batch_norm: %d channels, at most %d", C, BN_MAX_CHANNELS);
    double sum_g[BN_MAX_CHANNELS], sum_g_xhat[BN_MAX_CHANNELS];
    float scale[BN_MAX_CHANNELS], mean_g[BN_MAX_CHANNELS], mean_g_xhat[BN_MAX_CHANNELS];
    BnJob job = {.dout = dout, .x = x, .mean = batch_mean, .inv_std = inv_std, .N = N, .C = C};
    job.sums = xmalloc(2 * (size_t)BN_PARTS * C * sizeof(double));
    job.more_sums = job.sums + (size_t)BN_PARTS * C;
    parallel_for(workers, BN_PARTS, bn_gradient_sums_task, &job);
    bn_add_parts(sum_g, job.sums, C);
    bn_add_parts(sum_g_xhat, job.more_sums, C);
    free(job.sums);
    for (int c = 0; c < C; c++) {
        if (dbeta) dbeta[c] += (float)sum_g[c];
        if (dgamma) dgamma[c] += (float)sum_g_xhat[c];
        scale[c] = gamma[c] * inv_std[c];
        mean_g[c] = (float)(sum_g[c] / (double)N);
        mean_g_xhat[c] = (float)(sum_g_xhat[c] / (double)N);
    }
    if (!dx) return;
    job.out = dx, job.scale = scale, job.mean_g = mean_g, job.mean_g_xhat = mean_g_xhat;
    parallel_for(workers, BN_PARTS, bn_input_gradient_task, &job);
}

#if HAVE_X86_KERNELS
/* rng_uniform_fill sixteen draws at a time, with AVX-512: two vectors of
   eight states, draws i..i+7 and i+8..i+15, each jumping sixteen draws at
   once (64-bit multiplies: AVX512DQ). The output's shifts, xor and
   rotation are integer operations, and 24 bits convert to a float
   exactly: the same bits as one draw at a time. */
__attribute__((target("avx512f,avx512dq")))
void rng_uniform_fill_avx512(Rng *r, float *out /* (n) */, size_t n) {
    size_t i = 0;
    if (n >= 16) {
        uint64_t A, C, s[16] = {r->state};  // s[l]: the state of draw i + l
        rng_jump(r->increment, 16, &A, &C);
        for (int l = 1; l < 16; l++) s[l] = s[l - 1] * PCG_MULTIPLIER + r->increment;
        __m512i lo = _mm512_loadu_si512(s), hi = _mm512_loadu_si512(s + 8);
        const __m512i a = _mm512_set1_epi64((long long)A), c = _mm512_set1_epi64((long long)C);
        for (; i + 16 <= n; i += 16) {
            // rng_output on each lane: ((old >> 18) ^ old) >> 27 to 32 bits, rotated right by old >> 59
            __m512i x = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(_mm512_xor_si512(_mm512_srli_epi64(lo, 18), lo), 27))),
                _mm512_cvtepi64_epi32(_mm512_srli_epi64(_mm512_xor_si512(_mm512_srli_epi64(hi, 18), hi), 27)), 1);
            __m512i rotation = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(lo, 59))),
                                                  _mm512_cvtepi64_epi32(_mm512_srli_epi64(hi, 59)), 1);
            __m512i top24 = _mm512_srli_epi32(_mm512_rorv_epi32(x, rotation), 8);
            _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_cvtepi32_ps(top24), _mm512_set1_ps(1.0f / 16777216.0f)));
            lo = _mm512_add_epi64(_mm512_mullo_epi64(lo, a), c);
            hi = _mm512_add_epi64(_mm512_mullo_epi64(hi, a), c);
        }
        _mm512_storeu_si512(s, lo);
        r->state = s[0];
        // Clean upper halves for the SSE code that runs next (the chapters'
        // default): with dirty ones, every SSE instruction that writes a
        // register waits on the register's old value. gcc omits this before
        // the call below, which it compiles as a jump.
        _mm256_zeroupper();
    }
    rng_uniform_fill(r, out + i, n - i);
}
#endif

// The widest fill this CPU has: all give the same bits.
void rng_uniform_fill_widest(Rng *r, float *out, size_t n) {
#if HAVE_X86_KERNELS
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
        rng_uniform_fill_avx512(r, out, n);
        return;
    }
#endif
    rng_uniform_fill(r, out, n);
}

/* Dropout in training: each of the n values of one item is kept with
   probability 1 - rate, from the item's own keyed stream, so the mask does
   not depend on which thread draws it or on any other item. Each value is
   multiplied by its factor, 0 or 1/(1 - rate).

   The mask is not saved. It is the stream's next n draws, and the backward
   pass opens the same stream and draws them again: a draw costs a few
   instructions, far less than writing a float to memory in the forward
   pass and reading it back in the backward one. (Batch norm's x_hat is
   computed again for the same reason.) The draws go through a block on the
   stack, small enough to stay in the fastest cache. */
enum { DROPOUT_BLOCK = 1024 };

// A value's factor: 0 where its draw falls below the rate, keep = 1/(1 - rate)
// elsewhere. Both passes draw a block first, into `draws`, then choose: in
// one loop the compiler branches on each draw, a coin toss the processor
// guesses wrong as often as the rate says, for a dozen cycles each; apart,
// the second loop has no branch.
float dropout_factor(float draw, float rate, float keep) { return draw < rate ? 0.0f : keep; }

void dropout_forward_train(float *out,      // (n)
                           const float *x,  // (n)
                           size_t n, float rate, Rng *rng) {
    float draws[DROPOUT_BLOCK], keep = 1.0f / (1.0f - rate);
    for (size_t at = 0; at < n; at += DROPOUT_BLOCK) {
        size_t m = n - at < DROPOUT_BLOCK ? n - at : DROPOUT_BLOCK;
        rng_uniform_fill_widest(rng, draws, m);
        for (size_t i = 0; i < m; i++) out[at + i] = x[at + i] * dropout_factor(draws[i], rate, keep);
    }
}

// The gradient flows where the value did, with the same factor: the same
// stream, opened again, gives the same draws.
void dropout_backward(float *dx,          // (n)
                      const float *dout,  // (n)
                      size_t n, float rate, Rng *rng) {
    float draws[DROPOUT_BLOCK], keep = 1.0f / (1.0f - rate);
    for (size_t at = 0; at < n; at += DROPOUT_BLOCK) {
        size_t m = n - at < DROPOUT_BLOCK ? n - at : DROPOUT_BLOCK;
        rng_uniform_fill_widest(rng, draws, m);
        for (size_t i = 0; i < m; i++) dx[at + i] += dout[at + i] * dropout_factor(draws[i], rate, keep);
    }
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
    Workers *workers;             // the model's threads, to share Adam's loop (NULL: the caller alone)
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

/* Adam on the model's threads. Every parameter's update depends on its own
   numbers alone, so the parameters are cut into ADAM_PARTS fixed parts and
   each part is adam_update on a view of the optimiser whose m and v start
   where the part does. Every view counts the same step, so the bias
   corrections and every bit are those of one loop over all parameters. */
enum { ADAM_PARTS = 16, ADAM_PARALLEL_FROM = 1 << 16 };  // fewer parameters: not worth waking a thread

typedef struct {
    const Optimizer *o;
    float *params;       // (count)
    const float *grads;  // (count)
    size_t count;
} AdamJob;

#if HAVE_X86_KERNELS
/* adam_update eight parameters at a time (AVX): the same operations in the
   same order (no fused multiply-add: the scalar loop has none either), each
   rounded as IEEE arithmetic rounds it, so the same bits. The compiler does
   not widen the scalar loop itself, as sqrtf may set errno. The last
   count % 8 go through the scalar loop. */
__attribute__((target("avx")))
void adam_update_avx(Optimizer *o, float *params /* (count) */, const float *grads /* (count) */, size_t count) {
    Optimizer tail = *o;  // for the last few, before the step is counted
    o->step++;
    float correction1 = 1.0f - powf(o->beta1, (float)o->step);
    float correction2 = 1.0f - powf(o->beta2, (float)o->step);
    const __m256 beta1 = _mm256_set1_ps(o->beta1), beta2 = _mm256_set1_ps(o->beta2);
    const __m256 rest1 = _mm256_set1_ps(1.0f - o->beta1), rest2 = _mm256_set1_ps(1.0f - o->beta2);
    const __m256 c1 = _mm256_set1_ps(correction1), c2 = _mm256_set1_ps(correction2);
    const __m256 rate = _mm256_set1_ps(o->learning_rate), epsilon = _mm256_set1_ps(o->epsilon);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256 g = _mm256_loadu_ps(grads + i);
        __m256 m = _mm256_add_ps(_mm256_mul_ps(beta1, _mm256_loadu_ps(o->m + i)), _mm256_mul_ps(rest1, g));
        __m256 v = _mm256_add_ps(_mm256_mul_ps(beta2, _mm256_loadu_ps(o->v + i)), _mm256_mul_ps(_mm256_mul_ps(rest2, g), g));
        _mm256_storeu_ps(o->m + i, m);
        _mm256_storeu_ps(o->v + i, v);
        __m256 m_hat = _mm256_div_ps(m, c1), v_hat = _mm256_div_ps(v, c2);
        __m256 step = _mm256_div_ps(_mm256_mul_ps(rate, m_hat), _mm256_add_ps(_mm256_sqrt_ps(v_hat), epsilon));
        _mm256_storeu_ps(params + i, _mm256_sub_ps(_mm256_loadu_ps(params + i), step));
    }
    tail.m += i, tail.v += i;
    adam_update(&tail, params + i, grads + i, count - i);
}
#endif

// The vector loop where this CPU has AVX: the same bits either way.
void adam_update_widest(Optimizer *o, float *params, const float *grads, size_t count) {
#if HAVE_X86_KERNELS
    if (__builtin_cpu_supports("avx")) {
        adam_update_avx(o, params, grads, count);
        return;
    }
#endif
    adam_update(o, params, grads, count);
}

void adam_part(void *context, int part, int worker) {
    (void)worker;
    const AdamJob *j = context;
    size_t from = j->count * (size_t)part / ADAM_PARTS, to = j->count * (size_t)(part + 1) / ADAM_PARTS;
    Optimizer view = *j->o;
    view.m += from, view.v += from;
    adam_update_widest(&view, j->params + from, j->grads + from, to - from);
}

void optimizer_update(Optimizer *o, float *params, const float *grads, size_t count) {
    if (o->kind == OPTIMIZER_ADAM && o->workers && count >= ADAM_PARALLEL_FROM) {
        AdamJob job = {o, params, grads, count};
        parallel_for(o->workers, ADAM_PARTS, adam_part, &job);
        o->step++;  // what each part's view counted
        return;
    }
    if (o->kind == OPTIMIZER_ADAM) adam_update_widest(o, params, grads, count);
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
    // What the model keeps without learning it by gradient (BatchNorm's
    // running statistics): the optimiser never touches it, but a checkpoint
    // must save it with the parameters. NULL and 0 for a model without it.
    float *state;           // (state_count)
    size_t state_count;
    Workers *workers;       // the threads its ops run on, which the optimiser may share (NULL: none)
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

// The most memory the program held at once, where the system can tell
// (getrusage reports kilobytes on Linux, bytes on macOS).
void print_peak_memory(void) {
#if HAVE_POSIX
    struct rusage usage;
    if (getrusage(RUSAGE_SELF, &usage) == 0) {
#ifdef __APPLE__
        double megabytes = (double)usage.ru_maxrss / 1e6;
#else
        double megabytes = (double)usage.ru_maxrss * 1024 / 1e6;
#endif
        printf("peak memory: %.0f MB\n", megabytes);
    }
#endif
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

// Batch norm normalises a dense layer's features over the batch: one
// image alone is its own mean, normalises to 0 and trains nothing. So a
// model with batch norm (state_count > 0) refuses a batch of one image.
int check_batch_norm_batches(size_t state_count, const Options *o, int training_images, Error *err) {
    int images = o->overfit && o->overfit < training_images ? o->overfit : training_images;
    int batch = o->batch < images ? o->batch : images;
    if (state_count && (batch == 1 || images % batch == 1))
        return fail(err, EXIT_USAGE, "--batch %d on %d images leaves a batch of one image, which batch "
                    "normalisation cannot learn from (it normalises every feature to 0); choose another "
                    "--batch or --limit", o->batch, images);
    return 0;
}

// Everything after the model is built: the sanity check, training (or
// overfitting), the test. Fills *history and *result; returns the exit
// code, with the message in *err when it is not 0.
int fit_and_test(Model *m, const FashionMnist *data, const Options *o, History **history,
                 Result *result, Error *err) {
    Dataset train_set = training_set(data, o);
    if (check_batch_norm_batches(m->state_count, o, train_set.count, err)) return err->code;
    printf("model %s: %zu parameters; optimizer %s, learning rate %g, batch %d, seed %d\n",
           m->name, m->count, o->optimizer, o->learning_rate, o->batch, o->seed);
    Optimizer opt = optimizer_new(optimizer_kind(o), (float)o->learning_rate, m->count);
    opt.workers = m->workers;
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

   What this is: its widths, from which ann_graph builds it on the engine.
   What it is not: hand-written passes; the engine builds every model. */

enum { ANN_LAYERS = 3 };
static const int ANN_WIDTHS[ANN_LAYERS + 1] = {IMAGE_SIZE, 128, 64, NUM_CLASSES};
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
enum { MAX_INPUTS = 5 };  // batch_norm: x, gamma, beta, running mean, running variance

typedef struct Node Node;
typedef struct Graph Graph;

typedef struct {
    const char *name;
    void (*forward)(Node *node, Graph *graph);  // node->value from its inputs' values
    void (*backward)(Node *node, Graph *graph); // inputs' grads += from node->grad
    int view;                                   // shares its input's memory (a reshape)
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
    int pad;                    // conv2d: zeros on each side (0 valid, KH/2 same)
    int is_state;               // kept, not learned: BatchNorm's running statistics
    float rate;                 // dropout: the probability of dropping a value
    size_t saved_fixed;         // floats of `saved` that do not grow with the batch
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
    KernelKind kernel;      // how convolutions and matrix multiplies are computed
    GemmContext *gemm;      // KERNEL_BLOCKED: the micro-kernel, the threads, the packing buffers
    float *scratch;         // (scratch_size) working memory ops share, one op at a time
    size_t scratch_size;
    float *state;           // (state_count) every state node, in creation order
    size_t state_count;
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
    free(g->scratch);
    gemm_context_free(g->gemm);
    free(g->state);
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

// State: kept with the parameters (a checkpoint saves it), initialised like
// them, changed by the ops that own it in training, never by the optimiser.
Node *graph_state(Graph *g, const char *label, const int *shape, int rank, Init init) {
    require(init != INIT_GLOROT, "%s: state starts at zeros or ones", label);
    Node *n = graph_add_node(g, NULL, 0, shape, rank);
    n->label = label;
    n->is_state = 1;
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
        if (n->op && n->op->view) continue;
        if (n->is_state) {
            g->state_count += capacity;
            continue;
        }
        other += n->saved_fixed;
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
    g->state = xmalloc(g->state_count * sizeof(float));
    size_t states = 0;
    params = other = 0;
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        size_t capacity = n->batched ? n->item_size * (size_t)g->max_batch : n->item_size;
        if (n->op && n->op->view) {  // the same numbers under another shape: no copy
            n->value = n->inputs[0]->value;
            n->grad = n->inputs[0]->grad;
            continue;
        }
        if (n->is_state) {
            n->value = g->state + states;
            states += capacity;
            continue;
        }
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
        if (n->saved_fixed) {  // after the per-item part, or on its own
            if (!n->saved) n->saved = g->memory + other;
            other += n->saved_fixed;
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
    for (int i = 0; i < g->count; i++) {
        Node *n = &g->nodes[i];
        if (n->is_state)
            for (size_t k = 0; k < n->size; k++) n->value[k] = n->init == INIT_ONES ? 1.0f : 0.0f;
    }
}

// Working memory for the op that runs now, at least `floats` of it: it
// grows to what the hungriest op needs (in the first full batch) and stays.
float *graph_scratch(Graph *g, size_t floats) {
    if (floats > g->scratch_size) {
        free(g->scratch);
        g->scratch = xmalloc(floats * sizeof(float));
        g->scratch_size = floats;
    }
    return g->scratch;
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

// The graph's threads: the blocked GEMM's, or none for the references.
Workers *graph_workers(const Graph *g) { return g->gemm ? g->gemm->workers : NULL; }

// Zeroes n floats, the large arrays in CLEAR_PARTS fixed parts on the threads:
// one core alone does not reach the memory's full speed.
enum { CLEAR_PARTS = 8, CLEAR_PARALLEL_FROM = 1 << 16 };

typedef struct {
    float *x;  // (n)
    size_t n;
} ClearJob;

void clear_part(void *context, int part, int worker) {
    (void)worker;
    const ClearJob *j = context;
    size_t from = j->n * (size_t)part / CLEAR_PARTS, to = j->n * (size_t)(part + 1) / CLEAR_PARTS;
    memset(j->x + from, 0, (to - from) * sizeof(float));
}

void clear_floats(Workers *workers, float *x /* (n) */, size_t n) {
    ClearJob job = {x, n};
    parallel_for(n < CLEAR_PARALLEL_FROM ? NULL : workers, CLEAR_PARTS, clear_part, &job);
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
        if (n->op && n->grad) clear_floats(graph_workers(g), n->grad, n->size);
    }
    require(g->output->size == 1 && g->output->grad, "backward needs a scalar output that depends on a parameter");
    g->output->grad[0] = 1.0f;
    for (int i = g->order_count - 1; i >= 0; i--) {
        Node *n = g->order[i];
        if (n->op && n->requires_grad) n->op->backward(n, g);
    }
}

/* ---- The ops ---------------------------------------------------------------
   Each op is a forward and a backward function over its node, mostly calling
   the layer kernels of chapter 2, plus a constructor that checks shapes. The
   backward functions skip inputs that need no gradient (grad == NULL). */

/* Memory-bound ops (ReLU, pooling, dropout) split their batch over the graph's
   threads, one task per item. An item's outputs are its own, so which
   thread does which item changes nothing in the result. */
typedef void ItemWork(const Graph *g, Node *n, int item);

typedef struct {
    const Graph *graph;
    Node *node;
    ItemWork *work;
} ItemJob;

void item_task(void *context, int task, int worker) {
    (void)worker;
    ItemJob *job = context;
    job->work(job->graph, job->node, task);
}

/* A small tensor is done by the calling thread alone: waking the others
   costs a few microseconds, about what one core needs to read and write
   ITEMS_PARALLEL_FROM floats (2 x 128 KB at some tens of GB/s). The dense
   layers' activations, 64 x 128 floats, are far below it; the CNNs' maps
   far above. */
enum { ITEMS_PARALLEL_FROM = 1 << 15 };

void for_each_item(Graph *g, Node *n, ItemWork *work) {
    ItemJob job = {g, n, work};
    parallel_for(n->size < ITEMS_PARALLEL_FROM ? NULL : graph_workers(g), n->shape[0], item_task, &job);
}

void relu_item_forward(const Graph *g, Node *n, int i) {
    (void)g;
    relu_forward(n->value + i * n->item_size, n->inputs[0]->value + i * n->item_size, n->item_size);
}

void relu_item_backward(const Graph *g, Node *n, int i) {
    (void)g;
    size_t at = i * n->item_size;
    relu_backward(n->inputs[0]->grad + at, n->grad + at, n->inputs[0]->value + at, n->item_size);
}

// Adds src into dst, elementwise: the backward of every "copy" of a gradient.
void accumulate(float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

// matmul: x (B, C) @ w (C, OC) -> (B, OC)
void matmul_op_forward(Node *n, Graph *g) {
    const Node *x = n->inputs[0], *w = n->inputs[1];
    if (g->kernel == KERNEL_BLOCKED) {
        matmul_forward_blocked(g->gemm, n->value, x->value, w->value, x->shape[0], w->shape[0], w->shape[1]);
        return;
    }
    matmul_forward(n->value, x->value, w->value, x->shape[0], w->shape[0], w->shape[1]);
}

void matmul_op_backward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *w = n->inputs[1];
    if (g->kernel == KERNEL_BLOCKED) {
        matmul_backward_blocked(g->gemm, x->grad, w->grad, n->grad, x->value, w->value, x->shape[0],
                                w->shape[0], w->shape[1]);
        return;
    }
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
    if (n->batched) {
        for_each_item(g, n, relu_item_forward);
        return;
    }
    relu_forward(n->value, n->inputs[0]->value, n->size);
}

void relu_op_backward(Node *n, Graph *g) {
    if (n->batched) {
        for_each_item(g, n, relu_item_backward);
        return;
    }
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

/* conv2d: x (B, H, W, C), kernel (KH, KW, C, OC), bias (OC) -> (B, OH, OW, OC),
   with the node's `pad`. The graph's `kernel` says which implementation of
   conv.c runs; they compute the same sums (in different orders). */
ConvShape conv_shape_of(const Node *n) {
    const Node *x = n->inputs[0], *w = n->inputs[1];
    return conv_shape(x->shape[0], x->shape[1], x->shape[2], x->shape[3], w->shape[0], w->shape[1],
                      n->pad, w->shape[3]);
}

void conv2d_op_forward(Node *n, Graph *g) {
    const Node *x = n->inputs[0], *w = n->inputs[1], *b = n->inputs[2];
    ConvShape s = conv_shape_of(n);
    if (g->kernel == KERNEL_NAIVE)
        conv2d_forward_naive(n->value, x->value, w->value, b->value, &s);
    else if (g->kernel == KERNEL_IM2COL)
        conv2d_forward_im2col(n->value, x->value, w->value, b->value, &s,
                              graph_scratch(g, conv_rows(&s) * conv_patch_size(&s)));
    else {
        require(g->gemm, "conv2d: the blocked kernel without a GEMM context");
        conv2d_forward_blocked(g->gemm, n->value, x->value, w->value, b->value, &s);
    }
}

void conv2d_op_backward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *w = n->inputs[1], *b = n->inputs[2];
    ConvShape s = conv_shape_of(n);
    if (g->kernel == KERNEL_NAIVE)
        conv2d_backward_naive(x->grad, w->grad, b->grad, n->grad, x->value, w->value, &s);
    else if (g->kernel == KERNEL_IM2COL)  // the patches and their gradient
        conv2d_backward_im2col(x->grad, w->grad, b->grad, n->grad, x->value, w->value, &s,
                               graph_scratch(g, 2 * conv_rows(&s) * conv_patch_size(&s)));
    else  // the kernel turned around
        conv2d_backward_blocked(g->gemm, x->grad, w->grad, b->grad, n->grad, x->value, w->value, &s,
                                graph_scratch(g, conv2d_blocked_scratch(&s)));
}

// max_pool: x (B, H, W, C) -> (B, H/2, W/2, C), one image a task; the
// blocked path takes the vectorised backward pass, the references the plain one.
void max_pool_item_forward(const Graph *g, Node *n, int i) {
    const Node *x = n->inputs[0];
    (void)g;
    max_pool_forward(n->value + i * n->item_size, x->value + i * x->item_size, 1, x->shape[1], x->shape[2], x->shape[3]);
}

void max_pool_item_backward(const Graph *g, Node *n, int i) {
    Node *x = n->inputs[0];
    float *dinp = x->grad + i * x->item_size;
    const float *dout = n->grad + i * n->item_size, *inp = x->value + i * x->item_size;
    if (g->kernel == KERNEL_BLOCKED) max_pool_backward_fast(dinp, dout, inp, 1, x->shape[1], x->shape[2], x->shape[3]);
    else max_pool_backward(dinp, dout, inp, 1, x->shape[1], x->shape[2], x->shape[3]);
}

void max_pool_op_forward(Node *n, Graph *g) { for_each_item(g, n, max_pool_item_forward); }
void max_pool_op_backward(Node *n, Graph *g) { for_each_item(g, n, max_pool_item_backward); }

// reshape: the same numbers read with another shape. graph_compile points
// the node at its input's memory, so there is nothing to compute either way.
void reshape_op_forward(Node *n, Graph *g) { (void)n, (void)g; }
void reshape_op_backward(Node *n, Graph *g) { (void)n, (void)g; }

/* batch_norm: x (B, ..., C), gamma and beta (C), running mean and variance
   (C, state) -> the shape of x. Statistics over every dimension but the
   last. Saved: the batch's mean, then 1/sqrt(var + eps), per channel; the
   backward pass computes x_hat again from x (batchnorm.c says why). */
void batch_norm_op_forward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *gamma = n->inputs[1], *beta = n->inputs[2], *mean = n->inputs[3], *var = n->inputs[4];
    int C = gamma->shape[0];
    size_t N = x->size / (size_t)C;
    if (g->training)
        batch_norm_forward_train(graph_workers(g), n->value, n->saved, n->saved + C, mean->value, var->value, x->value,
                                 gamma->value, beta->value, N, C);
    else
        batch_norm_forward_infer(graph_workers(g), n->value, x->value, gamma->value, beta->value, mean->value, var->value, N, C);
}

void batch_norm_op_backward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *gamma = n->inputs[1], *beta = n->inputs[2];
    int C = gamma->shape[0];
    batch_norm_backward(graph_workers(g), x->grad, gamma->grad, beta->grad, n->grad, x->value, n->saved, n->saved + C,
                        gamma->value, x->size / (size_t)C, C);
}

/* dropout: x -> the shape of x. Item i of the batch draws its mask from the
   stream keyed by (seed, step, this node, i): the same masks at any thread
   count, in any order, and in a resumed run. Nothing is saved: the
   backward pass opens the same stream and draws the mask again. */
Rng dropout_stream(const Graph *g, const Node *n, int i) {
    uint64_t layer = (uint64_t)(n - g->nodes);
    return rng_keyed(g->seed, STREAM_DROPOUT, (uint64_t)g->step, layer << 32 | (uint64_t)i);
}

void dropout_item_forward(const Graph *g, Node *n, int i) {
    Rng rng = dropout_stream(g, n, i);
    size_t at = (size_t)i * n->item_size;
    dropout_forward_train(n->value + at, n->inputs[0]->value + at, n->item_size, n->rate, &rng);
}

void dropout_item_backward(const Graph *g, Node *n, int i) {
    Rng rng = dropout_stream(g, n, i);
    size_t at = (size_t)i * n->item_size;
    dropout_backward(n->inputs[0]->grad + at, n->grad + at, n->item_size, n->rate, &rng);
}

void dropout_op_forward(Node *n, Graph *g) {
    const Node *x = n->inputs[0];
    if (!g->training) {
        memcpy(n->value, x->value, n->size * sizeof(float));
        return;
    }
    for_each_item(g, n, dropout_item_forward);
}

void dropout_op_backward(Node *n, Graph *g) {
    if (n->inputs[0]->grad) for_each_item(g, n, dropout_item_backward);
}

// The op table: the one place an op is registered.
typedef enum {
    OP_MATMUL, OP_BIAS_ADD, OP_RELU, OP_ADD, OP_MUL, OP_SUM, OP_SOFTMAX_CROSS_ENTROPY,
    OP_CONV2D, OP_MAX_POOL, OP_RESHAPE,
    OP_BATCH_NORM, OP_DROPOUT,
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
    [OP_CONV2D] = {.name = "conv2d", .forward = conv2d_op_forward, .backward = conv2d_op_backward},
    [OP_MAX_POOL] = {.name = "max_pool", .forward = max_pool_op_forward, .backward = max_pool_op_backward},
    [OP_RESHAPE] = {.name = "reshape", .forward = reshape_op_forward, .backward = reshape_op_backward, .view = 1},
    [OP_BATCH_NORM] = {.name = "batch_norm", .forward = batch_norm_op_forward, .backward = batch_norm_op_backward},
    [OP_DROPOUT] = {.name = "dropout", .forward = dropout_op_forward, .backward = dropout_op_backward},
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

// conv2d with a bias; pad 0 is "valid", KH/2 "same" (odd kernels only).
Node *conv2d(Graph *g, Node *x, Node *kernel, Node *bias, int pad) {
    require(x->batched && x->rank == 4 && !kernel->batched && kernel->rank == 4 &&
            kernel->shape[2] == x->shape[3] && bias->rank == 1 && bias->shape[0] == kernel->shape[3],
            "conv2d needs x (B, H, W, C), a kernel (KH, KW, C, OC) and a bias (OC)");
    // One `pad` for both sides of a square kernel: the blocked input
    // gradient pads dout by KH-1-pad, which is right only when KW = KH.
    require(kernel->shape[0] == kernel->shape[1] && kernel->shape[0] % 2 == 1 && pad >= 0 &&
            pad <= kernel->shape[0] / 2, "conv2d takes odd square kernels and a padding from 0 to KH/2");
    int OH = x->shape[1] + 2 * pad - kernel->shape[0] + 1, OW = x->shape[2] + 2 * pad - kernel->shape[1] + 1;
    require(OH >= 1 && OW >= 1, "conv2d: a %dx%d kernel does not fit a %dx%d image", kernel->shape[0],
            kernel->shape[1], x->shape[1], x->shape[2]);
    Node *n = graph_op(g, &OPS[OP_CONV2D], (Node *[]){x, kernel, bias}, 3, 1,
                       (int[]){OH, OW, kernel->shape[3]}, 3);
    n->pad = pad;
    return n;
}

Node *max_pool(Graph *g, Node *x) {
    require(x->batched && x->rank == 4 && x->shape[1] >= POOL && x->shape[2] >= POOL,
            "max_pool needs x (B, H, W, C) of at least 2x2");
    return graph_op(g, &OPS[OP_MAX_POOL], (Node *[]){x}, 1, 1,
                    (int[]){x->shape[1] / POOL, x->shape[2] / POOL, x->shape[3]}, 3);
}

// The same values under a new shape (of one batch item), no copy. A
// reshaped leaf would share its gradient with a node whose gradient
// graph_backward() clears, so only ops and gradient-free inputs qualify.
Node *reshape(Graph *g, Node *x, const int *shape, int rank) {
    size_t size = 1;
    for (int d = 0; d < rank; d++) size *= (size_t)shape[d];
    require(x->batched && size == x->item_size, "reshape must keep the number of values per item");
    require(x->op || !x->requires_grad, "reshape: a leaf that needs a gradient cannot be reshaped");
    return graph_op(g, &OPS[OP_RESHAPE], (Node *[]){x}, 1, 1, shape, rank);
}

Node *flatten(Graph *g, Node *x) { return reshape(g, x, (int[]){(int)x->item_size}, 1); }
// batch_norm over the last dimension of x, with its own gamma (ones), beta
// (zeros), running mean (zeros) and running variance (ones), labelled by
// `labels` in that order (string literals: the nodes keep the pointers).
Node *batch_norm(Graph *g, Node *x, const char *const labels[4]) {
    require(x->batched && x->rank >= 2, "batch_norm needs x (B, ..., C)");
    int C = x->shape[x->rank - 1];
    Node *gamma = graph_parameter(g, labels[0], (int[]){C}, 1, INIT_ONES);
    Node *beta = graph_parameter(g, labels[1], (int[]){C}, 1, INIT_ZEROS);
    Node *mean = graph_state(g, labels[2], (int[]){C}, 1, INIT_ZEROS);
    Node *var = graph_state(g, labels[3], (int[]){C}, 1, INIT_ONES);
    Node *n = graph_op(g, &OPS[OP_BATCH_NORM], (Node *[]){x, gamma, beta, mean, var}, 5, 1,
                       x->shape + 1, x->rank - 1);
    n->saved_fixed = 2 * (size_t)C;  // the batch's mean, then 1 / sqrt(var + eps)
    return n;
}

Node *dropout(Graph *g, Node *x, float rate) {
    require(x->batched && rate >= 0 && rate < 1, "dropout needs a batched x and a rate in [0, 1)");
    Node *n = graph_op(g, &OPS[OP_DROPOUT], (Node *[]){x}, 1, 1, x->shape + 1, x->rank - 1);
    n->rate = rate;
    return n;
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
                   .workers = graph_workers(c->graph),
                   .state = c->graph->state, .state_count = c->graph->state_count,
                   .max_batch = c->graph->max_batch};
}
/* ----------------------------------------------------------------------------
   The models of chapter 4 on the engine, and their summary table.

   The protocol's basic CNN, built from the ops above; a table of each
   layer's output, parameters and multiply-adds per image; and build_model,
   which builds any model by the name --model takes. */

// A convolution block's parameters, Glorot kernel and zero bias.
Node *conv_layer(Graph *g, Node *x, int out_channels, int pad, const char *kernel_label,
                 const char *bias_label) {
    Node *kernel = graph_parameter(g, kernel_label, (int[]){3, 3, x->shape[3], out_channels}, 4, INIT_GLOROT);
    Node *bias = graph_parameter(g, bias_label, (int[]){out_channels}, 1, INIT_ZEROS);
    return conv2d(g, x, kernel, bias, pad);
}

Node *dense_layer(Graph *g, Node *x, int out_width, const char *weight_label, const char *bias_label) {
    Node *weight = graph_parameter(g, weight_label, (int[]){x->shape[1], out_width}, 2, INIT_GLOROT);
    Node *bias = graph_parameter(g, bias_label, (int[]){out_width}, 1, INIT_ZEROS);
    return bias_add(g, matmul(g, x, weight), bias);
}

/* The basic CNN: conv 3x3x32 valid, ReLU, max pool, conv 3x3x64 valid,
   ReLU, max pool, flatten, dense 128, ReLU, dense 10, softmax.
   28x28x1 -> 26x26x32 -> 13x13x32 -> 11x11x64 -> 5x5x64 = 1600 -> 128 -> 10.
   Each block pools before its ReLU: ReLU never changes which input of a
   window is largest, so the result and its gradient are the same to the
   bit (a NaN aside, which stops training anyway; book.md 4.7), and the
   ReLU runs on a quarter as many numbers, forward and backward. */
GraphClassifier basic_cnn_graph(int max_batch, uint64_t seed) {
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = reshape(g, images, (int[]){IMAGE_ROWS, IMAGE_COLS, 1}, 3);
    x = relu(g, max_pool(g, conv_layer(g, x, 32, 0, "kernel1", "bias1")));
    x = relu(g, max_pool(g, conv_layer(g, x, 64, 0, "kernel2", "bias2")));
    x = relu(g, dense_layer(g, flatten(g, x), 128, "weight3", "bias3"));
    x = dense_layer(g, x, NUM_CLASSES, "weight4", "bias4");
    Node *loss = softmax_cross_entropy(g, x, targets);
    graph_compile(g, loss);
    graph_initialize(g, seed);
    return (GraphClassifier){.graph = g, .images = images, .targets = targets, .loss = loss};
}

/* The deeper CNN: two blocks of (conv 3x3 same, batch norm, ReLU) twice,
   max pool, dropout 0.25; then dense 256, batch norm, ReLU, dropout 0.5,
   dense 10. The convolutions and the first dense layer keep their biases
   even before batch norm (which subtracts them again), as the Keras
   original does, so the parameter count is the protocol's 872,426.
   28x28x1 -> 28x28x32 -> 14x14x32 -> 14x14x64 -> 7x7x64 = 3136 -> 256 -> 10.
   `with_batch_norm` and `with_dropout` are 1 for the protocol's model;
   chapter 7 takes one of them out at a time, to measure what each is worth
   (an ablation). Taking a layer out leaves every other layer as it was. */
typedef struct {
    int with_batch_norm, with_dropout;
} DeeperParts;

Node *maybe_batch_norm(Graph *g, Node *x, DeeperParts parts, const char *const labels[4]) {
    return parts.with_batch_norm ? batch_norm(g, x, labels) : x;
}

Node *maybe_dropout(Graph *g, Node *x, DeeperParts parts, float rate) {
    return parts.with_dropout ? dropout(g, x, rate) : x;
}

Node *conv_bn(Graph *g, Node *x, int out_channels, DeeperParts parts, const char *const labels[6]) {
    return maybe_batch_norm(g, conv_layer(g, x, out_channels, 1, labels[0], labels[1]), parts, labels + 2);
}

Node *conv_bn_relu(Graph *g, Node *x, int out_channels, DeeperParts parts, const char *const labels[6]) {
    return relu(g, conv_bn(g, x, out_channels, parts, labels));
}

// The second block of each pair pools before its ReLU, as the basic CNN does.
Node *conv_bn_pool_relu(Graph *g, Node *x, int out_channels, DeeperParts parts, const char *const labels[6]) {
    return relu(g, max_pool(g, conv_bn(g, x, out_channels, parts, labels)));
}

GraphClassifier deeper_cnn_graph(int max_batch, uint64_t seed, DeeperParts parts) {
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = reshape(g, images, (int[]){IMAGE_ROWS, IMAGE_COLS, 1}, 3);
    x = conv_bn_relu(g, x, 32, parts, (const char *const[]){"kernel1", "bias1", "bn1.gamma", "bn1.beta", "bn1.mean", "bn1.variance"});
    x = conv_bn_pool_relu(g, x, 32, parts, (const char *const[]){"kernel2", "bias2", "bn2.gamma", "bn2.beta", "bn2.mean", "bn2.variance"});
    x = maybe_dropout(g, x, parts, 0.25f);
    x = conv_bn_relu(g, x, 64, parts, (const char *const[]){"kernel3", "bias3", "bn3.gamma", "bn3.beta", "bn3.mean", "bn3.variance"});
    x = conv_bn_pool_relu(g, x, 64, parts, (const char *const[]){"kernel4", "bias4", "bn4.gamma", "bn4.beta", "bn4.mean", "bn4.variance"});
    x = maybe_dropout(g, x, parts, 0.25f);
    x = dense_layer(g, flatten(g, x), 256, "weight5", "bias5");
    x = maybe_batch_norm(g, x, parts, (const char *const[]){"bn5.gamma", "bn5.beta", "bn5.mean", "bn5.variance"});
    x = maybe_dropout(g, relu(g, x), parts, 0.5f);
    x = dense_layer(g, x, NUM_CLASSES, "weight6", "bias6");
    Node *loss = softmax_cross_entropy(g, x, targets);
    graph_compile(g, loss);
    graph_initialize(g, seed);
    return (GraphClassifier){.graph = g, .images = images, .targets = targets, .loss = loss};
}

// Every model of this chapter, by the name --model takes, computed by
// `kernel` (with `gemm`, which the graph takes over, for KERNEL_BLOCKED).
GraphClassifier build_model(const char *name, int max_batch, uint64_t seed, KernelKind kernel, GemmContext *gemm) {
    GraphClassifier c = strcmp(name, "ann") == 0 ? ann_graph(max_batch, seed)
                      : strcmp(name, "deeper") == 0 ? deeper_cnn_graph(max_batch, seed, (DeeperParts){1, 1})
                      : basic_cnn_graph(max_batch, seed);
    c.graph->kernel = kernel;
    c.graph->gemm = gemm;
    return c;
}

// Multiply-adds one image costs in a node: the heavy ops only, since the
// rest (ReLU, pooling, bias) do one cheap operation per value.
double multiply_adds_per_image(const Node *n) {
    if (n->op == &OPS[OP_CONV2D]) {
        const Node *w = n->inputs[1];
        return (double)n->item_size * w->shape[0] * w->shape[1] * w->shape[2];
    }
    if (n->op == &OPS[OP_MATMUL]) return (double)n->inputs[1]->shape[0] * n->inputs[1]->shape[1];
    return 0;
}

// The layer table printed before training, and the totals a reader can
// check against the protocol (225,034 parameters for the basic CNN).
void print_model_summary(const GraphClassifier *c, const char *name) {
    const Graph *g = c->graph;
    size_t parameters = 0;
    double total_macs = 0;
    printf("\nmodel %s, layer by layer (shapes per image):\n  %-22s %-16s %10s %14s\n", name, "layer", "output",
           "parameters", "multiply-adds");
    size_t trainable = 0, largest_patches = 0;  // floats of one image's im2col matrix
    for (int i = 0; i < g->order_count; i++) {
        const Node *n = g->order[i];
        if (!n->op || n->op == &OPS[OP_SOFTMAX_CROSS_ENTROPY]) continue;
        size_t own = 0;
        for (int k = 0; k < n->input_count; k++) {
            if (n->inputs[k]->is_parameter) own += n->inputs[k]->size, trainable += n->inputs[k]->size;
            if (n->inputs[k]->is_state) own += n->inputs[k]->size;
        }
        char shape[48] = "";
        for (int d = n->batched; d < n->rank; d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), d > n->batched ? "x%d" : "%d", n->shape[d]);
        double macs = multiply_adds_per_image(n);
        if (n->op == &OPS[OP_CONV2D]) {
            ConvShape s = conv_shape_of(n);
            size_t per_image = conv_rows(&s) / (size_t)s.batch * conv_patch_size(&s);
            largest_patches = per_image > largest_patches ? per_image : largest_patches;
        }
        printf("  %-22s %-16s %10zu %14.0f\n", n->op->name, shape, own, macs);
        parameters += own;
        total_macs += macs;
    }
    printf("  %-22s %-16s %10zu %14.0f   (%.2f MFLOP per image forward)\n", "total", "", parameters,
           total_macs, 2e-6 * total_macs);
    if (trainable != parameters)
        printf("  %zu of the parameters are trained; the other %zu are batch norm's running statistics\n",
               trainable, parameters - trainable);
    if (largest_patches)
        printf("  im2col would need %.1f MB at batch %d (the largest patch matrix and its gradient)\n",
               2.0 * largest_patches * g->max_batch * sizeof(float) / 1e6, g->max_batch);
}
/* ----------------------------------------------------------------------------
   Two more normalisations (book.md, chapter 5's exercises); the models do not
   use them.

   Batch norm folded into the convolution before it, for inference. In
   inference mode batch norm is gamma (y - mean) / sqrt(var + eps) + beta of
   a fixed mean and variance, and y = bias + the sum of x * weight: both are
   linear in x, so together they are one convolution, with each output
   channel's weights and bias changed. `weight` is (fan_in, C), the output
   channel last, as a kernel (KH, KW, C_in, OC) is with fan_in = KH KW C_in. */
void fold_batch_norm(float *weight, float *bias, size_t fan_in, int C, const float *gamma, const float *beta,
                     const float *running_mean, const float *running_var) {
    for (int c = 0; c < C; c++) {
        float factor = gamma[c] / sqrtf(running_var[c] + BN_EPSILON);
        bias[c] = beta[c] + factor * (bias[c] - running_mean[c]);
        for (size_t k = 0; k < fan_in; k++) weight[k * (size_t)C + c] *= factor;
    }
}

/* Layer normalisation (Ba, Kiros and Hinton, 2016): batch norm turned on its
   side. Each row of x (N, C) is normalised over its own C values, not each
   channel over the batch, so there are no running statistics and training
   and inference are the same; gamma and beta are per channel still. The
   forward pass keeps x_hat (N, C) and 1 / sqrt(var + eps) per row (N). */
void layer_norm_forward(float *out, float *x_hat, float *inv_std, const float *x, const float *gamma,
                        const float *beta, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *row = x + (size_t)i * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++) mean += row[c];
        mean /= C;
        for (int c = 0; c < C; c++) var += (row[c] - mean) * (row[c] - mean);
        var /= C;
        inv_std[i] = (float)(1.0 / sqrt(var + BN_EPSILON));
        for (int c = 0; c < C; c++) {
            size_t at = (size_t)i * C + c;
            x_hat[at] = (float)((row[c] - mean) * inv_std[i]);
            out[at] = gamma[c] * x_hat[at] + beta[c];
        }
    }
}

void layer_norm_backward(float *dx, float *dgamma, float *dbeta, const float *dout, const float *x_hat,
                         const float *inv_std, const float *gamma, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *g_row = dout + (size_t)i * C, *h_row = x_hat + (size_t)i * C;
        double sum_g = 0, sum_gh = 0;
        for (int c = 0; c < C; c++) {
            double g = (double)g_row[c] * gamma[c];
            sum_g += g, sum_gh += g * h_row[c];
            dgamma[c] += g_row[c] * h_row[c];
            dbeta[c] += g_row[c];
        }
        for (int c = 0; c < C; c++)
            dx[(size_t)i * C + c] += (float)(inv_std[i] * ((double)g_row[c] * gamma[c] - sum_g / C - h_row[c] * sum_gh / C));
    }
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

/* What --kernel and --threads ask for: the kind, and for the blocked GEMM a
   context (micro-kernel, threads, packing buffers). A micro-kernel the CPU
   lacks is refused here, before it could run an instruction it lacks. */
int choose_kernel(const Options *o, KernelKind *kind, GemmContext **gemm, Error *err) {
    *gemm = NULL;
    *kind = strcmp(o->kernel, "naive") == 0 ? KERNEL_NAIVE : strcmp(o->kernel, "im2col") == 0 ? KERNEL_IM2COL
                                                                                             : KERNEL_BLOCKED;
    if (*kind != KERNEL_BLOCKED) {
        if (o->threads > 1) printf("note: --threads has no effect on --kernel %s, a one-thread reference\n", o->kernel);
        return 0;
    }
    const GemmKernel *k = strcmp(o->kernel, "auto") == 0 ? gemm_best_kernel() : gemm_kernel_by_name(o->kernel);
    if (!gemm_kernel_supported(k))
        return fail(err, EXIT_NO_KERNEL, "--kernel %s: %s. Use --kernel auto, which picks the widest kernel "
                    "this CPU runs (here: %s).", o->kernel, k ? "this CPU does not have the instructions it needs"
                    : "this build has no such kernel (the SIMD kernels exist only in x86-64 builds)",
                    gemm_best_kernel()->name);
    *gemm = gemm_context_new(k, o->threads ? o->threads : online_cpus());
    return 0;
}

// Everything before the models: the options, the kernel and the data.
// Returns CONTINUE when there is a model to train, else the exit code.
int prepare(int argc, char **argv, Options *options, FashionMnist *data, KernelKind *kernel, GemmContext **gemm) {
    Error err = {0};
    *kernel = KERNEL_NAIVE;
    *gemm = NULL;
    // The kernel is asked for first, so a --kernel this CPU lacks is refused
    // before hundreds of megabytes of images are read (begin() parses the
    // options again, and reports any other mistake in them).
    if (parse_options(argc, argv, options, &err) == 0 && !options->help &&
        choose_kernel(options, kernel, gemm, &err)) {
        fprintf(stderr, "%s: %s\n", argv[0], err.message);
        return err.code;
    }
    int status = begin(argc, argv, options, data);
    if (status != CONTINUE) gemm_context_free(*gemm);
    return status;
}

int main(int argc, char **argv) {
    Options options;
    FashionMnist data;
    Error err = {0};
    KernelKind kernel;
    GemmContext *gemm;
    int status = prepare(argc, argv, &options, &data, &kernel, &gemm);
    if (status != CONTINUE) return finish_output(argv[0], status);

    GraphClassifier net = build_model(options.model, options.batch, (uint64_t)options.seed, kernel, gemm);
    print_model_summary(&net, options.model);
    if (gemm) printf("matrix multiplies: the blocked GEMM, %s micro-kernel, %d thread%s\n\n", gemm->kernel->name,
                     gemm->workers->threads, gemm->workers->threads == 1 ? "" : "s");
    else printf("matrix multiplies: %s (a reference: one thread, no SIMD beyond what the compiler finds)\n\n",
                options.kernel);
    Model model = graph_model(&net, options.model);
    History *history = NULL;
    Result result;
    status = fit_and_test(&model, &data, &options, &history, &result, &err);
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    else if (!options.overfit) {
        print_peak_memory();
        print_result(&result);
    }

    history_free(history);
    graph_free(net.graph);
    free_fashion_mnist(&data);
    return finish_output(argv[0], status);
}
