#!/bin/sh
# Build sid minbase with imagefactory and with mmdebstrap, one after the other,
# with a cold package cache and then a warm one, and print the wall-time ratios.
# Both produce a zstd-compressed tar image (imagefactory also keeps the root
# directory and writes a manifest); mmdebstrap has no package cache between runs.
# Also checks that both install the same package set (dpkg-query -W).
#   bench/build.sh [SUITE]      (run as root, after scripts/setup)
set -eu
cd "$(dirname "$0")/.."
suite=${1:-sid}
IF=.venv/bin/imagefactory
mirror=$(.venv/bin/python -c 'from imagefactory.sources import host_debian_mirror; print(host_debian_mirror())')
work=$(mktemp -d /var/tmp/imagefactory-bench-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

run_if() {  # $1 = cache dir, $2 = output dir
    t0=$(now); $IF build "debian-$suite" --allow-expired-release -q --cache-dir "$1" -o "$2" >/dev/null; t1=$(now)
    secs "$t0" "$t1"
}
run_mm() {  # $1 = output dir; mmdebstrap writes the same deliverable: a tar.zst image
    t0=$(now)
    mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' "$suite" "$1.tar.zst" "$mirror"
    t1=$(now); secs "$t0" "$t1"
}

echo "suite $suite, $(nproc) cores, mirror from the host's apt sources"
if_cold=$(run_if "$work/cache" "$work/if1")
mm_cold=$(run_mm "$work/mm1")
if_warm=$(run_if "$work/cache" "$work/if2")
mm_warm=$(run_mm "$work/mm2")

dpkg-query --admindir "$work/if1/debian-$suite/rootfs/var/lib/dpkg" -W > "$work/if.list"
mkdir "$work/mm1" && tar -C "$work/mm1" --zstd -xf "$work/mm1.tar.zst" ./var/lib/dpkg
dpkg-query --admindir "$work/mm1/var/lib/dpkg" -W > "$work/mm.list"
if cmp -s "$work/if.list" "$work/mm.list"; then same="identical ($(wc -l < "$work/if.list") packages)"
else same="DIFFERENT: $(diff "$work/mm.list" "$work/if.list" | grep -c '^[<>]') lines differ"; fi

printf '\n%-12s %14s %14s %8s\n' "cache" "imagefactory" "mmdebstrap" "ratio"
printf '%-12s %13.1fs %13.1fs %7.2fx\n' cold "$if_cold" "$mm_cold" "$(echo "$if_cold / $mm_cold" | bc -l)"
printf '%-12s %13.1fs %13.1fs %7.2fx\n' warm "$if_warm" "$mm_warm" "$(echo "$if_warm / $mm_warm" | bc -l)"
echo "package sets: $same"
cmp -s "$work/if1/debian-$suite.tar.zst" "$work/if2/debian-$suite.tar.zst" && echo "images: byte-identical across the two builds"
