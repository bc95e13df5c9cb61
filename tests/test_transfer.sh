#!/bin/sh
# test_transfer.sh - chapter 9's transfer learning end to end, on a cut-down
# Fashion-MNIST (1,920 training images, a tenth of them for validation,
# 200 test images).
#
#   1. --classes 0,1,2,3,4 trains and tests on those classes only (the test
#      images of the other five are not counted).
#   2. --init-from that run's checkpoint, on classes 5-9 with --per-class
#      20 and --freeze: exit 0, the classifier set to zero (the classes
#      differ), the features frozen, 100 images repeated to 5,000 an epoch.
#   3. --init-from a checkpoint of the same classes keeps all the weights;
#      of another model it is refused (exit code 22) with the fix, before
#      anything trains; --freeze without --init-from, a bad --classes and
#      --transfer ann are refused (exit code 2).
#   4. --transfer basic: exit 0, its table of 3 sizes by 3 ways, data and
#      script; stopped by --stop-after and run again, the same table.
# Needs Fashion-MNIST (skips without). Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
if [ ! -f data/t10k-labels-idx1-ubyte ]; then
    echo "skip: no Fashion-MNIST"; echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
make -s chapter9 > /dev/null || exit 1
work=build/transfer-test
rm -rf "$work" && mkdir -p "$work" || exit 1
sh tests/small_data.sh data "$work/data" 1920 200 || exit 1
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { if eval "$2"; then pass; else fail "$1"; fi; }
common="--data $work/data --epochs 1 --threads 2 --checkpoints $work/ck --plots $work/p"
# The test images of classes 0-4 among the first 200: what the test must count.
first_five=$(tail -c +9 "$work/data/t10k-labels-idx1-ubyte" | od -An -v -tu1 | tr -s ' ' '\n' | grep -c '^[0-4]$')

# 1. A subset of the classes.
./chapter9 $common --model basic --classes 0,1,2,3,4 > "$work/one.log" 2>&1
check "--classes 0,1,2,3,4 exits 0" "[ $? = 0 ]" || tail -n 5 "$work/one.log"
check "... and tests on the $first_five test images of those classes" \
    "grep -q '^test loss .*($first_five images)' $work/one.log"
source=$work/ck/basic-classes01f-per0-seed1-best.ckpt
check "... in checkpoints named by the classes" "[ -f $source ]"

# 2. Transfer to the other five, frozen.
./chapter9 $common --model basic --classes 5,6,7,8,9 --per-class 20 --init-from "$source" --freeze \
    > "$work/two.log" 2>&1
check "--init-from, --freeze on classes 5-9 exits 0" "[ $? = 0 ]" || tail -n 5 "$work/two.log"
check "... the classifier set to zero, the classes named" \
    "grep -q 'but the classifier (weight4 and bias4, set to zero): it learned classes 0 T-shirt/top' $work/two.log"
check "... the features frozen" "grep -q '^--freeze: the first 18816 of 225034 parameters' $work/two.log"
check "... 100 images repeated to an epoch of 5000" "grep -q '^training on 5000 images' $work/two.log"

# 3. The same classes keep every weight; refusals.
./chapter9 $common --model basic --classes 0,1,2,3,4 --init-from "$source" --epochs 2 > "$work/three.log" 2>&1
check "--init-from a run of the same classes keeps all its weights" \
    "[ $? = 0 ] && grep -q 'its best weights, all of them' $work/three.log"
./chapter9 $common --model ann --epochs 1 > /dev/null 2>&1
./chapter9 $common --model basic --init-from "$work/ck/ann-seed1-best.ckpt" > "$work/three2.log" 2> "$work/three2.err"
check "--init-from a checkpoint of another model exits 22" "[ $? = 22 ]"
check "... naming both models and the fix" \
    "grep -q 'a checkpoint of the ann model, but this run trains basic' $work/three2.err && grep -q 'train basic first' $work/three2.err"
check "... before anything trains" "! grep -q '^epoch ' $work/three2.log"
printf 'not a checkpoint' > "$work/junk.ckpt"
./chapter9 $common --model basic --init-from "$work/junk.ckpt" > /dev/null 2> "$work/junk.err"
check "--init-from a file that is no checkpoint exits 18, with the fix for --init-from" \
    "[ $? = 18 ] && grep -q 'not a checkpoint.*--init-from needs a checkpoint a run of this model wrote' $work/junk.err"
for bad in "--freeze" "--classes 5,5" "--classes 10" "--transfer ann" "--transfer basic --classes 5,6"; do
    ./chapter9 $common $bad > /dev/null 2> "$work/bad.err"
    check "$bad is refused with exit code 2" "[ $? = 2 ] && [ -s $work/bad.err ]"
done

# 4. The experiment, stopped and run again.
./chapter9 $common --transfer basic --plots "$work/p4" --checkpoints "$work/ck4" > "$work/four.log" 2>&1
check "--transfer basic exits 0" "[ $? = 0 ]" || tail -n 5 "$work/four.log"
check "... with a table of 3 sizes" "[ \$(grep -c '^| [0-9]* | ' $work/p4/transfer-basic/transfer.md) = 3 ]"
check "... its data and script" "[ -s $work/p4/transfer-basic/transfer.dat ] && [ -s $work/p4/transfer-basic/transfer.gp ]"
check "... and 10 runs: the pretraining and 3 sizes by 3 ways" "[ \$(grep -c '^result ' $work/four.log) = 10 ]"
./chapter9 $common --transfer basic --plots "$work/p5" --checkpoints "$work/ck5" --stop-after 10 > "$work/five.log" 2>&1
check "--transfer stopped by --stop-after exits 130" "[ $? = 130 ]"
./chapter9 $common --transfer basic --plots "$work/p5" --checkpoints "$work/ck5" > "$work/five2.log" 2>&1
check "run again, it finishes with the same table" \
    "[ $? = 0 ] && cmp -s $work/p4/transfer-basic/transfer.md $work/p5/transfer-basic/transfer.md"
# The pretraining's best checkpoint lost: the runs that start from it are refused, cleanly.
rm "$work/ck5/basic-classes01f-per0-seed1-best.ckpt"
./chapter9 $common --transfer basic --plots "$work/p5" --checkpoints "$work/ck5" > "$work/six.log" 2> "$work/six.err"
code=$?
check "--transfer without the pretraining's best checkpoint exits 17 (not a crash: $code)" \
    "[ $code = 17 ] && grep -q 'basic-classes01f-per0-seed1-best.ckpt' $work/six.err"
if command -v gnuplot > /dev/null 2>&1; then
    (cd "$work/p4/transfer-basic" && gnuplot transfer.gp) > "$work/gnuplot.log" 2>&1
    check "gnuplot transfer.gp runs without an error or a warning" "[ $? = 0 ] && [ ! -s $work/gnuplot.log ]" ||
        cat "$work/gnuplot.log"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
