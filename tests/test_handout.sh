#!/bin/sh
# test_handout.sh - `make handout`, from a clean clone of the committed tree:
# what a class gets, and that its checks run there. Ends with "N passed, N
# failed".
set -u
cd "$(dirname "$0")/.." || exit 1
passed=0 failed=0
check() { if eval "$2"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $1"; fi; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/handout.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
git clone -q . "$tmp/clone" || { echo "FAIL git clone"; echo "0 passed, 1 failed"; exit 1; }
(cd "$tmp/clone" && make -s handout HANDOUT="$tmp/out") > "$tmp/make.log" 2>&1
check "make handout runs in a clean clone" "[ \$? = 0 ]"
out=$tmp/out
for f in book.md Makefile get-data.sh tests/exercises.c tests/answers.c tests/exercise.sh tests/grade.sh \
         starter/chapter1.c starter/chapter9.c figures/fashion-samples.png; do
    check "the handout has $f" "[ -s $out/$f ]"
done
check "the handout has every figure" "[ \$(ls $out/figures | wc -l) = \$(ls figures | wc -l) ]"
check "the handout has no chapters/ and no src/" "[ ! -e $out/chapters ] && [ ! -e $out/src ]"
# No solution of a chapter's own exercises: a line of chapter 9's (which no
# starter has), and of chapters 8 and 1, which their own starters must not
# have (later starters do: each leaves out only its own chapter's exercises).
check "no file of the handout holds a solution of chapter 9" \
    "! grep -rqF '(per_class && taken[c] == per_class)) continue;' $out"
check "starter/chapter8.c does not hold chapter 8's solutions" \
    "! grep -qF 'gate[c] = 1.0f / (1.0f + expf(-sum));' $out/starter/chapter8.c && grep -qF 'gate[c] = 1.0f / (1.0f + expf(-sum));' $out/starter/chapter9.c"
check "starter/chapter1.c does not hold chapter 1's solutions" \
    "! grep -qF 's->m2 += before * (x - s->mean);' $out/starter/chapter1.c && grep -qF 's->m2 += before * (x - s->mean);' $out/starter/chapter2.c"
(cd "$out" && make -s check-exercise N=1.welford) > "$tmp/check.log" 2>&1
check "make check-exercise N=1.welford in the handout says not yet" "grep -q '^exercise 1.welford: not yet' $tmp/check.log"
(cd "$out" && make -s check-answer N=2.multiply-adds A=1) > "$tmp/answer.log" 2>&1
check "make check-answer runs in the handout" "grep -q 'not yet' $tmp/answer.log"
(cd "$out" && make -s chapter1 CFLAGS=-O0) > "$tmp/build.log" 2>&1
check "the handout's Makefile builds a starter" "[ -x $out/chapter1 ]"
(cd "$tmp/clone" && make -s handout HANDOUT="$tmp/out") > "$tmp/again.log" 2>&1
check "make handout does not write into a handout that is there" "[ \$? != 0 ] && grep -q 'not empty' $tmp/again.log"
echo "$passed passed, $failed failed"
[ $failed = 0 ]
