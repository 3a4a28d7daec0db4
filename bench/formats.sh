#!/bin/sh
# The time each output format adds to a build, on a real sid minbase root, next to the same
# tool run by hand with the same settings (what a user would script after `imagefactory build`):
#   squashfs        vs  mksquashfs ROOT F -comp xz -b 1M -no-exports -no-recovery
#   lxc             vs  tar --sort=name --numeric-owner | xz -T2 -6   (rootfs.tar.xz)
#   incus-unified   vs  tar --sort=name --numeric-owner | gzip -6
#   oci             vs  tar --sort=name --numeric-owner | gzip -6     (the layer; plus the archive copy)
#   incus           =   squashfs + a 600-byte metadata tarball
#   bench/formats.sh [DIR]   (root, after scripts/setup; reuses DIR/debian-sid/rootfs if present,
#                             else builds debian-sid into DIR, default a temporary directory)
set -eu
cd "$(dirname "$0")/.."
IF=.venv/bin/imagefactory
PY=.venv/bin/python
work=$(mktemp -d /var/tmp/imagefactory-bench-formats.XXXXXX)
trap 'rm -rf "$work"' EXIT
dir=${1:-$work/build}
if [ ! -d "$dir/debian-sid/rootfs" ]; then
    t0=$(date +%s.%N)
    $IF build debian-sid --allow-expired-release -q -o "$dir" >/dev/null
    echo "build (rootfs + tar.zst): $(echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.1f') s"
fi
root="$dir/debian-sid/rootfs"
epoch=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot"]["epoch"])' "$dir/debian-sid.manifest.json")
echo "root: $(du -sh --apparent-size "$root" | cut -f1), $(find "$root" | wc -l) entries; $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"

printf '\n%-14s %10s %12s   %-s\n' format seconds bytes "by hand: seconds bytes"
for fmt in squashfs incus lxc incus-unified oci; do
    rm -rf "$work/f" && mkdir "$work/f"
    line=$($PY - "$root" "$work/f" "$epoch" "$fmt" <<'EOF'
import sys, time
from pathlib import Path
from imagefactory.build.formats import Target, write_all
root, out, epoch, fmt = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t = Target(rootfs=root, out_dir=out, name="debian-sid", epoch=epoch, distro="debian", suite="sid",
           architecture="amd64", variant="minbase")
t0 = time.monotonic()
records = write_all(t, (fmt,))
print(f"{time.monotonic() - t0:.1f} {sum(r['size'] for r in records)}")
EOF
)
    t0=$(date +%s.%N)
    case $fmt in
        squashfs|incus) SOURCE_DATE_EPOCH=$epoch mksquashfs "$root" "$work/hand" -noappend -comp xz -b 1M \
                            -no-exports -no-recovery -quiet -no-progress >/dev/null ;;
        lxc) tar --sort=name --numeric-owner -C "$root" -cf - . | xz -T2 -6 > "$work/hand" ;;
        *) tar --sort=name --numeric-owner -C "$root" -cf - . | gzip -6 > "$work/hand" ;;
    esac
    hand=$(echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.1f')
    printf '%-14s %10s %12s   %s s %s\n' "$fmt" ${line% *} ${line#* } "$hand" "$(stat -c %s "$work/hand")"
    rm -f "$work/hand"
done
