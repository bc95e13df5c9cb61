/* chapter7.c - the comparison: three models, several seeds, a verdict.

   What it adds: ./chapter7 trains every model --models names (the ANN, the
   basic CNN, the deeper CNN, and the deeper CNN without dropout or without
   batch norm) with --seeds seeds each, by chapter 6's protocol, each run
   going on from its checkpoint when it has one (chapter 6's runs count);
   tests each on its best weights image by image; compares the models on
   the same images with McNemar's exact test; writes results.md, gnuplot
   data and scripts, and pictures (confusion matrices, what changed between
   two models, galleries of right and wrong answers, the first layer's
   filters and feature maps) as PPM and as PNG, by an encoder of our own.
   --augment shifts and mirrors the training images; --quick does all of
   it small, in about a minute.
   What it is not: a hyper-parameter search; every model trains with the
   protocol's settings.

   Build and run:   make chapter7 && ./chapter7 --seeds 3   (./chapter7 --help)
              or:   make compare ARGS="--seeds 3"            (the data, the build, the run)
   Read with:       book.md, "Chapter 7".

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
#include <signal.h>  // Ctrl-C and SIGTERM: finish the batch, save, stop
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
    X(EXIT_CHECKPOINT_UNREADABLE, 17, "a checkpoint is missing, unreadable, not a regular file or too large") \
    X(EXIT_CHECKPOINT_NOT, 18, "a file is not a checkpoint (its magic number is wrong)")    \
    X(EXIT_CHECKPOINT_VERSION, 19, "a checkpoint of another format version or chapter")     \
    X(EXIT_CHECKPOINT_TRUNCATED, 20, "a checkpoint is truncated, or longer than its sections") \
    X(EXIT_CHECKPOINT_DAMAGED, 21, "a checkpoint is damaged: a checksum or a value is wrong") \
    X(EXIT_CHECKPOINT_MODEL, 22, "a checkpoint holds another model, or tensors of other shapes") \
    X(EXIT_CHECKPOINT_OPTIONS, 23, "--resume with options that differ from the checkpoint's run") \
    X(EXIT_CHECKPOINT_DATA, 24, "a checkpoint's run learned from other data than --data gives") \
    X(EXIT_CHECKPOINT_BUSY, 25, "another run is writing the same checkpoints (its lock is held)") \
    X(EXIT_CHECKPOINT_PRECISION, 26, "a checkpoint of a run in another --precision (fp32 or bf16)") \
    X(EXIT_INTERRUPTED, 130, "interrupted (Ctrl-C, SIGTERM or --stop-after): a checkpoint to resume from was saved") \
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

// After a rename, the directory's entry is what must reach the disk for the
// new name to survive a power cut; where the system can, ask for that.
// Failure here loses nothing that a crash would not, so it is not an error.
void sync_directory_of(const char *path) {
#if HAVE_POSIX
    char dir[1100];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + 1 : 1, slash ? path : ".");
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
#else
    (void)path;
#endif
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
    // On the disk before the rename: otherwise a power cut could leave the
    // new name pointing at blocks that were never written (book.md 6.6).
#if HAVE_POSIX
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
#endif
    ok &= fclose(f) == 0;
    ok = ok && rename(temp, path) == 0;
    if (!ok) {
        int why = errno;
        remove(temp);
        return fail(err, EXIT_WRITE, "%s: writing failed (%s)", path, why ? strerror(why) : "disk full?");
    }
    sync_directory_of(path);
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
enum { STREAM_AUGMENT = 5 };

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
    [','] = {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}, ['\''] = {0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00},
    ['('] = {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}, [')'] = {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},
    ['+'] = {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}, ['>'] = {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08},
    [';'] = {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08},
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
    int patience, stop_after;
    const char *checkpoints, *resume, *evaluate;  // a directory, and two checkpoint files (or NULL)
    int argc;     // the command line, for the command that resumes a run
    char **argv;
    const char *models;  // "ann,basic,deeper": the models chapter 7 compares
    int seeds, augment, quick;
    const char *plots;   // the directory the pictures go to
    const char *one_model;  // --model NAME: the same as --models NAME
    const char *precision;  // "fp32" or "bf16": the GEMM's operands (bf16.c)
} Options;

// The models --models builds, and a checkpoint may hold: chapter 7's, and
// chapter 8's residual networks (20 and 8 layers), the same without their
// skips, and the depthwise-separable network.
static const char MODEL_NAMES[] = "ann|basic|deeper|deeper-nodropout|deeper-nobn|resnet|plain|resnet8|plain8|separable";

Options default_options(void) {
    return (Options){
        .data_dir = "data",
        .batch = 64, .seed = 1, .optimizer = "adam",
        .epochs = 30, .patience = 3, .checkpoints = "checkpoints",
        .models = "plain8,resnet8", .seeds = 1, .plots = "plots", .precision = "fp32",
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
    specs[n++] = (OptionSpec){.name = "--epochs", .value_name = "N", .help = "the most epochs to train; early stopping may end sooner (default: 30)",
                              .kind = OPTION_INT, .target = &o->epochs, .min = 1, .max = 1000};
    specs[n++] = (OptionSpec){.name = "--patience", .value_name = "N", .help = "stop after N epochs without a lower validation loss (default: 3)",
                              .kind = OPTION_INT, .target = &o->patience, .min = 1, .max = 1000};
    specs[n++] = (OptionSpec){.name = "--checkpoints", .value_name = "DIR", .help = "where checkpoints are written (default: checkpoints)",
                              .kind = OPTION_TEXT, .target = &o->checkpoints};
    specs[n++] = (OptionSpec){.name = "--stop-after", .value_name = "N", .help = "pause as Ctrl-C would after N training steps of a run (run it again without --stop-after to go on)",
                              .kind = OPTION_INT, .target = &o->stop_after, .min = 1, .max = 2147483647};
    specs[n++] = (OptionSpec){.name = "--models", .value_name = "LIST", .help = "the models to compare, separated by commas: ann, basic, deeper, "
                              "deeper-nodropout, deeper-nobn, resnet, plain, resnet8, plain8, separable (default: plain8,resnet8)",
                              .kind = OPTION_TEXT, .target = &o->models};
    specs[n++] = (OptionSpec){.name = "--model", .value_name = "NAME", .help = "one model alone: the same as --models NAME",
                              .kind = OPTION_TEXT, .target = &o->one_model, .choices = MODEL_NAMES};
    specs[n++] = (OptionSpec){.name = "--seeds", .value_name = "N", .help = "train each model N times, with seeds --seed to --seed + N - 1 (default: 1)",
                              .kind = OPTION_INT, .target = &o->seeds, .min = 1, .max = 100};
    specs[n++] = (OptionSpec){.name = "--augment", .value_name = NULL, .help = "shift training images by up to 2 pixels and flip half of them",
                              .kind = OPTION_FLAG, .target = &o->augment};
    specs[n++] = (OptionSpec){.name = "--quick", .value_name = NULL, .help = "a small version of everything, in about a minute (3000 training, "
                              "1000 validation and 1000 test images, at most 4 epochs)",
                              .kind = OPTION_FLAG, .target = &o->quick};
    specs[n++] = (OptionSpec){.name = "--plots", .value_name = "DIR", .help = "where the pictures, plot data and results.md go (default: plots, and plots/quick with --quick)",
                              .kind = OPTION_TEXT, .target = &o->plots};
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
    specs[n++] = (OptionSpec){.name = "--kernel", .value_name = "NAME", .help = "how convolutions and matrix multiplies are computed: naive, "
                              "im2col (the references, fp32 only), or the blocked GEMM with the portable, avx2 or avx512 "
                              "micro-kernel (in bf16: the emulations of VDPBF16PS), or avx512bf16 (bf16 only: the "
                              "instruction); auto picks the fastest this CPU runs (default: auto)",
                              .kind = OPTION_TEXT, .target = &o->kernel, .choices = "auto|naive|im2col|portable|avx2|avx512|avx512bf16"};
    specs[n++] = (OptionSpec){.name = "--precision", .value_name = "NAME", .help = "fp32, or bf16: the matrix multiplies' "
                              "operands rounded to bfloat16, their sums in fp32 (default: fp32)",
                              .kind = OPTION_TEXT, .target = &o->precision, .choices = "fp32|bf16"};
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

// --models, split at the commas into names, each a model and none twice.
// Returns how many, or -1 with the message in *err.
enum { MAX_MODELS = 10, MODEL_NAME_SIZE = 24 };
int split_model_list(const char *list, char names[MAX_MODELS][MODEL_NAME_SIZE], Error *err) {
    int count = 0;
    for (const char *at = list;; at++) {
        int length = (int)strcspn(at, ",");
        char name[MODEL_NAME_SIZE] = "";
        if (length < MODEL_NAME_SIZE) memcpy(name, at, (size_t)length);
        if (length >= MODEL_NAME_SIZE || !is_choice(name, MODEL_NAMES))
            return fail(err, EXIT_USAGE, "--models: '%.*s' is not a model; the models are ann, basic, deeper, "
                        "deeper-nodropout, deeper-nobn, resnet, plain, resnet8, plain8 and separable, separated by "
                        "commas (for example --models plain,resnet)", length, at), -1;
        for (int i = 0; i < count; i++)
            if (strcmp(names[i], name) == 0) return fail(err, EXIT_USAGE, "--models: '%s' is named twice", name), -1;
        memcpy(names[count++], name, sizeof name);
        at += length;
        if (!*at) return count;
        if (count == MAX_MODELS) return fail(err, EXIT_USAGE, "--models: at most %d models", MAX_MODELS), -1;
    }
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
    if (o->one_model) o->models = o->one_model;
    int bf16 = strcmp(o->precision, "bf16") == 0;
    if (!bf16 && strcmp(o->kernel, "avx512bf16") == 0)
        return fail(err, EXIT_USAGE, "--kernel avx512bf16 multiplies in bf16: add --precision bf16");
    if (bf16 && (strcmp(o->kernel, "naive") == 0 || strcmp(o->kernel, "im2col") == 0))
        return fail(err, EXIT_USAGE, "--kernel %s is an fp32 reference; --precision bf16 needs the blocked GEMM "
                    "(--kernel auto, portable, avx2, avx512 or avx512bf16)", o->kernel);
    char names[MAX_MODELS][MODEL_NAME_SIZE];
    if (split_model_list(o->models, names, err) < 0) return err->code;
    if (o->seed > 2147483647 - (o->seeds - 1))
        return fail(err, EXIT_USAGE, "--seed %d with --seeds %d: the last seed would pass 2147483647", o->seed, o->seeds);
    // A quick run's checkpoints are of other runs (fewer images), and its
    // pictures are not the book's: both kept apart.
    if (o->quick && strcmp(o->checkpoints, "checkpoints") == 0) o->checkpoints = "checkpoints/quick";
    if (o->quick && strcmp(o->plots, "plots") == 0) o->plots = "plots/quick";
    o->argc = argc, o->argv = argv;
    if (o->resume && o->evaluate) return fail(err, EXIT_USAGE, "--resume and --evaluate: choose one");
    if ((o->resume || o->evaluate) && o->overfit)
        return fail(err, EXIT_USAGE, "--overfit trains from scratch; it cannot be combined with --%s",
                    o->resume ? "resume" : "evaluate");
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
// Chapter 8's GEMM in bfloat16 (bf16.c): its kernels, buffers, and the loops on bf16 pairs.
typedef struct Bf16Kernel Bf16Kernel;
void bf16_buffers_free(void *buffers);
ParallelTask pack_b_task_bf16, gemm_tile_bf16;

typedef struct GemmContext {
    const GemmKernel *kernel;
    Blocking blocking;
    Workers *workers;
    float *packed_a;  // (threads, a_floats): each worker's packed block of A, mc * kc floats
    float *packed_b;  // (nc * kc): the block of B in use, shared (tiles of columns pack their own panels)
    size_t a_floats;
    void *memory;     // what packed_a and packed_b were carved from
    const Bf16Kernel *bf16;  // not NULL: the operands are rounded to bf16 and multiplied by this kernel
    void *bf16_buffers;      // its packed pairs (bf16.c)
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
    bf16_buffers_free(ctx->bf16_buffers);
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
    // bf16 multiplies k in pairs (0, 1), (2, 3), ...: with every block but
    // the last of even length, the pairs and so the bits do not depend on
    // the blocking. (kc is even in a bf16 context.)
    if (ctx->bf16 && unit % 2) unit = 2 * unit <= blk->kc ? 2 * unit : 2;
    int units = (K + unit - 1) / unit, k_blocks = (units + blk->kc / unit - 1) / (blk->kc / unit);
    int kc_even = (units + k_blocks - 1) / k_blocks * unit;
    GemmJob job = {ctx, M, N, K, &A, &B, C, ldc, bias, accumulate, 0, 0, 0, 0, 0, 0};
    for (job.jc = 0; job.jc < N; job.jc += blk->nc) {                              // loop 5
        job.nc = N - job.jc < blk->nc ? N - job.jc : blk->nc;
        // The tasks, from the shape alone: tiles of rows, or of columns when M is one block of rows.
        int panels = (job.nc + nr - 1) / nr, by_columns = M <= blk->mc && panels > 1;
        by_columns = by_columns && !ctx->bf16;  // bf16.c's tasks are tiles of rows
        int most = by_columns ? panels : (M + MR - 1) / MR, tiles = by_columns ? 1 : (M + blk->mc - 1) / blk->mc;
        while (tiles < TASKS_WANTED && tiles < most && 2.0 * M * job.nc * kc_even / (tiles + 1) >= MIN_TASK_FLOPS)
            tiles++;
        job.tile_m = by_columns ? M : (int)round_up((M + tiles - 1) / tiles, MR);
        job.tile_n = by_columns ? (panels + tiles - 1) / tiles * nr : 0;
        int tasks = by_columns ? (job.nc + job.tile_n - 1) / job.tile_n : (M + job.tile_m - 1) / job.tile_m;
        Workers *w = tasks > 1 ? ctx->workers : NULL;  // one task: B packed alone, not waking the pool every block
        for (job.pc = 0; job.pc < K; job.pc += kc_even) {                          // loop 4
            job.kc = K - job.pc < kc_even ? K - job.pc : kc_even;
            if (!job.tile_n) parallel_for(w, panels, ctx->bf16 ? pack_b_task_bf16 : pack_b_task, &job);
            parallel_for(w, tasks, ctx->bf16 ? gemm_tile_bf16 : gemm_tile, &job);  // loops 3, 2, 1
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
   Mixed precision: the blocked GEMM in bfloat16 (book.md, chapter 8, part 2).

   What this is: bfloat16 ("bf16"), the top 16 bits of a float: its sign, its
   8 exponent bits and 7 of its 23 fraction bits. A float rounded to bf16
   keeps fp32's range and loses 16 bits of precision. Here the blocked GEMM
   rounds A and B to bf16 as it packs them, multiplies the bf16 values (a
   product of two 8-bit significands is exact in fp32) and adds the
   products in fp32, in pairs along k, exactly as x86's VDPBF16PS does.
   Four micro-kernels give the same bits: the instruction itself
   (AVX512_BF16), and an emulation of it in portable C, in AVX2 and in
   AVX-512F for every machine without it.
   What it is not: bf16 everywhere. Only the GEMM's operands are rounded.
   Its results, and so every activation and gradient, the weights' master
   copy, Adam's moments, batch norm, the loss and the softmax stay fp32;
   the depthwise convolution, which is not a GEMM, stays fp32 too.

   The definition every kernel keeps (the tests hold them to it, bit for
   bit). With a = bf16(A), b = bf16(B), element C(i, j) is the chain
       t = daz(start(i, j))
       for p = 0, 1, ..., ceil(K / 2) - 1:
           t = ftz(fma(a(i, 2p+1), b(2p+1, j), t))    the odd element first
           t = ftz(fma(a(i, 2p),   b(2p,   j), t))
   where start is as in the fp32 GEMM (C's old value, the bias, or 0), an
   element past K is 0, daz turns a denormal into a zero of its sign, and
   ftz does the same to a result that is tiny after rounding: one whose
   rounded value, with the exponent unbounded, is below 2^-126. That is
   Intel's pseudo-code for VDPBF16PS, with the denormal rule it states in
   words, and what the instruction does on the machine the book measures
   (tests/test_bf16.c checks it on a million lanes). The pairs are (0,
   1), (2, 3), ... of the whole sum, whatever the blocking: blocks of k are
   cut at even k. */

typedef uint16_t bf16;

/* ----------------------------------------------------------------------------
   The format. */

uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

float bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

// A bf16 widened to a float: its 16 bits on top, zeros below. Exact.
float bf16_to_float(bf16 h) { return bits_float((uint32_t)h << 16); }

/* A float rounded to the nearest bf16, ties to even, as VCVTNEPS2BF16 does:
   - the 16 bits that go are compared with half the last bit kept: above,
     round up; below, down; exactly half, up only if the kept bit is 1
     (odd), so that the result is even. Adding 0x7FFF + (kept bit) to the
     bits and cutting does all three: the carry into bit 16 happens exactly
     when the discarded part is above half, or half with an odd bit kept.
     A carry out of the fraction bumps the exponent, which is right (the
     next binade's first number), and past the largest finite value it
     gives infinity, which is right too: 0x7F7FFFFF is nearer 2^128 than
     the largest bf16, so it overflows;
   - a NaN stays a NaN: its top bits, with the quiet bit (bit 6 of the bf16)
     set, because cutting the bits of a NaN whose payload lies only in the
     low 16 would give infinity;
   - a denormal becomes a zero of its sign: the dot-product instruction
     would read a denormal bf16 as zero anyway (and the converter does so). */
bf16 bf16_round(float x) {
    uint32_t u = float_bits(x);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu))  // NaN
        return (bf16)((u >> 16) | 0x0040u);
    if ((u & 0x7F800000u) == 0) return (bf16)((u >> 16) & 0x8000u);  // zero or denormal
    return (bf16)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

/* Stochastic rounding (exercise 8.stochastic-round): x rounded up to the
   next bf16 away from zero with probability equal to how far it lies
   between its two neighbours, down otherwise, so that the rounding's
   expected value is x itself: many tiny updates, each smaller than half a
   bf16 step, then add up on average instead of all vanishing. `noise` is
   16 random bits, uniform on 0..65535. As bf16_round: NaN stays a quiet
   NaN, a denormal becomes a zero of its sign, a bf16 is kept as it is. */
bf16 bf16_round_stochastic(float x, uint32_t noise) {
    uint32_t u = float_bits(x);
    if ((u & 0x7F800000u) == 0x7F800000u) return bf16_round(x);  // infinity or NaN
    if ((u & 0x7F800000u) == 0) return (bf16)((u >> 16) & 0x8000u);
    return (bf16)((u + (noise & 0xFFFFu)) >> 16);
}

/* ----------------------------------------------------------------------------
   One step of the dot product, in portable C.

   fma(a, b, t) rounds a*b + t once. To flush a tiny result we must know
   whether it is tiny after rounding with the exponent unbounded (24 bits
   kept whatever the exponent), not after IEEE's rounding to the denormal
   grid that fmaf does. The two differ only where fmaf returns exactly
   +-2^-126: then the exact sum lies within 2^-150 of it, and it is tiny
   if it is below 2^-126 - 2^-151, the midpoint between 2^-126 and the
   float below it in the unbounded format (the midpoint itself rounds to
   2^-126, the even one). a*b + t in double says which: a*b is exact in
   double (two 24-bit significands), and so is the sum whenever it is that
   close to 2^-126 (every t is a multiple of 2^-149 there, and a product
   too small to be one cannot move the sum across the midpoint). */
float ftz(float x) { return fabsf(x) < FLT_MIN ? copysignf(0.0f, x) : x; }

float bf16_step(float a, float b, float t) {
    float r = fmaf(a, b, t);
    if (fabsf(r) == FLT_MIN && fabs((double)a * b + t) < 0x1.ffffffp-127) return copysignf(0.0f, r);
    return ftz(r);
}

/* The instruction's NaNs, for tests of the instruction itself: a NaN
   operand is returned quieted, the first of a, b, t; a NaN made from
   numbers (infinity times zero, infinity minus infinity) is x86's "default
   NaN", 0xFFC00000. The GEMM's kernels are held to NaN for NaN, not to
   payloads: the emulating kernels let the FMA instruction choose. */
float bf16_step_nan(float a, float b, float t) {
    if (isnan(a) || isnan(b) || isnan(t)) return bits_float(float_bits(isnan(a) ? a : isnan(b) ? b : t) | 0x00400000u);
    float r = bf16_step(a, b, t);
    return isnan(r) ? bits_float(0xFFC00000u) : r;
}

// One 32-bit lane of VDPBF16PS: t plus two products, a pair of bf16 in
// each of a_pair and b_pair (element 2p in the low half, 2p+1 in the high).
float bf16_dot2(float t, uint32_t a_pair, uint32_t b_pair) {
    float a0 = ftz(bf16_to_float((bf16)a_pair)), a1 = ftz(bf16_to_float((bf16)(a_pair >> 16)));
    float b0 = ftz(bf16_to_float((bf16)b_pair)), b1 = ftz(bf16_to_float((bf16)(b_pair >> 16)));
    t = bf16_step_nan(a1, b1, ftz(t));
    return bf16_step_nan(a0, b0, t);
}

/* ----------------------------------------------------------------------------
   Micro-kernels. The contract is the fp32 kernels' (gemm.c), with pairs:

   kernel(kp, a, rs_a, cs_a, b, c, ldc, start, ld_start) computes the
   (MR, NR) tile from kp pairs of k. Pair p of row i of the strip is
   a[i*rs_a + p*cs_a], a 32-bit word: a(i, 2p) in its low half, a(i, 2p+1)
   in its high half. The strip is in whichever order the fp32 packing left
   it: by rows (rs_a = kp, cs_a = 1) or by columns (rs_a = 1, cs_a = MR).
   Pair p of column j of the panel is b[p*NR + j]. Both were rounded and
   flushed when packed, so a kernel never meets a denormal bf16. */

typedef void Bf16MicroKernel(int kp, const uint32_t *a, long rs_a, long cs_a,  // (MR, kp) pairs
                             const uint32_t *b,                                // (kp, NR) pairs
                             float *c, long ldc,                               // (MR, NR) tile of C
                             const float *start, long ld_start);

/* Rounding a packed block into pairs, three ways (below): a row of a
   strip packed by rows, whose pairs are neighbours; a strip packed by
   columns, whose pairs are rows 2p and 2p+1 of MR floats; a panel, whose
   pairs are rows 2p and 2p+1 of NR floats. */
typedef struct {
    void (*along)(uint32_t *pairs, const float *row, int kc);           // pairs[p] = (row[2p], row[2p+1])
    void (*columns)(uint32_t *pairs, const float *strip, int kc);       // (kc, MR) floats -> (kp, MR) pairs
    void (*panel)(uint32_t *pairs, const float *panel, int kc, int nr); // (kc, nr) floats -> (kp, nr) pairs
} Bf16Packing;

struct Bf16Kernel {
    const char *name;        // "portable", "avx2", "avx512" (emulations), "avx512bf16" (the instruction)
    Bf16MicroKernel *kernel;
    const char *fp32;        // the fp32 kernel whose NR, packing and buffers this one uses
    int (*supported)(void);
    const Bf16Packing *packing;
};

/* The portable kernel, 6x4: the definition, step by step. Slow on x86
   built without -mfma (fmaf is a library call there), which is why x86 has
   kernels of its own; it is the reference they are tested against. */
void bf16_kernel_portable(int kp, const uint32_t *a, long rs_a, long cs_a, const uint32_t *b, float *c, long ldc,
                          const float *start, long ld_start) {
    float acc[MR][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = ftz(start[i * ld_start + j]);
    for (int p = 0; p < kp; p++, a += cs_a, b += 4)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < 4; j++) {
                uint32_t ai = a[i * rs_a];
                acc[i][j] = bf16_step(bf16_to_float((bf16)(ai >> 16)), bf16_to_float((bf16)(b[j] >> 16)), acc[i][j]);
                acc[i][j] = bf16_step(bf16_to_float((bf16)ai), bf16_to_float((bf16)b[j]), acc[i][j]);
            }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < 4; j++) c[i * ldc + j] = acc[i][j];
}

#if HAVE_X86_KERNELS
int cpu_has_avx512bf16(void) { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16"); }

/* The emulations on x86 flush as the instruction does by setting two bits
   of MXCSR, the SSE control register, for the length of the call: DAZ
   (0x0040) reads denormal inputs as zero, FTZ (0x8000) flushes a result
   that is tiny after rounding with the exponent unbounded, exactly the
   rule above. Then each step is one FMA. A bf16 widens to a float by a
   shift: the high half of a pair is the pair with its low 16 bits cleared,
   the low half is the pair shifted left by 16. */
enum { MXCSR_DAZ_FTZ = 0x8040 };

/* AVX2, 6x16: 12 accumulators (ymm, 8 floats) as in the fp32 kernel. Per
   pair: the odd halves of B's 16 pairs in two registers, then each row's
   odd A broadcast and two FMAs; then the same with the even halves. 12 + 2
   + 1 registers of 16, so nothing spills. */
__attribute__((target("avx2,fma")))
void bf16_kernel_avx2(int kp, const uint32_t *a, long rs_a, long cs_a, const uint32_t *b, float *c, long ldc,
                      const float *start, long ld_start) {
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | MXCSR_DAZ_FTZ);
    __m256 acc[MR][2];
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < 2; h++)
            acc[i][h] = _mm256_loadu_ps(start + i * ld_start + 8 * h);
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    for (int p = 0; p < kp; p++, a += cs_a, b += 16) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)b), b1 = _mm256_loadu_si256((const __m256i *)(b + 8));
        __m256 odd0 = _mm256_castsi256_ps(_mm256_and_si256(b0, high)), odd1 = _mm256_castsi256_ps(_mm256_and_si256(b1, high));
        for (int i = 0; i < MR; i++) {  // unrolled: MR is a constant
            __m256 ai = _mm256_set1_ps(bits_float(a[i * rs_a] & 0xFFFF0000u));
            acc[i][0] = _mm256_fmadd_ps(ai, odd0, acc[i][0]), acc[i][1] = _mm256_fmadd_ps(ai, odd1, acc[i][1]);
        }
        __m256 even0 = _mm256_castsi256_ps(_mm256_slli_epi32(b0, 16)), even1 = _mm256_castsi256_ps(_mm256_slli_epi32(b1, 16));
        for (int i = 0; i < MR; i++) {
            __m256 ai = _mm256_set1_ps(bits_float(a[i * rs_a] << 16));
            acc[i][0] = _mm256_fmadd_ps(ai, even0, acc[i][0]), acc[i][1] = _mm256_fmadd_ps(ai, even1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(c + i * ldc + 8 * h, acc[i][h]);
    _mm_setcsr(csr);
}

// AVX-512F, 6x32: the AVX2 emulation with zmm registers (16 floats).
__attribute__((target("avx512f")))
void bf16_kernel_avx512(int kp, const uint32_t *a, long rs_a, long cs_a, const uint32_t *b, float *c, long ldc,
                        const float *start, long ld_start) {
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | MXCSR_DAZ_FTZ);
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < 2; h++)
            acc[i][h] = _mm512_loadu_ps(start + i * ld_start + 16 * h);
    const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
    for (int p = 0; p < kp; p++, a += cs_a, b += 32) {
        __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 16);
        __m512 odd0 = _mm512_castsi512_ps(_mm512_and_si512(b0, high)), odd1 = _mm512_castsi512_ps(_mm512_and_si512(b1, high));
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(bits_float(a[i * rs_a] & 0xFFFF0000u));
            acc[i][0] = _mm512_fmadd_ps(ai, odd0, acc[i][0]), acc[i][1] = _mm512_fmadd_ps(ai, odd1, acc[i][1]);
        }
        __m512 even0 = _mm512_castsi512_ps(_mm512_slli_epi32(b0, 16)), even1 = _mm512_castsi512_ps(_mm512_slli_epi32(b1, 16));
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(bits_float(a[i * rs_a] << 16));
            acc[i][0] = _mm512_fmadd_ps(ai, even0, acc[i][0]), acc[i][1] = _mm512_fmadd_ps(ai, even1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int h = 0; h < 2; h++) _mm512_storeu_ps(c + i * ldc + 16 * h, acc[i][h]);
    _mm_setcsr(csr);
}

/* AVX512_BF16, 6x32: the instruction. Registers as in the fp32 AVX-512
   kernel: 12 accumulators, two loads of B (16 pairs each) a pair of k,
   one broadcast pair of A a row. Each VDPBF16PS does 16 lanes x 2
   multiply-adds, so per pair of k 12 of them do the work of 24 fp32 FMAs:
   twice fp32's rate where the unit issues them as fast. It ignores MXCSR
   (its flushing is its own). */
__attribute__((target("avx512f,avx512bf16")))
void bf16_kernel_avx512bf16(int kp, const uint32_t *a, long rs_a, long cs_a, const uint32_t *b, float *c,
                            long ldc, const float *start, long ld_start) {
    __m512 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    c00 = _mm512_loadu_ps(start + 0 * ld_start), c01 = _mm512_loadu_ps(start + 0 * ld_start + 16);
    c10 = _mm512_loadu_ps(start + 1 * ld_start), c11 = _mm512_loadu_ps(start + 1 * ld_start + 16);
    c20 = _mm512_loadu_ps(start + 2 * ld_start), c21 = _mm512_loadu_ps(start + 2 * ld_start + 16);
    c30 = _mm512_loadu_ps(start + 3 * ld_start), c31 = _mm512_loadu_ps(start + 3 * ld_start + 16);
    c40 = _mm512_loadu_ps(start + 4 * ld_start), c41 = _mm512_loadu_ps(start + 4 * ld_start + 16);
    c50 = _mm512_loadu_ps(start + 5 * ld_start), c51 = _mm512_loadu_ps(start + 5 * ld_start + 16);
    for (int p = 0; p < kp; p++, a += cs_a, b += 32) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16), ai;
        ai = (__m512bh)_mm512_set1_epi32((int)a[0]), c00 = _mm512_dpbf16_ps(c00, ai, b0), c01 = _mm512_dpbf16_ps(c01, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[rs_a]), c10 = _mm512_dpbf16_ps(c10, ai, b0), c11 = _mm512_dpbf16_ps(c11, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[2 * rs_a]), c20 = _mm512_dpbf16_ps(c20, ai, b0), c21 = _mm512_dpbf16_ps(c21, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[3 * rs_a]), c30 = _mm512_dpbf16_ps(c30, ai, b0), c31 = _mm512_dpbf16_ps(c31, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[4 * rs_a]), c40 = _mm512_dpbf16_ps(c40, ai, b0), c41 = _mm512_dpbf16_ps(c41, ai, b1);
        ai = (__m512bh)_mm512_set1_epi32((int)a[5 * rs_a]), c50 = _mm512_dpbf16_ps(c50, ai, b0), c51 = _mm512_dpbf16_ps(c51, ai, b1);
    }
    _mm512_storeu_ps(c + 0 * ldc, c00), _mm512_storeu_ps(c + 0 * ldc + 16, c01);
    _mm512_storeu_ps(c + 1 * ldc, c10), _mm512_storeu_ps(c + 1 * ldc + 16, c11);
    _mm512_storeu_ps(c + 2 * ldc, c20), _mm512_storeu_ps(c + 2 * ldc + 16, c21);
    _mm512_storeu_ps(c + 3 * ldc, c30), _mm512_storeu_ps(c + 3 * ldc + 16, c31);
    _mm512_storeu_ps(c + 4 * ldc, c40), _mm512_storeu_ps(c + 4 * ldc + 16, c41);
    _mm512_storeu_ps(c + 5 * ldc, c50), _mm512_storeu_ps(c + 5 * ldc + 16, c51);
}
#endif

/* ----------------------------------------------------------------------------
   Packing: the fp32 packing (gemm.c) into a float block, then each pair of
   k rounded into one 32-bit word. Rounding happens here, once per element
   of a block, not once per use in the kernel. A pair past kc (kc odd) is
   (value, 0). */

void pair_along_portable(uint32_t *pairs, const float *row, int kc) {
    for (int k = 0; k < kc; k += 2)
        *pairs++ = (uint32_t)bf16_round(row[k]) | (k + 1 < kc ? (uint32_t)bf16_round(row[k + 1]) << 16 : 0);
}

void pair_panel_portable(uint32_t *pairs, const float *panel, int kc, int nr) {
    for (int k = 0; k < kc; k += 2, panel += 2 * nr)
        for (int j = 0; j < nr; j++)
            *pairs++ = (uint32_t)bf16_round(panel[j]) | (k + 1 < kc ? (uint32_t)bf16_round(panel[nr + j]) << 16 : 0);
}

void pair_columns_portable(uint32_t *pairs, const float *strip, int kc) { pair_panel_portable(pairs, strip, kc, MR); }

static const Bf16Packing PORTABLE_PACKING = {pair_along_portable, pair_columns_portable, pair_panel_portable};

#if HAVE_X86_KERNELS
/* bf16_round on 16 floats at once, each result in the low half of its
   32-bit lane: the same integer steps, the NaN and denormal cases chosen
   by masks instead of branches. */
__attribute__((target("avx512f")))
static inline __m512i round_avx512(__m512i u) {
    const __m512i exponent = _mm512_set1_epi32(0x7F800000), one = _mm512_set1_epi32(1);
    __m512i top = _mm512_srli_epi32(u, 16);
    __m512i bias = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), _mm512_and_si512(top, one));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), exponent);
    __mmask16 tiny = _mm512_cmpeq_epi32_mask(_mm512_and_si512(u, exponent), _mm512_setzero_si512());
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(top, _mm512_set1_epi32(0x0040)));
    return _mm512_mask_mov_epi32(r, tiny, _mm512_and_si512(top, _mm512_set1_epi32(0x8000)));
}

// 8 pairs from 16 neighbours: the two halves of each 64-bit lane joined,
// then the low 32 bits of each 64-bit lane kept (VPMOVQD).
__attribute__((target("avx512f")))
void pair_along_avx512(uint32_t *pairs, const float *row, int kc) {
    int k = 0;
    for (; k + 16 <= kc; k += 16, pairs += 8) {
        __m512i r = round_avx512(_mm512_loadu_si512(row + k));
        _mm256_storeu_si256((__m256i *)pairs, _mm512_cvtepi64_epi32(_mm512_or_si512(r, _mm512_srli_epi64(r, 16))));
    }
    _mm256_zeroupper();  // as rng_uniform_fill_avx512 does before its last call (batchnorm.c)
    pair_along_portable(pairs, row + k, kc - k);
}

// Rows 2p and 2p+1, 16 columns at a time; the last columns under a mask.
__attribute__((target("avx512f")))
void pair_panel_avx512(uint32_t *pairs, const float *panel, int kc, int nr) {
    for (int k = 0; k < kc; k += 2, panel += 2 * nr, pairs += nr)
        for (int j = 0; j < nr; j += 16) {
            __mmask16 m = (__mmask16)(nr - j >= 16 ? 0xFFFF : (1u << (nr - j)) - 1);
            __m512i lo = round_avx512(_mm512_maskz_loadu_epi32(m, panel + j));
            __m512i hi = k + 1 < kc ? round_avx512(_mm512_maskz_loadu_epi32(m, panel + nr + j)) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(pairs + j, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
}

// A strip by columns: rows 2p and 2p+1 of MR floats are 2 MR neighbours;
// one load, and a permutation brings row 2p+1 under row 2p.
__attribute__((target("avx512f")))
void pair_columns_avx512(uint32_t *pairs, const float *strip, int kc) {
    __m512i up = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                  _mm512_set1_epi32(MR));  // lane i takes lane i + MR
    const __mmask16 row = (1u << MR) - 1, two_rows = (1u << 2 * MR) - 1;
    for (int k = 0; k < kc; k += 2, strip += 2 * MR, pairs += MR) {
        __m512i r = round_avx512(_mm512_maskz_loadu_epi32(k + 1 < kc ? two_rows : row, strip));
        __m512i hi = _mm512_permutexvar_epi32(up, r);
        _mm512_mask_storeu_epi32(pairs, row, _mm512_or_si512(r, _mm512_slli_epi32(hi, 16)));
    }
}

static const Bf16Packing AVX512_PACKING = {pair_along_avx512, pair_columns_avx512, pair_panel_avx512};
#endif

// Every bf16 kernel this build has, the portable one first and the fastest last.
static const Bf16Kernel BF16_KERNELS[] = {
    {"portable", bf16_kernel_portable, "portable", always_supported, &PORTABLE_PACKING},
#if HAVE_X86_KERNELS
    {"avx2", bf16_kernel_avx2, "avx2", cpu_has_avx2_fma, &PORTABLE_PACKING},
    {"avx512", bf16_kernel_avx512, "avx512", cpu_has_avx512f, &AVX512_PACKING},
    {"avx512bf16", bf16_kernel_avx512bf16, "avx512", cpu_has_avx512bf16, &AVX512_PACKING},
#endif
};
enum { BF16_KERNEL_COUNT = sizeof BF16_KERNELS / sizeof BF16_KERNELS[0] };

const Bf16Kernel *bf16_kernel_by_name(const char *name) {  // NULL: this build has none by that name
    for (int i = 0; i < BF16_KERNEL_COUNT; i++)
        if (strcmp(BF16_KERNELS[i].name, name) == 0) return &BF16_KERNELS[i];
    return NULL;
}

int bf16_kernel_supported(const Bf16Kernel *kernel) { return kernel && kernel->supported(); }

// The fastest bf16 kernel this CPU runs: the instruction where it has it.
const Bf16Kernel *bf16_best_kernel(void) {
    for (int i = BF16_KERNEL_COUNT - 1; i > 0; i--)
        if (BF16_KERNELS[i].supported()) return &BF16_KERNELS[i];
    return &BF16_KERNELS[0];
}

/* ----------------------------------------------------------------------------
   The context and the driver: gemm.c's, with pairs. */

typedef struct {
    uint32_t *a;  // (threads, a_words): each worker's block of A as pairs
    uint32_t *b;  // the block of B as pairs, shared
    size_t a_words;
} Bf16Buffers;

/* A bf16 context: an fp32 context of the same NR, for its threads and
   float packing buffers, with kc made even (pairs never straddle two
   blocks), and pair buffers beside them. */
GemmContext *gemm_context_new_bf16_blocked(const Bf16Kernel *kernel, int threads, Blocking b) {
    require(bf16_kernel_supported(kernel), "gemm_context_new_bf16: kernel %s does not run on this CPU",
            kernel ? kernel->name : "NULL");
    b.kc = (int)round_up(b.kc, 2);
    GemmContext *ctx = gemm_context_new_blocked(gemm_kernel_by_name(kernel->fp32), threads, b);
    Bf16Buffers *buffers = xmalloc(sizeof *buffers);
    enum { LINE_WORDS = 64 / sizeof(uint32_t) };
    buffers->a_words = (size_t)round_up((long)b.mc * b.kc / 2, LINE_WORDS);
    buffers->a = xmalloc((size_t)ctx->workers->threads * buffers->a_words * sizeof(uint32_t));
    buffers->b = xmalloc((size_t)b.nc * b.kc / 2 * sizeof(uint32_t));
    ctx->bf16 = kernel;
    ctx->bf16_buffers = buffers;
    return ctx;
}

GemmContext *gemm_context_new_bf16(const Bf16Kernel *kernel, int threads) {
    return gemm_context_new_bf16_blocked(kernel, threads, DEFAULT_BLOCKING);
}

void bf16_buffers_free(void *buffers) {
    Bf16Buffers *b = buffers;
    if (!b) return;
    free(b->a);
    free(b->b);
    free(b);
}

// Loop 4's packing, one panel of B a task: floats, then pairs.
void pack_b_task_bf16(void *context, int panel, int worker) {
    (void)worker;
    const GemmJob *job = context;
    int nr = job->ctx->kernel->nr, col = panel * nr, kc = job->kc;
    int cols = job->nc - col < nr ? job->nc - col : nr;
    float *floats = job->ctx->packed_b + (size_t)panel * kc * nr;  // (kc, nr)
    pack_b(floats, job->B, job->pc, kc, job->jc + col, cols, nr);
    const Bf16Buffers *buffers = job->ctx->bf16_buffers;
    job->ctx->bf16->packing->panel(buffers->b + (size_t)panel * ((kc + 1) / 2) * nr, floats, kc, nr);
}

// Loops 3, 2 and 1, as gemm_tile, on pairs.
void gemm_tile_bf16(void *context, int task, int worker) {
    const GemmJob *job = context;
    const Bf16Kernel *kernel = job->ctx->bf16;
    const Bf16Buffers *buffers = job->ctx->bf16_buffers;
    int nr = job->ctx->kernel->nr, kc = job->kc, kp = (kc + 1) / 2;
    int ic = task * job->tile_m, rows = job->M - ic < job->tile_m ? job->M - ic : job->tile_m, cols = job->nc;
    float *packed_a = job->ctx->packed_a + (size_t)worker * job->ctx->a_floats;  // (rows / MR, MR, kc)
    pack_a(packed_a, job->A, ic, rows, job->pc, kc);
    int by_rows = pack_a_by_rows(job->A);
    long rs_a = by_rows ? kp : 1, cs_a = by_rows ? 1 : MR;  // in pairs
    uint32_t *pairs_a = buffers->a + (size_t)worker * buffers->a_words;  // (rows / MR) strips of MR * kp pairs
    for (int s = 0; s < rows; s += MR) {
        const float *strip = packed_a + (size_t)s * kc;  // (MR, kc) by rows, (kc, MR) by columns
        uint32_t *pairs = pairs_a + (size_t)s * kp;
        if (!by_rows) kernel->packing->columns(pairs, strip, kc);
        else for (int i = 0; i < MR; i++) kernel->packing->along(pairs + (size_t)i * kp, strip + (size_t)i * kc, kc);
    }
    int first = job->pc == 0, from_c = !first || job->accumulate;
    const float *bias = first ? job->bias : NULL;  // (N)
    for (int jr = 0; jr < cols; jr += nr) {
        int w = cols - jr < nr ? cols - jr : nr;
        const uint32_t *b = buffers->b + (size_t)jr * kp;  // (kp, nr) panel
        for (int ir = 0; ir < rows; ir += MR) {
            const uint32_t *a = pairs_a + (size_t)ir * kp;  // a strip, MR * kp pairs
            float *c = job->C + (size_t)(ic + ir) * job->ldc + job->jc + jr;
            int h = rows - ir < MR ? rows - ir : MR;
            if (h == MR && w == nr) {
                const float *start = bias ? bias + job->jc + jr : from_c ? c : GEMM_ZEROS;
                kernel->kernel(kp, a, rs_a, cs_a, b, c, job->ldc, start, start == c ? job->ldc : 0);
                continue;
            }
            float scratch[MR * GEMM_MAX_NR] = {0};  // (MR, nr)
            for (int y = 0; y < h && (bias || from_c); y++)
                memcpy(scratch + y * nr, bias ? bias + job->jc + jr : c + y * job->ldc, (size_t)w * sizeof(float));
            kernel->kernel(kp, a, rs_a, cs_a, b, scratch, nr, scratch, nr);
            for (int y = 0; y < h; y++) memcpy(c + y * job->ldc, scratch + y * nr, (size_t)w * sizeof(float));
        }
    }
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
    if (ctx->bf16) return 0;  // in bf16 the GEMM rounds its operands as it packs them
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
    struct Graph *graph;    // the tensors' names and shapes, for a checkpoint
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
    const volatile sig_atomic_t *interrupted;  // set by the Ctrl-C handler; NULL: never
    long stop_after;          // --stop-after: pause once this many steps are done (0: never)
    int augment;              // --augment: shift and flip each training image as it is gathered
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

// Should training pause after `steps_done` optimiser steps of the run? When
// Ctrl-C was pressed, or --stop-after asks for it (the same pause, at a
// step chosen in advance: how the tests and the book interrupt a run at
// an exact place).
int should_pause(const Trainer *t, long steps_done) {
    return (t->interrupted && *t->interrupted) || (t->stop_after && steps_done >= t->stop_after);
}

/* --augment (book.md 7.6): each training image, each time it is used, is
   shifted by -2 to 2 pixels in each direction (the pixels shifted in are
   black, the background) and, half of the time, mirrored left to right.
   A shirt is a shirt a pixel to the left and in a mirror, so the model
   sees more shirts than there are. The draw is keyed by (seed, epoch,
   image), like dropout's, so a resumed run draws the same. */
void augment_image(float *image, uint64_t seed, int epoch, int item) {  // (28, 28), in place
    Rng rng = rng_keyed(seed, STREAM_AUGMENT, (uint64_t)epoch, (uint64_t)item);
    int dx = (int)rng_below(&rng, 5) - 2, dy = (int)rng_below(&rng, 5) - 2, mirror = (int)rng_below(&rng, 2);
    float original[IMAGE_SIZE];
    memcpy(original, image, sizeof original);
    for (int r = 0; r < IMAGE_ROWS; r++)
        for (int c = 0; c < IMAGE_COLS; c++) {
            int from_r = r - dy, from_c = mirror ? IMAGE_COLS - 1 - (c - dx) : c - dx;
            int inside = from_r >= 0 && from_r < IMAGE_ROWS && from_c >= 0 && from_c < IMAGE_COLS;
            image[r * IMAGE_COLS + c] = inside ? original[from_r * IMAGE_COLS + from_c] : 0.0f;
        }
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
    // How many of the epoch's batches are done. A checkpoint saves this
    // struct, so a run interrupted in the middle of an epoch resumes there.
    int batches_done;
} EpochState;

// One pass over the training data in this epoch's order, from the batch
// *s has reached to the last, adding to *s. Returns 0, EXIT_DIVERGED with
// the message in *err, or EXIT_INTERRUPTED after the batch during which
// Ctrl-C was pressed.
int train_epoch(Trainer *t, int epoch, int epochs, EpochState *s, Progress *progress, History *h, Error *err) {
    Model *m = t->model;
    const Dataset *d = t->data;
    int batches = (d->count + t->batch - 1) / t->batch;
    epoch_order(t->order, d->count, t->seed, epoch);
    if (progress) {
        progress->epoch_start = now_seconds();
        progress->epoch_done = 0;
    }
    for (int b = s->batches_done; b < batches; b++) {
        int first = b * t->batch, n = d->count - first < t->batch ? d->count - first : t->batch;
        for (int i = 0; i < n; i++) {
            int item = t->order[first + i];
            memcpy(t->images + (size_t)i * IMAGE_SIZE, d->images + (size_t)item * IMAGE_SIZE, IMAGE_SIZE * sizeof(float));
            memcpy(t->targets + (size_t)i * NUM_CLASSES, d->targets + (size_t)item * NUM_CLASSES, NUM_CLASSES * sizeof(float));
            if (t->augment) augment_image(t->images + (size_t)i * IMAGE_SIZE, t->seed, epoch, item);
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
        s->batches_done = b + 1;
        if (h && h->batch_count < h->batch_capacity) h->batch_losses[h->batch_count++] = batch_loss;
        if (progress) {
            progress->done += n;
            progress->epoch_done += n;
            report_progress(progress, epoch, epochs, b + 1, batches, s->loss_sum / s->seen, (double)s->correct / s->seen);
        }
        if (b + 1 < batches && should_pause(t, batch.step + 1)) return EXIT_INTERRUPTED;
    }
    return 0;
}

typedef struct {
    float loss, accuracy;
    int confusion[NUM_CLASSES][NUM_CLASSES];  // [true class][predicted class]
} Evaluation;

// Loss, accuracy and confusion matrix on a whole dataset, in inference
// mode; and when `guesses` is not NULL, each image's predicted class and
// the probability the model gave it (for McNemar's test and the galleries).
Evaluation evaluate_each(Model *m, const Dataset *d, unsigned char *guesses, float *confidence) {  // (count) each
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
            if (guesses) guesses[first + i] = (unsigned char)guess, confidence[first + i] = probs[i * NUM_CLASSES + guess];
        }
    }
    free(probs);
    e.loss = d->count ? (float)(loss_sum / d->count) : 0;
    e.accuracy = d->count ? (float)correct / (float)d->count : 0;
    return e;
}

Evaluation evaluate(Model *m, const Dataset *d) { return evaluate_each(m, d, NULL, NULL); }

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

// Per class: of the images given this class, how many were it (precision);
// of the images of this class, how many were found (recall); and F1, their
// harmonic mean, which is high only when both are. Then their plain means
// over the classes (macro averages), each class counting the same.
typedef struct {
    double precision[NUM_CLASSES], recall[NUM_CLASSES], f1[NUM_CLASSES];
    double macro_precision, macro_recall, macro_f1;
} ClassFigures;

ClassFigures class_figures(const Evaluation *e) {
    const int (*confusion)[NUM_CLASSES] = e->confusion;  // [true class][predicted class]
    ClassFigures f = {0};
    for (int k = 0; k < NUM_CLASSES; k++) {
        long predicted = 0, actual = 0;
        for (int j = 0; j < NUM_CLASSES; j++) predicted += confusion[j][k], actual += confusion[k][j];
        double precision = predicted ? (double)confusion[k][k] / predicted : 0;
        double recall = actual ? (double)confusion[k][k] / actual : 0;
        f.precision[k] = precision, f.recall[k] = recall;
        f.f1[k] = precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0;
        f.macro_precision += precision, f.macro_recall += recall, f.macro_f1 += f.f1[k];
    }
    f.macro_precision /= NUM_CLASSES, f.macro_recall /= NUM_CLASSES, f.macro_f1 /= NUM_CLASSES;
    return f;
}

void print_class_report(const Evaluation *e) {
    ClassFigures f = class_figures(e);
    printf("\n%-13s %9s %9s %9s\n", "class", "precision", "recall", "F1");
    for (int k = 0; k < NUM_CLASSES; k++)
        printf("  %-11s %9.4f %9.4f %9.4f\n", CLASS_NAMES[k], f.precision[k], f.recall[k], f.f1[k]);
    printf("  %-11s %9.4f %9.4f %9.4f\n", "macro mean", f.macro_precision, f.macro_recall, f.macro_f1);
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
    int best_epoch;  // the epoch whose weights were tested
    uint32_t weights;  // their fingerprint (weights_fingerprint)
    float test_loss, test_accuracy;
    double seconds;
} Result;

void print_result(const Result *r) {
    printf("result model=%s epochs=%d ", r->model, r->epochs);
    printf("best_epoch=%d ", r->best_epoch);
    printf("seed=%d test_loss=%.4f test_accuracy=%.4f ", r->seed, r->test_loss, r->test_accuracy);
    printf("weights=%08x ", (unsigned)r->weights);
    printf("seconds=%.1f\n", r->seconds);
}

/* ----------------------------------------------------------------------------
   Early stopping (book.md 6.2): watch the validation loss after every
   epoch, remember the best, and stop when it has not improved for
   `patience` epochs in a row. The loss and not the accuracy: the loss
   still moves when the accuracy is stuck on a plateau, and it rises first
   when the model starts to learn its training images by heart. */

typedef struct {
    int patience;
    float best_loss;    // the lowest validation loss so far (infinite before the first epoch)
    int best_epoch;     // the epoch that reached it (0 before the first epoch)
    int epochs_without_improvement;
} EarlyStopping;

typedef enum { STOPPING_IMPROVED, STOPPING_WAIT, STOPPING_STOP } StoppingDecision;

EarlyStopping early_stopping_new(int patience) {
    return (EarlyStopping){.patience = patience, .best_loss = INFINITY};
}

// What to do after `epoch`, whose validation loss was `loss`. Only a loss
// strictly lower than the best counts as an improvement (as in Keras).
StoppingDecision early_stopping_update(EarlyStopping *s, int epoch, float loss) {
    if (loss < s->best_loss) {
        s->best_loss = loss;
        s->best_epoch = epoch;
        s->epochs_without_improvement = 0;
        return STOPPING_IMPROVED;
    }
    return ++s->epochs_without_improvement >= s->patience ? STOPPING_STOP : STOPPING_WAIT;
}

/* A learning rate that changes with the step (book.md, chapter 6's
   exercises): a linear warm-up over the first `warmup` steps, from
   lr / warmup at step 0 up to lr at step warmup - 1, then half a cosine,
   from lr at step `warmup` down to 0 at step `total`, and 0 after it.
   Steps count from 0; warmup 0 means no warm-up. Not used by the runs of
   the chapters, whose rate stays fixed. */
float warmup_cosine_lr(float lr, long step, long warmup, long total) {
    if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (step >= total) return 0.0f;
    const double half_turn = acos(-1.0);
    double done = (double)(step - warmup) / (double)(total - warmup);
    return (float)(lr * 0.5 * (1.0 + cos(half_turn * done)));
}

// Where a run stands: everything but the tensors and the history that a
// checkpoint must hold for a resumed run to go on exactly as this one would.
typedef struct {
    int epochs_done;        // complete epochs, validated
    EpochState epoch;       // the epoch after them, when it is under way
    EarlyStopping stopping;
    int stopped;            // early stopping has ended the run (only the test is left)
    double seconds;         // training time so far, over every session of the run
} RunState;

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
    print_class_report(&e);
    printf("\ntest loss %.4f, test accuracy %.2f%% (%d images)\n", e.loss, 100 * e.accuracy, test->count);
    result->test_loss = e.loss;
    result->test_accuracy = e.accuracy;
}

// Defined with the checkpoints, further down: it needs the engine's graph.
int run_protocol(Model *m, Optimizer *opt, const Dataset *train_set, const Dataset *validation,
                 const Options *o, History *h, Result *result, Error *err);

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
        if (!o->resume) print_initial_loss(m, &data->validation);  // a resumed run is not untrained
        *history = history_new(o->epochs, (train_set.count + o->batch - 1) / o->batch);
        printf("training on %d images, validating on %d, at most %d epochs, stopping after %d without "
               "improvement\n", train_set.count, data->validation.count, o->epochs, o->patience);
        status = run_protocol(m, &opt, &train_set, &data->validation, o, *history, result, err);
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

// A 20-layer residual network has about 200 nodes (chapter 8).
enum { MAX_RANK = 4, MAX_NODES = 512, LABEL_SIZE = 32 };
enum { MAX_INPUTS = 5 };  // batch_norm: x, gamma, beta, running mean, running variance

typedef struct Node Node;
typedef struct Graph Graph;

typedef struct {
    const char *name;
    void (*forward)(Node *node, Graph *graph);  // node->value from its inputs' values
    void (*backward)(Node *node, Graph *graph); // inputs' grads += from node->grad
    int view;                                   // shares its input's memory (a reshape)
    double (*multiply_adds)(const Node *node);  // per image, forward; NULL: one cheap operation per value
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
    char labels[MAX_NODES][LABEL_SIZE];  // labels made up as the graph is built (graph_label)
    int label_count;
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

// A label made of a format and numbers ("s2b1.c1.kernel"), kept by the
// graph: a network built in a loop cannot name its nodes with literals.
const char *graph_label(Graph *g, const char *format, ...) {
    require(g->label_count < MAX_NODES, "more than %d labels", MAX_NODES);
    char *label = g->labels[g->label_count++];
    va_list args;
    va_start(args, format);
    int length = vsnprintf(label, LABEL_SIZE, format, args);
    va_end(args);
    require(length >= 0 && length < LABEL_SIZE, "a label of %d characters", length);
    return label;
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
                   .graph = c->graph,
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

// Chapter 8's models, built in "Residual and depthwise-separable networks", below.
int is_chapter8_model(const char *name);
GraphClassifier chapter8_graph(const char *name, int max_batch, uint64_t seed);

// Every model of this chapter, by the name --model takes, computed by
// `kernel` (with `gemm`, which the graph takes over, for KERNEL_BLOCKED).
GraphClassifier build_model(const char *name, int max_batch, uint64_t seed, KernelKind kernel, GemmContext *gemm) {
    GraphClassifier c = strcmp(name, "ann") == 0 ? ann_graph(max_batch, seed)
                      : strcmp(name, "deeper") == 0 ? deeper_cnn_graph(max_batch, seed, (DeeperParts){1, 1})
                      : strcmp(name, "deeper-nodropout") == 0 ? deeper_cnn_graph(max_batch, seed, (DeeperParts){1, 0})
                      : strcmp(name, "deeper-nobn") == 0 ? deeper_cnn_graph(max_batch, seed, (DeeperParts){0, 1})
                      : is_chapter8_model(name) ? chapter8_graph(name, max_batch, seed)
                      : basic_cnn_graph(max_batch, seed);
    c.graph->kernel = kernel;
    c.graph->gemm = gemm;
    return c;
}

// Multiply-adds one image costs in a node: the heavy ops only, since the
// rest (ReLU, pooling, bias) do one cheap operation per value.
double multiply_adds_per_image(const Node *n) {
    if (n->op && n->op->multiply_adds) return n->op->multiply_adds(n);
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
   Residual and depthwise-separable networks (book.md, "Chapter 8").

   What this is: the ops the two new kinds of network need, and the networks.
   - global_avg_pool: (B, H, W, C) -> (B, C), each channel's mean over the
     image; it replaces the flatten and the large dense layer;
   - depthwise_conv: one 3x3 filter per channel, "same" padding, stride 1,
     with a bias. A naive version defines it; the fast one runs along the
     channels, which NHWC keeps side by side, so the compiler can vectorise
     it, and it gives the naive version's bits;
   - pointwise_conv: the 1x1 convolution. An NHWC map is already a
     (B*H*W, C) matrix, so this is that matrix times the (C, OC) kernel:
     chapter 4's blocked GEMM as it is, no patches;
   - the skip itself is chapter 3's add, whose backward hands the gradient
     to both inputs unchanged.
   The networks downsample with chapter 4's 2x2 max pool, as the deeper CNN
   does, not with a strided convolution: the blocked convolution has no
   stride, and a pool keeps the comparison with the deeper CNN to one
   change at a time.
   What it is not: ResNet-50 or MobileNet. The networks are small, for 28x28
   images, with widths chosen to cost what the deeper CNN costs (resnet,
   plain) or a quarter of it (separable). */

/* ---- Global average pooling -------------------------------------------------- */

// One image: out (C) = the mean of x (HW, C) over its HW positions, the
// positions added in order, the channels side by side.
void global_avg_pool_forward(float *restrict out, const float *restrict x, int HW, int C) {
    for (int c = 0; c < C; c++) out[c] = 0.0f;
    for (int p = 0; p < HW; p++)
        for (int c = 0; c < C; c++) out[c] += x[(size_t)p * C + c];
    for (int c = 0; c < C; c++) out[c] /= (float)HW;
}

// Each position moved its channel's mean by 1/HW of itself.
void global_avg_pool_backward(float *restrict dx, const float *restrict dout, int HW, int C) {
    for (int p = 0; p < HW; p++)
        for (int c = 0; c < C; c++) dx[(size_t)p * C + c] += dout[c] / (float)HW;
}

// global_avg_pool: x (B, H, W, C) -> (B, C), an image per task.
void global_avg_pool_item_forward(const Graph *g, Node *n, int i) {
    (void)g;
    const Node *x = n->inputs[0];
    global_avg_pool_forward(n->value + i * n->item_size, x->value + i * x->item_size, x->shape[1] * x->shape[2],
                            x->shape[3]);
}

void global_avg_pool_item_backward(const Graph *g, Node *n, int i) {
    (void)g;
    Node *x = n->inputs[0];
    global_avg_pool_backward(x->grad + i * x->item_size, n->grad + i * n->item_size, x->shape[1] * x->shape[2],
                             x->shape[3]);
}

// The input, not the output, is what is large here: one task per image
// when it is worth waking the threads for.
void global_avg_pool_op_forward(Node *n, Graph *g) {
    ItemJob job = {g, n, global_avg_pool_item_forward};
    parallel_for(n->inputs[0]->size < ITEMS_PARALLEL_FROM ? NULL : graph_workers(g), n->shape[0], item_task, &job);
}

void global_avg_pool_op_backward(Node *n, Graph *g) {
    ItemJob job = {g, n, global_avg_pool_item_backward};
    parallel_for(n->inputs[0]->size < ITEMS_PARALLEL_FROM ? NULL : graph_workers(g), n->shape[0], item_task, &job);
}

/* ---- The depthwise convolution ------------------------------------------------ */


/* out[b][y][x][c] = bias[c] + the sum over i, j in 0..2 of
   x[b][y+i-1][x+j-1][c] * kernel[i][j][c], with 0 outside the image.
   Channel c sees only channel c: 9 weights per channel, where an ordinary
   3x3 convolution has 9 C per output channel. The kernel is (3, 3, C, 1),
   as Keras stores it (so Glorot's fans are 9C and 9, as Keras's are).

   The naive version defines the order of every sum: the taps in order
   (i, j) from 0, then the bias. The product and the sum are two
   statements, so no compiler may fuse them into one rounding. */
void depthwise_forward_naive(float *out,           // (B, H, W, C)
                             const float *x,       // (B, H, W, C)
                             const float *kernel,  // (3, 3, C)
                             const float *bias,    // (C)
                             int B, int H, int W, int C) {
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int x0 = 0; x0 < W; x0++)
                for (int c = 0; c < C; c++) {
                    float sum = 0.0f;
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++) {
                            int yy = y + i - 1, xx = x0 + j - 1;
                            if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                            float product = x[(((size_t)b * H + yy) * W + xx) * C + c] * kernel[(i * 3 + j) * C + c];
                            sum += product;
                        }
                    out[(((size_t)b * H + y) * W + x0) * C + c] = sum + bias[c];
                }
}

/* The backward pass, naive. dx gathers, for each input position, the taps
   that read it: dx[y][x] += the sum over i, j of dout[y+1-i][x+1-j] *
   kernel[i][j]. The kernel's and the bias's gradients are summed image by
   image (each image's sum over its positions, in order), and the images'
   sums added in order: the order the fast version's one task per image
   needs, written out here so that both give the same bits. */
void depthwise_backward_naive(float *dx,            // (B, H, W, C) or NULL
                              float *dkernel,       // (3, 3, C)
                              float *dbias,         // (C)
                              const float *dout,    // (B, H, W, C)
                              const float *x,       // (B, H, W, C)
                              const float *kernel,  // (3, 3, C)
                              int B, int H, int W, int C) {
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * H * W * C, *gb = dout + (size_t)b * H * W * C;
        for (int y = 0; y < H && dx; y++)
            for (int x0 = 0; x0 < W; x0++)
                for (int c = 0; c < C; c++) {
                    float sum = 0.0f;
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++) {
                            int yy = y + 1 - i, xx = x0 + 1 - j;
                            if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                            float product = gb[((size_t)yy * W + xx) * C + c] * kernel[(i * 3 + j) * C + c];
                            sum += product;
                        }
                    dx[(((size_t)b * H + y) * W + x0) * C + c] += sum;
                }
        for (int t = 0; t < 10; t++)  // taps 0..8, then the bias
            for (int c = 0; c < C; c++) {
                float sum = 0.0f;
                for (int y = 0; y < H; y++)
                    for (int x0 = 0; x0 < W; x0++) {
                        int yy = y + t / 3 - 1, xx = x0 + t % 3 - 1;
                        if (t < 9 && (yy < 0 || yy >= H || xx < 0 || xx >= W)) continue;
                        float product = gb[((size_t)y * W + x0) * C + c] * (t < 9 ? xb[((size_t)yy * W + xx) * C + c] : 1.0f);
                        sum += product;
                    }
                if (t < 9) dkernel[t * C + c] += sum;
                else dbias[c] += sum;
            }
    }
}

/* The fast version, one image per task, a row at a time. For one tap
   (i, j), the outputs of row y read input row y+i-1 shifted by j-1
   pixels: a run of pixels that is contiguous in both (less a pixel at the
   edges). With the tap's C weights written out once along a whole row,
   `kernel_rows` (9, W, C), each tap is one pass of sum += a * b along
   three contiguous rows: a loop the compiler vectorises, as wide as the
   CPU allows. Every output value still adds its taps in the naive order,
   (i, j) from 0, one vector lane per value, so the bits are the naive
   version's at any vector width. `restrict` promises the compiler that
   the arrays do not overlap, without which it would not vectorise. The
   product and the sum are two statements: no fused multiply-add. */
void depthwise_taps(float *restrict sum, const float *restrict a, const float *restrict b, int C) {
    for (int c = 0; c < C; c++) {
        float product = a[c] * b[c];
        sum[c] += product;
    }
}

void multiply_add_run(float *restrict sum, const float *restrict a, const float *restrict b, size_t n) {
    for (size_t e = 0; e < n; e++) {
        float product = a[e] * b[e];
        sum[e] += product;
    }
}

#if HAVE_X86_KERNELS
// The same loop compiled for wider vectors, where the CPU has them: the
// same two roundings per value, so the same bits.
__attribute__((target("avx2"))) void multiply_add_run_avx2(float *restrict sum, const float *restrict a,
                                                             const float *restrict b, size_t n) {
    for (size_t e = 0; e < n; e++) {
        float product = a[e] * b[e];
        sum[e] += product;
    }
}

__attribute__((target("avx512f"))) void multiply_add_run_avx512(float *restrict sum, const float *restrict a,
                                                                  const float *restrict b, size_t n) {
    for (size_t e = 0; e < n; e++) {
        float product = a[e] * b[e];
        sum[e] += product;
    }
}
#endif

typedef void MultiplyAddRun(float *restrict sum, const float *restrict a, const float *restrict b, size_t n);

// The loop for the instruction set of the GEMM's micro-kernel, which
// --kernel chose and the CPU was checked to have (portable: plain C).
MultiplyAddRun *multiply_add_run_for(const GemmContext *ctx) {
#if HAVE_X86_KERNELS
    if (strcmp(ctx->kernel->name, "avx512") == 0) return multiply_add_run_avx512;
    if (strcmp(ctx->kernel->name, "avx2") == 0) return multiply_add_run_avx2;
#endif
    (void)ctx;
    return multiply_add_run;
}

// kernel_rows[t][p][c] = kernel[t][c] for every pixel p of a row.
void depthwise_kernel_rows(float *kernel_rows, const float *kernel, int W, int C) {
    for (int t = 0; t < 9; t++)
        for (int p = 0; p < W; p++) memcpy(kernel_rows + ((size_t)t * W + p) * C, kernel + t * C, (size_t)C * sizeof(float));
}

// sum[c] += a[p][c] * b[p][c] over `pixels` pixels: one tap's weight gradient along a row.
void depthwise_row_products(float *restrict sum, const float *restrict a, const float *restrict b, int pixels, int C) {
    for (int p = 0; p < pixels; p++) depthwise_taps(sum, a + (size_t)p * C, b + (size_t)p * C, C);
}

// The pixels of a row that tap column j reaches, shifted by `shift` = j - 1
// (or 1 - j for the input gradient): [first, first + count).
void tap_columns(int shift, int W, int *first, int *count) {
    *first = shift < 0 ? -shift : 0;
    *count = W - (shift < 0 ? -shift : shift);
}

#if HAVE_X86_KERNELS
/* The forward pass and the input gradient on AVX-512, sixteen channels of
   a position at a time: the nine taps' products added in a register, in
   the naive order, then what the output starts from (the bias, or dx
   itself when bias is NULL), and each output written once. Row by row,
   each tap is added into a row in memory: nine reads and writes of every
   value. `direction` 1 is the forward pass, tap (i, j) reading position
   (y + i - 1, x + j - 1); -1 the input gradient, reading (y + 1 - i,
   x + 1 - j). */
__attribute__((target("avx512f")))
void depthwise_taps_avx512(float *restrict out, const float *restrict in, const float *restrict kernel_rows,
                           const float *restrict bias, int direction, int H, int W, int C) {  // out, in (H, W, C)
    size_t row = (size_t)W * C;
    for (int y = 0; y < H; y++)
        for (int p = 0; p < W; p++)
            for (int c0 = 0; c0 < C; c0 += 16) {
                __mmask16 lanes = C - c0 >= 16 ? 0xffff : (__mmask16)((1u << (C - c0)) - 1);
                __m512 sum = _mm512_setzero_ps();
                for (int t = 0; t < 9; t++) {
                    int yy = y + direction * (t / 3 - 1), xx = p + direction * (t % 3 - 1);
                    if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                    __m512 product = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, in + yy * row + (size_t)xx * C + c0),
                                                   _mm512_maskz_loadu_ps(lanes, kernel_rows + t * row + c0));
                    sum = _mm512_add_ps(sum, product);
                }
                float *o = out + y * row + (size_t)p * C + c0;
                __m512 start = _mm512_maskz_loadu_ps(lanes, bias ? bias + c0 : o);
                _mm512_mask_storeu_ps(o, lanes, _mm512_add_ps(sum, start));
            }
}
#endif

void depthwise_forward_image(MultiplyAddRun *run, float *restrict out, const float *restrict x,
                             const float *restrict kernel_rows, const float *restrict bias, int H, int W,
                             int C) {  // out, x (H, W, C)
#if HAVE_X86_KERNELS
    if (run == multiply_add_run_avx512) {
        depthwise_taps_avx512(out, x, kernel_rows, bias, 1, H, W, C);
        return;
    }
#endif
    size_t row = (size_t)W * C;
    for (int y = 0; y < H; y++) {
        float *o = out + y * row;
        for (size_t e = 0; e < row; e++) o[e] = 0.0f;
        for (int i = 0; i < 3; i++) {
            int yy = y + i - 1;
            if (yy < 0 || yy >= H) continue;
            for (int j = 0; j < 3; j++) {
                int first, count;
                tap_columns(j - 1, W, &first, &count);
                if (count > 0)
                    run(o + (size_t)first * C, x + yy * row + (size_t)(first + j - 1) * C,
                        kernel_rows + (i * 3 + j) * row, (size_t)count * C);
            }
        }
        for (int p = 0; p < W; p++)
            for (int c = 0; c < C; c++) o[(size_t)p * C + c] += bias[c];
    }
}

/* One image's sums for the kernel's and the bias's gradients, `part`
   (10, C): taps 0..8, then the bias; each image's own, which the caller
   adds up over the images in order. */
void depthwise_kernel_sums(float *restrict part, const float *restrict dout, const float *restrict x, int H, int W,
                           int C) {  // dout, x (H, W, C)
    size_t row = (size_t)W * C;
    memset(part, 0, (size_t)10 * C * sizeof(float));
    for (int y = 0; y < H; y++) {
        const float *g = dout + y * row;
        for (int i = 0; i < 3; i++) {
            int yy = y + i - 1;
            if (yy < 0 || yy >= H) continue;
            for (int j = 0; j < 3; j++) {
                int first, count;
                tap_columns(j - 1, W, &first, &count);
                if (count > 0)
                    depthwise_row_products(part + (i * 3 + j) * C, g + (size_t)first * C,
                                           x + yy * row + (size_t)(first + j - 1) * C, count, C);
            }
        }
        for (int p = 0; p < W; p++)
            for (int c = 0; c < C; c++) part[9 * C + c] += g[(size_t)p * C + c];
    }
}

typedef void KernelSums(float *restrict part, const float *restrict dout, const float *restrict x, int H, int W, int C);

#if HAVE_X86_KERNELS
/* The same sums on AVX-512, sixteen channels at a time, the same bits.
   Above, one tap's sum along a row waits at every pixel for the addition
   before it. Here the ten sums sit in ten registers for the whole image,
   and each pixel adds into all of them: ten additions in flight instead of
   one. Every lane still adds its products in the naive order (row by row,
   pixel by pixel, the taps that fall outside the image left out). */
__attribute__((target("avx512f")))
void depthwise_kernel_sums_avx512(float *restrict part, const float *restrict dout, const float *restrict x, int H,
                                  int W, int C) {
    for (int c0 = 0; c0 < C; c0 += 16) {
        __mmask16 lanes = C - c0 >= 16 ? 0xffff : (__mmask16)((1u << (C - c0)) - 1);
        __m512 sum[10];
        for (int t = 0; t < 10; t++) sum[t] = _mm512_setzero_ps();
        for (int y = 0; y < H; y++)
            for (int p = 0; p < W; p++) {
                __m512 g = _mm512_maskz_loadu_ps(lanes, dout + ((size_t)y * W + p) * C + c0);
                for (int t = 0; t < 9; t++) {
                    int yy = y + t / 3 - 1, xx = p + t % 3 - 1;
                    if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                    __m512 product = _mm512_mul_ps(g, _mm512_maskz_loadu_ps(lanes, x + ((size_t)yy * W + xx) * C + c0));
                    sum[t] = _mm512_add_ps(sum[t], product);
                }
                sum[9] = _mm512_add_ps(sum[9], g);
            }
        for (int t = 0; t < 10; t++) _mm512_mask_storeu_ps(part + t * C + c0, lanes, sum[t]);
    }
}
#endif

// The sums that go with the loop --kernel chose: AVX-512 has its own.
KernelSums *depthwise_kernel_sums_for(MultiplyAddRun *run) {
#if HAVE_X86_KERNELS
    if (run == multiply_add_run_avx512) return depthwise_kernel_sums_avx512;
#endif
    (void)run;
    return depthwise_kernel_sums;
}

// One image's backward: its dx (when wanted), and its own sums for the
// kernel's and the bias's gradients, `part` (10, C); `sum` (W, C) is
// working memory.
void depthwise_backward_image(MultiplyAddRun *run, float *restrict dx, float *restrict part, float *restrict sum,
                              const float *restrict dout, const float *restrict x, const float *restrict kernel_rows,
                              int H, int W, int C) {
    size_t row = (size_t)W * C;
    depthwise_kernel_sums_for(run)(part, dout, x, H, W, C);
    if (!dx) return;
#if HAVE_X86_KERNELS
    if (run == multiply_add_run_avx512) {
        depthwise_taps_avx512(dx, dout, kernel_rows, NULL, -1, H, W, C);
        return;
    }
#endif
    for (int y = 0; y < H; y++) {  // each input position gathers the taps that read it
        for (size_t e = 0; e < row; e++) sum[e] = 0.0f;
        for (int i = 0; i < 3; i++) {
            int yy = y + 1 - i;
            if (yy < 0 || yy >= H) continue;
            for (int j = 0; j < 3; j++) {
                int first, count;
                tap_columns(1 - j, W, &first, &count);
                if (count > 0)
                    run(sum + (size_t)first * C, dout + yy * row + (size_t)(first + 1 - j) * C,
                        kernel_rows + (i * 3 + j) * row, (size_t)count * C);
            }
        }
        float *d = dx + y * row;
        for (size_t e = 0; e < row; e++) d[e] += sum[e];
    }
}

// depthwise_conv on the engine: the naive version for the references, the
// fast one, an image per task, on the blocked path.
typedef struct {
    Node *node;
    MultiplyAddRun *run;
    float *kernel_rows;  // (9, W, C): each tap's weights along a row
    float *parts;        // (B, 10 C + W C): each image's sums for the kernel and bias gradients, and a row
} DepthwiseJob;

// The op's working memory: the kernel rows, then (backward) the parts.
DepthwiseJob depthwise_job(Graph *g, Node *n, int backward) {
    const Node *x = n->inputs[0];
    int B = x->shape[0], W = x->shape[2], C = x->shape[3];
    size_t rows = (size_t)9 * W * C;
    float *scratch = graph_scratch(g, rows + (backward ? (size_t)B * (10 + W) * C : 0));
    depthwise_kernel_rows(scratch, n->inputs[1]->value, W, C);
    return (DepthwiseJob){n, multiply_add_run_for(g->gemm), scratch, scratch + rows};
}

void depthwise_forward_task(void *context, int i, int worker) {
    (void)worker;
    const DepthwiseJob *j = context;
    const Node *n = j->node, *x = n->inputs[0];
    depthwise_forward_image(j->run, n->value + i * n->item_size, x->value + i * x->item_size, j->kernel_rows,
                            n->inputs[2]->value, x->shape[1], x->shape[2], x->shape[3]);
}

void depthwise_backward_task(void *context, int i, int worker) {
    (void)worker;
    const DepthwiseJob *j = context;
    const Node *n = j->node, *x = n->inputs[0];
    int W = x->shape[2], C = x->shape[3];
    float *part = j->parts + (size_t)i * (10 + W) * C;
    depthwise_backward_image(j->run, x->grad ? x->grad + i * x->item_size : NULL, part, part + 10 * C,
                             n->grad + i * n->item_size, x->value + i * x->item_size, j->kernel_rows,
                             x->shape[1], W, C);
}

Workers *depthwise_workers(const Graph *g, const Node *n) {
    return n->size < ITEMS_PARALLEL_FROM ? NULL : graph_workers(g);
}

void depthwise_op_forward(Node *n, Graph *g) {
    const Node *x = n->inputs[0];
    if (g->kernel != KERNEL_BLOCKED) {
        depthwise_forward_naive(n->value, x->value, n->inputs[1]->value, n->inputs[2]->value, x->shape[0],
                                x->shape[1], x->shape[2], x->shape[3]);
        return;
    }
    DepthwiseJob job = depthwise_job(g, n, 0);
    parallel_for(depthwise_workers(g, n), x->shape[0], depthwise_forward_task, &job);
}

void depthwise_op_backward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *kernel = n->inputs[1], *bias = n->inputs[2];
    int B = x->shape[0], C = x->shape[3];
    if (g->kernel != KERNEL_BLOCKED) {
        depthwise_backward_naive(x->grad, kernel->grad, bias->grad, n->grad, x->value, kernel->value, B, x->shape[1],
                                 x->shape[2], C);
        return;
    }
    int W = x->shape[2];
    DepthwiseJob job = depthwise_job(g, n, 1);
    parallel_for(depthwise_workers(g, n), B, depthwise_backward_task, &job);
    for (int b = 0; b < B; b++) {  // the images' sums, in order: the same at any thread count
        const float *part = job.parts + (size_t)b * (10 + W) * C;
        for (int t = 0; t < 9 * C; t++) kernel->grad[t] += part[t];
        for (int c = 0; c < C; c++) bias->grad[c] += part[9 * C + c];
    }
}

double depthwise_multiply_adds(const Node *n) { return 9.0 * (double)n->item_size; }

/* ---- The pointwise (1x1) convolution ------------------------------------------ */

/* out (B*H*W, OC) = x (B*H*W, C) @ kernel (C, OC) + bias: a dense layer
   applied at every position. No patches: the map is the matrix. The
   blocked path is chapter 4's GEMM with the bias as the sums' start; the
   references are chapter 2's loops. */
void pointwise_op_forward(Node *n, Graph *g) {
    const Node *x = n->inputs[0], *kernel = n->inputs[1], *bias = n->inputs[2];
    int C = kernel->shape[2], OC = kernel->shape[3], rows = (int)(x->size / (size_t)C);
    if (g->kernel == KERNEL_BLOCKED) {
        gemm_with_bias(g->gemm, rows, OC, C, matrix_operand(x->value, C), matrix_operand(kernel->value, OC), n->value,
                       OC, bias->value);
        return;
    }
    matmul_forward(n->value, x->value, kernel->value, rows, C, OC);
    bias_forward(n->value, bias->value, rows, OC);
}

void pointwise_op_backward(Node *n, Graph *g) {
    Node *x = n->inputs[0], *kernel = n->inputs[1], *bias = n->inputs[2];
    int C = kernel->shape[2], OC = kernel->shape[3], rows = (int)(x->size / (size_t)C);
    if (g->kernel == KERNEL_BLOCKED)
        matmul_backward_blocked(g->gemm, x->grad, kernel->grad, n->grad, x->value, kernel->value, rows, C, OC);
    else
        matmul_backward(x->grad, kernel->grad, n->grad, x->value, kernel->value, rows, C, OC);
    if (bias->grad) bias_backward(bias->grad, n->grad, rows, OC);
}

double pointwise_multiply_adds(const Node *n) {
    const Node *kernel = n->inputs[1];
    return (double)(n->item_size / (size_t)kernel->shape[3]) * kernel->shape[2] * kernel->shape[3];
}

/* ---- The ops' constructors ------------------------------------------------------ */

const Op GLOBAL_AVG_POOL_OP = {.name = "global_avg_pool", .forward = global_avg_pool_op_forward,
                               .backward = global_avg_pool_op_backward};
const Op DEPTHWISE_OP = {.name = "depthwise_conv", .forward = depthwise_op_forward, .backward = depthwise_op_backward,
                         .multiply_adds = depthwise_multiply_adds};
const Op POINTWISE_OP = {.name = "pointwise_conv", .forward = pointwise_op_forward, .backward = pointwise_op_backward,
                         .multiply_adds = pointwise_multiply_adds};

Node *global_avg_pool(Graph *g, Node *x) {
    require(x->batched && x->rank == 4, "global_avg_pool needs x (B, H, W, C)");
    return graph_op(g, &GLOBAL_AVG_POOL_OP, (Node *[]){x}, 1, 1, &x->shape[3], 1);
}

Node *depthwise_conv(Graph *g, Node *x, Node *kernel, Node *bias) {
    require(x->batched && x->rank == 4 && !kernel->batched &&
            kernel->rank == 4 && kernel->shape[0] == 3 && kernel->shape[1] == 3 && kernel->shape[2] == x->shape[3] &&
            kernel->shape[3] == 1 && bias->rank == 1 && bias->shape[0] == x->shape[3],
            "depthwise_conv needs x (B, H, W, C), a kernel (3, 3, C, 1) and a bias (C)");
    return graph_op(g, &DEPTHWISE_OP, (Node *[]){x, kernel, bias}, 3, 1, x->shape + 1, 3);
}

Node *pointwise_conv(Graph *g, Node *x, Node *kernel, Node *bias) {
    require(x->batched && x->rank == 4 && !kernel->batched && kernel->rank == 4 && kernel->shape[0] == 1 &&
            kernel->shape[1] == 1 && kernel->shape[2] == x->shape[3] && bias->rank == 1 &&
            bias->shape[0] == kernel->shape[3], "pointwise_conv needs x (B, H, W, C), a kernel (1, 1, C, OC) and a bias (OC)");
    return graph_op(g, &POINTWISE_OP, (Node *[]){x, kernel, bias}, 3, 1,
                    (int[]){x->shape[1], x->shape[2], kernel->shape[3]}, 3);
}

/* ---- Layers and blocks ------------------------------------------------------------ */

// Batch norm with its four tensors named NAME.gamma, NAME.beta, NAME.mean, NAME.variance.
Node *batch_norm_named(Graph *g, Node *x, const char *name) {
    const char *labels[4] = {graph_label(g, "%s.gamma", name), graph_label(g, "%s.beta", name),
                             graph_label(g, "%s.mean", name), graph_label(g, "%s.variance", name)};
    return batch_norm(g, x, labels);
}

// 3x3 "same" convolution then batch norm: NAME.kernel, NAME.bias, then the batch norm's.
Node *conv3x3_bn(Graph *g, Node *x, int out_channels, const char *name) {
    Node *y = conv_layer(g, x, out_channels, 1, graph_label(g, "%s.kernel", name), graph_label(g, "%s.bias", name));
    return batch_norm_named(g, y, name);
}

Node *pointwise_bn(Graph *g, Node *x, int out_channels, const char *name) {
    Node *kernel = graph_parameter(g, graph_label(g, "%s.kernel", name), (int[]){1, 1, x->shape[3], out_channels}, 4,
                                   INIT_GLOROT);
    Node *bias = graph_parameter(g, graph_label(g, "%s.bias", name), (int[]){out_channels}, 1, INIT_ZEROS);
    return batch_norm_named(g, pointwise_conv(g, x, kernel, bias), name);
}

Node *depthwise_bn(Graph *g, Node *x, const char *name) {
    Node *kernel = graph_parameter(g, graph_label(g, "%s.kernel", name), (int[]){3, 3, x->shape[3], 1}, 4, INIT_GLOROT);
    Node *bias = graph_parameter(g, graph_label(g, "%s.bias", name), (int[]){x->shape[3]}, 1, INIT_ZEROS);
    return batch_norm_named(g, depthwise_conv(g, x, kernel, bias), name);
}

/* The residual block (He et al., 2015): conv, BN, ReLU, conv, BN, plus the
   block's input, then ReLU. Where the block changes the channel count the
   input cannot be added as it is; a 1x1 convolution and batch norm, the
   "projection", make it the right shape. Without skips (`plain`) the
   block is the two convolutions alone, and has no projection. */
Node *residual_block(Graph *g, Node *x, int out_channels, int skips, const char *name) {
    char part[LABEL_SIZE];
    snprintf(part, sizeof part, "%s.c1", name);
    Node *y = relu(g, conv3x3_bn(g, x, out_channels, part));
    snprintf(part, sizeof part, "%s.c2", name);
    y = conv3x3_bn(g, y, out_channels, part);
    if (!skips) return relu(g, y);
    Node *shortcut = x;
    if (x->shape[3] != out_channels) {
        snprintf(part, sizeof part, "%s.proj", name);
        shortcut = pointwise_bn(g, x, out_channels, part);
    }
    return relu(g, add(g, y, shortcut));
}

// The head every chapter 8 network ends with: the mean of each channel,
// then one dense layer to the ten classes.
GraphClassifier finish_classifier(Graph *g, Node *images, Node *targets, Node *x, uint64_t seed) {
    x = dense_layer(g, global_avg_pool(g, x), NUM_CLASSES, "dense.weight", "dense.bias");
    Node *loss = softmax_cross_entropy(g, x, targets);
    graph_compile(g, loss);
    graph_initialize(g, seed);
    return (GraphClassifier){.graph = g, .images = images, .targets = targets, .loss = loss};
}

/* resnet and plain: a 3x3 stem convolution, three stages of `blocks`
   blocks at 28x28, 14x14 and 7x7 (a max pool between stages), with the
   widths doubling as the maps shrink, so that every stage costs the same
   arithmetic; then global average pooling and a dense layer.
   28x28x1 -> 28x28x12 -> 14x14x24 -> 7x7x48 -> 48 -> 10.
   Convolution layers: 1 + 6 blocks + 1 dense: 20 for 3 blocks, 8 for 1.
   At 3 blocks the forward pass costs 34.94 MFLOP per image, under the
   deeper CNN's 38.19 (book.md 8.3 derives it). */
static const int RESNET_WIDTHS[3] = {12, 24, 48};

GraphClassifier residual_graph(int max_batch, uint64_t seed, int blocks, int skips) {
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = reshape(g, images, (int[]){IMAGE_ROWS, IMAGE_COLS, 1}, 3);
    x = relu(g, conv3x3_bn(g, x, RESNET_WIDTHS[0], "stem"));
    for (int stage = 0; stage < 3; stage++) {
        if (stage) x = max_pool(g, x);
        for (int b = 0; b < blocks; b++) {
            char name[16];  // short, so that NAME.c1.variance fits a label
            snprintf(name, sizeof name, "s%db%d", stage % 10 + 1, b % 100 + 1);
            x = residual_block(g, x, RESNET_WIDTHS[stage], skips, name);
        }
    }
    return finish_classifier(g, images, targets, x, seed);
}

/* separable: MobileNet's pattern (Howard et al., 2017). A 3x3 stem
   convolution, then blocks of depthwise 3x3, BN, ReLU, pointwise 1x1, BN,
   ReLU, with a max pool before the blocks marked so; then global average
   pooling and a dense layer.
   28x28x1 -> 28x28x24 -> 28x28x48 -> 14x14x64 -> 14x14x64 -> 7x7x128 -> 7x7x128 -> 128 -> 10.
   8.27 MFLOP per image, under a quarter of the deeper CNN's 38.19. */
static const struct {
    int channels, pool_before;
} SEPARABLE_BLOCKS[] = {{48, 0}, {64, 1}, {64, 0}, {128, 1}, {128, 0}};
enum { SEPARABLE_STEM = 24, SEPARABLE_BLOCK_COUNT = sizeof SEPARABLE_BLOCKS / sizeof SEPARABLE_BLOCKS[0] };

Node *separable_block(Graph *g, Node *x, int out_channels, const char *name) {
    char part[LABEL_SIZE];
    snprintf(part, sizeof part, "%s.dw", name);
    x = relu(g, depthwise_bn(g, x, part));
    snprintf(part, sizeof part, "%s.pw", name);
    return relu(g, pointwise_bn(g, x, out_channels, part));
}

GraphClassifier separable_graph(int max_batch, uint64_t seed) {
    Graph *g = graph_new(max_batch);
    Node *images = graph_input(g, "images", (int[]){IMAGE_SIZE}, 1);
    Node *targets = graph_input(g, "targets", (int[]){NUM_CLASSES}, 1);
    Node *x = reshape(g, images, (int[]){IMAGE_ROWS, IMAGE_COLS, 1}, 3);
    x = relu(g, conv3x3_bn(g, x, SEPARABLE_STEM, "stem"));
    for (int b = 0; b < SEPARABLE_BLOCK_COUNT; b++) {
        if (SEPARABLE_BLOCKS[b].pool_before) x = max_pool(g, x);
        char name[16];
        snprintf(name, sizeof name, "sep%d", b % 100 + 1);
        x = separable_block(g, x, SEPARABLE_BLOCKS[b].channels, name);
    }
    return finish_classifier(g, images, targets, x, seed);
}

/* ---- Two more blocks (book.md, chapter 8's exercises); the models do not use them ---- */

/* The bottleneck block (He et al., 2016), which ResNet-50 and deeper use:
   a 1x1 convolution down to `mid` channels (NAME.a), a 3x3 convolution at
   `mid` (NAME.b), a 1x1 convolution up to `out_channels` (NAME.c), each
   with batch norm and the first two with ReLU; then the skip, as in
   residual_block (a projection NAME.proj where the channels change), the
   add and a ReLU. The parameters are made in that order: a, b, c, proj. */
Node *bottleneck_block(Graph *g, Node *x, int mid, int out_channels, const char *name) {
    char part[LABEL_SIZE];
    snprintf(part, sizeof part, "%s.a", name);
    Node *y = relu(g, pointwise_bn(g, x, mid, part));
    snprintf(part, sizeof part, "%s.b", name);
    y = relu(g, conv3x3_bn(g, y, mid, part));
    snprintf(part, sizeof part, "%s.c", name);
    y = pointwise_bn(g, y, out_channels, part);
    snprintf(part, sizeof part, "%s.proj", name);
    Node *skip = x->shape[3] == out_channels ? x : pointwise_bn(g, x, out_channels, part);
    return relu(g, add(g, y, skip));
}

/* Squeeze-and-excitation (Hu, Shen and Sun, 2018), one image, forward:
   each channel's mean over the image (the squeeze, s, C values), a small
   network from those means to one gate per channel (the excitation:
   z = relu(s @ w1 + b1), R values; gate = sigmoid(z @ w2 + b2), C values),
   and every value of x scaled by its channel's gate. The network can so
   turn channels up or down for each image. R is at most SE_MAX_REDUCED. */
enum { SE_MAX_REDUCED = 256 };

void squeeze_excite_forward(float *out,         // (HW, C)
                            float *gate,        // (C): the gates, kept for a backward pass
                            const float *x,     // (HW, C)
                            const float *w1,    // (C, R)
                            const float *b1,    // (R)
                            const float *w2,    // (R, C)
                            const float *b2,    // (C)
                            int HW, int C, int R) {
    require(R >= 1 && R <= SE_MAX_REDUCED, "squeeze_excite_forward: R = %d outside 1..%d", R, SE_MAX_REDUCED);
    global_avg_pool_forward(gate, x, HW, C);  // the squeeze, for now in `gate`
    float z[SE_MAX_REDUCED];
    for (int r = 0; r < R; r++) {
        float sum = b1[r];
        for (int c = 0; c < C; c++) sum += gate[c] * w1[(size_t)c * R + r];
        z[r] = sum > 0.0f ? sum : 0.0f;
    }
    for (int c = 0; c < C; c++) {
        float sum = b2[c];
        for (int r = 0; r < R; r++) sum += z[r] * w2[(size_t)r * C + c];
        gate[c] = 1.0f / (1.0f + expf(-sum));
    }
    for (int p = 0; p < HW; p++)
        for (int c = 0; c < C; c++) out[(size_t)p * C + c] = x[(size_t)p * C + c] * gate[c];
}

// The models this file adds, by their --models names.
static const char CHAPTER8_MODELS[] = "resnet|plain|resnet8|plain8|separable";

int is_chapter8_model(const char *name) { return is_choice(name, CHAPTER8_MODELS); }

GraphClassifier chapter8_graph(const char *name, int max_batch, uint64_t seed) {
    if (strcmp(name, "separable") == 0) return separable_graph(max_batch, seed);
    int blocks = strcmp(name, "resnet8") == 0 || strcmp(name, "plain8") == 0 ? 1 : 3;
    return residual_graph(max_batch, seed, blocks, strncmp(name, "resnet", 6) == 0);
}
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
           and, in chapter 7's files, --augment (u32: 0 or 1)
           and, in chapter 8's, --precision (u32: 0 fp32, 1 bf16; files
           chapter 8 wrote before it had bf16 lack it, and were fp32)
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
// Chapter 8 writes chapter 7's format and reads chapter 6's and 7's files:
// their runs are the same runs. Its own files say 8, so chapter 7, which
// cannot build a resnet, refuses them before it reads a tensor.
enum { CHECKPOINT_CHAPTER = 8 };
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
    crc = ~crc;
    for (size_t i = 0; i < size; i++) {
        crc ^= bytes[i];
        for (int bit = 0; bit < 8; bit++) crc = crc >> 1 ^ (0xEDB88320u & (0u - (crc & 1)));
    }
    return ~crc;
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
    uint32_t augment;  // 1: --augment (chapter 6's runs have 0)
    uint32_t precision;  // 1: --precision bf16 (chapter 6's and 7's runs have 0: fp32)
    DataKey data;
} RunKey;

RunKey run_key(const Options *o, DataKey data) {
    RunKey k = {.data = data, .seed = (uint32_t)o->seed, .batch = (uint32_t)o->batch, .limit = (uint32_t)o->limit,
                .epochs = (uint32_t)o->epochs, .patience = (uint32_t)o->patience, .learning_rate = o->learning_rate};
    k.augment = (uint32_t)o->augment;
    k.precision = strcmp(o->precision, "bf16") == 0;
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
        put_uint(p, s->key.augment, 4);
        put_uint(p, s->key.precision, 4);
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

// Chapter 7 finds its checkpoints by their names: the fix is to move one.
static const char CHECKPOINT_FIX[] = "Move the file away (that run is then trained afresh), or give the "
                                     "comparison another --checkpoints DIR.";

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
    if (chapter == 6 || chapter == 7) return sections == CHECKPOINT_SECTIONS ? 0 : damaged_header(f, sections, err);
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
    k->augment = f->bytes[8] >= 7 ? (uint32_t)take_uint(&r, 4) : 0;  // byte 8: the chapter, 6 or 7 (checked)
    if (k->augment > 1) return damaged(f, "the RUN section holds an option out of its range", err);
    // The data key's 12 bytes end the section; 4 more before them are the
    // precision, which chapter 8's files have had since it learned bf16.
    k->precision = f->bytes[8] >= 8 && r.size - r.at == 16 ? (uint32_t)take_uint(&r, 4) : 0;
    if (k->precision > 1) return damaged(f, "the RUN section holds an option out of its range", err);
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
    // --quick's runs are runs of their own (fewer images): a name of their own too.
    snprintf(path, size, "%s/%s%s%s-seed%d%s", o->checkpoints, o->model, o->augment ? "-augment" : "",
             o->quick ? "-quick" : "", o->seed, ending);
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
    (void)path;
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
    t.augment = o->augment;
    int batches = (train_set->count + o->batch - 1) / o->batch, status = 0;
    int last_epoch = (int)r->key.epochs;
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

static const char RESUME_ADVICE[] = " For a comparison with other options, give it another --checkpoints DIR.";

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
    if (!differs && k->augment != want.augment) differs = "--augment";
    static const char *const PRECISIONS[2] = {"fp32", "bf16"};
    if (!differs && k->precision != want.precision)
        return fail(err, EXIT_CHECKPOINT_PRECISION, "%s: a checkpoint of a run in %s, but this run multiplies in %s "
                    "(--precision %s). A run resumed in another precision would not be the same run: its numbers "
                    "would differ from the first step on. Add --precision %s to resume it, or give this run another "
                    "--checkpoints DIR.", f->path, PRECISIONS[k->precision], PRECISIONS[want.precision],
                    PRECISIONS[want.precision], PRECISIONS[k->precision]);
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
/* ----------------------------------------------------------------------------
   PNG without zlib (book.md 7.9).

   What this is: the smallest honest PNG writer, so that a browser, a
   Markdown viewer and book.md can show the PPM pictures chapter 7 draws.
   What it is not: a compressor. The pixels are stored as they are, in
   deflate's "stored" blocks, so a PNG is a few hundred bytes larger than
   its PPM; the format allows it, and every decoder reads it.

   A PNG is an 8-byte signature and then chunks. Each chunk is

     length u32 (big-endian, of the data only)   type, four letters
     data                                        CRC-32 of type and data

   IHDR says width, height, 8 bits per sample, colour type 0 (grey) or 2
   (RGB); IDAT holds the pixels; IEND ends the file. The pixels, row by
   row, each row led by a filter byte (0: none), form a zlib stream:

     0x78 0x01 (deflate, 32K window, no preset dictionary; 0x7801 is a
     multiple of 31, the header's own check), then deflate blocks, then
     Adler-32 of the uncompressed bytes (big-endian).

   A stored deflate block is one byte (1 for the last block, 0 before),
   LEN and NLEN = ~LEN (16 bits each, little-endian: deflate's order, not
   PNG's), then LEN bytes as they are, at most 65,535. */

enum { STORED_BLOCK_MAX = 65535 };

// Adler-32 (zlib's check): two sums modulo 65,521, the largest prime
// below 2^16; b, the sum of the running sums, depends on the bytes' order.
uint32_t adler32_update(uint32_t adler, const unsigned char *bytes, size_t size) {
    uint32_t a = adler & 0xFFFF, b = adler >> 16;
    for (size_t i = 0; i < size; i++) {
        a = (a + bytes[i]) % 65521;
        b = (b + a) % 65521;
    }
    return b << 16 | a;
}

void put_u32_big_endian(ByteBuffer *b, uint32_t value) {
    unsigned char bytes[4] = {(unsigned char)(value >> 24), (unsigned char)(value >> 16),
                              (unsigned char)(value >> 8), (unsigned char)value};
    put_bytes(b, bytes, 4);
}

void put_png_chunk(ByteBuffer *file, const char type[4], const unsigned char *data, size_t size) {
    put_u32_big_endian(file, (uint32_t)size);
    size_t start = file->used;
    put_bytes(file, type, 4);
    if (size) put_bytes(file, data, size);
    put_u32_big_endian(file, crc32_update(0, file->bytes + start, 4 + size));
}

// The zlib stream of the picture's rows, each led by filter byte 0.
ByteBuffer png_pixel_stream(const Picture *p) {
    size_t row_bytes = (size_t)p->width * p->channels, raw_size = (row_bytes + 1) * p->height;
    unsigned char *raw = xmalloc(raw_size);  // (height, 1 + width * channels)
    for (int y = 0; y < p->height; y++) {
        raw[y * (row_bytes + 1)] = 0;
        memcpy(raw + y * (row_bytes + 1) + 1, p->pixels + y * row_bytes, row_bytes);
    }
    ByteBuffer z = {0};
    put_bytes(&z, "\x78\x01", 2);
    size_t at = 0;
    do {
        size_t length = raw_size - at < STORED_BLOCK_MAX ? raw_size - at : STORED_BLOCK_MAX;
        unsigned char header[5] = {at + length == raw_size, (unsigned char)length, (unsigned char)(length >> 8),
                                   (unsigned char)~length, (unsigned char)(~length >> 8)};
        put_bytes(&z, header, 5);
        put_bytes(&z, raw + at, length);
        at += length;
    } while (at < raw_size);
    put_u32_big_endian(&z, adler32_update(1, raw, raw_size));
    free(raw);
    return z;
}

ByteBuffer png_bytes(const Picture *p) {
    require(p->channels == 1 || p->channels == 3, "a PNG of %d channels", p->channels);
    ByteBuffer file = {0}, header = {0};
    put_bytes(&file, "\x89PNG\r\n\x1a\n", 8);
    put_u32_big_endian(&header, (uint32_t)p->width);
    put_u32_big_endian(&header, (uint32_t)p->height);
    unsigned char depth_and_kind[5] = {8, p->channels == 1 ? 0 : 2, 0, 0, 0};  // bits, colour type, deflate, filters, no interlace
    put_bytes(&header, depth_and_kind, 5);
    put_png_chunk(&file, "IHDR", header.bytes, header.used);
    ByteBuffer pixels = png_pixel_stream(p);
    put_png_chunk(&file, "IDAT", pixels.bytes, pixels.used);
    put_png_chunk(&file, "IEND", NULL, 0);
    free(header.bytes);
    free(pixels.bytes);
    return file;
}
/* ----------------------------------------------------------------------------
   The comparison (book.md 7.1-7.8).

   What this is: chapter 6's protocol run for every model and seed asked
   for, one after another, each continued from its checkpoint when it has
   one (so running the same command again after a stop goes on where it
   stopped, and a finished run is only tested again); the test of each
   run's best weights kept image by image, so that two models can be
   compared on the same images (McNemar's test); then the table, the plot
   data with gnuplot scripts, and the pictures.
   What it is not: a hyper-parameter search. Every model trains with the
   protocol's settings; only --augment changes what it sees. */

/* ---- Text files and the list of files written ------------------------------ */

enum { MAX_FILES = 128 };
typedef struct {
    char paths[MAX_FILES][1100];
    int count;
} FileList;

// Appends printf-style text to a buffer, for the text files written below.
void put_text(ByteBuffer *b, const char *format, ...) {
    char line[2048];
    va_list args;
    va_start(args, format);
    int length = vsnprintf(line, sizeof line, format, args);
    va_end(args);
    require(length >= 0 && length < (int)sizeof line, "a line of %d characters in a text file", length);
    put_bytes(b, line, (size_t)length);
}

// The next path of the list: dir/name (--plots is at most 1023 bytes).
char *next_path(FileList *files, const char *dir, const char *name) {
    require(files->count < MAX_FILES, "more than %d files", MAX_FILES);
    char *path = files->paths[files->count];
    snprintf(path, sizeof files->paths[0], "%s/%s", dir, name);
    return path;
}

// Lists the path next_path gave, once: a file written again (a search's
// table, which a second row that reads the search back writes again)
// stays one line of the list.
void list_path(FileList *files) {
    for (int i = 0; i < files->count; i++)
        if (strcmp(files->paths[i], files->paths[files->count]) == 0) return;
    files->count++;
}

// Writes dir/name (atomically) and adds it to the list; frees the buffer.
int write_listed(const char *dir, const char *name, ByteBuffer *b, FileList *files, Error *err) {
    int status = write_file_atomically(next_path(files, dir, name), b->bytes, b->used, err);
    free(b->bytes);
    *b = (ByteBuffer){0};
    if (!status) list_path(files);
    return status;
}

// A picture as dir/name.ppm (chapter 1's writer), and the same as
// dir/name.png, for browsers.
int save_picture(const Picture *p, const char *dir, const char *name, FileList *files, Error *err) {
    char file[256];
    snprintf(file, sizeof file, "%s.ppm", name);
    if (picture_write(p, next_path(files, dir, file), err)) return err->code;
    list_path(files);
    snprintf(file, sizeof file, "%s.png", name);
    ByteBuffer b = png_bytes(p);
    return write_listed(dir, file, &b, files, err);
}

/* ---- McNemar's exact test -------------------------------------------------- */

/* Two models tested on the same images. Where both are right or both wrong
   the images say nothing about which is better; what counts is `b`, the
   images only the first gets right, and `c`, those only the second does.
   If the models were equally good, each of these n = b + c images would be
   the first's with probability 1/2: b ~ Binomial(n, 1/2). The two-sided
   p-value is the probability of a split at least as uneven as the one
   seen: 2 P(X <= min(b, c)), at most 1. The binomial coefficients are
   summed as logarithms (lgamma), since 2^-n underflows for n > 1074. */
double mcnemar_exact_p(long b, long c) {
    long n = b + c, low = b < c ? b : c;
    if (n == 0) return 1;
    double sum = 0;
    for (long i = 0; i <= low; i++)
        sum += exp(lgamma(n + 1.0) - lgamma(i + 1.0) - lgamma(n - i + 1.0) - n * log(2.0));
    return fmin(1.0, 2 * sum);
}

/* The mid-p variant (Lancaster; Fagerland, Lydersen and Laake, 2013): the
   exact test counts the split seen as a whole "at least as uneven", which
   makes it conservative; mid-p counts it by half. Two-sided, that is
   2 (P(X < k) + P(X = k) / 2) with k = min(b, c), which is 1 at an even
   split, and below mcnemar_exact_p otherwise. Not in the tables; for
   chapter 7's exercises. */
double mcnemar_mid_p(long b, long c) {
    if (b == c) return 1;
    long n = b + c, k = b > c ? c : b;
    double log_terms = lgamma(n + 1.0) - lgamma(k + 1.0) - lgamma(n - k + 1.0) - n * log(2.0);
    return fmin(1.0, mcnemar_exact_p(b, c) - exp(log_terms));
}

/* Wilson's score interval for an accuracy of `right` out of `n`: every
   proportion p0 for which the accuracy seen, p = right / n, lies within z
   standard errors, z sqrt(p0 (1 - p0) / n), of p0. Its two ends are the
   roots of a quadratic in p0. Unlike p +- z sqrt(p (1 - p) / n) it stays
   inside [0, 1] and is not of width 0 at 0% or 100%. n = 0 gives [0, 1].
   Not in the tables; for chapter 7's exercises. */
void wilson_interval(long right, long n, double z, double *low, double *high) {
    if (n <= 0) {
        *low = 0, *high = 1;
        return;
    }
    double p = (double)right / (double)n, zz = z * z / (double)n;
    double middle = (p + zz / 2) / (1 + zz);
    double spread = sqrt(p * (1 - p) * zz + zz * zz / 4) / (1 + zz);
    *low = fmax(0.0, middle - spread);
    *high = fmin(1.0, middle + spread);
}

/* ---- One run: a model and a seed, trained (or resumed) and tested ---------- */

// A run of the comparison, tested image by image.
typedef struct {
    const char *model;
    int seed;
    Result result;
    History *history;
    Evaluation test;
    ClassFigures classes;
    unsigned char *guesses;  // (test count) the class each test image was given
    float *confidence;       // (test count) the probability of that class
    size_t parameters;       // learned, and kept (batch norm's running statistics), as Keras counts
    double multiply_adds;    // per image, forward
    double training_images;  // over all its epochs
} RunReport;

void run_report_free(RunReport *r) {
    history_free(r->history);
    free(r->guesses);
    free(r->confidence);
}

double model_multiply_adds(const Graph *g) {  // per image, forward
    double total = 0;
    for (int i = 0; i < g->order_count; i++) total += multiply_adds_per_image(g->order[i]);
    return total;
}

// Does a file of that name exist? (Without opening it: a FIFO would block;
// without following it: a link, even a dangling one, is a name taken.)
int file_exists(const char *path) {
#if HAVE_POSIX
    struct stat info;
    return lstat(path, &info) == 0;
#else
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
#endif
}

int draw_network(GraphClassifier *net, const Dataset *test, const char *name, const Options *o,
                 FileList *files, Error *err);

/* Trains (or resumes, or only re-tests) one model with one seed. A run
   whose last checkpoint exists goes on from it: chapter 6's --resume,
   which also refuses a checkpoint of other options. */
int run_one(const Options *base, const char *model, int seed, KernelKind kernel, GemmContext *gemm,
            const FashionMnist *data, RunReport *report, FileList *files, Error *err) {
    Options o = *base;
    o.model = model, o.seed = seed;
    char last[1100];
    checkpoint_path(&o, "-last.ckpt", last, sizeof last);
    if (file_exists(last)) o.resume = last;
    GraphClassifier net = build_model(model, o.batch, (uint64_t)seed, kernel, gemm);
    if (seed == base->seed) print_model_summary(&net, model);
    Model m = graph_model(&net, model);
    *report = (RunReport){.model = model, .seed = seed, .parameters = m.count + m.state_count,
                          .multiply_adds = model_multiply_adds(net.graph)};
    int status = fit_and_test(&m, data, &o, &report->history, &report->result, err);
    if (!status) {
        const Dataset *test = &data->test;
        report->guesses = xmalloc((size_t)test->count);
        report->confidence = xmalloc((size_t)test->count * sizeof(float));
        report->test = evaluate_each(&m, test, report->guesses, report->confidence);
        report->classes = class_figures(&report->test);
        report->training_images = (double)training_set(data, &o).count * report->result.epochs;
        print_result(&report->result);
        if (seed == base->seed && strcmp(model, "ann") != 0) status = draw_network(&net, test, model, base, files, err);
    }
    net.graph->gemm = NULL;  // the threads and buffers stay for the next run
    graph_free(net.graph);
    return status;
}

/* ---- Every run ------------------------------------------------------------- */

typedef struct {
    char names[MAX_MODELS][MODEL_NAME_SIZE];
    int model_count, seed_count;
    RunReport *runs;  // (model_count, seed_count)
    int done;         // runs finished, in order
} Comparison;

// The run of model number `model` with its seed number `seed_index` (0 for --seed).
RunReport *comparison_run(const Comparison *c, int model, int seed_index) { return &c->runs[model * c->seed_count + seed_index]; }

// The epochs a model's next run should take: the mean of its runs done so
// far, or before it has any, of all the runs done, or else --epochs.
double expected_epochs(const Comparison *c, int model, int epochs_option) {
    double model_epochs = 0, model_runs = 0, all_epochs = 0;
    for (int r = 0; r < c->done; r++) {
        all_epochs += c->runs[r].result.epochs;
        if (r / c->seed_count == model) model_epochs += c->runs[r].result.epochs, model_runs++;
    }
    return model_runs ? model_epochs / model_runs : c->done ? all_epochs / c->done : epochs_option;
}

// The time the rest of the comparison should take, from the runs trained
// in this session: their seconds per (multiply-add x image), times the
// work left. A rough guide: layers differ in how fast they run.
void print_comparison_eta(const Comparison *c, const Options *o, double seconds, double work_done, long train_count) {
    if (work_done <= 0) return;
    double work_left = 0;
    for (int r = c->done; r < c->model_count * c->seed_count; r++) {
        int model = r / c->seed_count;
        work_left += expected_epochs(c, model, o->epochs) * train_count * c->runs[r].multiply_adds;
    }
    printf("comparison: %d of %d runs done; about ", c->done, c->model_count * c->seed_count);
    print_duration(work_left * seconds / work_done);
    printf(" left (a guess from the runs so far)\n\n");
}

/* Before any run: each model's cost, which the time estimate needs for
   all of them; and the mistakes that would otherwise show hours into the
   comparison: a batch of one image for a model with batch norm, and a
   checkpoint in the way that belongs to a run with other options (or is
   damaged). */
int size_and_check_runs(Comparison *c, const Options *o, const FashionMnist *data, Error *err) {
    Dataset train_set = training_set(data, o);
    DataKey here = data_key(&train_set, &data->validation);
    for (int i = 0; i < c->model_count; i++) {
        GraphClassifier sizing = build_model(c->names[i], 1, 1, KERNEL_NAIVE, NULL);
        size_t state_count = sizing.graph->state_count;
        for (int s = 0; s < c->seed_count; s++) comparison_run(c, i, s)->multiply_adds = model_multiply_adds(sizing.graph);
        graph_free(sizing.graph);
        if (check_batch_norm_batches(state_count, o, training_set(data, o).count, err)) return err->code;
        for (int s = 0; s < c->seed_count; s++) {
            Options run = *o;
            run.model = c->names[i], run.seed = o->seed + s;
            char last[1100];
            checkpoint_path(&run, "-last.ckpt", last, sizeof last);
            if (!file_exists(last)) continue;
            CheckpointFile f;
            if (refuse_link(last, err) || open_checkpoint(last, &f, err)) return err->code;
            int status = check_resume_key(&f, &run, &here, err);
            checkpoint_file_free(&f);
            if (status) return status;
        }
    }
    return 0;
}

int run_comparison(const Options *o, const FashionMnist *data, KernelKind kernel, GemmContext *gemm,
                   Comparison *c, FileList *files, Error *err) {
    c->model_count = split_model_list(o->models, c->names, err);
    if (c->model_count < 0) return err->code;
    c->seed_count = o->seeds;
    c->runs = xmalloc((size_t)c->model_count * c->seed_count * sizeof(RunReport));
    memset(c->runs, 0, (size_t)c->model_count * c->seed_count * sizeof(RunReport));
    int status = size_and_check_runs(c, o, data, err);
    double trained_seconds = 0, trained_work = 0;
    long train_count = training_set(data, o).count;
    for (int i = 0; i < c->model_count && !status; i++)
        for (int s = 0; s < c->seed_count && !status; s++) {
            RunReport *r = comparison_run(c, i, s);
            printf("==== run %d of %d: %s%s, seed %d ====\n", c->done + 1, c->model_count * c->seed_count, c->names[i],
                   o->augment ? " (augmented)" : "", o->seed + s);
            double start = now_seconds();
            status = run_one(o, c->names[i], o->seed + s, kernel, gemm, data, r, files, err);
            if (status) break;
            c->done++;
            // Only runs that trained here tell how fast this machine is now.
            double seconds = now_seconds() - start;
            if (seconds > 0.5 * r->result.seconds && r->result.seconds > 0)
                trained_seconds += r->result.seconds, trained_work += r->training_images * r->multiply_adds;
            print_comparison_eta(c, o, trained_seconds, trained_work, train_count);
        }
    return status;
}

void comparison_free(Comparison *c) {
    for (int r = 0; r < c->model_count * c->seed_count; r++) run_report_free(&c->runs[r]);
    free(c->runs);
}

/* ---- The table -------------------------------------------------------------- */

// Mean and (sample) standard deviation: of n values, and of one figure over a model's seeds.
typedef struct {
    double mean, sd;
} Spread;

Spread spread_of(const double *x, int n) {
    double sum = 0, squares = 0;
    for (int i = 0; i < n; i++) sum += x[i];
    Spread out = {.mean = sum / n};
    for (int i = 0; i < n; i++) squares += (x[i] - out.mean) * (x[i] - out.mean);
    out.sd = n > 1 ? sqrt(squares / (n - 1)) : 0;
    return out;
}

Spread spread(const Comparison *c, int model, double (*figure)(const RunReport *)) {
    double x[100];  // --seeds is at most 100
    for (int s = 0; s < c->seed_count; s++) x[s] = figure(comparison_run(c, model, s));
    return spread_of(x, c->seed_count);
}

double figure_accuracy(const RunReport *r) { return 100.0 * r->test.accuracy; }
double figure_macro_f1(const RunReport *r) { return r->classes.macro_f1; }
double figure_loss(const RunReport *r) { return r->test.loss; }
double figure_epochs(const RunReport *r) { return r->result.epochs; }
double figure_best_epoch(const RunReport *r) { return r->result.best_epoch; }
double figure_epoch_seconds(const RunReport *r) { return r->result.seconds / fmax(r->result.epochs, 1); }
double figure_images_per_second(const RunReport *r) { return r->training_images / fmax(r->result.seconds, 1e-9); }

// "93.12 ± 0.20" with one seed's figure alone when there is one seed.
void put_spread(ByteBuffer *b, Spread s, int decimals, int seeds) {
    if (seeds > 1) put_text(b, "%.*f ± %.*f", decimals, s.mean, decimals, s.sd);
    else put_text(b, "%.*f", decimals, s.mean);
}

// The comparison table, in Markdown (printed and written to results.md).
void put_results_table(ByteBuffer *b, const Comparison *c) {
    put_text(b, "| model | parameters | MFLOP/image | epochs | best epoch | s/epoch | images/s | test loss "
                "| test accuracy %% | macro-F1 |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for (int i = 0; i < c->model_count; i++) {
        const RunReport *first = comparison_run(c, i, 0);
        put_text(b, "| %s | %zu | %.2f | ", c->names[i], first->parameters, 2 * first->multiply_adds / 1e6);
        put_spread(b, spread(c, i, figure_epochs), 1, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_best_epoch), 1, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_epoch_seconds), 1, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_images_per_second), 0, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_loss), 4, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_accuracy), 2, c->seed_count), put_text(b, " | ");
        put_spread(b, spread(c, i, figure_macro_f1), 4, c->seed_count), put_text(b, " |\n");
    }
}

// The test images only x got right, and only y.
void disagreements(const RunReport *x, const RunReport *y, const Dataset *test, long *only_x, long *only_y) {
    *only_x = *only_y = 0;
    for (int k = 0; k < test->count; k++) {
        int x_right = x->guesses[k] == test->labels[k], y_right = y->guesses[k] == test->labels[k];
        *only_x += x_right && !y_right, *only_y += y_right && !x_right;
    }
}

void format_p(char *text, size_t size, double p) {
    snprintf(text, size, p > 0 ? "%.2g" : "< 1e-300", p);  // 0: below what double holds
}

// Every pair of models, seed by seed, on the same test images.
void put_mcnemar_table(ByteBuffer *b, const Comparison *c, const Dataset *test) {
    put_text(b, "\n| first | second | seed | only the first right | only the second right | "
                "accuracy, second minus first (points) | McNemar p |\n|---|---|--:|--:|--:|--:|--:|\n");
    for (int i = 0; i < c->model_count; i++)
        for (int j = i + 1; j < c->model_count; j++)
            for (int s = 0; s < c->seed_count; s++) {
                const RunReport *x = comparison_run(c, i, s), *y = comparison_run(c, j, s);
                long only_x, only_y;
                disagreements(x, y, test, &only_x, &only_y);
                char p_text[32];
                format_p(p_text, sizeof p_text, mcnemar_exact_p(only_x, only_y));
                put_text(b, "| %s | %s | %d | %ld | %ld | %+.2f | %s |\n", c->names[i], c->names[j], x->seed, only_x,
                         only_y, 100.0 * (y->test.accuracy - x->test.accuracy), p_text);
            }
}


// Precision, recall or F1 of class k, the mean over a model's seeds.
typedef enum { PRECISION, RECALL, F1 } ClassFigure;

double mean_class_figure(const Comparison *c, int model, int k, ClassFigure which) {
    double sum = 0;
    for (int s = 0; s < c->seed_count; s++) {
        const ClassFigures *f = &comparison_run(c, model, s)->classes;
        sum += which == PRECISION ? f->precision[k] : which == RECALL ? f->recall[k] : f->f1[k];
    }
    return sum / c->seed_count;
}

// Precision, recall and F1 of every class and model (means over the seeds).
void put_class_table(ByteBuffer *b, const Comparison *c) {
    put_text(b, "\n| class |");
    for (int i = 0; i < c->model_count; i++) put_text(b, " %s precision | %s recall | %s F1 |", c->names[i], c->names[i], c->names[i]);
    put_text(b, "\n|---|");
    for (int i = 0; i < c->model_count; i++) put_text(b, "--:|--:|--:|");
    put_text(b, "\n");
    for (int k = 0; k < NUM_CLASSES; k++) {
        put_text(b, "| %s |", CLASS_NAMES[k]);
        for (int i = 0; i < c->model_count; i++)
            put_text(b, " %.4f | %.4f | %.4f |", mean_class_figure(c, i, k, PRECISION), mean_class_figure(c, i, k, RECALL),
                     mean_class_figure(c, i, k, F1));
        put_text(b, "\n");
    }
}

int write_results(const Comparison *c, const FashionMnist *data, const Options *o, FileList *files, Error *err) {
    ByteBuffer b = {0};
    put_text(&b, "# Fashion-MNIST: the comparison\n\nWritten by `");
    for (int a = 0; a < o->argc; a++) {  // words of any length: put_text's lines have a limit
        if (a) put_bytes(&b, " ", 1);
        put_bytes(&b, o->argv[a], strlen(o->argv[a]));
    }
    put_text(&b, "`: %d training, %d validation and %d test images; %d seed%s per model (mean ± standard "
                 "deviation over the seeds)%s. Seconds are training time, validation excluded.\n\n",
             training_set(data, o).count, data->validation.count, data->test.count, c->seed_count, c->seed_count == 1 ? "" : "s",
             o->augment ? "; training images shifted and flipped (--augment)" : "");
    put_results_table(&b, c);
    put_mcnemar_table(&b, c, &data->test);
    put_class_table(&b, c);
    fwrite(b.bytes, 1, b.used, stdout);
    return write_listed(o->plots, "results.md", &b, files, err);
}

/* ---- Plot data and gnuplot scripts ----------------------------------------- */

/* Each script draws its figure twice, as SVG and as PNG, with the same
   commands: gnuplot's `replot` cannot repeat a multiplot. Titles are
   printed "noenhanced", so that a '_' or '^' in a name stays a letter. */
static const char *const GNUPLOT_TERMINALS[2][2] = {{"svg size 1000,420 dynamic font 'sans,11'", "svg"},
                                                     {"pngcairo size 1000,420 font 'sans,10'", "png"}};

// curves.dat: the first seed's epochs of every model, one block each.
void put_curves_data(ByteBuffer *b, const Comparison *c) {
    put_text(b, "# the first seed of each model: one block per model (gnuplot: index i)\n"
                "# epoch  train_loss  train_accuracy  validation_loss  validation_accuracy  best(1/0)\n");
    for (int i = 0; i < c->model_count; i++) {
        const RunReport *r = comparison_run(c, i, 0);
        const History *h = r->history;
        put_text(b, "%s# %s, seed %d: best epoch %d, stopped after %d\n", i ? "\n\n" : "", c->names[i], r->seed,
                 r->result.best_epoch, r->result.epochs);
        for (int e = 0; e < h->epochs; e++)
            put_text(b, "%d %.6f %.6f %.6f %.6f %d\n", e + 1, h->train_loss[e], h->train_accuracy[e],
                     h->validation_loss[e], h->validation_accuracy[e], e + 1 == r->result.best_epoch);
    }
}

// One model's three series in a panel: validation (solid), training
// (dashed, same colour) and a circle at the best epoch.
void put_curve_series(ByteBuffer *b, int model, const char *name, int train_column, int validation_column) {
    int colour = model + 1;
    put_text(b, "%s'curves.dat' index %d using 1:%d with lines lw 2 lc %d title '%s', \\\n", model ? ", \\\n     " : "",
             model, validation_column, colour, name);
    put_text(b, "     '' index %d using 1:%d with lines dt 2 lc %d notitle, \\\n", model, train_column, colour);
    put_text(b, "     '' index %d using 1:($6 == 1 ? $%d : 1/0) with points pt 6 ps 2 lc %d notitle", model,
             validation_column, colour);
}

void put_curves_script(ByteBuffer *b, const Comparison *c) {
    int most_epochs = 1;
    for (int i = 0; i < c->model_count; i++)
        if (comparison_run(c, i, 0)->result.epochs > most_epochs) most_epochs = comparison_run(c, i, 0)->result.epochs;
    put_text(b, "# Training curves: gnuplot curves.gp (in this directory) writes curves.svg and curves.png.\n"
                "# Solid: validation; dashed: training; a circle: the best epoch, whose weights were tested.\n");
    for (int t = 0; t < 2; t++) {
        put_text(b, "\nreset\nset terminal %s\nset output 'curves.%s'\nset multiplot layout 1,2\nset grid\n"
                    "set key noenhanced\nset xlabel 'epoch'\nset xtics %d\n", GNUPLOT_TERMINALS[t][0],
                 GNUPLOT_TERMINALS[t][1], most_epochs <= 15 ? 1 : 5);
        for (int panel = 0; panel < 2; panel++) {  // loss, then accuracy
            put_text(b, "set title '%s'\nset ylabel '%s'\nset key %s\nplot ", panel ? "accuracy" : "loss",
                     panel ? "accuracy" : "cross-entropy loss", panel ? "bottom right" : "top right");  // out of the curves' way
            for (int i = 0; i < c->model_count; i++) put_curve_series(b, i, c->names[i], panel ? 3 : 2, panel ? 5 : 4);
            put_text(b, "\n");
        }
        put_text(b, "unset multiplot\n");
    }
}

// classes.dat: each class's F1, mean over the seeds, one column per model.
void put_classes_data(ByteBuffer *b, const Comparison *c) {
    put_text(b, "class");
    for (int i = 0; i < c->model_count; i++) put_text(b, " %s", c->names[i]);
    put_text(b, "\n");
    for (int k = 0; k < NUM_CLASSES; k++) {
        put_text(b, "\"%s\"", CLASS_NAMES[k]);
        for (int i = 0; i < c->model_count; i++) put_text(b, " %.6f", mean_class_figure(c, i, k, F1));
        put_text(b, "\n");
    }
}

void put_classes_script(ByteBuffer *b, const Comparison *c) {
    put_text(b, "# F1 per class and model: gnuplot classes.gp writes classes.svg and classes.png.\n");
    for (int t = 0; t < 2; t++)
        put_text(b, "\nreset\nset terminal %s\nset output 'classes.%s'\nset title 'F1 per class (mean over the seeds)'\n"
                    "set ylabel 'F1'\n"
                    "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
                    "set yrange [0:1]\nset grid ytics\nset key noenhanced outside right top vertical\nset xtics noenhanced rotate by -30\n"
                    "plot for [i=2:%d] 'classes.dat' using i:xtic(1) title columnheader(i)\n",
                 GNUPLOT_TERMINALS[t][0], GNUPLOT_TERMINALS[t][1], c->model_count + 1);
}

/* cost.dat: each model's cost (forward MFLOP per image, parameters) and
   test accuracy (mean and sd over its seeds); cost.gp plots accuracy
   against each cost, a labelled point per model, the cost axes
   logarithmic, since the models' costs span three orders of magnitude. */
void put_cost_data(ByteBuffer *b, const Comparison *c) {
    put_text(b, "# model  MFLOP_per_image  parameters  test_accuracy_mean  test_accuracy_sd  seeds\n");
    for (int i = 0; i < c->model_count; i++) {
        const RunReport *first = comparison_run(c, i, 0);
        Spread accuracy = spread(c, i, figure_accuracy);
        put_text(b, "\"%s\" %.4f %zu %.4f %.4f %d\n", c->names[i], 2 * first->multiply_adds / 1e6, first->parameters,
                 accuracy.mean, accuracy.sd, c->seed_count);
    }
}

void put_cost_script(ByteBuffer *b) {
    put_text(b, "# Test accuracy against cost: gnuplot cost.gp writes cost.svg and cost.png.\n"
                "# A point per model: the mean over its seeds, the bar one standard deviation.\n");
    for (int t = 0; t < 2; t++) {
        put_text(b, "\nreset\nset terminal %s\nset output 'cost.%s'\nset multiplot layout 1,2\nset grid\n"
                    "set logscale x\nset ylabel 'test accuracy (%%)'\nset offsets graph 0.1, graph 0.1, graph 0.05, graph 0.05\n",
                 GNUPLOT_TERMINALS[t][0], GNUPLOT_TERMINALS[t][1]);
        for (int panel = 0; panel < 2; panel++)
            put_text(b, "set title 'test accuracy against %s'\nset xlabel '%s'\n"
                        "plot 'cost.dat' using %d:4:5 with yerrorbars pt 7 lc 1 notitle, \\\n"
                        "     '' using %d:4:1 with labels noenhanced offset 0,1 notitle\n",
                     panel ? "parameters" : "arithmetic", panel ? "parameters (learned and kept)" : "MFLOP per image, forward",
                     panel ? 3 : 2, panel ? 3 : 2);
        put_text(b, "unset multiplot\n");
    }
}

int write_plot_files(const Comparison *c, const Options *o, FileList *files, Error *err) {
    ByteBuffer b = {0};
    put_curves_data(&b, c);
    int status = write_listed(o->plots, "curves.dat", &b, files, err);
    if (!status) put_curves_script(&b, c), status = write_listed(o->plots, "curves.gp", &b, files, err);
    if (!status) put_classes_data(&b, c), status = write_listed(o->plots, "classes.dat", &b, files, err);
    if (!status) put_classes_script(&b, c), status = write_listed(o->plots, "classes.gp", &b, files, err);
    if (!status) put_cost_data(&b, c), status = write_listed(o->plots, "cost.dat", &b, files, err);
    if (!status) put_cost_script(&b), status = write_listed(o->plots, "cost.gp", &b, files, err);
    return status;
}

/* ---- Pictures: confusion matrices ------------------------------------------ */

static const unsigned char WHITE[3] = {255, 255, 255}, BLACK[3] = {0, 0, 0};
static const unsigned char GREEN[3] = {0, 120, 0}, RED[3] = {190, 0, 0};

// A colour between two, at t in [0, 1].
void blend(unsigned char out[3], const unsigned char from[3], const unsigned char to[3], double t) {
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    for (int i = 0; i < 3; i++) out[i] = (unsigned char)lround(from[i] + t * (to[i] - from[i]));
}

void fill_rectangle(Picture *p, int x, int y, int width, int height, const unsigned char *colour) {
    for (int dy = 0; dy < height; dy++)
        for (int dx = 0; dx < width; dx++) picture_put(p, x + dx, y + dy, 1, colour);
}

// Text read from bottom to top (turned a quarter left), its first letter's
// bottom-left corner at (x, y).
void picture_draw_text_up(Picture *p, int x, int y, const char *text, const unsigned char *colour) {
    for (; *text; text++, y -= GLYPH_ADVANCE) {
        unsigned char ch = (unsigned char)*text;
        if (ch >= 'a' && ch <= 'z') ch = (unsigned char)(ch - 'a' + 'A');
        if (ch >= 128) continue;
        for (int row = 0; row < GLYPH_HEIGHT; row++)
            for (int col = 0; col < GLYPH_WIDTH; col++)
                if (FONT[ch][row] >> (GLYPH_WIDTH - 1 - col) & 1) picture_put(p, x + row, y - col, 1, colour);
    }
}

enum { CELL = 40, LEFT_MARGIN = 84, TOP_MARGIN = 112, SCALE_WIDTH = 84 };

// The frame of a 10x10 matrix picture: title, class names on both axes.
Picture matrix_picture(const char *title, const char *subtitle) {
    Picture p = picture_new(LEFT_MARGIN + NUM_CLASSES * CELL + SCALE_WIDTH, TOP_MARGIN + NUM_CLASSES * CELL + 30, 3, 255);
    picture_draw_text(&p, 8, 6, 2, title, BLACK);
    picture_draw_text(&p, 8, 26, 1, subtitle, BLACK);
    for (int k = 0; k < NUM_CLASSES; k++) {
        picture_draw_text(&p, 4, TOP_MARGIN + k * CELL + (CELL - GLYPH_HEIGHT) / 2, 1, CLASS_NAMES[k], BLACK);
        picture_draw_text_up(&p, LEFT_MARGIN + k * CELL + (CELL - GLYPH_HEIGHT) / 2, TOP_MARGIN - 4, CLASS_NAMES[k], BLACK);
    }
    picture_draw_text(&p, LEFT_MARGIN, TOP_MARGIN + NUM_CLASSES * CELL + 8, 1, "rows: true class; columns: predicted", BLACK);
    return p;
}

// One cell: its colour and its number, in white on a dark colour.
void draw_cell(Picture *p, int row, int col, const unsigned char *colour, const char *text, int dark) {
    int x = LEFT_MARGIN + col * CELL, y = TOP_MARGIN + row * CELL;
    fill_rectangle(p, x, y, CELL - 1, CELL - 1, colour);
    int width = (int)strlen(text) * GLYPH_ADVANCE - 1;
    picture_draw_text(p, x + (CELL - width) / 2, y + (CELL - GLYPH_HEIGHT) / 2, 1, text, dark ? WHITE : BLACK);
}

// The scale beside the matrix: from `high` at the top to `low` at the bottom.
void draw_scale(Picture *p, const unsigned char low[3], const unsigned char high[3], const char *top, const char *bottom) {
    int x = LEFT_MARGIN + NUM_CLASSES * CELL + 10, height = NUM_CLASSES * CELL;
    for (int y = 0; y < height; y++) {
        unsigned char colour[3];
        blend(colour, low, high, 1.0 - (double)y / (height - 1));
        fill_rectangle(p, x, TOP_MARGIN + y, 14, 1, colour);
    }
    picture_draw_text(p, x + 18, TOP_MARGIN, 1, top, BLACK);
    picture_draw_text(p, x + 18, TOP_MARGIN + height - GLYPH_HEIGHT, 1, bottom, BLACK);
}

/* A confusion matrix: each cell coloured by its share of the row (of the
   images of that true class), from white (none) to dark blue (all), with
   the count written in it. */
Picture confusion_picture(const RunReport *r) {
    static const unsigned char DARK_BLUE[3] = {8, 48, 107};
    char title[128], subtitle[128], count[16];
    snprintf(title, sizeof title, "%s, seed %d", r->model, r->seed);
    snprintf(subtitle, sizeof subtitle, "test accuracy %.2f%%, colour: share of the true class", 100 * r->test.accuracy);
    Picture p = matrix_picture(title, subtitle);
    for (int t = 0; t < NUM_CLASSES; t++) {
        long row_total = 0;
        for (int k = 0; k < NUM_CLASSES; k++) row_total += r->test.confusion[t][k];
        for (int k = 0; k < NUM_CLASSES; k++) {
            double share = row_total ? (double)r->test.confusion[t][k] / row_total : 0;
            unsigned char colour[3];
            blend(colour, WHITE, DARK_BLUE, share);
            snprintf(count, sizeof count, "%d", r->test.confusion[t][k]);
            draw_cell(&p, t, k, colour, count, share > 0.45);
        }
    }
    draw_scale(&p, WHITE, DARK_BLUE, "100%", "0%");
    return p;
}

/* What changed from model a to model b: b's count minus a's, in green
   where b is better (more right on the diagonal, fewer mistakes off it)
   and red where it is worse; the stronger, the larger the change. */
Picture confusion_change_picture(const RunReport *a, const RunReport *b) {
    char title[128], subtitle[160], text[16];
    snprintf(title, sizeof title, "%s minus %s", b->model, a->model);
    snprintf(subtitle, sizeof subtitle, "seed %d: %.2f%% to %.2f%%; green: better, red: worse", a->seed,
             100 * a->test.accuracy, 100 * b->test.accuracy);
    Picture p = matrix_picture(title, subtitle);
    int largest = 1;
    for (int t = 0; t < NUM_CLASSES; t++)
        for (int k = 0; k < NUM_CLASSES; k++) {
            int change = abs(b->test.confusion[t][k] - a->test.confusion[t][k]);
            largest = change > largest ? change : largest;
        }
    for (int t = 0; t < NUM_CLASSES; t++)
        for (int k = 0; k < NUM_CLASSES; k++) {
            int change = b->test.confusion[t][k] - a->test.confusion[t][k];
            int better = t == k ? change > 0 : change < 0;
            unsigned char colour[3];
            blend(colour, WHITE, better ? GREEN : RED, (double)abs(change) / largest);
            snprintf(text, sizeof text, "%+d", change);
            if (!change) strcpy(text, "0");
            draw_cell(&p, t, k, colour, text, (double)abs(change) / largest > 0.55);
        }
    snprintf(text, sizeof text, "+/-%d", largest);  // green for better, red for worse: one scale
    draw_scale(&p, WHITE, GREEN, text, "0");
    return p;
}

/* ---- Pictures: galleries ---------------------------------------------------- */

enum { TITLE_HEIGHT = 30 };  // above a picture's contents: a title in letters twice the size
enum { GALLERY_COLUMNS = 10, GALLERY_SCALE = 3, GALLERY_IMAGE = IMAGE_COLS * GALLERY_SCALE, GALLERY_CELL_WIDTH = 100,
       GALLERY_TEXT = GLYPH_HEIGHT + 3, GALLERY_CELL_HEIGHT = GALLERY_IMAGE + 2 * GALLERY_TEXT + 4, GALLERY_HEADING = 18 };

// One test image with its true class and what the model said.
void draw_gallery_item(Picture *p, int x, int y, const RunReport *r, const Dataset *test, int item) {
    picture_draw_image(p, x + (GALLERY_CELL_WIDTH - GALLERY_IMAGE) / 2, y, GALLERY_SCALE, test->images + (size_t)item * IMAGE_SIZE);
    char line[64];
    int truth = test->labels[item], guess = r->guesses[item];
    snprintf(line, sizeof line, "%s", CLASS_NAMES[truth]);
    picture_draw_text(p, x + 2, y + GALLERY_IMAGE + 2, 1, line, BLACK);
    snprintf(line, sizeof line, "%s %.0f%%", CLASS_NAMES[guess], 100 * r->confidence[item]);
    picture_draw_text(p, x + 2, y + GALLERY_IMAGE + 2 + GALLERY_TEXT, 1, line, truth == guess ? GREEN : RED);
}

// The `most` wrong answers given with the highest probability, highest
// first (of equal ones, the earlier image). Returns how many there are:
// fewer than `most` when the model made fewer mistakes.
int most_confident_mistakes(const RunReport *r, const Dataset *test, int *items, int most) {
    int kept = 0;
    for (int i = 0; i < test->count; i++) {
        if (r->guesses[i] == test->labels[i]) continue;
        int at;
        if (kept < most) at = kept++;                                           // room at the end
        else if (r->confidence[i] > r->confidence[items[most - 1]]) at = most - 1;  // replaces the weakest
        else continue;
        items[at] = i;
        for (; at > 0 && r->confidence[items[at - 1]] < r->confidence[items[at]]; at--) {  // up to its place
            int above = items[at - 1];
            items[at - 1] = items[at], items[at] = above;
        }
    }
    return kept;
}

/* Three rows of test images: the first the model got right, the first it
   got wrong, and its most confident mistakes. Under each image: its true
   class (black) and the model's answer with its probability (green when
   right, red when wrong). */
Picture gallery_picture(const RunReport *r, const Dataset *test) {
    int rows[3][GALLERY_COLUMNS], counts[3] = {0, 0, 0};
    for (int i = 0; i < test->count; i++) {
        int right = r->guesses[i] == test->labels[i];
        int *count = &counts[right ? 0 : 1];
        if (*count < GALLERY_COLUMNS) rows[right ? 0 : 1][(*count)++] = i;
    }
    counts[2] = most_confident_mistakes(r, test, rows[2], GALLERY_COLUMNS);
    static const char *const HEADINGS[3] = {"right", "wrong", "the most confident mistakes"};
    Picture p = picture_new(GALLERY_COLUMNS * GALLERY_CELL_WIDTH, TITLE_HEIGHT + 3 * (GALLERY_HEADING + GALLERY_CELL_HEIGHT), 3, 255);
    char title[128];
    snprintf(title, sizeof title, "%s, seed %d: test images, true class and answer", r->model, r->seed);
    picture_draw_text(&p, 6, 6, 2, title, BLACK);
    for (int row = 0; row < 3; row++) {
        int y = TITLE_HEIGHT + row * (GALLERY_HEADING + GALLERY_CELL_HEIGHT);
        picture_draw_text(&p, 6, y + 4, 1, HEADINGS[row], BLACK);
        for (int col = 0; col < counts[row]; col++)
            draw_gallery_item(&p, col * GALLERY_CELL_WIDTH, y + GALLERY_HEADING, r, test, rows[row][col]);
    }
    return p;
}

/* ---- Pictures: what the first convolution learned --------------------------- */

const Node *first_convolution(const Graph *g) {
    for (int i = 0; i < g->order_count; i++)
        if (g->order[i]->op == &OPS[OP_CONV2D]) return g->order[i];
    return NULL;
}

/* The first layer's filters, each 3x3 weights drawn 12 times as large:
   grey is 0, white the largest positive weight, black the most negative
   (one scale for all, so filters can be compared). */
Picture filters_picture(const Node *kernel, const char *model) {  // kernel: (3, 3, 1, C)
    int channels = kernel->shape[3], per_row = 8, zoom = 12, gap = 6, size = 3 * zoom;
    int rows = (channels + per_row - 1) / per_row;
    Picture p = picture_new(per_row * (size + gap) + gap, TITLE_HEIGHT + rows * (size + gap), 3, 255);
    char title[96];
    snprintf(title, sizeof title, "%s: the first layer's %d filters", model, channels);
    picture_draw_text(&p, 6, 6, 1, title, BLACK);
    float largest = 1e-12f;
    for (size_t i = 0; i < kernel->size; i++) largest = fmaxf(largest, fabsf(kernel->value[i]));
    for (int f = 0; f < channels; f++)
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 3; c++) {
                float w = kernel->value[(r * 3 + c) * channels + f];  // [r][c][0][f]
                unsigned char v = (unsigned char)lroundf(127.5f + 127.5f * w / largest), grey[3] = {v, v, v};
                picture_put(&p, gap + f % per_row * (size + gap) + c * zoom, TITLE_HEIGHT + f / per_row * (size + gap) + r * zoom,
                            zoom, grey);
            }
    return p;
}

/* One test image and what the first layer makes of it: each filter's
   output, negative values black and the largest value white (scaled per
   filter). In the basic CNN that is just what its ReLU passes on; in the
   deeper one batch norm comes between, and shifts the zero. */
Picture feature_maps_picture(GraphClassifier *net, const Dataset *test, const char *model) {
    Batch one = {.images = test->images, .targets = test->targets, .count = 1};
    float probs[NUM_CLASSES];
    graph_predict(net, &one, probs);
    const Node *conv = first_convolution(net->graph);
    int height = conv->shape[1], width = conv->shape[2], channels = conv->shape[3], zoom = 2, gap = 4, per_row = 8;
    int tile = height * zoom + gap, left = 28 * 3 + 2 * gap;
    Picture p = picture_new(left + per_row * (width * zoom + gap), TITLE_HEIGHT + (channels + per_row - 1) / per_row * tile, 3, 255);
    char title[128];
    snprintf(title, sizeof title, "%s: test image 0 (%s) and the first layer's %d feature maps", model,
             CLASS_NAMES[test->labels[0]], channels);
    picture_draw_text(&p, 6, 6, 1, title, BLACK);
    picture_draw_image(&p, gap, TITLE_HEIGHT, 3, test->images);
    for (int f = 0; f < channels; f++) {
        float largest = 1e-12f;
        for (int i = 0; i < height * width; i++) largest = fmaxf(largest, conv->value[i * channels + f]);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++) {
                float v = fmaxf(conv->value[(y * width + x) * channels + f], 0) / largest;  // [0][y][x][f]
                unsigned char grey = (unsigned char)lroundf(255 * v), colour[3] = {grey, grey, grey};
                picture_put(&p, left + f % per_row * (width * zoom + gap) + x * zoom, TITLE_HEIGHT + f / per_row * tile + y * zoom,
                            zoom, colour);
            }
    }
    return p;
}

int draw_network(GraphClassifier *net, const Dataset *test, const char *name, const Options *o,
                 FileList *files, Error *err) {
    const Node *conv = first_convolution(net->graph);
    if (!conv || test->count == 0) return 0;
    char file[64];
    Picture p = filters_picture(conv->inputs[1], name);
    snprintf(file, sizeof file, "filters-%s", name);
    int status = save_picture(&p, o->plots, file, files, err);
    picture_free(&p);
    if (status) return status;
    p = feature_maps_picture(net, test, name);
    snprintf(file, sizeof file, "features-%s", name);
    status = save_picture(&p, o->plots, file, files, err);
    picture_free(&p);
    return status;
}

// Each model's confusion matrix and gallery (its first seed), and what
// changed from each model to the next in the list.
int draw_comparison(const Comparison *c, const Dataset *test, const Options *o, FileList *files, Error *err) {
    int status = 0;
    char file[96];
    for (int i = 0; i < c->model_count && !status; i++) {
        const RunReport *r = comparison_run(c, i, 0);
        Picture p = confusion_picture(r);
        snprintf(file, sizeof file, "confusion-%s", c->names[i]);
        status = save_picture(&p, o->plots, file, files, err);
        picture_free(&p);
        if (status) break;
        p = gallery_picture(r, test);
        snprintf(file, sizeof file, "gallery-%s", c->names[i]);
        status = save_picture(&p, o->plots, file, files, err);
        picture_free(&p);
        if (status || i == 0) continue;
        p = confusion_change_picture(comparison_run(c, i - 1, 0), r);
        snprintf(file, sizeof file, "change-%s-to-%s", c->names[i - 1], c->names[i]);
        status = save_picture(&p, o->plots, file, files, err);
        picture_free(&p);
    }
    return status;
}

/* ---- The chapter's work ------------------------------------------------------- */

// --quick: a small real version of everything, for classes and tests.
void make_quick(Options *o, FashionMnist *data) {
    enum { QUICK_TRAIN = 3000, QUICK_VALIDATION = 1000, QUICK_TEST = 1000, QUICK_EPOCHS = 4 };
    if (!o->limit || o->limit > QUICK_TRAIN) o->limit = QUICK_TRAIN;
    if (o->epochs > QUICK_EPOCHS) o->epochs = QUICK_EPOCHS;
    if (data->validation.count > QUICK_VALIDATION) data->validation.count = QUICK_VALIDATION;
    if (data->test.count > QUICK_TEST) data->test.count = QUICK_TEST;
    printf("--quick: %d training images at most, %d validation, %d test; at most %d epochs\n", o->limit,
           data->validation.count, data->test.count, o->epochs);
}

int compare_models(Options *o, FashionMnist *data, KernelKind kernel, GemmContext *gemm, Error *err) {
    if (o->quick) make_quick(o, data);
    FileList *files = xmalloc(sizeof *files);
    files->count = 0;
    Comparison c = {0};
    double start = now_seconds();
    int status = make_directory(o->plots, "--plots", err);
    if (!status) status = run_comparison(o, data, kernel, gemm, &c, files, err);
    if (!status) status = write_results(&c, data, o, files, err);
    if (!status) status = write_plot_files(&c, o, files, err);
    if (!status) status = draw_comparison(&c, &data->test, o, files, err);
    if (!status) {
        printf("\nthe comparison took ");
        print_duration(now_seconds() - start);
        printf(" in this session\n");
    }
    if (files->count) printf("\nwrote %d files:\n", files->count);
    for (int i = 0; i < files->count; i++) printf("  %s\n", files->paths[i]);
    if (!status) printf("\n`make plots` draws the curves and bars with gnuplot (or: cd %s && gnuplot curves.gp classes.gp)\n",
                        o->plots);
    comparison_free(&c);
    free(files);
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
    if (strcmp(o->precision, "bf16") == 0) {  // the bf16 kernels have the same names, and one more
        const Bf16Kernel *b = strcmp(o->kernel, "auto") == 0 ? bf16_best_kernel() : bf16_kernel_by_name(o->kernel);
        if (!bf16_kernel_supported(b))
            return fail(err, EXIT_NO_KERNEL, "--kernel %s with --precision bf16: %s. Use --kernel auto, which "
                        "picks the fastest bf16 kernel this CPU runs (here: %s).", o->kernel, b ?
                        "this CPU does not have the instructions it needs" : "this build has no such kernel (the "
                        "SIMD kernels exist only in x86-64 builds)", bf16_best_kernel()->name);
        *gemm = gemm_context_new_bf16(b, o->threads ? o->threads : online_cpus());
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
    KernelKind kernel;
    GemmContext *gemm;
    int status = prepare(argc, argv, &options, &data, &kernel, &gemm);
    if (status != CONTINUE) return finish_output(argv[0], status);
    if (gemm) printf("matrix multiplies: the blocked GEMM in %s, %s micro-kernel, %d thread%s\n\n",
                     gemm->bf16 ? "bf16" : "fp32", gemm->bf16 ? gemm->bf16->name : gemm->kernel->name,
                     gemm->workers->threads, gemm->workers->threads == 1 ? "" : "s");
    Error err = {0};
    status = compare_models(&options, &data, kernel, gemm, &err);
    if (status) fprintf(stderr, "%s: %s\n", argv[0], err.message);
    gemm_context_free(gemm);
    free_fashion_mnist(&data);
    return finish_output(argv[0], status);
}
