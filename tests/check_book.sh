#!/bin/sh
# check_book.sh - checks book.md's figures and that it names no commit.
#
# Usage: sh tests/check_book.sh [book.md]   (from the top of the repository)
#
# Figures. A figure is referenced when its path, figures/NAME, appears
# anywhere in the book (an image line ![...](figures/NAME) or the text).
# It fails when a referenced figure is missing, or when a file in figures/
# is referenced nowhere.
#
# Commits. History lives in git, not in the book, so the book names no
# commit. The rule: a word of 7 to 40 hexadecimal digits (0-9, a-f) with at
# least one letter and one digit is a commit hash when
#   - the word "commit" (or "commits") is on the same line, or
#   - git is available and it is the prefix of a commit in `git rev-list --all`.
# So a checksum the book quotes (weights=77904bb7, a CRC-32 in upper case)
# passes unless it happens to start a real commit's hash, which at 8 digits
# is about one chance in four billion per commit.
#
# Prints "ok ..." or "FAIL ..." lines, then "N passed, N failed".
# Exit codes: 0 all passed, 1 a check failed, 2 the book cannot be read.

book=${1:-book.md}
[ -r "$book" ] || { echo "check_book: cannot read $book" >&2; exit 2; }
dir=$(dirname "$book")
passed=0 failed=0
tmp=${TMPDIR:-/tmp}/check_book.$$
trap 'rm -f "$tmp".*' EXIT

# Every figure the book names must exist.
grep -o 'figures/[A-Za-z0-9._-]*[A-Za-z0-9]' "$book" | sort -u > "$tmp.named"
missing=0
while read -r f; do
  if [ ! -f "$dir/$f" ]; then echo "FAIL $book names $f, which is not there"; missing=1; fi
done < "$tmp.named"
if [ $missing = 0 ]; then echo "ok every figure $book names is in figures/ ($(wc -l < "$tmp.named" | tr -d ' '))"; passed=$((passed + 1))
else failed=$((failed + 1)); fi

# Every file in figures/ must be named by the book.
unused=0
for f in "$dir"/figures/*; do
  [ -f "$f" ] || continue
  name=figures/$(basename "$f")
  grep -qxF "$name" "$tmp.named" || { echo "FAIL $name is referenced nowhere in $book"; unused=1; }
done
if [ $unused = 0 ]; then echo "ok every file in figures/ is referenced by $book"; passed=$((passed + 1))
else failed=$((failed + 1)); fi

# No commit hashes.
bad=0
grep -n -i -w 'commits\{0,1\}' "$book" | grep -E '\b[0-9a-f]{7,40}\b' | while IFS= read -r line; do
  for w in $(printf '%s\n' "$line" | grep -o -E '\b[0-9a-f]{7,40}\b'); do
    case $w in *[a-f]*) case $w in *[0-9]*) echo "FAIL $book:${line%%:*}: $w next to the word commit";; esac;; esac
  done
done > "$tmp.hash"
if command -v git > /dev/null 2>&1 && git -C "$dir" rev-parse --git-dir > /dev/null 2>&1; then
  git -C "$dir" rev-list --all > "$tmp.commits"
  grep -n -o -E '\b[0-9a-f]{7,40}\b' "$book" | while IFS=: read -r n w; do
    case $w in *[a-f]*) case $w in *[0-9]*)
      grep -q "^$w" "$tmp.commits" && echo "FAIL $book:$n: $w is a commit of this repository";; esac;; esac
  done >> "$tmp.hash"
fi
if [ -s "$tmp.hash" ]; then sort -u "$tmp.hash"; bad=1; fi
if [ $bad = 0 ]; then echo "ok $book names no commit"; passed=$((passed + 1)); else failed=$((failed + 1)); fi

echo "$passed passed, $failed failed"
[ $failed = 0 ]
