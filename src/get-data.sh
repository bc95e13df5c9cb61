#!/bin/sh
# get-data.sh - puts the four Fashion-MNIST IDX files, uncompressed and
# checked, into data/ (or the directory given as $1). `make data` runs it.
#
# Sources, in order: files already in the directory; $FASHION_MNIST_DIR;
# /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist);
# the official mirror, with curl or wget. Every file is checked for size and
# MD5 against the published values below; a wrong one is removed, never kept.
# Files are written to a fresh temporary name (mktemp, in the directory) and
# renamed when they check out, so nothing half-written is ever left behind,
# even when interrupted, and two runs at once do not get in each other's way.
# Running it twice does nothing. It is not a general downloader: it writes
# only these four names, and refuses a destination that is not a directory
# or that holds something other than a file under one of them.
set -u

# --install (what `make data` passes): on Debian or Ubuntu, as root, with no
# copy of the data anywhere, install the package dataset-fashion-mnist first.
install=no
if [ "${1:-}" = "--install" ]; then install=yes; shift; fi
dest=${1:-data}
mirror=http://fashion-mnist.s3-website.eu-central-1.amazonaws.com
debian=/usr/share/datasets/fashion-mnist

# name, size in bytes, md5 of the uncompressed file
files="train-images-idx3-ubyte 47040016 f4a8712d7a061bf5bd6d2ca38dc4d50a
train-labels-idx1-ubyte 60008 9018921c3c673c538a1fc5bad174d6f9
t10k-images-idx3-ubyte 7840016 8181f5470baa50b63fa0f6fddb340f0a
t10k-labels-idx1-ubyte 10008 15d484375f8d13e6eb1aabb0c3f46965"

# The temporary file being written, if any: removed however the script ends.
tmp=
trap '[ -z "$tmp" ] || rm -f "$tmp"' EXIT
trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM

# mktemp makes files only its owner can read; give them the mode cp would.
mode=$(umask -S | tr -d x)

fail() { echo "get-data.sh: $*" >&2; exit 1; }

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

# newtmp NAME: a fresh empty file in $dest (never an existing name or link).
newtmp() {
    tmp=$(mktemp "$dest/.$1.XXXXXX") || fail "cannot write into $dest/ (the error above says why)"
}

# fetch NAME SIZE MD5: tries each source in turn until one gives a good file.
# Errors of cp, gzip, curl and mv are shown as they are: they say why.
fetch() {
    for source in "${FASHION_MNIST_DIR:-}" "$debian" mirror; do
        case "$source" in
            "") continue ;;
            mirror)
                if command -v curl >/dev/null 2>&1; then
                    newtmp "$1"; curl -fsSL --connect-timeout 10 --max-time 300 "$mirror/$1.gz" | gzip -dc > "$tmp"
                elif command -v wget >/dev/null 2>&1; then
                    newtmp "$1"; wget -q -t 1 -T 10 -O - "$mirror/$1.gz" | gzip -dc > "$tmp"
                else continue; fi ;;
            *)
                if [ -f "$source/$1" ]; then newtmp "$1"; cp "$source/$1" "$tmp"
                elif [ -f "$source/$1.gz" ]; then newtmp "$1"; gzip -dc "$source/$1.gz" > "$tmp"
                else continue; fi ;;
        esac
        if [ ! -s "$tmp" ]; then :
        elif ! why=$(check "$tmp" "$1" "$2" "$3"); then
            echo "  rejected $1 from $source: $why" >&2
        elif chmod "$mode" "$tmp" && mv -f "$tmp" "$dest/$1"; then
            tmp=; echo "  $dest/$1  (from $source)"; return 0
        else
            fail "cannot put $1 into $dest/ (the error above says why)"
        fi
        rm -f "$tmp"; tmp=
    done
    return 1
}

# The destination must be a directory, and each of the four names in it a
# file or nothing; anything else is a mistake this script will not guess at.
if [ -e "$dest" ] && [ ! -d "$dest" ]; then
    fail "$dest exists but is not a directory; remove or rename it (rm $dest), then run make data again"
fi
mkdir -p "$dest" || fail "cannot create the directory $dest (the error above says why)"
bad=0
while read -r name size md5; do
    if [ -e "$dest/$name" ] && [ ! -f "$dest/$name" ]; then
        if [ -d "$dest/$name" ]; then what="is a directory"; else what="is not a regular file"; fi
        echo "get-data.sh: $dest/$name $what, where the data file belongs; remove it (rm -r $dest/$name), then run make data again" >&2
        bad=1
    fi
done <<END
$files
END
[ "$bad" = 0 ] || exit 1

# Nothing here, nowhere to copy from: as root on Debian, the package.
if [ "$install" = yes ] && [ ! -f "$dest/t10k-labels-idx1-ubyte" ] && [ -z "${FASHION_MNIST_DIR:-}" ] &&
   [ ! -d "$debian" ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing the Debian package dataset-fashion-mnist (you are root): apt-get install -y dataset-fashion-mnist"
        apt-get install -y dataset-fashion-mnist >/dev/null || echo "  apt-get failed (see above); trying the other sources" >&2
    else
        echo "note: on this Debian system, sudo apt-get install dataset-fashion-mnist   gives the data without a download"
    fi
fi

status=0
while read -r name size md5; do
    if [ -f "$dest/$name" ]; then
        if why=$(check "$dest/$name" "$name" "$size" "$md5"); then continue; fi
        echo "  removed $dest/$name: $why" >&2
        rm -f "$dest/$name"
    fi
    fetch "$name" "$size" "$md5" || status=1
done <<END
$files
END
if [ "$status" != 0 ]; then
    cat >&2 <<EOF2

Could not get Fashion-MNIST into $dest/. Any one of these fixes it:
  - on Debian or Ubuntu:  sudo apt-get install dataset-fashion-mnist   then  make data
  - with network access:  make data   (downloads from $mirror)
  - by hand: download the four .gz files from
      $mirror/
    and run  FASHION_MNIST_DIR=/where/they/are make data
EOF2
    exit 1
fi
echo "Fashion-MNIST is in $dest/ (sizes and MD5 sums checked)"
