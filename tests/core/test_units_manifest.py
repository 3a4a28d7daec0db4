"""Ground floor: the one bytes formatter and the image naming/manifest record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagefactory.core.manifest import ImageFiles, Manifest, ManifestError
from imagefactory.core.units import human


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                         (3 * 1024**3 // 4, "768.0 MiB"), (5 * 1024**4, "5.0 TiB"),
                                         (None, "-")])
def test_human(n, text):
    assert human(n) == text


def test_image_files_pair(tmp_path: Path):
    files = ImageFiles.named(tmp_path, "debian-sid")
    assert (files.image.name, files.manifest.name, files.stem) == (
        "debian-sid.tar.zst", "debian-sid.manifest.json", "debian-sid")
    assert ImageFiles.of_image(files.image) == files
    with pytest.raises(ManifestError):
        ImageFiles.of_image(tmp_path / "x.tar.gz")


def test_manifest_load_typed_and_refuses_garbage(tmp_path: Path):
    path = tmp_path / "g.manifest.json"
    path.write_text(json.dumps({"name": "g", "architecture": "amd64", "files": 3,
                                "snapshot": {"date": "d", "epoch": 5, "mirror": "m"},
                                "image": {"file": "g.tar.zst", "sha256": "ab" * 32, "size": 9}}))
    m = Manifest.load(path)
    assert (m.name, m.image.size, m.snapshot.epoch, m.files, m.version) == ("g", 9, 5, 3, "19700101_000005")
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not an image manifest"):
        Manifest.load(path)
    path.write_text(json.dumps({"name": "g"}))
    with pytest.raises(ManifestError, match="image"):
        Manifest.load(path)
    path.write_text(json.dumps({"image": {"sha256": "ab", "size": 9}}))
    with pytest.raises(ManifestError, match="not a SHA-256"):
        Manifest.load(path)
    path.unlink()
    with pytest.raises(ManifestError, match="manifest missing"):
        Manifest.load(path)
