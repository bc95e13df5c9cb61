#!/bin/sh
# exercise.sh - builds the exercise checks (tests/exercises.c) against one
# chapter file, a student's or the book's, and runs them.
#
#   sh tests/exercise.sh CHAPTER FILE [NAME...]     (no NAME: every exercise in FILE)
#
# A student's file is code that nobody has read yet, so:
# - it is copied into a fresh temporary directory under a fixed name, and
#   built and run there: its name (quotes, spaces, `$(...)`) never reaches a
#   command line, and nothing is written beside it;
# - the build and the checks each get a time limit (EXERCISE_SECONDS, default
#   60), and the checks a memory, a file-size and a process-count limit
#   (ulimit; EXERCISE_MEMORY in KiB, default 4 GiB; EXERCISE_PROCESSES,
#   default 64 beyond those the user runs already: the count is per user,
#   and root is not held to it at all);
# - the checks count only if the program says it got to its end. Its last
#   line is "checks finished TOKEN", with a token made for this run, so a file
#   that calls exit(0), crashes or loops is never taken for one that passed.
#   The lines printed before a crash are kept: the checker's output is line
#   buffered and goes to a file, not a pipe that a forked child could hold open.
# These limits keep a grading run going; they are not a sandbox (book.md,
# docs/INSTRUCTORS.md).
#
# Exit code: 0 every check asked for passes, 1 one does not, 2 no such file,
# chapter or exercise, 3 the file does not compile, 4 the checks ran out of
# time, 5 the checks crashed or exited before their end.
chapter=$1 file=$2
shift 2
seconds=${EXERCISE_SECONDS:-60}
# (the book's chapters/, or a handout's starter/: it has no chapters/)
chapters=$(ls chapters starter 2>/dev/null | sed -n 's/^chapter\([0-9][0-9]*\)\.c$/\1/p' | sort -nu | tr '\n' ' ')
case " $chapters " in
    *" $chapter "*) ;;
    *) echo "no chapter '$chapter': the exercises are in chapters ${chapters% } (N=CHAPTER.NAME, e.g. N=2.adam)"
       exit 2 ;;
esac
if [ ! -f "$file" ]; then
    echo "$file: no such file. \`make starter\` writes starter/chapter$chapter.c; or name yours with FILE=..."
    exit 2
fi

# `timeout` (GNU coreutils, and busybox) kills the whole process group when
# the time is up; where there is none, the checks run without a limit.
limit_command() { command -v timeout > /dev/null 2>&1 && echo "timeout -k 5 $seconds"; }
limit() { $(limit_command) "$@"; }

top=$(pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/exercise.XXXXXX") || { echo "cannot make a temporary directory"; exit 2; }
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
cp "$file" "$work/submission.c" || exit 2
(cd "$work" && limit ${CC:-cc} -std=c11 -O1 -Wall -Wextra -pedantic -I. -I"$top" -DCHAPTER="$chapter" \
    '-DCHAPTER_FILE="submission.c"' "$top/tests/exercises.c" -o checks -lm -pthread) > "$work/build.log" 2>&1
case $? in
    0) ;;
    124|137) echo "$file: the build took more than $seconds s"; exit 3 ;;
    *) echo "$file does not compile with the checks of chapter $chapter:"
       grep -m 10 'error' "$work/build.log"
       exit 3 ;;
esac

token=$(od -An -N8 -tx8 /dev/urandom 2>/dev/null | tr -d ' ')
[ -n "$token" ] || token=$$-$(date +%s)
# 4 GiB of address space, 100 MB a file and a few dozen processes: a runaway
# submission is stopped by the system, not by the machine running out. The
# process limit (RLIMIT_NPROC: `ulimit -u` in bash, `-p` in dash) counts all
# of the user's processes, so it is set above those already running; the
# system ignores it for root. `timeout` makes the checks
# a process group of their own, whose number is its process number, written
# down first (exec keeps it): whatever the checks forked and left running is
# killed with the group when they end.
memory=${EXERCISE_MEMORY:-4194304}
processes=$(( $(ps -u "$(id -u)" -o pid= 2>/dev/null | wc -l) + ${EXERCISE_PROCESSES:-64} ))
sh -c 'cd "$1" && echo $$ > group && ulimit -v "$3" 2>/dev/null; ulimit -f 204800 2>/dev/null
       ulimit -u "$4" 2>/dev/null || ulimit -p "$4" 2>/dev/null
       shift 4; exec "$@"' sh "$work" "$seconds" "$memory" "$processes" env EXERCISE_TOKEN="$token" $(limit_command) ./checks "$@" \
    > "$work/out.log" 2> "$work/err.log" < /dev/null
status=$?
[ -n "$(limit_command)" ] && kill -KILL "-$(cat "$work/group")" 2> /dev/null
grep -v "^checks finished $token\$" "$work/out.log"
cat "$work/err.log" >&2
if grep -q "^checks finished $token\$" "$work/out.log"; then
    exit $status
fi
case $status in
    124|137) echo "checks: timed out after $seconds s (a loop that never ends?)"; exit 4 ;;
    0|1|2|3) echo "checks: stopped before their end with exit code $status (does the code call exit()?)" ;;
    *) if [ "$status" -gt 128 ]; then echo "checks: crashed (signal $((status - 128)))"
       else echo "checks: stopped before their end with exit code $status"; fi ;;
esac
exit 5
