"""Seed a guest as composefs layers over a shared store (`seed --unify --unify-mode composefs`).

The image's file contents go into the store (each at most once: a second guest of the same
image writes none, and does not even decompress the image again, as the store keeps each
seeded image's listing under images/SHA256.dump); the guest gets only its state dir
(metadata layer, upper, work) and an empty root that is the overlay's mount point. Commit
order: state dir, root, conf dir (all renames prepared by seeder.seed_image), then the mount.
The store is held with a shared lock from the first object written until the guest is
registered, so a concurrent `unify gc` (exclusive) never removes an object in between.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from imagefactory.core.atomic import remove_tree
from imagefactory.core.manifest import Manifest
from imagefactory.core.progress import Progress
from imagefactory.seed.cfs_tar import ImageReader
from imagefactory.seed.guest import Guest
from imagefactory.seed.seeder import PlainRoot
from unify.composefs import dump, units
from unify.composefs import mount as mnt
from unify.composefs.convert import recover
from unify.composefs.guest import STATE_DIR, GuestLayers, GuestRecord, clean_stale_staging
from unify.composefs.layers import build_state
from unify.composefs.store import ObjectStore

if TYPE_CHECKING:
    from imagefactory.build.plan import BuildOptions

UNITS_DIR = "composefs"


class ComposefsRoot(PlainRoot):
    def __init__(self, store: Path, meta: str = "erofs", opts: BuildOptions | None = None) -> None:
        self.store = ObjectStore(store)
        self.meta = meta
        self.opts = opts
        self.stack = contextlib.ExitStack()
        self.stage: GuestLayers | None = None
        self.final: GuestLayers | None = None
        self.record: GuestRecord | None = None
        self.entries: list[dump.Entry] = []
        self.objects_added = 0
        self.reused_listing = False

    def fill(self, fh, manifest: Manifest, root_stage: Path, guest: Guest, progress: Progress) -> None:
        self.store.create()
        self.stack.enter_context(self.store.locked())
        self.store.clean_tmp_of_dead()
        sha = manifest.image.sha256
        self.entries = self._known_listing(sha)
        before = self.store.written
        if self.entries:
            self.reused_listing = True
            progress.stage(f"composefs: {sha[:12]} was seeded before: no content to read")
        else:
            progress.stage(f"composefs: reading the image into {self.store.root}")
            self.entries = ImageReader(self.store).read(fh, total=manifest.files, progress=progress)
            self.store.sync()
            dump.write(self.store.image_listing(sha), self.entries)
        self.objects_added = self.store.written - before
        self.final = GuestLayers(guest.root)
        clean_stale_staging(guest.root)
        (guest.root.parent / STATE_DIR).mkdir(mode=0o700, exist_ok=True)
        self.stage = GuestLayers.staging(guest.root)
        self.record = GuestRecord(root=str(guest.root), store=str(self.store.root), meta=self.meta, phase="active",
                                  image_sha256=sha, verity=self.store.verity)
        progress.stage(f"composefs: metadata layer ({self.meta})")
        build_state(self.stage, self.entries, self.record, self.opts, progress,
                    self.store.image_listing(sha).with_suffix(""))

    def _known_listing(self, sha: str) -> list[dump.Entry]:
        path = self.store.image_listing(sha)
        if not path.is_file():
            return []
        entries = dump.read(path)
        if all(self.store.has(e.digest) for e in entries if e.is_object):
            return entries
        return []

    def has_init(self, root_stage: Path) -> bool:
        return any(e.path in ("/sbin/init", "/usr/sbin/init") for e in self.entries)

    def conf_files(self, guest: Guest) -> dict[str, str]:
        assert self.final is not None and self.record is not None
        return {f"{UNITS_DIR}/{n}": text for n, text in units.render(self.final, self.record, guest.name).items()}

    def result_files(self, guest: Guest) -> dict[str, str]:
        assert self.final is not None and self.record is not None
        return {"mount-unit": f"{UNITS_DIR}/{units.unit_name(str(self.final.root))}", "fstab": f"{UNITS_DIR}/fstab"}

    def before_commit(self, guest: Guest) -> None:
        """A guest being replaced: unmount it (a mounted root cannot be renamed aside)."""
        assert self.final is not None and self.stage is not None
        if recover(self.final) is not None:
            mnt.umount(self.final)
        self.store.register(guest.root, self.final.state)

    def pairs(self) -> list[tuple[Path, Path]]:
        assert self.stage is not None and self.final is not None
        return [(self.stage.state, self.final.state)]

    def cleanup(self) -> None:
        if self.stage is not None and os.path.lexists(self.stage.state):
            remove_tree(self.stage.state)
        self.stack.close()

    def after_commit(self, guest: Guest) -> None:
        assert self.final is not None
        mnt.mount(self.final, self.record)

    def summary(self) -> dict:
        assert self.final is not None
        return {"mode": "composefs", "meta": self.meta, "store": str(self.store.root), "state": str(self.final.state),
                "objects_added": self.objects_added, "listing_reused": self.reused_listing,
                "objects": self.record.objects if self.record else 0,
                "mounted": mnt.is_mounted(self.final.root, "overlay")}


def layout_for(store: Path, unify_mode: str, meta: str) -> ComposefsRoot | None:
    """The composefs layout when --unify-mode is composefs, or auto and this host runs composefs."""
    if unify_mode == "auto":
        from unify.composefs.cli import auto_mode

        store.parent.mkdir(parents=True, exist_ok=True)
        unify_mode, _ = auto_mode(store)
    return ComposefsRoot(store, meta) if unify_mode == "composefs" else None
