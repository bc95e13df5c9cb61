/* tangle.c - generates one chapter of the book from the marked sources in src/.

   What it is: a filter. It reads the source files in the order given and
   prints the lines that belong to chapter N, without the markers; with
   --starter, the chapter a student starts from, its exercises left to do.
   What it is not: a preprocessor. It knows four markers and nothing else;
   the generated chapter is ordinary C that a reader can compile alone.

   The markers, each alone on its line (leading spaces allowed):

       //@ from K          the lines up to the matching "//@ end" belong to
                           chapter K and every later chapter
       //@ from A to B     ... belong to chapters A through B only
       //@ from A to B and from C
                           ... to chapters A through B, and C and every
                           later one (a chapter that does not need the
                           lines leaves them out, a later one takes them back)
       //@ end             closes the innermost open block

   Lines outside any block belong to every chapter. Blocks nest; a nested
   line belongs to the chapters that all of its enclosing blocks allow.

       //@ exercise K NAME: what to write
       ... the solution ...
       //@ stub
       ... what the starter has instead ...
       //@ end

   marks an exercise of chapter K. Every chapter gets the solution, except
   the starter version of chapter K, which gets a comment "TODO (exercise
   K.NAME): what to write" and the stub: code that compiles and returns
   something harmless, so the starter builds and runs, and the exercise's
   checks fail until the student writes the body.

   Usage:  tangle [--starter] N file...      (chapter N goes to standard output)
   Exit codes: 0 done, 2 usage, 3 a file cannot be read, 4 a marker error. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_USAGE = 2, EXIT_READ = 3, EXIT_MARKER = 4 };
enum { MAX_DEPTH = 32, MAX_LINE = 4096, LAST_CHAPTER = 1000, MAX_NAME = 64, TODO_WIDTH = 96 };

typedef enum { BLOCK_CHAPTERS, BLOCK_SOLUTION, BLOCK_STUB } BlockKind;

typedef struct {
    BlockKind kind;
    int first, last;  // BLOCK_CHAPTERS: the chapters it allows
    int again;        // BLOCK_CHAPTERS: and every chapter from this one (0: none)
    int starter;      // an exercise block: is this the starter of the exercise's chapter?
    int line;         // where it was opened, for error messages
} Block;

typedef struct {
    int kind;              // MARKER_...
    int first, last;       // from: the chapters; exercise: first is its chapter
    int again;             // from ... and from again: chapters again, again+1, ... too
    char name[MAX_NAME];   // exercise
    const char *todo;      // exercise: what to write (points into the line)
} Marker;

enum { MARKER_UNKNOWN, MARKER_FROM, MARKER_END, MARKER_EXERCISE, MARKER_STUB };

// Returns the text after "//@" if the line is a marker, else NULL.
static const char *marker_text(const char *line) {
    while (*line == ' ' || *line == '\t') line++;
    return strncmp(line, "//@", 3) == 0 ? line + 3 : NULL;
}

// Parses "from K", "from A to B", "from A to B and from C", "end", "stub" or "exercise K NAME: text".
static Marker parse_marker(const char *text) {
    Marker m = {MARKER_UNKNOWN, 0, 0, 0, "", NULL};
    char word[16], tail[2];
    int a, b, c, used = 0;
    if (sscanf(text, " %15s %1s", word, tail) == 1 && strcmp(word, "end") == 0) m.kind = MARKER_END;
    else if (sscanf(text, " %15s %1s", word, tail) == 1 && strcmp(word, "stub") == 0) m.kind = MARKER_STUB;
    else if (sscanf(text, " from %d to %d and from %d %1s", &a, &b, &c, tail) == 3 && 1 <= a && a <= b && c > b + 1)
        m = (Marker){MARKER_FROM, a, b, c, "", NULL};
    else if (sscanf(text, " from %d to %d %1s", &a, &b, tail) == 2 && 1 <= a && a <= b)
        m = (Marker){MARKER_FROM, a, b, 0, "", NULL};
    else if (sscanf(text, " from %d %1s", &a, tail) == 1 && a >= 1)
        m = (Marker){MARKER_FROM, a, LAST_CHAPTER, 0, "", NULL};
    else if (sscanf(text, " exercise %d %63[a-z0-9.-]:%n", &a, m.name, &used) == 2 && used > 0 && a >= 1) {
        const char *todo = text + used;
        while (*todo == ' ') todo++;
        if (*todo && *todo != '\n' && *todo != '\r') m.kind = MARKER_EXERCISE, m.first = a, m.todo = todo;
    }
    return m;
}

// "// TODO (exercise NAME): ..." in lines of at most TODO_WIDTH, indented
// as the marker was.
static void print_todo(FILE *out, const char *line, const Marker *m) {
    int indent = (int)strspn(line, " \t"), column = 0;
    fprintf(out, "%.*s// TODO (exercise %d.%s):", indent, line, m->first, m->name);
    column = indent + 22 + (int)strlen(m->name);  // "// TODO (exercise " K "." NAME "):"
    for (const char *word = m->todo; *word && *word != '\n' && *word != '\r';) {
        int length = (int)strcspn(word, " \r\n");
        if (column + 1 + length > TODO_WIDTH) {
            fprintf(out, "\n%.*s//", indent, line);
            column = indent + 2;
        }
        fprintf(out, " %.*s", length, word);
        column += 1 + length;
        word += length;
        while (*word == ' ') word++;
    }
    fputc('\n', out);
}

static int visible_in(const Block *stack, int depth, int chapter) {
    int visible = 1;
    for (int i = 0; i < depth; i++) {
        const Block *b = &stack[i];
        if (b->kind == BLOCK_CHAPTERS)
            visible &= (b->first <= chapter && chapter <= b->last) || (b->again && chapter >= b->again);
        else visible &= (b->kind == BLOCK_STUB) == (b->starter != 0);
    }
    return visible;
}

static int marker_error(const char *path, int lineno, const char *message, const char *marker) {
    fprintf(stderr, "%s:%d: %s", path, lineno, message);
    if (marker) fprintf(stderr, " '//@%.*s'", (int)strcspn(marker, "\r\n"), marker);
    fprintf(stderr, "\n");
    return EXIT_MARKER;
}

// One marker: the stack grows, shrinks or changes; an exercise in its
// starter prints its TODO. Returns 0 or EXIT_MARKER.
static int apply_marker(const char *path, int lineno, const char *line, const char *text, Block *stack, int *depth,
                        int chapter, int starter, FILE *out) {
    Marker m = parse_marker(text);
    Block *top = *depth ? &stack[*depth - 1] : NULL;
    switch (m.kind) {
    case MARKER_END:
        if (!top) return marker_error(path, lineno, "'//@ end' without an open block", NULL);
        if (top->kind == BLOCK_SOLUTION)
            return marker_error(path, lineno, "an exercise ends before its '//@ stub'", NULL);
        (*depth)--;
        return 0;
    case MARKER_STUB:
        if (!top || top->kind != BLOCK_SOLUTION)
            return marker_error(path, lineno, "'//@ stub' outside an exercise, or a second one", NULL);
        top->kind = BLOCK_STUB;
        return 0;
    case MARKER_FROM:
    case MARKER_EXERCISE:
        if (*depth == MAX_DEPTH) return marker_error(path, lineno, "blocks nested too deeply at", text);
        if (m.kind == MARKER_FROM) {
            stack[(*depth)++] = (Block){BLOCK_CHAPTERS, m.first, m.last, m.again, 0, lineno};
            return 0;
        }
        int active = starter && m.first == chapter;
        if (active && visible_in(stack, *depth, chapter)) print_todo(out, line, &m);
        stack[(*depth)++] = (Block){BLOCK_SOLUTION, 0, 0, 0, active, lineno};
        return 0;
    default:
        return marker_error(path, lineno, "unknown marker", text);
    }
}

// Copies the lines of one file that belong to `chapter` (its starter
// version if `starter`) to `out`.
static int tangle_file(const char *path, int chapter, int starter, FILE *out) {
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
            if (visible_in(stack, depth, chapter)) fputs(line, out);
            continue;
        }
        status = apply_marker(path, lineno, line, marker, stack, &depth, chapter, starter, out);
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
    int starter = argc >= 2 && strcmp(argv[1], "--starter") == 0;
    char *end = NULL;
    long chapter = argc >= 3 + starter ? strtol(argv[1 + starter], &end, 10) : 0;
    if (argc < 3 + starter || *end != '\0' || chapter < 1 || chapter >= LAST_CHAPTER) {
        fprintf(stderr, "usage: tangle [--starter] N file...   (prints chapter N, N >= 1)\n");
        return EXIT_USAGE;
    }
    for (int i = 2 + starter; i < argc; i++) {
        int status = tangle_file(argv[i], (int)chapter, starter, stdout);
        if (status) return status;
    }
    return fflush(stdout) == 0 ? 0 : EXIT_READ;
}
