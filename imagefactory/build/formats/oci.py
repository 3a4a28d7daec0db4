"""`oci`: an OCI image layout directory `<name>.oci/` and the same layout as `<name>.oci.tar`
(what `podman run oci-archive:FILE` and `skopeo copy oci-archive:FILE` read).

One gzip layer (the rootfs, names without a leading `./`), a config from the recipe's `[oci]`
table, `created` = the snapshot time. JSON is written with sorted keys and no whitespace, the
layer with gzip mtime 0, so every digest is the same across builds from one snapshot. The
image is tagged `org.opencontainers.image.ref.name` = the recipe's tag (default `latest`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from imagefactory.build.formats import OciConfig, Target, record
from imagefactory.build.formats.archive import dir_entry, gzip_stream
from imagefactory.build.image import add_tree, open_tar
from imagefactory.core import atomic

LAYOUT_SUFFIX = ".oci"
ARCHIVE_SUFFIX = ".oci.tar"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def iso(epoch: int) -> str:
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def descriptor(media_type: str, data_digest: str, size: int, **extra: object) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{data_digest}", "size": size, **extra}


def put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest, len(data)


def image_config(cfg: OciConfig, arch: str, epoch: int, diff_id: str, created_by: str) -> dict:
    config: dict[str, object] = {"Env": list(cfg.env), "WorkingDir": cfg.working_dir}
    if cfg.cmd:
        config["Cmd"] = list(cfg.cmd)
    if cfg.entrypoint:
        config["Entrypoint"] = list(cfg.entrypoint)
    if cfg.user:
        config["User"] = cfg.user
    if cfg.labels:
        config["Labels"] = dict(cfg.labels)
    return {"architecture": arch, "os": "linux", "created": iso(epoch), "config": config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created": iso(epoch), "created_by": created_by}]}


def write_layout(target: Target, layout: Path) -> str:
    """Fill an empty directory with the layout; returns the manifest digest."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = blobs / ".layer"
    with gzip_stream(tmp) as plain, open_tar(plain) as tar:
        add_tree(tar, target.rootfs, target.epoch, prefix="")
    diff_id = plain.sha.hexdigest()
    layer_digest, layer_size = _digest_file(tmp)
    os.rename(tmp, blobs / layer_digest)
    config = image_config(target.oci, target.oci_arch, target.epoch, diff_id,
                          f"imagefactory build {target.name} (snapshot {target.serial})")
    config_digest, config_size = put_blob(layout, canonical(config))
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                "config": descriptor(MT_CONFIG, config_digest, config_size),
                "layers": [descriptor(MT_LAYER, layer_digest, layer_size)],
                "annotations": {"org.opencontainers.image.created": iso(target.epoch)}}
    manifest_digest, manifest_size = put_blob(layout, canonical(manifest))
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        descriptor(MT_MANIFEST, manifest_digest, manifest_size,
                   platform={"architecture": target.oci_arch, "os": "linux"},
                   annotations={REF_NAME: target.oci.tag})]}
    (layout / "index.json").write_bytes(canonical(index))
    (layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest


def _digest_file(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest(), os.fstat(f.fileno()).st_size


def layout_files(layout: Path) -> list[Path]:
    """oci-layout, index.json, then the blobs by digest: the archive's member order."""
    return [layout / "oci-layout", layout / "index.json", *sorted((layout / "blobs" / "sha256").iterdir())]


def write_archive(layout: Path, target_file: Path, epoch: int) -> None:
    """The layout as an uncompressed tar (oci-archive), members sorted, owners 0, times = epoch."""
    with atomic.staged_path(target_file) as stage, open(stage, "wb") as out, open_tar(out) as tar:
        tar.addfile(dir_entry("blobs", epoch))
        tar.addfile(dir_entry("blobs/sha256", epoch))
        for path in layout_files(layout):
            ti = tar.gettarinfo(str(path), arcname=str(path.relative_to(layout)))
            ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0o644, epoch, 0, 0, "", ""
            with open(path, "rb") as fh:
                tar.addfile(ti, fh)


def write(target: Target) -> list[dict]:
    layout = target.path(LAYOUT_SUFFIX)
    with atomic.staged_path(layout) as stage:
        manifest_digest = write_layout(target, stage)
    archive = target.path(ARCHIVE_SUFFIX)
    write_archive(layout, archive, target.epoch)
    digest = f"sha256:{manifest_digest}"
    records = [record(target, "oci", "archive", archive, manifest_digest=digest, tag=target.oci.tag)]
    records += [record(target, "oci", "layout", path, manifest_digest=digest) for path in layout_files(layout)]
    return records
