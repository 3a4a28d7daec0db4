"""Can this host run composefs guests? Found by trying, like unify/probe.py does for flags.

What is needed: overlayfs with data-only lower layers (`lowerdir=META::DATA`, Linux 6.5+)
that follows a metacopy file's redirect into the data layer; EROFS for the image variant of
the metadata layer; fs-verity only for `verity=require`. The overlay test mounts a one-file
guest in a temporary directory beside the store and reads the file back through it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from unify import probe
from unify.composefs import metadir
from unify.composefs.verity import digest_bytes

FS_IOC_ENABLE_VERITY = 0x40806685
PROBE_PREFIX = ".imagefactory-cfs-probe-"


@dataclass(frozen=True)
class Support:
    overlay_data_only: bool
    erofs: bool
    verity: bool
    reason: str

    @property
    def usable(self) -> bool:
        return self.overlay_data_only

    def to_dict(self) -> dict:
        return {**asdict(self), "usable": self.usable}


def _try_overlay(base: Path) -> tuple[bool, str]:
    """Mount a one-file guest and read it back: unlike the kernel probe (which only mounts), usability
    needs the redirect into the data-only layer to be followed."""
    content = b"imagefactory composefs probe\n"
    digest = digest_bytes(content)
    with tempfile.TemporaryDirectory(prefix=PROBE_PREFIX, dir=base) as tmp:
        t = Path(tmp)
        for d in ("meta", "data", "upper", "work", "mnt", f"data/{digest[:2]}"):
            (t / d).mkdir()
        (t / "data" / digest[:2] / digest[2:]).write_bytes(content)
        fd = os.open(t / "meta/f", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, len(content))
            os.setxattr(fd, metadir.METACOPY, metadir.metacopy_value(digest))
            os.setxattr(fd, metadir.REDIRECT, f"/{digest[:2]}/{digest[2:]}".encode())
        except OSError as exc:
            return False, f"{base} has no trusted.* xattrs ({exc.strerror})"
        finally:
            os.close(fd)
        opts = (f"lowerdir={t}/meta::{t}/data,upperdir={t}/upper,workdir={t}/work,metacopy=on,redirect_dir=on")
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"overlay", str(t / "mnt").encode(), b"overlay", 0, opts.encode()) != 0:
            err = ctypes.get_errno()
            why = "not root" if err == errno.EPERM else os.strerror(err)
            return False, f"overlayfs refused a data-only lower layer ({why}; needs Linux 6.5+ and root)"
        try:
            ok = (t / "mnt/f").read_bytes() == content
        finally:
            libc.umount2(str(t / "mnt").encode(), 0)
        return ok, "" if ok else "overlayfs did not follow the redirect into the data-only layer"


def enable_verity(path: Path) -> None:
    """fs-verity on a file nobody has open for writing (the kernel's ioctl lives in unify/probe.py)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        probe.enable_verity_fd(fd)
    finally:
        os.close(fd)


def try_verity(base: Path) -> bool:
    """Whether files in base can get fs-verity (the kernel probe's own test, its evidence dropped)."""
    try:
        return probe.try_fsverity(base)[0]
    except OSError:
        return False


def check(base: Path) -> Support:
    """Probe in directory base (the store, or the directory that will hold it)."""
    base = Path(base)
    try:
        fs = {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.split()}
    except OSError:
        fs = set()
    erofs = probe.find_erofs()[0]
    if "overlay" not in fs:
        return Support(False, erofs, False, "the kernel has no overlayfs (not in /proc/filesystems)")
    if os.geteuid() != 0:
        return Support(False, erofs, False, "mounting composefs guests needs root")
    ok, why = _try_overlay(base)
    verity = try_verity(base) if ok else False
    reason = why or ("overlayfs follows metacopy redirects into a data-only layer"
                     + (", fs-verity available (verity=require)" if verity else "; no fs-verity here, so "
                        "object integrity is checked by --verify, not by the kernel"))
    return Support(ok, erofs, verity, reason)
