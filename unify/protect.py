"""The four sharing modes: how an entry reaches a guest and what protects it there.

    vserver    shared inode, IMMUTABLE+IXUNLINK: content and metadata frozen, but a
               guest may unlink/rename over its name, so package updates work.
    reflink    FICLONE copy: every guest keeps its own inode sharing extents
               copy-on-write; nothing a guest does can reach the store or others.
    immutable  shared inode, IMMUTABLE only (mainline kernels): safe, but a guest
               can no longer replace a unified file (dpkg fails with EPERM).
    hardlink   shared inode, no protection: a guest writing in place changes the
               file for every guest. Trusted guests only.

Linux refuses link() to an immutable inode, so protected modes clear the flags
on the entry, link the new guests, and set them again (and a later run
re-asserts them on every entry it touches). Two context managers hold that
"lift, act, restore" dance, so no caller writes it by hand:

    Protection.reasserting(fd)        store entries: afterwards the mode's flags, whatever they were
    Protection.restoring_at(dfd, name)  guest names: afterwards the flags the inode had
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from imagefactory.core.errors import ImageFactoryError
from unify import probe
from unify.walk import FILE_FLAGS


class Mode(StrEnum):
    VSERVER = "vserver"
    REFLINK = "reflink"
    IMMUTABLE = "immutable"
    HARDLINK = "hardlink"


MODES = tuple(m.value for m in Mode)
AUTO = "auto"  # --mode auto: the engine picks vserver, else reflink (unify.probe)
PROTECTION_FLAGS = probe.FS_IMMUTABLE_FL | probe.FS_IXUNLINK_FL

WARNINGS = {
    "immutable": "immutable mode: unified files cannot be replaced inside a guest; package updates "
    "touching them will fail with 'Operation not permitted' until the guest is --split",
    "hardlink": "HARDLINK MODE: unified files are NOT protected; any guest writing one in place "
    "changes it for every guest. Use only for guests you fully trust",
}


@dataclass(frozen=True)
class Protection:
    mode: Mode
    ioctl: Callable = field(default=fcntl.ioctl, compare=False)  # seam for vserver-mode tests

    @classmethod
    def of(cls, mode: str, ioctl: Callable | None = None) -> Protection:
        try:
            return cls(Mode(mode), ioctl or fcntl.ioctl)
        except ValueError:
            raise ImageFactoryError(f"unknown mode {mode!r} (choose {', '.join(MODES)})") from None

    @property
    def flags(self) -> int:
        return {
            "vserver": probe.FS_IMMUTABLE_FL | probe.FS_IXUNLINK_FL,
            "immutable": probe.FS_IMMUTABLE_FL,
        }.get(self.mode, 0)

    @property
    def shares_inode(self) -> bool:
        return self.mode != "reflink"

    def protect(self, fd: int) -> None:
        if self.flags:
            probe.change_flags(fd, add=self.flags, ioctl=self.ioctl)

    def unprotect(self, fd: int) -> None:
        """Clear every protection flag (also those of another mode, e.g. before --split)."""
        if self.shares_inode:
            probe.change_flags(fd, remove=PROTECTION_FLAGS, ioctl=self.ioctl)

    @contextlib.contextmanager
    def reasserting(self, fd: int) -> Iterator[None]:
        """Flags lifted for the body (linking guests to a store entry), then this mode's flags set.

        Setting them again is best effort: the next run re-asserts them (reprotect)."""
        self.unprotect(fd)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                self.protect(fd)

    @contextlib.contextmanager
    def restoring_at(self, dir_fd: int, name: str) -> Iterator[None]:
        """Flags of dir_fd/name's inode lifted for the body (unlink or rename over a protected
        name), then the flags it had put back on the inode (other guests may still link it)."""
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
        try:
            flags = probe.get_flags(fd, self.ioctl)
            self.unprotect(fd)
            try:
                yield
            finally:
                if flags & PROTECTION_FLAGS:
                    probe.set_flags(fd, flags, self.ioctl)
        finally:
            os.close(fd)

    def barrier(self, directory) -> bool:
        """Put the VServer chroot barrier on the store root, as vhashify does: a guest that
        somehow holds a path into the store still cannot walk above it. False where the
        kernel has IXUNLINK but no barrier (our own 6.1 patch provides only IXUNLINK)."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            probe.change_flags(fd, add=probe.FS_BARRIER_FL, ioctl=self.ioctl)
            return True
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                return False
            raise
        finally:
            os.close(fd)

    def is_protected(self, fd: int) -> bool:
        return not self.flags or probe.get_flags(fd, self.ioctl) & self.flags == self.flags
