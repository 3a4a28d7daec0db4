#!/bin/bash
# Time `imagefactory report` against the `imagefactory unify` run it reports on, on N copies of a
# small real tree (default 100), and check its totals against du.
#
#   bench/report.sh [--guests N] [--keep]      (root: drops the page cache for the cold run)
#
# The small tree is cut from the sid minbase that bench/unify.sh caches (etc, var/lib/dpkg,
# usr/share/perl5, perl-base: ~12 MB, ~1,450 entries), or from the host's own root without it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
WORK=${WORK:-/var/tmp/imagefactory-bench-report}
N=100
KEEP=0
while [ $# -gt 0 ]; do
    case $1 in
        --guests) N=$2; shift ;;
        --keep) KEEP=1 ;;
        *) echo "usage: $0 [--guests N] [--keep]" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "bench/report.sh: needs root (drop_caches)" >&2; exit 6; }
SRC=$CACHE/base/sid
[ -d "$SRC/var/lib/dpkg" ] || SRC=/
PERLBASE=$(cd "$SRC" && ls -d usr/lib/*/perl-base 2>/dev/null | head -1)

rm -rf "$WORK"; mkdir -p "$WORK/guests"
small=$WORK/small
mkdir -p "$small"
(cd "$SRC" && cp -a --parents etc var/lib/dpkg usr/share/perl5 ${PERLBASE:+"$PERLBASE"} "$small"/)
for i in $(seq -f %03g 1 "$N"); do cp -a "$small" "$WORK/guests/g$i"; done
echo "$N guests of $(du -sh "$small" | cut -f1), $(find "$small" | wc -l) entries each, from $SRC" >&2

secs() { /usr/bin/env python3 -c 'import sys,time; print(f"{time.time()-float(sys.argv[1]):.2f}")' "$1"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
G=("$WORK"/guests/g*)
S=$WORK/store

cold; t0=$(date +%s.%N)
"$IF" report -q --what-if --json "${G[@]}" > "$WORK/whatif.json"
t_whatif=$(secs "$t0")

cold; t0=$(date +%s.%N)
"$IF" unify -q --mode hardlink --store "$S" "${G[@]}" > /dev/null
t_unify=$(secs "$t0")

cold; t0=$(date +%s.%N)
"$IF" report -q --store "$S" --json "${G[@]}" > "$WORK/report.json"
t_cold=$(secs "$t0")
t0=$(date +%s.%N)
"$IF" report -q --store "$S" --json --html "$WORK/report.html" "${G[@]}" > /dev/null
t_warm=$(secs "$t0")

du_all=$(du -s -c -B1 "$S" "${G[@]}" | tail -1 | cut -f1)
python3 - "$WORK" "$du_all" "$t_whatif" "$t_unify" "$t_cold" "$t_warm" <<'EOF'
import json, sys
work, du_all, t_whatif, t_unify, t_cold, t_warm = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
r = json.load(open(f"{work}/report.json"))
w = json.load(open(f"{work}/whatif.json"))
t = r["totals"]
print(f"guests {t['guests']}, files {t['files']:,}")
print(f"without unification {t['without_unification_bytes']:,} B; real {t['disk_bytes']:,} B "
      f"(du -s over store+guests: {du_all:,} B, {'agrees' if du_all == t['disk_bytes'] else 'DIFFERS'}); "
      f"saved {t['saved_bytes']:,} B ({t['saved_percent']}%)")
print(f"what-if predicted disk {w['totals']['disk_bytes']:,} B; after unify minus store overhead "
      f"{t['disk_bytes'] - t['store_overhead_bytes']:,} B")
print(f"unify (hardlink, cold cache)      {t_unify:7.2f} s")
print(f"report --what-if (cold cache)     {t_whatif:7.2f} s   ratio to unify {t_whatif / t_unify:.2f}")
print(f"report (cold cache)               {t_cold:7.2f} s   ratio to unify {t_cold / t_unify:.2f}")
print(f"report + --html (warm cache)      {t_warm:7.2f} s   ratio to unify {t_warm / t_unify:.2f}")
EOF
[ "$KEEP" = 1 ] || rm -rf "$WORK"
