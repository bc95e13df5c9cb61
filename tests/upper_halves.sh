#!/bin/sh
# upper_halves.sh - every function of the chapters that uses the
# upper halves of the vector registers (ymm or zmm) clears them before it
# hands control back (vzeroupper).
#
# Why. The chapters are compiled for SSE2; the fast loops are compiled for
# AVX2 or AVX-512 with target attributes. An SSE2 instruction that writes
# a register whose upper half holds data must wait for the register's old
# value, so SSE2 code run after a function that leaves the upper halves
# dirty runs slower, and every pass after it with it (book.md 5.6). gcc
# and clang clear them when such a function returns, but gcc 12 does not
# before a call it compiles as a jump (a tail call), so a function that
# ends by calling the portable loop for its last few elements must call
# _mm256_zeroupper() itself.
#
# How. Chapters 4 to 9 are built with cc -O3 (as make builds them);
# objdump -d lists each function's instructions; a function that names a
# ymm or zmm register and has no vzeroupper fails. (It does not follow
# the branches: a function that clears them on one way out and not on
# another passes. Following them needs more than awk; the compilers put
# vzeroupper before every return, so the way out they miss is the jump.) x86-64 only: elsewhere,
# or without objdump, it skips. Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
if [ "$(uname -m)" != x86_64 ] || ! command -v objdump > /dev/null 2>&1; then
    echo "skip: not x86-64, or no objdump (binutils)"
    echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
work=build/upper_halves
mkdir -p "$work"
passed=0 failed=0
for src in chapters/chapter[4-9].c; do  # chapters 1-3 have no vector loops; the tools include a chapter
    name=$(basename "$src" .c)
    if ! ${CC:-cc} -std=c11 -O3 "$src" -o "$work/$name" -lm -pthread > "$work/$name.log" 2>&1; then
        failed=$((failed + 1)); echo "FAIL $src does not build"; cat "$work/$name.log"; continue
    fi
    dirty=$(objdump -d --no-show-raw-insn "$work/$name" | awk '
        /^[0-9a-f]+ <.*>:$/ { if (name != "" && wide && !cleared) print name; name = $2; wide = 0; cleared = 0 }
        /%[yz]mm/ { wide = 1 }
        /vzeroupper/ { cleared = 1 }
        END { if (name != "" && wide && !cleared) print name }' | tr '\n' ' ')
    if [ -z "$dirty" ]; then passed=$((passed + 1))
    else failed=$((failed + 1)); echo "FAIL $src: no vzeroupper in $dirty"; fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
