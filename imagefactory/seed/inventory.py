"""What guests this host has: read back from their conf dirs and roots."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from imagefactory.core.manifest import Manifest, ManifestError
from imagefactory.seed import contexts, disk, runtime
from imagefactory.seed.vserver_conf import MANIFEST
from unify.composefs.guest import GuestLayers
from unify.composefs.mount import Usage, usage


@dataclass
class TreeUsage:
    disk_usage: int = 0  # st_blocks * 512, each inode once
    file_bytes: int = 0  # st_size of regular files, each inode once
    shared_bytes: int = 0  # of those, inodes with more than one link


def tree_usage(root: Path) -> TreeUsage:
    """Disk use of a guest root and how much of it is shared (link count > 1).

    Never follows symlinks; counts each inode once, like du.
    """
    usage = TreeUsage()
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            usage.disk_usage += st.st_blocks * 512
            if stat.S_ISREG(st.st_mode):
                usage.file_bytes += st.st_size
                if st.st_nlink > 1:
                    usage.shared_bytes += st.st_size
    return usage


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text and text.isdigit() else None


@dataclass
class GuestInfo:
    name: str
    context: int | None
    conf: str
    root: str | None
    image: str | None
    version: str | None
    image_sha256: str | None
    ip: str | None
    memory: int | None  # rss hard limit in bytes
    cpu_percent: float | None
    disk_usage: int | None
    shared_percent: float | None
    state: str | None = None  # LXC's: RUNNING, STOPPED, ... (None when not measured)
    disk_used: int | None = None  # bytes in the guest's own layer (what counts against disk_limit)
    disk_limit: int | None = None  # its disk limit (dlimits), None: unlimited
    disk_mode: str | None = None  # image or quota
    mounted: bool | None = None  # composefs guests: is the overlay mounted at the root?
    upper_bytes: int | None = None  # composefs guests: disk use of the guest's own changes

    def to_dict(self) -> dict:
        return asdict(self)


def read_guest(conf: Path, page_size: int, *, measure: bool = True, live: bool | None = None,
               state: str | None = None) -> GuestInfo:
    """One guest's facts from util-vserver's layout (plus our manifest copy).

    measure: walk the root for disk usage and shared % (O(files)); live (default: as measure):
    ask the disk-limit layer for its use (a subprocess for an unmounted image). state is LXC's,
    as runtime.lxc_states gave it for all guests at once (None: not asked).
    """
    live = measure if live is None else live
    manifest: Manifest | None
    try:
        manifest = Manifest.load(conf / MANIFEST)
    except ManifestError:  # not seeded by imagefactory, or the copy was edited
        manifest = None
    # util-vserver's own links may be relative (../.defaults/vdirbase/NAME).
    root = conf / os.readlink(conf / "vdir") if (conf / "vdir").is_symlink() else None
    ip, prefix = _read(conf / "interfaces/0/ip"), _read(conf / "interfaces/0/prefix")
    rss = _int(conf / "rlimits/rss.hard") or _int(conf / "rlimits/rss")
    fill, interval = _int(conf / "sched/fill-rate"), _int(conf / "sched/interval")
    cfs = composefs_usage(root) if root is not None else None
    usage = tree_usage(root) if measure and root is not None and root.is_dir() and cfs is None else None
    context = contexts.read_context(conf)
    space = _int(conf / "dlimits/0/space_total")
    layer = disk.Layer(Path(os.path.normpath(root))) if root is not None else None
    own = disk.usage(layer, context) if live and layer is not None and layer.mode else None
    return GuestInfo(
        name=_read(conf / "name") or conf.name,
        context=context,
        conf=str(conf),
        root=str(root) if root else None,
        image=manifest.name or None if manifest else None,
        version=manifest.version if manifest else None,
        image_sha256=manifest.image.sha256 if manifest else None,
        ip=f"{ip}/{prefix}" if ip and prefix else ip,
        memory=rss * page_size if rss is not None else None,
        cpu_percent=float(Fraction(fill * 100, interval)) if fill and interval else None,
        disk_usage=usage.disk_usage if usage else (cfs.state_bytes if cfs and measure else None),
        shared_percent=round(100 * usage.shared_bytes / usage.file_bytes, 1) if usage and usage.file_bytes else None,
        state=state,
        disk_used=own[0] if own else None,
        disk_limit=space * 1024 if space is not None else None,
        disk_mode=layer.mode if layer is not None else None,
        mounted=cfs.mounted if cfs else None,
        upper_bytes=cfs.upper_bytes if cfs else None,
    )


def composefs_usage(root: Path) -> Usage | None:
    """Mounted state and disk use of a composefs guest (None for a plain root)."""
    layers = GuestLayers(root)
    return usage(layers) if layers.exists() else None


def guest_store(conf: Path) -> Path | None:
    """The unification store a guest is recorded with (apps/vunify/hash/0), if any."""
    link = conf / "apps/vunify/hash/0"
    return Path(os.path.realpath(link)) if link.is_symlink() else None


def roots_sharing_store(confdir: Path, store: Path) -> list[Path]:
    """Roots of the guests whose config points at store (they unify against each other)."""
    wanted = os.path.realpath(store)
    roots = []
    for conf in guest_dirs(confdir):
        vdir = conf / "vdir"
        if str(guest_store(conf)) == wanted and vdir.is_symlink():
            root = conf / os.readlink(vdir)
            if root.is_dir():
                roots.append(root)
    return roots


def guest_dirs(confdir: Path) -> list[Path]:
    """Conf dirs of guests (dirs with a `context` or `name` file; dot-dirs are staging)."""
    if not confdir.is_dir():
        return []
    return [
        d
        for d in sorted(confdir.iterdir())
        if not d.name.startswith(".") and d.is_dir() and ((d / "context").exists() or (d / "name").exists())
    ]


def list_guests(confdir: Path, page_size: int, *, measure: bool = True,
                live: bool | None = None) -> list[GuestInfo]:
    """Every guest, in name order. Live facts: LXC's state of all guests in one pass
    (runtime.lxc_states: one `lxc-info` only per guest whose LXC monitor is up), and the
    disk-limit use, read 8 guests at a time since an unmounted image costs a `dumpe2fs` each."""
    dirs = guest_dirs(confdir)
    live = measure if live is None else live
    states = runtime.lxc_states([(d / "lxc", d.name) for d in dirs]) if live else [None] * len(dirs)
    if not live or len(dirs) < 2:
        return [read_guest(d, page_size, measure=measure, live=live, state=s)
                for d, s in zip(dirs, states, strict=True)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda d, s: read_guest(d, page_size, measure=measure, live=live, state=s),
                             dirs, states))
