#!/bin/sh
# small_data.sh - Fashion-MNIST cut down, for short runs that must be fast
# everywhere (under qemu too): the first TRAIN training images and labels
# (a tenth of them held out for validation) and the first TEST test ones,
# with the counts in the IDX headers changed to match.
#
#   sh tests/small_data.sh FROM TO TRAIN TEST
set -eu
from=$1 to=$2 train=$3 test=$4
mkdir -p "$to"
be32() {  # a number as four big-endian bytes
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255)))"
}
cut() {  # cut FILE COUNT HEADER ITEM
    { head -c 4 "$from/$1"; be32 "$2"; dd if="$from/$1" bs=1 skip=8 count=$(($3 - 8)) 2>/dev/null
      tail -c +$(($3 + 1)) "$from/$1" | head -c $(($2 * $4)); } > "$to/$1.tmp"
    mv "$to/$1.tmp" "$to/$1"
}
cut train-images-idx3-ubyte "$train" 16 784
cut train-labels-idx1-ubyte "$train" 8 1
cut t10k-images-idx3-ubyte "$test" 16 784
cut t10k-labels-idx1-ubyte "$test" 8 1
