# Shared by the bench scripts (source it; bash): paths, the host's mirror, and the cached base guests.
#   HERE   the checkout;  PY, IF   the project's python and imagefactory (override by environment)
#   CACHE  where base guests live (/var/tmp/imagefactory-bench by default, reused across runs)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
IF=${IF:-$HERE/.venv/bin/imagefactory}
CACHE=${CACHE:-/var/tmp/imagefactory-bench}

# The Debian mirror of the host's apt sources (never a host name written here).
host_mirror() {
    "$PY" -c 'from imagefactory.build.sources import host_debian_mirror; print(host_debian_mirror())'
}

# One real minbase build per suite with mmdebstrap, kept pristine under $CACHE/base/<suite>;
# `.complete` is written last, so an interrupted build is redone, never used half done.
base_guests() {
    local mirror suite dir
    mirror=$(host_mirror)
    for suite in "$@"; do
        dir=$CACHE/base/$suite
        if [ ! -e "$dir/.complete" ]; then
            rm -rf "$dir"; mkdir -p "$CACHE/base"
            echo "building $suite minbase from $mirror" >&2
            mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
                "$suite" "$dir" "$mirror" >&2
            touch "$dir/.complete"
        fi
    done
}

# drifted_guests MNT N: N reflink copies of the cached minbase guests (sid:trixie:bookworm 5:2:1) as
# MNT/g/gNNNN, each drifted by bench/scale_perturb.py (two at a time). MNT must be a reflink
# filesystem (bench/scale.sh and bench/whatif.sh use a loop XFS); call base_guests first.
drifted_guests() {
    local mnt=$1 n=$2
    cp -a --reflink=auto "$CACHE"/base/sid "$CACHE"/base/trixie "$CACHE"/base/bookworm "$mnt"/
    mkdir -p "$mnt/g"
    seq 1 "$n" | MNT=$mnt HERE=$HERE xargs -P 2 -I{} bash -c '
        suites=(sid sid sid sid sid trixie trixie bookworm)
        d=$MNT/g/g$(printf %04d {})
        cp -a --reflink=always "$MNT/${suites[$(( ({} - 1) % 8 ))]}" "$d"
        rm -f "$d/.complete"
        python3 "$HERE/bench/scale_perturb.py" drift "$d" {}'
}

# time_figures FILE: "WALL CPU RSS_KIB" from a /usr/bin/time -v report (CPU = user + system, waited-for
# children included)
time_figures() {
    awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + p[i] }
                /(User|System) time/ { c += $2 }
                /Maximum resident set size/ { r = $2 }
                END { print w, c, r }' "$1"
}
