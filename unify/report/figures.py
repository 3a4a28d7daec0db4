"""Aggregation: guest files grouped by the storage they share, counted the way du counts.

The definitions (what "disk alone", "real disk use" and "saved" mean) are in the package
docstring, unify/report/__init__.py. measure and whatif feed files into a Builder; they differ
only in how a file finds its group (one inode, one shared extent, one content key).
"""

from __future__ import annotations

import array
import heapq
import itertools
import os
import re
import stat
from collections import defaultdict
from dataclasses import asdict
from operator import itemgetter
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

    def vote(self, g: int, relpath: str) -> None:
        """One more file joins: Boyer-Moore majority vote for the usual name, in O(1) memory."""
        if relpath == self.where[1]:
            self.votes += 1
        elif self.votes:
            self.votes -= 1
        else:
            self.where, self.votes = (g, relpath), 1


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
        self.first_seen: dict[int, int] = defaultdict(int)  # guest index -> shared group bytes met there first
        self.within = 0  # extra names of a store entry inside one guest (du counts them once)
        # Settled shared groups, ((-saved, path, order), FileItem): the lines that save most (the top
        # lists and the per-package table need no more), the same for shared libraries, and sums
        # over every shared library (files, bytes, copies, page cache saved).
        self._keep = max(50 * top, 2000)
        self._best: list[tuple] = []
        self._libs: list[tuple] = []
        self._lib_sums = [0, 0, 0, 0]

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
        else:
            grp.vote(g, relpath)
        return grp

    def settle(self, grp: Group, attribute_shared: bool, order: int) -> None:
        """Account one complete group: a private file, or its guests' shared figures and its line.

        attribute_shared: add a shared group's bytes to its guests here (inode and what-if
        modes); reflink mode measured them per file already. order: when the group was met
        (ties in the top lists keep that order).
        """
        if not grp.occ:
            return
        if not grp.shared():
            self.private(grp.occ[0], grp.where[1], grp.size, grp.disk)
            return
        if attribute_shared:
            for g in grp.occ:
                self.guests[g].shared_bytes += grp.disk
        for g in grp.paths:
            self.guests[g].shared_files += 1
        self.first_seen[min(grp.occ)] += grp.disk
        if grp.in_store:
            self.within += grp.disk * (len(grp.paths) - len(grp.occ))
        g0, rel = grp.where
        item = FileItem(rel, self.guests[g0].name, grp.size, grp.disk, None,
                        len(set(grp.occ)), len(grp.occ), len(grp.paths), grp.disk * (len(grp.occ) - 1))
        ranked = ((-item.saved_bytes, rel, order), item)
        _offer(self._best, ranked, self._keep)
        if SHARED_LIBRARY.search(rel) and item.copies > 1:
            sums = self._lib_sums
            sums[0] += 1
            sums[1] += item.size
            sums[2] += item.copies
            sums[3] += item.size * (item.copies - 1)
            _offer(self._libs, ranked, self.top)

    def finish(self, mode: str, store: StoreFigures | None, attribute_shared: bool, totals: dict) -> Report:
        """Settle the groups still held, and build every list of the report."""
        for n, grp in enumerate(self.groups.values()):
            self.settle(grp, attribute_shared, n)
        items = [i for _, i in sorted(self._best, key=itemgetter(0))[: self._keep]]
        libs = [i for _, i in sorted(self._libs, key=itemgetter(0))[: self.top]]
        top_shared = items[: self.top]
        carrying = list(itertools.takewhile(lambda i: i.saved_bytes > 0, items))  # the files that carry the savings
        self._packages([*top_shared, *carrying, *libs])
        per_package: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for item in carrying:
            slot = per_package[item.package or "(no package)"]
            slot[0] += 1
            slot[1] += item.saved_bytes
        top_packages = [
            {"package": p, "files": n, "saved_bytes": b}
            for p, (n, b) in sorted(per_package.items(), key=lambda kv: (-kv[1][1], kv[0]))[: self.top]
        ]
        files, size, copies, page_cache = self._lib_sums
        shared_libraries = {
            "files": files,
            "bytes": size,
            "copies": copies,
            "page_cache_saved_bytes": page_cache,
            "top": [asdict(i) for i in libs],
        }
        without = sum(g.disk_bytes for g in self.guests)
        cumulative, run_without, run_with = [], 0, self.store_overhead
        for i, guest in enumerate(self.guests):
            run_without += guest.disk_bytes
            run_with += guest.private_bytes + self.first_seen.get(i, 0)
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
            "within_guest_links_bytes": self.within,
            **totals,
        }
        return Report(mode, self.guests, store, totals, top_shared, top_packages, shared_libraries, cumulative)

    def _packages(self, items: list[FileItem]) -> None:
        """The owning package of `items` and of every guest's largest private files.

        One guest's package database is loaded at a time: the lines of a report on 1,000 guests
        may name files of any of them, and 1,000 loaded dpkg databases would not fit.
        """
        by_guest: dict[str, list[FileItem]] = defaultdict(list)
        for item in items:
            by_guest[item.guest].append(item)
        for g, guest in enumerate(self.guests):
            db = PackageDb(Path(guest.root))
            for item in by_guest.get(guest.name, ()):
                if item.package is None:
                    item.package = db.owner(item.path)
            for disk, size, rel in sorted(self.heaps[g], reverse=True):
                guest.largest_private.append(FileItem(rel, guest.name, size, disk, db.owner(rel)))


def _offer(ranked: list[tuple], entry: tuple, limit: int) -> None:
    """Keep the `limit` smallest entries of a stream (sorting and cutting now and then: O(limit) memory)."""
    ranked.append(entry)
    if len(ranked) >= 2 * limit:
        ranked.sort(key=itemgetter(0))
        del ranked[limit:]

def guest_name(root: Path, roots: list[Path]) -> str:
    """The guest's directory name, or its full path when two guests share a name."""
    names = [r.name for r in roots]
    return root.name if root.name and names.count(root.name) == 1 else str(root)
