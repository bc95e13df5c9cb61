/* test_idx.c - chapter 1: the IDX reader on files the test writes itself,
   good and broken in every way the reader promises to catch, then on the
   real Fashion-MNIST when `make data` has put it in data/. */
#include "check.h"
#include <sys/stat.h>  // mkdir: tests may use POSIX

#define main chapter1_main
// `make test-chapter N=1 FILE=...` builds this against a student's chapter.
#ifndef CHAPTER_FILE
#define CHAPTER_FILE "../chapters/chapter1.c"
#endif
#include CHAPTER_FILE
#undef main

static const char *DIR_ = "build/idx_fixtures";
enum { N = 20 };

static void write_bytes(const char *split, const char *kind, const unsigned char *bytes, size_t size) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s-%s", DIR_, split, kind);
    FILE *f = fopen(path, "wb");
    fwrite(bytes, 1, size, f);
    fclose(f);
}

static void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

// A well-formed pair of files: `count` images whose pixel j of image i is
// (i + j) % 256, and labels i % 10. Sizes are adjustable to break them.
typedef struct {
    unsigned char images[16 + N * IMAGE_SIZE + 1];
    unsigned char labels[8 + N + 1];
    size_t image_size, label_size;
} Fixture;

static Fixture good_fixture(void) {
    static Fixture f;
    memset(&f, 0, sizeof f);
    put_u32(f.images, IDX_IMAGES_MAGIC);
    put_u32(f.images + 4, N);
    put_u32(f.images + 8, 28);
    put_u32(f.images + 12, 28);
    for (int i = 0; i < N * IMAGE_SIZE; i++) f.images[16 + i] = (unsigned char)((i / IMAGE_SIZE + i % IMAGE_SIZE) % 256);
    put_u32(f.labels, IDX_LABELS_MAGIC);
    put_u32(f.labels + 4, N);
    for (int i = 0; i < N; i++) f.labels[8 + i] = (unsigned char)(i % 10);
    f.image_size = 16 + N * IMAGE_SIZE;
    f.label_size = 8 + N;
    return f;
}

static void write_fixture(const char *split, const Fixture *f) {
    write_bytes(split, "images-idx3-ubyte", f->images, f->image_size);
    write_bytes(split, "labels-idx1-ubyte", f->labels, f->label_size);
}

// Loads a split and checks the error code, and that the message names `file`.
static void expect_error(const char *split, int code, const char *file) {
    Dataset d = {0};
    Error err = {0};
    int status = load_dataset(DIR_, split, &d, &err);
    if (!CHECK(status == code)) printf("     split %s: got %d (%s), expected %d\n", split, status, err.message, code);
    CHECK(err.code == status);
    if (!CHECK(strstr(err.message, file) != NULL)) printf("     message: %s\n", err.message);
    CHECK(d.images == NULL);  // nothing is handed out on failure
}

static void test_good_file(void) {
    section("a good file");
    Fixture f = good_fixture();
    write_fixture("good", &f);
    Dataset d = {0};
    Error err = {0};
    CHECK_EQ_INT(load_dataset(DIR_, "good", &d, &err), 0);
    CHECK_EQ_INT(d.count, N);
    CHECK_NEAR(d.images[0], 0.0, 0);
    CHECK_NEAR(d.images[1], 1 / 255.0, 1e-7);
    CHECK_NEAR(d.images[3 * IMAGE_SIZE + 255], 2 / 255.0, 1e-7);  // (3 + 255) % 256 = 2
    CHECK_NEAR(d.images[IMAGE_SIZE - 1], (IMAGE_SIZE - 1) % 256 / 255.0, 1e-7);
    int one_hot_ok = 1;
    for (int i = 0; i < N; i++)
        for (int k = 0; k < NUM_CLASSES; k++)
            one_hot_ok &= d.targets[i * NUM_CLASSES + k] == (k == i % 10 ? 1.0f : 0.0f);
    CHECK(one_hot_ok);
    CHECK_EQ_INT(d.labels[13], 3);
    Dataset tail = dataset_slice(&d, 15, 5);
    CHECK_EQ_INT(tail.labels[0], 5);
    CHECK(tail.images == d.images + 15 * IMAGE_SIZE);
    free_dataset(&d);
}

static void test_broken_files(void) {
    section("each kind of broken file has its own error");
    Fixture f = good_fixture();

    expect_error("absent", EXIT_MISSING, "absent-images-idx3-ubyte");

    f = good_fixture();
    f.images[0] = 0x1f, f.images[1] = 0x8b;
    write_fixture("gzipped", &f);
    expect_error("gzipped", EXIT_GZIPPED, "gzipped-images-idx3-ubyte");

    f = good_fixture();
    put_u32(f.images, IDX_LABELS_MAGIC);  // a labels file where images belong
    write_fixture("magic", &f);
    expect_error("magic", EXIT_BAD_MAGIC, "magic-images-idx3-ubyte");

    f = good_fixture();
    put_u32(f.labels, 0x00000c01);  // labels stored as 32-bit ints (type 0x0c)
    write_fixture("labeltype", &f);
    expect_error("labeltype", EXIT_BAD_MAGIC, "labeltype-labels-idx1-ubyte");

    f = good_fixture();
    put_u32(f.images + 8, 32);
    write_fixture("shape", &f);
    expect_error("shape", EXIT_BAD_SHAPE, "shape-images-idx3-ubyte");

    f = good_fixture();
    f.image_size -= 1;
    write_fixture("truncated", &f);
    expect_error("truncated", EXIT_BAD_LENGTH, "truncated-images-idx3-ubyte");

    f = good_fixture();
    f.label_size += 1;
    write_fixture("long", &f);
    expect_error("long", EXIT_BAD_LENGTH, "long-labels-idx1-ubyte");

    f = good_fixture();
    put_u32(f.labels + 4, N - 1);
    f.label_size -= 1;
    write_fixture("mismatch", &f);
    expect_error("mismatch", EXIT_COUNT_MISMATCH, "mismatch-labels-idx1-ubyte");

    f = good_fixture();
    f.labels[8 + 7] = 10;
    write_fixture("label", &f);
    expect_error("label", EXIT_BAD_LABEL, "label-labels-idx1-ubyte");
}

// Every prefix of a good file is a "too short" error (never a crash, never
// a leak: the sanitizers watch), and every single-byte change to the header
// is caught by the check that reads that byte.
static void test_every_truncation_and_header_byte(void) {
    section("every truncation, every header byte");
    Fixture f = good_fixture();
    write_bytes("cut", "labels-idx1-ubyte", f.labels, f.label_size);
    int all_too_short = 1;
    for (size_t size = 0; size < f.image_size; size += size < 64 ? 1 : 97) {
        write_bytes("cut", "images-idx3-ubyte", f.images, size);
        Dataset d = {0};
        Error err = {0};
        int code = load_dataset(DIR_, "cut", &d, &err);
        if (code != EXIT_BAD_LENGTH) printf("     %zu bytes: exit code %d, expected %d\n", size, code, EXIT_BAD_LENGTH);
        all_too_short &= code == EXIT_BAD_LENGTH;
    }
    CHECK(all_too_short);
    // Bytes 0-3 are the magic number, 4-7 the count (so the length no
    // longer matches), 8-11 and 12-15 the rows and columns.
    int all_caught = 1;
    for (int byte = 0; byte < 16; byte++) {
        f = good_fixture();
        f.images[byte] ^= 0x40;
        write_fixture("flip", &f);
        Dataset d = {0};
        Error err = {0};
        int code = load_dataset(DIR_, "flip", &d, &err);
        int expected = byte < 4 ? EXIT_BAD_MAGIC : byte < 8 ? EXIT_BAD_LENGTH : EXIT_BAD_SHAPE;
        if (code != expected) printf("     header byte %d changed: exit code %d, expected %d\n", byte, code, expected);
        all_caught &= code == expected;
    }
    CHECK(all_caught);
}

/* ---- Files that are not what they seem -------------------------------------
   A FIFO would block the reader forever and /dev/zero never ends: both are
   refused before a byte is read (a child process with an alarm turns a hang
   into a failure rather than a stuck test). No read goes past what the
   header promises, plus one byte. */
static void load_in_child(void *split) {
    alarm(5);
    Dataset d = {0};
    Error err = {0};
    int code = load_dataset(DIR_, split, &d, &err);
    fprintf(stderr, "%s", err.message);
    exit(code);
}

static void test_not_regular_files(void) {
    section("FIFOs, devices and directories are refused; reads are bounded");
    Fixture f = good_fixture();
    char path[256];
    snprintf(path, sizeof path, "%s/fifo-images-idx3-ubyte", DIR_);
    remove(path);  // a FIFO left by an earlier run would block write_fixture
    write_fixture("fifo", &f);
    remove(path);
    CHECK(mkfifo(path, 0600) == 0);
    CHECK_EXITS(load_in_child, "fifo", EXIT_MISSING, "not a regular file (a pipe, a device or a socket)");

    write_fixture("zero", &f);
    snprintf(path, sizeof path, "%s/zero-labels-idx1-ubyte", DIR_);
    remove(path);
    CHECK(symlink("/dev/zero", path) == 0);
    CHECK_EXITS(load_in_child, "zero", EXIT_MISSING, "zero-labels-idx1-ubyte: not a regular file");

    snprintf(path, sizeof path, "%s/dir-images-idx3-ubyte", DIR_);
    remove(path);  // remove() takes an empty directory too
    write_fixture("dir", &f);
    remove(path);
    mkdir(path, 0777);
    CHECK_EXITS(load_in_child, "dir", EXIT_MISSING, "not a regular file (a directory)");

    // The system's reason is in the message.
    CHECK_EXITS(load_in_child, "absent", EXIT_MISSING, "cannot open the file (No such file or directory)");

    // A file a megabyte longer than its header says: read to one byte past
    // the promise, no further, and refused as too long.
    static unsigned char longer[8 + N + (1 << 20)];
    memcpy(longer, f.labels, f.label_size);
    write_bytes("longer", "labels-idx1-ubyte", longer, sizeof longer);
    snprintf(path, sizeof path, "%s/longer-labels-idx1-ubyte", DIR_);
    unsigned char *bytes = NULL;
    size_t size = 0;
    Error err = {0};
    CHECK_EQ_INT(read_idx_file(path, IDX_LABELS_MAGIC, &bytes, &size, &err), 0);
    CHECK_EQ_INT(size, 8 + N + 1);
    uint32_t count;
    size_t body;
    CHECK_EQ_INT(check_idx_header(path, bytes, size, IDX_LABELS_MAGIC, &count, &body, &err), EXIT_BAD_LENGTH);
    CHECK(strstr(err.message, "too long") != NULL);
    free(bytes);
}

/* ---- Writing files safely -----------------------------------------------------
   A link planted where a temporary file might go is never followed, and a
   write that fails leaves no temporary behind. */
static int count_temporaries(const char *dir) {
    char command[300];
    snprintf(command, sizeof command, "ls -a %s | grep -c '\\.tmp$'", dir);
    FILE *p = popen(command, "r");
    int n = -1;
    if (p && fscanf(p, "%d", &n) != 1) n = -1;
    if (p) pclose(p);
    return n;
}

static void test_safe_writes(void) {
    section("write_file_atomically: planted links are not followed, failures leave nothing");
    mkdir("build/writes", 0777);
    FILE *victim = fopen("build/writes/victim", "w");
    fputs("precious", victim);
    fclose(victim);
    remove("build/writes/out.pgm.tmp");
    CHECK(symlink("victim", "build/writes/out.pgm.tmp") == 0);  // the name chapter 1 once used
    Error err = {0};
    CHECK_EQ_INT(write_file_atomically("build/writes/out.pgm", "new", 3, &err), 0);
    char text[16] = {0};
    victim = fopen("build/writes/victim", "r");
    CHECK(fgets(text, sizeof text, victim) && strcmp(text, "precious") == 0);
    fclose(victim);
    FILE *out = fopen("build/writes/out.pgm", "r");
    CHECK(fgets(text, sizeof text, out) && strcmp(text, "new") == 0);
    fclose(out);
    remove("build/writes/out.pgm.tmp");

    // The rename fails (a directory is in the way): an error naming the
    // reason, and no temporary left.
    mkdir("build/writes/in_the_way", 0777);
    CHECK_EQ_INT(write_file_atomically("build/writes/in_the_way", "x", 1, &err), EXIT_WRITE);
    CHECK(strstr(err.message, "in_the_way: writing failed (Is a directory)") != NULL);
    CHECK_EQ_INT(count_temporaries("build/writes"), 0);
    CHECK_EQ_INT(write_file_atomically("build/no/such/dir/x.pgm", "x", 1, &err), EXIT_WRITE);
    CHECK(strstr(err.message, "No such file or directory") != NULL);
}

static int run_chapter1(const char *data_dir) {
    char *argv[] = {"chapter1", "--data", (char *)data_dir, NULL};
    return chapter1_main(3, argv);
}

// Output that cannot be written is a failure, with the write exit code.
static void chapter1_to_full_disk(void *dir) {
    if (!freopen("/dev/full", "w", stdout)) _exit(99);
    exit(run_chapter1(dir));
}

static void test_exit_codes(void) {
    section("the program's exit codes");
    char *help[] = {"chapter1", "--help", NULL};
    CHECK_EQ_INT(chapter1_main(2, help), 0);
    char *unknown[] = {"chapter1", "--epochs", NULL};
    CHECK_EQ_INT(chapter1_main(2, unknown), EXIT_USAGE);
    char *no_value[] = {"chapter1", "--data", NULL};
    CHECK_EQ_INT(chapter1_main(2, no_value), EXIT_USAGE);
    CHECK_EQ_INT(run_chapter1("build/idx_fixtures/nowhere"), EXIT_MISSING);

    // A data directory with the real file names, broken one way at a time.
    mkdir("build/idx_fixtures/set", 0777);
    Fixture f = good_fixture();
    const char *saved = DIR_;
    DIR_ = "build/idx_fixtures/set";
    write_fixture("train", &f);
    write_fixture("t10k", &f);
    CHECK_EQ_INT(run_chapter1(DIR_), 0);
    f.labels[9] = 200;
    write_fixture("t10k", &f);
    CHECK_EQ_INT(run_chapter1(DIR_), EXIT_BAD_LABEL);

    // Empty splits: a test file of 0 images, a training file too small to
    // hold out a validation image.
    f = good_fixture();
    put_u32(f.images + 4, 0), put_u32(f.labels + 4, 0);
    f.image_size = 16, f.label_size = 8;
    write_fixture("t10k", &f);
    CHECK_EQ_INT(run_chapter1(DIR_), EXIT_TOO_FEW);
    f = good_fixture();
    write_fixture("t10k", &f);
    put_u32(f.images + 4, 9), put_u32(f.labels + 4, 9);
    f.image_size = 16 + 9 * IMAGE_SIZE, f.label_size = 8 + 9;
    write_fixture("train", &f);
    CHECK_EQ_INT(run_chapter1(DIR_), EXIT_TOO_FEW);
    put_u32(f.images + 4, 10), put_u32(f.labels + 4, 10);
    f.image_size = 16 + 10 * IMAGE_SIZE, f.label_size = 8 + 10;
    write_fixture("train", &f);
    CHECK_EQ_INT(run_chapter1(DIR_), 0);
    CHECK_EXITS(chapter1_to_full_disk, (void *)DIR_, EXIT_WRITE, "could not write the output (No space left on device)");
    DIR_ = saved;
}

static void test_real_data(void) {
    section("the real Fashion-MNIST");
    FashionMnist data;
    Error err = {0};
    if (load_fashion_mnist("data", &data, &err)) {
        skip("no Fashion-MNIST in data/ (run `make data`)");
        return;
    }
    CHECK_EQ_INT(data.all_training.count, 60000);
    CHECK_EQ_INT(data.train.count, 54000);
    CHECK_EQ_INT(data.validation.count, 6000);
    CHECK_EQ_INT(data.test.count, 10000);
    CHECK(data.validation.images == data.all_training.images + 54000 * IMAGE_SIZE);
    int train_counts[NUM_CLASSES], test_counts[NUM_CLASSES], balanced = 1;
    count_classes(&data.all_training, train_counts);
    count_classes(&data.test, test_counts);
    for (int k = 0; k < NUM_CLASSES; k++) balanced &= train_counts[k] == 6000 && test_counts[k] == 1000;
    CHECK(balanced);
    CHECK_EQ_INT(data.train.labels[0], 9);  // the first training image is an ankle boot
    double mean, std;
    pixel_statistics(&data.all_training, &mean, &std);
    CHECK_NEAR(mean, 0.2860, 5e-4);  // MNIST digits would give 0.1307
    CHECK_NEAR(std, 0.3530, 5e-4);
    free_fashion_mnist(&data);

    CHECK_EQ_INT(run_chapter1("data"), 0);
    FILE *grid = fopen("plots/fashion_samples.pgm", "rb");
    char header[16] = {0};
    if (CHECK(grid != NULL)) {
        CHECK(fread(header, 1, 15, grid) == 15);
        CHECK(strncmp(header, "P5\n", 3) == 0);
        fclose(grid);
    }
}

int main(void) {
    mkdir("build", 0777);
    mkdir(DIR_, 0777);
    test_good_file();
    test_broken_files();
    test_every_truncation_and_header_byte();
    test_not_regular_files();
    test_safe_writes();
    test_exit_codes();
    test_real_data();
    return check_summary();
}
