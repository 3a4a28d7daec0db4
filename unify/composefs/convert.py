"""Turn plain guest roots (or guests unified in any other mode) into composefs guests, and back.

Conversion of a root R, in an order where a SIGKILL at any instant leaves R usable with its
content and no half guest:
1. (store lock, shared) copy every file's content into the store and list the tree;
   build the layers in PARENT/.composefs/.NAME.partial-PID; flush; rename it to
   PARENT/.composefs/NAME with phase "staged" and register it in the store.
   Killed here: R is untouched; the staged state is dropped by the next run or mount.
2. mount the overlay *over* R: R's path switches from the plain tree to the identical
   composefs view in one mount(2). Then record phase "switched": from now on the layers are
   the guest. Killed between the two: R is mounted and the next run records the switch.
3. delete the plain tree hidden under the mount (unify/composefs/underlay.py, in a private
   mount namespace), then record phase "active".
   Killed here: the next run (or `imagefactory mount`) finishes the deletion.

Split (composefs guest back to a plain directory): copy the mounted view with `cp -a` into
PARENT/.NAME.split-PID, record phase "splitting", unmount, rename the copy over the (empty)
mount point R, then drop the layers. Killed before the rename: the layers are still the
guest (phase goes back to "active"); after it: the plain copy is, and the layers are dropped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from imagefactory.build.plan import BuildOptions
from imagefactory.core.atomic import remove_tree, syncfs
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError
from imagefactory.core.progress import Progress
from unify.composefs import mount as mnt
from unify.composefs import underlay
from unify.composefs.guest import GuestLayers, GuestRecord, clean_stale_staging
from unify.composefs.layers import build_state
from unify.composefs.store import ObjectStore
from unify.composefs.tree import TreeReader


@dataclass
class Converted:
    guest: str
    state: str
    files: int = 0
    bytes: int = 0
    objects_added: int = 0
    bytes_added: int = 0
    removed: int = 0  # entries of the old plain tree deleted
    already: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def recover(layers: GuestLayers, store: ObjectStore | None = None) -> GuestRecord | None:
    """Finish or undo what an interrupted conversion or split left; returns the live record."""
    record = layers.read()
    if record is None:
        return None
    store = store or ObjectStore(Path(record.store))
    mounted = mnt.is_mounted(layers.root, "overlay")
    if record.phase == "staged":
        if not mounted:  # the plain tree is still the guest
            _drop(layers, store)
            return None
        record = layers.set_phase("switched")
    if record.phase == "switched":
        if mounted:
            underlay.clear_under(layers.root, layers.state)
        else:
            underlay.clear_plain(layers.root)
        record = layers.set_phase("active")
    if record.phase == "splitting":
        if not mounted and _nonempty(layers.root):  # the plain copy is in place
            _drop(layers, store)
            return None
        record = layers.set_phase("active")
    _clean_split_copies(layers.root)
    underlay.clean_scratch(layers.state)
    return record


def _drop(layers: GuestLayers, store: ObjectStore) -> None:
    if layers.record_path.is_file():  # unregister first: gc must not trust a half-removed listing
        store.unregister(layers.root)
    remove_tree(layers.state)


def _nonempty(path: Path) -> bool:
    try:
        return any(os.scandir(path))
    except OSError:
        return False


def _clean_split_copies(root: Path) -> None:
    for entry in root.parent.glob(f".{root.name}.split-*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_tree(entry)


def convert(root: Path, store: ObjectStore, meta: str = "dir", opts: BuildOptions | None = None,
            progress: Progress | None = None) -> Converted:
    started = time.monotonic()
    progress = progress or Progress(quiet=True)
    root = Path(os.path.abspath(root))
    layers = GuestLayers(root)
    if not root.is_dir() or root.is_symlink():
        raise ImageFactoryError(f"{root}: not a guest root directory")
    record = recover(layers, store)
    if record is not None:
        if Path(record.store) != store.root:
            raise ImageFactoryError(f"{root} is a composefs guest of another store ({record.store})")
        mnt.mount(layers, record)
        return Converted(str(root), str(layers.state), already=True)
    if mnt.is_mounted(root):
        raise EnvironmentProblem(f"{root} is a mount point; unmount it (or stop the guest) before converting")
    clean_stale_staging(root)
    stage = GuestLayers.staging(root)
    before = (store.written, store.written_bytes)
    with store.locked():
        store.clean_tmp_of_dead()
        progress.stage(f"composefs: copying {root} into {store.root}")
        reader = TreeReader(str(root), store)
        entries = list(reader.entries())
        store.sync()
        progress.stage(f"composefs: metadata layer ({meta})")
        record = GuestRecord(root=str(root), store=str(store.root), meta=meta, phase="staged",
                             verity=store.verity)
        try:
            build_state(stage, entries, record, opts, progress)
            stage.state.parent.mkdir(mode=0o700, exist_ok=True)
            store.register(root, layers.state)
            stage.commit(layers)
        except BaseException:
            remove_tree(stage.state)
            raise
    syncfs(layers.state)
    mnt.mount(layers, record)  # the plain tree is now covered by the identical composefs view
    layers.set_phase("switched")
    progress.stage(f"composefs: removing the plain tree under {root}")
    removed = underlay.clear_under(root, layers.state)
    layers.set_phase("active")
    return Converted(str(root), str(layers.state), reader.files, reader.bytes, store.written - before[0],
                     store.written_bytes - before[1], removed, seconds=round(time.monotonic() - started, 3))


def split(root: Path, progress: Progress | None = None) -> dict:
    """Make a composefs guest a plain directory again (its changes included) and drop its layers."""
    progress = progress or Progress(quiet=True)
    root = Path(os.path.abspath(root))
    layers = GuestLayers(root)
    record = recover(layers)
    if record is None:
        raise ImageFactoryError(f"{root} is not a composefs guest")
    store = ObjectStore(Path(record.store))
    mnt.mount(layers, record)
    copy = root.parent / f".{root.name}.split-{os.getpid()}"
    progress.stage(f"composefs: copying {root} to a plain tree")
    try:
        proc = subprocess.run(["cp", "-a", "--reflink=auto", "--", f"{root}/.", str(copy)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise EnvironmentProblem(f"copying {root}: {proc.stderr.strip()[-300:]}")
        syncfs(copy)
        layers.set_phase("splitting")
        mnt.umount(layers, record)
        os.rename(copy, root)  # root is an empty mount point: replaced in one step
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(copy)
        now = layers.read()
        if now is not None and now.phase == "splitting" and not mnt.is_mounted(root):
            layers.set_phase("active")
            mnt.mount(layers)
        raise
    _drop(layers, store)
    return {"guest": str(root), "plain": True}
