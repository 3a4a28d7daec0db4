#!/bin/bash
# composefs vs plain vs hardlink vs reflink: 20 guests from one debian-sid image.
#
#   bench/composefs.sh [IMAGE.tar.zst]     (root; the image defaults to the test cache's debian-sid,
#                                          built once from the host's mirror if missing)
#   N=20 guests per mode, PC=10 guests read for the page-cache figure.
#
# Each mode runs on its own fresh loop filesystem (ext4; XFS with reflink=1 for the reflink row),
# so `df` deltas are exact whatever else the host does. Reported per extra guest (guests 2..N):
# wall time of `imagefactory seed` (process start included) and disk use. Page cache: drop caches,
# read every file under /usr in one guest, then in PC guests, and sum what `fincore` says is
# resident for the files that back them (the store objects and metadata images for composefs,
# the guests' own files otherwise). The table is also written to $OUT (default below).
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
N=${N:-20}
PC=${PC:-10}
[ "$(id -u)" = 0 ] || { echo "bench/composefs.sh: needs root (mounts, drop_caches)" >&2; exit 6; }
IMAGE=${1:-$("$PY" -c 'from tests.support.composefs import sid_image; print(sid_image())')}
export IMAGEFACTORY_ALLOW_EXPIRED_RELEASE=1  # only for the one build of the sid tools root
WORK=$(mktemp -d /var/tmp/imagefactory-cfs-bench.XXXXXX)
OUT=${OUT:-/var/tmp/imagefactory-composefs-bench.txt}
IF=("$PY" -m imagefactory)

cleanup() {
    for m in $(awk -v w="$WORK" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

newfs() {  # newfs NAME TYPE -> mounted at $WORK/NAME
    truncate -s 16G "$WORK/$1.img"
    if [ "$2" = xfs ]; then mkfs.xfs -q -m reflink=1 "$WORK/$1.img"; else mkfs.ext4 -q -F "$WORK/$1.img"; fi
    mkdir -p "$WORK/$1"
    mount -o loop "$WORK/$1.img" "$WORK/$1"
}
used() { df -B1 --output=used "$1" | tail -1; }
now() { date +%s.%N; }

# seed_series NAME FS [seed args...]: seeds N guests g1..gN, prints "sec_per_extra bytes_per_extra first_sec"
seed_series() {
    local name=$1 fs=$2; shift 2
    newfs "$name" "$fs"
    local top=$WORK/$name t0 t1 first=0 total=0 u1=0
    for i in $(seq 1 "$N"); do
        t0=$(now)
        "${IF[@]}" seed "$IMAGE" "g$i" --vdir "$top/v" --confdir "$top/c" --ip "10.9.$((i / 250)).$((i % 250 + 1))/16" \
            -q "$@" >/dev/null
        t1=$(now)
        sync
        if [ "$i" = 1 ]; then first=$(echo "$t1 - $t0" | bc); u1=$(used "$top"); else total=$(echo "$total + $t1 - $t0" | bc); fi
    done
    local uN
    uN=$(used "$top")
    echo "$(echo "scale=2; $total / ($N - 1)" | bc) $(( (uN - u1) / (N - 1) )) $first"
}

# resident FILE-LIST: bytes of those files in the page cache
resident() { xargs -0 -r fincore --bytes --noheadings --output RES 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
read_usr() { find "$1/usr" -type f -print0 | xargs -0 -r cat >/dev/null 2>&1 || true; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# page_cache KIND TOP: "one ten" resident bytes after reading /usr in 1 and in PC guests
page_cache() {
    local kind=$1 top=$2 one ten files
    files() {
        if [ "$kind" = composefs ]; then
            find "$top/v/.store/objects" -type f -print0; find "$top/v/.composefs" -name meta.cfs -print0
        else
            for i in $(seq 1 "$PC"); do find "$top/v/g$i/usr" -type f -print0; done
        fi
    }
    drop
    read_usr "$top/v/g1"
    one=$(files | resident)
    for i in $(seq 2 "$PC"); do read_usr "$top/v/g$i"; done
    ten=$(files | resident)
    echo "$one $ten"
}

mib() { echo "scale=1; $1 / 1048576" | bc; }
{
echo "# bench/composefs.sh on $(uname -r), $(nproc) cores; image $(basename "$IMAGE"); N=$N guests, page cache over $PC"
echo "# $(date -u +%Y-%m-%dT%H:%MZ)"
printf "%-28s %12s %14s %12s\n" mode "s/extra" "MiB/extra" "first s"
read -r s b f < <(seed_series plain ext4)
printf "%-28s %12s %14s %12s\n" "plain seed" "$s" "$(mib "$b")" "$f"
read -r pone pten < <(page_cache plain "$WORK/plain")
umount "$WORK/plain"
read -r s b f < <(seed_series hardlink ext4 --unify --store "$WORK/hardlink/v/.hash" --unify-mode hardlink)
printf "%-28s %12s %14s %12s\n" "plain + unify hardlink" "$s" "$(mib "$b")" "$f"
umount "$WORK/hardlink"
read -r s b f < <(seed_series cfs ext4 --unify --store "$WORK/cfs/v/.store" --unify-mode composefs --meta erofs)
printf "%-28s %12s %14s %12s\n" "composefs (EROFS meta)" "$s" "$(mib "$b")" "$f"
read -r cone cten < <(page_cache composefs "$WORK/cfs")
read -r s b f < <(seed_series cfsdir ext4 --unify --store "$WORK/cfsdir/v/.store" --unify-mode composefs --meta dir)
printf "%-28s %12s %14s %12s\n" "composefs (dir meta, ext4)" "$s" "$(mib "$b")" "$f"
read -r s b f < <(seed_series cfsxfs xfs --unify --store "$WORK/cfsxfs/v/.store" --unify-mode composefs --meta dir)
printf "%-28s %12s %14s %12s\n" "composefs (dir meta, XFS)" "$s" "$(mib "$b")" "$f"
read -r s b f < <(N=$PC seed_series reflink xfs --unify --store "$WORK/reflink/v/.hash" --unify-mode reflink)
printf "%-28s %12s %14s %12s\n" "plain + unify reflink (XFS)" "$s" "$(mib "$b")" "$f"
read -r rone rten < <(page_cache reflink "$WORK/reflink")
echo
echo "page cache after reading every file under /usr (fincore of the backing files)"
printf "%-28s %12s %14s %8s\n" mode "1 guest MiB" "$PC guests MiB" ratio
for row in "composefs:$cone:$cten" "reflink (XFS):$rone:$rten" "plain copies:$pone:$pten"; do
    IFS=: read -r m o t <<<"$row"
    printf "%-28s %12s %14s %8s\n" "$m" "$(mib "$o")" "$(mib "$t")" "$(echo "scale=2; $t / $o" | bc)"
done
} | tee "$OUT"
