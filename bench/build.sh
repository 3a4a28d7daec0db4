#!/bin/sh
# Nightly-build bench: imagefactory against mmdebstrap and against its own cold build, all in one run.
#   1. sid minbase cold (empty caches) and warm (package cache warm, --force: no cached tree) vs mmdebstrap
#   2. the same build again into the same output directory: "up to date" (goal <= 0.1x the cold build)
#   3. debian-sid-web cold, then with one customize step changed (goal <= 0.25x its cold build), and that
#      image compared byte for byte with a --force build of the changed recipe
#   4. sid minbase --arch arm64 under qemu-user-static vs mmdebstrap --arch=arm64 (same package set)
# Both tools produce a zstd-compressed tar image (imagefactory also keeps the root and a manifest);
# mmdebstrap has no cache between runs. Package sets are compared with dpkg-query -W.
#   bench/build.sh [SUITE]      (run as root, after scripts/setup; arm64 takes minutes: SKIP_ARM64=1 skips it)
set -eu
cd "$(dirname "$0")/.."
suite=${1:-sid}
IF=.venv/bin/imagefactory
mirror=$(.venv/bin/python -c 'from imagefactory.build.sources import host_debian_mirror; print(host_debian_mirror())')
work=$(mktemp -d /var/tmp/imagefactory-bench-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
ratio() { echo "$1 / $2" | bc -l; }

run_if() {  # $1 = recipe, $2 = cache dir, $3 = output dir, then extra options
    r=$1; c=$2; o=$3; shift 3
    t0=$(now); $IF build "$r" --allow-expired-release -q --cache-dir "$c" -o "$o" "$@" >"$work/last.out"; t1=$(now)
    secs "$t0" "$t1"
}
run_mm() {  # $1 = output dir, then extra options; the same deliverable: a tar.zst image
    o=$1; shift
    t0=$(now)
    mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' "$@" "$suite" "$o.tar.zst" \
        "$mirror"
    t1=$(now); secs "$t0" "$t1"
}
same_set() {  # $1 = imagefactory root, $2 = mmdebstrap tar.zst
    dpkg-query --admindir "$1/var/lib/dpkg" -W > "$work/if.list"
    mkdir -p "$work/mmx" && rm -rf "$work/mmx"/* && tar -C "$work/mmx" --zstd -xf "$2" ./var/lib/dpkg
    dpkg-query --admindir "$work/mmx/var/lib/dpkg" -W > "$work/mm.list"
    if cmp -s "$work/if.list" "$work/mm.list"; then echo "identical ($(wc -l < "$work/if.list") packages)"
    else echo "DIFFERENT: $(diff "$work/mm.list" "$work/if.list" | grep -c '^[<>]') lines differ"; fi
}

echo "suite $suite, $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), mirror from the host's apt sources"
C="$work/cache"
if_cold=$(run_if "debian-$suite" "$C" "$work/if1")
mm_cold=$(run_mm "$work/mm1")
if_warm=$(run_if "debian-$suite" "$C" "$work/if2" --force)
mm_warm=$(run_mm "$work/mm2")
sid_set=$(same_set "$work/if1/debian-$suite/rootfs" "$work/mm1.tar.zst")
if_utd=$(run_if "debian-$suite" "$C" "$work/if1")
grep -q "up to date" "$work/last.out" || { echo "second build was not up to date" >&2; exit 1; }

# debian-sid-web: cold (no cached tree for it), then one customize step changed (same name, same output)
mkdir "$work/r"
sed 's/^content = "Built by imagefactory.\\n"/content = "Built by imagefactory, changed.\\n"/' \
    imagefactory/recipes/debian-sid-web.toml > "$work/r/debian-sid-web.toml"
cmp -s imagefactory/recipes/debian-sid-web.toml "$work/r/debian-sid-web.toml" && { echo "sed changed nothing" >&2; exit 1; }
web_cold=$(run_if debian-sid-web "$C" "$work/web")
web_cust=$(run_if "$work/r/debian-sid-web.toml" "$C" "$work/web" --explain 2>"$work/explain")
grep -q "explain: install: reused tree" "$work/explain" || { cat "$work/explain" >&2; exit 1; }
run_if "$work/r/debian-sid-web.toml" "$C" "$work/webforce" --force >/dev/null
if cmp -s "$work/web/debian-sid-web.tar.zst" "$work/webforce/debian-sid-web.tar.zst"; then
    web_same="byte-identical to a --force build"; else web_same="DIFFERS from a --force build"; fi

printf '\n%-34s %14s %14s %8s\n' "sid minbase" "imagefactory" "mmdebstrap" "ratio"
printf '%-34s %13.1fs %13.1fs %7.2fx\n' "cold (empty caches)" "$if_cold" "$mm_cold" "$(ratio "$if_cold" "$mm_cold")"
printf '%-34s %13.1fs %13.1fs %7.2fx\n' "warm packages, --force" "$if_warm" "$mm_warm" "$(ratio "$if_warm" "$mm_warm")"
echo "package sets: $sid_set"
cmp -s "$work/if1/debian-$suite.tar.zst" "$work/if2/debian-$suite.tar.zst" && echo "images: byte-identical across the two builds"
printf '\n%-34s %14s %14s %8s\n' "against its own cold build" "this build" "cold build" "ratio"
printf '%-34s %13.2fs %13.1fs %7.3fx  (goal <= 0.1)\n' "sid unchanged: up to date" "$if_utd" "$if_cold" \
    "$(ratio "$if_utd" "$if_cold")"
printf '%-34s %13.1fs %13.1fs %7.3fx  (goal <= 0.25)\n' "sid-web, one customize step changed" "$web_cust" \
    "$web_cold" "$(ratio "$web_cust" "$web_cold")"
echo "sid-web after the customize change: $web_same"

if [ "${SKIP_ARM64:-}" != 1 ]; then
    arm_if=$(run_if "debian-$suite" "$C" "$work/arm" --arch arm64)
    arm_mm=$(run_mm "$work/mmarm" --arch=arm64)
    printf '\n%-34s %14s %14s %8s\n' "sid minbase --arch arm64 (qemu)" "imagefactory" "mmdebstrap" "ratio"
    printf '%-34s %13.1fs %13.1fs %7.2fx\n' "cold tree, warm index cache" "$arm_if" "$arm_mm" "$(ratio "$arm_if" "$arm_mm")"
    echo "package sets: $(same_set "$work/arm/debian-$suite/rootfs" "$work/mmarm.tar.zst")"
    echo "file: $(file -bL "$work/arm/debian-$suite/rootfs/usr/bin/dpkg" | cut -d, -f1-2)"
fi
