"""Unified guests: inode sharing (hardlink, immutable, vserver) or extent sharing (reflink).

One lstat walk per tree (unify.walk.walk_all: no symlink followed, no other filesystem
entered); in reflink mode, FIEMAP or a fresh unify-index record says which extents a guest
file shares with a store entry.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from pathlib import Path

from imagefactory.core.errors import EnvironmentProblem
from unify import index as uindex
from unify import store as ustore
from unify.report.composefs import is_composefs, measure_composefs
from unify.report.figures import Builder, Group, GuestCount, link_histogram
from unify.report.model import Report, StoreFigures
from unify.walk import FILE_FLAGS, RACES, walk_all

# ---------------------------------------------------------------------------------------------
# FIEMAP (reflink sharing)

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
_EXTENTS_PER_CALL = 64


def file_extents(fd: int) -> list[tuple[int, int, int, int]]:
    """(logical, physical, length, flags) of every extent of an open file (FS_IOC_FIEMAP)."""
    out: list[tuple[int, int, int, int]] = []
    start = 0
    while True:
        buf = bytearray(_FIEMAP_HEAD.size + _FIEMAP_EXTENT.size * _EXTENTS_PER_CALL)
        _FIEMAP_HEAD.pack_into(buf, 0, start, 0xFFFFFFFFFFFFFFFF - start, FIEMAP_FLAG_SYNC, 0, _EXTENTS_PER_CALL, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        mapped = _FIEMAP_HEAD.unpack_from(buf, 0)[3]
        if not mapped:
            return out
        for i in range(mapped):
            logical, physical, length, _, _, flags, _, _, _ = _FIEMAP_EXTENT.unpack_from(
                buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size
            )
            out.append((logical, physical, length, flags))
            if flags & FIEMAP_EXTENT_LAST:
                return out
        start = out[-1][0] + out[-1][2]


def shared_extent_key(fd: int) -> tuple[int, int] | None:
    """(bytes in shared extents, physical start of the first shared extent), or None."""
    shared = [(phys, length) for _, phys, length, flags in file_extents(fd) if flags & FIEMAP_EXTENT_SHARED]
    if not shared:
        return None
    return sum(length for _, length in shared), shared[0][0]


# ---------------------------------------------------------------------------------------------
# Measuring


def _walk_store(store: Path, b: Builder) -> tuple[StoreFigures, dict[tuple[int, int], tuple[int, str]]]:
    """Store figures and its entries, (dev, ino) -> (disk bytes, relpath).

    Entries are the files named like the engine names them (unify/store.py); the marker,
    lock, temp files and guest indexes count as store overhead.
    """
    figures = StoreFigures(str(store))
    entries: dict[tuple[int, int], tuple[int, str]] = {}
    nlinks = []
    for _fd, name, rel, st in walk_all(store):
        b.count_real(st)
        figures.apparent_bytes += st.st_size
        figures.disk_bytes += st.st_blocks * 512
        if stat.S_ISREG(st.st_mode) and rel.startswith("/objects/") and ustore.parse_entry_name(name):
            entries[(st.st_dev, st.st_ino)] = (st.st_blocks * 512, rel)
            figures.overflow_entries += ustore.copy_of(name) > 0
            nlinks.append((st.st_nlink, st.st_blocks * 512))
    figures.entries = len(entries)
    figures.orphans = sum(1 for n, _ in nlinks if n <= 1)
    figures.link_histogram = link_histogram(nlinks)
    return figures, entries


def detect_sharing(store: Path | None, figures: StoreFigures | None, entries: dict) -> str:
    """The store's recorded mode decides; without a marker, the entries tell.

    Entries of a linked store have a second link; a reflink store's entries have none but
    share extents.
    """
    if store is None or figures is None or not figures.entries:
        return "inode"
    mode = ustore.Store(store).info().get("mode")
    if mode:
        return "reflink" if mode == "reflink" else "inode"
    if any(h["min_links"] > 1 for h in figures.link_histogram):
        return "inode"
    for _dev_ino, (_disk, rel) in list(entries.items())[:50]:
        try:
            if _extent_info_path(Path(str(store) + rel)):
                return "reflink"
        except (OSError, EnvironmentProblem):
            break
    return "inode"


def measure(roots: list[Path], store: Path | None = None, sharing: str = "auto", top: int = 20,
            progress=None) -> Report:
    """Report on guests unified into `store` (or hard-linked to each other without one).

    sharing: "inode" (hardlink, immutable and vserver modes), "reflink" (shared extents) or
    "auto" (the store's recorded mode).
    """
    if is_composefs(store):
        return measure_composefs(roots, store, top, progress)  # type: ignore[arg-type]
    b = Builder(roots, top)
    store_fig: StoreFigures | None = None
    entries: dict[tuple[int, int], tuple[int, str]] = {}
    if store is not None:
        store_fig, entries = _walk_store(store, b)
        if progress:
            progress.stage(f"store {store}: {store_fig.entries} entries")
    if sharing == "auto":
        sharing = detect_sharing(store, store_fig, entries)
    if sharing == "reflink":
        return _measure_reflink(b, store, store_fig, entries, progress)
    for g, root in enumerate(roots):
        guest = GuestCount(b.guests[g])
        for _fd, _name, rel, st in walk_all(root):
            b.count_real(st)
            regular = stat.S_ISREG(st.st_mode)
            if regular and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                grp = b.join(key, g, rel, st.st_size, st.st_blocks * 512)
                grp.paths.append(g)
                if guest.first_time(st):
                    grp.occ.append(g)
                    grp.inodes = 1
                    grp.in_store = key in entries
            elif guest.first_time(st) and regular:
                b.private(g, rel, st.st_size, st.st_blocks * 512)
        if progress:
            progress.count("guests", g + 1, len(roots))
    # Entries no reported guest links to (orphans, guests left out of this report) are overhead.
    if store_fig is not None:
        used = sum(entries[k][0] for k, grp in b.groups.items() if grp.in_store)
        b.store_overhead = store_fig.disk_bytes - used
    return b.finish("inode", store_fig, True, {"apparent_unique_bytes": b.real_apparent, "du_disk_bytes": b.real_disk})


def _measure_reflink(b: Builder, store: Path | None, store_fig: StoreFigures | None,
                     entries: dict, progress) -> Report:
    """Reflink mode: each guest keeps its own inode, the sharing lives in extents du cannot see.

    Store entries are grouped by their first shared physical extent (FIEMAP). A guest file
    whose unify-index record is still fresh joins its entry's group without being opened;
    guests without an index are asked with FIEMAP, file by file.
    """
    entry_group: dict[str, tuple[int, int]] = {}  # entry name -> group key
    group_bytes: dict[tuple[int, int], int] = {}  # group key -> shared bytes of its store entry
    for (dev, _ino), (disk, rel) in entries.items():
        info = _extent_info_path(Path(str(store) + rel))
        if info:
            entry_key = (dev, info[1])
            entry_group[rel.rpartition("/")[2]] = entry_key
            group_bytes[entry_key] = min(info[0], disk)
    for g, root in enumerate(b.roots):
        guest = GuestCount(b.guests[g])
        records = uindex.read(store, root) if store is not None else {}
        linked: dict[tuple[int, int], Group] = {}  # this guest's multi-link files, already grouped
        for fd, name, rel, st in walk_all(root):
            b.count_real(st)
            if not guest.first_time(st):
                if (st.st_dev, st.st_ino) in linked:
                    linked[(st.st_dev, st.st_ino)].paths.append(g)
                continue
            disk = st.st_blocks * 512
            if not stat.S_ISREG(st.st_mode) or not disk:
                continue
            key, shared = _reflink_key(records, entry_group, fd, name, rel, st)
            if key is None:
                b.private(g, rel, st.st_size, disk)
                continue
            shared = min(shared, disk)
            guest.fig.shared_bytes += shared
            grp = b.join(key, g, rel, st.st_size, group_bytes.get(key, shared))
            grp.paths.append(g)
            grp.occ.append(g)
            grp.inodes += 1
            grp.in_store = key in group_bytes
            if st.st_nlink > 1:
                linked[(st.st_dev, st.st_ino)] = grp
        if progress:
            progress.count("guests", g + 1, len(b.roots))
    if store_fig is not None:
        b.store_overhead = store_fig.disk_bytes - sum(v for k, v in group_bytes.items() if k in b.groups)
    return b.finish("reflink", store_fig, False, {"du_disk_bytes": b.real_disk})


def _reflink_key(records: dict, entry_group: dict, dir_fd: int, name: str, rel: str,
                 st: os.stat_result) -> tuple[tuple[int, int] | None, int]:
    """(group key, shared bytes) of a guest file; (None, 0) when it shares nothing."""
    rec = records.get(rel[1:])
    if rec is not None and rec.copy is not None and rec.fresh(st) and rec.entry in entry_group:
        return entry_group[rec.entry], st.st_blocks * 512
    if records:
        return None, 0  # the index knows this guest: a file it did not clone shares nothing
    info = _extent_info(dir_fd, name, st)
    return ((st.st_dev, info[1]), info[0]) if info else (None, 0)


def _extent_info(dir_fd: int, name: str, st: os.stat_result) -> tuple[int, int] | None:
    """shared_extent_key() of a file in a guest directory, unless it changed under us."""
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in RACES or exc.errno == errno.EACCES:
            return None
        raise
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            return None
        return _fiemap(fd)
    finally:
        os.close(fd)


def _extent_info_path(path: Path) -> tuple[int, int] | None:
    fd = os.open(path, FILE_FLAGS)
    try:
        return _fiemap(fd)
    finally:
        os.close(fd)


def _fiemap(fd: int) -> tuple[int, int] | None:
    try:
        return shared_extent_key(fd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            raise EnvironmentProblem(
                f"this filesystem cannot report shared extents (FIEMAP: {exc.strerror}); "
                "use --sharing inode"
            ) from None
        raise
