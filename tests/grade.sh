#!/bin/sh
# grade.sh - every exercise check on every student file in a directory, as a table.
#
#   sh tests/grade.sh DIR        (or: make grade DIR=submissions)
#
# A file's chapter is read from its first line ("/* chapterN.c - ...", as
# every chapter and starter begins), or else from a "chapterN" in its name.
# Nothing in DIR is changed. Each file is built and checked by
# tests/exercise.sh, in a temporary directory of its own, with a time limit
# (EXERCISE_SECONDS, default 60): a file that loops is reported "timed out",
# one that crashes "crashed (signal N)" with the checks it had passed, one
# that exits in the middle "stopped", and the next file is graded all the same.
dir=${1:?usage: sh tests/grade.sh DIR}
[ -d "$dir" ] || { echo "$dir: not a directory"; exit 2; }
printf '%-36s %-8s %-8s %s\n' file chapter passed "not yet"
for file in "$dir"/*.c; do
    [ -f "$file" ] || continue
    chapter=$(head -n 1 "$file" | sed -n 's|^/\* chapter\([0-9][0-9]*\)\.c .*|\1|p')
    [ -n "$chapter" ] || chapter=$(basename "$file" | sed -n 's|.*chapter\([0-9][0-9]*\).*|\1|p')
    if [ -z "$chapter" ]; then
        printf '%-36s %-8s %s\n' "$file" "?" "no chapter: its first line or its name must say chapterN"
        continue
    fi
    out=$(sh tests/exercise.sh "$chapter" "$file" 2>&1)
    status=$?
    case $status in
        2) printf '%-36s %-8s %s\n' "$file" "$chapter" "no chapter $chapter"; continue ;;
        3) printf '%-36s %-8s %s\n' "$file" "$chapter" "does not compile"; continue ;;
    esac
    # Every exercise of the chapter counts, also those a crash left unchecked.
    # (counted from the table of tests/exercises.c, which a handout has too;
    # a row marked "// chapters A to B" counts up to chapter B only)
    total=$(sed -n 's/^ *{"\([0-9][0-9]*\)\.[^"]*", check_[^}]*}, *\(\/\/ chapters [0-9]* to \([0-9]*\)\)\{0,1\}$/\1 \3/p' \
              tests/exercises.c | awk '$1 <= '"$chapter"' && ($2 == "" || '"$chapter"' <= $2)' | wc -l | tr -d ' ')
    passed=$(printf '%s\n' "$out" | grep -c '^exercise .*: ok$')
    failing=$(printf '%s\n' "$out" | sed -n 's|^exercise \([^:]*\): not yet.*|\1|p' | tr '\n' ' ')
    why=$(printf '%s\n' "$out" | sed -n 's|^checks: \(timed out\).*|\1|p; s|^checks: \(crashed (signal [0-9]*)\).*|\1|p; s|^checks: \(stopped\) before their end with exit code \([0-9]*\).*|\1 (exit \2)|p')
    printf '%-36s %-8s %-8s %s\n' "$file" "$chapter" "$passed/$total" "${why:+$why; }${failing:--}"
done
