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
} Options;

Options default_options(void) {
    return (Options){
        .data_dir = "data",
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
    return 0;
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
    return CONTINUE;
}

int main(int argc, char **argv) {
    Options options;
    FashionMnist data;
    int status = begin(argc, argv, &options, &data);
    if (status != CONTINUE) return finish_output(argv[0], status);

    printf("Fashion-MNIST from %s/\n\nshapes:\n", options.data_dir);
    print_split_shape("train", &data.train);
    print_split_shape("validation", &data.validation);
    print_split_shape("test", &data.test);
    print_class_counts(&data);

    double mean, std;
    pixel_statistics(&data.train, &mean, &std);
    printf("\npixels of the training split: mean %.4f, standard deviation %.4f\n", mean, std);
    if (mean < 0.2)
        printf("  (Fashion-MNIST's mean is about 0.286; MNIST digits give 0.131. "
               "Are these the right files?)\n");

    printf("\nthe first training images:\n\n");
    int first[3] = {0, 1, 2};
    print_images_as_text(&data.train, first, data.train.count < 3 ? data.train.count : 3);

    Error err = {0};
    const char *grid = "plots/fashion_samples.pgm";
    if (write_sample_grid(&data.train, 8, grid, &err) == 0)
        printf("\nwrote %s (eight training images of each class)\n", grid);
    else
        fprintf(stderr, "%s: %s\n", argv[0], err.message);
    free_fashion_mnist(&data);
    return finish_output(argv[0], err.code);
}
