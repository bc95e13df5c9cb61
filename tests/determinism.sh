#!/bin/sh
# determinism.sh - the same seed gives the same numbers on every build.
#
# One short fixed run of chapter 6 (the basic CNN, and the deeper one with
# batch norm and dropout) in every cell of a matrix: gcc and clang, -O2 and
# -O3, 1 and 2 threads, each blocked micro-kernel this CPU runs, and arm64
# (cross-compiled, run under qemu-user, the portable kernel) where the
# cross compiler and qemu are installed. Prints the `result` lines (without
# their seconds) as a table; every blocked cell must match the first. The
# line ends in weights=, a CRC-32 of every weight: the same line is the same
# weights, bit for bit, not only the same four decimals. The
# reference kernels naive and im2col are shown too: they add in another
# order, so their last bits may differ (book.md 4.17), and are not compared.
# Then chapter 8's depthwise-separable network in the same cells (its
# depthwise loop is compiled once per instruction set).
#
#   sh tests/determinism.sh          the quick matrix `make test` runs: gcc -O2,
#                                    clang -O3 and arm64 -O2; the deeper CNN on
#                                    the portable kernel (slow here, slower
#                                    emulated) only with gcc -O2 at 2 threads
#   FULL=1 sh tests/determinism.sh   every cell (about 8 minutes on 2 cores)
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
work=build/determinism
mkdir -p "$work"
[ -f data/t10k-labels-idx1-ubyte ] || { echo "skip: no Fashion-MNIST in data/"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }
sh tests/small_data.sh data "$work/data" 500 100

passed=0 failed=0
run_basic="--model basic --limit 64 --batch 32 --epochs 1"
run_deeper="--model deeper --limit 32 --batch 16 --epochs 1"

build() {  # build NAME COMPILER FLAGS...
    name=$1 cc=$2; shift 2
    $cc -std=c11 "$@" -Wall -Wextra -pedantic chapters/chapter6.c -o "$work/$name" -lm -pthread > "$work/$name.log" 2>&1
}

result() {  # result "PROGRAM" RUN ARGS...: the result line without its seconds
    prog=$1 run=$2; shift 2
    eval "run_args=\$run_$run"
    $prog --data "$work/data" --checkpoints "$work" $run_args "$@" 2>&1 | sed -n 's/^result \(.*\) seconds=.*/\1/p'
}

build gcc-O2 cc -O2 || { echo "FAIL chapter 5 does not build"; echo "0 passed, 1 failed"; exit 1; }
kernels=""
for k in portable avx2 avx512; do  # the ones this CPU runs (exit 16 otherwise)
    "$work/gcc-O2" --data "$work/data" --model ann --overfit 1 --kernel $k > /dev/null 2>&1 && kernels="$kernels $k"
done
full=${FULL:-}
builds="gcc-O2:cc:-O2${full:+ gcc-O3:cc:-O3}"
command -v clang > /dev/null 2>&1 && builds="$builds${full:+ clang-O2:clang:-O2} clang-O3:clang:-O3"
if command -v aarch64-linux-gnu-gcc > /dev/null 2>&1 && command -v qemu-aarch64 > /dev/null 2>&1; then
    builds="$builds arm64-O2:aarch64-linux-gnu-gcc:-O2${full:+ arm64-O3:aarch64-linux-gnu-gcc:-O3}"
fi

for run in basic deeper; do
    first=""
    eval "printf '\\n%s\\n' \"chapter6 \$run_$run\""
    printf '  %-10s %-9s %-8s %s\n' build kernel threads result
    for b in $builds; do
        name=${b%%:*} rest=${b#*:}; cc=${rest%%:*} flags=${rest#*:}
        [ -x "$work/$name" ] && [ "$work/$name" -nt chapters/chapter6.c ] || build "$name" "$cc" $flags || { echo "  $name: does not build"; failed=$((failed + 1)); continue; }
        prefix="$work/$name"
        case $name in arm64*) prefix="qemu-aarch64 -L /usr/aarch64-linux-gnu $work/$name"; ks=portable ;; *) ks=$kernels ;; esac
        for k in $ks; do
            for t in 1 2; do
                [ -n "$full" ] || [ "$run.$k" != deeper.portable ] || [ "$name.$t" = gcc-O2.2 ] || continue
                line=$(result "$prefix" "$run" --kernel "$k" --threads "$t")
                [ -n "$first" ] || first=$line
                if [ -n "$line" ] && [ "$line" = "$first" ]; then mark=same; passed=$((passed + 1));
                else mark=DIFFERS; failed=$((failed + 1)); fi
                printf '  %-10s %-9s %-8s %s  %s\n' "$name" "$k" "$t" "$line" "$mark"
            done
        done
    done
    [ -n "$full" ] && for k in naive im2col; do
        line=$(result "$work/gcc-O2" "$run" --kernel $k)
        printf '  %-10s %-9s %-8s %s  %s\n' gcc-O2 "$k" 1 "$line" "$([ "$line" = "$first" ] && echo same || echo 'differs (a reference: another order of additions)')"
    done
done

# Chapter 8: the depthwise-separable network (the depthwise convolution's
# loop is compiled once per instruction set, chosen by --kernel), in the
# same cells. Each cell gets checkpoints of its own: chapter 8 would
# otherwise find the last cell's finished run and only test it again.
first=""
printf '\n%s\n' "chapter8 --model separable --limit 32 --batch 16 --epochs 1"
printf '  %-10s %-9s %-8s %s\n' build kernel threads result
for b in $builds; do
    name=${b%%:*} rest=${b#*:}; cc=${rest%%:*} flags=${rest#*:}
    [ -x "$work/$name-8" ] && [ "$work/$name-8" -nt chapters/chapter8.c ] ||
        $cc -std=c11 $flags -Wall -Wextra -pedantic chapters/chapter8.c -o "$work/$name-8" -lm -pthread > "$work/$name-8.log" 2>&1 ||
        { echo "  $name: chapter 8 does not build"; failed=$((failed + 1)); continue; }
    prefix="$work/$name-8"
    case $name in arm64*) prefix="qemu-aarch64 -L /usr/aarch64-linux-gnu $work/$name-8"; ks=portable; ts=1 ;; *) ks=$kernels; ts="1 2" ;; esac
    for k in $ks; do
        for t in $ts; do
            cells="$work/cells8/$name-$k-$t"
            rm -rf "$cells"
            line=$($prefix --data "$work/data" --checkpoints "$cells" --plots "$cells" --model separable --limit 32 --batch 16 \
                   --epochs 1 --kernel "$k" --threads "$t" 2>&1 | sed -n 's/^result \(.*\) seconds=.*/\1/p')
            [ -n "$first" ] || first=$line
            if [ -n "$line" ] && [ "$line" = "$first" ]; then mark=same; passed=$((passed + 1));
            else mark=DIFFERS; failed=$((failed + 1)); fi
            printf '  %-10s %-9s %-8s %s  %s\n' "$name" "$k" "$t" "$line" "$mark"
        done
    done
done

# Chapter 8 in bf16 (--precision bf16): the same cells, plus the
# instruction (avx512bf16) where the CPU has it; the basic CNN, whose
# convolutions and dense layers are all bf16 GEMMs. The emulations and
# the instruction must give one set of bits.
bf16_kernels=$kernels
"$work/gcc-O2-8" --data /nonexistent --precision bf16 --kernel avx512bf16 > /dev/null 2>&1
[ $? = 16 ] || bf16_kernels="$kernels avx512bf16"
first=""
printf '\n%s\n' "chapter8 --model basic --precision bf16 --limit 32 --batch 16 --epochs 1"
printf '  %-10s %-11s %-8s %s\n' build kernel threads result
for b in $builds; do
    name=${b%%:*}
    [ -x "$work/$name-8" ] || continue
    prefix="$work/$name-8"
    case $name in arm64*) prefix="qemu-aarch64 -L /usr/aarch64-linux-gnu $work/$name-8"; ks=portable; ts=1 ;; *) ks=$bf16_kernels; ts="1 2" ;; esac
    for k in $ks; do
        for t in $ts; do
            cells="$work/cells16/$name-$k-$t"
            rm -rf "$cells"
            line=$($prefix --data "$work/data" --checkpoints "$cells" --plots "$cells" --model basic --precision bf16 \
                   --limit 32 --batch 16 --epochs 1 --kernel "$k" --threads "$t" 2>&1 | sed -n 's/^result \(.*\) seconds=.*/\1/p')
            [ -n "$first" ] || first=$line
            if [ -n "$line" ] && [ "$line" = "$first" ]; then mark=same; passed=$((passed + 1));
            else mark=DIFFERS; failed=$((failed + 1)); fi
            printf '  %-10s %-11s %-8s %s  %s\n' "$name" "$k" "$t" "$line" "$mark"
        done
    done
done
echo "$passed passed, $failed failed"
[ $failed = 0 ]
