#!/bin/sh
# exercise.sh - builds the exercise checks (tests/exercises.c) against one
# chapter file, a student's or the book's, and runs them.
#
#   sh tests/exercise.sh CHAPTER FILE [NAME...]     (no NAME: every exercise in FILE)
#
# Exit code: 0 every check asked for passes, 1 one does not, 2 no such file
# or exercise, 3 the file does not compile. The student's file is only read.
chapter=$1 file=$2
shift 2
if [ ! -f "$file" ]; then
    echo "$file: no such file. \`make starter\` writes starter/chapter$chapter.c; or name yours with FILE=..."
    exit 2
fi
mkdir -p build/exercises
bin=build/exercises/$(printf '%s' "$file" | tr -c 'A-Za-z0-9\n' '_')
if ! ${CC:-cc} -std=c11 -O1 -Wall -Wextra -pedantic -I. -DCHAPTER="$chapter" "-DCHAPTER_FILE=\"$file\"" \
        tests/exercises.c -o "$bin" -lm -pthread > "$bin.log" 2>&1; then
    echo "$file does not compile with the checks of chapter $chapter:"
    grep -m 10 'error' "$bin.log"
    exit 3
fi
"$bin" "$@"
