/* test_tangle.c - the chapter generator: both chapter marker forms,
   nesting, exercises in full and starter chapters, and every marker error.
   It writes small marked sources under build/ and reads back what tangle
   makes of them. */
#include "check.h"

#define main tangle_main
#include "../src/tangle.c"
#undef main

static const char *SOURCE_PATH = "build/tangle_case.c";

// Writes `source` to a file, tangles chapter `n` of it and returns the text
// (static buffer) and the status.
static const char *tangle_text_of(const char *source, int n, int starter, int *status) {
    static char text[4096];
    FILE *f = fopen(SOURCE_PATH, "w");
    fputs(source, f);
    fclose(f);
    FILE *out = tmpfile();
    *status = tangle_file(SOURCE_PATH, n, starter, out);
    rewind(out);
    size_t used = fread(text, 1, sizeof text - 1, out);
    text[used] = '\0';
    fclose(out);
    return text;
}

static const char *tangle_text(const char *source, int n, int *status) {
    return tangle_text_of(source, n, 0, status);
}

static void check_version(const char *source, int n, int starter, const char *expected) {
    int status;
    const char *text = tangle_text_of(source, n, starter, &status);
    CHECK_EQ_INT(status, 0);
    if (!CHECK(strcmp(text, expected) == 0))
        printf("     chapter %d%s: got\n%s     expected\n%s", n, starter ? " (starter)" : "", text, expected);
}

static void check_chapter(const char *source, int n, const char *expected) { check_version(source, n, 0, expected); }

static void test_marker_forms(void) {
    section("from K on, from A to B, and from A to B and from C");
    const char *source =
        "all\n"
        "//@ from 2\n"
        "two on\n"
        "//@ end\n"
        "  //@ from 1 to 2\n"
        "one and two\n"
        "  //@ end\n"
        "//@ from 3 to 3\n"
        "three only\n"
        "//@ end\n"
        "//@ from 1 to 2 and from 5\n"
        "gone in 3 and 4\n"
        "//@ end\n"
        "all again\n";
    check_chapter(source, 1, "all\none and two\ngone in 3 and 4\nall again\n");
    check_chapter(source, 2, "all\ntwo on\none and two\ngone in 3 and 4\nall again\n");
    check_chapter(source, 3, "all\ntwo on\nthree only\nall again\n");
    check_chapter(source, 4, "all\ntwo on\nall again\n");
    check_chapter(source, 5, "all\ntwo on\ngone in 3 and 4\nall again\n");
    check_chapter(source, 9, "all\ntwo on\ngone in 3 and 4\nall again\n");
}

static void test_nesting(void) {
    section("nested blocks intersect");
    const char *source =
        "//@ from 2\n"
        "a\n"
        "//@ from 1 to 3\n"
        "b\n"
        "//@ end\n"
        "c\n"
        "//@ end\n";
    check_chapter(source, 1, "");
    check_chapter(source, 2, "a\nb\nc\n");
    check_chapter(source, 4, "a\nc\n");
}

static void test_errors(void) {
    section("marker errors");
    int status;
    const char *bad[] = {
        "//@ from\n//@ end\n",          // no chapter
        "//@ form 2\n//@ end\n",        // a typo
        "//@ from 3 to 2\n//@ end\n",   // an empty range
        "//@ from 0\n//@ end\n",        // chapters start at 1
        "//@ from 2 onwards\n//@ end\n",
        "//@ from 1 to 2 and from 3\n//@ end\n",  // not a gap: say "from 1"
        "//@ from 1 to 2 and 5\n//@ end\n",
        "//@ end\n",                    // nothing to close
        "//@ from 2\nnever closed\n",
        "//@ exercise 2 x: do it\nsolution\n//@ end\n",          // no stub
        "//@ stub\n",                                             // a stub outside an exercise
        "//@ exercise 2 x: do it\n//@ stub\n//@ stub\n//@ end\n",  // two stubs
        "//@ exercise 2 x:\n//@ stub\n//@ end\n",                // nothing to do
        "//@ exercise two x: do it\n//@ stub\n//@ end\n",        // no chapter
        "//@ exercise 2 X: do it\n//@ stub\n//@ end\n",          // names are lower case
        "//@ exercise 2 x: do it\n//@ stub\n",                    // never closed
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tangle_text(bad[i], 2, &status);
        CHECK_EQ_INT(status, EXIT_MARKER);
    }
    FILE *out = tmpfile();
    CHECK_EQ_INT(tangle_file("build/no/such/file.c", 1, 0, out), EXIT_READ);
    fclose(out);
    // Comments that merely start like a marker are ordinary lines.
    check_chapter("// @ from 2 is how a marker looks\n", 1, "// @ from 2 is how a marker looks\n");
}

static void test_exercises(void) {
    section("exercises: the solution everywhere but in the starter of their chapter");
    const char *source =
        "//@ from 2\n"
        "int f(void) {\n"
        "    //@ exercise 2 f-body: return the answer, which is a long sentence that the generator must wrap\n"
        "    return 42;\n"
        "    //@ stub\n"
        "    return 0;\n"
        "    //@ end\n"
        "}\n"
        "//@ end\n"
        "//@ exercise 3 g: three's\n"
        "g\n"
        "//@ stub\n"
        "stub g\n"
        "//@ end\n";
    const char *full = "int f(void) {\n    return 42;\n}\ng\n";
    check_chapter(source, 2, full);
    check_chapter(source, 3, full);
    check_version(source, 1, 1, "g\n");  // chapter 1 has no f; g's chapter is 3
    check_version(source, 2, 1,
                  "int f(void) {\n"
                  "    // TODO (exercise 2.f-body): return the answer, which is a long sentence that the generator\n"
                  "    // must wrap\n"
                  "    return 0;\n"
                  "}\n"
                  "g\n");
    check_version(source, 3, 1, "int f(void) {\n    return 42;\n}\n// TODO (exercise 3.g): three's\nstub g\n");
    // An exercise inside a block its chapter does not see leaves no TODO.
    check_version("//@ from 4\n//@ exercise 2 h: x\nh\n//@ stub\ns\n//@ end\n//@ end\n", 2, 1, "");
}

static void test_command_line(void) {
    section("usage");
    char *no_args[] = {"tangle", NULL};
    CHECK_EQ_INT(tangle_main(1, no_args), EXIT_USAGE);
    char *bad_chapter[] = {"tangle", "x", "file.c", NULL};
    CHECK_EQ_INT(tangle_main(3, bad_chapter), EXIT_USAGE);
    char *zero[] = {"tangle", "0", "file.c", NULL};
    CHECK_EQ_INT(tangle_main(3, zero), EXIT_USAGE);
    char *starter_alone[] = {"tangle", "--starter", "2", NULL};
    CHECK_EQ_INT(tangle_main(3, starter_alone), EXIT_USAGE);
}

int main(void) {
    test_marker_forms();
    test_nesting();
    test_errors();
    test_exercises();
    test_command_line();
    return check_summary();
}
