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

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// Arithmetic as written, with no multiply and add fused into one rounding
// behind our back: one reason fewer for two compilers or machines to print
// different numbers (expf and logf, which differ between C libraries, remain
// one). gcc in -std=c11 mode already works this way (not in its default
// gnu mode: there, add -ffp-contract=off); clang, which would fuse on arm64,
// has to be told.
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* ----------------------------------------------------------------------------
   Exit codes: one per kind of failure, so a script (or a test) can tell them
   apart. `./chapterN --help` lists them. */

enum {
    EXIT_USAGE = 2,           // a bad command-line option
    EXIT_MISSING = 3,         // a data file does not exist or cannot be opened
    EXIT_GZIPPED = 4,         // a data file is still gzip-compressed
    EXIT_BAD_MAGIC = 5,       // not an IDX file of the expected kind
    EXIT_BAD_SHAPE = 6,       // images that are not 28x28
    EXIT_BAD_LENGTH = 7,      // truncated, or longer than the header says
    EXIT_COUNT_MISMATCH = 8,  // images and labels disagree in number
    EXIT_BAD_LABEL = 9,       // a label outside 0-9
    EXIT_WRITE = 10,          // an output file could not be written
    EXIT_NO_MEMORY = 11,      // malloc failed
//@ from 2
    EXIT_NOT_LEARNING = 12,   // --overfit did not reach 100%
//@ end
//@ from 3
    EXIT_BAD_GRADIENT = 13,   // the gradient check failed
//@ end
//@ from 2
    EXIT_BUG = 70,            // an internal check failed: a bug in the program
                              // (70 is EX_SOFTWARE in BSD's sysexits.h)
//@ end
};

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

// Writes `size` bytes to `path` through a temporary file and a rename, so a
// reader never sees half a file and a failed write leaves the old one intact.
int write_file_atomically(const char *path, const void *bytes, size_t size, Error *err) {
    char temp[1024];
    snprintf(temp, sizeof temp, "%s.tmp", path);
    FILE *f = fopen(temp, "wb");
    if (!f)
        return fail(err, EXIT_WRITE, "%s: cannot create the file; does its directory exist "
                    "and is it writable?", temp);
    int ok = fwrite(bytes, 1, size, f) == size;
    ok &= fclose(f) == 0;
    if (!ok || rename(temp, path) != 0) {
        remove(temp);
        return fail(err, EXIT_WRITE, "%s: writing failed (disk full?)", path);
    }
    return 0;
}
