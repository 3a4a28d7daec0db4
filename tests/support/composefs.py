"""Helpers for the composefs tests: tree fingerprints and mount cleanup (helpers only)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
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
