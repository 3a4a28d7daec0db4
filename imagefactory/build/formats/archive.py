"""Reproducible compressed tarballs for the formats (xz for LXC/Incus, gzip for OCI/Incus unified).

The tar stream comes from image.add_tree (sorted, numeric owners, clamped mtimes). xz runs as
the `xz` tool in multi-threaded mode with a fixed thread count and block size, whose output
does not depend on the host's cores; gzip is zlib with mtime 0 and no file name in the header.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from imagefactory.build.image import HashingWriter, add_tree, open_tar
from imagefactory.core import atomic
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError

XZ_ARGS = ["-T2", "--block-size=16MiB", "-6", "--check=crc64"]  # MT mode: same bytes on any host
GZIP_LEVEL = 6


class FormatError(ImageFactoryError):
    """A format writer's tool failed."""

    exit_code = 6


@contextmanager
def xz_stream(target: Path) -> Iterator[IO[bytes]]:
    """A file object whose bytes are xz-compressed into target (staged, renamed on success)."""
    xz = shutil.which("xz")
    if xz is None:
        raise EnvironmentProblem("xz not found; install xz-utils")
    with atomic.staged_path(target) as stage, open(stage, "wb") as out:
        proc = subprocess.Popen([xz, *XZ_ARGS, "-c"], stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        try:
            yield proc.stdin
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.stdin.close()
        err = proc.stderr.read() if proc.stderr else b""
        if proc.wait() != 0:
            raise FormatError(f"xz failed for {target.name}: {err.decode(errors='replace').strip()[:200]}")
        out.flush()
        os.fsync(out.fileno())


@contextmanager
def gzip_stream(target: Path) -> Iterator[HashingWriter]:
    """A writer (hashing the uncompressed bytes) gzip-compressed into target, staged, renamed on success."""
    with atomic.staged_path(target) as stage, open(stage, "wb") as out:
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=GZIP_LEVEL, mtime=0) as gz:
            plain = HashingWriter(gz)
            yield plain
        out.flush()
        os.fsync(out.fileno())


def file_entry(name: str, data: bytes, epoch: int, mode: int = 0o644) -> tuple[tarfile.TarInfo, io.BytesIO]:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = len(data), mode, epoch, 0, 0, "", ""
    return ti, io.BytesIO(data)


def dir_entry(name: str, epoch: int, mode: int = 0o755) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = tarfile.DIRTYPE, mode, epoch, 0, 0, "", ""
    return ti


def add_files(tar: tarfile.TarFile, files: dict[str, bytes], epoch: int) -> None:
    """Small generated files in name order, each parent directory just before its first child."""
    made: set[str] = set()
    for name in sorted(files):
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in made:
                made.add(parent)
                tar.addfile(dir_entry(parent, epoch))
        tar.addfile(*file_entry(name, files[name], epoch))


def write_tar_xz(target: Path, epoch: int, files: dict[str, bytes] | None = None,
                 tree: Path | None = None, prefix: str = "./") -> None:
    """A .tar.xz of generated files, then (optionally) a tree under prefix."""
    with xz_stream(target) as stream, open_tar(stream) as tar:
        add_files(tar, files or {}, epoch)
        if tree is not None:
            add_tree(tar, tree, epoch, prefix)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
