#!/bin/bash
# unify and report at scale: N drifted guests on a loop-mounted XFS, side by side with hardlink(1).
#
#   bench/scale.sh [--guests N] [--keep]        (root; needs mmdebstrap, hardlink, xfsprogs, /usr/bin/time)
#   bench/scale.sh --guests N --make-only       make the N guests (kept in $WORK/xfs.img) and stop
#   bench/scale.sh --guests N --reuse           measure on guests made earlier (their store is removed first;
#                                               the marker is removed: measured guests are unified)
#   bench/scale.sh --guests N --reruns          only the unchanged and 1 % re-runs and report, on the guests
#                                               and store a measured run kept
#   SKIP_HARDLINK=1 HARDLINK_WALL=SECONDS bench/scale.sh ...   reuse an earlier anchor run (same trees)
#
# Guests are reflink copies (cheap in time and disk) of real sid, trixie and bookworm minbase
# builds (5:2:1, cached by bench/unify.sh's recipe in /var/tmp/imagefactory-bench/base), each then
# drifted by bench/scale_perturb.py: ~0.5 % of its files changed, ~0.3 % removed, 20 added (8 of
# them shared with a quarter of the other guests). Then, in one run and on the same trees:
#   hardlink -c -n (the anchor), unify -n (first run, no store), unify (real, hardlink mode),
#   unify again (unchanged), unify after 1 % of every guest's files got new content, report --json.
# Each line: wall time, CPU time (user + system, worker processes included: steadier than wall time
# on a shared machine), peak RSS (/usr/bin/time -v, plus each unify worker process's own peak above
# the interpreter), and bytes per regular file above the interpreter's own peak (python importing
# the same modules).
# The XFS image is sparse, sized 4 GiB + 24 MiB per guest, and removed at the end (unless --keep).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
WORK=${WORK:-/var/tmp/imagefactory-scale}
N=10
KEEP=0
MAKE_ONLY=0
REUSE=0
RERUNS=0
while [ $# -gt 0 ]; do
    case $1 in
        --guests) N=$2; shift ;;
        --keep) KEEP=1 ;;
        --make-only) MAKE_ONLY=1; KEEP=1 ;;
        --reuse) REUSE=1; KEEP=1 ;;
        --reruns) RERUNS=1; KEEP=1 ;;
        *) echo "usage: $0 [--guests N] [--keep] [--make-only|--reuse|--reruns]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/scale.sh: needs root (loop mount)" >&2; exit 6; }
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null

base_guests sid trixie bookworm

IMG=$WORK/xfs.img
MNT=$WORK/mnt
T=$(mktemp -d)
cleanup() {
    mountpoint -q "$MNT" && umount "$MNT"
    [ "$KEEP" = 1 ] || rm -f "$IMG"
    rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$WORK" "$MNT"
mountpoint -q "$MNT" && umount "$MNT"
MADE=$MNT/g/.made-$N
if [ "$RERUNS" = 1 ]; then
    [ -e "$IMG" ] || { echo "bench/scale.sh --reruns: no $IMG (run --keep or --reuse first)" >&2; exit 2; }
    mount -o loop "$IMG" "$MNT"
    [ -d "$MNT/store" ] || { echo "bench/scale.sh --reruns: no store in $IMG" >&2; exit 2; }
    t0=$(date +%s)
elif [ "$REUSE" = 1 ]; then
    [ -e "$IMG" ] || { echo "bench/scale.sh --reuse: no $IMG (run --make-only first)" >&2; exit 2; }
    mount -o loop "$IMG" "$MNT"
    [ -e "$MADE" ] || { echo "bench/scale.sh --reuse: $IMG holds no complete set of $N guests" >&2; exit 2; }
    rm -rf "$MNT/store"
    t0=$(date +%s)
else
rm -f "$IMG"
SIZE_MIB=$((4096 + 24 * N))
AVAIL_MIB=$(df -m --output=avail "$WORK" | tail -1)
[ "$AVAIL_MIB" -gt $((SIZE_MIB + 2048)) ] || { echo "need ${SIZE_MIB} MiB (+2 GiB) free in $WORK" >&2; exit 6; }
truncate -s "${SIZE_MIB}M" "$IMG"
mkfs.xfs -q -m reflink=1 "$IMG"
mount -o loop "$IMG" "$MNT"
t0=$(date +%s)
drifted_guests "$MNT" "$N"
touch "$MADE"
fi
G=("$MNT"/g/g*)
FILES=$(find "$MNT/g" -type f | wc -l)
echo "== $N guests, $FILES regular files, made (or found) in $(( $(date +%s) - t0 )) s; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   loop XFS: $(df -h --output=used,size "$MNT" | tail -1)"
[ "$MAKE_ONLY" = 1 ] && { echo "   kept in $IMG: measure with $0 --guests $N --reuse"; exit 0; }

BASE_KIB=$(/usr/bin/time -f %M "$PY" -c 'import imagefactory.cli, unify.engine, unify.report.cli' 2>&1 >/dev/null)
S=$MNT/store
# run LABEL CMD...: wall seconds, peak RSS, bytes per file
run() {
    local label=$1; shift
    /usr/bin/time -v -o "$T/$label.time" "$@" > "$T/$label.out" 2> "$T/$label.err" \
        || { echo "FAILED: $*" >&2; tail -5 "$T/$label.err" >&2; exit 1; }
    local wall rss cpu
    read -r wall cpu rss < <(time_figures "$T/$label.time")
    # unify's worker processes: time(1) sees only the largest process, so each worker's peak above
    # the interpreter is added (an upper bound: forked workers share the parent's pages)
    local extra
    extra=$("$PY" -c 'import json, sys
try:
    d = json.load(open(sys.argv[1]))
    print(d.get("workers", 0) * max(0, d.get("worker_rss_kib", 0) - int(sys.argv[2])))
except Exception:
    print(0)' "$T/$label.out" "$BASE_KIB")
    printf '%-34s %9.2f s %9.2f s %9d MiB %8.0f B/file\n' "$label" "$wall" "$cpu" $(((rss + extra) / 1024)) \
        "$(awk -v r="$((rss + extra))" -v b="$BASE_KIB" -v f="$FILES" 'BEGIN { print (r - b) * 1024 / f }')"
    eval "WALL_${label//[^a-z0-9]/_}=$wall"
}
jget() { "$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$T/$1.out" "$2"; }
printf '%-34s %11s %11s %13s %14s\n' "" "wall" "CPU (u+s)" "peak RSS" "above $((BASE_KIB / 1024)) MiB"
sync
rm -f "$MADE"  # from here on the guests change: a later --reuse must not take them for pristine
WALL_hardlink__c__n=0
if [ "$RERUNS" = 1 ]; then
    :
elif [ "${SKIP_HARDLINK:-0}" = 1 ]; then  # the trees are deterministic: reuse an earlier run's anchor
    WALL_hardlink__c__n=${HARDLINK_WALL:-0}
else
    run "hardlink -c -n" hardlink -c -n "${G[@]}"
fi
if [ "$RERUNS" = 0 ]; then
    run "unify -n (first run)" "$IF" unify -n -q --json --mode hardlink "${G[@]}" --store "$S"
    [ -e "$S" ] && { echo "FAILED: the dry run created $S" >&2; exit 1; }
    run "unify (first real run)" "$IF" unify -q --json --mode hardlink "${G[@]}" --store "$S"
    echo "   linked $(jget "unify (first real run)" linked), saved $(jget "unify (first real run)" disk_saved) B on disk"
fi
run "unify (unchanged re-run)" "$IF" unify -q --json --mode hardlink "${G[@]}" --store "$S"
echo "   already unified $(jget "unify (unchanged re-run)" already_unified), hashed $(jget "unify (unchanged re-run)" hashed)"
for g in "${G[@]}"; do echo "$g"; done | xargs -P 2 -I{} python3 "$HERE/bench/scale_perturb.py" touch {} 7 1
run "unify (re-run, 1 % changed)" "$IF" unify -q --json --mode hardlink "${G[@]}" --store "$S"
echo "   hashed $(jget "unify (re-run, 1 % changed)" hashed), linked $(jget "unify (re-run, 1 % changed)" linked)"
run "report --json" "$IF" report -q --json --store "$S" "${G[@]}"
[ "$WALL_hardlink__c__n" != 0 ] && [ "$RERUNS" = 0 ] && awk -v a="$WALL_unify__first_real_run_" -v h="$WALL_hardlink__c__n" -v u="$WALL_unify__unchanged_re_run_" \
    -v c="$WALL_unify__re_run__1___changed_" 'BEGIN {
    printf "first real run / hardlink -c -n = %.2fx (goal <= 1.2x); 1 %% re-run / unchanged = %.2fx (goal <= 2x)\n", a / h, c / u }'
true
