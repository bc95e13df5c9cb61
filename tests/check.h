/* check.h - the test harness: a few macros and a closing line.

   What it is: CHECK(condition) counts a pass or prints the failing line;
   check_summary() prints "N passed, N failed[, N skipped]" and returns the
   exit code. What it is not: a framework; there is no registration, no
   fixtures, no forking. A test program is a main() that calls its tests.

   Tests include the chapter they test with `main` renamed, so they can call
   every function of the chapter, and its main() too:
       #define main chapter1_main
       #include "../chapters/chapter1.c"
       #undef main                                                            */
#ifndef CHECK_H
#define CHECK_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int checks_passed, checks_failed, checks_skipped;

static inline int check_report(int ok, const char *file, int line, const char *what) {
    if (ok) checks_passed++;
    else {
        checks_failed++;
        printf("FAIL %s:%d: %s\n", file, line, what);
    }
    return ok;
}

#define CHECK(condition) check_report((condition) != 0, __FILE__, __LINE__, #condition)

// |a - b| <= tolerance, printing both values when it fails.
#define CHECK_NEAR(a, b, tolerance)                                                       \
    do {                                                                                  \
        double check_a_ = (a), check_b_ = (b);                                            \
        if (!CHECK(fabs(check_a_ - check_b_) <= (tolerance)))                              \
            printf("     %s = %.9g, %s = %.9g, tolerance %g\n", #a, check_a_, #b, check_b_, \
                   (double)(tolerance));                                                  \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                         \
    do {                                                                           \
        long check_a_ = (long)(a), check_b_ = (long)(b);                           \
        if (!CHECK(check_a_ == check_b_))                                          \
            printf("     %s = %ld, %s = %ld\n", #a, check_a_, #b, check_b_);       \
    } while (0)

static inline void skip(const char *why) {
    checks_skipped++;
    printf("skip: %s\n", why);
}

static inline void section(const char *name) { printf("-- %s\n", name); }

static inline int check_summary(void) {
    if (checks_skipped) printf("%d passed, %d failed, %d skipped\n", checks_passed, checks_failed, checks_skipped);
    else printf("%d passed, %d failed\n", checks_passed, checks_failed);
    return checks_failed ? 1 : 0;
}

#endif
