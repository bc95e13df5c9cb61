#!/bin/sh
# arm64.sh - every chapter cross-compiled for arm64 (aarch64) and run under
# qemu-user: no SIMD kernel there, the portable one, and never an illegal
# instruction. Needs gcc-aarch64-linux-gnu and qemu-user (Debian packages;
# .ci/run installs them); skips without them.
#
# 1. Every chapter builds for arm64 without a warning.
# 2. The test programs that finish in a minute or so under emulation run
#    there: test_idx, test_worked_example and test_gemm (every kernel the
#    build has, against the naive one; 1, 2 and 3 threads bit for bit).
#    test_checkpoint passes there too but takes a minute, which the suite's
#    time cannot spare (run it by hand: see book.md, Appendix A);
#    test_ann, test_autodiff, test_conv and test_bn train real models and
#    each takes more than 3 minutes under qemu, so they run natively only.
# 3. Short real runs of chapters 2 and 4 on a cut-down data set print the
#    same `result` line as on this machine (seconds aside); chapter 6's
#    arm64 runs are cells of tests/determinism.sh.
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
if ! command -v aarch64-linux-gnu-gcc > /dev/null 2>&1 || ! command -v qemu-aarch64 > /dev/null 2>&1; then
    echo "skip: no aarch64-linux-gnu-gcc or qemu-aarch64 (apt-get install gcc-aarch64-linux-gnu qemu-user)"
    echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
work=build/arm64
mkdir -p "$work"
qemu="qemu-aarch64 -L /usr/aarch64-linux-gnu"
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

for c in chapters/chapter*.c; do
    n=$(basename "$c" .c)
    if aarch64-linux-gnu-gcc -std=c11 -O2 -Wall -Wextra -pedantic -Werror "$c" -o "$work/$n" -lm -pthread \
           > "$work/$n.log" 2>&1; then pass; else fail "$c does not build for arm64 without a warning"; cat "$work/$n.log"; fi
done

# -O1: gcc 12's arm64 vectoriser crashes (an internal compiler error) on
# test_ann.c at -O2; the chapters themselves build at -O2 above.
for t in idx worked_example gemm; do
    if aarch64-linux-gnu-gcc -std=c11 -O1 -I. tests/test_$t.c -o "$work/test_$t" -lm -pthread > "$work/test_$t.build" 2>&1 &&
       $qemu "$work/test_$t" > "$work/test_$t.log" 2>&1; then pass; else fail "tests/test_$t.c under qemu"; tail -n 5 "$work/test_$t.log"; fi
    grep -E '^[0-9]+ passed' "$work/test_$t.log" | sed "s/^/  test_$t on arm64: /"
done

if [ ! -f data/t10k-labels-idx1-ubyte ]; then
    echo "skip: the real runs (no Fashion-MNIST in data/)"
else
    sh tests/small_data.sh data "$work/data" 500 100
    same() {  # same CHAPTER ARGS...: arm64 and this machine print the same result line
        n=$1; shift
        here=$(./"$n" --data "$work/data" "$@" 2>&1 | sed -n 's/^result \(.*\) seconds=.*/\1/p')
        there=$($qemu "$work/$n" --data "$work/data" "$@" 2>&1 | sed -n 's/^result \(.*\) seconds=.*/\1/p')
        if [ -n "$here" ] && [ "$here" = "$there" ]; then pass; echo "  $n $*: the same on arm64: $there"
        else fail "$n $*: here '$here', on arm64 '$there'"; fi
    }
    make -s chapter2 chapter4 > /dev/null
    same chapter2 --epochs 2 --limit 300
    same chapter4 --epochs 1 --limit 64 --batch 32
    # Chapter 6, the deeper CNN included, is in tests/determinism.sh's matrix.
fi
echo "$passed passed, $failed failed"
[ $failed = 0 ]
