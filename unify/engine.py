"""Unify guest roots into a store: walk, hash what changed, create entries, link atomically.

Order of work, chosen so that a SIGKILL at any instant is harmless:
1. remove temp names a killed run left (store tmp/, `.ifunify-*` in guest dirs);
2. walk every guest (no symlink is followed) and reuse index digests whose stat
   fingerprint still matches; hash only files whose size occurs at least twice
   (or matches an existing entry), as hardlink(1) does;
3. write every new entry into the store (hashing the bytes actually stored),
   then sync once, so no guest is ever linked to an entry whose data is not on disk;
4. per guest file: re-check its fingerprint, compare it byte for byte with the
   entry, link/clone the entry to a temp name in the same directory, re-check,
   and rename over the guest path (atomic: the path always holds the old or the
   identical unified file);
5. write the per-guest indexes.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import secrets
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import xxhash

from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError
from imagefactory.core.progress import Progress
from unify import index, probe
from unify.exclude import Matcher, load_rules
from unify.ownership import config_files
from unify.protect import MODES, WARNINGS, Protection
from unify.store import CHUNK, Store, entry_name, hash_fd, meta_of, read_xattrs, same_content
from unify.walk import FILE_FLAGS, TMP_PREFIX, FileRef, Stat, open_dir, open_root, walk


@dataclass
class Summary:
    mode: str | None
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
    linked: int = 0  # guest files replaced by (or, dry run: that would become) store links
    new_entries: int = 0
    duplicates: int = 0  # guest inodes merged away (hardlink(1)'s "linked"): distinct inodes linked - new entries
    bytes_saved: int = 0  # apparent size of the guest copies merged away, minus new entries
    disk_saved: int = 0  # the same in allocated blocks: what du before/after shows
    collisions: int = 0
    changed: int = 0  # changed during the run: left alone
    failed: int = 0
    temp_removed: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    listing: list[list] | None = None  # with list_files: [guest path, store entry, size] per (would-be) link

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_mode(mode: str, store_dir: Path, dry_run: bool) -> tuple[str | None, str]:
    """auto -> vserver, else reflink, else refuse (a dry run continues and says why)."""
    if mode != "auto":
        if mode not in MODES:
            raise ImageFactoryError(f"unknown mode {mode!r} (choose auto, {', '.join(MODES)})")
        return mode, "chosen with --mode"
    result = probe.probe(store_dir)
    if result.auto_mode is None and not dry_run:
        raise EnvironmentProblem(f"--mode auto refuses: {result.reason}")
    return result.auto_mode, result.reason


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


def _syncfs(path: Path) -> None:
    """syncfs(2) the filesystem holding path (one flush for all new entries, not one per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


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


class Unifier:
    def __init__(self, roots, store: Store, prot: Protection | None, summary: Summary, *, dry_run: bool,
                 ignore_mtime: bool, min_size: int, exclude_file: Path | None, progress: Progress) -> None:
        self.roots = [Path(r) for r in roots]
        self.store = store
        self.prot = prot
        self.s = summary
        self.dry_run = dry_run
        self.ignore_mtime = ignore_mtime
        self.min_size = min_size
        self.exclude_file = exclude_file
        self.progress = progress
        self.root_fds: list[int] = []
        self.old_records: list[dict] = []
        self.merged: set[tuple[int, int]] = set()  # guest inodes replaced in the current group
        self.warned = 0
        self.buf = bytearray(CHUNK)

    @property
    def protection(self) -> Protection:
        """The mode's protection: only a run with a sharing mode creates or links entries."""
        if self.prot is None:
            raise ImageFactoryError("no usable sharing mode: nothing can be created or linked")
        return self.prot

    # -- phase 2: walk and hash --------------------------------------------------------------
    def scan(self) -> tuple[list[dict], dict[str, list[FileRef]], set[str]]:
        """Per guest new index records, entry name -> guest files to link to it, and the names
        of the entries some guest file already is."""
        shares = self.prot is None or self.prot.shares_inode
        store_names = self.store.names() if self.store.exists() else set()
        store_sizes = {int(n.rsplit("-", 1)[1]) for n in store_names}
        counts: Counter = Counter()
        records: list[dict] = []
        known: list[tuple[FileRef, str]] = []
        unknown: list[FileRef] = []
        already: dict[str, list[FileRef]] = defaultdict(list)
        for root in self.roots:
            self.root_fds.append(open_root(root))
        # (Walking guests in threads was measured: slower warm and no faster cold, GIL-bound.)
        for g in range(len(self.roots)):
            old, new, g_known, g_unknown, g_already, g_counts = self._scan_guest(g, store_names, shares)
            self.old_records.append(old)
            records.append(new)
            known += g_known
            unknown += g_unknown
            for entry, refs in g_already.items():
                already[entry] += refs
            counts.update(g_counts)
        for key in ("dirs", "files", "special", "excluded", "conffiles", "too_small"):
            setattr(self.s, key, counts[key])
        self.s.guests = len(self.roots)
        self.s.index_hits = len(known)

        sizes = Counter(ref.st.st_size for ref in unknown)
        sizes.update(ref.st.st_size for ref, _ in known)
        sizes.update(ref.st.st_size for refs in already.values() for ref in refs)
        to_hash = [r for r in unknown if sizes[r.st.st_size] > 1 or r.st.st_size in store_sizes]
        self.s.candidates = len(unknown) + len(known) + sum(map(len, already.values()))
        for ref in unknown:
            records[ref.guest][ref.rel] = [*_fingerprint(ref.st), "", "", ""]
        groups: dict[str, list[FileRef]] = defaultdict(list)
        for ref, name in known:
            groups[name].append(ref)
        self._hash(to_hash, records, groups)
        for refs in already.values():
            self.s.already_unified += len(refs)
            self.s.already_bytes += refs[0].st.st_size * len(refs)
        # Worth linking: two or more distinct inodes, or an entry already in the store. (Names that
        # already share one inode inside a guest, like perl and perl5.x, gain nothing on their own.)
        linkable = {
            name: refs for name, refs in groups.items()
            if name in store_names or len({(r.st.st_dev, r.st.st_ino) for r in refs}) > 1
        }
        return records, linkable, set(already)

    def _scan_guest(self, g: int, store_names: set[str], shares: bool):
        """Walk one guest and sort its files by what the index knows: already unified, digest
        still valid (known), or to be hashed (unknown)."""
        root, root_fd = self.roots[g], self.root_fds[g]
        self.progress.stage(f"walking {root}")
        counts: Counter = Counter()
        matcher = Matcher(load_rules(root, self.exclude_file))
        old = index.read(self.store.root, root)
        new: dict[str, list] = {}
        known: list[tuple[FileRef, str]] = []
        unknown: list[FileRef] = []
        already: dict[str, list[FileRef]] = defaultdict(list)
        leftovers: list[tuple[str, str]] = []
        for ref in walk(g, root_fd, matcher, self.min_size, config_files(root_fd), counts, leftovers):
            rec = old.get(ref.rel)
            if rec is not None and rec[index.DIGEST]:
                st = ref.st
                fp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                entry = rec[index.ENTRY]
                if entry and rec[0] == fp[0] and rec[1] == fp[1] and entry in store_names \
                        and (shares or rec[index.CTIME] == fp[4]):
                    new[ref.rel] = rec
                    already[entry].append(ref)
                    continue
                if tuple(rec[:5]) == fp:
                    new[ref.rel] = rec if not entry else [*rec[:7], ""]
                    known.append((ref, f"{rec[index.DIGEST]}-{rec[index.METAKEY]}-{fp[2]}"))
                    continue
            unknown.append(ref)
        if not self.dry_run:
            self._remove_leftovers(root_fd, leftovers)
        return old, new, known, unknown, already, counts

    def _hash(self, refs: list[FileRef], records: list[dict], groups: dict[str, list[FileRef]]) -> None:
        dirs = _DirCache(self.root_fds)  # refs are in walk order: one directory's files are adjacent
        total = len(refs)
        try:
            for i, ref in enumerate(refs, 1):
                self.progress.count("hashing", i, total, " files")
                fd = self._open_guest_file(ref, dirs)
                if fd is None:
                    continue
                try:
                    st = os.fstat(fd)
                    if _fingerprint(st) != _fingerprint(ref.st):
                        self.s.changed += 1
                        continue
                    meta = meta_of(st, read_xattrs(fd), self.ignore_mtime)
                    digest, length = hash_fd(fd, self.buf)
                finally:
                    os.close(fd)
                if length != st.st_size:
                    self.s.changed += 1
                    continue
                self.s.hashed += 1
                self.s.hashed_bytes += length
                metakey = meta.key()
                records[ref.guest][ref.rel] = [*_fingerprint(st), digest, metakey, ""]
                groups[entry_name(digest, metakey, length)].append(ref)
        finally:
            dirs.close()

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
        fd = os.open(name, FILE_FLAGS, dir_fd=dfd)
        try:
            prot = self.prot or Protection("hardlink")
            flags = probe.get_flags(fd, prot.ioctl)
            prot.unprotect(fd)
            os.unlink(name, dir_fd=dfd)
            if flags & (probe.FS_IMMUTABLE_FL | probe.FS_IXUNLINK_FL):
                probe.set_flags(fd, flags, prot.ioctl)
        finally:
            os.close(fd)

    # -- phase 3: store entries --------------------------------------------------------------
    def create_entries(self, linkable: dict[str, list[FileRef]], store_names: set[str]) -> tuple[int, int]:
        """Create the missing entries (adding them to store_names); returns their size and disk use."""
        dirs = _DirCache(self.root_fds)
        created = blocks = 0
        new = [n for n in sorted(linkable) if n not in store_names]
        try:
            for i, name in enumerate(new, 1):
                self.progress.count("store entries", i, len(new))
                for ref in linkable[name]:
                    if self._create_entry(name, ref, dirs):
                        store_names.add(name)
                        self.s.new_entries += 1
                        created += ref.st.st_size
                        blocks += os.stat(self.store.path_of(name)).st_blocks * 512
                        break
        finally:
            dirs.close()
        if linkable:  # entry data on disk before any guest depends on it (also entries an
            _syncfs(self.store.objects)  # earlier, killed run created but never flushed)
        return created, blocks

    def _create_entry(self, name: str, ref: FileRef, dirs: _DirCache) -> bool:
        try:
            src = os.open(ref.name, FILE_FLAGS, dir_fd=dirs.get(ref.guest, ref.dir_rel))
        except OSError:
            return False
        tmp = self.store.tmp / f"{name}.{secrets.token_hex(4)}"
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        done = False
        try:
            st = os.fstat(src)
            if not _unchanged(st, ref.st, src, name.split("-")[1], self.ignore_mtime):
                return False
            xattrs = read_xattrs(src)
            if self.protection.shares_inode:
                digest, length = _copy_hashing(src, dst)
            else:
                probe.clone_file(dst, src)
                cfd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    digest, length = hash_fd(cfd, self.buf)
                finally:
                    os.close(cfd)
            meta = meta_of(st, xattrs, self.ignore_mtime)
            if entry_name(digest, meta.key(), length) != name:
                return False  # changed under us
            apply_meta(dst, st, xattrs)
            path = self.store.path_of(name)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            os.rename(tmp, path)
            done = True
            return True
        finally:
            os.close(src)
            os.close(dst)
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    # -- phase 4: link -----------------------------------------------------------------------
    def link_all(self, linkable: dict[str, list[FileRef]], store_names: set[str], records: list[dict]) -> None:
        dirs = _DirCache(self.root_fds)
        total = sum(len(v) for k, v in linkable.items() if k in store_names)
        done = 0
        try:
            for name in sorted(linkable):
                if name not in store_names:
                    continue
                path = self.store.path_of(name)
                efd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    self.protection.unprotect(efd)
                    self.merged.clear()
                    for ref in sorted(linkable[name], key=lambda r: (r.guest, r.rel)):
                        done += 1
                        self.progress.count("linking", done, total, " files")
                        self._link_one(ref, name, path, efd, dirs, records)
                    # Several paths may share one inode (perl and perl5.x): it is freed once.
                    first = linkable[name][0].st
                    self.s.duplicates += len(self.merged)
                    self.s.bytes_saved += len(self.merged) * first.st_size
                    self.s.disk_saved += len(self.merged) * first.st_blocks * 512
                finally:
                    with contextlib.suppress(OSError):
                        self.protection.protect(efd)
                    os.close(efd)
        finally:
            dirs.close()

    def _open_guest_file(self, ref: FileRef, dirs: _DirCache) -> int | None:
        """An fd for a guest file (never through a symlink); None, counted as changed, if it is gone."""
        try:
            return os.open(ref.name, FILE_FLAGS, dir_fd=dirs.get(ref.guest, ref.dir_rel))
        except OSError:
            self.s.changed += 1
            return None

    def _link_one(self, ref: FileRef, name: str, path: Path, efd: int, dirs: _DirCache, records: list[dict]) -> None:
        gfd = self._open_guest_file(ref, dirs)
        if gfd is None:
            return
        dfd = dirs.get(ref.guest, ref.dir_rel)
        tmp = f"{TMP_PREFIX}{secrets.token_hex(6)}"
        try:
            gst = os.fstat(gfd)
            if not _unchanged(gst, ref.st, gfd, name.split("-")[1], self.ignore_mtime):
                self.s.changed += 1
                return
            if self.protection.shares_inode and (gst.st_dev, gst.st_ino) == self._entry_id(efd):
                self.s.already_unified += 1  # index was lost; the file already is the entry
                self.s.already_bytes += gst.st_size
                rec = records[ref.guest][ref.rel]
                records[ref.guest][ref.rel] = [*_fingerprint(gst), rec[index.DIGEST], rec[index.METAKEY], name]
                return
            if not same_content(gfd, efd):
                self.s.collisions += 1
                self._warn(f"XXH3 collision or concurrent change, left private: {self.roots[ref.guest]}/{ref.rel}")
                return
            if self.protection.shares_inode:
                os.link(path, tmp, dst_dir_fd=dfd, follow_symlinks=False)
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
                return
            os.rename(tmp, ref.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            new = os.stat(ref.name, dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            self.s.failed += 1
            self._warn(f"{self.roots[ref.guest]}/{ref.rel}: {exc.strerror}")
            return
        finally:
            os.close(gfd)
        rec = records[ref.guest][ref.rel]
        records[ref.guest][ref.rel] = [*_fingerprint(new), rec[index.DIGEST], rec[index.METAKEY], name]
        self.s.linked += 1
        if self.s.listing is not None:
            self.s.listing.append([str(self.roots[ref.guest] / ref.rel), name, ref.st.st_size])
        self.merged.add((ref.st.st_dev, ref.st.st_ino))

    def _warn(self, text: str) -> None:
        """Keep the first MAX_WARNINGS file warnings; the counters hold the totals."""
        self.warned += 1
        if self.warned <= MAX_WARNINGS:
            self.s.warnings.append(text)
        elif self.warned == MAX_WARNINGS + 1:
            self.s.warnings.append("further per-file warnings suppressed (see the counters)")

    def reprotect(self, names: set[str]) -> None:
        """Re-assert the flags on entries this run did not link to (a run killed between lifting
        and restoring them may have linked every guest already, so nothing else would)."""
        if not self.protection.flags:
            return
        for name in names:
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


def _estimate(summary: Summary, linkable: dict[str, list[FileRef]], store_names: set[str], roots) -> None:
    """What a real run would link and save (counted the way link_all counts what it did)."""
    for name, refs in linkable.items():
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
    mode: str = "auto",
    dry_run: bool = False,
    ignore_mtime: bool = False,
    min_size: int = 16,
    exclude_file: Path | None = None,
    progress: Progress | None = None,
    ioctl=None,
    list_files: bool = False,
) -> Summary:
    """Unify identical files of `roots` into `store`; see the module docstring for the order of work.

    `list_files` fills Summary.listing with every file linked (or, dry run, that would be).
    `ioctl` replaces fcntl.ioctl for attribute flags (a test seam for vserver mode).
    A dry run links nothing and changes no guest, but it does create the store
    directory and record digests in the index, so the real run need not re-read them.
    """
    started = time.monotonic()
    progress = progress or Progress(quiet=True)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # hundreds of thousands of long-lived records: collector passes only cost time
    try:
        return _unify(roots, store, mode, dry_run, ignore_mtime, min_size, exclude_file, progress, ioctl,
                      list_files, started)
    finally:
        if gc_was_enabled:
            gc.enable()


def _unify(roots, store, mode, dry_run, ignore_mtime, min_size, exclude_file, progress, ioctl, list_files,
           started) -> Summary:
    store_obj = Store(store)
    if not roots:
        raise ImageFactoryError("no guest roots given")
    roots = list(dict.fromkeys(Path(os.path.abspath(r)) for r in roots))
    store_abs = Path(os.path.realpath(store))
    for r in roots:
        real = Path(os.path.realpath(r))
        if store_abs == real or store_abs.is_relative_to(real) or real.is_relative_to(store_abs):
            raise ImageFactoryError(f"the store {store} and the guest root {r} must not contain each other")
    store_obj.create(None)
    chosen, reason = resolve_mode(mode, store_obj.root, dry_run)
    summary = Summary(chosen, reason, dry_run, str(store_obj.root), listing=[] if list_files else None)
    if chosen in WARNINGS:
        summary.warnings.append(WARNINGS[chosen])
    if chosen is None:
        summary.warnings.append(f"no usable sharing mode, dry run only: {reason}")
    prot = None
    if chosen:
        prot = Protection(chosen, ioctl) if ioctl else Protection(chosen)
    with store_obj.locked():
        if chosen and not dry_run:
            store_obj.set_mode(chosen)
            summary.temp_removed += store_obj.clean_tmp()
            if chosen == "vserver" and prot is not None and not prot.barrier(store_obj.root):
                summary.warnings.append("the kernel has no chroot barrier flag; the store root is not barriered")
        store_dev = os.stat(store_obj.root).st_dev
        for r in roots:
            if os.stat(r).st_dev != store_dev and not dry_run:
                raise EnvironmentProblem(f"{r} is not on the store's filesystem ({store_obj.root}); "
                                         "links and reflinks cannot cross filesystems")
        u = Unifier(roots, store_obj, prot, summary, dry_run=dry_run, ignore_mtime=ignore_mtime,
                    min_size=min_size, exclude_file=exclude_file, progress=progress)
        try:
            records, linkable, in_use = u.scan()
            store_names = store_obj.names()
            if dry_run:
                _estimate(summary, linkable, store_names, u.roots)
            else:
                progress.stage(f"creating store entries ({chosen} mode)")
                created, created_blocks = u.create_entries(linkable, store_names)
                summary.bytes_saved -= created
                summary.disk_saved -= created_blocks
                progress.stage("linking")
                u.link_all(linkable, store_names, records)
                u.reprotect(in_use - linkable.keys())
            summary.duplicates -= summary.new_entries
            for root, recs, old in zip(u.roots, records, u.old_records, strict=True):
                if recs != old:
                    index.write(store_obj.root, root, recs, chosen)
        finally:
            u.close()
    summary.seconds = round(time.monotonic() - started, 3)
    return summary
