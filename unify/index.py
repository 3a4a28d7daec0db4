"""The persistent per-guest index: stat fingerprint -> digest, so re-runs hash only changes.

One JSON file per guest root at STORE/guests/<id>.json, id = XXH3-64 of the
guest root's absolute path, written atomically (stage + rename):

    {"format": 1, "root": "/vservers/web1", "mode": "hardlink", "updated": 1790000000.0,
     "files": {"usr/bin/ls": [dev, ino, size, mtime_ns, ctime_ns, digest, metakey, entry], ...}}

Paths are relative to the guest root (os.fsdecode'd, so undecodable bytes
survive as surrogate escapes). `digest`/`metakey` are "" when the file was
never hashed; `entry` is the store entry name the file is unified with, or "".
A record is trusted only while (dev, ino, size, mtime_ns, ctime_ns) all still
match an lstat of the path; in hardlink-sharing modes a unified file is also
recognised by (dev, ino) alone, because every new link to the shared inode
bumps its ctime.

Readers (e.g. `imagefactory report`) use `load(store_dir)` for every guest's
unified files and `unify.store.Store(store_dir).entries()` for the entries
with their link counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from imagefactory.core.atomic import write_text

FORMAT = 1

# Record field positions.
DEV, INO, SIZE, MTIME, CTIME, DIGEST, METAKEY, ENTRY = range(8)


def guest_id(root: Path) -> str:
    return xxhash.xxh3_64_hexdigest(os.fsencode(os.path.abspath(root)))


def index_path(store_dir: Path, root: Path) -> Path:
    return Path(store_dir) / "guests" / f"{guest_id(root)}.json"


def read(store_dir: Path, root: Path) -> dict[str, list]:
    """The file records of one guest ({} when unknown or unreadable: everything gets re-hashed)."""
    try:
        data = json.loads(index_path(store_dir, root).read_text())
    except (OSError, ValueError):
        return {}
    if data.get("format") != FORMAT or data.get("root") != os.path.abspath(root):
        return {}
    return data.get("files", {})


def write(store_dir: Path, root: Path, files: dict[str, list], mode: str | None) -> None:
    doc = {"format": FORMAT, "root": os.path.abspath(root), "mode": mode, "updated": time.time(), "files": files}
    write_text(index_path(store_dir, root), json.dumps(doc, separators=(",", ":")), mode=0o600)


def remove(store_dir: Path, root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        index_path(store_dir, root).unlink()


@dataclass(frozen=True)
class UnifiedFile:
    path: str  # relative to the guest root
    entry: str  # store entry name
    digest: str
    size: int


def guests(store_dir: Path) -> Iterator[tuple[str, dict]]:
    """(guest root, index document) for every guest the store knows."""
    gdir = Path(store_dir) / "guests"
    if not gdir.is_dir():
        return
    for p in sorted(gdir.glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(p.read_text())
            if doc.get("format") == FORMAT:
                yield doc["root"], doc


def load(store_dir: Path) -> dict[str, list[UnifiedFile]]:
    """Per guest root: its unified files (as of that guest's last run) with digest and size."""
    out = {}
    for root, doc in guests(store_dir):
        out[root] = [
            UnifiedFile(path, rec[ENTRY], rec[DIGEST], rec[SIZE])
            for path, rec in doc.get("files", {}).items()
            if rec[ENTRY]
        ]
    return out


def referenced_entries(store_dir: Path) -> set[str]:
    """Entry names some guest index still points at (reflink mode's notion of 'in use')."""
    return {rec[ENTRY] for _, doc in guests(store_dir) for rec in doc.get("files", {}).values() if rec[ENTRY]}
