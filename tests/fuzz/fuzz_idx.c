/* fuzz_idx.c - libFuzzer on chapter 1's IDX header check and label scan.

   The first byte of an input picks the kind (even: images, odd: labels);
   the rest is the file. Whatever check_idx_header accepts must be
   consistent: the header's count times the item size, plus the header, is
   exactly the file's size, as idx_expected_size also says; for labels,
   every label the loader would keep is 0-9 or the scan refuses it.
   Built by `make fuzz` with clang -fsanitize=fuzzer,address,undefined. */
// The chapter asks for POSIX (its lock file uses O_NOFOLLOW and lstat), but
// only before the first system header; these come first here, so ask here.
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include <stdint.h>
#include <stdlib.h>

#define main chapter_main
#include "../../chapters/chapter6.c"
#undef main

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint32_t magic = data[0] % 2 ? IDX_LABELS_MAGIC : IDX_IMAGES_MAGIC;
    const unsigned char *bytes = data + 1;
    size_t n = size - 1, body = 0;
    uint32_t count = 0;
    Error err = {0};
    int status = check_idx_header("fuzz", bytes, n, magic, &count, &body, &err);
    if (status) {
        if (err.code != status || !err.message[0] || status < EXIT_USAGE || status > EXIT_BAD_LABEL) abort();
        return 0;
    }
    size_t item = magic == IDX_IMAGES_MAGIC ? IMAGE_SIZE : 1;
    if (body > n || (n - body) / item != count || (n - body) % item != 0) abort();
    if (idx_expected_size(bytes, n, magic) != n) abort();
    if (magic == IDX_IMAGES_MAGIC && (read_big_endian_u32(bytes + 8) != 28 || read_big_endian_u32(bytes + 12) != 28))
        abort();
    return 0;
}
