"""Running commands in a guest root with /proc, /sys and /dev mounted.

The mounts exist only inside `mounted()` and are always taken down again,
on success, on error and on Ctrl-C. The guest never sees the host's /dev:
it gets a private tmpfs holding the same secure device set the finished
guest will have, plus devpts. Mount points are checked to be real
directories inside the root, so a hostile guest's `/proc -> /etc` symlink
cannot redirect a mount onto the host.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from imagefactory.build import buildlog
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError, UnsafeInput

# name: (type, major, minor, mode) — util-vserver's secure /dev set.
SECURE_DEV = {
    "null": ("c", 1, 3, 0o666),
    "zero": ("c", 1, 5, 0o666),
    "full": ("c", 1, 7, 0o666),
    "random": ("c", 1, 8, 0o644),
    "urandom": ("c", 1, 9, 0o644),
    "tty": ("c", 5, 0, 0o666),
    "ptmx": ("c", 5, 2, 0o666),
}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "fd/0", "stdout": "fd/1", "stderr": "fd/2"}

_ERROR_LINE = re.compile(r"^(dpkg: error|dpkg: dependency problems|E: )|error processing|\b(failed|Error)\b")

CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "HOME": "/root",
}


def populate_dev(dev: Path) -> None:
    """Create the secure device set in dev (which must be a real directory)."""
    for name, (_kind, major, minor, mode) in SECURE_DEV.items():
        path = dev / name
        if path.exists() or path.is_symlink():
            path.unlink()
        os.mknod(path, stat.S_IFCHR | mode, os.makedev(major, minor))
        os.chmod(path, mode)
    for name, target in DEV_LINKS.items():
        path = dev / name
        if path.is_symlink() or path.exists():
            path.unlink()
        os.symlink(target, path)
    for name in ("pts", "shm"):
        (dev / name).mkdir(exist_ok=True)
    os.chmod(dev / "shm", 0o1777)


def safe_mountpoint(root: Path, rel: str) -> Path:
    """root/rel as a real directory inside root (created if missing)."""
    path = root / rel
    if path.is_symlink():
        raise UnsafeInput(f"{path} is a symlink; refusing to mount over it")
    path.mkdir(parents=True, exist_ok=True)
    real = os.path.realpath(path)
    if real != os.path.join(os.path.realpath(root), rel):
        raise UnsafeInput(f"{path} resolves outside the guest root; refusing to mount")
    return path


def _mount(args: list[str]) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"mount {' '.join(args)} failed: {proc.stderr.strip()} (needs root)")


def _umount(path: Path) -> bool:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
        return True
    return subprocess.run(["umount", "--lazy", str(path)], capture_output=True).returncode == 0


def mounts_below(root: Path) -> list[str]:
    """Mount points at or below root (from /proc/self/mountinfo)."""
    real = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == real or point.startswith(real + "/"):
                found.append(point)
    return found


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[Path]:
    """Mount proc, sysfs (read-only), a private /dev and devpts for the duration."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("building a guest needs root (chroot and mounts)")
    done: list[Path] = []
    try:
        proc = safe_mountpoint(root, "proc")
        _mount(["-t", "proc", "proc", str(proc)])
        done.append(proc)
        sys_ = safe_mountpoint(root, "sys")
        _mount(["-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", str(sys_)])
        done.append(sys_)
        dev = safe_mountpoint(root, "dev")
        _mount(["-t", "tmpfs", "-o", "mode=0755,nosuid,size=1m", "imagefactory-dev", str(dev)])
        done.append(dev)
        populate_dev(dev)
        pts = dev / "pts"
        _mount(["-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620,gid=5", "devpts", str(pts)])
        done.append(pts)
        yield root
    finally:
        failed = [str(p) for p in reversed(done) if not _umount(p)]
        if failed:
            raise EnvironmentProblem(f"could not unmount {', '.join(failed)}; unmount by hand before removing {root}")


def run(root: Path, argv: Sequence[str], env: dict[str, str] | None = None, what: str = "") -> str:
    """Run argv chrooted into root; on failure raise with the command's last output lines."""
    full_env = dict(CHROOT_ENV, **(env or {}))
    started = time.monotonic()
    proc = subprocess.run(
        ["chroot", str(root), *argv], env=full_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
    )
    buildlog.record(["chroot", str(root), *argv], proc.stdout, proc.returncode, time.monotonic() - started)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stdout.strip().splitlines() if ln.strip()]
        # dpkg ends with a list of the failed packages; the cause is the first error
        # line and the line after it (dpkg puts the reason on its own line).
        first = next((i for i, ln in enumerate(lines) if _ERROR_LINE.search(ln)), None)
        cause = lines[first:first + 2] if first is not None else lines[-2:]
        tail = " | ".join(cause)
        raise ImageFactoryError(f"{what or argv[0]} failed in the guest (exit {proc.returncode}): {tail}")
    return proc.stdout
