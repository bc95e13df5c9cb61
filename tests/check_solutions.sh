#!/bin/sh
# check_solutions.sh - no checked exercise's solution is printed in the book.
#
#   sh tests/check_solutions.sh [BOOK]        (default book.md; run by make test)
#
# The solutions are the lines of src/*.c between "//@ exercise" and
# "//@ stub" (src/tangle.c aside: its comment shows the markers). Lines are compared with their spaces trimmed and runs of
# spaces made one, blank lines left out, on both sides. The rule: no three
# consecutive lines of a solution (all of it, if it has fewer) may appear
# as consecutive lines of the book, unless those lines hold fewer than 40
# characters other than spaces (three closing braces, a `(void)g;`: too
# common to mean a copy). A solution of under 40 such characters in all is
# excluded, and named as excluded. A second run plants one solution in a
# copy of the book, to prove that a copy is caught.
# Ends with "N passed, N failed".
cd "$(dirname "$0")/.." || exit 1
book=${1:-book.md}

scan() {  # BOOK: one line per solution, "ok NAME", "copied NAME: LINE" or "excluded NAME"
    awk -v W=3 -v MIN=40 '
        function norm(t) { gsub(/[ \t\r]+/, " ", t); sub(/^ /, "", t); sub(/ $/, "", t); return t }
        function weight(t) { gsub(/ /, "", t); return length(t) }
        FNR == 1 { file++ }
        file == 1 {
            t = norm($0); if (t == "") next
            book[++n] = t
            for (w = 1; w <= W && w <= n; w++) {
                key = book[n - w + 1]; for (k = n - w + 2; k <= n; k++) key = key "\n" book[k]
                seen[key] = 1
            }
            next
        }
        /^[ \t]*\/\/@ exercise / { inside = 1; name = FILENAME ":" FNR " " $3 "." $4; sub(/:$/, "", name); m = 0; next }
        /^[ \t]*\/\/@ stub/ && inside {
            inside = 0; total = 0
            for (i = 1; i <= m; i++) total += weight(sol[i])
            if (total < MIN) { print "excluded " name; next }
            w = m < W ? m : W; hit = ""
            for (i = 1; i + w - 1 <= m && hit == ""; i++) {
                key = sol[i]; chars = weight(sol[i])
                for (k = i + 1; k < i + w; k++) { key = key "\n" sol[k]; chars += weight(sol[k]) }
                if (chars >= MIN && (key in seen)) hit = sol[i]
            }
            if (hit != "") print "copied " name ": " hit; else print "ok " name
            next
        }
        inside { t = norm($0); if (t != "") sol[++m] = t }
    ' "$1" $(ls src/*.c | grep -v "^src/tangle.c$")
}

passed=0 failed=0
scan "$book" > build/solutions.log 2>&1 || { echo "FAIL the scan did not run"; failed=1; }
while IFS= read -r line; do
    case $line in
        ok*) passed=$((passed + 1)) ;;
        excluded*) echo "$line (under 40 characters)" ;;
        *) failed=$((failed + 1)); echo "FAIL $line: book.md prints this solution; print a variation, or change the exercise" ;;
    esac
done < build/solutions.log
[ "$(grep -c '^ok' build/solutions.log)" -ge 14 ] && passed=$((passed + 1)) || { failed=$((failed + 1)); echo "FAIL fewer than 14 solutions were scanned"; }

# The rule catches a copy: three lines of the first solution of src/idx.c,
# planted in a copy of the book, indented as a listing.
mkdir -p build
planted=build/book-planted.md
{ cat "$book"; echo; awk '/\/\/@ exercise/ { on = 1; next } /\/\/@ stub/ { exit } on' src/idx.c | sed -n '2,4p' | sed 's/^/    /'; } > "$planted"
if scan "$planted" | grep -q '^copied src/idx.c'; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL a planted solution went unnoticed"; fi
echo "$passed passed, $failed failed"
[ $failed = 0 ]
