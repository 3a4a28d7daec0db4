"""A guest's disk limit: its own layer on a sized filesystem image, or under a project quota.

Linux-VServer's context disk limits counted the files a guest owned, never
the unified files it shared with other guests. A limited guest here runs on
an overlay: the seeded root (whose unified files are shared through the
store) is the read-only lower layer, and everything the guest writes or
replaces lands in its own upper layer. Only that layer counts.

Two ways to bound the layer:
- image (any kernel): the layer lives on an ext4 filesystem image sized so
  the guest can write the limit, loop-mounted while the guest runs; a full
  layer gives ENOSPC ("No space left on device");
- quota (kernels with quota support): the layer is a directory on the host
  filesystem (XFS mounted with prjquota, or ext4 with the project and quota
  features) carrying a project id (the guest's context id, as VServer tagged
  files with the context) and a project quota; a full layer gives EDQUOT
  ("Disk quota exceeded").

Layout, next to the guest roots: VDIR/.own/NAME.img (image way, with its
record NAME.img.json) and VDIR/.own/NAME/ holding `upper/` and `olwork/`
(the names LXC's overlay rootfs expects: `overlay:LOWER:UPPER` puts its
workdir beside UPPER). composefs guests use the same upper and work dirs.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from imagefactory.core import atomic
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError
from imagefactory.seed.limits import inodes_for

OWN = ".own"
MIB = 1024 * 1024
BLOCK = 4096  # the images' block size (mkfs.ext4 -b 4096)
MODES = ("auto", "image", "quota")


class DiskError(ImageFactoryError):
    """A disk limit cannot be applied as asked."""


@dataclass(frozen=True)
class Layer:
    """Where a guest's own layer lives."""

    root: Path  # the seeded root, the overlay's lower layer

    @property
    def base(self) -> Path:
        return self.root.parent / OWN

    @property
    def image(self) -> Path:
        return self.base / f"{self.root.name}.img"

    @property
    def record(self) -> Path:
        return self.base / f"{self.root.name}.img.json"

    @property
    def mountpoint(self) -> Path:
        return self.base / self.root.name

    @property
    def upper(self) -> Path:
        return self.mountpoint / "upper"

    @property
    def work(self) -> Path:
        return self.mountpoint / "olwork"

    @property
    def mode(self) -> str | None:
        """'image', 'quota' or None (no own layer yet)."""
        if self.image.is_file():
            return "image"
        return "quota" if self.upper.is_dir() else None


def _run(argv: list[str], what: str) -> str:
    if shutil.which(argv[0]) is None:
        raise EnvironmentProblem(f"{what} needs {argv[0]} (e2fsprogs / util-linux)")
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        detail = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise DiskError(f"{what}: {argv[0]} failed: {detail[-1].strip() if detail else result.returncode}")
    return result.stdout


# --- image way -------------------------------------------------------------

def _superblock(image: Path) -> dict[str, int]:
    """Block count, free blocks and block size of an unmounted ext4 image (dumpe2fs -h)."""
    values = {}
    for line in _run(["dumpe2fs", "-h", str(image)], f"reading {image}").splitlines():
        key, _, value = line.partition(":")
        if key in ("Block count", "Free blocks", "Block size"):
            values[key] = int(value.strip())
    return values


def _super_used(image: Path) -> int:
    sb = _superblock(image)
    return (sb["Block count"] - sb["Free blocks"]) * sb["Block size"]


def _statfs_used(path: Path) -> tuple[int, int]:
    """(used, available) bytes as the guest sees them (df)."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_bavail * st.f_frsize


def _mkfs(image: Path, size: int, limit: int) -> None:
    with open(image, "wb") as fh:
        fh.truncate(size)
    # -m 0: nothing reserved for root (util-vserver's dlimits `reserved` is 0 too);
    # -N: the inode count dlimits' inodes_total states.
    _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", str(BLOCK), "-N", str(inodes_for(limit)),
          "-E", "root_owner=0:0,nodiscard", str(image)], f"formatting {image}")


def is_mounted(layer: Layer) -> bool:
    return os.path.ismount(layer.mountpoint)


def _mount(layer: Layer) -> None:
    layer.mountpoint.mkdir(mode=0o700, parents=True, exist_ok=True)
    _run(["mount", "-t", "ext4", "-o", "loop,nodev", str(layer.image), str(layer.mountpoint)],
         f"mounting {layer.image}")


def _umount(layer: Layer) -> None:
    _run(["umount", "-d", str(layer.mountpoint)], f"unmounting {layer.mountpoint}")


def _fit(layer: Layer, limit: int, size: int, make) -> int:
    """Grow the image until the guest can write `limit` bytes; returns the image size.

    ext4 keeps part of any size for itself (journal, inode tables, group
    descriptors, reserved clusters), so the image grows by what was missing
    and is made again until its free space reaches the limit.
    """
    for _ in range(12):
        make(size)
        _mount(layer)
        try:
            for directory in (layer.upper, layer.work):
                directory.mkdir(mode=0o755, exist_ok=True)
            used, free = _statfs_used(layer.mountpoint)
            data = _data_bytes(layer)
            if free + data >= limit:
                statfs_baseline = used - data
                break
        finally:
            _umount(layer)
        size += -(-(limit - free - data) // BLOCK) * BLOCK
    else:
        raise DiskError(f"could not size {layer.image} for {limit} bytes")
    record = {"limit": limit, "size": size, "statfs_baseline": statfs_baseline,
              "super_baseline": _super_used(layer.image) - data}
    atomic.write_text(layer.record, json.dumps(record) + "\n")
    return size


def _data_bytes(layer: Layer) -> int:
    """Blocks held by the guest's files in the layer (what counts against its limit)."""
    total = 0
    for top in (layer.upper, layer.work):
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def create_image(layer: Layer, limit: int) -> int:
    layer.base.mkdir(mode=0o700, exist_ok=True)
    return _fit(layer, limit, limit, lambda size: _mkfs(layer.image, size, limit))


def resize_image(layer: Layer, limit: int) -> int:
    """Resize a stopped guest's image so the guest can write `limit` bytes in all."""
    if is_mounted(layer):
        raise DiskError(f"{layer.image} is in use: stop the guest before changing its disk limit")
    record = json.loads(layer.record.read_text())

    def grow_or_shrink(size: int) -> None:
        _run(["e2fsck", "-f", "-p", str(layer.image)], f"checking {layer.image}")  # resize2fs insists
        if size > layer.image.stat().st_size:
            with open(layer.image, "r+b") as fh:
                fh.truncate(size)
        _run(["resize2fs", str(layer.image), f"{size // 1024}K"], f"resizing {layer.image}")
        if size < layer.image.stat().st_size:
            with open(layer.image, "r+b") as fh:
                fh.truncate(size)

    return _fit(layer, limit, record["size"] + limit - record["limit"], grow_or_shrink)


# --- quota way -------------------------------------------------------------

_SYS_QUOTACTL_FD = 443  # x86-64, arm64 and most others share the new syscall numbers
_PRJQUOTA = 2
_Q_GETINFO, _Q_GETQUOTA, _Q_SETQUOTA = 0x800005, 0x800007, 0x800008
_QIF_BLIMITS, _QIF_ILIMITS = 1, 4
_DQBLK = struct.Struct("8QI4x")  # struct if_dqblk
_FSXATTR = struct.Struct("5I8x")  # struct fsxattr
_FS_IOC_FSGETXATTR, _FS_IOC_FSSETXATTR = 0x801C581F, 0x401C5820
_FS_XFLAG_PROJINHERIT = 0x200


def _quotactl(path: Path, cmd: int, project: int, buffer: ctypes.Array | None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    qcmd = (cmd << 8) | _PRJQUOTA
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if libc.syscall(_SYS_QUOTACTL_FD, fd, ctypes.c_uint(qcmd), project, buffer) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


def quota_available(path: Path) -> tuple[bool, str]:
    """Whether project quotas are on for the filesystem holding path, and why not."""
    try:
        _quotactl(path, _Q_GETINFO, 0, ctypes.create_string_buffer(24))
    except OSError as exc:
        reason = {errno.ENOSYS: "this kernel has no quotactl_fd",
                  errno.ESRCH: "project quota is not on for this filesystem",
                  errno.ENOTSUP: "this filesystem has no quota support"}.get(exc.errno or 0, exc.strerror)
        return False, f"no project quota on {path}: {reason}"
    return True, f"project quota on {path}"


def set_project(directory: Path, project: int) -> None:
    """Give directory a project id that everything created below it inherits."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attrs = bytearray(_FSXATTR.size)
        fcntl.ioctl(fd, _FS_IOC_FSGETXATTR, attrs)
        xflags, extsize, nextents, _, cowextsize = _FSXATTR.unpack(attrs)
        fcntl.ioctl(fd, _FS_IOC_FSSETXATTR,
                    _FSXATTR.pack(xflags | _FS_XFLAG_PROJINHERIT, extsize, nextents, project, cowextsize))
    finally:
        os.close(fd)


def set_quota(path: Path, project: int, limit: int) -> None:
    blocks = -(-limit // 1024)  # quota block limits count 1 KiB
    buffer = ctypes.create_string_buffer(_DQBLK.pack(blocks, blocks, 0, inodes_for(limit), inodes_for(limit),
                                                     0, 0, 0, _QIF_BLIMITS | _QIF_ILIMITS), _DQBLK.size)
    _quotactl(path, _Q_SETQUOTA, project, buffer)


def quota_usage(path: Path, project: int) -> tuple[int, int]:
    """(bytes used, byte limit) of a project."""
    buffer = ctypes.create_string_buffer(_DQBLK.size)
    _quotactl(path, _Q_GETQUOTA, project, buffer)
    hard, _, used, *_ = _DQBLK.unpack(buffer.raw)
    return used, hard * 1024


def create_quota(layer: Layer, limit: int, project: int) -> None:
    ok, why = quota_available(layer.root.parent)
    if not ok:
        raise EnvironmentProblem(f"{why}; use --disk-mode image")
    layer.base.mkdir(mode=0o700, exist_ok=True)
    layer.mountpoint.mkdir(mode=0o755, exist_ok=True)
    set_project(layer.mountpoint, project)
    for directory in (layer.upper, layer.work):
        directory.mkdir(mode=0o755, exist_ok=True)
    set_quota(layer.root.parent, project, limit)


# --- both ------------------------------------------------------------------

def choose(mode: str, vdir: Path) -> str:
    """The way a new limit is applied: 'quota' where project quotas are on, else 'image'."""
    if mode == "auto":
        return "quota" if quota_available(vdir)[0] else "image"
    return mode


def setup(layer: Layer, limit: int, mode: str, project: int) -> str:
    """Create (or resize) the guest's own layer for `limit` bytes; returns the way used."""
    current = layer.mode
    if current == "image":
        resize_image(layer, limit)
        return "image"
    if current == "quota":
        set_quota(layer.root.parent, project, limit)
        return "quota"
    way = choose(mode, layer.root.parent)
    if way == "quota":
        create_quota(layer, limit, project)
    else:
        create_image(layer, limit)
    return way


def attach(layer: Layer) -> None:
    """Make the own layer available (mount the image); a no-op for quotas or when mounted."""
    if layer.mode == "image" and not is_mounted(layer):
        _mount(layer)


def detach(layer: Layer) -> None:
    if layer.mode == "image" and is_mounted(layer):
        _umount(layer)


def usage(layer: Layer, project: int | None) -> tuple[int, int] | None:
    """(bytes the guest's own layer holds, its limit), or None without a limit."""
    if layer.mode == "image":
        record = json.loads(layer.record.read_text())
        if is_mounted(layer):
            used, _ = _statfs_used(layer.mountpoint)
            return max(used - record["statfs_baseline"], 0), record["limit"]
        return max(_super_used(layer.image) - record["super_baseline"], 0), record["limit"]
    if layer.mode == "quota" and project is not None:
        return quota_usage(layer.root.parent, project)
    return None


def rename(src: Layer, dst: Layer) -> None:
    """Move a (detached) layer made under a staging name to its guest's name."""
    for a, b in ((src.image, dst.image), (src.record, dst.record), (src.mountpoint, dst.mountpoint)):
        if os.path.lexists(a):
            os.rename(a, b)


def remove(layer: Layer) -> None:
    """Remove the guest's own layer (its image, record and dirs)."""
    detach(layer)
    for path in (layer.image, layer.record):
        path.unlink(missing_ok=True)
    if layer.mountpoint.is_dir():
        atomic.remove_tree(layer.mountpoint)
