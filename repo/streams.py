"""Image indexes: simplestreams (LXD/Incus style) JSON and a plain SHA256SUMS (pure functions).

simplestreams gives tools a structured product/version/item catalogue;
SHA256SUMS + its detached signature is what `imagefactory pull` and humans
(`sha256sum -c`, `gpgv`) check. Both are generated from the same records.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from imagefactory.build.formats import image_variant

IMAGES_PATH = "streams/v1/images.json"
SIGNED_IMAGES_PATH = "streams/v1/images.sjson"


@dataclass(frozen=True)
class ImageRecord:
    name: str
    version: str
    path: str  # relative to the repository root
    sha256: str
    size: int
    manifest_path: str
    manifest_sha256: str
    manifest_size: int
    manifest: dict
    artifacts: tuple[dict, ...] = ()


def image_dir(name: str, version: str) -> str:
    return f"images/{name}/{version}"


def _updated(date: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(date))


def product_id(rec: ImageRecord) -> str:
    arch = rec.manifest.get("architecture", "unknown")
    return f"imagefactory:{rec.name}:{arch}"


def images_json(records: list[ImageRecord], date: float) -> dict:
    """products:1.0 document: one product per image name/arch, one version per build."""
    products: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: (r.name, r.version)):
        m = rec.manifest
        distro, suite = str(m.get("distro", "")), str(m.get("suite", ""))
        variant = image_variant(rec.name, distro, suite)
        aliases = [rec.name, f"{distro}/{suite}/{variant}"] + ([f"{distro}/{suite}"] if variant == "default" else [])
        product = products.setdefault(product_id(rec), {
            "aliases": ",".join(aliases),
            "arch": m.get("architecture", "unknown"),
            "os": distro,
            "release": suite,
            "release_title": suite,
            "variant": variant,
            "versions": {},
        })
        items = {
            "root.tar.zst": {"ftype": "root.tar.zst", "path": rec.path, "sha256": rec.sha256, "size": rec.size},
            "manifest.json": {"ftype": "manifest.json", "path": rec.manifest_path,
                              "sha256": rec.manifest_sha256, "size": rec.manifest_size},
        }
        items |= format_items(rec.artifacts)
        product["versions"][rec.version] = {"items": items}
    return {"format": "products:1.0", "content_id": "imagefactory:images", "datatype": "image-downloads",
            "updated": _updated(date), "products": products}


def format_items(artifacts: tuple[dict, ...]) -> dict[str, dict]:
    """simplestreams items Incus and LXD read: the split image's metadata under both clients' names
    (each ignores the other's) with the fingerprint of metadata + squashfs, the squashfs root and
    the unified tarball."""
    items: dict[str, dict] = {}
    for a in artifacts:
        base = {"path": a["path"], "sha256": a["sha256"], "size": a["size"]}
        if a["role"] == "rootfs" and a["path"].endswith(".squashfs"):
            items["squashfs"] = {"ftype": "squashfs", **base}
        elif a["format"] == "incus" and a["role"] == "metadata":
            for ftype in ("incus.tar.xz", "lxd.tar.xz"):
                items[ftype] = {"ftype": ftype, **base, "combined_squashfs_sha256": a["fingerprint"]}
        elif a["format"] == "incus-unified":
            for ftype in ("incus_combined.tar.gz", "lxd_combined.tar.gz"):
                items[ftype] = {"ftype": ftype, **base, "combined_type": "container"}
        elif a["format"] == "oci" and a["role"] == "archive":
            items["oci.tar"] = {"ftype": "oci-archive", **base}
    return items


def index_json(images: dict, images_path: str, date: float) -> dict:
    return {"format": "index:1.0", "updated": _updated(date), "index": {
        "imagefactory:images": {"datatype": "image-downloads", "format": "products:1.0", "path": images_path,
                                "products": sorted(images["products"]), "updated": images["updated"]}}}


def dumps(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def sha256sums_text(entries: dict[str, str]) -> str:
    """`sha256sum -c` compatible lines, sorted by path."""
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(entries.items()))


def parse_sha256sums(text: str) -> dict[str, str]:
    """{path: sha256}; rejects lines that are not hash + two spaces + relative path."""
    sums = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, path = line.partition("  ")
        if not sep or len(digest) != 64 or path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"malformed SHA256SUMS line: {line[:80]!r}")
        sums[path.removeprefix("*")] = digest
    return sums


def latest_version(sums: dict[str, str], name: str) -> str | None:
    """Newest version of image `name` listed (versions are sortable timestamps)."""
    prefix = f"images/{name}/"
    versions = [p[len(prefix):].split("/")[0] for p in sums if p.startswith(prefix) and p.endswith(".tar.zst")]
    return max(versions) if versions else None
