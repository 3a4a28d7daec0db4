#!/bin/sh
# Seed one guest from an image with imagefactory, and unpack the same image the
# plain way (sha256sum, then GNU tar --zstd -x with numeric owners and xattrs),
# three times each; print the median wall times, their ratio, and whether both
# trees are identical (paths, modes, owners, types, sizes, link targets).
#   bench/seed.sh IMAGE.tar.zst      (run as root; the manifest must sit beside it)
set -eu
cd "$(dirname "$0")/.."
image=$(realpath "$1")
IF=$(pwd)/.venv/bin/imagefactory
work=$(mktemp -d /var/tmp/imagefactory-bench-seed.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
median() { sort -n | sed -n 2p; }

seed_once() {
    rm -rf "$work/vs" "$work/etc"
    t0=$(now)
    $IF seed "$image" web1 --vdir "$work/vs" --confdir "$work/etc" --ip 10.0.0.11/24 --memory 512M --cpu 25% -q >/dev/null
    t1=$(now); echo "$t1 - $t0" | bc
}
tar_once() {
    rm -rf "$work/tar"; mkdir "$work/tar"
    t0=$(now)
    sha256sum "$image" >/dev/null
    tar --zstd -xpf "$image" -C "$work/tar" --numeric-owner --xattrs --xattrs-include='*'
    t1=$(now); echo "$t1 - $t0" | bc
}
listing() { (cd "$1" && find . -printf '%p %m %U %G %y %s %l\n' | sort); }

sync
ifs=$( (seed_once; seed_once; seed_once) | median)
tars=$( (tar_once; tar_once; tar_once) | median)
same=no; [ "$(listing "$work/vs/web1")" = "$(listing "$work/tar")" ] && same=yes
echo "image $(basename "$image"): $(ls -l "$image" | awk '{print $5}') bytes, $(listing "$work/tar" | wc -l) entries"
echo "imagefactory seed (verify + safe unpack + 3 host configs): ${ifs}s"
echo "sha256sum + tar --zstd -x:                                ${tars}s"
echo "ratio seed/tar: $(echo "scale=2; $ifs / $tars" | bc)   identical trees: $same"
