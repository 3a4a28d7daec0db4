"""Read an image straight into a composefs store: objects once, plus the guest's listing.

Nothing of the image is written as a tree: each regular file's content is hashed (fs-verity
digest) from the stream and written to the store only if the store lacks it; everything
else becomes a line of the listing. The same checks as a plain unpack (unpack.MemberFilter)
are made on names, but against the listing instead of the disk: no absolute or '..' names,
no name twice, every parent a directory of the image (never a symlink), relative symlinks
stay inside the root, hard links only to earlier regular files, character devices only from
util-vserver's secure /dev set, no block devices.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from decimal import Decimal
from typing import BinaryIO

import zstandard

from imagefactory.core.errors import ImageFactoryError, UnsafeInput
from imagefactory.core.progress import Progress
from imagefactory.seed.unpack import SECURE_DEV, _wanted_xattrs
from unify.composefs.dump import Entry, object_path
from unify.composefs.store import ObjectStore
from unify.composefs.verity import VerityHasher

CHUNK = 1 << 20
IN_MEMORY = 64 << 20  # larger files are spooled to the store's tmp/ while hashed

_TYPES = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK, tarfile.CHRTYPE: stat.S_IFCHR,
          tarfile.FIFOTYPE: stat.S_IFIFO, tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG,
          tarfile.CONTTYPE: stat.S_IFREG}


def _mtime_ns(member: tarfile.TarInfo) -> int:
    text = member.pax_headers.get("mtime")
    return int(Decimal(text) * 1_000_000_000) if text else int(member.mtime) * 1_000_000_000


class ImageReader:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.entries: list[Entry] = [Entry(path="/", mode=stat.S_IFDIR | 0o755)]
        self.by_path: dict[str, Entry] = {"/": self.entries[0]}

    def read(self, fileobj: BinaryIO, total: int = 0, progress: Progress | None = None) -> list[Entry]:
        progress = progress or Progress(quiet=True)
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(fileobj, closefd=False)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for done, member in enumerate(tar, 1):
                    progress.count("read", done, max(total, done), " entries")
                    self._member(tar, member)
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            raise ImageFactoryError(f"image is not a valid .tar.zst: {exc}") from None
        return self.entries

    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise UnsafeInput(f"image member {name!r}: absolute or '..' path")
        rel = posixpath.normpath(name)
        return "/" if rel == "." else "/" + rel

    def _member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        path = self._path(m.name)
        if path == "/":  # the root's own entry only sets its owner and times (mode stays 0755)
            root = self.entries[0]
            root.uid, root.gid, root.mtime_ns = m.uid, m.gid, _mtime_ns(m)
            return
        if path in self.by_path:
            raise UnsafeInput(f"image member {m.name!r}: appears twice in the image")
        parent = self.by_path.get(posixpath.dirname(path))
        if parent is None or not stat.S_ISDIR(parent.mode) or parent.hardlink:
            raise UnsafeInput(f"image member {m.name!r}: its parent is not a directory of the image")
        e = Entry(path=path, mode=stat.S_IMODE(m.mode), uid=m.uid, gid=m.gid, mtime_ns=_mtime_ns(m),
                  xattrs=_wanted_xattrs(m))
        if m.islnk():
            first = self.by_path.get(self._path(m.linkname))
            if first is None or not stat.S_ISREG(first.mode) or first.hardlink:
                raise UnsafeInput(f"image member {m.name!r}: hard link to {m.linkname!r}, "
                                  "not a regular file of the image")
            first.nlink += 1
            e.mode, e.hardlink, e.payload = first.mode, True, first.path
            e.size, e.digest, e.uid, e.gid, e.mtime_ns, e.xattrs = (first.size, first.digest, first.uid,
                                                                    first.gid, first.mtime_ns, first.xattrs)
        elif m.type not in _TYPES:
            raise UnsafeInput(f"image member {m.name!r}: unsupported type {m.type!r} (block devices are refused)")
        else:
            e.mode |= _TYPES[m.type]
            if m.issym():
                target = m.linkname
                if not target.startswith("/"):
                    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
                    if not resolved.startswith("/"):
                        raise UnsafeInput(f"image member {m.name!r}: symlink to {target!r} leaves the guest root")
                e.payload, e.size = target, len(target.encode("utf-8", "surrogateescape"))
                e.xattrs = {}
            elif m.ischr():
                expected = SECURE_DEV.get(path.removeprefix("/dev/")) if path.startswith("/dev/") else None
                if expected != (m.devmajor, m.devminor):
                    raise UnsafeInput(f"image member {m.name!r}: character device {m.devmajor},{m.devminor} "
                                      "is not in the secure /dev set")
                e.rdev = os.makedev(m.devmajor, m.devminor)
            elif m.isreg():
                e.size = m.size
                if m.size:
                    e.digest = self._content(tar, m)
                    e.payload = object_path(e.digest)
        self.entries.append(e)
        self.by_path[path] = e

    def _content(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> str:
        src = tar.extractfile(m)
        if src is None:
            raise ImageFactoryError(f"image member {m.name!r}: no content")
        h = VerityHasher()
        if m.size <= IN_MEMORY:
            data = src.read(m.size)
            h.update(data)
            digest = h.hexdigest()
            self.store.add_bytes(data, digest)
            return digest
        fd, tmp = self.store.new_tmp()
        try:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        digest = h.hexdigest()
        if self.store.has(digest):
            os.unlink(tmp)
        else:
            self.store.publish(tmp, digest)
        return digest
