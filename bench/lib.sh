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
