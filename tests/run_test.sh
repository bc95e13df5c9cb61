#!/bin/sh
# run_test.sh - runs one test of `make test`, its output into build/NAME.log,
# and prints one line: the test, its "N passed, N failed" line, its seconds.
#
#   sh tests/run_test.sh TEST        (a test program, or a tests/*.sh script)
#
# `make test` runs two of these at a time, the slowest first (most tests keep
# one core busy, and the machines have two), and then prints every log whole,
# in the suite's order, so two tests' lines never interleave. A test that
# exits with an error before its summary line counts as one failure.
# Exit code: 0 if the test exited 0, 1 otherwise.
t=$1
log=build/$(basename "$t" .sh).log
start=$(date +%s)
case $t in
    *.sh) sh "$t" ;;
    *) "$t" ;;
esac > "$log" 2>&1
rc=$?
summary='^[0-9]* passed, [0-9]* failed'
[ $rc = 0 ] || grep -q "$summary" "$log" || echo "0 passed, 1 failed" >> "$log"
echo "  $t: $(grep "$summary" "$log" | tail -n 1)$([ $rc = 0 ] || echo ", exit code $rc") ($(($(date +%s) - start)) s)"
[ $rc = 0 ]
