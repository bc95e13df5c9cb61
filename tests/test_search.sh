#!/bin/sh
# test_search.sh - chapter 9's --search end to end, on a cut-down
# Fashion-MNIST (1,920 training images, a tenth of them for validation,
# 100 test images), and its two new options.
#
#   1. With the test files missing, the search runs every rung, writes its
#      table and says what it chose; only then does the final run fail, on
#      the missing test file (exit code 3). A search that read the test set
#      would fail before its first trial.
#   2. With them, the same search at another thread count: exit 0, the same
#      table (the same trials, the same losses; the same again on the
#      portable kernel at 3 threads), and the chosen configuration trained
#      once and tested.
#   3. The same command again trains nothing (every trial, and the final
#      run, reused from their checkpoints) and gives the same result, and
#      the same ranking at each rung (a trial's loss at rung 1 is that of
#      its first epochs, though its checkpoint has trained further).
#   4. Stopped by --stop-after in rung 1, then run again: the same table
#      and result as the uninterrupted search.
#   5. --dropout on a model without dropout is refused (exit code 2).
#   6. Chapter 9 with its defaults is chapter 8: the same weights. A run
#      chapter 8 stopped is finished by chapter 9 with the weights of the
#      run chapter 8 did not stop.
#   7. --weight-decay changes the weights, and its runs have checkpoints of
#      their own name.
#   8. So does --erase.
#   9. --models with variants (MODEL+tuned+augment+erase+bf16): a row each,
#      the verdict of each variant against its model, McNemar for the
#      pairs that ask a question, every file listed written, once;
#      stopped by --stop-after and by a real SIGINT, and run again, the
#      same tables and pictures; a variant named twice refused.
# Needs Fashion-MNIST (skips without). Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
if [ ! -f data/t10k-labels-idx1-ubyte ]; then
    echo "skip: no Fashion-MNIST"; echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
make -s chapter8 chapter9 > /dev/null || exit 1
work=build/search-test
rm -rf "$work" && mkdir -p "$work/notest" || exit 1
sh tests/small_data.sh data "$work/data" 1920 100 || exit 1
cp "$work"/data/train-* "$work/notest/" || exit 1
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
check() { if eval "$2"; then pass; else fail "$1"; fi; }
results() { grep '^result ' "$1" | sed 's/ seconds=.*//'; }
search="--search ann --budget 9 --epochs 2"

# 1. No test files: the search ends before anything opens one.
./chapter9 --data "$work/notest" $search --threads 2 --plots "$work/p1" --checkpoints "$work/ck1" \
    > "$work/one.log" 2> "$work/one.err"
check "without the test files the search exits 3 (a data file missing)" "[ $? = 3 ]"
check "... naming the test file" "grep -q 't10k-images-idx3-ubyte' $work/one.err"
check "... after every rung: the choice is made" "grep -q '^the search chose trial ' $work/one.log"
check "... and the table of the 3 trials written" \
    "[ \$(grep -c '^| [0-9]' $work/p1/search-ann/trials.md) = 3 ] && grep -q '(chosen)' $work/p1/search-ann/trials.md"
check "... rung 2 trains the best of rung 1 to epoch 3" "grep -q '^---- rung 2 of 2, .* to epoch 3 ----' $work/one.log"

# 2. With the test files, on one thread: the same search, then the final run.
./chapter9 --data "$work/data" $search --threads 1 --plots "$work/p2" --checkpoints "$work/ck2" > "$work/two.log" 2>&1
check "the search with the test files exits 0" "[ $? = 0 ]" || tail -n 5 "$work/two.log"
check "the same table at 1 and 2 threads" "cmp -s $work/p1/search-ann/trials.md $work/p2/search-ann/trials.md"
./chapter9 --data "$work/notest" $search --kernel portable --threads 3 --plots "$work/p1b" --checkpoints "$work/ck1b" \
    > "$work/one-b.log" 2>&1
check "... and on the portable kernel at 3 threads" "cmp -s $work/p1/search-ann/trials.md $work/p1b/search-ann/trials.md"
check "the final run is tested once" "[ \$(grep -c '^result ' $work/two.log) = 1 ]"
if command -v gnuplot > /dev/null 2>&1; then
    (cd "$work/p2/search-ann" && gnuplot trials.gp) > "$work/gnuplot.log" 2>&1
    check "gnuplot trials.gp runs without an error or a warning" \
        "[ $? = 0 ] && [ ! -s $work/gnuplot.log ] && [ -s $work/p2/search-ann/trials.png ]" || cat "$work/gnuplot.log"
fi
chosen=$(sed -n 's/^the search chose trial [0-9]* (lr \([0-9.e-]*\), batch \([0-9]*\), .*/--lr \1 --batch \2/p' "$work/two.log")
check "the final run trains the chosen configuration ($chosen)" \
    "grep -q \"^model ann: .*learning rate \$(echo $chosen | cut -d' ' -f2), batch \$(echo $chosen | cut -d' ' -f4),\" $work/two.log"

# 3. Again: nothing trains.
./chapter9 --data "$work/data" $search --threads 2 --plots "$work/p2" --checkpoints "$work/ck2" > "$work/three.log" 2>&1
check "the search run again exits 0" "[ $? = 0 ]"
check "... trains no epoch" "! grep -q '^epoch ' $work/three.log"
check "... and gives the same result" "[ \"\$(results $work/three.log)\" = \"\$(results $work/two.log)\" ]"
ranks() { grep -E '^  (kept|dropped) ' "$1"; }
check "... and each rung's losses as they were at that rung, not after the later ones" \
    "[ \"\$(ranks $work/three.log)\" = \"\$(ranks $work/two.log)\" ]"

# 4. Interrupted, then run again.
./chapter9 --data "$work/data" $search --threads 2 --plots "$work/p4" --checkpoints "$work/ck4" --stop-after 20 \
    > "$work/four.log" 2>&1
check "--stop-after 20 stops the search with exit 130" "[ $? = 130 ]"
./chapter9 --data "$work/data" $search --threads 2 --plots "$work/p4" --checkpoints "$work/ck4" > "$work/four2.log" 2>&1
check "run again, it finishes" "[ $? = 0 ]"
check "... with the uninterrupted search's table" "cmp -s $work/p2/search-ann/trials.md $work/p4/search-ann/trials.md"
check "... and result" "[ \"\$(results $work/four2.log)\" = \"\$(results $work/two.log)\" ]"

# 4b. A search of some classes tests on those classes only.
first_five=$(tail -c +9 "$work/data/t10k-labels-idx1-ubyte" | od -An -v -tu1 | tr -s ' ' '\n' | grep -c '^[0-4]$')
./chapter9 --data "$work/data" --search ann --budget 3 --epochs 1 --classes 0,1,2,3,4 --threads 2 --plots "$work/p4b" \
    --checkpoints "$work/ck4b" > "$work/fourb.log" 2>&1
check "--search with --classes tests on the $first_five test images of those classes" \
    "[ $? = 0 ] && grep -q '^test loss .*($first_five images)' $work/fourb.log"
./chapter9 --data "$work/data" --search ann --dropout 0.2 > /dev/null 2> "$work/bad.err"
check "--search with --dropout is refused (exit 2): the search chooses it" "[ $? = 2 ] && grep -q 'chooses the learning rate, the batch, the dropout' $work/bad.err"

# 5. --dropout needs a dropout.
./chapter9 --data "$work/data" --model ann --epochs 1 --dropout 0.3 --checkpoints "$work/ck5" --plots "$work/p5" \
    > "$work/five.log" 2> "$work/five.err"
check "--dropout on the ANN exits 2" "[ $? = 2 ] && grep -q 'has no dropout to set' $work/five.err"

# 6. Chapter 9's defaults are chapter 8's run; chapter 9 finishes chapter 8's.
common="--data $work/data --model ann --epochs 2 --threads 2"
./chapter8 $common --checkpoints "$work/ck6a" --plots "$work/p6a" > "$work/six8.log" 2>&1
./chapter9 $common --checkpoints "$work/ck6b" --plots "$work/p6b" > "$work/six9.log" 2>&1
check "chapter 9 with its defaults trains chapter 8's weights" \
    "[ -n \"\$(results $work/six8.log)\" ] && [ \"\$(results $work/six9.log)\" = \"\$(results $work/six8.log)\" ]"
./chapter8 $common --checkpoints "$work/ck6c" --plots "$work/p6c" --stop-after 20 > "$work/six8s.log" 2>&1
check "chapter 8 stopped after 20 steps (exit 130)" "[ $? = 130 ]"
./chapter9 $common --checkpoints "$work/ck6c" --plots "$work/p6c" > "$work/six9r.log" 2>&1
check "chapter 9 resumes chapter 8's checkpoint" "grep -q '^resuming from ' $work/six9r.log"
check "... and ends with the weights of chapter 8's uninterrupted run" \
    "[ \"\$(results $work/six9r.log)\" = \"\$(results $work/six8.log)\" ]"

# 7. --weight-decay.
./chapter9 $common --weight-decay 0.01 --checkpoints "$work/ck7" --plots "$work/p7" > "$work/seven.log" 2>&1
check "--weight-decay 0.01 exits 0" "[ $? = 0 ]"
check "... with other weights than no decay" \
    "[ \"\$(results $work/seven.log | sed 's/.*weights=//')\" != \"\$(results $work/six9.log | sed 's/.*weights=//')\" ]"
check "... in checkpoints of its own name" "[ -f $work/ck7/ann-lr0.001-batch64-wd0.01-seed1-best.ckpt ]"

# 8. --erase.
./chapter9 --data "$work/data" --model basic --epochs 1 --threads 2 --erase --checkpoints "$work/ck8" --plots "$work/p8" \
    > "$work/eight.log" 2>&1
check "--erase exits 0, in checkpoints of its own name" "[ $? = 0 ] && [ -f $work/ck8/basic-erase-seed1-best.ckpt ]"
./chapter9 --data "$work/data" --model basic --epochs 1 --threads 2 --checkpoints "$work/ck8" --plots "$work/p8" \
    > "$work/eight2.log" 2>&1
check "... and trains other weights than without it" \
    "[ \"\$(results $work/eight.log | sed 's/.*weights=//')\" != \"\$(results $work/eight2.log | sed 's/.*weights=//')\" ]"

# 9. The comparison of rows: models with variants, stopped and run again.
rows="ann,ann+tuned,ann+tuned+augment,basic,basic+tuned+augment+erase,basic+bf16"
./chapter9 --data "$work/data" --quick --epochs 1 --models "$rows" --threads 2 --checkpoints "$work/ck9" \
    --plots "$work/p9" > "$work/nine.log" 2>&1
check "--models with variants exits 0" "[ $? = 0 ]" || tail -n 5 "$work/nine.log"
check "... a row each in results.md" "[ \$(grep -c '^| \\(ann\\|basic\\)[+a-z0-9]* | [0-9]' $work/p9/results.md) = 6 ]"
check "... the verdict: each variant against its model" \
    "grep -q '^| ann+tuned | ann | ' $work/p9/results.md && grep -q '^| basic+tuned+augment+erase | basic | ' $work/p9/results.md && grep -q '^| basic+bf16 | basic | ' $work/p9/results.md"
check "... McNemar only for the pairs that ask a question (7, not 15)" \
    "[ \$(grep -c '^| [a-z0-9+]* | [a-z0-9+]* | 1 | ' $work/p9/results.md) = 7 ]"
check "... the tuned rows train the search's choice" \
    "grep -q 'checkpoints: $work/ck9/basic-augment-erase-quick-lr' $work/nine.log"
check "... and the bf16 row has checkpoints of its own" "[ -f $work/ck9/basic-bf16-quick-seed1-best.ckpt ]"
sed -n '/^wrote [0-9]* files:$/,/^$/s/^  \(.*\)/\1/p' "$work/nine.log" > "$work/listed.txt"
missing=0
while read -r f; do [ -s "$f" ] || missing=$((missing + 1)); done < "$work/listed.txt"
check "... every file it lists is there ($(wc -l < "$work/listed.txt") of them)" \
    "[ \$(wc -l < $work/listed.txt) -gt 20 ] && [ $missing = 0 ]"
check "... each listed once (two tuned rows of ann write its search's table twice)" \
    "grep -q 'search-ann/trials.md' $work/listed.txt && [ -z \"\$(sort $work/listed.txt | uniq -d)\" ]"
./chapter9 --data "$work/data" --quick --epochs 1 --models "$rows" --threads 2 --checkpoints "$work/ck10" \
    --plots "$work/p10" --stop-after 10 > "$work/ten.log" 2>&1
check "the comparison stopped by --stop-after exits 130" "[ $? = 130 ]"
./chapter9 --data "$work/data" --quick --epochs 1 --models "$rows" --threads 2 --checkpoints "$work/ck10" \
    --plots "$work/p10" > "$work/ten2.log" 2>&1
rc=$?
verdicts() { sed -n '/^| row | against/,/^$/p' "$1" | sed 's/ | [0-9.]*x |$//'; grep '^| [a-z0-9+]* | [a-z0-9+]* | 1 | ' "$1"; }
check "run again, it finishes with the same verdict and McNemar tables" \
    "[ $rc = 0 ] && [ -n \"\$(verdicts $work/p9/results.md)\" ] && [ \"\$(verdicts $work/p9/results.md)\" = \"\$(verdicts $work/p10/results.md)\" ]"
# A real Ctrl-C: SIGINT once three rows are done (three of the basic CNN,
# which train for seconds, are still to come), then the same command.
./chapter9 --data "$work/data" --quick --epochs 1 --models "$rows" --threads 2 --checkpoints "$work/ck11" \
    --plots "$work/p11" > "$work/eleven.log" 2>&1 &
pid=$! i=0
while ! grep -q '^comparison: 3 of 6 runs done' "$work/eleven.log" && [ $i -lt 1200 ] && kill -0 $pid 2> /dev/null; do
    sleep 0.1; i=$((i + 1))
done
kill -INT $pid 2> /dev/null
wait $pid
rc=$?
check "SIGINT in the middle of the comparison: exit 130, a checkpoint saved, the command to go on" \
    "[ $rc = 130 ] && grep -q '^to resume: ./chapter9 ' $work/eleven.log"
./chapter9 --data "$work/data" --quick --epochs 1 --models "$rows" --threads 2 --checkpoints "$work/ck11" \
    --plots "$work/p11" > "$work/eleven2.log" 2>&1
rc=$?
check "... the same command finishes it, with the same tables and every picture" \
    "[ $rc = 0 ] && [ \"\$(verdicts $work/p9/results.md)\" = \"\$(verdicts $work/p11/results.md)\" ] && [ \$(ls $work/p11/*.png | wc -l) = \$(ls $work/p9/*.png | wc -l) ]"
./chapter9 --data "$work/data" --models "basic+tuned+tuned" > /dev/null 2> "$work/bad.err"
check "a variant named twice is refused (exit 2)" "[ $? = 2 ] && grep -q 'each once' $work/bad.err"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
