"""Helpers for the composefs tests: tree fingerprints and mount cleanup (helpers only)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

from unify.composefs.mount import mounts


def fingerprint(root: Path) -> dict[str, tuple]:
    """path -> (mode, uid, gid, content sha256 | symlink target | rdev, mtime, xattrs) below root."""
    out = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(p)
                xattrs: tuple = ()
            else:
                if stat.S_ISREG(st.st_mode):
                    with open(p, "rb") as f:
                        what = hashlib.sha256(f.read()).hexdigest()
                else:
                    what = st.st_rdev
                xattrs = tuple(sorted((n, os.getxattr(p, n)) for n in os.listxattr(p)
                                      if not n.startswith("trusted.")))
            mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, what, mtime, xattrs)
    return out


def mounts_below(top: Path) -> list[str]:
    prefix = str(Path(top).resolve()) + "/"
    return sorted(m for m in mounts() if m.startswith(prefix))


def umount_below(top: Path) -> None:
    """Unmount everything below top, deepest first (test teardown, also after failures)."""
    for m in sorted(mounts_below(top), key=len, reverse=True):
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", m], check=True, capture_output=True)


def cache_dir() -> Path:
    return Path(os.environ.get("IMAGEFACTORY_CACHE", "/var/cache/imagefactory"))


def sid_image() -> Path:
    """A real debian-sid image, built once from the host's mirror and kept in the test cache
    ($IMAGEFACTORY_CACHE/test-images/); the build is reproducible, so a kept one is as good."""
    out = cache_dir() / "test-images"
    image = out / "debian-sid.tar.zst"
    if not (out / "debian-sid.manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "imagefactory", "build", "debian-sid", "-o", str(out),
                        "--allow-expired-release", "--cache-dir", str(cache_dir())], check=True,
                       capture_output=True)
    return image


def assert_whole_or_nothing(area: Path, name: str, committed: list[str]) -> None:
    """After a killed seed of `name` (vdir area/vservers, confdir area/etc): either a committed
    guest (conf dir, state, root; appended to committed) or nothing of it, and every mount
    below area belongs to a committed guest (one with a conf dir)."""
    from unify.composefs.guest import GuestLayers
    from unify.composefs.mount import is_mounted

    root, conf = area / "vservers" / name, area / "etc" / name
    layers = GuestLayers(root)
    if conf.exists():
        assert layers.read() is not None and root.is_dir(), name
        committed.append(name)
    else:
        assert not is_mounted(root) and not is_mounted(layers.erofs_mnt), name
        assert not layers.exists(), name
    allowed = set()
    for c in (p.name for p in (area / "etc").iterdir() if not p.name.startswith(".")):
        allowed |= {str(area / "vservers" / c), str(GuestLayers(area / "vservers" / c).erofs_mnt)}
    assert set(mounts_below(area)) <= allowed, mounts_below(area)
