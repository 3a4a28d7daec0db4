"""Retention ordering (dpkg and rpm rules), LXC/OCI index generation and refusing bad artifact lists:
the pure parts of the lifecycle and format publishing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imagefactory.core.errors import UnsafeInput, VerificationError
from repo import apt, images, lifecycle
from repo.artifacts import ArtifactError, read_image
from repo.verify import stale_release
from tests.support.repo import make_image


def _state(debs=(), rpms=(), imgs=()) -> dict:
    return {"debs": {f"{p}_{v}_{a}": {"package": p, "version": v, "architecture": a} for p, v, a in debs},
            "rpms": {f"{n}-{v}-{r}.{a}": {"name": n, "epoch": e, "version": v, "release": r, "arch": a}
                     for n, e, v, r, a in rpms},
            "images": {f"{n}@{v}": {"name": n, "version": v} for n, v in imgs}, "extras": {}}


def test_retention_orders_by_each_package_managers_rules():
    state = _state(debs=[("k", "1.9-1", "amd64"), ("k", "1.10-1", "amd64"), ("k", "1:0.1-1", "amd64"),
                         ("k", "1.10~rc1-1", "amd64"), ("k", "1.0-1", "arm64")],
                   rpms=[("r", None, "1.9", "1", "x86_64"), ("r", None, "1.10", "1", "x86_64"),
                         ("r", "2", "0.1", "1", "x86_64")],
                   imgs=[("debian-sid", "20261030_080801"), ("debian-sid", "20261101_000000"),
                         ("other", "20200101_000000")])
    assert lifecycle.expired(state, 0) == []
    assert lifecycle.expired(state, 2) == sorted([
        ("debs", "k_1.9-1_amd64"), ("debs", "k_1.10~rc1-1_amd64"),  # epoch 1 and 1.10 are newer
        ("rpms", "r-1.9-1.x86_64")])
    assert ("images", "debian-sid@20261030_080801") in lifecycle.expired(state, 1)
    assert ("images", "other@20200101_000000") not in lifecycle.expired(state, 1)  # per image name
    with pytest.raises(lifecycle.UnknownArtifact, match="not published"):
        lifecycle.resolve(state, ["nope@1"])


def test_lxc_index_lists_the_newest_build_per_image_and_oci_tags():
    imgs = {k: {"name": n, "version": v, "manifest": {"distro": "debian", "suite": "sid", "architecture": "amd64"},
                "artifacts": [{"format": "lxc", "role": "metadata", "path": f"images/{n}/{v}/lxc/meta.tar.xz"}]}
            for k, n, v in (("a", "debian-sid", "20261030_080801"), ("b", "debian-sid", "20261101_000000"),
                            ("c", "debian-sid-web", "20261030_080801"))}
    assert images.lxc_index(imgs).decode().splitlines() == [
        "debian;sid;amd64;default;20261101_000000;/images/debian-sid/20261101_000000/lxc",
        "debian;sid;amd64;web;20261030_080801;/images/debian-sid-web/20261030_080801/lxc"]
    oci = {"format": "oci", "role": "layout", "manifest_digest": "sha256:" + "ab" * 32,
           "path": "oci/x/blobs/sha256/" + "ab" * 32, "size": 400}
    doc = images.oci_indexes({"a": {"name": "x", "version": "1", "artifacts": [oci]},
                              "b": {"name": "x", "version": "2", "artifacts": [oci]}})["x"]
    tags = [m["annotations"][images.OCI_REF] for m in doc["manifests"]]
    assert tags == ["1", "2", "latest"] and {m["size"] for m in doc["manifests"]} == {400}


def test_freshness_of_a_release():
    fields, _ = apt.parse_release(apt.release_text(origin="o", label="l", suite="s", codename="s",
                                                   architectures=["amd64"], components=["main"], files=[],
                                                   date=1_000_000, valid_seconds=86400))
    assert apt.expires_at(fields) == 1_000_000 + 86400
    assert stale_release("s", fields, 1_000_000 + 86399) == []
    assert "expired" in stale_release("s", fields, 1_000_000 + 86401)[0]
    assert "Valid-Until" not in apt.release_text(origin="o", label="l", suite="s", codename="s",
                                                 architectures=[], components=[], files=[], date=0)


def _with_artifacts(tmp_path: Path, records: list) -> Path:
    image = make_image(tmp_path)
    manifest_path = tmp_path / "testimg.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"] = records
    manifest_path.write_text(json.dumps(manifest))
    return image


def test_publish_refuses_missing_changed_or_escaping_artifacts(tmp_path):
    (tmp_path / "testimg.squashfs").write_bytes(b"sq")
    rec = {"format": "squashfs", "role": "rootfs", "file": "testimg.squashfs", "size": 2,
           "sha256": "4ee9fd4b3c8fb5ffc1a0c6d1a8f3c0b0b7c7f3b8e0f6fa3c7a4d4b8f5e1e2d3c"}
    with pytest.raises(VerificationError, match="does not match its manifest entry"):
        read_image(_with_artifacts(tmp_path, [rec]))
    with pytest.raises(ArtifactError, match="missing"):
        read_image(_with_artifacts(tmp_path, [rec | {"file": "gone.squashfs"}]))
    with pytest.raises(UnsafeInput, match="safe relative path"):
        read_image(_with_artifacts(tmp_path, [rec | {"file": "../etc/passwd"}]))
    os.symlink("/etc", tmp_path / "escape")
    with pytest.raises(UnsafeInput, match="outside"):
        read_image(_with_artifacts(tmp_path, [rec | {"file": "escape/passwd"}]))
