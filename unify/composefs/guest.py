"""Where a composefs guest keeps its layers, and the record that says what state it is in.

For a guest root R = PARENT/NAME (the overlay's mount point; empty when not mounted):

    PARENT/.composefs/NAME/guest.json   {"format": 1, "root", "store", "meta": "dir"|"erofs",
                                         "phase": "staged"|"active"|"splitting", "image_sha256",
                                         "objects": N, "verity": bool}
    PARENT/.composefs/NAME/meta.dump    the guest's listing (composefs-dump(5)); names every object
    PARENT/.composefs/NAME/meta/        metadata layer, meta = "dir": sparse files with
                                        trusted.overlay.metacopy + trusted.overlay.redirect
    PARENT/.composefs/NAME/meta.cfs     metadata layer, meta = "erofs": mkcomposefs's EROFS image
    PARENT/.composefs/NAME/erofs/       where meta.cfs is mounted (read-only) under the overlay
    PARENT/.composefs/NAME/upper/       the guest's own changes (overlay upperdir)
    PARENT/.composefs/NAME/work/        overlay workdir

Phases make interruption safe (see unify/composefs/convert.py): "staged" means R still holds
the authoritative plain tree and this state may be dropped; "active" means these layers are
the guest; "splitting" means a plain copy is being made and R becomes authoritative once it is
renamed into place. A state dir is built as PARENT/.composefs/.NAME.partial-PID and renamed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from imagefactory.core.atomic import remove_tree, write_text

STATE_DIR = ".composefs"
FORMAT = 1
META_KINDS = ("dir", "erofs")


@dataclass
class GuestRecord:
    root: str
    store: str
    meta: str = "dir"
    phase: str = "staged"
    image_sha256: str | None = None
    objects: int = 0
    verity: bool = False
    format: int = FORMAT

    def to_dict(self) -> dict:
        return asdict(self)


class GuestLayers:
    """The paths of one guest's composefs state (nothing is created by constructing this)."""

    def __init__(self, root: Path, state: Path | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.state = state or self.root.parent / STATE_DIR / self.root.name

    @classmethod
    def staging(cls, root: Path) -> GuestLayers:
        root = Path(os.path.abspath(root))
        return cls(root, root.parent / STATE_DIR / f".{root.name}.partial-{os.getpid()}")

    @property
    def record_path(self) -> Path:
        return self.state / "guest.json"

    @property
    def listing(self) -> Path:
        return self.state / "meta.dump"

    @property
    def meta_dir(self) -> Path:
        return self.state / "meta"

    @property
    def meta_image(self) -> Path:
        return self.state / "meta.cfs"

    @property
    def erofs_mnt(self) -> Path:
        return self.state / "erofs"

    @property
    def upper(self) -> Path:
        return self.state / "upper"

    @property
    def work(self) -> Path:
        return self.state / "work"

    def exists(self) -> bool:
        return self.record_path.is_file()

    def read(self) -> GuestRecord | None:
        try:
            doc = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        if doc.get("format") != FORMAT:
            return None
        return GuestRecord(**{k: doc[k] for k in GuestRecord.__dataclass_fields__ if k in doc})

    def write(self, record: GuestRecord) -> None:
        write_text(self.record_path, json.dumps(record.to_dict(), indent=2) + "\n", mode=0o600)

    def set_phase(self, phase: str) -> GuestRecord:
        record = self.read()
        if record is None:
            raise FileNotFoundError(self.record_path)
        record.phase = phase
        self.write(record)
        return record

    def make_dirs(self, meta: str) -> None:
        self.state.mkdir(mode=0o700, parents=True)
        for d in (self.upper, self.work):
            d.mkdir(mode=0o755)
        if meta == "erofs":
            self.erofs_mnt.mkdir(mode=0o700)

    def commit(self, final: GuestLayers) -> None:
        """Rename a staged state dir into place (a stale one of a dead run is removed first)."""
        if final.state.exists():
            remove_tree(final.state)
        os.rename(self.state, final.state)


def clean_stale_staging(root: Path) -> None:
    """Remove staging state dirs of this guest left by killed runs."""
    base = Path(os.path.abspath(root)).parent / STATE_DIR
    if not base.is_dir():
        return
    for entry in base.glob(f".{Path(root).name}.partial-*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_tree(entry)


def find(root: Path) -> GuestLayers | None:
    """The composefs state of root, if root is a composefs guest (any phase)."""
    layers = GuestLayers(root)
    return layers if layers.exists() else None


def blocks(top: Path) -> int:
    """Disk use below top (each inode once), not crossing into other mounts (the EROFS layer)."""
    total, seen = 0, set()
    try:
        dev = os.lstat(top).st_dev
    except OSError:
        return 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_dev != dev or (st.st_dev, st.st_ino) in seen:
                if name in dirnames:
                    dirnames.remove(name)
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total
