#!/bin/sh
# test_figures.sh - tools/figures.c (make figures) on small data: the
# book's pictures of data are still made, whole, and the same every time.
#
#   1. build/make_figures --quick writes the four PNGs into a directory of the
#      test's, exits 0, and lists each file it wrote.
#   2. Each is a whole PNG of the size the book's copy has, read back by
#      tests/check_png.c: signature, every chunk's CRC-32, IHDR, IDAT
#      inflated to exactly its rows, Adler-32.
#   3. A second run writes the same bytes (the pictures follow from the
#      seed alone).
#   4. The dropout masks, which follow from the seed alone, are the book's
#      figure byte for byte.
#   5. figures.c's deflate inflates back to its input, and its tables are
#      RFC 1951's (check_png --self-test).
# --quick trains a few steps on a few hundred images: seconds, not minutes.
# Needs Fashion-MNIST (skips without). Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
if [ ! -f data/t10k-labels-idx1-ubyte ]; then
    echo "skip: no Fashion-MNIST"; echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
make -s build/make_figures build/check_png > /dev/null || exit 1
work=build/figures-test
rm -rf "$work" && mkdir -p "$work" || exit 1
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { if eval "$2"; then pass; echo "ok $1"; else fail "$1"; return 1; fi; }
# Each picture and its size: the same as figures/ holds (the layout does
# not depend on how much was trained).
pictures="bn-histograms.png 750 432
dropout-masks.png 408 538
early-stopping-curves.png 730 312
ann-weights.png 482 274"

for run in a b; do
    build/make_figures --quick --out "$work/$run" --checkpoints "$work/checkpoints" > "$work/$run.log" 2>&1
    check "build/make_figures --quick (run $run) exits 0" "[ $? = 0 ]" || tail -n 5 "$work/$run.log"
done
echo "$pictures" | while read -r name width height; do
    grep -q "^wrote $work/a/$name ($width""x$height, " "$work/a.log" || echo "FAIL it does not list $name, ${width}x$height"
    for file in "$work/a/$name" "figures/$name"; do
        build/check_png "$file" "$width" "$height" > "$work/one.out" ||
            { echo "FAIL check_png rejects $file:"; grep -v '^ok' "$work/one.out"; }
    done
    cmp -s "$work/a/$name" "$work/b/$name" || echo "FAIL two runs wrote different bytes to $name"
done > "$work/pictures.out"
check "each picture listed, whole, of its size, the same in two runs; figures/'s copies whole" "[ ! -s $work/pictures.out ]" ||
    cat "$work/pictures.out"
check "nothing else written" "[ \$(ls $work/a | wc -l) = 4 ]"
# The masks depend on the seed alone, not on how far --quick trains, so the
# quick picture is the book's, byte for byte.
check "--quick draws figures/dropout-masks.png byte for byte" "cmp -s $work/a/dropout-masks.png figures/dropout-masks.png"
build/check_png --self-test > "$work/self.out"; rc=$?
check "deflate_fixed inflates back to its input, and its tables are RFC 1951's ($(grep -c '^ok' "$work/self.out") cases)" "[ $rc = 0 ]" || cat "$work/self.out"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
