"""Publishing the runtime formats of an image (squashfs, Incus/LXD, LXC, OCI) and their indexes.

Where each built file goes in a state:

    images/<name>/<version>/<name>.squashfs         simplestreams item `squashfs`
    images/<name>/<version>/<name>.incus.tar.xz     items `incus.tar.xz` and `lxd.tar.xz` (same file)
    images/<name>/<version>/<name>.incus.tar.gz     items `incus_combined.tar.gz` / `lxd_combined.tar.gz`
    images/<name>/<version>/lxc/{meta,rootfs}.tar.xz (+ .asc)   listed in meta/1.0/index-system (+ .asc)
    images/<name>/<version>/<name>.oci.tar          an oci-archive
    oci/<name>/{oci-layout,index.json,blobs/sha256/*}          one OCI layout per image, every version tagged

The indexes (index-system, the OCI index.json) are regenerated from state.json on every state.
"""

from __future__ import annotations

from pathlib import Path

from imagefactory.build.formats import image_variant
from imagefactory.core.errors import ImageFactoryError

LXC_INDEX = "meta/1.0/index-system"
LXC_ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "i686": "i386", "armv7l": "armhf", "ppc64le": "ppc64el"}
OCI_MT_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_REF = "org.opencontainers.image.ref.name"


def destination(name: str, base: str, rec: dict) -> str | None:
    """Where one built file is published (None: regenerated per state, not copied)."""
    fmt, role, file = rec["format"], rec["role"], rec["file"]
    if role == "rootfs" and file.endswith(".squashfs"):
        return f"{base}/{name}.squashfs"
    if fmt == "incus" and role == "metadata":
        return f"{base}/{name}.incus.tar.xz"
    if fmt == "incus-unified":
        return f"{base}/{name}.incus.tar.gz"
    if fmt == "lxc":
        return f"{base}/lxc/{'meta' if role == 'metadata' else 'rootfs'}.tar.xz"
    if fmt == "oci" and role == "archive":
        return f"{base}/{name}.oci.tar"
    if fmt == "oci" and role == "layout":
        leaf = file.rsplit("/", 1)[-1]
        return f"oci/{name}/blobs/sha256/{leaf}" if "/blobs/sha256/" in file else None
    raise ImageFactoryError(f"{name}: unknown artifact {fmt}/{role} ({file}); publish it with a newer imagefactory")


def lxc_arch(manifest: dict) -> str:
    arch = str(manifest.get("architecture", "unknown"))
    return LXC_ARCHES.get(arch, arch)


def lxc_index(images: dict[str, dict]) -> bytes:
    """`dist;release;arch;variant;build;path` lines, the newest build per image only (the template
    takes the first match)."""
    newest: dict[tuple[str, str, str, str], tuple[str, str]] = {}
    for img in images.values():
        lxc = [a for a in img.get("artifacts", []) if a["format"] == "lxc" and a["role"] == "metadata"]
        if not lxc:
            continue
        m = img["manifest"]
        distro, suite = str(m.get("distro", "")), str(m.get("suite", ""))
        key = (distro, suite, lxc_arch(m), image_variant(img["name"], distro, suite))
        path = "/" + lxc[0]["path"].rsplit("/", 1)[0]
        if key not in newest or img["version"] > newest[key][0]:
            newest[key] = (img["version"], path)
    lines = [";".join([*key, version, path]) for key, (version, path) in sorted(newest.items())]
    return "".join(line + "\n" for line in lines).encode()


def oci_indexes(images: dict[str, dict]) -> dict[str, dict]:
    """{name: index.json document}: every version tagged with its version, the newest also `latest`."""
    by_name: dict[str, list[dict]] = {}
    for img in images.values():
        if any(a["format"] == "oci" for a in img.get("artifacts", [])):
            by_name.setdefault(img["name"], []).append(img)
    out = {}
    for name, imgs in sorted(by_name.items()):
        manifests = []
        imgs.sort(key=lambda i: i["version"])
        for img in imgs:
            arts = img["artifacts"]
            digest = next(a["manifest_digest"] for a in arts if a["format"] == "oci")
            blob = next(a for a in arts if a["format"] == "oci" and a["path"].endswith(digest.split(":")[1]))
            tags = [img["version"]] + (["latest"] if img is imgs[-1] else [])
            manifests += [{"mediaType": OCI_MT_MANIFEST, "digest": digest, "size": blob["size"],
                           "annotations": {OCI_REF: tag}} for tag in tags]
        out[name] = {"schemaVersion": 2, "mediaType": OCI_MT_INDEX, "manifests": manifests}
    return out


def referenced(state: dict) -> set[str]:
    """Every file path a state's records point at (what must survive a removal)."""
    paths = {d["filename"] for d in state["debs"].values()} | {r["filename"] for r in state["rpms"].values()}
    paths |= {e["path"] for e in state["extras"].values()}
    for img in state["images"].values():
        paths |= {img["path"], img["manifest_path"], *(a["path"] for a in img.get("artifacts", []))}
    return paths


def files_of(section: str, record: dict) -> set[str]:
    if section in ("debs", "rpms"):
        return {record["filename"]}
    if section == "images":
        return {record["path"], record["manifest_path"], *(a["path"] for a in record.get("artifacts", []))}
    return {record["path"]}


def remove_unreferenced(stage: Path, candidates: set[str], state: dict) -> list[str]:
    """Delete candidate files no record of state refers to any more (old states keep their links)."""
    keep = referenced(state)
    removed = []
    for rel in sorted(candidates - keep):
        path = stage / rel
        if path.is_file():
            path.unlink()
            removed.append(rel)
            parent = path.parent
            while parent != stage and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    return removed
