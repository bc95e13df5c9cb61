/* tangle.c - generates one chapter of the book from the marked sources in src/.

   What it is: a filter. It reads the source files in the order given and
   prints the lines that belong to chapter N, without the markers.
   What it is not: a preprocessor. It knows two markers and nothing else;
   the generated chapter is ordinary C that a reader can compile alone.

   The two markers, each alone on its line (leading spaces allowed):

       //@ from K          the lines up to the matching "//@ end" belong to
                           chapter K and every later chapter
       //@ from A to B     ... belong to chapters A through B only
       //@ end             closes the innermost open block

   Lines outside any block belong to every chapter. Blocks nest; a nested
   line belongs to the chapters that all of its enclosing blocks allow.

   Usage:  tangle N file...      (chapter N goes to standard output)
   Exit codes: 0 done, 2 usage, 3 a file cannot be read, 4 a marker error. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_USAGE = 2, EXIT_READ = 3, EXIT_MARKER = 4 };
enum { MAX_DEPTH = 32, MAX_LINE = 4096, LAST_CHAPTER = 1000 };

typedef struct {
    int first, last;  // the chapters an open block allows
    int line;         // where it was opened, for error messages
} Block;

// Returns the text after "//@" if the line is a marker, else NULL.
static const char *marker_text(const char *line) {
    while (*line == ' ' || *line == '\t') line++;
    return strncmp(line, "//@", 3) == 0 ? line + 3 : NULL;
}

// Parses "from K", "from A to B" or "end". Returns 1 for a block opener,
// 0 for "end", -1 for anything else.
static int parse_marker(const char *text, int *first, int *last) {
    char word[16], tail[2];
    int a, b;
    if (sscanf(text, " %15s %1s", word, tail) == 1 && strcmp(word, "end") == 0) return 0;
    if (sscanf(text, " from %d to %d %1s", &a, &b, tail) == 2 && 1 <= a && a <= b) {
        *first = a, *last = b;
        return 1;
    }
    if (sscanf(text, " from %d %1s", &a, tail) == 1 && a >= 1) {
        *first = a, *last = LAST_CHAPTER;
        return 1;
    }
    return -1;
}

// Copies the lines of one file that belong to `chapter` to `out`.
static int tangle_file(const char *path, int chapter, FILE *out) {
    FILE *in = fopen(path, "r");
    if (!in) {
        fprintf(stderr, "tangle: cannot read %s\n", path);
        return EXIT_READ;
    }
    Block stack[MAX_DEPTH];
    int depth = 0, lineno = 0, status = 0;
    char line[MAX_LINE];
    while (status == 0 && fgets(line, sizeof line, in)) {
        lineno++;
        const char *marker = marker_text(line);
        if (!marker) {
            int visible = 1;
            for (int i = 0; i < depth; i++)
                visible &= stack[i].first <= chapter && chapter <= stack[i].last;
            if (visible) fputs(line, out);
            continue;
        }
        int first, last, kind = parse_marker(marker, &first, &last);
        if (kind < 0) {
            fprintf(stderr, "%s:%d: unknown marker '//@%.*s'; the markers are "
                            "'//@ from K', '//@ from A to B' and '//@ end'\n",
                    path, lineno, (int)strcspn(marker, "\r\n"), marker);
            status = EXIT_MARKER;
        } else if (kind == 0 && depth == 0) {
            fprintf(stderr, "%s:%d: '//@ end' without an open block\n", path, lineno);
            status = EXIT_MARKER;
        } else if (kind == 0) {
            depth--;
        } else if (depth == MAX_DEPTH) {
            fprintf(stderr, "%s:%d: blocks nested deeper than %d\n", path, lineno, MAX_DEPTH);
            status = EXIT_MARKER;
        } else {
            stack[depth++] = (Block){first, last, lineno};
        }
    }
    if (status == 0 && depth > 0) {
        fprintf(stderr, "%s:%d: block opened here is never closed with '//@ end'\n",
                path, stack[depth - 1].line);
        status = EXIT_MARKER;
    }
    fclose(in);
    return status;
}

int main(int argc, char **argv) {
    char *end = NULL;
    long chapter = argc >= 3 ? strtol(argv[1], &end, 10) : 0;
    if (argc < 3 || *end != '\0' || chapter < 1 || chapter >= LAST_CHAPTER) {
        fprintf(stderr, "usage: tangle N file...   (prints chapter N, N >= 1)\n");
        return EXIT_USAGE;
    }
    for (int i = 2; i < argc; i++) {
        int status = tangle_file(argv[i], (int)chapter, stdout);
        if (status) return status;
    }
    return fflush(stdout) == 0 ? 0 : EXIT_READ;
}
