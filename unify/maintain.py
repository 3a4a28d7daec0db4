"""Store upkeep: --status, --verify, --gc, and --split (de-unify one guest).

"In use" depends on the mode the store was made with: in inode-sharing modes
an entry is used while it has links besides its store name (nlink > 1; the
kernel's count cannot go stale); in reflink mode guests hold private inodes, so
the per-guest indexes say which entries they were cloned from.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imagefactory.core.errors import ImageFactoryError
from unify import index
from unify.engine import apply_meta
from unify.exclude import Matcher
from unify.protect import Mode, Protection
from unify.store import Store, hash_fd, meta_of, read_xattrs
from unify.walk import TMP_PREFIX, open_dir, open_root, walk


def _open_store(store_dir: Path) -> Store:
    store = Store(store_dir)
    if not store.exists():
        raise ImageFactoryError(f"{store_dir} is not a unify store (no .imagefactory-store)")
    return store


def _in_use(store: Store):
    """A predicate entry -> bool for this store's mode."""
    if store.info().get("mode") == "reflink":
        refs = index.referenced_entries(store.root)
        return lambda e: e.name in refs
    return lambda e: e.nlink > 1


@dataclass
class Status:
    store: str
    mode: str | None
    entries: int = 0
    entry_bytes: int = 0
    guest_links: int = 0  # guest files sharing an entry
    orphans: int = 0  # entries no guest uses (what --gc removes)
    orphan_bytes: int = 0
    overflow_entries: int = 0  # second (third...) entries of a content whose entry hit the link limit
    bytes_saved: int = 0  # what the guests would use without sharing, minus the store
    guests: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def status(store_dir: Path) -> Status:
    store = _open_store(store_dir)
    mode = store.info().get("mode")
    st = Status(str(store.root), mode, guests=[root for root, _ in index.guests(store.root)])
    uses = index.entry_uses(store.root) if mode == "reflink" else {}
    for e in store.entries():
        st.overflow_entries += e.copy > 0
        links = uses.get(e.name, 0) if mode == "reflink" else e.nlink - 1
        st.entries += 1
        st.entry_bytes += e.size
        st.guest_links += links
        st.bytes_saved += e.size * (links - 1)
        if links == 0:
            st.orphans += 1
            st.orphan_bytes += e.size
    return st


@dataclass
class Problem:
    entry: str
    problem: str


def verify(store_dir: Path, ioctl=None, progress=None) -> tuple[int, list[Problem]]:
    """Re-hash every entry; compare content, size, metadata key and protection flags with its name."""
    store = _open_store(store_dir)
    total = len(store.names())
    mode = store.info().get("mode")
    prot = Protection.of(mode, ioctl) if mode else None
    problems: list[Problem] = []
    checked = 0
    buf = bytearray(1 << 20)
    for e in store.entries():
        checked += 1
        if progress:
            progress.count("verifying", checked, total, " entries")
        fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            digest, length = hash_fd(fd, buf)
            xattrs = read_xattrs(fd)
            if digest != e.digest or length != e.size:
                problems.append(Problem(e.name, f"content changed (now {length} bytes, xxh3-128 {digest})"))
            keys = {meta_of(st, xattrs, ignore).key() for ignore in (False, True)}
            if e.metakey not in keys:
                now = f"mode {st.st_mode:o}, owner {st.st_uid}:{st.st_gid}"
                problems.append(Problem(e.name, f"metadata changed ({now})"))
            if prot and not prot.is_protected(fd):
                problems.append(Problem(e.name, f"not protected ({mode} flags missing)"))
        finally:
            os.close(fd)
    return checked, problems


def gc(store_dir: Path, dry_run: bool = False, ioctl=None) -> dict:
    """Remove entries no guest uses, and indexes of guest roots that no longer exist."""
    store = _open_store(store_dir)
    out = {"removed": 0, "bytes": 0, "indexes_removed": 0, "dry_run": dry_run}
    with store.locked():
        for root, _ in list(index.guests(store.root)):
            if not os.path.isdir(root):
                out["indexes_removed"] += 1
                if not dry_run:
                    index.remove(store.root, Path(root))
        used = _in_use(store)
        prot = Protection.of(Mode.HARDLINK, ioctl)
        for e in store.entries():
            if used(e):
                continue
            out["removed"] += 1
            out["bytes"] += e.size
            if not dry_run:
                fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    prot.unprotect(fd)
                finally:
                    os.close(fd)
                os.unlink(e.path)
        if not dry_run:
            store.clean_tmp()
    return out


def split(root: Path, store_dir: Path, ioctl=None) -> dict:
    """Give one guest private copies of every file it shares with the store, then forget it.

    Each copy is written to a temp name beside the file and renamed over it, so
    an interrupted split leaves every path valid; run it again to finish.
    """
    store = _open_store(store_dir)
    prot = Protection.of(Mode.HARDLINK, ioctl)
    copied = copied_bytes = 0
    with store.locked():
        by_inode = {}
        if store.info().get("mode") != "reflink":  # reflink guests already own their inodes
            dev = os.stat(store.objects).st_dev
            by_inode = {(dev, e.ino): e for e in store.entries() if e.nlink > 1}
        root_fd = open_root(root)
        counts: Counter = Counter()
        leftovers: list = []
        try:
            shared = [r for r in walk(0, root_fd, Matcher([]), 0, set(), counts, leftovers)
                      if r.st.st_nlink > 1 and (r.st.st_dev, r.st.st_ino) in by_inode]
            for dir_rel, name in leftovers:
                with contextlib.suppress(OSError):
                    dfd = open_dir(root_fd, dir_rel)
                    try:
                        with prot.restoring_at(dfd, name):
                            os.unlink(name, dir_fd=dfd)
                    finally:
                        os.close(dfd)
            for ref in shared:
                entry = by_inode[(ref.st.st_dev, ref.st.st_ino)]
                try:
                    _private_copy(root_fd, ref, entry.path, prot)
                except OSError as exc:
                    raise ImageFactoryError(f"split {root}/{ref.rel}: {exc.strerror}") from None
                copied += 1
                copied_bytes += ref.st.st_size
        finally:
            os.close(root_fd)
        index.remove(store.root, root)
    return {"guest": str(root), "copied": copied, "bytes": copied_bytes, "failed": 0}


def _private_copy(root_fd: int, ref, entry_path: Path, prot: Protection) -> None:
    dfd = open_dir(root_fd, ref.dir_rel)
    tmp = f"{TMP_PREFIX}{os.urandom(6).hex()}"
    try:
        src = os.open(entry_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            st = os.fstat(src)
            while os.copy_file_range(src, dst, 1 << 30):
                pass
            apply_meta(dst, st, read_xattrs(src))
        finally:
            os.close(src)
            os.close(dst)
        with prot.restoring_at(dfd, ref.name):
            os.rename(tmp, ref.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    finally:
        os.close(dfd)
