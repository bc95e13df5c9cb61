#!/bin/sh
# grade.sh - every exercise check on every student file in a directory, as a table.
#
#   sh tests/grade.sh DIR        (or: make grade DIR=submissions)
#
# A file's chapter is read from its first line ("/* chapterN.c - ...", as
# every chapter and starter begins), or else from a "chapterN" in its name.
# Nothing in DIR is changed.
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
    case $? in
        3) printf '%-36s %-8s %s\n' "$file" "$chapter" "does not compile"; continue ;;
    esac
    total=$(printf '%s\n' "$out" | grep -c '^exercise ')
    passed=$(printf '%s\n' "$out" | grep -c '^exercise .*: ok$')
    failing=$(printf '%s\n' "$out" | sed -n 's|^exercise \([^:]*\): not yet.*|\1|p' | tr '\n' ' ')
    printf '%-36s %-8s %-8s %s\n' "$file" "$chapter" "$passed/$total" "${failing:--}"
done
