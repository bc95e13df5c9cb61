/* check_excerpts.c - checks that the code book.md quotes is the code in
   chapters/.

   What it is: a reader of one Markdown file. An excerpt is an indented
   (four-space) code block that comes right after a line

       <!-- excerpt: chapters/chapterN.c -->

   an HTML comment, which does not show when the book is rendered; blank
   lines may come between the comment and the block. With the four spaces
   taken off, the excerpt's lines must appear in the named file in the same
   order and one after the other, except that a line that is only "..." (at
   any indentation) stands for lines left out: the lines after it may come
   any distance further down. Trailing whitespace is ignored, leading
   whitespace is not, so an excerpt keeps the indentation it has in the
   file. The file is named relative to the book's directory.
   What it is not: a Markdown parser, or a check of blocks without the
   comment. An untagged block is not looked at, so shell commands, program
   output and formulas are left untagged on purpose, and code the book
   quotes without the comment goes unchecked. Nor does it say whether the
   book's words about the code are still true.

   Usage:  check_excerpts book.md
   For each excerpt it prints "ok book.md:LINE chapters/chapterN.c", or
   "FAIL book.md:LINE: ..." with LINE the book's line that was not found,
   then "N passed, N failed", like the test programs.
   Exit codes: 0 every excerpt found, 1 an excerpt not found (or a
   malformed comment), 2 usage, or a file that cannot be read, or a line
   longer than MAX_LINE characters.

   Portable C11: the C library only, no POSIX. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_FAILED = 1, EXIT_USAGE = 2 };
enum { MAX_LINE = 4096, MAX_PATH = 1024 };

static const char MARKER_START[] = "<!-- excerpt:", MARKER_END[] = "-->";

typedef struct {
    char **line;  // (count) each without its newline and trailing whitespace
    int count, capacity;
} Lines;

static void free_lines(Lines *l) {
    for (int i = 0; i < l->count; i++) free(l->line[i]);
    free(l->line);
    l->line = NULL;
    l->count = l->capacity = 0;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }

// Appends a copy of text (n characters). Returns 0, or -1 when out of memory.
static int append_line(Lines *l, const char *text, size_t n) {
    if (l->count == l->capacity) {
        int capacity = l->capacity ? 2 * l->capacity : 256;
        char **grown = realloc(l->line, (size_t)capacity * sizeof *grown);
        if (!grown) return -1;
        l->line = grown;
        l->capacity = capacity;
    }
    char *copy = malloc(n + 1);
    if (!copy) return -1;
    memcpy(copy, text, n);
    copy[n] = '\0';
    l->line[l->count++] = copy;
    return 0;
}

/* Reads a whole text file into lines, trailing whitespace removed. Returns
   0, or EXIT_USAGE after saying why on stderr: the file cannot be opened or
   read (with strerror), a line is longer than MAX_LINE, or no memory. */
static int read_lines(const char *path, Lines *out) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "check_excerpts: cannot open %s: %s\n", path, strerror(errno));
        return EXIT_USAGE;
    }
    char buffer[MAX_LINE + 2];  // the line, its newline, and the 0
    int status = 0;
    while (status == 0 && fgets(buffer, sizeof buffer, f)) {
        size_t n = strlen(buffer);
        if (n > 0 && buffer[n - 1] == '\n') n--;
        else if (!feof(f)) {  // the buffer filled up before the newline
            fprintf(stderr, "check_excerpts: %s:%d: line longer than %d characters\n", path, out->count + 1,
                    MAX_LINE);
            status = EXIT_USAGE;
            break;
        }
        while (n > 0 && is_blank(buffer[n - 1])) n--;
        if (append_line(out, buffer, n) != 0) {
            fprintf(stderr, "check_excerpts: out of memory reading %s\n", path);
            status = EXIT_USAGE;
        }
    }
    if (status == 0 && ferror(f)) {
        fprintf(stderr, "check_excerpts: cannot read %s: %s\n", path, strerror(errno));
        status = EXIT_USAGE;
    }
    fclose(f);
    if (status != 0) free_lines(out);
    return status;
}

/* If line is an excerpt comment, copies the file name it gives into name
   and returns 1; returns 0 for any other line, -1 for a line that starts
   like the comment but is not one (no "-->", no name, or a name too long). */
static int excerpt_comment(const char *line, char *name, size_t size) {
    size_t start_length = strlen(MARKER_START), end_length = strlen(MARKER_END);
    if (strncmp(line, MARKER_START, start_length) != 0) return 0;
    const char *first = line + start_length, *last = line + strlen(line);  // the line has no trailing blanks
    if ((size_t)(last - first) < end_length || strcmp(last - end_length, MARKER_END) != 0) return -1;
    last -= end_length;
    while (first < last && is_blank(*first)) first++;
    while (last > first && is_blank(last[-1])) last--;
    size_t n = (size_t)(last - first);
    if (n == 0 || n >= size) return -1;
    memcpy(name, first, n);
    name[n] = '\0';
    return 1;
}

static int is_indented(const char *line) { return strncmp(line, "    ", 4) == 0; }

// "..." alone on its line, at any indentation: lines left out.
static int is_elision(const char *line) {
    while (*line == ' ' || *line == '\t') line++;
    return strcmp(line, "...") == 0;
}

/* Looks for the n lines excerpt[0..n) as consecutive lines of file, the
   first of them at index `from` or later. Returns the index where they
   start, or -1; then *partial and *partial_start say how many of the
   excerpt's first lines were found together at most, and where. */
static int find_run(const Lines *file, int from, const char *const *excerpt, int n, int *partial,
                    int *partial_start) {
    *partial = 0;
    *partial_start = from;
    for (int start = from; start < file->count; start++) {
        int k = 0;
        while (k < n && start + k < file->count && strcmp(file->line[start + k], excerpt[k]) == 0) k++;
        if (k == n) return start;
        if (k > *partial) {
            *partial = k;
            *partial_start = start;
        }
    }
    return -1;
}

/* Checks one excerpt: lines excerpt[0..n) of the book, the first of them on
   book line first_line. Prints "ok ..." or "FAIL ..." and returns 1 or 0. */
static int check_excerpt(const char *book, int first_line, const char *name, const Lines *file,
                         const char *const *excerpt, int n) {
    int from = 0;  // the file's lines before this index are used up
    int i = 0;
    while (i < n) {
        if (is_elision(excerpt[i])) {
            i++;
            continue;
        }
        int run = 0;  // lines up to the next "..." must be consecutive in the file
        while (i + run < n && !is_elision(excerpt[i + run])) run++;
        int partial, partial_start;
        int start = find_run(file, from, excerpt + i, run, &partial, &partial_start);
        if (start < 0) {
            int after = partial > 0 ? partial_start + partial : from;  // a 1-based line number
            printf("FAIL %s:%d: line \"%s\" not found in %s after line %d\n", book, first_line + i + partial,
                   excerpt[i + partial], name, after);
            return 0;
        }
        from = start + run;
        i += run;
    }
    printf("ok %s:%d %s\n", book, first_line, name);
    return 1;
}

// The directory part of path, with its final '/', into dir ("" if none).
static void directory_of(const char *path, char *dir, size_t size) {
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) + 1 : 0;
    if (n >= size) n = 0;
    memcpy(dir, path, n);
    dir[n] = '\0';
}

int main(int argc, char **argv) {
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: check_excerpts book.md\n"
                        "checks that each indented block after a line <!-- excerpt: FILE --> appears in FILE\n"
                        "(named relative to the book's directory); a line \"...\" stands for lines left out.\n"
                        "exit codes: 0 all found, 1 an excerpt not found, 2 usage or a file that cannot be read\n");
        return EXIT_USAGE;
    }
    const char *book_path = argv[1];
    Lines book = {0};
    int status = read_lines(book_path, &book);
    if (status != 0) return status;
    char dir[MAX_PATH];
    directory_of(book_path, dir, sizeof dir);

    const char **excerpt = malloc((size_t)(book.count ? book.count : 1) * sizeof *excerpt);
    if (!excerpt) {
        fprintf(stderr, "check_excerpts: out of memory\n");
        free_lines(&book);
        return EXIT_USAGE;
    }
    int passed = 0, failed = 0;
    for (int i = 0; i < book.count && status == 0; i++) {
        char name[MAX_PATH], path[2 * MAX_PATH];
        int kind = excerpt_comment(book.line[i], name, sizeof name);
        if (kind == 0) continue;
        if (kind < 0) {
            printf("FAIL %s:%d: an excerpt comment must read \"%s FILE %s\"\n", book_path, i + 1, MARKER_START,
                   MARKER_END);
            failed++;
            continue;
        }
        // The block: after any blank lines, indented lines, with blank lines
        // inside it (not after it) belonging to it, as in Markdown.
        int first = i + 1;
        while (first < book.count && book.line[first][0] == '\0') first++;
        if (first >= book.count || !is_indented(book.line[first])) {
            printf("FAIL %s:%d: no indented block after the excerpt comment\n", book_path, i + 1);
            failed++;
            continue;
        }
        int end = first;
        for (int k = first; k < book.count; k++) {
            if (is_indented(book.line[k])) end = k + 1;
            else if (book.line[k][0] != '\0') break;
        }
        int n = 0;
        for (int k = first; k < end; k++) excerpt[n++] = book.line[k][0] ? book.line[k] + 4 : "";

        snprintf(path, sizeof path, "%s%s", name[0] == '/' ? "" : dir, name);
        Lines file = {0};
        status = read_lines(path, &file);
        if (status != 0) {
            fprintf(stderr, "check_excerpts: (named at %s:%d)\n", book_path, i + 1);
            break;
        }
        if (check_excerpt(book_path, first + 1, name, &file, excerpt, n)) passed++;
        else failed++;
        free_lines(&file);
        i = end - 1;
    }
    free(excerpt);
    free_lines(&book);
    if (status != 0) return status;
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? EXIT_FAILED : 0;
}
