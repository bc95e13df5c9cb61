#!/bin/sh
# test_exercises.sh - the classroom machinery: starter chapters, exercise
# checks, quick-check answers and the grading table.
#
# Every starter chapter must compile without a warning (gcc, and clang where
# it is installed); the exercise checks must all pass on the full chapters
# and, on each starter, fail for exactly the exercises of that chapter;
# `make starter` must never overwrite a student's file, nor write through a
# link planted beside it; the grading table must say the right thing for a
# good, a starter, a broken and an unnamed file, and for files that exit,
# crash, loop, fork or carry quotes in their names. Ends with "N passed, N
# failed".
set -u
cd "$(dirname "$0")/.." || exit 1
work=build/classroom
rm -rf "$work" && mkdir -p "$work/class" || exit 1

passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { if eval "$2"; then pass; else fail "$1"; fi; }

make -s starter STARTER_DIR="$work/starter" > "$work/starter.log" 2>&1 || fail "make starter"
chapters=$(ls chapters | sed -n 's/^chapter\([0-9]*\)\.c$/\1/p' | sort -n)
compilers="${CC:-cc} $(command -v clang >/dev/null 2>&1 && echo clang)"

for n in $chapters; do
    starter=$work/starter/chapter$n.c
    check "starter/chapter$n.c has a TODO for each of its exercises" \
        "[ \"\$(grep -c 'TODO (exercise $n\.' $starter)\" = \"\$(grep -c '//@ exercise $n ' src/*.c | awk -F: '{ s += \$2 } END { print s }')\" ]"
    # (clang's warnings all come from its front end: checking the syntax is enough)
    for cc in $compilers; do
        case $cc in
            clang) how="-fsyntax-only" ;;
            *) how="-O1 -o $work/starter$n-$(basename $cc) -lm -pthread" ;;
        esac
        check "starter chapter $n compiles without a warning under $cc" \
            "$cc -std=c11 -Wall -Wextra -pedantic -Werror $starter $how > $work/cc.log 2>&1"
    done
    sh tests/exercise.sh "$n" "chapters/chapter$n.c" > "$work/full$n.log" 2>&1
    check "every exercise check passes on chapters/chapter$n.c" "[ \$? = 0 ] && ! grep -q 'not yet' $work/full$n.log"
    sh tests/exercise.sh "$n" "$starter" > "$work/starter$n.log" 2>&1
    status=$?
    # (an exercise may have more than one region, as 4.avg-pool has: its
    # forward and its backward pass; each is named once here)
    expected=$(grep -h '//@ exercise [0-9]* ' src/*.c | awk '$3 == '"$n"' { sub(":", "", $4); print $3 "." $4 }' | sort -u | tr '\n' ' ')
    got=$(sed -n 's/^exercise \([^:]*\): not yet.*/\1/p' "$work/starter$n.log" | sort | tr '\n' ' ')
    check "on the starter of chapter $n exactly its exercises fail ($expected)" "[ $status = 1 ] && [ \"$got\" = \"$expected\" ]"
done

# make starter keeps what is there.
echo "/* my work */" >> "$work/starter/chapter2.c"
make -s starter STARTER_DIR="$work/starter" > "$work/again.log" 2>&1
check "make starter does not overwrite a student's file" "tail -n 1 $work/starter/chapter2.c | grep -q 'my work' && grep -q 'exists: kept' $work/again.log"

# make starter writes its temporaries anew, never through a planted link.
planted=$work/planted
mkdir -p "$planted" && echo "not yours" > "$work/outside" && ln -s "$PWD/$work/outside" "$planted/chapter1.c.tmp"
make -s starter STARTER_DIR="$planted" > "$work/planted.log" 2>&1
check "make starter does not write through a link planted at its temporary's name" \
    "[ \"\$(cat $work/outside)\" = 'not yours' ] && [ -f $planted/chapter1.c ] && [ ! -L $planted/chapter1.c ]"

# One exercise at a time, and an unknown one.
make -s check-exercise N=2.adam FILE=chapters/chapter2.c > "$work/one.log" 2>&1
check "check-exercise runs one exercise" "[ \$? = 0 ] && [ \"\$(cat $work/one.log)\" = 'exercise 2.adam: ok' ]"
make -s check-exercise N=2.adma FILE=chapters/chapter2.c > "$work/typo.log" 2>&1
check "an unknown exercise is named and the known ones listed" "grep -q \"no exercise '2.adma'.*2.adam\" $work/typo.log"

# Quick-check answers.
make -s check-answer N=5.no-bias A=468,778 > "$work/answer.log" 2>&1
check "a right answer" "[ \$? = 0 ] && grep -q right $work/answer.log"
make -s check-answer N=5.no-bias A=871978 > "$work/answer.log" 2>&1
check "a wrong answer (the old question's), not revealed" "[ \$? != 0 ] && grep -q 'not yet' $work/answer.log && ! grep -q 468778 $work/answer.log"
# The quick checks' answers are printed nowhere in the book.
for a in 234,752 235,146 19,468,800 468,778; do
    plain=$(echo $a | tr -d ,)
    check "book.md does not print the quick-check answer $a" "! grep -q -e '$a' -e '$plain' book.md"
done

# The grading table.
cp chapters/chapter2.c "$work/class/alice.c"
cp "$work/starter/chapter6.c" "$work/class/bob.c"
printf '/* chapter3.c - broken */\nint main(void) { return x; }\n' > "$work/class/carol.c"
printf 'int main(void) { return 0; }\n' > "$work/class/dan.c"
make -s grade DIR="$work/class" > "$work/grade.log" 2>&1
check "grade: a full chapter passes all" "grep -q 'alice.c  *2  *4/4  *-' $work/grade.log"
check "grade: a starter fails its chapter's exercises" "grep -q 'bob.c  *6  *8/10  *6.crc32 6.lr-schedule' $work/grade.log"
check "grade: a broken file" "grep -q 'carol.c  *3  *does not compile' $work/grade.log"
check "grade: a file with no chapter" "grep -q 'dan.c  *?' $work/grade.log"

# Submissions that fight back: each is graded for what it is, the table is
# finished, and nothing is left running. Made from the book's chapters by
# putting one statement at the start of an exercise's function.
hostile=$work/hostile
mkdir -p "$hostile"
inject() {  # FUNCTION-START STATEMENT FILE: STATEMENT after the first "{" that ends a line of FUNCTION
    awk -v fn="$1" -v code="$2" 'index($0, fn) == 1 { armed = 1 } { print } armed && /\{ *$/ { print code; armed = 0 }' "$3"
}
inject 'void softmax_cross_entropy_backward(' '    exit(0);' chapters/chapter2.c > "$hostile/exits_chapter2.c"
inject 'void softmax_cross_entropy_backward(' '    *(volatile int *)0 = 1;' chapters/chapter2.c > "$hostile/crashes_chapter2.c"
inject 'void running_stats_add(' '    for (volatile int forever = 1; forever;) {}' chapters/chapter1.c > "$hostile/loops_chapter1.c"
inject 'void running_stats_add(' '    if (fork() == 0) { sleep(600); _exit(0); }' chapters/chapter1.c > "$hostile/forks_chapter1.c"
# Allocates without end (the memory limit stops it: malloc fails, and the
# touch of the NULL it returns crashes), and writes without end (the
# file-size limit stops it: SIGXFSZ).
inject 'void running_stats_add(' '    for (;;) { char *p = malloc(1 << 20); memset(p, 1, 1 << 20); }' chapters/chapter1.c > "$hostile/eats_chapter1.c"
inject 'void running_stats_add(' '    { FILE *f = fopen("big", "wb"); static char block[1 << 16]; for (;;) fwrite(block, 1, sizeof block, f); }' chapters/chapter1.c > "$hostile/fills_chapter1.c"
cp chapters/chapter2.c "$hostile/q\"uote \$(touch PWNED)_chapter2.c"
rm -f PWNED
for f in exits_chapter2 crashes_chapter2 loops_chapter1 forks_chapter1 eats_chapter1 fills_chapter1; do
    check "the hostile submission $f was made (one line added)" \
        "[ \$(diff chapters/chapter\${f#*_chapter}.c $hostile/$f.c | grep -c '^>') = 1 ]"
done
started=$(date +%s)
EXERCISE_SECONDS=10 EXERCISE_MEMORY=1048576 make -s grade DIR="$hostile" > "$work/hostile.log" 2>&1
check "grade finishes in bounded time (a loop is cut at EXERCISE_SECONDS)" "[ \$(( \$(date +%s) - started )) -lt 180 ]"
check "grade: exit(0) inside a check does not pass it" "grep -q 'exits_chapter2.c  *2  *2/4  *stopped (exit 0)' $work/hostile.log"
check "grade: a crash is reported, with the checks passed before it" "grep -q 'crashes_chapter2.c  *2  *2/4  *crashed (signal 11)' $work/hostile.log"
check "grade: a loop times out, and the next file is graded" "grep -q 'loops_chapter1.c  *1  *0/2  *timed out' $work/hostile.log && grep -q 'q.uote' $work/hostile.log"
check "grade: a fork is graded, and its child killed" "grep -q 'forks_chapter1.c  *1  *2/2  *-' $work/hostile.log && ! pgrep -f 'sleep(600)' > /dev/null && [ -z \"\$(ps -eo args | grep '^./checks\$')\" ]"
check "grade: endless allocation is stopped by the memory limit, not the clock" "grep -q 'eats_chapter1.c  *1  *0/2  *crashed (signal' $work/hostile.log"
check "grade: an endless file is stopped by the file-size limit (SIGXFSZ)" "grep -q 'fills_chapter1.c  *1  *0/2  *crashed (signal 25)' $work/hostile.log && [ ! -e $work/big ]"
check "grade: a name with quotes and \$(...) is graded, and never run" "grep -q 'PWNED)_chapter2.c  *2  *4/4  *-' $work/hostile.log && [ ! -e PWNED ]"
sh tests/exercise.sh 2 "$hostile/exits_chapter2.c" 2.softmax-backward > "$work/exits.log" 2>&1
check "check-exercise: exit(0) is exit code 5, not 0" "[ \$? = 5 ] && grep -q 'stopped before their end with exit code 0' $work/exits.log"

# Messages that name the real mistake.
make -s check-exercise N=10.adam > "$work/nine.log" 2>&1
check "N=10.adam: no chapter 10, and no advice to open starter/chapter10.c" "[ \$? != 0 ] && grep -q \"no chapter '10'\" $work/nine.log && ! grep -q 'chapter10.c' $work/nine.log"
make -s check-exercise N=10.adam FILE=chapters/chapter2.c > "$work/nine.log" 2>&1
check "a bad N with a good FILE is not 'does not compile'" "[ \$? != 0 ] && grep -q \"no chapter '10'\" $work/nine.log && ! grep -q 'does not compile' $work/nine.log"

[ $failed = 0 ] || cat "$work/grade.log" "$work/hostile.log"
echo "$passed passed, $failed failed"
[ $failed = 0 ]
