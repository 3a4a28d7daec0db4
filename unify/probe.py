"""What this host and filesystem can do to protect shared files.

Every capability is found by really trying it on a throwaway file inside the
target directory (a mount may refuse what the kernel supports, and the only
honest answer to "does FICLONE work here?" is to clone something). Used by
`imagefactory unify --mode auto`, `imagefactory kernel probe` and the seed
barrier check.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Inode attribute flags (linux/fs.h; the last two exist only on VServer kernels).
FS_IMMUTABLE_FL = 0x00000010
FS_IXUNLINK_FL = 0x08000000
FS_BARRIER_FL = 0x04000000

# ioctl numbers for x86_64/arm64 (the kernel reads/writes an int through a long-sized slot).
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FICLONE = 0x40049409

VIRTUAL_INFO = Path("/proc/virtual/info")
PROBE_PREFIX = ".imagefactory-probe-"

# VCIKernel bit -> name (VServer include/linux/vserver/... VCI_KCBIT_*).
VCI_KERNEL_BITS = {
    0: "NO_DYNAMIC",
    4: "PROC_SECURE",
    8: "COWBL",
    9: "FULLCOWBL",
    10: "SPACES",
    11: "NETV2",
    12: "MEMCG",
    13: "MEMCG_SWAP",
    16: "DEBUG",
    20: "HISTORY",
    24: "TAGGED",
    28: "PPTAG",
    31: "MORE",
}


def get_flags(fd: int, ioctl=fcntl.ioctl) -> int:
    """The inode's attribute flags (FS_IOC_GETFLAGS) of an open fd.

    `ioctl` is a seam: tests of vserver mode on a mainline kernel pass their own.
    """
    buf = ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0))
    return struct.unpack("i", buf[:4])[0] & 0xFFFFFFFF


def set_flags(fd: int, flags: int, ioctl=fcntl.ioctl) -> None:
    """Set the inode's attribute flags (FS_IOC_SETFLAGS); needs CAP_LINUX_IMMUTABLE for i/x."""
    value = flags - (1 << 32) if flags & 0x80000000 else flags
    ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", value))


def change_flags(fd: int, add: int = 0, remove: int = 0, ioctl=fcntl.ioctl) -> int:
    """Read-modify-write the flags; returns the new value. Skips the write if nothing changes."""
    old = get_flags(fd, ioctl)
    new = (old | add) & ~remove
    if new != old:
        set_flags(fd, new, ioctl)
    return new


def clone_file(dst_fd: int, src_fd: int) -> None:
    """Make dst share src's extents copy-on-write (FICLONE; btrfs, XFS with reflink=1)."""
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


def parse_vci(text: str) -> dict:
    """Decode /proc/virtual/info: VCIVersion "0002:0308", VCISyscall N, VCIKernel hex bits.

    Returns {} when no VCI line is present (mainline kernel or unreadable file).
    """
    out: dict = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "VCIVersion":
            major, _, minor = value.partition(":")
            try:
                out["version"] = f"{int(major, 16)}.{(int(minor, 16) >> 8)}.{int(minor, 16) & 0xFF}"
            except ValueError:
                out["version"] = value
            out["version_raw"] = value
        elif key == "VCISyscall":
            with contextlib.suppress(ValueError):
                out["syscall"] = int(value, 0)
        elif key == "VCIKernel":
            try:
                bits = int(value, 16)
            except ValueError:
                continue
            out["kernel_bits"] = bits
            out["features"] = [name for bit, name in sorted(VCI_KERNEL_BITS.items()) if bits >> bit & 1]
    return out


@dataclass(frozen=True)
class ProbeResult:
    vserver: bool
    vci: dict = field(default_factory=dict)
    immutable: bool = False
    ixunlink: bool = False
    reflink: bool = False
    filesystem: str = ""
    auto_mode: str | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The fstype of the mount holding path (longest mount-point prefix in mountinfo)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return "unknown"
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mnt = fields[4].replace("\\040", " ")
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, fstype = mnt, right.split()[0]
    return fstype


def _try_flag(fd: int, flag: int) -> bool:
    """Set then clear one attribute flag; True only if the kernel kept it."""
    try:
        change_flags(fd, add=flag)
        ok = bool(get_flags(fd) & flag)
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            change_flags(fd, remove=flag)
    return ok


def _try_reflink(directory: Path) -> bool:
    with tempfile.TemporaryDirectory(prefix=PROBE_PREFIX, dir=directory) as tmp:
        src, dst = Path(tmp, "src"), Path(tmp, "dst")
        src.write_bytes(b"imagefactory reflink probe\n" * 200)
        with open(src, "rb") as s, open(dst, "wb") as d:
            try:
                clone_file(d.fileno(), s.fileno())
            except OSError:
                return False
        return dst.read_bytes() == src.read_bytes()


def decide_auto(vserver: bool, ixunlink: bool, immutable: bool, reflink: bool, fs: str) -> tuple[str | None, str]:
    """Pure policy for --mode auto: vserver, else reflink, else refuse (with the reason).

    What vserver mode needs is IXUNLINK that really sticks, so a kernel with the
    project's own IXUNLINK patch (no /proc/virtual/info) qualifies as well."""
    if ixunlink and immutable:
        kernel = "VServer kernel" if vserver else "kernel with the IXUNLINK patch"
        return "vserver", f"{kernel}: IMMUTABLE+IXUNLINK protect shared inodes and still allow updates"
    if reflink:
        why = "VServer kernel found but IXUNLINK refused here; " if vserver else ""
        return "reflink", f"{why}{fs} supports FICLONE: copy-on-write sharing, no shared inode"
    if vserver:
        return None, (f"VServer kernel found but IMMUTABLE/IXUNLINK cannot be set on {fs} "
                      "(need CAP_LINUX_IMMUTABLE?) and no reflink")
    return None, (
        f"no VServer kernel (/proc/virtual/info missing) and {fs} has no reflink support; "
        "choose --mode immutable (in-guest updates of unified files fail) or --mode hardlink "
        "(trusted guests only), or put the store on btrfs/XFS with reflink=1"
    )


def probe(path: Path) -> ProbeResult:
    """Try every protection mechanism on a temporary file inside directory `path`."""
    path = Path(path)
    try:
        vci = parse_vci(VIRTUAL_INFO.read_text())
    except OSError:
        vci = {}
    vserver = bool(vci)
    fs = filesystem_type(path)
    fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=path)
    try:
        immutable = _try_flag(fd, FS_IMMUTABLE_FL)
        ixunlink = _try_flag(fd, FS_IXUNLINK_FL)
    finally:
        with contextlib.suppress(OSError):
            change_flags(fd, remove=FS_IMMUTABLE_FL | FS_IXUNLINK_FL)
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    try:
        reflink = _try_reflink(path)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.ENOSPC, errno.EACCES):
            raise
        reflink = False
    auto, reason = decide_auto(vserver, ixunlink, immutable, reflink, fs)
    return ProbeResult(vserver, vci, immutable, ixunlink, reflink, fs, auto, reason)
