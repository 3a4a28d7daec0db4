#!/bin/bash
# Memory and time of `imagefactory report --what-if --json` on N guests that were never unified.
#
#   bench/whatif.sh [--guests N] [--compare DIR] [--keep]   (root: loop mount; needs xfsprogs, /usr/bin/time)
#
# Guests are reflink copies of the real sid, trixie and bookworm minbase builds (5:2:1) that
# bench/lib.sh caches, each drifted by bench/scale_perturb.py as bench/scale.sh does, on a sparse
# loop-mounted XFS (1 GiB + 16 MiB per guest, removed at the end unless --keep). One untimed run
# warms the page cache; then each line: wall time, CPU time (user + system), peak RSS
# (/usr/bin/time -v) and bytes per regular file above the interpreter's own peak (python
# importing the same modules). --compare DIR runs another checkout's code too (e.g. a
# `git worktree add DIR OLD-COMMIT`, through PYTHONPATH, with this checkout's venv) and checks
# that it prints the same JSON.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd /  # python -c puts the working directory first on sys.path: import only what PYTHONPATH or the venv gives
WORK=${WORK:-/var/tmp/imagefactory-whatif}
N=50
KEEP=0
COMPARE=
while [ $# -gt 0 ]; do
    case $1 in
        --guests) N=$2; shift ;;
        --compare) COMPARE=$(cd "$2" && pwd); shift ;;
        --keep) KEEP=1 ;;
        *) echo "usage: $0 [--guests N] [--compare DIR] [--keep]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/whatif.sh: needs root (loop mount)" >&2; exit 6; }
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null

base_guests sid trixie bookworm

IMG=$WORK/xfs.img
MNT=$WORK/mnt
T=$(mktemp -d)
cleanup() {
    mountpoint -q "$MNT" && umount "$MNT"
    [ "$KEEP" = 1 ] || rm -rf "$WORK"
    rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$WORK" "$MNT"
if ! mountpoint -q "$MNT"; then
    if [ ! -e "$IMG" ]; then
        truncate -s "$((1024 + 16 * N))M" "$IMG"  # (XFS gives inodes at most 25 %: ~3 MiB per guest)
        mkfs.xfs -q -m reflink=1 "$IMG"
    fi
    mount -o loop "$IMG" "$MNT"
fi
if [ ! -d "$MNT/g" ] || [ "$(ls "$MNT/g" | wc -l)" != "$N" ]; then  # (--keep: the same guests again)
    rm -rf "$MNT/g"
    drifted_guests "$MNT" "$N"
fi
G=("$MNT"/g/g*)
FILES=$(find "$MNT/g" -type f | wc -l)
echo "== $N guests, $FILES regular files; loop XFS $(df -h --output=used "$MNT" | tail -1 | tr -d ' ') used;" \
     "load $(cut -d' ' -f1-3 /proc/loadavg)"

# run LABEL PYTHONPATH: one report --what-if with that code; prints its line
run() {
    local label=$1 pp=$2 base wall cpu rss
    base=$(PYTHONPATH=$pp /usr/bin/time -f %M "$PY" -c 'import imagefactory.cli, unify.engine, unify.report.cli' 2>&1 >/dev/null)
    PYTHONPATH=$pp /usr/bin/time -v -o "$T/$label.time" "$IF" report -q --what-if --json "${G[@]}" > "$T/$label.json"
    read -r wall cpu rss < <(time_figures "$T/$label.time")
    printf '%-30s %8.1f s %8.1f s %7d MiB %7.0f B/file (interpreter %d MiB)\n' "$label" "$wall" "$cpu" \
        $((rss / 1024)) "$(awk -v r="$rss" -v b="$base" -v f="$FILES" 'BEGIN { print (r - b) * 1024 / f }')" \
        $((base / 1024))
}
printf '%-30s %10s %10s %11s %14s\n' "" "wall" "CPU (u+s)" "peak RSS" "above interpreter"
"$IF" report -q --what-if --json "${G[@]}" > /dev/null  # warm the page cache
run "report --what-if" ""
if [ -n "$COMPARE" ]; then
    run "report --what-if ($(basename "$COMPARE"))" "$COMPARE"
    if cmp -s "$T/report --what-if.json" "$T/report --what-if ($(basename "$COMPARE")).json"; then
        echo "same JSON"
    else
        echo "JSON DIFFERS"; diff <("$PY" -m json.tool "$T/report --what-if.json") \
            <("$PY" -m json.tool "$T/report --what-if ($(basename "$COMPARE")).json") | head -20
    fi
fi
"$PY" - "$T/report --what-if.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))["totals"]
print(f"files {t['files']:,}; without unification {t['without_unification_bytes']:,} B, "
      f"predicted {t['disk_bytes']:,} B, saved {t['saved_percent']} %")
EOF
