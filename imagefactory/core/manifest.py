"""Image naming and the image manifest record (schema in MANIFEST.md).

An image is a pair of files side by side: `<name>.tar.zst` and `<name>.manifest.json`. Every wing
that writes, publishes, pulls or seeds images names them through `ImageFiles`, and reads the
manifest through `Manifest.load`, so the pair and the schema live in one place.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagefactory.core.errors import ImageFactoryError

SCHEMA = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
IMAGE_SUFFIX = ".tar.zst"
MANIFEST_SUFFIX = ".manifest.json"


class ManifestError(ImageFactoryError):
    """A manifest that is missing, not JSON, or lacks a required field (bad input: exit 1)."""


@dataclass(frozen=True)
class ImageFiles:
    """The image file and its manifest beside it."""

    image: Path
    manifest: Path

    @classmethod
    def named(cls, directory: Path, name: str) -> ImageFiles:
        return cls(directory / f"{name}{IMAGE_SUFFIX}", directory / f"{name}{MANIFEST_SUFFIX}")

    @classmethod
    def of_image(cls, image: Path) -> ImageFiles:
        if not image.name.endswith(IMAGE_SUFFIX):
            raise ManifestError(f"{image}: an image file must end in {IMAGE_SUFFIX}")
        return cls.named(image.parent, image.name[: -len(IMAGE_SUFFIX)])

    @property
    def stem(self) -> str:
        return self.image.name[: -len(IMAGE_SUFFIX)]


@dataclass(frozen=True)
class ImageRef:
    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Snapshot:
    date: str
    epoch: int | None
    mirror: str


@dataclass(frozen=True)
class Manifest:
    """The fields other wings rely on; `raw` keeps the whole document (packages, sizes, ...).

    Only `image.sha256` and `image.size` are required (they vouch for the image); the rest
    default to empty so that an older or hand-written manifest still verifies.
    """

    name: str
    image: ImageRef
    snapshot: Snapshot | None
    architecture: str
    files: int
    distro: str = ""
    suite: str = ""
    variant: str = ""
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def version(self) -> str | None:
        """simplestreams-style version from the snapshot time (same snapshot, same version)."""
        if self.snapshot is None or self.snapshot.epoch is None:
            return None
        return _dt.datetime.fromtimestamp(self.snapshot.epoch, _dt.UTC).strftime("%Y%m%d_%H%M%S")

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: not an image manifest (not a JSON object)")
        try:
            img = data["image"]
            image = ImageRef(str(img.get("file", "")), str(img["sha256"]).lower(), int(img["size"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{where}: not an image manifest (image: {exc})") from None
        if not _SHA256.fullmatch(image.sha256):
            raise ManifestError(f"{where}: image.sha256 is not a SHA-256 hex digest")
        snap = data.get("snapshot")
        snapshot = None
        if isinstance(snap, dict):
            epoch = snap.get("epoch")
            snapshot = Snapshot(str(snap.get("date", "")), epoch if isinstance(epoch, int) else None,
                                str(snap.get("mirror", "")))
        files = data.get("files")
        return cls(name=str(data.get("name") or ""), image=image, snapshot=snapshot,
                   architecture=str(data.get("architecture", "unknown")),
                   files=files if isinstance(files, int) else 0, distro=str(data.get("distro", "")),
                   suite=str(data.get("suite", "")), variant=str(data.get("variant", "")), raw=data)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"{path}: manifest missing; refusing an image nothing vouches for") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ManifestError(f"{path}: not an image manifest ({exc})") from None
        return cls.from_dict(data, str(path))


def dumps(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=False) + "\n"
