"""Composefs store upkeep: --status, --verify (recompute fs-verity digests), --gc.

Which objects are in use is read from the listings (meta.dump) of the guests registered in
the store (a guest keeps its image's listing alive); the kernel's link counts say nothing here, as
guests reach objects through overlayfs redirects, not links.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unify.composefs import dump
from unify.composefs.guest import GuestLayers
from unify.composefs.store import ObjectStore
from unify.composefs.verity import digest_fd


@dataclass
class GuestUse:
    root: str
    state: str
    digests: set[str]
    image_sha256: str | None = None


def guests_of(store: ObjectStore) -> tuple[list[GuestUse], list[str]]:
    """(registered guests with a readable listing, registry files whose guest is gone)."""
    out, stale = [], []
    for doc in store.registered():
        layers = GuestLayers(Path(doc["root"]), Path(doc["state"]))
        record = layers.read()
        try:
            digests = dump.digests(layers.listing)
        except OSError:
            digests = None
        if record is not None and digests is not None:
            out.append(GuestUse(doc["root"], doc["state"], digests, record.image_sha256))
        else:
            stale.append(doc["file"])
    return out, stale


@dataclass
class Status:
    store: str
    objects: int = 0
    object_bytes: int = 0
    guests: list[str] = field(default_factory=list)
    referenced: int = 0  # object references summed over guests
    referenced_bytes: int = 0  # what the guests' files would take as private copies
    orphans: int = 0
    orphan_bytes: int = 0

    @property
    def bytes_saved(self) -> int:
        return self.referenced_bytes - (self.object_bytes - self.orphan_bytes)

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes_saved": self.bytes_saved}


def status(store: ObjectStore) -> Status:
    guests, _ = guests_of(store)
    used = set().union(*(g.digests for g in guests)) if guests else set()
    st = Status(str(store.root), guests=[g.root for g in guests])
    sizes = {}
    for d in store.digests():
        size = os.lstat(store.path_of(d)).st_size
        sizes[d] = size
        st.objects += 1
        st.object_bytes += size
        if d not in used:
            st.orphans += 1
            st.orphan_bytes += size
    for g in guests:
        st.referenced += len(g.digests)
        st.referenced_bytes += sum(sizes.get(d, 0) for d in g.digests)
    return st


@dataclass
class Problem:
    object: str
    problem: str
    guests: list[str]


def verify(store: ObjectStore, progress=None) -> tuple[int, list[Problem]]:
    """Recompute every object's fs-verity digest; also report objects a guest needs but lacks."""
    guests, _ = guests_of(store)
    users: dict[str, list[str]] = defaultdict(list)
    for g in guests:
        for d in g.digests:
            users[d].append(g.root)
    problems: list[Problem] = []
    checked = 0
    present = set()
    names = list(store.digests())
    for d in names:
        checked += 1
        present.add(d)
        if progress:
            progress.count("verifying", checked, len(names), " objects")
        fd = os.open(store.path_of(d), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            actual, size = digest_fd(fd)
        finally:
            os.close(fd)
        if actual != d:
            problems.append(Problem(dump.object_path(d), f"content changed ({size} bytes, fs-verity digest "
                                    f"now {actual})", sorted(users.get(d, []))))
    for d in sorted(set(users) - present):
        problems.append(Problem(dump.object_path(d), "missing", sorted(users[d])))
    return checked, problems


def gc(store: ObjectStore, dry_run: bool = False) -> dict:
    """Under the exclusive store lock (seeds and conversions hold it shared until their guest is
    registered): forget guests whose state is gone, drop the listings of images no guest was
    seeded from, then remove every object no registered guest's listing names."""
    out = {"removed": 0, "bytes": 0, "registrations_removed": 0, "listings_removed": 0, "dry_run": dry_run}
    with store.locked(exclusive=True):
        guests, stale = guests_of(store)
        for f in stale:
            out["registrations_removed"] += 1
            if not dry_run:
                os.unlink(f)
        images = {g.image_sha256 for g in guests if g.image_sha256}
        if store.images.is_dir():
            for kept in sorted(store.images.iterdir()):
                if kept.name.split(".")[0] not in images:
                    out["listings_removed"] += 1
                    if not dry_run:
                        kept.unlink()
        used = set().union(*(g.digests for g in guests)) if guests else set()
        for d in list(store.digests()):
            if d in used:
                continue
            path = store.path_of(d)
            out["removed"] += 1
            out["bytes"] += os.lstat(path).st_size
            if not dry_run:
                os.unlink(path)
        if not dry_run:
            store.clean_tmp()
    return out
