#!/bin/bash
# Benchmark `imagefactory unify -n` against util-linux `hardlink -c -n` on real guest roots.
#
#   bench/unify.sh [--prepare-only] [--scale N]   (root; needs mmdebstrap, hardlink, /usr/bin/time)
#
# Guests (5x sid, 2x trixie, 1x bookworm minbase) are built once with mmdebstrap from the host's
# own Debian mirror and cached under /var/tmp/imagefactory-bench/ so reruns reuse them.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
IF=${IF:-$HERE/.venv/bin/imagefactory}
CACHE=${CACHE:-/var/tmp/imagefactory-bench}
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

MIRROR=$("$PY" -c 'from imagefactory.sources import host_debian_mirror; print(host_debian_mirror())')

# One real minbase build per suite, kept pristine under $CACHE/base/.
base() {
    local suite=$1 dir=$CACHE/base/$1
    if [ ! -e "$dir/.complete" ]; then
        rm -rf "$dir"; mkdir -p "$CACHE/base"
        echo "building $suite minbase from $MIRROR" >&2
        mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
            "$suite" "$dir" "$MIRROR" >&2
        touch "$dir/.complete"
    fi
}
for s in sid trixie bookworm; do base "$s"; done

# Fresh copies of the 8 guests (re-copied each run: unify/hardlink must start from private files).
fresh_guests() {
    local dest=$1; shift
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
