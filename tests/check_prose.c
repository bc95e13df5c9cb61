/* check_prose.c - checks that book.md's sentences stay short enough to read.

   What it is: a counter of sentences and words in one Markdown file, chapter
   by chapter. A chapter is everything from one "## " heading to the next
   (so the preface, the section for instructors and each chapter are
   measured apart). For each it prints the number of sentences, the mean
   sentence length in words, and how many sentences are over LONG words,
   and it fails when the mean is over MAX_MEAN words or more than
   MAX_LONG_PERCENT per cent of the sentences are over LONG words.

   How a sentence is counted:
   - Only prose is read. Skipped: headings (lines starting with '#'),
     table rows (starting with '|'), HTML comments (starting with "<!--"),
     image lines (starting with "!["), horizontal rules, and code: fenced
     blocks (between lines starting with "```") and indented blocks (a line
     indented by four spaces or a tab that follows a blank line, with the
     indented and blank lines after it).
   - A paragraph is a run of prose lines between blank lines; a list item
     ("- ", "* ", "1. ") starts a new paragraph. A paragraph's end always
     ends a sentence, so a caption or a list item without a full stop is a
     sentence too.
   - Inside a paragraph, a sentence ends at '.', '?' or '!' followed (after
     any closing ')', '"', '*', '_' or "'") by white space or the end of the
     paragraph; a colon or a semicolon does not end one. Full stops inside
     inline code (between backquotes) do not count, nor do the ones of
     "e.g.", "i.e.", "etc.", "vs." and "cf.", nor those of "...".
   - A word is a run of non-blank characters holding at least one letter or
     digit; so "--epochs", "1e-3" and "(B, H, W, C)" count, and "-", "=" or
     "|" alone do not.

   What it is not: a grammar checker. It cannot say whether a short sentence
   is a clear one; it only catches the long ones a reader stumbles on.

   Usage:  check_prose [--long] book.md
   With --long it also prints every sentence over LONG words, with its
   line, to find the ones to split.
   Exit codes: 0 every chapter within the limits, 1 a chapter over them,
   2 usage, or a file that cannot be read.

   Portable C11: the C library only, no POSIX. */

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_FAILED = 1, EXIT_USAGE = 2 };
enum { MAX_LINE = 4096, MAX_PARAGRAPH = 1 << 16, MAX_NAME = 128 };
enum { MAX_MEAN = 25, LONG = 40, MAX_LONG_PERCENT = 10 };

typedef struct {
    char name[MAX_NAME];
    int sentences, words, long_sentences;
} Chapter;

static int print_long = 0;

static int is_blank_line(const char *s) {
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
    return *s == '\0';
}

static int is_indented(const char *s) { return strncmp(s, "    ", 4) == 0 || s[0] == '\t'; }

static int is_list_item(const char *s) {
    while (*s == ' ') s++;
    if ((s[0] == '-' || s[0] == '*' || s[0] == '+') && s[1] == ' ') return 1;
    if (!isdigit((unsigned char)*s)) return 0;
    while (isdigit((unsigned char)*s)) s++;
    return (s[0] == '.' || s[0] == ')') && s[1] == ' ';
}

static int is_rule(const char *s) {
    int n = 0;
    for (; *s; s++) {
        if (*s == '-' || *s == '*' || *s == '_') n++;
        else if (*s != ' ' && *s != '\n' && *s != '\r') return 0;
    }
    return n >= 3;
}

static int is_word(const char *start, const char *end) {
    for (const char *p = start; p < end; p++)
        if (isalnum((unsigned char)*p)) return 1;
    return 0;
}

// Whether the full stop at text[i] ends an abbreviation that does not end a sentence.
static int is_abbreviation(const char *text, size_t i) {
    static const char *const abbreviations[] = {"e.g.", "i.e.", "etc.", "vs.", "cf."};
    for (size_t k = 0; k < sizeof abbreviations / sizeof *abbreviations; k++) {
        size_t n = strlen(abbreviations[k]);
        if (i + 1 >= n && strncmp(text + i + 1 - n, abbreviations[k], n) == 0 &&
            (i + 1 == n || !isalpha((unsigned char)text[i - n]))) return 1;
    }
    return 0;
}

static void end_sentence(Chapter *c, int words, int line, const char *start, const char *end) {
    if (words == 0) return;
    c->sentences++;
    c->words += words;
    if (words > LONG) {
        c->long_sentences++;
        if (print_long) printf("  line %d, %d words: %.*s\n", line, words, (int)(end - start), start);
    }
}

/* Counts the sentences of one paragraph (its lines joined by spaces); line
   is the book's line where it starts. */
static void count_paragraph(Chapter *c, const char *text, int line) {
    size_t n = strlen(text);
    int words = 0, in_code = 0;
    size_t word_start = 0, sentence_start = 0;
    int in_word = 0;
    for (size_t i = 0; i <= n; i++) {
        char ch = text[i];
        int blank = ch == '\0' || ch == ' ' || ch == '\t';
        if (!blank && !in_word) {
            in_word = 1;
            word_start = i;
        }
        if (blank && in_word) {
            in_word = 0;
            if (is_word(text + word_start, text + i)) words++;
        }
        if (ch == '`') in_code = !in_code;
        if (in_code || (ch != '.' && ch != '?' && ch != '!')) continue;
        if (ch == '.' && ((i > 0 && text[i - 1] == '.') || text[i + 1] == '.')) continue;  // "..."
        if (ch == '.' && is_abbreviation(text, i)) continue;
        size_t j = i + 1;
        while (text[j] == ')' || text[j] == '"' || text[j] == '*' || text[j] == '_' || text[j] == '\'') j++;
        if (text[j] != '\0' && text[j] != ' ') continue;
        if (in_word) {  // the word the full stop ends
            in_word = 0;
            if (is_word(text + word_start, text + j)) words++;
        }
        end_sentence(c, words, line, text + sentence_start, text + j);
        words = 0;
        i = j - 1;
        sentence_start = j + (text[j] == ' ');
    }
    end_sentence(c, words, line, text + sentence_start, text + n);
}

static int report(const Chapter *c) {
    if (c->sentences == 0) return 0;
    double mean = (double)c->words / c->sentences;
    double percent = 100.0 * c->long_sentences / c->sentences;
    int bad = mean > MAX_MEAN || percent > MAX_LONG_PERCENT;
    printf("%s %s: %d sentences, mean %.1f words, %d over %d words (%.1f%%)\n", bad ? "FAIL" : "ok", c->name,
           c->sentences, mean, c->long_sentences, LONG, percent);
    return bad;
}

int main(int argc, char **argv) {
    int arg = 1;
    if (argc == 3 && strcmp(argv[1], "--long") == 0) {
        print_long = 1;
        arg = 2;
    }
    if (argc != arg + 1 || argv[arg][0] == '-') {
        fprintf(stderr, "usage: check_prose [--long] book.md\n"
                        "fails when a chapter's mean sentence is over %d words, or more than %d%% of its\n"
                        "sentences are over %d words; --long lists those sentences\n"
                        "exit codes: 0 within the limits, 1 over them, 2 usage or a file that cannot be read\n",
                MAX_MEAN, MAX_LONG_PERCENT, LONG);
        return EXIT_USAGE;
    }
    FILE *f = fopen(argv[arg], "r");
    if (!f) {
        fprintf(stderr, "check_prose: cannot open %s: %s\n", argv[arg], strerror(errno));
        return EXIT_USAGE;
    }
    static char line[MAX_LINE + 2], paragraph[MAX_PARAGRAPH];
    size_t length = 0;
    int line_number = 0, paragraph_line = 0, failed = 0, chapters = 0;
    int fenced = 0, code = 0, previous_blank = 1;
    Chapter chapter = {"(before the first chapter)", 0, 0, 0};
    for (;;) {
        int more = fgets(line, sizeof line, f) != NULL;
        if (more) {
            line_number++;
            size_t n = strlen(line);
            if (n > 0 && line[n - 1] == '\n') line[--n] = '\0';
            else if (!feof(f)) {
                fprintf(stderr, "check_prose: %s:%d: line longer than %d characters\n", argv[arg], line_number,
                        MAX_LINE);
                fclose(f);
                return EXIT_USAGE;
            }
            if (n > 0 && line[n - 1] == '\r') line[--n] = '\0';
        }
        int blank = more && is_blank_line(line);
        int prose = more && !blank;
        if (more && strncmp(line, "```", 3) == 0) {
            fenced = !fenced;
            prose = 0;
        } else if (fenced) prose = 0;
        else if (more) {
            if (code && (blank || is_indented(line))) prose = 0;
            else code = 0;
            if (!code && previous_blank && is_indented(line) && !is_list_item(line)) code = 1, prose = 0;
            if (line[0] == '#' || line[0] == '|' || strncmp(line, "<!--", 4) == 0 || strncmp(line, "![", 2) == 0 ||
                is_rule(line)) prose = 0;
        }
        // A paragraph ends at anything that is not prose, or at a list item.
        if (length > 0 && (!prose || is_list_item(line))) {
            paragraph[length] = '\0';
            count_paragraph(&chapter, paragraph, paragraph_line);
            length = 0;
        }
        if (!more || strncmp(line, "## ", 3) == 0) {
            failed += report(&chapter);
            chapters += chapter.sentences > 0;
            if (!more) break;
            memset(&chapter, 0, sizeof chapter);
            snprintf(chapter.name, sizeof chapter.name, "%.*s", MAX_NAME - 1, line + 3);
        }
        if (prose) {
            const char *s = line;
            while (*s == ' ') s++;
            size_t n = strlen(s);
            if (length + n + 2 >= sizeof paragraph) {
                fprintf(stderr, "check_prose: %s:%d: paragraph longer than %d characters\n", argv[arg],
                        line_number, MAX_PARAGRAPH);
                fclose(f);
                return EXIT_USAGE;
            }
            if (length == 0) paragraph_line = line_number;
            else paragraph[length++] = ' ';
            memcpy(paragraph + length, s, n);
            length += n;
        }
        if (more) previous_blank = blank;
    }
    if (ferror(f)) {
        fprintf(stderr, "check_prose: cannot read %s: %s\n", argv[arg], strerror(errno));
        fclose(f);
        return EXIT_USAGE;
    }
    fclose(f);
    printf("%d chapters, %d over the limits (mean at most %d words, at most %d%% of sentences over %d)\n", chapters,
           failed, MAX_MEAN, MAX_LONG_PERCENT, LONG);
    return failed ? EXIT_FAILED : 0;
}
