#!/bin/bash
# Benchmark `imagefactory publish` against the hand-rolled minimum an admin would script:
# dpkg-scanpackages + xz + a Release with sha256sum + gpg --clearsign (no atomic switch,
# no by-hash, no verification), and `createrepo_c` alone for RPMs.
#
#   bench/publish.sh [--debs N] [--rpms N] [--image-mb N]      (needs dpkg-dev, rpm, createrepo-c, gpg)
#
# Everything is generated under a temporary directory and removed at the end.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
IF=${IF:-$HERE/.venv/bin/imagefactory}
DEBS=200 RPMS=20 IMAGE_MB=256
while [ $# -gt 0 ]; do
    case $1 in
        --debs) DEBS=$2; shift ;;
        --rpms) RPMS=$2; shift ;;
        --image-mb) IMAGE_MB=$2; shift ;;
        *) echo "usage: $0 [--debs N] [--rpms N] [--image-mb N]" >&2; exit 2 ;;
    esac
    shift
done
WORK=$(mktemp -d /tmp/if-bench-publish.XXXXXX)
export GNUPGHOME=$WORK/gnupg
cleanup() { gpgconf --kill all 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -m 700 "$GNUPGHOME"
gpg --batch --passphrase '' --quick-gen-key 'Bench <b@example.invalid>' ed25519 sign never 2>/dev/null
gpg --batch --armor --export-secret-keys > "$WORK/key.asc"

secs() { local t0=$1; "$PY" -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.2f}')" "$t0"; }
now() { "$PY" -c 'import time; print(time.time())'; }

echo "generating $DEBS debs, $RPMS rpms, one ${IMAGE_MB} MB image ..." >&2
mkdir -p "$WORK/in/debs" "$WORK/in/rpms" "$WORK/in/img"
for i in $(seq 1 "$DEBS"); do
    d=$WORK/build/p$i; mkdir -p "$d/DEBIAN" "$d/usr/share/p$i"
    head -c 20000 /dev/urandom > "$d/usr/share/p$i/data"
    printf 'Package: bench-p%s\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: B <b@example.invalid>\nDescription: bench\n' \
        "$i" > "$d/DEBIAN/control"
    dpkg-deb --root-owner-group -Zgzip --build "$d" "$WORK/in/debs/bench-p${i}_1.0-1_amd64.deb" >/dev/null
done
for i in $(seq 1 "$RPMS"); do
    cat > "$WORK/r$i.spec" <<EOF
Name: bench-r$i
Version: 1.0
Release: 1
Summary: bench
License: MIT
BuildArch: noarch
%description
bench
%install
mkdir -p %{buildroot}/usr/share/r$i && head -c 20000 /dev/urandom > %{buildroot}/usr/share/r$i/data
%files
/usr/share/r$i/data
EOF
    rpmbuild --quiet -bb --define "_topdir $WORK/rpmtop" "$WORK/r$i.spec" >/dev/null 2>&1
done
cp "$WORK"/rpmtop/RPMS/noarch/*.rpm "$WORK/in/rpms/"
"$PY" - "$WORK/in/img" "$IMAGE_MB" <<'EOF'
import hashlib, json, os, sys
directory, mb = sys.argv[1], int(sys.argv[2])
path = os.path.join(directory, "bench.tar.zst")
digest = hashlib.sha256()
with open(path, "wb") as f:
    for _ in range(mb):
        chunk = os.urandom(1 << 20)
        f.write(chunk); digest.update(chunk)
json.dump({"schema": 1, "name": "bench", "architecture": "amd64", "snapshot": {"epoch": 1793347681},
           "image": {"file": "bench.tar.zst", "sha256": digest.hexdigest(), "size": mb << 20}},
          open(os.path.join(directory, "bench.manifest.json"), "w"))
EOF

# Anchor: the minimal hand-written APT repository (what people script before they need atomicity).
t=$(now)
mkdir -p "$WORK/manual/pool" "$WORK/manual/dists/stable/main/binary-amd64"
cp "$WORK"/in/debs/*.deb "$WORK/manual/pool/"
( cd "$WORK/manual" && dpkg-scanpackages -m pool > dists/stable/main/binary-amd64/Packages 2>/dev/null \
  && xz -k dists/stable/main/binary-amd64/Packages \
  && { printf 'Suite: stable\nCodename: stable\nArchitectures: amd64\nComponents: main\nSHA256:\n'
       ( cd dists/stable && for f in main/binary-amd64/Packages main/binary-amd64/Packages.xz; do
           printf ' %s %s %s\n' "$(sha256sum < $f | cut -d' ' -f1)" "$(stat -c %s $f)" "$f"; done ); } \
     > dists/stable/Release \
  && gpg --batch --yes --clearsign -o dists/stable/InRelease dists/stable/Release )
manual_apt=$(secs "$t")
t=$(now); cp -r "$WORK/in/rpms" "$WORK/manualrpm"; createrepo_c --quiet --no-database "$WORK/manualrpm"
manual_rpm=$(secs "$t")

"$IF" repo init "$WORK/repo" --key-file "$WORK/key.asc" >/dev/null
t=$(now); "$IF" publish -q --repo "$WORK/repo" "$WORK"/in/debs/*.deb >/dev/null; our_apt=$(secs "$t")
t=$(now); "$IF" publish -q --repo "$WORK/repo" "$WORK"/in/rpms/*.rpm >/dev/null; our_rpm=$(secs "$t")
t=$(now); "$IF" publish -q --repo "$WORK/repo" "$WORK/in/img/bench.tar.zst" >/dev/null; our_img=$(secs "$t")
# The cost that grows with the repository: one more package into the full repository.
d=$WORK/build/extra; mkdir -p "$d/DEBIAN"
printf 'Package: bench-extra\nVersion: 1\nArchitecture: all\nMaintainer: B <b@example.invalid>\nDescription: x\n' > "$d/DEBIAN/control"
dpkg-deb --build "$d" "$WORK/extra.deb" >/dev/null
t=$(now); "$IF" publish -q --repo "$WORK/repo" "$WORK/extra.deb" >/dev/null; our_incr=$(secs "$t")
t=$(now); "$IF" repo verify "$WORK/repo" >/dev/null; our_verify=$(secs "$t")
t=$(now); sha256sum "$WORK/in/img/bench.tar.zst" >/dev/null; sha_img=$(secs "$t")

ratio() { "$PY" -c "import sys; a,b=map(float,sys.argv[1:]); print(f'{a/b:.2f}x' if b else 'n/a')" "$1" "$2"; }
echo "publish benchmark: $DEBS debs, $RPMS rpms, ${IMAGE_MB} MB image ($(nproc) cores)"
printf '  %-44s %8s s   anchor %8s s   ratio %s\n' "apt: imagefactory publish (atomic, by-hash)" "$our_apt" "$manual_apt" "$(ratio "$our_apt" "$manual_apt")"
printf '  %-44s %8s s   anchor %8s s   ratio %s\n' "rpm: publish (+rpmsign each, repomd.asc)" "$our_rpm" "$manual_rpm" "$(ratio "$our_rpm" "$manual_rpm")"
printf '  %-44s %8s s   sha256sum %5s s\n' "image: publish ${IMAGE_MB} MB" "$our_img" "$sha_img"
printf '  %-44s %8s s\n' "one more deb into the full repository" "$our_incr"
printf '  %-44s %8s s\n' "repo verify (everything)" "$our_verify"
du -sh --apparent-size "$WORK/repo/states" | awk '{print "  states on disk (apparent, hard links counted once by du): " $1}'
