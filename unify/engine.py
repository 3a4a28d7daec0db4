"""Unify guest roots into a store: walk, hash what changed, create entries, link atomically.

Order of work, chosen so that a SIGKILL at any instant is harmless and memory
stays bounded by the largest guest, not by the number of files:
1. remove temp names a killed run left (store tmp/, `.ifunify-*` in guest dirs);
2. walk one guest at a time per worker process (no symlink is followed) against
   that guest's index records: in the inode-sharing modes a name whose readdir
   inode number is the store entry it was linked to is decided with no syscall
   of its own; a file whose stat fingerprint still matches is decided by stat
   alone (one already linked to its entry is not even opened); a new or changed
   file is hashed at once if a file of its size was seen before or a store entry
   has its size, else it waits; the main process writes the guest's changed rows
   to the index (workers only read guests and the index);
3. hash the waiting files whose size turned up again later (staged grouping:
   size first, content only when a size repeats, as hardlink(1) and fclones do);
4. read the not-yet-linked rows from the index in key order (digest, metakey,
   size), a bounded chunk at a time; per chunk, write every new entry into the
   store (hashing the bytes actually stored) and syncfs once, so no guest is
   ever linked to an entry whose data is not on disk; then per guest file:
   re-check its fingerprint, compare it byte for byte with the entry, link/clone
   the entry to a temp name in the same directory, re-check, rename over the
   guest path (atomic), and record the link in the index. An entry at the
   filesystem's link limit (EMLINK) gets a second entry for the same content.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import itertools
import multiprocessing
import os
import resource
import secrets
import sqlite3
import stat
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from operator import itemgetter
from pathlib import Path

import xxhash

from imagefactory.core.atomic import syncfs
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError
from imagefactory.core.progress import Progress
from unify import index, probe
from unify.exclude import Matcher, load_rules
from unify.ownership import config_files
from unify.protect import AUTO, MODES, WARNINGS, Mode, Protection
from unify.store import CHUNK, Store, entry_key, entry_name, hash_fd, meta_of, read_xattrs, same_content
from unify.walk import (
    FILE_FLAGS,
    TMP_PREFIX,
    FileRef,
    Stat,
    from_readdir,
    open_dir,
    open_root,
    readdir_stat,
    small_stat,
    walk,
)

GROUP_ROWS = 20_000  # index rows per linking chunk: bounds memory and the data one syncfs flushes
MIN_SIZE = 16  # bytes; smaller files are never unified


@dataclass(frozen=True)
class UnifyOptions:
    """One run's settings (the CLI's flags), like build's BuildOptions."""

    mode: str = AUTO  # a Mode, or "auto": vserver if the kernel has it, else reflink, else refuse
    dry_run: bool = False
    ignore_mtime: bool = False
    min_size: int = MIN_SIZE
    exclude_file: Path | None = None
    list_files: bool = False  # fill Summary.listing with every file linked (or, dry run, that would be)
    workers: int = 0  # processes that walk and hash guests; 0: one per CPU this process may use, at most 4


@dataclass
class Summary:
    mode: Mode | None
    mode_reason: str
    dry_run: bool
    store: str
    guests: int = 0
    dirs: int = 0
    files: int = 0  # regular files seen
    special: int = 0  # symlinks, devices, FIFOs, sockets
    excluded: int = 0
    conffiles: int = 0
    too_small: int = 0
    candidates: int = 0  # eligible regular files
    index_hits: int = 0  # digests reused from the index
    hashed: int = 0
    hashed_bytes: int = 0
    already_unified: int = 0
    already_bytes: int = 0
    by_inode: int = 0  # of already_unified: known from readdir's inode number alone (no lstat)
    linked: int = 0  # guest files replaced by (or, dry run: that would become) store links
    new_entries: int = 0
    overflow_entries: int = 0  # of those, second (third...) entries of a content whose entry hit EMLINK
    duplicates: int = 0  # guest inodes merged away (hardlink(1)'s "linked"): distinct inodes linked - new entries
    bytes_saved: int = 0  # apparent size of the guest copies merged away, minus new entries
    disk_saved: int = 0  # the same in allocated blocks: what du before/after shows
    collisions: int = 0
    changed: int = 0  # changed during the run: left alone
    failed: int = 0
    temp_removed: int = 0
    seconds: float = 0.0
    workers: int = 0  # worker processes that walked and hashed (0: this process did)
    worker_rss_kib: int = 0  # the largest worker's peak RSS (KiB; forked: shares the parent's pages)
    warnings: list[str] = field(default_factory=list)
    listing: list[list] | None = None  # with list_files: [guest path, store entry, size] per (would-be) link

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_mode(mode: str, store_dir: Path, dry_run: bool) -> tuple[Mode | None, str]:
    """auto -> vserver, else reflink, else refuse (a dry run continues and says why)."""
    if mode != AUTO:
        if mode not in MODES:
            raise ImageFactoryError(f"unknown mode {mode!r} (choose {AUTO}, {', '.join(MODES)})")
        return Mode(mode), "chosen with --mode"
    where = Path(store_dir)
    while not where.is_dir():  # a dry run creates no store: probe the directory it would be made in
        where = where.parent
    result = probe.probe(where)
    if result.auto_mode is None and not dry_run:
        raise EnvironmentProblem(f"--mode auto refuses: {result.reason}")
    return (Mode(result.auto_mode) if result.auto_mode else None), result.reason


MAX_WARNINGS = 20


class _DirCache:
    """The directory fd of the last file touched (work is sorted by path, so it is mostly reused)."""

    def __init__(self, root_fds: list[int]) -> None:
        self.root_fds = root_fds
        self.key: tuple[int, str] | None = None
        self.fd = -1

    def get(self, guest: int, dir_rel: str) -> int:
        if self.key != (guest, dir_rel):
            self.close()
            self.fd = open_dir(self.root_fds[guest], dir_rel)
            self.key = (guest, dir_rel)
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.key = -1, None


def _fingerprint(st: os.stat_result | Stat) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _unchanged(now: os.stat_result, then: os.stat_result | Stat, fd: int, metakey: str, ignore_mtime: bool) -> bool:
    """Is the open file still the one we hashed? A ctime-only change (a new hard link to the
    same inode, e.g. its twin in the same guest was just unified) is fine if the metadata
    key still matches; the content is byte-compared separately."""
    if _fingerprint(now) == _fingerprint(then):
        return True
    if _fingerprint(now)[:4] != _fingerprint(then)[:4]:
        return False
    return meta_of(now, read_xattrs(fd), ignore_mtime).key() == metakey


def apply_meta(fd: int, st: os.stat_result, xattrs: tuple) -> None:
    """Give a new inode the owner, mode, xattrs and mtime of `st` (chown first: it clears setuid/caps)."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, st.st_mode & 0o7777)
    for name, value in xattrs:
        os.setxattr(fd, name, value)
    os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))


def _copy_hashing(src: int, dst: int) -> tuple[str, int]:
    """Copy src to dst while hashing exactly the bytes written."""
    h = xxhash.xxh3_128()
    total = 0
    while data := os.read(src, CHUNK):
        h.update(data)
        os.write(dst, data)
        total += len(data)
    return h.hexdigest(), total


def _stat_of_row(dev: int, ino: int, size: int, mtime: int, ctime: int, blocks: int) -> Stat:
    """A walk.Stat from an index row (mode and owner are in the metakey, not needed here)."""
    return Stat(dev, ino, 0, 0, 0, 0, size, blocks, mtime, ctime)


TALLY = ("already_unified", "already_bytes", "by_inode", "index_hits", "hashed", "hashed_bytes", "changed",
         "candidates")


@dataclass
class GuestScan:
    """What scanning one guest found (a worker process sends it back to the one that writes the index)."""

    rows: list[tuple]  # index rows to write
    drop: list[str]  # recorded paths that are gone
    leftovers: list[tuple[str, str]]  # temp names of a killed run: (dir_rel, name)
    counts: Counter  # the walk's counts by reason
    sizes: Counter  # eligible files per size
    tally: dict[str, int] | None = None  # a worker's Summary counters (TALLY); None: already in the Summary
    in_use: set[tuple] = field(default_factory=set)  # a worker's in-use entry keys (protected modes)
    rss_kib: int = 0  # the worker's peak RSS so far


_WORKER: Unifier | None = None  # the Unifier a forked worker process inherited


def _worker_start() -> None:
    """In a new worker process: its own read-only index connection (SQLite connections must not
    cross a fork) and its own counters."""
    assert _WORKER is not None
    _WORKER.old_db = index.open_existing(_WORKER.store.root) if _WORKER.old_db is not None else None


def _worker_scan(g: int) -> GuestScan:
    u = _WORKER
    assert u is not None
    before = {key: getattr(u.s, key) for key in TALLY}
    u.in_use = set()
    found = u._scan_guest(g, *u._shared_scan)
    found.tally = {key: getattr(u.s, key) - before[key] for key in TALLY}
    found.in_use = u.in_use
    u.sizes.update(found.sizes)  # later guests of this worker see these sizes as seen before
    found.rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return found


class _EntryFull(Exception):
    """The entry reached the filesystem's link limit (EMLINK)."""


class Unifier:
    def __init__(self, roots, store: Store, prot: Protection | None, summary: Summary, opts: UnifyOptions,
                 progress: Progress, db: sqlite3.Connection, old_db: sqlite3.Connection | None) -> None:
        self.roots = [Path(r) for r in roots]
        self.store = store
        self.prot = prot
        self.s = summary
        self.dry_run = opts.dry_run
        self.ignore_mtime = opts.ignore_mtime
        self.min_size = opts.min_size
        self.exclude_file = opts.exclude_file
        self.workers = opts.workers or min(len(os.sched_getaffinity(0)), 4)
        self._shared_scan: tuple[bool, dict[int, Stat]] = (True, {})
        self.progress = progress
        self.db = db  # the index this run writes (a scratch copy for a dry run)
        self.old_db = old_db  # the index it reads records from (the same one for a real run)
        self.root_fds: list[int] = []
        self.gids: list[int] = []  # guest number in this run -> guest id in self.db
        self.store_names: set[str] = set()
        self.store_keys: set[tuple] = set()  # store.entry_key() of every name: what index rows refer to
        self.store_sizes: set[int] = set()
        self.store_dev = -1
        self.entry_of_inode: dict[int, tuple] = {}  # store entry inode -> entry key (protected modes only)
        self.sizes: Counter = Counter()  # size -> eligible files of that size (distinct sizes only)
        self.in_use: set[tuple] = set()  # entry keys some guest file already is
        self.touched: set[str] = set()  # entries this run linked to
        self.warned = 0
        self.buf = bytearray(CHUNK)

    @property
    def protection(self) -> Protection:
        """The mode's protection: only a run with a sharing mode creates or links entries."""
        if self.prot is None:
            raise ImageFactoryError("no usable sharing mode: nothing can be created or linked")
        return self.prot

    # -- phase 2: walk, decide by stat, hash what changed -----------------------------------------
    def scan(self) -> None:
        shares = self.prot is None or self.prot.shares_inode
        inodes = self.store.inodes() if self.store.exists() else {}
        self.store_names = set(inodes)
        keys = {ino: entry_key(name) for name, ino in inodes.items()}  # entry inode -> its key
        self.store_keys = set(keys.values())
        self.store_sizes = {k[2] for k in self.store_keys}
        for root in self.roots:
            self.root_fds.append(open_root(root))
        # In the inode-sharing modes a unified guest file *is* its entry's inode, so readdir's inode
        # number finds it without an lstat (see walk.walk); one Stat per entry, shared by every guest.
        shared: dict[int, Stat] = {}
        if shares and inodes:
            store_dev = os.stat(self.store.objects).st_dev
            shared = {ino: readdir_stat(store_dev, ino, key[2]) for ino, key in keys.items() if key[2] >= self.min_size}
            self.store_dev = store_dev
            if self.prot is not None and self.prot.flags:
                self.entry_of_inode = keys
        self.db.execute("BEGIN")
        self.gids = [index.add_guest(self.db, root, self.s.mode) for root in self.roots]
        self.db.execute("COMMIT")
        counts: Counter = Counter()
        n = len(self.roots)
        if self.workers > 1 and n > 1:
            # Guests are walked and hashed in worker processes (forked: they share the store maps built
            # above), this process writes the index. Threads were measured: slower warm and no faster
            # cold, GIL-bound; two processes: an unchanged 1,000-guest re-run 1.7-1.8x faster on 2 cores (README).
            global _WORKER
            _WORKER = self
            self._shared_scan = (shares, shared)  # inherited by the fork, not sent with every task
            ctx = multiprocessing.get_context("fork")
            self.s.workers = min(self.workers, n)
            try:
                with ctx.Pool(self.s.workers, initializer=_worker_start) as pool:
                    for g, found in enumerate(pool.imap(_worker_scan, range(n))):
                        self.progress.count("walking", g + 1, n, " guests")
                        self._record(g, found, counts)
            finally:
                _WORKER = None
        else:
            for g in range(n):
                self.progress.count("walking", g + 1, n, " guests")
                self._record(g, self._scan_guest(g, shares, shared), counts)
        for key in ("dirs", "files", "special", "excluded", "conffiles", "too_small"):
            setattr(self.s, key, counts[key])
        self.s.guests = n
        self._hash_waiting()

    def _record(self, g: int, found: GuestScan, counts: Counter) -> None:
        """Write what scanning guest g found to the index (in this process only) and add up its figures."""
        gid = self.gids[g]
        self.db.execute("BEGIN")
        found.rows.sort(key=itemgetter(1))  # in key order: B-tree appends, not random inserts (~40 % faster)
        index.put(self.db, found.rows)
        if found.drop:
            index.drop(self.db, gid, found.drop)
        index.touch_guest(self.db, gid, self.s.mode)
        self.db.execute("COMMIT")
        counts.update(found.counts)
        self.sizes.update(found.sizes)
        if found.tally is not None:  # from a worker process: its counters and in-use entries
            for key, value in found.tally.items():
                setattr(self.s, key, getattr(self.s, key) + value)
            self.in_use |= found.in_use
            self.s.worker_rss_kib = max(self.s.worker_rss_kib, found.rss_kib)
        if not self.dry_run:
            self._remove_leftovers(self.root_fds[g], found.leftovers)

    def _scan_guest(self, g: int, shares: bool, shared: dict[int, Stat]) -> GuestScan:
        """Walk one guest against its index records, hashing what changed (reads only: a worker
        process may run it)."""
        root, root_fd = self.roots[g], self.root_fds[g]
        gid = self.gids[g]
        matcher = Matcher(load_rules(root, self.exclude_file))
        old_gid = index.guest_id(self.old_db, root) if self.old_db is not None else None
        if shared and os.fstat(root_fd).st_dev != self.store_dev:
            shared = {}
        dry = self.dry_run
        old = index.GuestRecords(self.old_db, old_gid, full=dry or not shared)
        linked_ino = old.linked
        leftovers: list[tuple[str, str]] = []
        counts: Counter = Counter()
        refs = walk(g, root_fd, matcher, self.min_size, config_files(root_fd), counts, leftovers, shared)
        rows = []
        earlier, store_keys, store_sizes = self.sizes, self.store_keys, self.store_sizes
        sizes: Counter = Counter()  # this guest's; `earlier`: the guests scanned before it (in this process)
        in_use = self.in_use if self.prot is not None and self.prot.flags else None  # for reprotect() only
        already = already_bytes = by_inode = recorded = 0
        dirs = _DirCache(self.root_fds)
        try:
            for ref in refs:
                st = ref.st
                size = st.st_size
                sizes[size] += 1
                if linked_ino.get(ref.rel) == st.st_ino and from_readdir(st):
                    # Unified when last seen, and its name still is that inode, a store entry's (readdir
                    # told): decided without a syscall of its own.
                    already += 1
                    by_inode += 1
                    already_bytes += size
                    if in_use is not None:
                        in_use.add(self.entry_of_inode[st.st_ino])
                    continue
                rec = old.get(ref.rel)
                if rec is not None:
                    recorded += 1
                if rec is not None and rec.digest and rec.linked_as(st) \
                        and (shares or rec.ctime == st.st_ctime_ns) and rec.entry_key in store_keys:
                    already += 1  # decided by stat alone: not opened
                    already_bytes += size
                    if in_use is not None:
                        in_use.add(rec.entry_key)
                    if dry:
                        rows.append(index.row_of(gid, ref.rel, rec))
                    continue
                if from_readdir(st):  # readdir's inode number did not settle it: the real lstat now
                    real = self._lstat(ref, dirs)
                    if real is None:
                        continue
                    ref.st = st = real
                    size = st.st_size
                if rec is not None and rec.digest:
                    if rec.fresh(st):
                        self.s.index_hits += 1
                        if rec.copy is not None or dry:  # (an entry that is gone: link again)
                            rows.append(index.row(gid, ref.rel, st, rec.digest, rec.metakey))
                        continue
                if sizes[size] > 1 or size in earlier or size in store_sizes:
                    rows.append(self._hash_row(gid, ref, dirs) or index.row(gid, ref.rel, st))
                else:
                    rows.append(index.row(gid, ref.rel, st))  # waits: hashed if its size turns up again
        finally:
            dirs.close()
        self.s.already_unified += already
        self.s.already_bytes += already_bytes
        self.s.by_inode += by_inode
        self.s.candidates += len(refs)
        drop: list[str] = []
        if not dry and already + recorded != len(old):  # some recorded path was not met: drop its row
            seen = {ref.rel for ref in refs}
            drop = [p for p in old.paths() if p not in seen]
        return GuestScan(rows, drop, leftovers, counts, sizes)

    def _lstat(self, ref: FileRef, dirs: _DirCache) -> Stat | None:
        """A guest file's lstat, None (counted as changed) if it is no regular file any more."""
        try:
            st = os.lstat(ref.name, dir_fd=dirs.get(ref.guest, ref.dir_rel))
        except OSError:
            self.s.changed += 1
            return None
        if not stat.S_ISREG(st.st_mode):
            self.s.changed += 1
            return None
        return small_stat(st)

    def _hash_row(self, gid: int, ref: FileRef, dirs: _DirCache) -> tuple | None:
        """Hash one guest file; its index row, or None (counted as changed) if it moved meanwhile.

        Sequential on purpose. Measured on this project's 2-core VM (2026-11-30): XXH3-128 over
        2 GiB of cached data takes 0.39 s in one thread and 0.34 s split over two (python-xxhash
        releases the GIL), so hashing is not what a run waits for; the per-file open/fstat/read
        syscalls and the Python around them are, and threads add GIL hand-offs to exactly those.
        """
        fd = self._open_guest_file(ref, dirs)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if _fingerprint(st) != _fingerprint(ref.st):
                self.s.changed += 1
                return None
            meta = meta_of(st, read_xattrs(fd), self.ignore_mtime)
            digest, length = hash_fd(fd, self.buf)
        finally:
            os.close(fd)
        if length != st.st_size:
            self.s.changed += 1
            return None
        self.s.hashed += 1
        self.s.hashed_bytes += length
        return index.row(gid, ref.rel, st, bytes.fromhex(digest), bytes.fromhex(meta.key()))

    def _hash_waiting(self) -> None:
        """Hash the files that waited for their size to turn up again (step 3)."""
        sizes, store_sizes = self.sizes, self.store_sizes
        for g, gid in enumerate(self.gids):
            self.progress.count("hashing", g + 1, len(self.gids), " guests")
            waiting = self.db.execute("SELECT path, dev, ino, size, mtime, ctime, blocks FROM files INDEXED BY "
                                      "unhashed WHERE guest=? AND digest IS NULL", (gid,)).fetchall()
            dirs = _DirCache(self.root_fds)
            rows = []
            try:
                for path, dev, ino, size, mtime, ctime, blocks in waiting:
                    if sizes[size] > 1 or size in store_sizes:
                        ref = FileRef(g, path, _stat_of_row(dev, ino, size, mtime, ctime, blocks))
                        if row := self._hash_row(gid, ref, dirs):
                            rows.append(row)
            finally:
                dirs.close()
            if rows:
                self.db.execute("BEGIN")
                index.put(self.db, rows)
                self.db.execute("COMMIT")

    def _remove_leftovers(self, root_fd: int, leftovers: list[tuple[str, str]]) -> None:
        for dir_rel, name in leftovers:
            with contextlib.suppress(OSError):
                dfd = open_dir(root_fd, dir_rel)
                try:
                    try:
                        os.unlink(name, dir_fd=dfd)
                    except PermissionError:  # a link to a protected entry: clear, unlink, re-protect
                        self._unlink_protected(dfd, name)
                    self.s.temp_removed += 1
                finally:
                    os.close(dfd)

    def _unlink_protected(self, dfd: int, name: str) -> None:
        with (self.prot or Protection(Mode.HARDLINK)).restoring_at(dfd, name):
            os.unlink(name, dir_fd=dfd)

    def groups(self):
        """Chunks of linkable groups [(entry name, [FileRef...])], in key order, from the index."""
        run = {gid: g for g, gid in enumerate(self.gids)}
        q = ("SELECT digest, metakey, size, guest, path, dev, ino, mtime, ctime, blocks FROM files INDEXED BY "
             "unlinked WHERE digest IS NOT NULL AND copy IS NULL AND (digest, metakey, size) > (?,?,?) "
             "ORDER BY digest, metakey, size LIMIT ?")
        last: tuple = (b"", b"", -1)
        while True:
            rows = self.db.execute(q, (*last, GROUP_ROWS)).fetchall()
            if not rows:
                return
            if len(rows) == GROUP_ROWS:  # the last group may continue in the next chunk
                tail = rows[-1][:3]
                cut = next(i for i in range(len(rows) - 1, -1, -1) if rows[i][:3] != tail) + 1 \
                    if rows[0][:3] != tail else 0
                if cut:
                    rows = rows[:cut]
                else:  # one group larger than a chunk (a file every guest has 65,000 times)
                    rows = self.db.execute(q.replace("(digest, metakey, size) >", "(digest, metakey, size) =")
                                           .replace(" LIMIT ?", ""), tail).fetchall()
            last = rows[-1][:3]
            chunk = []
            for key, members in itertools.groupby(rows, key=lambda r: r[:3]):
                name = entry_name(key[0].hex(), key[1].hex(), key[2])
                refs = [FileRef(run[r[3]], r[4], _stat_of_row(r[5], r[6], key[2], r[7], r[8], r[9]))
                        for r in members if r[3] in run]
                if not refs:
                    continue
                # Worth linking: two or more distinct inodes, or an entry already in the store. (Names that
                # already share one inode inside a guest, like perl and perl5.x, gain nothing on their own.)
                if name in self.store_names or len({(r.st.st_dev, r.st.st_ino) for r in refs}) > 1:
                    chunk.append((name, refs))
            if chunk:
                yield chunk

    # -- store entries -----------------------------------------------------------------------------
    def create_entries(self, chunk: list[tuple[str, list[FileRef]]]) -> None:
        """Create the chunk's missing entries, then flush them with one syncfs."""
        dirs = _DirCache(self.root_fds)
        try:
            for name, refs in chunk:
                if name in self.store_names:
                    continue
                for ref in refs:
                    if self._create_entry(name, ref, dirs):
                        self.store_names.add(name)
                        self.s.new_entries += 1
                        self.s.bytes_saved -= ref.st.st_size
                        self.s.disk_saved -= os.stat(self.store.path_of(name)).st_blocks * 512
                        break
        finally:
            dirs.close()
        # Entry data on disk before any guest depends on it (also entries an earlier, killed run
        # created but never flushed).
        syncfs(self.store.objects)

    def _create_entry(self, name: str, ref: FileRef, dirs: _DirCache) -> bool:
        try:
            src = os.open(ref.name, FILE_FLAGS, dir_fd=dirs.get(ref.guest, ref.dir_rel))
        except OSError:
            return False
        try:
            st = os.fstat(src)
            if not _unchanged(st, ref.st, src, name.split("-")[1], self.ignore_mtime):
                return False
            return self._write_entry(name, src, st, read_xattrs(src))
        finally:
            os.close(src)

    def _write_entry(self, name: str, src: int, st: os.stat_result, xattrs: tuple) -> bool:
        """Copy (reflink: clone) src into the store as entry `name`, hashing the bytes stored."""
        tmp = self.store.tmp / f"{name}.{secrets.token_hex(4)}"
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        done = False
        try:
            os.lseek(src, 0, os.SEEK_SET)
            if self.protection.shares_inode:
                digest, length = _copy_hashing(src, dst)
            else:
                probe.clone_file(dst, src)
                cfd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    digest, length = hash_fd(cfd, self.buf)
                finally:
                    os.close(cfd)
            parts = name.split("-")
            if f"{digest}-{meta_of(st, xattrs, self.ignore_mtime).key()}-{length}" != "-".join(parts[:3]):
                return False  # changed under us
            apply_meta(dst, st, xattrs)
            path = self.store.path_of(name)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            os.rename(tmp, path)
            done = True
            return True
        finally:
            os.close(dst)
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _overflow_entry(self, name: str, copy: int, efd: int) -> str:
        """The entry `name` is at the link limit: its copy-th overflow entry (created if missing,
        from the full entry's bytes, and fsynced before any guest links to it)."""
        digest, metakey, size = name.split("-")[:3]
        new = entry_name(digest, metakey, int(size), copy)
        if new in self.store_names:
            return new
        st = os.fstat(efd)
        if not self._write_entry(new, efd, st, read_xattrs(efd)):
            raise OSError(errno.EIO, f"overflow entry {new} did not match its content")
        fd = os.open(self.store.path_of(new), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.store_names.add(new)
        self.s.overflow_entries += 1
        self.s.new_entries += 1
        self.s.bytes_saved -= st.st_size
        self.s.disk_saved -= st.st_blocks * 512
        self._warn(f"{name} reached the filesystem's link limit: started overflow entry {new}")
        return new

    # -- linking -----------------------------------------------------------------------------------
    def link_chunk(self, chunk: list[tuple[str, list[FileRef]]]) -> None:
        dirs = _DirCache(self.root_fds)
        rows: list[tuple] = []
        try:
            for name, refs in chunk:
                if name in self.store_names:
                    self._link_group(name, refs, dirs, rows)
        finally:
            dirs.close()
            self.db.execute("BEGIN")
            index.linked(self.db, rows)
            self.db.execute("COMMIT")

    def _link_group(self, name: str, refs: list[FileRef], dirs: _DirCache, rows: list[tuple]) -> None:
        merged: set[tuple[int, int]] = set()  # guest inodes replaced (perl and perl5.x are freed once)
        copy, current = 0, name
        with contextlib.ExitStack() as held:
            efd = self._lift(held, current)
            for ref in sorted(refs, key=lambda r: (r.guest, r.rel)):
                while True:
                    try:
                        new = self._link_one(ref, current, efd, dirs)
                        break
                    except _EntryFull:
                        copy += 1
                        current = self._overflow_entry(name, copy, efd)
                        held.close()  # the full entry: protected again and closed
                        efd = self._lift(held, current)
                if new is not None:
                    st, replaced = new
                    rows.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_blocks, copy,
                                 self.gids[ref.guest], ref.rel))
                    if replaced:
                        merged.add((ref.st.st_dev, ref.st.st_ino))
        first = refs[0].st
        self.s.duplicates += len(merged)
        self.s.bytes_saved += len(merged) * first.st_size
        self.s.disk_saved += len(merged) * first.st_blocks * 512

    def _lift(self, held: contextlib.ExitStack, name: str) -> int:
        """Open entry `name` with its protection lifted until `held` closes (then set again)."""
        efd = os.open(self.store.path_of(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        held.callback(os.close, efd)
        held.enter_context(self.protection.reasserting(efd))
        self.touched.add(name)
        return efd

    def _open_guest_file(self, ref: FileRef, dirs: _DirCache) -> int | None:
        """An fd for a guest file (never through a symlink); None, counted as changed, if it is gone."""
        try:
            return os.open(ref.name, FILE_FLAGS, dir_fd=dirs.get(ref.guest, ref.dir_rel))
        except OSError:
            self.s.changed += 1
            return None

    def _link_one(self, ref: FileRef, name: str, efd: int, dirs: _DirCache):
        """Link one guest file to the entry: (its stat now, whether its inode was replaced), or None
        when it was left alone. Raises _EntryFull at the link limit."""
        gfd = self._open_guest_file(ref, dirs)
        if gfd is None:
            return None
        dfd = dirs.get(ref.guest, ref.dir_rel)
        tmp = f"{TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            gst = os.fstat(gfd)
            if not _unchanged(gst, ref.st, gfd, name.split("-")[1], self.ignore_mtime):
                self.s.changed += 1
                return None
            if self.protection.shares_inode and (gst.st_dev, gst.st_ino) == self._entry_id(efd):
                self.s.already_unified += 1  # index was lost; the file already is the entry
                self.s.already_bytes += gst.st_size
                return gst, False
            if not same_content(gfd, efd):
                self.s.collisions += 1
                self._warn(f"XXH3 collision or concurrent change, left private: {self.roots[ref.guest]}/{ref.rel}")
                return None
            if self.protection.shares_inode:
                try:
                    os.link(self.store.path_of(name), tmp, dst_dir_fd=dfd, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno == errno.EMLINK:
                        raise _EntryFull from None
                    raise
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                tfd = os.open(tmp, flags, 0o600, dir_fd=dfd)
                try:
                    probe.clone_file(tfd, efd)
                    apply_meta(tfd, gst, read_xattrs(gfd))
                finally:
                    os.close(tfd)
            now = os.stat(ref.name, dir_fd=dfd, follow_symlinks=False)
            if (now.st_ino, now.st_ctime_ns) != (gst.st_ino, gst.st_ctime_ns):
                os.unlink(tmp, dir_fd=dfd)
                self.s.changed += 1
                return None
            os.rename(tmp, ref.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            new = os.stat(ref.name, dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            self.s.failed += 1
            self._warn(f"{self.roots[ref.guest]}/{ref.rel}: {exc.strerror}")
            return None
        finally:
            os.close(gfd)
        self.s.linked += 1
        if self.s.listing is not None:
            self.s.listing.append([str(self.roots[ref.guest] / ref.rel), name, ref.st.st_size])
        return new, True

    def _warn(self, text: str) -> None:
        """Keep the first MAX_WARNINGS file warnings; the counters hold the totals."""
        self.warned += 1
        if self.warned <= MAX_WARNINGS:
            self.s.warnings.append(text)
        elif self.warned == MAX_WARNINGS + 1:
            self.s.warnings.append("further per-file warnings suppressed (see the counters)")

    def reprotect(self) -> None:
        """Re-assert the flags on entries this run did not link to (a run killed between lifting
        and restoring them may have linked every guest already, so nothing else would)."""
        if not self.protection.flags:
            return
        for name in {entry_name(k[0].hex(), k[1].hex(), k[2], k[3]) for k in self.in_use} - self.touched:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.store.path_of(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    self.protection.protect(fd)
                finally:
                    os.close(fd)

    @staticmethod
    def _entry_id(efd: int) -> tuple[int, int]:
        st = os.fstat(efd)
        return st.st_dev, st.st_ino

    def close(self) -> None:
        for fd in self.root_fds:
            os.close(fd)
        self.root_fds.clear()


def _estimate(summary: Summary, chunk: list[tuple[str, list[FileRef]]], store_names: set[str], roots) -> None:
    """What a real run would link and save (counted the way linking counts what it did)."""
    for name, refs in chunk:
        summary.linked += len(refs)
        if summary.listing is not None:
            summary.listing += [[str(roots[r.guest] / r.rel), name, r.st.st_size] for r in refs]
        inodes = len({(r.st.st_dev, r.st.st_ino) for r in refs})
        summary.duplicates += inodes
        summary.bytes_saved += refs[0].st.st_size * inodes
        summary.disk_saved += refs[0].st.st_blocks * 512 * inodes
        if name not in store_names:
            summary.new_entries += 1
            summary.bytes_saved -= refs[0].st.st_size
            summary.disk_saved -= refs[0].st.st_blocks * 512


def unify(
    roots,
    store: Path,
    mode: str = AUTO,
    dry_run: bool = False,
    ignore_mtime: bool = False,
    min_size: int = MIN_SIZE,
    exclude_file: Path | None = None,
    progress: Progress | None = None,
    ioctl=None,
    list_files: bool = False,
    workers: int = 0,
) -> Summary:
    """run() with the UnifyOptions given as keywords."""
    opts = UnifyOptions(mode, dry_run, ignore_mtime, min_size, exclude_file, list_files, workers)
    return run(roots, store, opts, progress, ioctl)


def run(roots, store: Path, opts: UnifyOptions, progress: Progress | None = None, ioctl=None) -> Summary:
    """Unify identical files of `roots` into `store`; see the module docstring for the order of work.

    `ioctl` replaces fcntl.ioctl for attribute flags (a test seam for vserver mode).
    A dry run writes nothing: no store directory, no index (it works in a private
    temporary index, reading the store's own index if there is one).
    """
    started = time.monotonic()
    progress = progress or Progress(quiet=True)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # long-lived records: collector passes only cost time
    try:
        return _unify(roots, store, opts, progress, ioctl, started)
    finally:
        if gc_was_enabled:
            gc.enable()


def _unify(roots, store: Path, opts: UnifyOptions, progress: Progress, ioctl, started: float) -> Summary:
    dry_run = opts.dry_run
    store_obj = Store(store)
    if not roots:
        raise ImageFactoryError("no guest roots given")
    roots = list(dict.fromkeys(Path(os.path.abspath(r)) for r in roots))
    store_abs = Path(os.path.realpath(store))
    for r in roots:
        real = Path(os.path.realpath(r))
        if store_abs == real or store_abs.is_relative_to(real) or real.is_relative_to(store_abs):
            raise ImageFactoryError(f"the store {store} and the guest root {r} must not contain each other")
    if not dry_run:
        store_obj.create(None)
    chosen, reason = resolve_mode(opts.mode, store_obj.root, dry_run)
    summary = Summary(chosen, reason, dry_run, str(store_obj.root), listing=[] if opts.list_files else None)
    if chosen in WARNINGS:
        summary.warnings.append(WARNINGS[chosen])
    if chosen is None:
        summary.warnings.append(f"no usable sharing mode, dry run only: {reason}")
    prot = Protection.of(chosen, ioctl) if chosen else None
    lock = store_obj.locked() if not dry_run else contextlib.nullcontext()
    with lock:
        db: sqlite3.Connection
        old_db: sqlite3.Connection | None
        if not dry_run:
            assert chosen is not None and prot is not None  # resolve_mode refuses otherwise
            store_obj.set_mode(chosen)
            summary.temp_removed += store_obj.clean_tmp()
            if chosen is Mode.VSERVER and not prot.barrier(store_obj.root):
                summary.warnings.append("the kernel has no chroot barrier flag; the store root is not barriered")
            store_dev = os.stat(store_obj.root).st_dev
            for r in roots:
                if os.stat(r).st_dev != store_dev:
                    raise EnvironmentProblem(f"{r} is not on the store's filesystem ({store_obj.root}); "
                                             "links and reflinks cannot cross filesystems")
            db = old_db = index.connect(store_obj.index)
        else:  # read the store's index, write a private scratch one
            old_db, db = index.open_existing(store_obj.root), index.connect("")
        u = Unifier(roots, store_obj, prot, summary, opts, progress, db, old_db)
        try:
            u.scan()
            if not dry_run:
                progress.stage(f"creating store entries and linking ({chosen} mode)")
            for chunk in u.groups():
                if dry_run:
                    _estimate(summary, chunk, u.store_names, u.roots)
                else:
                    u.create_entries(chunk)
                    u.link_chunk(chunk)
            if not dry_run:
                u.reprotect()
            summary.duplicates -= summary.new_entries
        finally:
            u.close()
            db.close()
            if old_db is not None and old_db is not db:
                old_db.close()
    summary.seconds = round(time.monotonic() - started, 3)
    return summary
