#!/bin/bash
# `imagefactory guests --json` over many guest configs, some of them running under LXC.
#   bench/guests.sh [--guests N] [--running K] [--runs R] [--also IMAGEFACTORY]
#                                                   (root; needs lxc, busybox, /usr/bin/time)
# One guest is seeded for real (the busybox image of tests/support/seed.py, macvlan on a bridge made
# here), then its conf dir is copied N-1 times under new names, each with its own name, context and
# lxc/NAME/config, so LXC knows every guest. K of them are started with `imagefactory start` (they
# share the seeded root; a copy only differs in name; with more than 500 running all get
# `lxc.tty.max = 0`, or ~614 running guests exhaust the host's default 4,096 ptys). Then R runs
# of `guests --json`, each under /usr/bin/time -v: wall time, CPU time (user + system, children
# included), peak RSS, and how many guests each state was listed with.
# --also (repeatable) times another build (an imagefactory command, e.g. an older checkout's) on the
# same guests, alternating with this one run by run.
set -eu
source "$(dirname "$0")/lib.sh"
N=1000 K=0 R=5 ALSO=""
while [ $# -gt 0 ]; do
    case $1 in
        --guests) N=$2; shift ;;
        --running) K=$2; shift ;;
        --runs) R=$2; shift ;;
        --also) ALSO="$ALSO $2"; shift ;;
        *) echo "usage: $0 [--guests N] [--running K] [--runs R] [--also IMAGEFACTORY]" >&2; exit 2 ;;
    esac
    shift
done
[ "$K" -le "$N" ] || { echo "--running $K is more than --guests $N" >&2; exit 2; }

work=$(mktemp -d /var/tmp/imagefactory-bench-guests.XXXXXX)
bridge=ifgb$$
cleanup() {
    for conf in "$work"/etc/g*; do
        [ -d "$conf/lxc" ] && lxc-stop -P "$conf/lxc" -n "${conf##*/}" -k >/dev/null 2>&1 || true
    done
    ip link del "$bridge" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip link add "$bridge" type bridge && ip link set "$bridge" up

cd "$HERE"
image=$("$PY" -c 'import sys; from pathlib import Path; from tests.support.seed import busybox_image
print(busybox_image(Path(sys.argv[1])))' "$work")
"$IF" seed "$image" g0000 --vdir "$work/vs" --confdir "$work/etc" --ip 10.0.0.11/24 --dev "$bridge" -q >/dev/null
"$PY" - "$work/etc" "$N" "$K" <<'EOF'
import os, shutil, sys
from pathlib import Path
confdir, n, running = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
seeded = confdir / "g0000"
for i in range(1, n):
    name = f"g{i:04d}"
    conf = confdir / name
    shutil.copytree(seeded, conf, symlinks=True)
    (conf / "name").write_text(f"{name}\n")
    (conf / "context").write_text(f"{40000 + i}\n")
    os.rename(conf / "lxc/g0000", conf / "lxc" / name)
if running > 500:  # LXC's 4 ttys + a console per guest: ~614 running guests exhaust the host's default 4,096 ptys
    for conf in sorted(confdir.glob("g[0-9]*")):
        with open(conf / "lxc" / conf.name / "config", "a") as config:
            config.write("lxc.tty.max = 0\n")
EOF
t0=$(date +%s)
for i in $(seq 0 $((K - 1))); do
    "$IF" start "$(printf 'g%04d' "$i")" --confdir "$work/etc" >/dev/null
done
echo "== $N guests, $K running (started in $(( $(date +%s) - t0 )) s); load $(cut -d' ' -f1-3 /proc/loadavg)"

time_guests() {
    /usr/bin/time -v "$1" guests --confdir "$work/etc" --json >"$work/out.json" 2>"$work/time.txt"
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time.txt")
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")
    cpu=$(awk -F': ' '/User time|System time/ {t += $2} END {printf "%.2f", t}' "$work/time.txt")
    states=$("$PY" -c 'import collections, json, sys
rows = json.load(open(sys.argv[1]))
print(len(rows), "listed:", dict(sorted(collections.Counter(str(g["state"]) for g in rows).items())))' "$work/out.json")
    echo "run $r $1: ${wall} wall, ${cpu} s CPU, $((rss / 1024)) MiB peak; $states"
}
for r in $(seq "$R"); do
    for other in $ALSO; do time_guests "$other"; done
    time_guests "$IF"
done
