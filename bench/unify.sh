#!/bin/bash
# Benchmark `imagefactory unify -n` against util-linux `hardlink -c -n` on real guest roots.
#
#   bench/unify.sh [--prepare-only] [--scale N]   (root; needs mmdebstrap, hardlink, /usr/bin/time)
#   --scale 0 skips the 10..N guests series (which copies N guests: about 140 MB each).
#
# Guests (5x sid, 2x trixie, 1x bookworm minbase) are built once with mmdebstrap from the host's
# own Debian mirror and cached under /var/tmp/imagefactory-bench/ so reruns reuse them.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SCALE=100
PREPARE_ONLY=0
while [ $# -gt 0 ]; do
    case $1 in
        --prepare-only) PREPARE_ONLY=1 ;;
        --scale) SCALE=$2; shift ;;
        *) echo "usage: $0 [--prepare-only] [--scale N]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/unify.sh: needs root (mmdebstrap, drop_caches)" >&2; exit 6; }
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null

base_guests sid trixie bookworm

# Fresh copies of the 8 guests (re-copied each run: unify/hardlink must start from private files).
fresh_guests() {
    local dest=$1; shift
    chattr -R -f -i "$dest" 2>/dev/null || true  # a run interrupted in immutable mode
    rm -rf "$dest"; mkdir -p "$dest"
    local i=0
    for s in "$@"; do
        i=$((i + 1))
        cp -a "$CACHE/base/$s" "$dest/g$(printf %03d $i)-$s"
        rm -f "$dest/g$(printf %03d $i)-$s/.complete"
    done
}
EIGHT=(sid sid sid sid sid trixie trixie bookworm)
fresh_guests "$CACHE/guests" "${EIGHT[@]}"
[ "$PREPARE_ONLY" = 1 ] && { echo "guests ready under $CACHE/guests" >&2; exit 0; }

T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
G=$CACHE/guests
STORE=$CACHE/store
: > "$T/no-excludes"

wipe_store() { chattr -R -f -i "$STORE" 2>/dev/null || true; rm -rf "$STORE"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# run LABEL CMD...: wall seconds -> $WALL, peak RSS KiB -> $RSS, stdout kept in $T/LABEL.out
run() {
    local label=$1; shift
    /usr/bin/time -f "%e %M" -o "$T/$label.time" "$@" > "$T/$label.out" 2> "$T/$label.err" \
        || { echo "FAILED: $*" >&2; cat "$T/$label.err" >&2; exit 1; }
    read -r WALL RSS < "$T/$label.time"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
jget() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$T/$1.out" "$2"; }
hl_linked() { awk '/^Linked:/ { print $2 }' "$T/$1.out"; }

echo "== 8 guests: $(du -sh "$G" | cut -f1), $(find "$G" -type f | wc -l) files; load: $(cut -d' ' -f1-3 /proc/loadavg)"

# -- linkable files with the same metadata rules (mode, owner, mtime, xattrs, >= 16 bytes) -------------
run hl_rules hardlink -n -X -s 16 "$G"/*
wipe_store
run if_rules "$IF" unify -n -q --json --mode hardlink --exclude-from "$T/no-excludes" "$G"/* --store "$STORE"
printf '%-58s %8s\n' "linkable files, no exclude list:  hardlink -n -X -s 16" "$(hl_linked hl_rules)"
printf '%-58s %8s  (+ %s package config files never unified)\n' \
    "                                   imagefactory -n" "$(jget if_rules duplicates)" "$(jget if_rules conffiles)"

# -- timing: cold and warm page cache ---------------------------------------------------------------------
for cache in cold warm; do
    [ $cache = warm ] && { hardlink -c -n "$G"/* > /dev/null; }  # warm-up read of every file
    wipe_store
    [ $cache = cold ] && drop_caches
    run "hl_$cache" hardlink -c -n "$G"/*
    HL=$WALL
    [ $cache = cold ] && drop_caches
    run "if_$cache" "$IF" unify -n -q --json "$G"/* --store "$STORE"
    IF1=$WALL
    [ $cache = cold ] && drop_caches
    run "if2_$cache" "$IF" unify -n -q --json "$G"/* --store "$STORE"
    IF2=$WALL
    printf '%-5s hardlink -c -n %6.2fs (%s linked) | unify -n %6.2fs (%s duplicates) = %sx | incremental %6.2fs = %sx\n' \
        $cache "$HL" "$(hl_linked "hl_$cache")" "$IF1" "$(jget "if_$cache" duplicates)" "$(ratio "$IF1" "$HL")" \
        "$IF2" "$(ratio "$IF2" "$HL")"
done

# -- a real run, then the checks from the issue's "done means" -------------------------------------------
MODE=${MODE:-immutable}
wipe_store
DU_BEFORE=$(du -sB1 "$G" | cut -f1)
run if_real "$IF" unify -q --json --mode "$MODE" "$G"/* --store "$STORE"
DU_AFTER=$(du -sB1 "$G" "$STORE" | awk '{ s += $1 } END { print s }')
ENTRIES=$(find "$STORE/objects" -type f -printf '%b\n' | awk '{ s += $1 * 512 } END { print s }')
STORE_META=$(( $(du -sB1 "$STORE" | cut -f1) - ENTRIES ))  # index files and the store's directories
echo "real run ($MODE): $WALL s, linked $(jget if_real linked), reported saving $(jget if_real bytes_saved) B" \
     "($(jget if_real disk_saved) B on disk)"
echo "du: before $DU_BEFORE B, after (guests + store) $DU_AFTER B: saving $((DU_BEFORE - DU_AFTER)) B;" \
     "plus the store's own index and directories ($STORE_META B) = $((DU_BEFORE - DU_AFTER + STORE_META)) B"
for g in "$G"/*; do
    chroot "$g" dpkg -V > "$T/dpkgV" 2>&1 || { echo "dpkg -V failed in $g"; cat "$T/dpkgV"; exit 1; }
    [ -s "$T/dpkgV" ] && { echo "dpkg -V reports changes in $g:"; cat "$T/dpkgV"; exit 1; }
    chroot "$g" apt-get --version > /dev/null || { echo "apt-get broken in $g"; exit 1; }
done
echo "dpkg -V clean and apt-get --version runs in all $(ls "$G" | wc -l) guests"
"$IF" unify verify --store "$STORE" | tail -1
# Drop the immutable flags so the next run can delete the trees.
chattr -R -f -i "$G" "$STORE" 2>/dev/null || true

# -- scaling: 10 -> $SCALE guests (copies of the three builds), dry run, time and peak memory ---------------
S=$CACHE/scale
mkdir -p "$S"
suites=(sid sid sid sid sid trixie trixie bookworm)
for n in $(printf '%s\n' 10 25 50 "$SCALE" | awk -v max="$SCALE" '$1 > 0 && $1 <= max' | sort -nu); do
    for i in $(seq 1 "$n"); do
        d=$S/g$(printf %03d "$i")
        [ -d "$d" ] || { cp -a "$CACHE/base/${suites[$(( (i - 1) % 8 ))]}" "$d"; rm -f "$d/.complete"; }
    done
    wipe_store
    run "scale$n" "$IF" unify -n -q --json $(printf "$S/g%03d " $(seq 1 "$n")) --store "$STORE"
    W1=$WALL R1=$RSS
    run "scale2_$n" "$IF" unify -n -q --json $(printf "$S/g%03d " $(seq 1 "$n")) --store "$STORE"
    printf 'guests %4d: files %7s  first %7.2fs  %6d MiB peak | incremental %6.2fs %6d MiB peak\n' \
        "$n" "$(jget "scale$n" files)" "$W1" $((R1 / 1024)) "$WALL" $((RSS / 1024))
done
