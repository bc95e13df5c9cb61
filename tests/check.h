/* check.h - the test harness: a few macros and a closing line.

   What it is: CHECK(condition) counts a pass or prints the failing line;
   check_summary() prints "N passed, N failed[, N skipped]" and returns the
   exit code; exit_code_of() runs a function in a child process, for the
   checks that stop the program. What it is not: a framework; there is no
   registration and there are no fixtures. A test program is a main() that
   calls its tests. The tests, unlike the chapters, may use POSIX.

   Tests include the chapter they test with `main` renamed, so they can call
   every function of the chapter, and its main() too:
       #define main chapter1_main
       #include "../chapters/chapter1.c"
       #undef main                                                            */
#ifndef CHECK_H
#define CHECK_H

// The chapters ask for POSIX declarations (fdopen, ...); so must we, before
// the first system header, or the chapter's request would come too late.
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* Runs f(arg) in a child process and returns its exit code: 0 if f
   returned, 128 + the signal if it died. What the child wrote to stderr
   ends up in message (at most size - 1 characters, then a 0). */
static inline int exit_code_of(void (*f)(void *), void *arg, char *message, size_t size) {
    int fds[2];
    fflush(stdout);  // or the child would print what is buffered a second time
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        f(arg);
        _exit(0);
    }
    close(fds[1]);
    size_t used = 0;
    char scratch[256];
    ssize_t got;
    while ((got = read(fds[0], scratch, sizeof scratch)) > 0)  // read it all, so the child never blocks
        for (ssize_t i = 0; i < got; i++)
            if (used + 1 < size) message[used++] = scratch[i];
    message[used] = 0;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// f(arg) stops the program with `code` and says `words` on stderr.
#define CHECK_EXITS(f, arg, code, words)                                                   \
    do {                                                                                   \
        char check_message_[512];                                                          \
        int check_code_ = exit_code_of((f), (arg), check_message_, sizeof check_message_); \
        if (!CHECK(check_code_ == (code) && strstr(check_message_, (words)) != NULL))      \
            printf("     exit code %d (expected %d), stderr: %s\n", check_code_, (code),    \
                   check_message_);                                                        \
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
