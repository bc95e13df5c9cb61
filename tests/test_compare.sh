#!/bin/sh
# test_compare.sh - chapter 7 end to end, on the real Fashion-MNIST.
#
#   1. ./chapter7 --quick: exit 0; every file it lists exists and is whole
#      (PPM headers and sizes; each PNG decoded, its CRCs and Adler sum
#      checked, its pixels those of its PPM: build/test_compare FILE...);
#      results.md has a row per model; with gnuplot installed, every script
#      renders its SVG and PNG without an error or a warning.
#   2. Stopped part-way (--stop-after, as Ctrl-C) and run again with the
#      same command: it goes on, and its results are those of the run that
#      was never stopped (same weights, same test figures, same McNemar rows).
#   3. A chapter 6 run's checkpoints are used by chapter 7, not retrained;
#      one of other options is refused before anything trains, and so is
#      one trained on other images of the same size, and a symbolic link
#      planted at a run's checkpoint (never followed).
#   4. Bad --models, --seeds and empty paths are refused with exit code 2.
# Needs Fashion-MNIST (skips without). Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
if [ ! -f data/t10k-labels-idx1-ubyte ]; then
    echo "skip: no Fashion-MNIST"; echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
make -s chapter6 chapter7 build/test_compare > /dev/null || exit 1
work=build/compare
rm -rf "$work" && mkdir -p "$work" || exit 1
passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { if eval "$2"; then pass; else fail "$1"; fi; }
# The result lines without the seconds (the only figure a resumed run may change).
results() { grep '^result ' "$1" | sed 's/ seconds=.*//'; }
# results.md without the timing columns (s/epoch, images/s: the 6th and 7th
# cells of the first table) and without the command line.
tables() { grep '^|' "$1" | awk -F'|' 'NF == 12 { $7 = ""; $8 = "" } { print }'; }

# 1. The quick comparison, and its files.
./chapter7 --quick --plots "$work/quick" --checkpoints "$work/ck" > "$work/quick.log" 2>&1
check "./chapter7 --quick exits 0" "[ $? = 0 ]"
sed -n '/^wrote [0-9]* files:/,/^$/p' "$work/quick.log" | sed -n 's/^  //p' > "$work/files"
check "it lists the files it wrote (29 for three models)" "[ \$(wc -l < $work/files) = 29 ]"
missing=0
while read -r f; do [ -s "$f" ] || { echo "  missing or empty: $f"; missing=1; }; done < "$work/files"
check "every file listed exists and is not empty" "[ $missing = 0 ]"
grep -E '\.(ppm|png)$' "$work/files" | xargs ./build/test_compare > "$work/pictures.log" 2>&1
check "every PPM is whole and every PNG decodes to its PPM's pixels" "[ $? = 0 ]" || cat "$work/pictures.log"
for m in ann basic deeper; do
    check "results.md has a row for $m" "grep -q '^| $m | ' $work/quick/results.md"
    check "the $m confusion matrix, gallery and (CNNs) filters were drawn" \
        "[ -f $work/quick/confusion-$m.png ] && [ -f $work/quick/gallery-$m.png ] && { [ $m = ann ] || [ -f $work/quick/filters-$m.png ]; }"
done
check "results.md has McNemar's test for the three pairs" "[ \$(grep -c '^| ann | basic | 1 \|^| ann | deeper | 1 \|^| basic | deeper | 1 ' $work/quick/results.md) = 3 ]"
check "the log tells the whole comparison's progress" "grep -q '^comparison: 2 of 3 runs done; about' $work/quick.log"
if command -v gnuplot > /dev/null 2>&1; then
    for script in curves classes; do
        (cd "$work/quick" && gnuplot "$script.gp") > "$work/$script.gnuplot" 2>&1
        check "gnuplot $script.gp runs without an error or a warning" "[ $? = 0 ] && [ ! -s $work/$script.gnuplot ]" ||
            cat "$work/$script.gnuplot"
        check "gnuplot $script.gp wrote $script.svg and $script.png" \
            "head -c 8 $work/quick/$script.png | od -An -c | grep -q 'P   N   G' && grep -q '<svg' $work/quick/$script.svg"
    done
else
    skipped=$((skipped + 1)); echo "skip: gnuplot is not installed (apt-get install gnuplot-nox)"
fi

# 2. Stopped, then the same command again; against the run never stopped.
args="--quick --models ann,basic --plots $work/stopped --checkpoints $work/ck2"
./chapter7 $args --stop-after 60 > "$work/stop.log" 2>&1
check "--stop-after pauses the comparison with exit code 130" "[ $? = 130 ]"
check "and says to run the same command again" \
    "grep -q '^to resume: ./chapter7 --quick --models ann,basic --plots $work/stopped --checkpoints $work/ck2\$' $work/stop.log"
./chapter7 $args > "$work/again.log" 2>&1
check "the same command again finishes the comparison" "[ $? = 0 ] && grep -q '^resuming from $work/ck2/ann-quick-seed1-last.ckpt' $work/again.log"
./chapter7 --quick --models ann,basic --plots "$work/whole" --checkpoints "$work/ck3" > "$work/whole.log" 2>&1
check "the stopped and resumed comparison equals the one never stopped" \
    "[ \"\$(results $work/again.log)\" = \"\$(results $work/whole.log)\" ] && [ -n \"\$(results $work/whole.log)\" ]"
check "and so do their results.md tables (timings aside)" \
    "[ \"\$(tables $work/stopped/results.md)\" = \"\$(tables $work/whole/results.md)\" ]"
check "the quick run of all three models agrees on ann and basic" \
    "[ \"\$(results $work/quick.log | head -n 2)\" = \"\$(results $work/whole.log)\" ]"
./chapter7 $args > "$work/third.log" 2>&1
check "a third time, nothing is trained again: the runs are only tested" \
    "[ $? = 0 ] && ! grep -q '^epoch 1/4  train' $work/third.log && [ \"\$(results $work/third.log)\" = \"\$(results $work/whole.log)\" ]"

# 3. Chapter 6's checkpoints, used by chapter 7.
./chapter6 --model ann --limit 600 --epochs 2 --checkpoints "$work/ck6" > "$work/six.log" 2>&1
./chapter7 --models ann --limit 600 --epochs 2 --checkpoints "$work/ck6" --plots "$work/p6" > "$work/seven.log" 2>&1
check "chapter 7 goes on from chapter 6's checkpoint, with its weights" \
    "[ $? = 0 ] && grep -q 'resuming from $work/ck6/ann-seed1-last.ckpt' $work/seven.log && [ \"\$(results $work/six.log)\" = \"\$(results $work/seven.log)\" ]"

./chapter7 --models basic,ann --limit 600 --epochs 3 --checkpoints "$work/ck6" --plots "$work/p6" > "$work/other.log" 2>&1
check "a checkpoint of other options in the way is refused (23) before any model trains" \
    "[ $? = 23 ] && grep -q 'differs from the run that saved' $work/other.log && ! grep -q '^epoch' $work/other.log"

# 3b. A link planted at a run's checkpoint is refused, never followed.
mv "$work/ck6/ann-seed1-last.ckpt" "$work/away.ckpt" && ln -s "$PWD/$work/away.ckpt" "$work/ck6/ann-seed1-last.ckpt"
./chapter7 --models ann --limit 600 --epochs 2 --checkpoints "$work/ck6" --plots "$work/p6" > "$work/link.log" 2>&1
check "a symbolic link at a run's last checkpoint is refused (17) before any model trains" \
    "[ $? = 17 ] && grep -q 'a symbolic link where this run keeps its own checkpoint' $work/link.log && ! grep -q '^epoch\|^result' $work/link.log"

# 3c. Files of the same size holding other images (MNIST has Fashion-MNIST's
# counts): the runs trained on them are not reported as this data's.
zero=$work/zero
mkdir -p "$zero" && cp data/*-labels-idx1-ubyte "$zero/"
for f in train-images-idx3-ubyte t10k-images-idx3-ubyte; do
    { head -c 16 "data/$f"; tail -c +17 "data/$f" | tr -c '\000' '\000'; } > "$zero/$f"
done
zeroed="./chapter7 --models ann --limit 640 --epochs 2 --checkpoints $work/ckz --plots $work/pz"
$zeroed --data "$zero" > "$work/zero.log" 2>&1
check "a comparison on same-sized files of other images runs" "[ $? = 0 ]"
$zeroed > "$work/after-zero.log" 2>&1
check "the same comparison on Fashion-MNIST then refuses those runs (24) before any training" \
    "[ $? = 24 ] && grep -q 'learned from other data' $work/after-zero.log && ! grep -q '^epoch\|^result' $work/after-zero.log"

# 4. Mistakes in the options.
for bad in "--models ann,ann" "--models cnn" "--models ''" "--checkpoints ''" "--plots ''" "--seeds 0" "--seeds 2.5" "--seed 2147483647 --seeds 2"; do
    eval ./chapter7 $bad --plots "$work/bad" > "$work/bad.log" 2>&1
    check "./chapter7 $bad is refused with exit code 2" "[ $? = 2 ] && grep -q -- '--' $work/bad.log && [ ! -d $work/bad ]"
done

: > "$work/a-file"
./chapter7 --quick --plots "$work/a-file" > "$work/file.log" 2>&1
check "--plots naming a file is refused with exit code 10 before any training" \
    "[ $? = 10 ] && grep -q 'not a directory; choose another with --plots DIR' $work/file.log && ! grep -q '^epoch' $work/file.log"

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
