"""Stage-then-rename helpers: an interrupted run never leaves a half output."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def staging_name(target: Path) -> Path:
    """A hidden sibling of target, in the same directory so rename() is atomic."""
    return target.with_name(f".{target.name}.partial-{os.getpid()}")


def remove_tree(path: Path) -> None:
    """Remove a staged tree even if it contains immutable-free read-only dirs."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@contextlib.contextmanager
def staged_path(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a staging path; on success rename it over target, on failure remove it.

    Works for files and directories. A directory target that already exists is
    moved aside first and deleted only after the new one is in place.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_name(target)
    remove_tree(stage)
    try:
        yield stage
        if target.exists() and stage.is_dir() and not target.is_symlink():
            if not replace:
                raise FileExistsError(str(target))
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(stage, target)
            remove_tree(old)
        else:
            os.replace(stage, target)
    except BaseException:
        remove_tree(stage)
        raise


def write_bytes(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file atomically (fsync'd, then renamed into place)."""
    with staged_path(target) as stage:
        fd = os.open(stage, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(target: Path, text: str, mode: int = 0o644) -> None:
    write_bytes(target, text.encode(), mode)


def syncfs(path: Path) -> None:
    """syncfs(2) the filesystem holding path: one flush for many new files, not one fsync each."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
