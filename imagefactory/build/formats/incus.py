"""`incus` (split) and `incus-unified`: images `incus image import` and simplestreams servers take.

Split: `<name>.incus.tar.xz` (metadata.yaml + templates/) beside `<name>.squashfs`; the image's
fingerprint is sha256(metadata tarball || squashfs), the scheme Incus and LXD use.
Unified: `<name>.incus.tar.gz` holding metadata.yaml, templates/ and rootfs/; its fingerprint is
its own sha256. creation_date is the snapshot epoch, never the build time (distrobuilder stamps
"now"), so two builds from one snapshot give the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json

from imagefactory.build.formats import Target, ensure, record
from imagefactory.build.formats.archive import add_files, dir_entry, gzip_stream, write_tar_xz
from imagefactory.build.image import add_tree, open_tar

META_SUFFIX = ".incus.tar.xz"
UNIFIED_SUFFIX = ".incus.tar.gz"

TEMPLATES = {
    "hostname.tpl": "{{ instance.name }}\n",
    "hosts.tpl": "127.0.0.1\tlocalhost\n127.0.1.1\t{{ instance.name }}\n\n"
                 "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
}
TEMPLATE_TARGETS = {"/etc/hostname": "hostname.tpl", "/etc/hosts": "hosts.tpl"}


def _q(value: object) -> str:
    """A YAML scalar: JSON strings and integers are valid YAML."""
    return json.dumps(value)


def properties(target: Target) -> dict[str, str]:
    return {
        "architecture": target.kernel_arch,
        "description": f"{target.distro.capitalize()} {target.suite} {target.architecture} "
                       f"({target.image_variant}) ({target.serial})",
        "name": f"{target.distro}-{target.suite}-{target.architecture}-{target.image_variant}-{target.serial}",
        "os": target.distro,
        "release": target.suite,
        "serial": target.serial,
        "variant": target.image_variant,
    }


def metadata_yaml(target: Target) -> bytes:
    """metadata.yaml with sorted keys; templates rewrite hostname and hosts on create and copy."""
    lines = [f"architecture: {_q(target.kernel_arch)}", f"creation_date: {target.epoch}", "properties:"]
    lines += [f"  {k}: {_q(v)}" for k, v in sorted(properties(target).items())]
    lines.append("templates:")
    for path, tpl in sorted(TEMPLATE_TARGETS.items()):
        lines += [f"  {_q(path)}:", "    when:", "      - create", "      - copy",
                  "    create_only: false", f"    template: {_q(tpl)}", "    properties: {}"]
    return ("\n".join(lines) + "\n").encode()


def meta_files(target: Target) -> dict[str, bytes]:
    files = {"metadata.yaml": metadata_yaml(target)}
    files |= {f"templates/{name}": text.encode() for name, text in TEMPLATES.items()}
    return files


def write_split(target: Target) -> list[dict]:
    squash = ensure(target, "squashfs")[0]
    meta = target.path(META_SUFFIX)
    write_tar_xz(meta, target.epoch, meta_files(target))
    fingerprint = hashlib.sha256()
    for path in (meta, target.out_dir / squash["file"]):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                fingerprint.update(chunk)
    return [record(target, "incus", "metadata", meta, fingerprint=fingerprint.hexdigest(), rootfs=squash["file"]),
            squash | {"format": "incus"}]


def write_unified(target: Target) -> list[dict]:
    final = target.path(UNIFIED_SUFFIX)
    with gzip_stream(final) as stream, open_tar(stream) as tar:
        add_files(tar, meta_files(target), target.epoch)
        tar.addfile(dir_entry("rootfs", target.epoch, target.rootfs.stat().st_mode & 0o7777))
        add_tree(tar, target.rootfs, target.epoch, "rootfs/")
    rec = record(target, "incus-unified", "image", final)
    return [rec | {"fingerprint": rec["sha256"]}]
