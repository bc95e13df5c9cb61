#!/bin/sh
# check_outputs.sh - runs the commands book.md shows with their output, and
# checks that they still print what the book says they print.
#
# Usage: sh tests/check_outputs.sh [book.md] [--slow]   (from the top of the
# repository; `make check-outputs`, or with SLOW=1 for --slow)
#
# What is checked. A block of commands and their output, written in the
# book as an indented block whose first line starts with "$ ", is checked
# when the line `<!-- output -->` stands before it (a blank line between is
# allowed). `<!-- output: slow -->` marks a block whose commands take
# minutes (a whole training run); it is checked only with --slow.
#
# How. Each "$ " line is a command; the lines after it, up to the next
# "$ " line, are what the book says it printed. Commands run with sh, one
# after another, from the top of the repository, as the book's readers run
# them. A path under /tmp/ in a command or its output is moved into
# build/outputs/tmp/, so nothing is written outside the repository but
# what the commands themselves write (plots/, as for a reader). The
# commands of one block, and the blocks, run in the book's order: a
# checkpoint one block writes, the next may read.
#
# A command passes when it exits with status 0 and the book's lines appear
# in its output in the same order (the book leaves lines out: progress
# lines, or "..." where it says so, indented or not; blank lines are not
# compared).
# What depends on the machine is masked on both sides before comparing:
# times ("12.34 s", "5336 images/s", "ETA 0:37", "seconds=42.9", "3.45
# ms", "took 1:09", and a comparison table's s/epoch and images/s
# columns), "peak memory: 252 MB", and the kernel and thread count ("avx512
# micro-kernel, 2 threads") become "# s", "# images/s" and so on. Every
# other character must be the book's: each loss, accuracy, count, checksum
# and message. (The bits do not depend on the kernel or the threads.)
#
# Prints "ok ..." or "FAIL ..." per block, then "N passed, N failed" (and
# how many slow blocks were skipped). Exit codes: 0 all passed, 1 a block
# failed, 2 the book or the data cannot be read.

book=book.md slow=0
for arg in "$@"; do
  case $arg in --slow) slow=1 ;; *) book=$arg ;; esac
done
[ -r "$book" ] || { echo "check_outputs: cannot read $book" >&2; exit 2; }
top=$(pwd)
[ -f data/t10k-labels-idx1-ubyte ] || { echo "skip: no Fashion-MNIST in data/ (make data)"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }
make -s chapter1 chapter2 chapter3 chapter4 chapter5 chapter6 chapter7 chapter8 chapter9 > /dev/null || exit 2
work=${CHECK_OUTPUTS_DIR:-$top/build/outputs}  # another directory lets two checks run at once
rm -rf "$work/tmp" "$work/blocks" && mkdir -p "$work/tmp" "$work/blocks" || exit 2

# Split the marked blocks into build/outputs/blocks/LINE.{slow,quick}, the
# indentation removed, /tmp/ moved.
awk -v dir="$work/blocks" -v tmp="$work/tmp/" '
  function finish() { if (start) close(file); marked = ""; start = 0; blanks = 0 }
  /^<!-- output(: slow)? -->$/ { finish(); marked = ($0 ~ /slow/) ? "slow" : "quick"; next }
  marked == "" { next }
  /^$/ { if (start) blanks++; next }  # a blank line inside a block belongs to it
  /^    / {
    if (!start) { start = NR; file = dir "/" NR "." marked }
    for (; blanks > 0; blanks--) print "" > file
    line = substr($0, 5); gsub("/tmp/", tmp, line)
    print line > file; next
  }
  { finish() }  # the first line of text after the block ends it
' "$book"

mask() {
  sed -E -e 's/[0-9]+(\.[0-9]+)? s( |$)/# s\2/g' -e 's/[0-9]+(\.[0-9]+)? images\/s/# images\/s/g' -e 's/ETA [0-9:]+/ETA #/g' \
    -e 's/seconds=[0-9.]+/seconds=#/g' -e 's/[0-9]+(\.[0-9]+)? ms( |$)/# ms\2/g' -e 's/peak memory: [0-9]+ MB/peak memory: # MB/g' \
    -e 's/[a-z0-9]+ micro-kernel, [0-9]+ threads?/# micro-kernel, # threads/g' -e 's/ took [0-9:]+/ took #/' \
    -e 's/^(\| [a-z0-9-]+ \| [0-9]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| )[0-9.]+ \| [0-9]+ \|/\1# | # |/'
}

# Runs $work/cmd (stdin empty, so that no command can read the book's
# block); prints why, and fails, when it exits with a status other than 0
# or the book's lines ($work/want, blank lines aside) are not all in its
# output, in order. A command the book shows failing on purpose ends with
# `; echo "exit $?"`, which prints its status and exits with 0.
run_one() {
  sh "$work/cmd" < /dev/null > "$work/out" 2>&1
  rc=$?
  if [ $rc != 0 ]; then
    echo "\`$(cat "$work/cmd")\` exited with status $rc (its output: $work/out)"
    return 1
  fi
  mask < "$work/out" | sed 's/[[:space:]]*$//' > "$work/got"
  mask < "$work/want" | sed 's/[[:space:]]*$//' > "$work/want.masked"
  awk -v wanted="$work/want.masked" '
    BEGIN { while ((getline line < wanted) > 0) if (line !~ /^ *(\.\.\.)?$/) want[++n] = line }
    k < n && $0 == want[k + 1] { k++ }
    END { if (k < n) { printf "%s", want[k + 1]; exit 1 } }' "$work/got" > "$work/missing" && return 0
  echo "\`$(cat "$work/cmd")\` did not print the book's line \"$(cat "$work/missing")\" (its output: $work/out)"
  return 1
}

passed=0 failed=0 skipped=0
for block in $(ls "$work/blocks" | sort -n); do
  line=${block%%.*} kind=${block#*.}
  if [ "$kind" = slow ] && [ $slow = 0 ]; then skipped=$((skipped + 1)); continue; fi
  # One command and its expected lines at a time.
  rm -f "$work/cmd" "$work/want"
  bad="" n=0
  while IFS= read -r text || [ -n "$text" ]; do
    case $text in
      '$ '*) [ -f "$work/cmd" ] && { bad=$(run_one) || break; }
             printf '%s\n' "${text#\$ }" > "$work/cmd"; : > "$work/want"; n=$((n + 1)) ;;
      *) [ -f "$work/cmd" ] && printf '%s\n' "$text" >> "$work/want" ;;
    esac
  done < "$work/blocks/$block"
  [ -z "$bad" ] && [ -f "$work/cmd" ] && bad=$(run_one)
  if [ -z "$bad" ]; then
    passed=$((passed + 1)); echo "ok $book:$line: $n command(s) print what the book shows"
  else
    failed=$((failed + 1)); echo "FAIL $book:$line: $bad"
  fi
done
echo "$passed passed, $failed failed$([ $skipped -gt 0 ] && echo ", $skipped slow skipped (--slow runs them)")"
[ $failed = 0 ]
