"""What if: roots not unified yet, measured by the unify engine's own walk, rules and keys.

Memory follows the largest guest and the number of distinct sizes, not the number of files,
by the engine's own scheme (unify/engine.py): one guest at a time is walked, and each of its
eligible files (one per guest inode) becomes a row of a private scratch index
(unify.index.connect(""), a temporary SQLite database with a bounded page cache). A file is
hashed during the walk when its size was met before, else it waits and is hashed after the
walk if its size turned up again. Then the rows are read back in store-key order, one group
of equal keys at a time, and each group is settled on its own (figures.Builder.settle).

Scratch table, next to the engine's (empty) ones in that database:

    whatif(seq INTEGER PRIMARY KEY,   -- the file's number in walk order over all guests
           guest, path,               -- guest index in this run, "/relpath"
           dev, ino, size, disk,      -- lstat of the walk; disk = st_blocks * 512
           names,                     -- its names (hard links) inside its guest
           digest, metakey)           -- the store key's parts (unify/store.py); NULL until hashed

Walk order is kept (seq) because it decides a group's usual name (a majority vote in the order
files are met) and the order of lines that save the same.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import stat
from collections import Counter
from collections.abc import Iterator
from operator import itemgetter
from pathlib import Path

from imagefactory.core.errors import UnsafeInput
from unify import index as uindex
from unify import store as ustore
from unify import walk as uwalk
from unify.engine import MIN_SIZE
from unify.exclude import Matcher, load_rules
from unify.ownership import config_files
from unify.report.figures import Builder, Group, GuestCount
from unify.report.model import Report

_TABLE = """CREATE TABLE whatif(seq INTEGER PRIMARY KEY, guest INTEGER NOT NULL, path TEXT NOT NULL,
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL, disk INTEGER NOT NULL,
    names INTEGER NOT NULL, digest BLOB, metakey BLOB)"""
_NAMES = 7  # column of `names` in a row

Key = tuple[bytes, bytes]  # (XXH3-128 digest, metadata key) of a file: with its size, its store entry


def what_if(roots: list[Path], store: Path | None = None, ignore_mtime: bool = False,
            min_size: int = MIN_SIZE, exclude_file: Path | None = None, top: int = 20,
            progress=None) -> Report:
    """What unifying `roots` would save, by the engine's own rules and keys.

    Eligibility is the engine's walk (exclude list, config files, minimum size); files are
    keyed like store entries (XXH3-128 of content + metadata key + size). Only files whose
    size occurs at least twice are read; a digest in a fresh unify-index record (when
    --store names a store that knows the guest) is reused instead of reading the file.
    """
    b = Builder(roots, top)
    db = uindex.connect("")
    old = uindex.open_existing(store) if store is not None else None
    try:
        db.execute(_TABLE)
        scan = _Scan(roots, db, old, ignore_mtime, min_size, exclude_file, progress)
        for g in range(len(roots)):
            scan.walk_guest(b, g)
        scan.hash_waiting(b)
        for grp, order in _groups(db):
            b.settle(grp, True, order)
    finally:
        db.close()
        if old is not None:
            old.close()
    return b.finish("what-if", None, True, {"current_disk_bytes": b.real_disk,
                                            "apparent_unique_bytes": b.real_apparent})


class _Scan:
    """Walks guests into the scratch table, hashing what can be hashed while its directory is open."""

    def __init__(self, roots: list[Path], db: sqlite3.Connection, old: sqlite3.Connection | None,
                 ignore_mtime: bool, min_size: int, exclude_file: Path | None, progress) -> None:
        self.roots = roots
        self.db = db
        self.old = old  # the store's index: fresh digests are reused
        self.ignore_mtime = ignore_mtime
        self.min_size = min_size
        self.exclude_file = exclude_file
        self.progress = progress
        self.sizes: Counter = Counter()  # size -> eligible files (guest inodes) of that size
        # Keys of inodes with several links, which another guest may reach too (guests already
        # unified): each is read once. Files with one link are met once, and not remembered.
        self.linked_keys: dict[tuple[int, int], Key] = {}
        self.spans: list[tuple[int, int]] = []  # per guest: its rows' seq range
        self.seq = 0
        self.buf = bytearray(ustore.CHUNK)

    def records(self, g: int) -> dict[str, uindex.Record]:
        """The store index's records of guest g ({} without a store index): one guest at a time."""
        if self.old is None:
            return {}
        return uindex.records(self.old, uindex.guest_id(self.old, self.roots[g]))

    def walk_guest(self, b: Builder, g: int) -> None:
        root = self.roots[g]
        guest = GuestCount(b.guests[g])
        eligible = _eligible(g, root, self.min_size, self.exclude_file)
        records = self.records(g)
        sizes, linked_keys = self.sizes, self.linked_keys
        rows: list[list] = []
        linked: dict[tuple[int, int], list] = {}  # this guest's multi-link files, by inode
        first = self.seq
        for fd, name, rel, st in uwalk.walk_all(root):
            b.count_real(st)
            if not guest.first_time(st):
                row = linked.get((st.st_dev, st.st_ino))
                if row is not None:
                    row[_NAMES] += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            size, disk = st.st_size, st.st_blocks * 512
            if rel[1:] not in eligible:
                b.private(g, rel, size, disk)
                continue
            sizes[size] += 1
            inode = (st.st_dev, st.st_ino)
            key = linked_keys.get(inode) if st.st_nlink > 1 else None
            if key is None and sizes[size] > 1:
                key = self.key(fd, name, inode, size, records.get(rel[1:]))
            row = [self.seq, g, rel, *inode, size, disk, 1, *(key or (None, None))]
            self.seq += 1
            rows.append(row)
            if st.st_nlink > 1:
                linked[inode] = row
        self.spans.append((first, self.seq))
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO whatif VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        self.db.execute("COMMIT")
        if self.progress:
            self.progress.count("guests walked", g + 1, len(self.roots))

    def key(self, dir_fd: int, name: str, inode: tuple[int, int], size: int,
            rec: uindex.Record | None) -> Key | None:
        """The store key of a file the walk met; None if it cannot be read or changed since."""
        try:
            fd = os.open(name, uwalk.FILE_FLAGS, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino, st.st_size) != (*inode, size) or not stat.S_ISREG(st.st_mode):
                return None  # replaced since the walk
            meta = ustore.meta_of(st, ustore.read_xattrs(fd), self.ignore_mtime)
            if rec is not None and rec.digest and rec.fresh(st):
                digest = rec.digest
            else:
                hexdigest, length = ustore.hash_fd(fd, self.buf)
                if length != size:
                    return None
                digest = bytes.fromhex(hexdigest)
        finally:
            os.close(fd)
        key = (digest, bytes.fromhex(meta.key()))
        if st.st_nlink > 1:
            self.linked_keys[inode] = key
        return key

    def hash_waiting(self, b: Builder) -> None:
        """Hash the files whose size turned up again after them; every other unhashed file is private."""
        sizes = self.sizes
        for g, (first, end) in enumerate(self.spans):
            if self.progress:
                self.progress.count("hashing", g + 1, len(self.spans), " guests")
            waiting = self.db.execute("SELECT seq, path, dev, ino, size, disk FROM whatif "
                                      "WHERE seq >= ? AND seq < ? AND digest IS NULL", (first, end)).fetchall()
            if not waiting:
                continue
            records = self.records(g) if any(sizes[w[4]] > 1 for w in waiting) else {}
            keyed = []
            with _DirCache(self.roots[g]) as dirs:
                for seq, rel, dev, ino, size, disk in waiting:
                    key = None
                    if sizes[size] > 1:
                        key = self.linked_keys.get((dev, ino))
                        if key is None:
                            dir_rel, _, name = rel[1:].rpartition("/")
                            dfd = dirs.get(dir_rel)
                            if dfd is not None:
                                key = self.key(dfd, name, (dev, ino), size, records.get(rel[1:]))
                    if key is None:
                        b.private(g, rel, size, disk)
                    else:
                        keyed.append((*key, seq))
            if keyed:
                self.db.execute("BEGIN")
                self.db.executemany("UPDATE whatif SET digest=?, metakey=? WHERE seq=?", keyed)
                self.db.execute("COMMIT")


def _groups(db: sqlite3.Connection) -> Iterator[tuple[Group, int]]:
    """Each set of hashed files with one store key, as a Group, with the seq of its first file.

    One cursor in key order (SQLite sorts it with its bounded cache, spilling to temporary
    files); one group is held at a time.
    """
    rows = db.execute("SELECT digest, metakey, size, seq, guest, path, dev, ino, disk, names FROM whatif "
                      "WHERE digest IS NOT NULL ORDER BY digest, metakey, size, seq")
    for _key, members in itertools.groupby(rows, key=itemgetter(0, 1, 2)):
        grp: Group | None = None
        first = 0
        inodes: set[tuple[int, int]] = set()
        for _, _, size, seq, g, rel, dev, ino, disk, names in members:
            if grp is None:
                grp, first = Group(size, disk, (g, rel)), seq
            else:
                grp.vote(g, rel)
            inodes.add((dev, ino))
            grp.occ.append(g)
            grp.paths.extend([g] * names)
        assert grp is not None
        grp.inodes = len(inodes)
        yield grp, first


class _DirCache:
    """The fd of the guest directory last asked for (waiting files come in walk order, a directory at a time)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rel: str | None = None
        self.fd: int | None = None

    def get(self, dir_rel: str) -> int | None:
        """The directory's fd, opened without following a symlink; None if it is gone."""
        if dir_rel != self.rel:
            self.close()
            self.rel = dir_rel
            with contextlib.suppress(OSError, UnsafeInput):
                self.fd = uwalk.open_guest_dir(self.root, dir_rel)
        return self.fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = None

    def __enter__(self) -> _DirCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _eligible(g: int, root: Path, min_size: int, exclude_file: Path | None) -> set[str]:
    """Relative paths the unify engine would consider (its walk, its rules)."""
    root_fd = uwalk.open_root(root)
    try:
        matcher = Matcher(load_rules(root, exclude_file))
        conffiles = config_files(root_fd)
        walker = uwalk.walk(g, root_fd, matcher, min_size, conffiles, Counter(), [])
        return {ref.rel for ref in walker}
    finally:
        os.close(root_fd)
