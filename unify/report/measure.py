"""Disk-savings figures for unified guests, from one lstat walk per tree.

Why numbers come out the way they do (the definitions `du` can check):

* A guest's *apparent* and *disk* size are what ``du -s --apparent-size -B1 GUEST`` and
  ``du -s -B1 GUEST`` say about that guest alone: every inode reached from the guest counted
  once, directories and symlinks included, disk use from ``st_blocks * 512``.
* *Without unification* is the sum of those standalone disk sizes: every guest keeps its own copy.
* *Real disk use* counts every inode once across all guests and the store, i.e.
  ``du -s -B1 STORE GUEST...`` (du counts hard links once across its arguments).
* *Saved* = without − real. It is conservative: several names inside ONE guest that were
  linked to the same store entry count once, as du counts them (we cannot tell links that
  unification made from links the package shipped); they are reported on their own as
  ``within_guest_links_bytes``.
* A guest file is *shared* when its inode is also a store entry or is reached from two or
  more guests (hardlink, immutable and vserver modes share the inode). Nothing but lstat is
  needed for that, so the unify index is not read in these modes.
* In reflink mode no inode is shared and du counts every clone in full. A guest file whose
  unify-index record is still fresh (same dev, ino, size, mtime, ctime) is shared with the
  entry the index names; guests without an index are asked with FIEMAP, whose
  ``FIEMAP_EXTENT_SHARED`` flag marks shared bytes. Files are grouped by the first shared
  physical extent, so a group's bytes are counted once.
* ``--what-if`` uses the engine's own walk and rules (exclude list, config files, minimum
  size) and its store keys (XXH3-128 of the content, metadata key, size); only files whose
  size occurs twice are read, and fresh index digests are reused.

The guest trees are hostile: the walk opens every directory relative to its parent with
O_NOFOLLOW, never follows a symlink and never leaves the guest's filesystem.
"""

from __future__ import annotations

import array
import errno
import fcntl
import heapq
import os
import re
import shutil
import stat
import struct
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError, UnsafeInput
from unify import index as uindex
from unify import store as ustore
from unify import walk as uwalk
from unify.exclude import Matcher, load_rules

SCHEMA = 1
MAX_DEPTH = 512  # deeper trees are hostile (and would exhaust file descriptors)
MIN_SIZE = 16  # the unify engine's default: smaller files are never unified
SHARED_LIBRARY = re.compile(r"\.so(\.[0-9][0-9A-Za-z.]*)?$")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_RACES = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ESTALE)


# ---------------------------------------------------------------------------------------------
# Safe walking


def walk(root: Path) -> Iterator[tuple[int, str, str, os.stat_result]]:
    """Yield (dir_fd, name, relpath, lstat) for root ("/", dir_fd -1) and everything below it.

    dir_fd stays open while the caller handles the entry, so a file can be opened relative
    to it without resolving any path again. Directories on another device (mounts inside a
    running guest: /proc, /sys) are listed but not entered.
    """
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise ImageFactoryError(f"{root}: not a readable directory ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        yield -1, "", "/", st
        yield from _walk_dir(fd, "", st.st_dev, 0)
    finally:
        os.close(fd)


def _walk_dir(fd: int, rel: str, dev: int, depth: int) -> Iterator[tuple[int, str, str, os.stat_result]]:
    if depth > MAX_DEPTH:
        raise UnsafeInput(f"directory nesting deeper than {MAX_DEPTH} levels at {rel}")
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = f"{rel}/{entry.name}"
            yield fd, entry.name, path, st
            if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                subdirs.append((entry.name, path, st.st_ino))
    for name, path, ino in subdirs:
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in _RACES:
                continue  # replaced while we walked: not a directory of this tree any more
            raise
        try:
            if os.fstat(sub).st_ino == ino:
                yield from _walk_dir(sub, path, dev, depth + 1)
        finally:
            os.close(sub)


def _open_guest_dir(root: Path, rel: str) -> int:
    """A directory fd inside a guest, reached without following any symlink."""
    root_fd = uwalk.open_root(root)
    try:
        return uwalk.open_dir(root_fd, rel)
    finally:
        os.close(root_fd)


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
# Package ownership (dpkg .list files, or the rpm database through the rpm CLI)


class PackageDb:
    """Which package owns a guest path; loaded on first use (most guests are never asked)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._owners: dict[str, str] | None = None

    def owner(self, relpath: str) -> str | None:
        if self._owners is None:
            self._owners = self._load()
        owners = self._owners
        # Merged /usr: a .list may name /bin/x while the walk saw /usr/bin/x (or the reverse).
        for candidate in (relpath, relpath[4:] if relpath.startswith("/usr/") else "/usr" + relpath):
            if candidate in owners:
                return owners[candidate]
        return None

    def _load(self) -> dict[str, str]:
        owners = self._load_dpkg()
        return owners if owners else self._load_rpm()

    def _load_dpkg(self) -> dict[str, str]:
        owners: dict[str, str] = {}
        try:
            dfd = _open_guest_dir(self.root, "var/lib/dpkg/info")
        except (OSError, UnsafeInput):
            return owners
        try:
            for entry in os.scandir(dfd):
                if not entry.name.endswith(".list") or not entry.is_file(follow_symlinks=False):
                    continue
                package = entry.name[: -len(".list")].partition(":")[0]
                try:
                    ffd = os.open(entry.name, _FILE_FLAGS, dir_fd=dfd)
                except OSError:
                    continue
                with open(ffd, "rb") as fh:
                    for line in fh.read().decode("utf-8", "surrogateescape").splitlines():
                        owners.setdefault(line, package)
        finally:
            os.close(dfd)
        return owners

    def _load_rpm(self) -> dict[str, str]:
        owners: dict[str, str] = {}
        rpm = shutil.which("rpm")
        if rpm is None:
            return owners
        for rel in ("usr/lib/sysimage/rpm", "var/lib/rpm"):
            try:
                dfd = _open_guest_dir(self.root, rel)
                break
            except (OSError, UnsafeInput):
                continue
        else:
            return owners
        try:
            # The database directory was opened without following symlinks; rpm reads it
            # through the inherited descriptor, so a guest symlink cannot redirect it.
            proc = subprocess.run(
                [rpm, "--dbpath", f"/proc/self/fd/{dfd}", "-qa", "--qf", r"[%{FILENAMES}\t%{NAME}\n]"],
                pass_fds=(dfd,), capture_output=True, timeout=300,
            )
        except (OSError, subprocess.TimeoutExpired):
            return owners
        finally:
            os.close(dfd)
        for line in proc.stdout.decode("utf-8", "surrogateescape").splitlines():
            path, sep, name = line.rpartition("\t")
            if sep:
                owners.setdefault(path, name)
        return owners


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class FileItem:
    """One file in a top list; `guest` names the guest where `path` was met first."""

    path: str
    guest: str
    size: int
    disk_bytes: int
    package: str | None = None
    guests: int = 1  # guests holding it
    copies: int = 1  # separate files without unification (one per guest inode)
    links: int = 1  # names in guests (hard links inside one guest each count)
    saved_bytes: int = 0


@dataclass
class GuestFigures:
    root: str
    name: str
    files: int = 0
    apparent_bytes: int = 0
    disk_bytes: int = 0
    shared_bytes: int = 0
    shared_files: int = 0
    largest_private: list[FileItem] = field(default_factory=list)

    @property
    def private_bytes(self) -> int:
        return self.disk_bytes - self.shared_bytes

    @property
    def share_ratio(self) -> float:
        return self.shared_bytes / self.disk_bytes if self.disk_bytes else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["private_bytes"] = self.private_bytes
        out["share_ratio"] = round(self.share_ratio, 6)
        return out


@dataclass
class StoreFigures:
    path: str
    entries: int = 0
    apparent_bytes: int = 0
    disk_bytes: int = 0
    orphans: int = 0
    link_histogram: list[dict] = field(default_factory=list)


@dataclass
class Report:
    mode: str
    guests: list[GuestFigures]
    store: StoreFigures | None
    totals: dict
    top_shared: list[FileItem]
    top_packages: list[dict]
    shared_libraries: dict
    cumulative: list[dict]

    def to_dict(self) -> dict:
        """The --json document (schema 1, described in docs/report.md)."""
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "totals": self.totals,
            "guests": [g.to_dict() for g in self.guests],
            "store": asdict(self.store) if self.store else None,
            "top_shared": [asdict(i) for i in self.top_shared],
            "top_packages": self.top_packages,
            "shared_libraries": self.shared_libraries,
            "cumulative": self.cumulative,
        }


def link_histogram(entries: list[tuple[int, int]]) -> list[dict]:
    """Store entries by link count in power-of-two buckets: 1, 2, 3-4, 5-8, ...

    entries holds (st_nlink, disk bytes) per store entry; one link = orphan (no guest uses it).
    """
    buckets: dict[int, list[int]] = {}
    for nlink, disk in entries:
        slot = buckets.setdefault(max(nlink - 1, 0).bit_length(), [0, 0])
        slot[0] += 1
        slot[1] += disk
    out = []
    for b in sorted(buckets):
        lo, hi = (1, 1) if b == 0 else ((1 << (b - 1)) + 1, 1 << b)
        out.append({"min_links": lo, "max_links": hi, "entries": buckets[b][0], "disk_bytes": buckets[b][1]})
    return out


class _Group:
    """Guest files that share (or would share) storage: one inode, one extent, one content."""

    __slots__ = ("size", "disk", "where", "votes", "occ", "paths", "in_store", "inodes")

    def __init__(self, size: int, disk: int, where: tuple[int, str]) -> None:
        self.size = size
        self.disk = disk
        self.where = where  # (guest index, relpath): the name most guests use (majority vote)
        self.votes = 1
        self.occ = array.array("I")  # guest index per (guest, inode): what du counts per guest
        self.paths = array.array("I")  # guest index per name (hard links inside a guest each count)
        self.in_store = False
        self.inodes = 0

    def shared(self) -> bool:
        return self.in_store or self.inodes > 1 or len(set(self.occ)) > 1


class _Guest:
    """Per-guest walk state: du's once-per-inode rule inside the guest."""

    def __init__(self, fig: GuestFigures) -> None:
        self.fig = fig
        self.seen: set[tuple[int, int]] = set()

    def first_time(self, st: os.stat_result) -> bool:
        """Count files/apparent/disk like `du -s GUEST`; False for a repeated hard link."""
        if stat.S_ISREG(st.st_mode):
            self.fig.files += 1
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in self.seen:
                return False
            self.seen.add(key)
        self.fig.apparent_bytes += st.st_size
        self.fig.disk_bytes += st.st_blocks * 512
        return True


class _Builder:
    """Collects groups and figures; the three modes differ only in how files join groups."""

    def __init__(self, roots: list[Path], top: int) -> None:
        self.roots = roots
        self.top = top
        self.guests = [GuestFigures(str(r), _guest_name(r, roots)) for r in roots]
        self.groups: dict = {}
        self.heaps: list[list] = [[] for _ in roots]
        self.real_disk = 0  # du over store + guests: each inode once
        self.real_apparent = 0
        self._seen: set[tuple[int, int]] = set()
        self.store_overhead = 0  # store bytes not standing for a reported guest's file

    def count_real(self, st: os.stat_result) -> None:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in self._seen:
                return
            self._seen.add(key)
        self.real_disk += st.st_blocks * 512
        self.real_apparent += st.st_size

    def private(self, g: int, relpath: str, size: int, disk: int) -> None:
        """Offer a private file to the guest's largest-private list."""
        item = (disk, size, relpath)
        heap = self.heaps[g]
        if len(heap) < self.top:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def join(self, key, g: int, relpath: str, size: int, disk: int) -> _Group:
        grp = self.groups.get(key)
        if grp is None:
            grp = self.groups[key] = _Group(size, disk, (g, relpath))
        elif relpath == grp.where[1]:  # Boyer-Moore majority vote: the usual name, in O(1) memory
            grp.votes += 1
        elif grp.votes:
            grp.votes -= 1
        else:
            grp.where, grp.votes = (g, relpath), 1
        return grp

    def finish(self, mode: str, store: StoreFigures | None, attribute_shared: bool, totals: dict) -> Report:
        """Classify groups, attribute shared bytes, and build every list of the report.

        attribute_shared: add each shared group's bytes to its guests here (inode and
        what-if modes); reflink mode measured them per file already.
        """
        first_seen: dict[int, int] = defaultdict(int)  # guest index -> shared group bytes met there first
        within = 0  # extra names of a store entry inside one guest (du counts them once)
        items: list[FileItem] = []
        for grp in self.groups.values():
            if not grp.occ:
                continue
            if not grp.shared():
                self.private(grp.occ[0], grp.where[1], grp.size, grp.disk)
                continue
            if attribute_shared:
                for g in grp.occ:
                    self.guests[g].shared_bytes += grp.disk
            for g in grp.paths:
                self.guests[g].shared_files += 1
            first_seen[min(grp.occ)] += grp.disk
            if grp.in_store:
                within += grp.disk * (len(grp.paths) - len(grp.occ))
            g0, rel = grp.where
            items.append(FileItem(rel, self.guests[g0].name, grp.size, grp.disk, None,
                                  len(set(grp.occ)), len(grp.occ), len(grp.paths), grp.disk * (len(grp.occ) - 1)))
        items.sort(key=lambda i: (-i.saved_bytes, i.path))
        dbs = {g.name: PackageDb(Path(g.root)) for g in self.guests}

        def owner(item: FileItem) -> str | None:
            if item.package is None:
                item.package = dbs[item.guest].owner(item.path)
            return item.package

        top_shared = items[: self.top]
        for item in top_shared:
            owner(item)
        per_package: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for item in items[: max(50 * self.top, 2000)]:  # the files that carry the savings
            if item.saved_bytes <= 0:
                break
            slot = per_package[owner(item) or "(no package)"]
            slot[0] += 1
            slot[1] += item.saved_bytes
        top_packages = [
            {"package": p, "files": n, "saved_bytes": b}
            for p, (n, b) in sorted(per_package.items(), key=lambda kv: (-kv[1][1], kv[0]))[: self.top]
        ]
        libs = [i for i in items if SHARED_LIBRARY.search(i.path) and i.copies > 1]
        for item in libs[: self.top]:
            owner(item)
        shared_libraries = {
            "files": len(libs),
            "bytes": sum(i.size for i in libs),
            "copies": sum(i.copies for i in libs),
            "page_cache_saved_bytes": sum(i.size * (i.copies - 1) for i in libs),
            "top": [asdict(i) for i in libs[: self.top]],
        }
        for g, heap in enumerate(self.heaps):
            guest = self.guests[g]
            for disk, size, rel in sorted(heap, reverse=True):
                guest.largest_private.append(FileItem(rel, guest.name, size, disk, dbs[guest.name].owner(rel)))
        without = sum(g.disk_bytes for g in self.guests)
        cumulative, run_without, run_with = [], 0, self.store_overhead
        for i, guest in enumerate(self.guests):
            run_without += guest.disk_bytes
            run_with += guest.private_bytes + first_seen.get(i, 0)
            cumulative.append({"guests": i + 1, "name": guest.name, "without_bytes": run_without, "with_bytes": run_with})
        disk = run_with
        totals = {
            "guests": len(self.guests),
            "files": sum(g.files for g in self.guests),
            "apparent_bytes": sum(g.apparent_bytes for g in self.guests),
            "without_unification_bytes": without,
            "disk_bytes": disk,
            "saved_bytes": without - disk,
            "saved_percent": round(100.0 * (without - disk) / without, 2) if without else 0.0,
            "shared_bytes": sum(g.shared_bytes for g in self.guests),
            "store_overhead_bytes": self.store_overhead,
            "within_guest_links_bytes": within,
            **totals,
        }
        return Report(mode, self.guests, store, totals, top_shared, top_packages, shared_libraries, cumulative)


def _guest_name(root: Path, roots: list[Path]) -> str:
    """The guest's directory name, or its full path when two guests share a name."""
    names = [r.name for r in roots]
    return root.name if root.name and names.count(root.name) == 1 else str(root)


# ---------------------------------------------------------------------------------------------
# Unified guests: inode sharing (hardlink, immutable, vserver) or extent sharing (reflink)


def _walk_store(store: Path, b: _Builder) -> tuple[StoreFigures, dict[tuple[int, int], tuple[int, str]]]:
    """Store figures and its entries, (dev, ino) -> (disk bytes, relpath).

    Entries are the files named like the engine names them (unify/store.py); the marker,
    lock, temp files and guest indexes count as store overhead.
    """
    figures = StoreFigures(str(store))
    entries: dict[tuple[int, int], tuple[int, str]] = {}
    nlinks = []
    for _fd, name, rel, st in walk(store):
        b.count_real(st)
        figures.apparent_bytes += st.st_size
        figures.disk_bytes += st.st_blocks * 512
        if stat.S_ISREG(st.st_mode) and rel.startswith("/objects/") and ustore.parse_entry_name(name):
            entries[(st.st_dev, st.st_ino)] = (st.st_blocks * 512, rel)
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
    b = _Builder(roots, top)
    store_fig, entries = None, {}
    if store is not None:
        store_fig, entries = _walk_store(store, b)
        if progress:
            progress.stage(f"store {store}: {store_fig.entries} entries")
    if sharing == "auto":
        sharing = detect_sharing(store, store_fig, entries)
    if sharing == "reflink":
        return _measure_reflink(b, store, store_fig, entries, progress)
    for g, root in enumerate(roots):
        guest = _Guest(b.guests[g])
        for _fd, _name, rel, st in walk(root):
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


def _measure_reflink(b: _Builder, store: Path | None, store_fig: StoreFigures | None,
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
            key = (dev, info[1])
            entry_group[rel.rpartition("/")[2]] = key
            group_bytes[key] = min(info[0], disk)
    for g, root in enumerate(b.roots):
        guest = _Guest(b.guests[g])
        records = uindex.read(store, root) if store is not None else {}
        linked: dict[tuple[int, int], _Group] = {}  # this guest's multi-link files, already grouped
        for fd, name, rel, st in walk(root):
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
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _RACES or exc.errno == errno.EACCES:
            return None
        raise
    try:
        if os.fstat(fd).st_ino != st.st_ino:
            return None
        return _fiemap(fd)
    finally:
        os.close(fd)


def _extent_info_path(path: Path) -> tuple[int, int] | None:
    fd = os.open(path, _FILE_FLAGS)
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


# ---------------------------------------------------------------------------------------------
# What if: roots not unified yet


def what_if(roots: list[Path], store: Path | None = None, ignore_mtime: bool = False,
            min_size: int = MIN_SIZE, exclude_file: Path | None = None, top: int = 20,
            progress=None) -> Report:
    """What unifying `roots` would save, by the engine's own rules and keys.

    Eligibility is the engine's walk (exclude list, config files, minimum size); files are
    keyed like store entries (XXH3-128 of content + metadata key + size). Only files whose
    size occurs at least twice are read; a digest in a fresh unify-index record (when
    --store names a store that knows the guest) is reused instead of reading the file.
    """
    b = _Builder(roots, top)
    candidates: list[list] = []  # [guest, relpath, dev, ino, size, disk, names]
    for g, root in enumerate(roots):
        guest = _Guest(b.guests[g])
        eligible = _eligible(g, root, min_size, exclude_file)
        linked: dict[tuple[int, int], list] = {}
        for _fd, _name, rel, st in walk(root):
            b.count_real(st)
            if not guest.first_time(st):
                if (st.st_dev, st.st_ino) in linked:
                    linked[(st.st_dev, st.st_ino)][6] += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            disk = st.st_blocks * 512
            if rel[1:] in eligible:
                rec = [g, rel, st.st_dev, st.st_ino, st.st_size, disk, 1]
                candidates.append(rec)
                if st.st_nlink > 1:
                    linked[(st.st_dev, st.st_ino)] = rec
            else:
                b.private(g, rel, st.st_size, disk)
        if progress:
            progress.count("guests walked", g + 1, len(roots))
    by_size: dict[int, list[list]] = defaultdict(list)
    for rec in candidates:
        by_size[rec[4]].append(rec)
    to_hash = [rec for recs in by_size.values() if len(recs) > 1 for rec in recs]
    keys = _content_keys(to_hash, roots, store, ignore_mtime, progress)
    for rec in candidates:
        g, rel, dev, ino, size, disk, names = rec
        key = keys.get((dev, ino))
        if key is None:
            b.private(g, rel, size, disk)
            continue
        grp = b.join(key, g, rel, size, disk)
        grp.occ.append(g)
        grp.paths.extend([g] * names)
    inodes: dict = defaultdict(set)
    for rec in to_hash:
        key = keys.get((rec[2], rec[3]))
        if key is not None:
            inodes[key].add((rec[2], rec[3]))
    for key, ids in inodes.items():
        b.groups[key].inodes = len(ids)
    return b.finish("what-if", None, True, {"current_disk_bytes": b.real_disk,
                                            "apparent_unique_bytes": b.real_apparent})


def _eligible(g: int, root: Path, min_size: int, exclude_file: Path | None) -> set[str]:
    """Relative paths the unify engine would consider (its walk, its rules)."""
    root_fd = uwalk.open_root(root)
    try:
        matcher = Matcher(load_rules(root, exclude_file))
        conffiles = uwalk.config_files(root_fd)
        walker = uwalk.walk(g, root_fd, matcher, min_size, conffiles, Counter(), [])
        return {ref.rel for ref in walker}
    finally:
        os.close(root_fd)


def _content_keys(recs: list[list], roots: list[Path], store: Path | None, ignore_mtime: bool,
                  progress) -> dict[tuple[int, int], str]:
    """(dev, ino) -> store entry name the file would be unified with."""
    keys: dict[tuple[int, int], str] = {}
    indexes = {}
    buf = bytearray(ustore.CHUNK)
    for n, (g, rel, dev, ino, size, _disk, _names) in enumerate(recs, 1):
        if (dev, ino) in keys:
            continue
        if store is not None and g not in indexes:
            indexes[g] = uindex.read(store, roots[g])
        key = _hash_file(roots[g], rel, dev, ino, ignore_mtime, buf, indexes.get(g, {}))
        if key is not None:
            keys[(dev, ino)] = key
        if progress:
            progress.count("files hashed", n, len(recs))
    return keys


def _hash_file(root: Path, rel: str, dev: int, ino: int, ignore_mtime: bool, buf: bytearray,
               records: dict) -> str | None:
    dir_rel, _, name = rel[1:].rpartition("/")
    try:
        dfd = _open_guest_dir(root, dir_rel)
    except (OSError, UnsafeInput):
        return None
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino) or not stat.S_ISREG(st.st_mode):
            return None  # replaced since the walk
        meta = ustore.meta_of(st, ustore.read_xattrs(fd), ignore_mtime)
        rec = records.get(rel[1:])
        if rec and rec.digest and rec.fresh(st):
            digest, size = rec.hexdigest, st.st_size
        else:
            digest, size = ustore.hash_fd(fd, buf)
        return ustore.entry_name(digest, meta.key(), size)
    finally:
        os.close(fd)
