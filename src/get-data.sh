#!/bin/sh
# get-data.sh - puts the four Fashion-MNIST IDX files, uncompressed and
# checked, into data/ (or the directory given as $1). `make data` runs it.
#
# Sources, in order: files already in the directory; $FASHION_MNIST_DIR;
# /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist);
# the official mirror, with curl or wget. Every file is checked for size and
# MD5 against the published values below; a wrong one is removed, never kept.
# Files are written to a temporary name and renamed when they check out, so
# nothing half-written is ever left behind. Running it twice does nothing.
set -u

dest=${1:-data}
mirror=http://fashion-mnist.s3-website.eu-central-1.amazonaws.com
debian=/usr/share/datasets/fashion-mnist

# name, size in bytes, md5 of the uncompressed file
files="train-images-idx3-ubyte 47040016 f4a8712d7a061bf5bd6d2ca38dc4d50a
train-labels-idx1-ubyte 60008 9018921c3c673c538a1fc5bad174d6f9
t10k-images-idx3-ubyte 7840016 8181f5470baa50b63fa0f6fddb340f0a
t10k-labels-idx1-ubyte 10008 15d484375f8d13e6eb1aabb0c3f46965"

md5_of() {
    if command -v md5sum >/dev/null 2>&1; then md5sum < "$1" | cut -d' ' -f1
    else md5 -q "$1"; fi
}

size_of() { wc -c < "$1" | tr -d ' '; }

# check FILE NAME SIZE MD5: prints why the file is wrong, or nothing.
check() {
    got=$(size_of "$1")
    if [ "$got" != "$3" ]; then
        echo "$2 has $got bytes, expected $3 (truncated or the wrong file)"; return 1
    fi
    sum=$(md5_of "$1")
    if [ "$sum" != "$4" ]; then
        echo "$2 has MD5 $sum, expected $4 (a corrupt copy, or MNIST digits instead of Fashion-MNIST)"; return 1
    fi
}

# fetch NAME SIZE MD5: tries each source in turn until one gives a good file.
fetch() {
    tmp="$dest/.$1.part"
    for source in "${FASHION_MNIST_DIR:-}" "$debian" mirror; do
        rm -f "$tmp"
        case "$source" in
            "") continue ;;
            mirror)
                if command -v curl >/dev/null 2>&1; then
                    curl -fsSL --connect-timeout 10 --max-time 300 "$mirror/$1.gz" 2>/dev/null | gzip -dc > "$tmp" 2>/dev/null
                elif command -v wget >/dev/null 2>&1; then
                    wget -q -t 1 -T 10 -O - "$mirror/$1.gz" 2>/dev/null | gzip -dc > "$tmp" 2>/dev/null
                else continue; fi ;;
            *)
                if [ -f "$source/$1" ]; then cp "$source/$1" "$tmp"
                elif [ -f "$source/$1.gz" ]; then gzip -dc "$source/$1.gz" > "$tmp" 2>/dev/null
                else continue; fi ;;
        esac
        if [ ! -s "$tmp" ]; then rm -f "$tmp"; continue; fi
        if why=$(check "$tmp" "$1" "$2" "$3"); then
            mv "$tmp" "$dest/$1" && echo "  $dest/$1  (from $source)" && return 0
        fi
        echo "  rejected $1 from $source: $why" >&2
    done
    rm -f "$tmp"
    return 1
}

mkdir -p "$dest" || exit 1
status=0
echo "$files" | {
    while read -r name size md5; do
        if [ -f "$dest/$name" ]; then
            if why=$(check "$dest/$name" "$name" "$size" "$md5"); then continue; fi
            echo "  removed $dest/$name: $why" >&2
            rm -f "$dest/$name"
        fi
        fetch "$name" "$size" "$md5" || status=1
    done
    if [ "$status" != 0 ]; then
        cat >&2 <<EOF

Could not get Fashion-MNIST into $dest/. Any one of these fixes it:
  - on Debian or Ubuntu:  sudo apt-get install dataset-fashion-mnist   then  make data
  - with network access:  make data   (downloads from $mirror)
  - by hand: download the four .gz files from
      $mirror/
    and run  FASHION_MNIST_DIR=/where/they/are make data
EOF
        exit 1
    fi
    echo "Fashion-MNIST is in $dest/ (sizes and MD5 sums checked)"
}
