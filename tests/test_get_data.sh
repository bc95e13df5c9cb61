#!/bin/sh
# test_get_data.sh - tests src/get-data.sh (what `make data` runs) on the
# real Fashion-MNIST files, in a temporary directory that it removes.
#
# The data comes from data/ of the checkout if it is there and good, else
# from /usr/share/datasets/fashion-mnist; without either, every case is
# skipped. The script always gets FASHION_MNIST_DIR pointing at a local copy
# (and a proxy that refuses), so the internet mirror is never reached.
# It is not a test of the C programs. Ends with "N passed, N failed".
set -u

top=$(cd "$(dirname "$0")/.." && pwd)
debian=/usr/share/datasets/fashion-mnist
names="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
sums="f4a8712d7a061bf5bd6d2ca38dc4d50a 9018921c3c673c538a1fc5bad174d6f9 8181f5470baa50b63fa0f6fddb340f0a 15d484375f8d13e6eb1aabb0c3f46965"

t=$(mktemp -d) || exit 1
trap 'rm -rf "$t"' EXIT
trap 'exit 1' HUP INT TERM
umask 022
# Should the mirror ever be tried, curl and wget get a refused connection.
http_proxy=http://127.0.0.1:9; export http_proxy; unset no_proxy NO_PROXY

passed=0 failed=0 skipped=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL $*"; [ ! -s "$t/out" ] || sed 's/^/    | /' "$t/out"; }
skip() { skipped=$((skipped + 1)); echo "skip: $*"; }

md5_of() { md5sum < "$1" | cut -d' ' -f1; }

# good DIR: the four files are in DIR with the right MD5s and nothing else
# is (no temporaries); otherwise says what is wrong in $why.
good() {
    why='' i=1
    for n in $names; do
        s=$(echo "$sums" | cut -d' ' -f$i); i=$((i + 1))
        if [ ! -f "$1/$n" ]; then why="$1/$n is missing or not a file"; return 1; fi
        if [ "$(md5_of "$1/$n")" != "$s" ]; then why="$1/$n has the wrong MD5"; return 1; fi
    done
    extra=$(ls -A "$1" | grep -vx -e train-images-idx3-ubyte -e train-labels-idx1-ubyte -e t10k-images-idx3-ubyte -e t10k-labels-idx1-ubyte)
    if [ -n "$extra" ]; then why="$1 also holds: $(echo $extra)"; return 1; fi
}

# run DEST [SOURCE]: runs the script, output in $t/out, exit status in $rc.
run() {
    FASHION_MNIST_DIR=${2:-$src} sh "$top/src/get-data.sh" "$1" > "$t/out" 2>&1; rc=$?
}

# link FROM TO: a hard link (a copy on another file system). Safe, because
# the script only ever renames onto or removes its files, never writes them.
link() { ln "$1" "$2" 2>/dev/null || cp "$1" "$2"; }

# A local source: hard links to the checkout's data/, else the Debian files.
mkdir "$t/src" && src=$t/src
for n in $names; do [ -f "$top/data/$n" ] && link "$top/data/$n" "$src/$n"; done
if ! good "$src"; then
    rm -f "$src"/*; src=
    if [ -f "$debian/t10k-labels-idx1-ubyte.gz" ]; then src=$debian; fi
fi
if [ -z "$src" ]; then
    for c in fresh second-run corrupt dir-entry dest-is-file dest-under-file gzip-error \
             permission concurrent interrupt symlink; do skip "$c: no Fashion-MNIST in data/ or $debian"; done
    echo "$passed passed, $failed failed, $skipped skipped"; exit 0
fi

# Fresh: a destination that does not exist yet gets the four files, with the
# mode cp would give them (mktemp's own is 0600).
d=$t/fresh/data
run "$d"
if [ $rc != 0 ]; then fail "fresh: exit $rc"
elif ! good "$d"; then fail "fresh: $why"
elif ! grep -q '^Fashion-MNIST is in' "$t/out"; then fail "fresh: no final line"
elif [ "$(ls -l "$d/t10k-labels-idx1-ubyte" | cut -c1-10)" != "-rw-r--r--" ]; then
    fail "fresh: mode $(ls -l "$d/t10k-labels-idx1-ubyte" | cut -c1-10), expected -rw-r--r-- (umask 022)"
else pass; fi
full=$d

# Second run: a complete destination is left as it is.
before=$(ls -li "$d")
run "$d"
if [ $rc != 0 ]; then fail "second-run: exit $rc"
elif [ "$(ls -li "$d")" != "$before" ]; then fail "second-run: files changed"
elif grep -q '(from' "$t/out"; then fail "second-run: fetched again"
else pass; fi

# Corrupt: a wrong copy (right size) and a truncated one are replaced.
# (rm first: these are the script's copies, but never write through a link.)
d=$t/corrupt; mkdir "$d"
for n in $names; do link "$full/$n" "$d/$n"; done
rm "$d/t10k-labels-idx1-ubyte" "$d/train-labels-idx1-ubyte"
head -c 10008 /dev/zero > "$d/t10k-labels-idx1-ubyte"
head -c 100 "$full/train-labels-idx1-ubyte" > "$d/train-labels-idx1-ubyte"
run "$d"
if [ $rc != 0 ]; then fail "corrupt: exit $rc"
elif ! good "$d"; then fail "corrupt: $why"
elif [ "$(grep -c '^  removed' "$t/out")" != 2 ]; then fail "corrupt: does not say it removed 2 files"
else pass; fi

# Bug 1: a directory where a file belongs. It used to report success with
# the file moved inside that directory.
d=$t/dir-entry; mkdir -p "$d/train-labels-idx1-ubyte"
run "$d"
if [ $rc = 0 ]; then fail "dir-entry: exit 0 with $d/train-labels-idx1-ubyte a directory"
elif [ -n "$(ls -A "$d/train-labels-idx1-ubyte")" ]; then fail "dir-entry: wrote into the directory"
elif ! grep "$d/train-labels-idx1-ubyte" "$t/out" | grep -q 'remove'; then
    fail "dir-entry: the message does not name $d/train-labels-idx1-ubyte and say to remove it"
else pass; fi

# Bug 2: the destination is a regular file: a clear message, file untouched.
d=$t/dest-is-file; echo keep > "$d"
run "$d"
if [ $rc = 0 ]; then fail "dest-is-file: exit 0"
elif [ "$(cat "$d")" != keep ]; then fail "dest-is-file: the file was changed"
elif ! grep "$d" "$t/out" | grep 'not a directory' | grep -q 'remove'; then
    fail "dest-is-file: the message does not name $d, say it is not a directory, and say to remove it"
else pass; fi

# Bug 4: errors say why. mkdir under a file says "Not a directory".
d=$t/dest-is-file/data
run "$d"
if [ $rc = 0 ]; then fail "dest-under-file: exit 0"
elif ! grep -q 'Not a directory' "$t/out"; then fail "dest-under-file: the system's reason is not shown"
else pass; fi

# Bug 4: a broken .gz: gzip's own message is shown (it was thrown away), no
# temporary is left, and the Debian files are used instead.
if [ -f "$debian/t10k-labels-idx1-ubyte.gz" ]; then
    d=$t/gzip-error; mkdir -p "$d" "$t/badgz"
    for n in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte; do link "$full/$n" "$d/$n"; done
    gzip -c < "$full/t10k-labels-idx1-ubyte" | head -c 1000 > "$t/badgz/t10k-labels-idx1-ubyte.gz"
    run "$d" "$t/badgz"
    if [ $rc != 0 ]; then fail "gzip-error: exit $rc"
    elif ! good "$d"; then fail "gzip-error: $why"
    elif ! grep -q '^gzip: ' "$t/out"; then fail "gzip-error: gzip's message is not shown"
    else pass; fi
else skip "gzip-error: needs $debian to fall back on"; fi

# Bug 4: a read-only destination says "Permission denied" (not as root).
if [ "$(id -u)" != 0 ]; then
    d=$t/permission; mkdir "$d"; chmod 555 "$d"
    run "$d"
    if [ $rc = 0 ]; then fail "permission: exit 0"
    elif ! grep -q 'Permission denied' "$t/out"; then fail "permission: the system's reason is not shown"
    else pass; fi
    chmod 755 "$d"
else skip "permission: running as root, which may write anywhere"; fi

# Bug 3: three runs at once in one empty destination, each copying the files
# for real. They used to share temporary names and fail; all must succeed.
d=$t/concurrent; mkdir "$d"
for k in 1 2 3; do
    FASHION_MNIST_DIR=$src sh "$top/src/get-data.sh" "$d" > "$t/out$k" 2>&1 &
    eval pid$k=$!
done
bad=
for k in 1 2 3; do eval wait \$pid$k; r=$?; [ $r = 0 ] || bad="$bad run $k exit $r;"; done
cat "$t/out1" "$t/out2" "$t/out3" > "$t/out"
if [ -n "$bad" ]; then fail "concurrent:$bad"
elif ! good "$d"; then fail "concurrent: $why"
else pass; fi

# Interrupted (TERM) while writing train-images: the temporary is removed.
# A .gz source makes the write last long enough to be caught.
d=$t/interrupt; mkdir -p "$d" "$t/slow"
for n in train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do link "$full/$n" "$d/$n"; done
if [ -f "$src/train-images-idx3-ubyte.gz" ]; then ln -s "$src/train-images-idx3-ubyte.gz" "$t/slow/"
else gzip -1 -c < "$full/train-images-idx3-ubyte" > "$t/slow/train-images-idx3-ubyte.gz"; fi
FASHION_MNIST_DIR=$t/slow sh "$top/src/get-data.sh" "$d" > "$t/out" 2>&1 &
pid=$!
seen='' i=0
while [ -z "$seen" ] && [ $i -lt 100000 ] && kill -0 $pid 2>/dev/null; do
    for f in "$d"/.train-images*; do [ -e "$f" ] && seen=1; done; i=$((i + 1))
done
[ -z "$seen" ] || kill -TERM $pid
wait $pid; rc=$?
if [ -z "$seen" ]; then skip "interrupt: the run ended before its temporary was seen"
elif [ $rc = 0 ]; then skip "interrupt: the run finished before TERM arrived"
elif [ -n "$(ls -A "$d" | grep '^\.')" ]; then
    fail "interrupt: left behind: $(ls -A "$d" | grep '^\.' | tr '\n' ' ')"
else pass; fi

# A symlink planted at the old temporary name is never followed.
d=$t/symlink; mkdir "$d"; echo victim > "$t/victim"
for n in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte; do link "$full/$n" "$d/$n"; done
ln -s "$t/victim" "$d/.t10k-labels-idx1-ubyte.part"
run "$d"
if [ $rc != 0 ]; then fail "symlink: exit $rc"
elif [ "$(cat "$t/victim")" != victim ]; then fail "symlink: wrote through the planted link"
else pass; fi

if [ $skipped != 0 ]; then echo "$passed passed, $failed failed, $skipped skipped"
else echo "$passed passed, $failed failed"; fi
[ $failed = 0 ]
