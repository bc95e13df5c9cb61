/* answers.c - checks a quick-check answer without showing it.

   What it is: the book's quick checks have one right number each. This
   holds a fingerprint of each (FNV-1a, 64 bits, of the answer written
   plainly), so `make check-answer N=5.no-bias A=...` can say right or not
   yet, and reading this file tells nothing but the questions.
   What it is not: a secret. A number with few digits can be found by trying
   them all; the point is to let a student check, not to stop one who wants
   to cheat.

   Usage: answers NAME ANSWER     (answers with no arguments lists the names)
          answers --fingerprint ANSWER   (for an instructor adding a quick check:
                                          the number to put in the table)
   An answer is compared after dropping spaces, commas, underscores and a
   final full stop: "1,234" and "1234" are the same answer. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name, *question;
    uint64_t fingerprint;
} Answer;

static const Answer ANSWERS[] = {
    {"1.cut-size", "bytes of an IDX image file that holds only the first 1,000 test images", 0x88f9ccc9499113f1ULL},
    {"2.multiply-adds", "multiply-adds in one forward pass of a 784-256-128-10 ANN, for one image", 0xc39799aa92352744ULL},
    {"3.forward-mode", "forward-mode passes for a 784-256-128-10 ANN's whole gradient", 0x561ee7b371cd428aULL},
    {"4.patch-bytes", "bytes of the second im2col patch matrix, same padding, batch 100", 0x380b2e4e572c9615ULL},
    {"5.no-bias", "the deeper CNN's parameters, dense 128, no biases before batch norm", 0x5c4234e4e39ceb81ULL},
    {"6.framing", "bytes of a checkpoint that are not section payload", 0x08179007b4d4b5cdULL},
};
enum { ANSWER_COUNT = sizeof ANSWERS / sizeof ANSWERS[0] };

static uint64_t fingerprint(const char *text) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *text; text++) h = (h ^ (unsigned char)*text) * 0x100000001b3ULL;
    return h;
}

// "1,234." -> "1234"; letters to lower case.
static void normalise(const char *answer, char *out, size_t size) {
    size_t used = 0;
    for (; *answer && used + 1 < size; answer++)
        if (!strchr(" ,_\t", *answer)) out[used++] = (char)tolower((unsigned char)*answer);
    while (used > 0 && out[used - 1] == '.') used--;
    out[used] = '\0';
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--fingerprint") == 0) {
        char plain[256];
        normalise(argv[2], plain, sizeof plain);
        printf("0x%016llxULL\n", (unsigned long long)fingerprint(plain));
        return 0;
    }
    if (argc != 3) {
        printf("usage: make check-answer N=NAME A=ANSWER\n\nthe quick checks:\n");
        for (int k = 0; k < ANSWER_COUNT; k++) printf("  %-16s %s\n", ANSWERS[k].name, ANSWERS[k].question);
        return argc == 1 ? 0 : 2;
    }
    for (int k = 0; k < ANSWER_COUNT; k++) {
        if (strcmp(argv[1], ANSWERS[k].name) != 0) continue;
        char plain[256];
        normalise(argv[2], plain, sizeof plain);
        int right = fingerprint(plain) == ANSWERS[k].fingerprint;
        printf("%s: %s\n", ANSWERS[k].name, right ? "right" : "not yet (book.md says how to work it out)");
        return right ? 0 : 1;
    }
    fprintf(stderr, "no quick check named '%s'; `make check-answer` lists them\n", argv[1]);
    return 2;
}
