"""Aggregation: guest files grouped by the storage they share, counted the way du counts.

The definitions (what "disk alone", "real disk use" and "saved" mean) are in the package
docstring, unify/report/__init__.py. measure and whatif feed files into a Builder; they differ
only in how a file finds its group (one inode, one shared extent, one content key).
"""

from __future__ import annotations

import array
import heapq
import os
import re
import stat
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

from unify.ownership import PackageDb
from unify.report.model import FileItem, GuestFigures, Report, StoreFigures

SHARED_LIBRARY = re.compile(r"\.so(\.[0-9][0-9A-Za-z.]*)?$")


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


class Group:
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


class GuestCount:
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


class Builder:
    """Collects groups and figures; the three modes differ only in how files join groups."""

    def __init__(self, roots: list[Path], top: int) -> None:
        self.roots = roots
        self.top = top
        self.guests = [GuestFigures(str(r), guest_name(r, roots)) for r in roots]
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

    def join(self, key, g: int, relpath: str, size: int, disk: int) -> Group:
        grp = self.groups.get(key)
        if grp is None:
            grp = self.groups[key] = Group(size, disk, (g, relpath))
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
            db = dbs.pop(guest.name)  # dropped after this guest: 1,000 loaded dpkg databases would not fit
            for disk, size, rel in sorted(heap, reverse=True):
                guest.largest_private.append(FileItem(rel, guest.name, size, disk, db.owner(rel)))
        without = sum(g.disk_bytes for g in self.guests)
        cumulative, run_without, run_with = [], 0, self.store_overhead
        for i, guest in enumerate(self.guests):
            run_without += guest.disk_bytes
            run_with += guest.private_bytes + first_seen.get(i, 0)
            cumulative.append({"guests": i + 1, "name": guest.name,
                               "without_bytes": run_without, "with_bytes": run_with})
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


def guest_name(root: Path, roots: list[Path]) -> str:
    """The guest's directory name, or its full path when two guests share a name."""
    names = [r.name for r in roots]
    return root.name if root.name and names.count(root.name) == 1 else str(root)
