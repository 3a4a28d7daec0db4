"""Composefs guests: what each guest's listing and upper layer say, instead of a walk.

A composefs guest's mounted tree hides the sharing (overlayfs reports its own inode numbers),
so it is read from its parts: the listing names the store object behind every file of the
image, and the upper layer holds what the guest changed. A file is

* shared when the guest still reads it from an object (not copied up, not deleted): it joins
  the object's group, and the object counts once for the host (objects are reached through
  redirects, not links, so st_nlink says nothing);
* private when the guest's upper layer holds its data (written, replaced or new);
* gone when the upper layer has a whiteout for it or an opaque directory above it.

A metadata-only copy-up (chmod, chown) keeps reading the object: still shared. "Disk alone" is
what the guest would take as a plain directory: every non-hard-linked file at its object's
disk size. The metadata layers, listings, work dirs and the store's bookkeeping are overhead.
Page cache: an object is cached once for every guest that reads it, so a shared library's
page-cache saving is its size times (guests - 1), as for inode sharing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from unify.composefs import dump
from unify.composefs.guest import GuestLayers
from unify.composefs.metadir import METACOPY
from unify.composefs.mount import usage
from unify.composefs.store import ObjectStore
from unify.report.figures import Builder, GuestCount
from unify.report.model import Report, StoreFigures
from unify.walk import walk_all

OPAQUE = "trusted.overlay.opaque"


def is_composefs(store: Path | None) -> bool:
    return store is not None and ObjectStore(store).is_composefs()


def registered_roots(store: Path) -> list[Path]:
    return [Path(doc["root"]) for doc in ObjectStore(store).registered()]


def _upper(upper: Path) -> tuple[dict[str, os.stat_result], set[str], list[str]]:
    """(private files: rel -> stat, whiteouts, opaque dirs) of an upper layer."""
    private: dict[str, os.stat_result] = {}
    gone: set[str] = set()
    opaque: list[str] = []
    if not upper.is_dir():
        return private, gone, opaque
    for _fd, _name, rel, st in walk_all(upper):
        path = os.path.join(upper, rel.lstrip("/"))
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            gone.add(rel)
        elif stat.S_ISDIR(st.st_mode):
            if OPAQUE in os.listxattr(path) and os.getxattr(path, OPAQUE) == b"y":
                opaque.append(rel + "/")
        elif stat.S_ISREG(st.st_mode) and METACOPY not in os.listxattr(path):
            private[rel] = st
    return private, gone, opaque


def measure_composefs(roots: list[Path], store: Path, top: int = 20, progress=None) -> Report:
    b = Builder(roots, top)
    fig = StoreFigures(str(store))
    object_stat: dict[str, os.stat_result] = {}
    for _fd, _name, rel, st in walk_all(store):
        b.count_real(st)
        fig.apparent_bytes += st.st_size
        fig.disk_bytes += st.st_blocks * 512
        if stat.S_ISREG(st.st_mode) and rel.startswith("/objects/"):
            object_stat[rel.removeprefix("/objects/").replace("/", "")] = st
    fig.entries = len(object_stat)
    used: set[str] = set()
    upper_total = overhead = 0
    for g, root in enumerate(roots):
        layers = GuestLayers(root)
        count = GuestCount(b.guests[g])
        private, gone, opaque = _upper(layers.upper)
        for rel, st in sorted(private.items()):
            count.first_time(st)
            b.private(g, rel.lstrip("/"), st.st_size, st.st_blocks * 512)
        upper = usage(layers).upper_bytes
        upper_total += upper
        before = b.real_disk
        for _fd, _name, _rel, st in walk_all(layers.state):  # each inode once: shared .cfs/.dump too
            b.count_real(st)
        overhead += b.real_disk - before - upper
        for e in dump.read(layers.listing):
            if not stat.S_ISREG(e.mode) or e.path in private or e.path in gone \
                    or any(e.path.startswith(o) for o in opaque):
                continue
            b.guests[g].files += 1
            if e.hardlink:
                grp = b.groups.get(e.digest)
                if grp is not None:
                    grp.paths.append(g)
                continue
            obj = object_stat.get(e.digest) if e.digest else None
            if obj is None:
                continue
            disk = obj.st_blocks * 512
            b.guests[g].apparent_bytes += obj.st_size
            b.guests[g].disk_bytes += disk
            grp = b.join(e.digest, g, e.path.lstrip("/"), obj.st_size, disk)
            grp.paths.append(g)
            grp.occ.append(g)
            grp.inodes, grp.in_store = 1, True
            used.add(e.digest)
        if progress:
            progress.count("guests", g + 1, len(roots))
    fig.orphans = len(set(object_stat) - used)
    unused = sum(st.st_blocks * 512 for d, st in object_stat.items() if d not in used)
    b.store_overhead = fig.disk_bytes - sum(object_stat[d].st_blocks * 512 for d in used) + overhead
    report = b.finish("composefs", fig, True, {"apparent_unique_bytes": b.real_apparent,
                                                "du_disk_bytes": b.real_disk})
    report.totals.update({
        "composefs_guests": len(roots),
        "shared_objects": len(used),
        "orphan_object_bytes": unused,
        "upper_bytes": upper_total,
        "metadata_bytes": overhead,
        "page_cache_shared_bytes": sum(grp.size * (len(set(grp.occ)) - 1) for grp in b.groups.values()
                                       if len(set(grp.occ)) > 1),
    })
    return report
