#!/bin/sh
# valgrind.sh - each chapter's program on a short run under valgrind's
# memcheck: no invalid read or write, no use of an uninitialised value, no
# memory definitely or indirectly lost at exit. Chapters 4 to 6 run the ANN
# on the engine (the blocked GEMM, the threads, and in chapter 6 the
# checkpoints, a pause and a resume; in chapter 7 the comparison, stopped
# and gone on with, and its pictures): the convolutions and batch norm under
# valgrind take minutes, so they are left to AddressSanitizer in the tests
# (book.md, Appendix A, has a by-hand run of every model). Chapter 9: a
# search of the ANN, and a run of two rows started from its checkpoint on
# three classes (subsets, --init-from, random erasing). Needs valgrind
# and Fashion-MNIST; skips without them. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
if ! command -v valgrind > /dev/null 2>&1 || [ ! -f data/t10k-labels-idx1-ubyte ]; then
    echo "skip: no valgrind or no Fashion-MNIST"; echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
work=build/valgrind
rm -rf "$work" && mkdir -p "$work" || exit 1
sh tests/small_data.sh data "$work/data" 500 100
make -s chapter1 chapter2 chapter3 chapter4 chapter5 chapter6 chapter7 chapter9 > /dev/null || exit 1
passed=0 failed=0
memcheck() {  # memcheck EXPECTED-EXIT-CODE PROGRAM ARGS...
    expected=$1; shift
    valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --show-leak-kinds=definite,indirect "$@" --data "$work/data" > "$work/log" 2>&1
    status=$?
    if [ $status = "$expected" ]; then passed=$((passed + 1)); echo "  clean: $*"
    else failed=$((failed + 1)); echo "FAIL valgrind ($status, expected $expected): $*"; grep '==[0-9]*==' "$work/log" | head -n 20; fi
}
memcheck 0 ./chapter1
memcheck 0 ./chapter2 --epochs 1 --limit 100
memcheck 0 ./chapter3 --epochs 1 --limit 100 --no-compare
memcheck 0 ./chapter4 --model ann --epochs 1 --limit 100
memcheck 0 ./chapter5 --model ann --epochs 1 --limit 100
memcheck 130 ./chapter6 --model ann --epochs 2 --limit 128 --checkpoints "$work" --stop-after 3
memcheck 0 ./chapter6 --model ann --epochs 2 --limit 128 --checkpoints "$work" --resume "$work/ann-seed1-last.ckpt"
memcheck 0 ./chapter6 --evaluate "$work/ann-seed1-best.ckpt"
# (a fuzz seed: its made-up data fingerprint is refused, 24, before any tensor is read)
memcheck 24 ./chapter6 --evaluate tests/fuzz/corpus/checkpoint/seed1.ckpt
memcheck 130 ./chapter7 --models ann --epochs 1 --limit 128 --checkpoints "$work/c7" --plots "$work/p7" --stop-after 1
memcheck 0 ./chapter7 --models ann --epochs 1 --limit 128 --checkpoints "$work/c7" --plots "$work/p7"
memcheck 0 ./chapter9 --search ann --budget 1 --epochs 1 --limit 128 --checkpoints "$work/c9" --plots "$work/p9"
memcheck 0 ./chapter9 --models ann,ann+erase --epochs 1 --limit 128 --classes 0,1,2 --per-class 20 \
    --init-from "$work/c9/ann-lr0.000183-batch32-wd0.000335-seed1-best.ckpt" --checkpoints "$work/c9" --plots "$work/p9b"
echo "$passed passed, $failed failed"
[ $failed = 0 ]
