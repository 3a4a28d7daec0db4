"""Seed one guest: verify, unpack, configure, then commit everything at once.

Both the guest root and its conf dir are built under hidden staging names
next to their targets and renamed into place only when complete, with
SIGINT/SIGTERM blocked during those few renames. Any failure (or Ctrl-C)
before that removes the staging dirs and leaves the host as it was; a
replaced guest is moved aside first and restored if the commit fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagefactory.core.atomic import remove_tree, staging_name
from imagefactory.core.errors import ImageFactoryError
from imagefactory.core.progress import Progress
from imagefactory.seed import barrier, cgroups, contexts, disk, lxc, nspawn, unpack, vserver_conf
from imagefactory.seed.guest import Guest
from imagefactory.seed.limits import render


@dataclass
class SeedResult:
    name: str
    context: int
    root: str
    conf: str
    image: str
    image_sha256: str
    barrier: dict
    files: dict[str, str] = field(default_factory=dict)  # format -> path of its config
    replaced: bool = False
    leftovers: list[str] = field(default_factory=list)  # old trees we could not delete
    cgroup: str = ""  # the host's cgroup layout the keys were written for
    unenforced: list[str] = field(default_factory=list)  # limits this host's cgroups cannot carry
    disk: str | None = None  # how the disk limit is applied: image, quota (None: no limit)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def write_tree(stage: Path, tree: vserver_conf.ConfTree) -> None:
    """Materialise a conf tree (files 0644, dirs 0755) under a fresh stage dir."""
    stage.mkdir(mode=0o755)
    for rel, content in sorted(tree.files.items()):
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, content.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    for rel, target in sorted(tree.links.items()):
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)


def has_init(root: Path) -> bool:
    """Whether the guest can boot (nspawn Boot=yes) rather than just run a command."""
    return any(os.path.lexists(root / p) for p in ("sbin/init", "usr/sbin/init"))


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Keep Ctrl-C/TERM out of the commit renames; they are delivered afterwards."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def commit(pairs: list[tuple[Path, Path]]) -> list[Path]:
    """Rename each stage over its target, all or nothing; returns the moved-aside old targets."""
    done: list[tuple[Path, Path, Path | None, bool]] = []
    with signals_blocked():
        try:
            for stage, target in pairs:
                aside = None
                if os.path.lexists(target):
                    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
                    os.rename(target, aside)
                done.append((stage, target, aside, False))
                os.rename(stage, target)
                done[-1] = (stage, target, aside, True)
        except BaseException:
            for stage, target, aside, installed in reversed(done):
                if installed:
                    os.rename(target, stage)
                if aside is not None:
                    os.rename(aside, target)
            raise
    return [aside for _, _, aside, _ in done if aside is not None]


def clean_stale(target: Path) -> None:
    """Remove staging dirs of earlier seeds of this name whose process is gone (e.g. SIGKILL)."""
    if not target.parent.is_dir():
        return
    for entry in target.parent.glob(f".{target.name}.partial-*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_tree(entry)
    # and the own layers (disk limit) those seeds were making: VDIR/.own/.NAME.partial-PID*
    own = disk.Layer(target).base
    if own.is_dir():
        stale = {entry.name.split(".img")[0] for entry in own.glob(f".{target.name}.partial-*")}
        for name in sorted(stale):
            pid = name.rsplit("-", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                disk.remove(disk.Layer(target.parent / name))


def config_tree(guest: Guest, context: int, manifest_json: str, *, boot: bool,
                layout: cgroups.Layout) -> tuple[vserver_conf.ConfTree, list[str]]:
    """Every config file of a guest, all rendered from guest.limits for this cgroup layout;
    also the limits the layout cannot enforce."""
    limits = render(guest.limits, os.sysconf("SC_PAGE_SIZE"), layout)
    tree = vserver_conf.render(guest, context, limits, manifest_json)
    tree.add(nspawn.render(guest, limits, boot=boot))
    tree.add(lxc.render(guest, limits))
    return tree, limits.unenforced


class PlainRoot:
    """How a guest root is filled: here, the image unpacked into it (see seed/composefs.py for
    the other way). Hooks: fill the staged root, extra (stage, target) pairs to commit before
    root and conf, conf files, what to do right before and after the commit, cleanup."""

    def fill(self, fh, manifest: dict, root_stage: Path, guest: Guest, progress: Progress) -> None:
        unpack.unpack(fh, root_stage, total=int(manifest.get("files") or 0), progress=progress)

    def has_init(self, root_stage: Path) -> bool:
        return has_init(root_stage)

    def pairs(self) -> list[tuple[Path, Path]]:
        return []

    def conf_files(self, guest: Guest) -> dict[str, str]:
        return {}

    def before_commit(self, guest: Guest) -> None:
        pass

    def after_commit(self, guest: Guest) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def result_files(self, guest: Guest) -> dict[str, str]:
        return {}


def seed_image(
    image: Path, guest: Guest, *, replace: bool = False, progress: Progress | None = None,
    layout: PlainRoot | None = None, cgroup_layout: cgroups.Layout | None = None, disk_mode: str = "auto",
) -> SeedResult:
    """Seed guest from a local image whose manifest sits beside it.

    `layout` fills the root (default: the image unpacked; seed/composefs.py: composefs
    layers). The cgroup keys follow `cgroup_layout` (default: this host's, seed/cgroups.py).
    With a disk limit, the guest's own layer is made too (seed/disk.py).
    """
    progress = progress or Progress(quiet=True)
    layout = layout or PlainRoot()
    cgroup_layout = cgroup_layout or cgroups.detect()
    manifest = unpack.load_manifest(image)
    with open(image, "rb") as fh:
        progress.stage(f"verifying {image.name}")
        unpack.verify(fh, manifest, str(image))
        fh.seek(0)
        with contexts.allocation_lock(guest.confdir):
            existing = [p for p in (guest.root, guest.conf) if os.path.lexists(p)]
            if existing and not replace:
                raise ImageFactoryError(
                    f"guest {guest.name!r} exists ({', '.join(map(str, existing))}); use --replace"
                )
            context = contexts.allocate(guest.confdir, guest.name)
            guest.vdir.mkdir(parents=True, exist_ok=True)
            protection = barrier.protect(guest.vdir)
            root_stage, conf_stage = staging_name(guest.root), staging_name(guest.conf)
            for target in (guest.root, guest.conf):
                clean_stale(target)
            try:
                progress.stage(f"unpacking into {guest.root}")
                root_stage.mkdir(mode=0o755)
                layout.fill(fh, manifest, root_stage, guest, progress)
                progress.stage(f"writing config {guest.conf} (context {context})")
                tree, unenforced = config_tree(guest, context, json.dumps(manifest, indent=2) + "\n",
                                               boot=layout.has_init(root_stage), layout=cgroup_layout)
                tree.add(layout.conf_files(guest))
                write_tree(conf_stage, tree)
                layout.before_commit(guest)
                # The own layer is made under the staging name and renamed with the root.
                staged_layer, layer = disk.Layer(root_stage), disk.Layer(guest.root)
                way = None
                try:
                    if guest.limits.disk is not None:
                        progress.stage(f"making the own layer of {guest.name} ({guest.limits.disk} bytes)")
                        way = disk.setup(staged_layer, guest.limits.disk, disk_mode, context)
                    old = commit([*layout.pairs(), (root_stage, guest.root), (conf_stage, guest.conf)])
                except BaseException:
                    disk.remove(staged_layer)
                    raise
                if layer.mode is not None:  # the replaced guest's layer, or one a killed seed left
                    disk.remove(layer)
                if way is not None:
                    disk.rename(staged_layer, layer)
            finally:
                for stage in (root_stage, conf_stage):
                    if os.path.lexists(stage):
                        remove_tree(stage)
                layout.cleanup()
    layout.after_commit(guest)
    leftovers = []
    for path in old:
        try:
            remove_tree(path)
        except OSError as exc:  # e.g. immutable unified files in the old root
            leftovers.append(f"{path}: {exc.strerror}")
    return SeedResult(
        name=guest.name,
        context=context,
        root=str(guest.root),
        conf=str(guest.conf),
        image=str(manifest.get("name") or image.name),
        image_sha256=manifest["image"]["sha256"],
        barrier=protection.to_dict(),
        files={
            "vserver": str(guest.conf),
            "nspawn": str(guest.conf / nspawn.settings_path(guest.name)),
            "nspawn-limits": str(guest.conf / nspawn.dropin_path(guest.name)),
            "lxc": str(guest.conf / lxc.config_path(guest.name)),
            **{key: str(guest.conf / rel) for key, rel in layout.result_files(guest).items()},
        },
        replaced=bool(old),
        leftovers=leftovers,
        cgroup=cgroup_layout.describe(),
        unenforced=unenforced,
        disk=way,
    )
