"""The Linux-VServer barrier attribute on the directory holding guest roots.

The barrier stops a chrooted guest from walking up out of its root (the
classic chroot escape); util-vserver expects it on /vservers. Only VServer
kernels know the flag: a mainline kernel refuses it, which we report rather
than hide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from unify.probe import FS_BARRIER_FL, VIRTUAL_INFO, change_flags, get_flags


@dataclass(frozen=True)
class BarrierStatus:
    path: str
    present: bool
    detail: str  # "set", "already set", or why it is not available

    def to_dict(self) -> dict:
        return {"path": self.path, "barrier": self.present, "detail": self.detail}


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def status(path: Path) -> BarrierStatus:
    """Whether path carries the barrier flag (read only)."""
    try:
        fd = _open_dir(path)
    except OSError as exc:
        return BarrierStatus(str(path), False, f"cannot open: {exc.strerror}")
    try:
        present = bool(get_flags(fd) & FS_BARRIER_FL)
    except OSError as exc:
        return BarrierStatus(str(path), False, f"barrier not available: {exc.strerror}")
    finally:
        os.close(fd)
    if present:
        return BarrierStatus(str(path), True, "set")
    if not VIRTUAL_INFO.exists():
        return BarrierStatus(str(path), False, "barrier not available (no VServer kernel)")
    return BarrierStatus(str(path), False, "barrier not set")


def protect(path: Path) -> BarrierStatus:
    """Set the barrier on path where the kernel has it; say why not otherwise."""
    fd = _open_dir(path)
    try:
        if get_flags(fd) & FS_BARRIER_FL:
            return BarrierStatus(str(path), True, "already set")
        change_flags(fd, add=FS_BARRIER_FL)
        if get_flags(fd) & FS_BARRIER_FL:
            return BarrierStatus(str(path), True, "set")
        return BarrierStatus(str(path), False, "barrier not available: the kernel ignored the flag")
    except OSError as exc:
        return BarrierStatus(str(path), False, f"barrier not available: {exc.strerror} (no VServer kernel)")
    finally:
        os.close(fd)
