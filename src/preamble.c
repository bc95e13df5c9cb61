//@ from 1 to 1
/* chapter1.c - Fashion-MNIST from the raw bytes: reading and checking IDX files.

   What it adds: a hand-written reader for the IDX format (big-endian header,
   magic number, dimensions) that checks everything it reads; pixels turned
   into floats in [0,1]; one-hot labels; the 54,000 / 6,000 training and
   validation split of the protocol; a look at the data in the terminal and
   as a labelled sample grid (a PGM image under plots/).
   What it is not: a model. Nothing is learned yet; that starts in chapter 2.

   Build and run:   make chapter1 && ./chapter1
              or:   cc -std=c11 -O3 chapters/chapter1.c -o chapter1 -lm
   Read with:       book.md, "Chapter 1: The data, byte by byte".

   Generated from src/ by `make chapters`; edit src/, not this file. */
//@ end
//@ from 2 to 2
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
//@ end
//@ from 3 to 3
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
//@ end
//@ from 4 to 4
/* chapter4.c - convolutions: the basic CNN, correct and then fast.

   What it adds: convolution and max pooling as ops of the engine, in three
   versions that the tests hold against each other: naive (the definition),
   im2col (chapter 2's matrix multiply) and blocked (one cache-blocked GEMM
   with packing, implicit im2col and a portable, AVX2 or AVX-512
   micro-kernel chosen at run time, on a thread pool: the same bits on
   every kernel and thread count); reshape and flatten without a copy; the
   protocol's basic CNN with a layer-by-layer summary; --model, --kernel and
   --threads. What it drops: chapter 2's hand-written ANN and chapter 3's
   comparison with it. (Speeds are measured outside: `make bench`.)
   What it is not: a BLAS, or the full protocol (early stopping and
   checkpoints come in chapter 6).

   Build and run:   make chapter4 && ./chapter4        (./chapter4 --help)
              or:   cc -std=c11 -O3 chapters/chapter4.c -o chapter4 -lm -pthread
   Read with:       book.md, "Chapter 4: Convolutions".

   Generated from src/ by `make chapters`; edit src/, not this file. */
//@ end
//@ from 5 to 5
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
//@ end
//@ from 6 to 6
/* chapter6.c - the full protocol: early stopping, checkpoints, exact resume.

   What it adds: early stopping on the validation loss (--patience, and
   --epochs as the most); checkpoints in a format of our own (magic,
   version, named and shaped tensors, a CRC-32 per section, little-endian),
   written crash-safely (an exclusive temporary, fsync, rename): the best
   weights whenever validation improves, and the whole run after every
   epoch; Ctrl-C and SIGTERM finish the batch, save and exit 130; --resume
   continues a run bit for bit as if it had never stopped, even from the
   middle of an epoch; --evaluate tests a checkpoint, with each class's
   precision, recall and F1; a checkpoint reader that refuses every kind
   of damaged or foreign file with its own exit code.
   What it is not: the comparison of the three models; that is chapter 7.

   Build and run:   make chapter6 && ./chapter6        (./chapter6 --help)
              or:   cc -std=c11 -O3 chapters/chapter6.c -o chapter6 -lm -pthread
   Read with:       book.md, "Chapter 6: Early stopping, checkpoints, resume".

   Generated from src/ by `make chapters`; edit src/, not this file. */
//@ end
//@ from 7
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
//@ end

// POSIX functions (open, fstat, isatty; threads in chapter 4) are used only
// where the system has them, inside `#if HAVE_POSIX`; this asks the C library
// to declare them, and changes nothing elsewhere.
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <float.h>
#include <math.h>
//@ from 6
#include <signal.h>  // Ctrl-C and SIGTERM: finish the batch, save, stop
//@ end
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
//@ from 4
#include <sys/resource.h>  // getrusage: the peak memory
//@ end
#else
#define HAVE_POSIX 0
#endif
//@ from 4

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
//@ end

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
//@ from 4
    X(EXIT_NO_KERNEL, 16, "--kernel names a micro-kernel this CPU or build does not have")  \
//@ end
//@ from 2
    X(EXIT_NOT_LEARNING, 12, "--overfit never reached 100%")                                \
    X(EXIT_DIVERGED, 15, "training diverged: the loss is not a finite number")              \
//@ end
//@ from 6
    X(EXIT_CHECKPOINT_UNREADABLE, 17, "a checkpoint is missing, unreadable, not a regular file or too large") \
    X(EXIT_CHECKPOINT_NOT, 18, "a file is not a checkpoint (its magic number is wrong)")    \
    X(EXIT_CHECKPOINT_VERSION, 19, "a checkpoint of another format version or chapter")     \
    X(EXIT_CHECKPOINT_TRUNCATED, 20, "a checkpoint is truncated, or longer than its sections") \
    X(EXIT_CHECKPOINT_DAMAGED, 21, "a checkpoint is damaged: a checksum or a value is wrong") \
    X(EXIT_CHECKPOINT_MODEL, 22, "a checkpoint holds another model, or tensors of other shapes") \
    X(EXIT_CHECKPOINT_OPTIONS, 23, "--resume with options that differ from the checkpoint's run") \
    X(EXIT_CHECKPOINT_DATA, 24, "a checkpoint's run learned from other data than --data gives") \
    X(EXIT_CHECKPOINT_BUSY, 25, "another run is writing the same checkpoints (its lock is held)") \
//@ from 8
    X(EXIT_CHECKPOINT_PRECISION, 26, "a checkpoint of a run in another --precision (fp32 or bf16)") \
//@ end
    X(EXIT_INTERRUPTED, 130, "interrupted (Ctrl-C, SIGTERM or --stop-after): a checkpoint to resume from was saved") \
//@ end
//@ from 3 to 3
    X(EXIT_BAD_GRADIENT, 13, "a self-check failed (the gradients, or engine vs chapter 2)") \
//@ end
//@ from 2
    X(EXIT_BUG, 70, "an internal check failed: a bug (70 is BSD's EX_SOFTWARE)")           \
//@ end
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
//@ from 2

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
//@ end

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

//@ from 6
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

//@ end
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
//@ from 6
    // On the disk before the rename: otherwise a power cut could leave the
    // new name pointing at blocks that were never written (book.md 6.6).
#if HAVE_POSIX
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
#endif
//@ end
    ok &= fclose(f) == 0;
    ok = ok && rename(temp, path) == 0;
    if (!ok) {
        int why = errno;
        remove(temp);
        return fail(err, EXIT_WRITE, "%s: writing failed (%s)", path, why ? strerror(why) : "disk full?");
    }
//@ from 6
    sync_directory_of(path);
//@ end
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
