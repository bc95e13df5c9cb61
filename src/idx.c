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
//@ from 1 to 3

/* The other way: the bytes of an IDX image file holding d's images, the
   header (magic, count, rows, columns, each big-endian) and then one byte
   a pixel, 255 x rounded to the nearest, x clamped to [0, 1] first. With
   `out` NULL it writes nothing and returns the size; else it fills `out`
   (that many bytes) and returns the same. */
size_t encode_idx_images(const Dataset *d, unsigned char *out) {
    //@ exercise 1 write-idx: write d's images as an IDX file's bytes into out (or, out NULL, only count them).
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
    //@ stub
    (void)d, (void)out;
    return 0;
    //@ end
}
//@ end

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
//@ from 9

/* ---- Subsets of the classes (chapter 9's transfer learning) ----------------- */

enum { ALL_CLASSES = (1 << NUM_CLASSES) - 1 };  // a bit per class: --classes's default

// The items of d whose class is in `classes`, at most `per_class` of each
// (0: no limit), the first ones, in order. Returns how many; items may be
// NULL to count them.
int select_items(const Dataset *d, unsigned classes, int per_class, int *items) {
    //@ exercise 9 select-items: the first per_class items of each class in `classes`, in order; count them, and list them if items is not NULL (book.md 9.6).
    int taken[NUM_CLASSES] = {0}, count = 0;
    for (int i = 0; i < d->count; i++) {
        int c = d->labels[i];
        if (!(classes >> c & 1) || (per_class && taken[c] == per_class)) continue;
        taken[c]++;
        if (items) items[count] = i;
        count++;
    }
    return count;
    //@ stub
    (void)d, (void)classes, (void)per_class, (void)items;
    return 0;
    //@ end
}

void copy_items(Dataset *to, int at, const Dataset *from, const int *items, int count) {
    for (int k = 0; k < count; k++, at++) {
        int i = items[k];
        memcpy(to->images + (size_t)at * IMAGE_SIZE, from->images + (size_t)i * IMAGE_SIZE, IMAGE_SIZE * sizeof(float));
        memcpy(to->targets + (size_t)at * NUM_CLASSES, from->targets + (size_t)i * NUM_CLASSES, NUM_CLASSES * sizeof(float));
        to->labels[at] = from->labels[i];
    }
}

Dataset dataset_new(int count) {
    size_t n = count > 0 ? (size_t)count : 1;
    return (Dataset){.count = count, .images = xmalloc(n * IMAGE_SIZE * sizeof(float)), .labels = xmalloc(n),
                     .targets = xmalloc(n * NUM_CLASSES * sizeof(float))};
}

/* The splits of `all` cut down to `classes`, and the training split to at
   most `per_class` images of each: a FashionMnist with memory of its own
   (free_fashion_mnist frees it), its training and validation splits again
   one block. The validation and test splits keep every image of the
   classes. Fails (EXIT_TOO_FEW) if a split would be empty.

   A training split cut by `per_class` to fewer than EPOCH_IMAGES images is
   repeated, whole, until an epoch has at least that many. Ten images of
   five classes would otherwise make an epoch of one step, and the
   protocol's 30 epochs would be 30 steps: a test of how fast a model
   learns from nothing, not of what it learns from 50 images. Worse, batch
   norm's running statistics, which validation uses, move 1% a step: after
   a few dozen steps they are still mostly their starting values, the
   validation loss says little, and early stopping stops at random.
   Repeated to 5,000 images (the split of 1,000 images a class of five
   classes), every epoch is 79 steps at batch 64, whatever N. */
enum { EPOCH_IMAGES = 5000 };
int fashion_mnist_subset(const FashionMnist *all, unsigned classes, int per_class, FashionMnist *out, Error *err) {
    *out = (FashionMnist){0};
    int *items = xmalloc((size_t)(all->all_training.count + all->test.count + 1) * sizeof(int));
    int selected = select_items(&all->train, classes, per_class, NULL);
    int copies = per_class && selected && selected < EPOCH_IMAGES ? (EPOCH_IMAGES + selected - 1) / selected : 1;
    int train = selected * copies, validation = select_items(&all->validation, classes, 0, NULL);
    if (train == 0 || validation == 0) {
        free(items);
        char list[2 * NUM_CLASSES] = "";
        for (int k = 0; k < NUM_CLASSES; k++)
            if (classes >> k & 1) snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", *list ? "," : "", k);
        return fail(err, EXIT_TOO_FEW, "--classes %s: the training split has %d images of these classes, the "
                    "validation split %d; both need at least one. Choose other --classes.", list, train, validation);
    }
    out->all_training = dataset_new(train + validation);
    select_items(&all->train, classes, per_class, items);
    for (int c = 0; c < copies; c++) copy_items(&out->all_training, c * selected, &all->train, items, selected);
    copy_items(&out->all_training, train, &all->validation, items, select_items(&all->validation, classes, 0, items));
    out->train = dataset_slice(&out->all_training, 0, train);
    out->validation = dataset_slice(&out->all_training, train, validation);
    if (all->test.count) {  // a search's data has no test set yet
        int test = select_items(&all->test, classes, 0, items);
        out->test = dataset_new(test);
        copy_items(&out->test, 0, &all->test, items, test);
    }
    free(items);
    if (all->test.count && out->test.count == 0) {
        free_fashion_mnist(out);
        return fail(err, EXIT_TOO_FEW, "--classes: the test split has no images of these classes, so nothing "
                    "could be tested. Choose other --classes.");
    }
    return 0;
}

// The training file alone, split as above, and an empty test set: all a
// hyperparameter search may see (tune.c).
int load_training_split(const char *dir, FashionMnist *data, Error *err) {
    *data = (FashionMnist){0};
    if (load_dataset(dir, "train", &data->all_training, err)) return err->code;
    int n = data->all_training.count;
    int validation = n > VALIDATION_COUNT ? VALIDATION_COUNT : n / 10;
    if (validation == 0) {
        fail(err, EXIT_TOO_FEW, "%s/train-images-idx3-ubyte: %d images; at least 10 are needed (a tenth is held "
             "out for validation). Run `make data`, or pass --data DIR for a directory with more.", dir, n);
        free_fashion_mnist(data);
        return err->code;
    }
    data->train = dataset_slice(&data->all_training, 0, n - validation);
    data->validation = dataset_slice(&data->all_training, n - validation, validation);
    return 0;
}
//@ end
