"""Mount and unmount a composefs guest: overlayfs over (metadata layer)::(object store).

    mount -t overlay overlay R -o lowerdir=META::S/objects,upperdir=U,workdir=W,
                                  metacopy=on,redirect_dir=on[,verity=require]

META is the guest's directory layer, or its EROFS image mounted read-only (file-backed,
mount(2) straight from the image file, no loop device) at STATE/erofs. The `::` makes the
store a data-only layer: its files are reachable only through a metadata file's redirect,
never by name, so a guest cannot even list it. `verity=require` (only where the kernel has
fs-verity and objects have it enabled) makes the kernel refuse an object whose fs-verity
digest differs from the one in the metadata file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError
from unify.composefs.guest import GuestLayers, GuestRecord, blocks

MS_RDONLY = 1
MNT_DETACH = 2
_OPTION_UNSAFE = set(",:\\= \n\t")


def _check_path(path: Path) -> str:
    text = str(path)
    if _OPTION_UNSAFE & set(text):
        raise EnvironmentProblem(f"{text}: overlayfs layer paths must not contain ',', ':', '=', '\\' or spaces")
    return text


def lower_dir(layers: GuestLayers, record: GuestRecord) -> Path:
    return layers.erofs_mnt if record.meta == "erofs" else layers.meta_dir


def overlay_options(layers: GuestLayers, record: GuestRecord) -> str:
    lower = _check_path(lower_dir(layers, record))
    objects = _check_path(Path(record.store) / "objects")
    opts = [f"lowerdir={lower}::{objects}", f"upperdir={_check_path(layers.upper)}",
            f"workdir={_check_path(layers.work)}", "metacopy=on", "redirect_dir=on"]
    if record.verity:
        opts.append("verity=require")
    return ",".join(opts)


def _unescape_mount(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> dict[str, str]:
    """Mount point -> fstype for this mount namespace (the last mount on a path wins)."""
    out = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            out[_unescape_mount(fields[4])] = right.split()[0]
    return out


def is_mounted(path: Path, fstype: str | None = None, table: dict[str, str] | None = None) -> bool:
    found = (table if table is not None else mounts()).get(os.path.abspath(path))
    return found is not None and (fstype is None or found == fstype)


def _libc_mount(source: str, target: str, fstype: str, flags: int, data: str | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _umount(target: Path, lazy: bool = False) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(str(target).encode(), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def mount(layers: GuestLayers, record: GuestRecord | None = None) -> bool:
    """Mount the guest at its root (idempotent); returns False if it already was."""
    record = record or layers.read()
    if record is None:
        raise ImageFactoryError(f"{layers.root}: not a composefs guest (no {layers.record_path})")
    table = mounts()
    if is_mounted(layers.root, "overlay", table):
        return False
    if not layers.root.is_dir() or layers.root.is_symlink():
        raise ImageFactoryError(f"{layers.root}: the mount point is missing or not a directory")
    try:
        if record.meta == "erofs" and not is_mounted(layers.erofs_mnt, "erofs", table):
            _libc_mount(str(layers.meta_image), str(layers.erofs_mnt), "erofs", MS_RDONLY, None)
        _libc_mount("overlay", str(layers.root), "overlay", 0, overlay_options(layers, record))
    except OSError as exc:
        if record.meta == "erofs":
            with contextlib.suppress(OSError):
                _umount(layers.erofs_mnt)
        hint = " (kernel without overlayfs data-only layers? needs Linux 6.5+)" if exc.errno == errno.EINVAL else ""
        raise EnvironmentProblem(f"mounting composefs guest {layers.root}: {exc.strerror}{hint}") from None
    return True


def umount(layers: GuestLayers, record: GuestRecord | None = None) -> bool:
    """Unmount the guest (and its EROFS layer); returns False if it was not mounted."""
    record = record or layers.read()
    was = False
    try:
        if is_mounted(layers.root, "overlay"):
            _umount(layers.root)
            was = True
        if record is not None and record.meta == "erofs" and is_mounted(layers.erofs_mnt, "erofs"):
            _umount(layers.erofs_mnt)
    except OSError as exc:
        busy = " (still in use: stop the guest first)" if exc.errno == errno.EBUSY else ""
        raise EnvironmentProblem(f"unmounting {exc.filename}: {exc.strerror}{busy}") from None
    return was


@dataclass
class Usage:
    mounted: bool
    state_bytes: int  # metadata layer + listing + upper + work on disk
    upper_bytes: int  # the guest's own changes


def usage(layers: GuestLayers) -> Usage:
    """Whether the guest's root is mounted, and what its own layers hold on disk."""
    return Usage(is_mounted(layers.root, "overlay"), blocks(layers.state), blocks(layers.upper))
