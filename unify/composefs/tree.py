"""List a plain guest tree as composefs entries, copying each file's content into the store.

The walk holds a directory fd at every level and opens each name relative to it with
O_NOFOLLOW, so a guest that swaps a directory for a symlink gets an error, never a tour of
the host; other filesystems mounted inside the guest are listed as empty directories. Only
the extended attributes an OS tree needs are kept (file capabilities, ACLs, user.*): never
trusted.* (overlayfs's own names) or other host policy.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from imagefactory.core.errors import ImageFactoryError, UnsafeInput
from unify.composefs.dump import Entry, object_path
from unify.composefs.store import ObjectStore

XATTR_ALLOWED = ("security.capability", "system.posix_acl_access", "system.posix_acl_default")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def wanted_xattr(name: str) -> bool:
    return name in XATTR_ALLOWED or name.startswith("user.")


def read_xattrs(fd: int) -> dict[str, bytes]:
    try:
        names = os.listxattr(fd)
    except OSError:
        return {}
    return {n: os.getxattr(fd, n) for n in sorted(names) if wanted_xattr(n)}


def _entry(path: str, st: os.stat_result, **kw) -> Entry:
    return Entry(path=path, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns, **kw)


class TreeReader:
    """Walks one root; `entries()` yields the listing while objects are added to the store."""

    def __init__(self, root: str, store: ObjectStore) -> None:
        self.root = root
        self.store = store
        self.links: dict[tuple[int, int], str] = {}
        self.files = 0
        self.bytes = 0

    def entries(self) -> Iterator[Entry]:
        try:
            fd = os.open(self.root, DIR_FLAGS)
        except OSError as exc:
            raise UnsafeInput(f"guest root {self.root} is not a directory (or is a symlink): {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            yield _entry("/", st, nlink=st.st_nlink, xattrs=read_xattrs(fd))
            yield from self._walk(fd, "", st.st_dev)
        finally:
            os.close(fd)

    def _walk(self, dfd: int, rel: str, dev: int) -> Iterator[Entry]:
        for name in sorted(os.listdir(dfd)):
            path = f"{rel}/{name}"
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            kind = stat.S_IFMT(st.st_mode)
            if kind == stat.S_IFDIR:
                sub = os.open(name, DIR_FLAGS, dir_fd=dfd)
                try:
                    yield _entry(path, os.fstat(sub), nlink=st.st_nlink, xattrs=read_xattrs(sub))
                    if st.st_dev == dev:
                        yield from self._walk(sub, path, dev)
                finally:
                    os.close(sub)
            elif kind == stat.S_IFREG:
                yield self._file(dfd, name, path, st)
            elif kind == stat.S_IFLNK:
                target = os.readlink(name, dir_fd=dfd)
                yield _entry(path, st, size=len(os.fsencode(target)), payload=target)
            else:
                if kind == stat.S_IFCHR and st.st_rdev == 0:
                    raise ImageFactoryError(f"{self.root}{path}: a 0/0 character device would be an overlayfs "
                                            "whiteout; remove it before converting")
                yield _entry(path, st, rdev=st.st_rdev)

    def _file(self, dfd: int, name: str, path: str, st: os.stat_result) -> Entry:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            return _entry(path, st, size=st.st_size, nlink=st.st_nlink, hardlink=True, payload=self.links[key])
        fd = os.open(name, FILE_FLAGS, dir_fd=dfd)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != key:
                raise ImageFactoryError(f"{self.root}{path} changed during the conversion; stop the guest first")
            digest, size = self.store.add_fd(fd) if now.st_size else ("", 0)
            if size != now.st_size:
                raise ImageFactoryError(f"{self.root}{path} changed during the conversion; stop the guest first")
            xattrs = read_xattrs(fd)
        finally:
            os.close(fd)
        if st.st_nlink > 1:
            self.links[key] = path
        self.files += 1
        self.bytes += size
        return _entry(path, now, size=size, nlink=st.st_nlink, digest=digest,
                      payload=object_path(digest) if digest else "", xattrs=xattrs)
