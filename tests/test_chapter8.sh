#!/bin/sh
# test_chapter8.sh - chapter 8 end to end, on a cut-down Fashion-MNIST
# (640 training images, a tenth of them for validation, 100 test images).
#
#   1. ./chapter8 trains resnet8 and separable one epoch: exit 0, a row of
#      results.md each, the cost plot's data and script (and, with gnuplot,
#      its pictures drawn without a warning).
#   2. --model NAME is --models NAME: the same result line.
#   3. A checkpoint chapter 8 wrote is refused by chapter 7, with the
#      message that names the chapter to use, before anything trains.
#   4. A run chapter 7 finished is reused by chapter 8 (tested again, not
#      retrained: the same weights).
#   5. A model chapter 8 does not have is refused with exit code 2.
#   6. --precision bf16: a run stopped on one kernel and thread count and
#      resumed on another ends with the uninterrupted run's weights; it is
#      not fp32's run; its checkpoint is refused by a run in fp32 (exit
#      code 26, the fix named, nothing trained); --kernel avx512bf16 without
#      --precision bf16 and --kernel naive with it are refused (exit code 2).
# Needs Fashion-MNIST (skips without). Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
if [ ! -f data/t10k-labels-idx1-ubyte ]; then
    echo "skip: no Fashion-MNIST"; echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
make -s chapter7 chapter8 > /dev/null || exit 1
work=build/chapter8-test
rm -rf "$work" && mkdir -p "$work" || exit 1
sh tests/small_data.sh data "$work/data" 640 100 || exit 1
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { if eval "$2"; then pass; else fail "$1"; fi; }
results() { grep '^result ' "$1" | sed 's/ seconds=.*//'; }
common="--data $work/data --epochs 1 --batch 32 --threads 2"

# 1. Two of the new models, and the cost plot.
./chapter8 $common --models resnet8,separable --plots "$work/p1" --checkpoints "$work/ck1" > "$work/one.log" 2>&1
check "./chapter8 --models resnet8,separable exits 0" "[ $? = 0 ]" || tail -n 5 "$work/one.log"
for m in resnet8 separable; do
    check "results.md has a row for $m" "grep -q '^| $m | ' $work/p1/results.md"
done
check "the summary prints resnet8's parameters and MFLOP per image" \
    "grep -q '^  total  *44770  *5278368   (10.56 MFLOP per image forward)' $work/one.log"
check "cost.dat has a line per model" "[ \$(grep -c '^\"' $work/p1/cost.dat) = 2 ]"
check "cost.gp was written" "[ -s $work/p1/cost.gp ]"
if command -v gnuplot > /dev/null 2>&1; then
    (cd "$work/p1" && gnuplot cost.gp) > "$work/cost.gnuplot" 2>&1
    check "gnuplot cost.gp runs without an error or a warning" "[ $? = 0 ] && [ ! -s $work/cost.gnuplot ]" ||
        cat "$work/cost.gnuplot"
fi

# 2. --model is --models with one name.
./chapter8 $common --model resnet8 --plots "$work/p2" --checkpoints "$work/ck2" > "$work/two.log" 2>&1
check "--model resnet8 gives the result line of --models resnet8,..." \
    "[ \"\$(results $work/two.log)\" = \"\$(results $work/one.log | grep model=resnet8)\" ]"

# 3. Chapter 7 refuses a checkpoint chapter 8 wrote.
./chapter8 $common --models basic --plots "$work/p3" --checkpoints "$work/ck3" > "$work/three.log" 2>&1
check "chapter 8 trains the basic CNN" "[ $? = 0 ] && [ -f $work/ck3/basic-seed1-last.ckpt ]"
./chapter7 $common --models basic --plots "$work/p3" --checkpoints "$work/ck3" > "$work/three7.log" 2>&1
code=$?
check "chapter 7 refuses it (exit code 19)" "[ $code = 19 ]"
check "with a message that names chapter 8" \
    "grep -q 'written by chapter 8; this is chapter 7, and each chapter reads only its own checkpoints. Use ./chapter8 with it.' $work/three7.log" ||
    tail -n 3 "$work/three7.log"
check "and before anything trains" "! grep -q '^epoch 1/1' $work/three7.log"

# 4. Chapter 8 reuses a run chapter 7 finished.
./chapter7 $common --models basic --plots "$work/p4" --checkpoints "$work/ck4" > "$work/four7.log" 2>&1
./chapter8 $common --models basic --plots "$work/p4" --checkpoints "$work/ck4" > "$work/four8.log" 2>&1
check "chapter 8 reads chapter 7's checkpoint and exits 0" "[ $? = 0 ]" || tail -n 3 "$work/four8.log"
check "without training again" "! grep -q '^epoch 1/1  batch' $work/four8.log"
check "and gets chapter 7's result (the same weights)" "[ \"\$(results $work/four8.log)\" = \"\$(results $work/four7.log)\" ]"

# 5. A model chapter 8 does not build.
./chapter8 $common --model resnet50 > "$work/five.log" 2>&1
check "--model resnet50 is refused with exit code 2" "[ $? = 2 ]"

# 6. bf16.
bf="$common --models basic --epochs 2 --precision bf16"
./chapter8 $bf --plots "$work/p6" --checkpoints "$work/ck6a" > "$work/six-whole.log" 2>&1
check "a bf16 run exits 0" "[ $? = 0 ]" || tail -n 3 "$work/six-whole.log"
check "and says it multiplies in bf16" "grep -q '^matrix multiplies: the blocked GEMM in bf16, ' $work/six-whole.log"
./chapter8 $bf --kernel avx2 --threads 1 --stop-after 7 --plots "$work/p6" --checkpoints "$work/ck6b" > "$work/six-stop.log" 2>&1
code=$?
if [ $code = 16 ]; then
    ./chapter8 $bf --kernel portable --threads 1 --stop-after 7 --plots "$work/p6" --checkpoints "$work/ck6b" > "$work/six-stop.log" 2>&1
    code=$?
fi
check "stopped after 7 steps (exit code 130)" "[ $code = 130 ]"
./chapter8 $common --models basic --epochs 2 --plots "$work/p6" --checkpoints "$work/ck6b" > "$work/six-fp32.log" 2>&1
code=$?
check "resuming it in fp32 is refused (exit code 26)" "[ $code = 26 ]"
check "with a message that names the precisions and the fix" \
    "grep -q 'a checkpoint of a run in bf16, but this run multiplies in fp32 (--precision fp32).*Add --precision bf16 to resume it' $work/six-fp32.log" ||
    tail -n 3 "$work/six-fp32.log"
check "and before anything trains" "! grep -q '^epoch 1/2' $work/six-fp32.log"
./chapter8 $bf --plots "$work/p6" --checkpoints "$work/ck6b" > "$work/six-resumed.log" 2>&1
check "resumed in bf16 on the default kernel and 2 threads: exit 0" "[ $? = 0 ] && grep -q '^resuming from' $work/six-resumed.log"
check "with the uninterrupted run's result and weights" \
    "[ -n \"\$(results $work/six-whole.log)\" ] && [ \"\$(results $work/six-resumed.log)\" = \"\$(results $work/six-whole.log)\" ]"
./chapter8 $common --models basic --epochs 2 --plots "$work/p6" --checkpoints "$work/ck6c" > "$work/six-fp32-whole.log" 2>&1
check "and not the fp32 run's weights" \
    "[ \"\$(results $work/six-fp32-whole.log | sed 's/.*weights=//')\" != \"\$(results $work/six-whole.log | sed 's/.*weights=//')\" ]"
./chapter8 $common --model basic --kernel avx512bf16 > "$work/six-k1.log" 2>&1
check "--kernel avx512bf16 without --precision bf16 is refused (exit code 2)" "[ $? = 2 ]"
./chapter8 $common --model basic --kernel naive --precision bf16 > "$work/six-k2.log" 2>&1
check "--kernel naive with --precision bf16 is refused (exit code 2)" "[ $? = 2 ]"

echo "$passed passed, $failed failed"
[ $failed = 0 ]
