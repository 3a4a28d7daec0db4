"""What this host and filesystem can do to protect shared files.

Every capability is found by really trying it on a throwaway file inside the
target directory (a mount may refuse what the kernel supports, and the only
honest answer to "does FICLONE work here?" is to clone something). Used by
`imagefactory unify --mode auto`, `imagefactory kernel probe` and the seed
barrier check.

`probe_composefs` answers what a composefs store with kernel-enforced
integrity needs, each with the evidence it rests on: fs-verity (the ioctl on
a probe file), EROFS (/proc/filesystems or the module), and overlayfs with a
data-only lower layer and verity=require (real mount attempts).
"""

from __future__ import annotations

import contextlib
import ctypes
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
# fs-verity (linux/fsverity.h): _IOW('f', 133, struct fsverity_enable_arg), _IOWR('f', 134, struct fsverity_digest).
FS_IOC_ENABLE_VERITY = 0x40806685
FS_IOC_MEASURE_VERITY = 0xC0046686
FS_VERITY_HASH_ALG_SHA256 = 1
MS_RDONLY = 1
MNT_DETACH = 2

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


@dataclass(frozen=True)
class ComposefsSupport:
    """What composefs with kernel-enforced integrity needs, each with the evidence it rests on.

    fsverity: FS_IOC_ENABLE_VERITY worked on a probe file in the directory (kernel and filesystem).
    erofs: the kernel mounts EROFS (the metadata image).
    overlay_data_only: overlayfs mounted `metacopy=on,redirect_dir=on,lowerdir=A::B` (B a data-only
        layer, kernel >= 6.5; data-only layers need metacopy, which a kernel may leave off by default).
    overlay_verity: overlayfs accepted `verity=require` on top of that (kernel >= 6.6).
    """

    fsverity: bool
    fsverity_evidence: str
    erofs: bool
    erofs_evidence: str
    overlay_data_only: bool
    overlay_data_only_evidence: str
    overlay_verity: bool
    overlay_verity_evidence: str

    @property
    def verity_ready(self) -> bool:
        """A composefs guest can be mounted here with verity=require on objects in this directory."""
        return self.fsverity and self.erofs and self.overlay_data_only and self.overlay_verity

    def to_dict(self) -> dict:
        return {**asdict(self), "composefs_verity_ready": self.verity_ready}


def _errno_name(err: int) -> str:
    return "EOPNOTSUPP" if err == errno.EOPNOTSUPP else errno.errorcode.get(err, str(err))


def enable_verity_fd(fd: int) -> None:
    """FS_IOC_ENABLE_VERITY: SHA-256, 4 KiB blocks, no salt (what composefs digests assume)."""
    fcntl.ioctl(fd, FS_IOC_ENABLE_VERITY, struct.pack("IIIIQIIQ88x", 1, FS_VERITY_HASH_ALG_SHA256, 4096, 0, 0, 0, 0, 0))


def try_fsverity(directory: Path) -> tuple[bool, str]:
    """Enable fs-verity on a probe file in directory and measure it; (worked, evidence)."""
    fs = filesystem_type(directory)
    with tempfile.TemporaryDirectory(prefix=PROBE_PREFIX, dir=directory) as tmp:
        path = Path(tmp, "verity")
        path.write_bytes(b"imagefactory fs-verity probe\n" * 200)
        fd = os.open(path, os.O_RDONLY)
        try:
            enable_verity_fd(fd)
            digest = bytearray(struct.pack("HH", 0, 64) + bytes(64))
            fcntl.ioctl(fd, FS_IOC_MEASURE_VERITY, digest, True)
        except OSError as exc:
            return False, (f"FS_IOC_ENABLE_VERITY on a probe file in {directory} ({fs}): "
                           f"{_errno_name(exc.errno or 0)}{_verity_hint(exc.errno, fs)}")
        finally:
            os.close(fd)
    size = struct.unpack("HH", bytes(digest[:4]))[1]
    return True, (f"FS_IOC_ENABLE_VERITY on a probe file in {directory} ({fs}): enabled; "
                  f"FS_IOC_MEASURE_VERITY sha256:{bytes(digest[4:4 + size]).hex()[:16]}...")


def _verity_hint(err: int | None, fs: str) -> str:
    if err == errno.EOPNOTSUPP and fs == "ext4":
        if Path("/sys/fs/ext4/features/verity").exists():
            return " (the kernel has ext4 verity; this filesystem lacks the feature: tune2fs -O verity)"
        return " (no fs-verity in this kernel: /sys/fs/ext4/features/verity missing)"
    if err in (errno.EOPNOTSUPP, errno.ENOTTY):
        return f" (no fs-verity for {fs} in this kernel)"
    return ""


def find_erofs(filesystems: str | None = None, modules: Path | None = None) -> tuple[bool, str]:
    """Does the kernel mount EROFS: listed in /proc/filesystems, or its module is installed."""
    try:
        text = filesystems if filesystems is not None else Path("/proc/filesystems").read_text()
    except OSError as exc:
        return False, f"/proc/filesystems unreadable: {exc.strerror}"
    if "erofs" in {line.split()[-1] for line in text.splitlines() if line.split()}:
        return True, "erofs listed in /proc/filesystems"
    modules = modules or Path("/lib/modules") / os.uname().release
    found = sorted((modules / "kernel/fs/erofs").glob("erofs.ko*")) if (modules / "kernel/fs/erofs").is_dir() else []
    if found:
        return True, f"erofs not in /proc/filesystems, module {found[0]} (loaded on first mount)"
    return False, f"erofs neither in /proc/filesystems nor as a module under {modules}"


def _mount(source: str, target: str, fstype: str, flags: int, options: str) -> int:
    """mount(2); 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags), options.encode()) == 0:
        libc.umount2(target.encode(), MNT_DETACH)
        return 0
    return ctypes.get_errno()


def try_overlay_data_only(directory: Path) -> tuple[tuple[bool, str], tuple[bool, str]]:
    """Mount overlayfs as composefs does (metacopy, redirect_dir, a data-only lower layer) in directory,
    then the same with verity=require.

    Returns ((data_only, evidence), (verity, evidence)). Needs CAP_SYS_ADMIN; the layers are
    named through /proc/self/fd so no character of directory's path can upset the option string.
    """
    with tempfile.TemporaryDirectory(prefix=PROBE_PREFIX, dir=directory) as tmp:
        for name in ("lower", "data", "mnt"):
            os.mkdir(os.path.join(tmp, name))
        Path(tmp, "lower", "file").write_bytes(b"probe\n")
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            layers = f"metacopy=on,redirect_dir=on,lowerdir=/proc/self/fd/{fd}/lower::/proc/self/fd/{fd}/data"
            plain = _mount("imagefactory-probe", os.path.join(tmp, "mnt"), "overlay", MS_RDONLY, layers)
            verity = _mount("imagefactory-probe", os.path.join(tmp, "mnt"), "overlay", MS_RDONLY,
                            f"verity=require,{layers}")
        finally:
            os.close(fd)
    return (_mount_verdict(plain, "metacopy=on,redirect_dir=on,lowerdir=A::B"),
            _mount_verdict(verity, "verity=require,metacopy=on,redirect_dir=on,lowerdir=A::B"))


def _mount_verdict(err: int, options: str) -> tuple[bool, str]:
    if err == 0:
        return True, f"mount -t overlay -o ro,{options}: mounted"
    hint = {errno.EPERM: " (needs CAP_SYS_ADMIN: run as root)", errno.ENODEV: " (no overlayfs in this kernel)",
            errno.EINVAL: " (option refused: kernel too old?)"}.get(err, "")
    return False, f"mount -t overlay -o ro,{options}: {_errno_name(err)}{hint}"


def probe_composefs(path: Path) -> ComposefsSupport:
    """Try everything a verity-protected composefs store in directory `path` needs."""
    path = Path(path)
    try:
        fsverity = try_fsverity(path)
    except OSError as exc:
        fsverity = (False, f"cannot create a probe file in {path}: {exc.strerror}")
    erofs = find_erofs()
    try:
        data_only, verity = try_overlay_data_only(path)
    except OSError as exc:
        data_only = verity = (False, f"cannot create probe layers in {path}: {exc.strerror}")
    return ComposefsSupport(*fsverity, *erofs, *data_only, *verity)
