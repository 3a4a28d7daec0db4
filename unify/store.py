"""The shared content store: one inode (or one extent set, in reflink mode) per distinct file.

Layout of a store directory S (all directories 0700, so a guest that can see a
link to an entry still cannot browse the store):

    S/.imagefactory-store   JSON {"format": 1, "hash": "xxh3-128", "mode": MODE}; the mode a
                            store was first used with (vserver|reflink|immutable|hardlink)
    S/.lock                 flock()ed for the whole of every run that changes the store
    S/objects/DD/NAME       store entries; NAME = "<digest>-<metakey>-<size>"
                              digest  = 32 hex, XXH3-128 of the content
                              metakey = 16 hex, XXH3-64 of (st_mode, uid, gid, mtime_ns or 0
                                        with --ignore-mtime, sorted xattrs)
                              size    = decimal byte count
                            DD = the first two hex digits of the digest
    S/tmp/                  entries being written; emptied at the start of each run
    S/objects/DD/NAME-N     the N-th overflow entry of the same content, started when the
                            previous one reached the filesystem's link limit (EMLINK)
    S/index.sqlite          the index of every guest's files (see unify/index.py)

An entry's name is the whole key, so `--status`/`--gc` need only a directory
listing, `--verify` can re-derive every name from content and metadata, and a
run over a single new guest can tell from names alone (size) which of its files
could match an existing entry. In hardlink-sharing modes a guest file is
unified when it *is* the entry's inode: st_nlink - 1 = the number of guest
links. In reflink mode every guest keeps its own inode and the index records
which entry it was cloned from.

Collision policy: XXH3 is fast but not cryptographic, and a guest is hostile:
it could craft a file whose XXH3-128 equals that of /bin/ls in other guests.
So an entry is only ever linked into a guest after a byte-for-byte comparison
with the guest's file, and each entry's content is hashed from the very bytes
written into the store. A crafted collision therefore costs a comparison and
is reported; it never links a guest to foreign content.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from imagefactory.core.atomic import write_text
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError

FORMAT = 1
HASH_NAME = "xxh3-128"
MARKER = ".imagefactory-store"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Meta:
    """The metadata a hard link shares, so it is part of the key."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...] = ()

    def key(self) -> str:
        h = xxhash.xxh3_64(struct.pack("<IIIq", self.mode, self.uid, self.gid, self.mtime_ns))
        for name, value in self.xattrs:
            h.update(b"\0" + name.encode("utf-8", "surrogateescape") + b"\0" + struct.pack("<I", len(value)) + value)
        return h.hexdigest()


def read_xattrs(fd: int) -> tuple[tuple[str, bytes], ...]:
    """All xattrs of an open file, sorted (part of the key: security.capability on ping...)."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    return tuple(sorted((n, os.getxattr(fd, n)) for n in names))


def meta_of(st: os.stat_result, xattrs: tuple, ignore_mtime: bool) -> Meta:
    return Meta(st.st_mode, st.st_uid, st.st_gid, 0 if ignore_mtime else st.st_mtime_ns, xattrs)


def entry_name(digest: str, metakey: str, size: int, copy: int = 0) -> str:
    """An entry's name; copy n > 0 is the n-th overflow entry of the same content, started when
    the previous one reached the filesystem's link limit (EMLINK: 65,000 links on ext4)."""
    return f"{digest}-{metakey}-{size}-{copy}" if copy else f"{digest}-{metakey}-{size}"


def parse_entry_name(name: str) -> tuple[str, str, int] | None:
    """(digest, metakey, size) of a store entry name (overflow entries too), or None for anything else."""
    parts = name.split("-")
    if len(parts) not in (3, 4) or len(parts[0]) != 32 or len(parts[1]) != 16 or not parts[2].isdigit() \
            or (len(parts) == 4 and not (parts[3].isdigit() and parts[3][0] != "0")):
        return None
    return parts[0], parts[1], int(parts[2])


def entry_key(name: str) -> tuple[bytes, bytes, int, int]:
    """(digest, metakey, size, copy) of an entry name, as the index stores them."""
    parts = name.split("-")
    return bytes.fromhex(parts[0]), bytes.fromhex(parts[1]), int(parts[2]), int(parts[3]) if len(parts) == 4 else 0


def copy_of(name: str) -> int:
    """0 for an entry, n for its n-th link-limit overflow entry."""
    parts = name.split("-")
    return int(parts[3]) if len(parts) == 4 else 0


def hash_fd(fd: int, buf: bytearray | None = None) -> tuple[str, int]:
    """XXH3-128 hex digest and length of everything readable from fd (from its current offset)."""
    h = xxhash.xxh3_128()
    buf = buf if buf is not None else bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while n := os.readv(fd, [buf]):
        h.update(view[:n])
        total += n
    return h.hexdigest(), total


def same_content(fd_a: int, fd_b: int) -> bool:
    """Byte-for-byte comparison of two open files from offset 0 (the collision guard)."""
    offset = 0
    while True:
        a = os.pread(fd_a, CHUNK, offset)
        b = os.pread(fd_b, CHUNK, offset)
        if a != b:
            return False
        if not a:
            return True
        offset += len(a)


@dataclass(frozen=True)
class StoreEntry:
    name: str
    path: Path
    digest: str
    metakey: str
    size: int
    nlink: int
    ino: int
    copy: int = 0  # n > 0: the n-th link-limit overflow entry of this content


class Store:
    """A store directory; creating one is idempotent."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.index = self.root / "index.sqlite"

    def exists(self) -> bool:
        return (self.root / MARKER).is_file()

    def info(self) -> dict:
        try:
            return json.loads((self.root / MARKER).read_text())
        except (OSError, ValueError):
            return {}

    def create(self, mode: str | None) -> None:
        for d in (self.root, self.objects, self.tmp):
            d.mkdir(mode=0o700, exist_ok=True)
        info = self.info()
        if not info or (mode and not info.get("mode")):
            write_text(self.root / MARKER, json.dumps({"format": FORMAT, "hash": HASH_NAME, "mode": mode}) + "\n")

    def set_mode(self, mode: str) -> None:
        """Record the sharing mode; a store keeps one mode for life (mixing would mislead gc)."""
        recorded = self.info().get("mode")
        if recorded and recorded != mode:
            raise ImageFactoryError(
                f"store {self.root} was created in {recorded} mode; refusing to mix in {mode} "
                f"(use --mode {recorded}, or --split the guests and start a new store)"
            )
        if not recorded:
            write_text(self.root / MARKER, json.dumps({"format": FORMAT, "hash": HASH_NAME, "mode": mode}) + "\n")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EnvironmentProblem(f"another unify run holds {self.root}/.lock") from None
            yield
        finally:
            os.close(fd)

    def path_of(self, name: str) -> Path:
        return self.objects / name[:2] / name

    def names(self) -> set[str]:
        """Every entry name (a directory listing only: no stat)."""
        return set(self.inodes())

    def inodes(self) -> dict[str, int]:
        """Every entry name with its inode number, from the directory listing alone (readdir's
        d_ino: no stat)."""
        out: dict[str, int] = {}
        if not self.objects.is_dir():
            return out
        for sub in os.scandir(self.objects):
            if sub.is_dir(follow_symlinks=False):
                with os.scandir(sub.path) as it:
                    for e in it:
                        if parse_entry_name(e.name):
                            out[e.name] = e.inode()
        return out

    def entries(self) -> Iterator[StoreEntry]:
        """Every entry with its link count (nlink - 1 = guest links in hardlink-sharing modes)."""
        for name in sorted(self.names()):
            path = self.path_of(name)
            parsed = parse_entry_name(name)
            if parsed is None:
                continue
            digest, metakey, size = parsed
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(path)
                yield StoreEntry(name, path, digest, metakey, size, st.st_nlink, st.st_ino, copy_of(name))

    def clean_tmp(self) -> int:
        """Remove half-written entries from a killed run."""
        removed = 0
        if self.tmp.is_dir():
            for e in os.scandir(self.tmp):
                os.unlink(e.path)
                removed += 1
        return removed
