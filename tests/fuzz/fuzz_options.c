/* fuzz_options.c - libFuzzer on chapter 6's option parser.

   An input is a command line: words separated by zero bytes (at most 40).
   Whatever parse_options accepts must be a run the program can do: every
   number in its range, every name one of its choices, no two options that
   exclude each other. Built by `make fuzz`. */
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
    enum { MAX_WORDS = 40 };
    char *text = malloc(size + 1), *argv[MAX_WORDS + 2] = {"./chapter6"};
    memcpy(text, data, size);
    text[size] = '\0';
    int argc = 1;
    for (size_t at = 0; at <= size && argc <= MAX_WORDS; at += strlen(text + at) + 1) argv[argc++] = text + at;
    argv[argc] = NULL;
    Options o;
    Error err = {0};
    int status = parse_options(argc, argv, &o, &err);
    if (status) {
        if (status != EXIT_USAGE || err.code != status || !err.message[0]) abort();
    } else {
        int sane = o.epochs >= 1 && o.epochs <= 1000 && o.batch >= 1 && o.batch <= 4096 && o.seed >= 0 &&
                   o.limit >= 0 && o.limit <= 54000 && o.overfit >= 0 && o.overfit <= 54000 &&
                   o.learning_rate >= 1e-9 && o.learning_rate <= 10 && o.patience >= 1 && o.patience <= 1000 &&
                   o.threads >= 0 && o.threads <= 256 && o.stop_after >= 0 &&
                   is_choice(o.model, "ann|basic|deeper") && is_choice(o.optimizer, "adam|sgd") &&
                   is_choice(o.kernel, "auto|naive|im2col|portable|avx2|avx512") &&
                   !(o.resume && o.evaluate) && !((o.resume || o.evaluate) && o.overfit) && o.data_dir && o.checkpoints;
        if (!sane) abort();
    }
    free(text);
    return 0;
}
