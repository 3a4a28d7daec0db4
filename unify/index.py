"""The persistent index: stat fingerprint -> digest and store entry, so re-runs read no content.

One SQLite database per store, STORE/index.sqlite (every change is a
transaction, so a killed run leaves the last committed state, never a torn
file). Why SQLite and not a packed file of our own: a run changes a small part
of a large index (1 % of 4.4 M files), and SQLite updates those rows in place,
clusters each guest's rows together (one range read per guest), keeps the
"still to hash" and "not yet linked" rows in partial indexes that stay small
in steady state, and lets unify group files by content in key order with
bounded memory (the page cache is capped) instead of holding every path.
It ships with Python, and readers need no code of ours (`sqlite3 index.sqlite`).

    guests(id, root, mode, updated)
    files(guest, path,                        -- primary key; clustered by guest
          dev, ino, size, mtime, ctime,       -- the stat fingerprint (ns)
          blocks,                             -- st_blocks (for "saved on disk")
          digest BLOB(16), metakey BLOB(8),   -- NULL until hashed
          copy)                               -- NULL: not unified; 0: linked to the entry
                                              -- "<digest>-<metakey>-<size>"; n > 0: to its
                                              -- n-th link-limit overflow entry "...-<size>-<n>"

Paths are relative to the guest root (os.fsdecode'd, so undecodable bytes
survive as surrogate escapes). A record is trusted only while
(dev, ino, size, mtime_ns, ctime_ns) all still match an lstat of the path; in
hardlink-sharing modes a unified file is also recognised by (dev, ino) alone,
because every new link to the shared inode bumps its ctime.

Readers (e.g. `imagefactory report`) use `read(store, root)`, `guests(store)`,
`load(store)` and `unify.store.Store(store).entries()`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

FORMAT = 2
NAME = "index.sqlite"
CACHE_KIB = 8 * 1024  # SQLite page cache per connection: bounded, whatever the store's size

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS guests(id INTEGER PRIMARY KEY, root TEXT UNIQUE NOT NULL, mode TEXT, updated REAL);
CREATE TABLE IF NOT EXISTS files(
    guest INTEGER NOT NULL, path TEXT NOT NULL,
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime INTEGER NOT NULL, ctime INTEGER NOT NULL, blocks INTEGER NOT NULL,
    digest BLOB, metakey BLOB, copy INTEGER,
    PRIMARY KEY (guest, path)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS unhashed ON files(guest, path) WHERE digest IS NULL;
CREATE INDEX IF NOT EXISTS unlinked ON files(digest, metakey, size) WHERE digest IS NOT NULL AND copy IS NULL;
"""

# A row's entry name, computed by SQLite (for readers that want names, not Records).
ENTRY_SQL = """CASE WHEN copy IS NULL THEN '' ELSE lower(hex(digest)) || '-' || lower(hex(metakey)) || '-' || size
    || CASE WHEN copy > 0 THEN '-' || copy ELSE '' END END"""
RECORD_COLUMNS = "dev, ino, size, mtime, ctime, blocks, digest, metakey, copy"


class Record(NamedTuple):
    """What the index knows about one guest file (the columns of its row, as stored)."""

    dev: int
    ino: int
    size: int
    mtime: int  # ns
    ctime: int  # ns
    blocks: int  # st_blocks
    digest: bytes | None  # XXH3-128 of the content; None until hashed
    metakey: bytes | None  # XXH3-64 of mode, owner, mtime, xattrs; None until hashed
    copy: int | None  # None: not unified; 0: linked to its entry; n: to the n-th overflow entry

    def fresh(self, st) -> bool:
        """Does an lstat (os.stat_result or walk.Stat) still match the one this record was made from?"""
        return (self.dev == st.st_dev and self.ino == st.st_ino and self.size == st.st_size
                and self.mtime == st.st_mtime_ns and self.ctime == st.st_ctime_ns)

    def linked_as(self, st) -> bool:
        """Is the file still the inode it was linked as (enough in hardlink-sharing modes, where
        every new link to the shared inode bumps its ctime)?"""
        return self.copy is not None and self.dev == st.st_dev and self.ino == st.st_ino

    @property
    def hexdigest(self) -> str:
        return self.digest.hex() if self.digest else ""

    @property
    def hexmetakey(self) -> str:
        return self.metakey.hex() if self.metakey else ""

    @property
    def entry_key(self) -> tuple | None:
        """(digest, metakey, size, copy) of the store entry it is unified with (see store.entry_key)."""
        return None if self.copy is None else (self.digest, self.metakey, self.size, self.copy)

    @property
    def entry(self) -> str:
        """The store entry name it is unified with, "" if none."""
        if self.copy is None or not self.digest or not self.metakey:
            return ""
        base = f"{self.digest.hex()}-{self.metakey.hex()}-{self.size}"
        return f"{base}-{self.copy}" if self.copy else base


def db_path(store_dir: Path) -> Path:
    return Path(store_dir) / NAME


def connect(path: Path | str, *, readonly: bool = False) -> sqlite3.Connection:
    """Open (readonly: without creating) an index database; "" is a private temporary one.

    synchronous=OFF: a SIGKILL loses nothing SQLite handed to the kernel, and a power loss can
    at worst lose or corrupt this index, never a guest file: every decision it drives is
    re-checked against the file (stat fingerprint, byte comparison) before a link, a corrupt
    index is set aside and rebuilt by hashing, and in-use is judged by link counts in the
    inode-sharing modes. (The rollback journal, not WAL: readers then leave no -shm/-wal files.)
    """
    if readonly:
        db = sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True, isolation_level=None, timeout=60)
    else:
        db = sqlite3.connect(os.fspath(path), isolation_level=None, timeout=60)
        try:
            db.execute("PRAGMA synchronous=OFF")
            db.executescript(SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(FORMAT),))
        except sqlite3.DatabaseError:
            db.close()
            if not path:
                raise
            os.replace(path, f"{os.fspath(path)}.corrupt-{int(time.time())}")
            return connect(path)
        if path:
            os.chmod(path, 0o600)
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    db.execute("PRAGMA temp_store=FILE")
    return db


def open_existing(store_dir: Path) -> sqlite3.Connection | None:
    """A read-only connection to a store's index, or None when it has none (yet)."""
    path = db_path(store_dir)
    if not path.is_file():
        return None
    try:
        db = connect(path, readonly=True)
        row = db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
    except sqlite3.Error:
        return None
    if row is None or row[0] != str(FORMAT):
        db.close()
        return None
    return db


def guest_id(db: sqlite3.Connection, root: Path) -> int | None:
    row = db.execute("SELECT id FROM guests WHERE root=?", (os.path.abspath(root),)).fetchone()
    return row[0] if row else None


def add_guest(db: sqlite3.Connection, root: Path, mode: str | None) -> int:
    """The id of a guest root, added if new."""
    gid = guest_id(db, root)
    if gid is not None:
        return gid
    cur = db.execute("INSERT INTO guests(root, mode, updated) VALUES (?,?,?)",
                     (os.path.abspath(root), mode, time.time()))
    assert cur.lastrowid is not None
    return cur.lastrowid


def records(db: sqlite3.Connection | None, gid: int | None) -> dict[str, Record]:
    """path -> Record of one guest ({} for an unknown guest: everything gets hashed)."""
    return GuestRecords(db, gid).other


class GuestRecords:
    """One guest's records for a scan, as cheaply as the scan can use them.

    `full`: every row a Record. Otherwise (a scan that finds unified files by readdir's inode
    number) the unified rows are loaded as path -> inode number only, which is all such a
    scan compares (a third of the cost of building Records: ~1 of a re-run's ~4 us per file),
    and a unified row's Record is read on demand, when its file turned out to have changed.
    """

    def __init__(self, db: sqlite3.Connection | None, gid: int | None, full: bool = True) -> None:
        self.db, self.gid = db, gid
        self.linked: dict[str, int] = {}  # path -> ino of rows with copy set (empty when full)
        self.other: dict[str, Record] = {}
        if db is None or gid is None:
            return
        make = Record._make
        if full:
            self.other = {r[0]: make(r[1:]) for r in
                          db.execute(f"SELECT path, {RECORD_COLUMNS} FROM files WHERE guest=?", (gid,))}
            return
        self.linked = dict(db.execute("SELECT path, ino FROM files WHERE guest=? AND copy IS NOT NULL "
                                      "AND digest IS NOT NULL", (gid,)))
        self.other = {r[0]: make(r[1:]) for r in db.execute(
            f"SELECT path, {RECORD_COLUMNS} FROM files WHERE guest=? AND (copy IS NULL OR digest IS NULL)", (gid,))}

    def get(self, path: str) -> Record | None:
        rec = self.other.get(path)
        if rec is None and path in self.linked:
            assert self.db is not None
            found = self.db.execute(f"SELECT {RECORD_COLUMNS} FROM files WHERE guest=? AND path=?",
                                    (self.gid, path)).fetchone()
            rec = Record._make(found) if found else None
        return rec

    def __len__(self) -> int:
        return len(self.linked) + len(self.other)

    def paths(self) -> Iterator[str]:
        yield from self.linked
        yield from self.other


def row(gid: int, path: str, st, digest: bytes | None = None, metakey: bytes | None = None,
        copy: int | None = None) -> tuple:
    """A files row for an lstat (walk.Stat or os.stat_result)."""
    return (gid, path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_blocks,
            digest, metakey, copy)


def row_of(gid: int, path: str, rec: Record) -> tuple:
    """The files row of a Record (a dry run copies the old state into its scratch index)."""
    return (gid, path, *rec)


def put(db: sqlite3.Connection, rows: Iterable[tuple]) -> None:
    db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)


def linked(db: sqlite3.Connection, updates: Iterable[tuple]) -> None:
    """Record links: (dev, ino, mtime, ctime, blocks, copy, guest, path) per file (an UPDATE in
    place costs a third of a REPLACE, which deletes and re-inserts the row and its index entries)."""
    db.executemany("UPDATE files SET dev=?, ino=?, mtime=?, ctime=?, blocks=?, copy=? WHERE guest=? AND path=?",
                   updates)


def drop(db: sqlite3.Connection, gid: int, paths: Iterable[str]) -> None:
    db.executemany("DELETE FROM files WHERE guest=? AND path=?", ((gid, p) for p in paths))


def touch_guest(db: sqlite3.Connection, gid: int, mode: str | None) -> None:
    db.execute("UPDATE guests SET mode=coalesce(?, mode), updated=? WHERE id=?", (mode, time.time(), gid))


def remove(store_dir: Path, root: Path) -> None:
    """Forget one guest (after --split)."""
    path = db_path(store_dir)
    if not path.is_file():
        return
    db = connect(path)
    try:
        with db:
            db.execute("BEGIN")
            gid = guest_id(db, root)
            if gid is not None:
                db.execute("DELETE FROM files WHERE guest=?", (gid,))
                db.execute("DELETE FROM guests WHERE id=?", (gid,))
    finally:
        db.close()


@dataclass(frozen=True)
class UnifiedFile:
    path: str  # relative to the guest root
    entry: str  # store entry name
    digest: str
    size: int


def guests(store_dir: Path) -> Iterator[tuple[str, dict]]:
    """(guest root, {"id", "mode", "updated"}) for every guest the store knows."""
    db = open_existing(store_dir)
    if db is None:
        return
    try:
        rows = db.execute("SELECT id, root, mode, updated FROM guests ORDER BY root").fetchall()
    finally:
        db.close()
    for gid, root, mode, updated in rows:
        yield root, {"id": gid, "root": root, "mode": mode, "updated": updated}


def read(store_dir: Path, root: Path) -> dict[str, Record]:
    """The file records of one guest ({} when unknown or unreadable)."""
    db = open_existing(store_dir)
    if db is None:
        return {}
    try:
        return records(db, guest_id(db, root))
    finally:
        db.close()


def unified_files(store_dir: Path, root: str) -> Iterator[UnifiedFile]:
    """One guest's unified files (as of its last run), streamed."""
    db = open_existing(store_dir)
    if db is None:
        return
    try:
        gid = guest_id(db, Path(root))
        if gid is None:
            return
        for path, rec in records(db, gid).items():
            if rec.copy is not None:
                yield UnifiedFile(path, rec.entry, rec.hexdigest, rec.size)
    finally:
        db.close()


def load(store_dir: Path) -> dict[str, list[UnifiedFile]]:
    """Per guest root: its unified files (small stores; large ones use unified_files per guest)."""
    return {root: list(unified_files(store_dir, root)) for root, _ in guests(store_dir)}


def entry_uses(store_dir: Path) -> dict[str, int]:
    """Entry name -> number of guest files the indexes say are unified with it."""
    db = open_existing(store_dir)
    if db is None:
        return {}
    try:
        return dict(db.execute(f"SELECT {ENTRY_SQL} AS e, count(*) FROM files WHERE copy IS NOT NULL GROUP BY e"))
    finally:
        db.close()


def referenced_entries(store_dir: Path) -> set[str]:
    """Entry names some guest index still points at (reflink mode's notion of 'in use')."""
    return set(entry_uses(store_dir))
