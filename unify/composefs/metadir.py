"""The metadata layer as a plain directory: one sparse file per guest file, no tool needed.

Each regular file with content becomes an empty file of the right size (no blocks) carrying
    trusted.overlay.metacopy = 00 24 00 01 + fs-verity digest   (struct ovl_metacopy: version 0,
                               length 36, flags 0, algorithm SHA-256; overlayfs checks the digest
                               against the object when mounted with verity=on/require)
    trusted.overlay.redirect = /ab/cdef...                      (the object, looked up in the
                               data-only layer)
plus the guest file's owner, mode, mtime and xattrs. Directories, symlinks, device nodes and
empty files are made as themselves; hard links are hard links. Only this tool writes the layer
and it is never visible inside the guest, so the trusted.* names are not guest input.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from unify.composefs.dump import Entry, object_path

METACOPY = "trusted.overlay.metacopy"
REDIRECT = "trusted.overlay.redirect"
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def metacopy_value(digest: str) -> bytes:
    return bytes([0, 36, 0, 1]) + bytes.fromhex(digest)


def _finish(fd: int, e: Entry) -> None:
    os.fchown(fd, e.uid, e.gid)  # before chmod and xattrs: chown clears setuid bits and capabilities
    os.fchmod(fd, stat.S_IMODE(e.mode))
    for name, value in e.xattrs.items():
        os.setxattr(fd, name, value)
    os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))


def build(target: Path, entries: Iterable[Entry]) -> int:
    """Create the layer in target (which must not exist); returns the number of entries."""
    dirs: list[Entry] = []
    count = 0
    for e in entries:
        count += 1
        rel = e.path.lstrip("/")
        path = os.path.join(target, rel) if rel else str(target)
        kind = stat.S_IFMT(e.mode)
        if e.hardlink:
            os.link(os.path.join(target, e.payload.lstrip("/")), path, follow_symlinks=False)
        elif kind == stat.S_IFDIR:
            os.mkdir(path, 0o700)
            dirs.append(e)
        elif kind == stat.S_IFREG:
            fd = os.open(path, FILE_FLAGS, 0o600)
            try:
                if e.digest:
                    os.ftruncate(fd, e.size)
                    os.setxattr(fd, METACOPY, metacopy_value(e.digest))
                    os.setxattr(fd, REDIRECT, f"/{object_path(e.digest)}".encode())
                _finish(fd, e)
            finally:
                os.close(fd)
        elif kind == stat.S_IFLNK:
            os.symlink(e.payload, path)
            os.chown(path, e.uid, e.gid, follow_symlinks=False)
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
        else:  # character/block devices, FIFOs, sockets
            os.mknod(path, stat.S_IFMT(e.mode) | 0o600, e.rdev)
            os.chown(path, e.uid, e.gid, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(e.mode))
            os.utime(path, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
    for e in reversed(dirs):  # children first changed their parents' mtimes
        rel = e.path.lstrip("/")
        fd = os.open(os.path.join(target, rel) if rel else target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _finish(fd, e)
        finally:
            os.close(fd)
    return count
