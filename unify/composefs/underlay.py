"""Remove what a mount hides: the plain tree left under a converted guest's overlay mount.

A conversion mounts the overlay *over* the plain guest root, so the root's path never shows
anything but the guest's content. The old files stay underneath until this module removes
them: it runs in its own private mount namespace (`unshare --mount`), bind-mounts the
parent directory there (a non-recursive bind shows what the overlay covers), and deletes the
hidden tree. The namespace dies with the process, so a SIGKILL leaves no mount behind.

Files that are still immutable links into an older unify store (vserver/immutable modes) are
unprotected just long enough to unlink this guest's name, then protected again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from imagefactory.core.errors import EnvironmentProblem
from unify import probe

MS_BIND = 4096
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PROTECT = probe.FS_IMMUTABLE_FL | probe.FS_IXUNLINK_FL


def _unlink(dfd: int, name: str, is_dir: bool) -> None:
    try:
        os.rmdir(name, dir_fd=dfd) if is_dir else os.unlink(name, dir_fd=dfd)
        return
    except PermissionError:
        pass
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    try:
        flags = probe.get_flags(fd)
        probe.set_flags(fd, flags & ~PROTECT)
        try:
            os.rmdir(name, dir_fd=dfd) if is_dir else os.unlink(name, dir_fd=dfd)
        finally:
            if flags & PROTECT and not is_dir:
                with contextlib.suppress(OSError):
                    probe.set_flags(fd, flags)  # the store entry keeps its protection
    finally:
        os.close(fd)


def empty_dir(dfd: int) -> int:
    """Delete everything below an open directory, never following symlinks; returns entries removed."""
    removed = 0
    for name in os.listdir(dfd):
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, DIR_FLAGS, dir_fd=dfd)
            try:
                if os.fstat(sub).st_dev == os.fstat(dfd).st_dev:
                    removed += empty_dir(sub)
            finally:
                os.close(sub)
            _unlink(dfd, name, True)
        else:
            _unlink(dfd, name, False)
        removed += 1
    return removed


def _main(parent: str, name: str, where: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(parent.encode(), where.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), where)
    fd = os.open(os.path.join(where, name), DIR_FLAGS)
    try:
        print(empty_dir(fd))
    finally:
        os.close(fd)


def clear_under(root: Path, scratch_parent: Path) -> int:
    """Delete the plain tree hidden under the mount on root; returns the entries removed."""
    root = Path(os.path.abspath(root))
    where = tempfile.mkdtemp(prefix=".underlay-", dir=scratch_parent)
    try:
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m",
                               "unify.composefs.underlay", str(root.parent), root.name, where],
                              capture_output=True, text=True, check=False)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(where)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"removing the old plain tree under {root}: {proc.stderr.strip()[-300:]}")
    return int(proc.stdout.strip() or 0)


def clear_plain(root: Path) -> int:
    """Delete the content of an unmounted root directory (keeping the directory itself)."""
    fd = os.open(root, DIR_FLAGS)
    try:
        return empty_dir(fd)
    finally:
        os.close(fd)


def clean_scratch(scratch_parent: Path) -> None:
    """Remove empty scratch mount points a killed run left (they are never mounted outside it)."""
    for p in Path(scratch_parent).glob(".underlay-*"):
        with contextlib.suppress(OSError):
            os.rmdir(p)


if __name__ == "__main__":
    try:
        _main(*sys.argv[1:4])
    except OSError as exc:
        print(f"{exc.filename}: {exc.strerror}", file=sys.stderr)
        sys.exit(errno.EIO)
