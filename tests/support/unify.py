"""Shared helpers for the unify tests: small guest trees and a tree fingerprint."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from unify import probe


def write(path: Path, data: bytes, mode: int = 0o644, mtime: int = 1_700_000_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))
    return path


def make_guest(root: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A tiny guest: shared binaries, a conffile, excluded /var, a symlink, a small file."""
    write(root / "usr/bin/tool", b"#!/bin/sh\necho shared tool\n" * 40, 0o755)
    write(root / "usr/lib/libx.so.1", b"\x7fELF shared library body " * 200)
    write(root / "usr/share/doc/README", b"documentation that every guest carries\n" * 10)
    write(root / "etc/app.conf", b"setting = default value for everybody\n")
    write(root / "var/lib/dpkg/info/app.conffiles", b"/etc/app.conf\n/usr/share/doc/README\n")
    write(root / "var/cache/big", b"cache data that is identical in guests\n" * 10)
    write(root / "usr/share/tiny", b"tiny")
    (root / "usr/bin/link").symlink_to("tool")
    for rel, data in (extra or {}).items():
        write(root / rel, data)
    return root


def tree_state(root: Path) -> dict[str, tuple]:
    """path -> (kind, content hash or link target, mode) for every entry below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p), 0)
            elif p.is_dir():
                out[rel] = ("d", "", st.st_mode)
            else:
                out[rel] = ("f", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mode)
    return out


def clear_flags(*paths: Path) -> None:
    """Drop immutable flags so pytest can remove the tmp dirs."""
    for top in paths:
        if not top.exists():
            continue
        for dirpath, _, filenames in os.walk(top):
            for name in filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    continue
                try:
                    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    probe.change_flags(fd, remove=probe.FS_IMMUTABLE_FL)
                except OSError:
                    pass
                finally:
                    os.close(fd)


def copy_host_subset(dest: Path, limit: int = 150, max_size: int = 1 << 20) -> Path:
    """A guest made of real host files (/usr/bin and the multiarch lib dir), hard links and
    symlinks preserved; files above max_size are left out to keep the tests quick."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in ("/usr/bin", "/usr/lib/x86_64-linux-gnu"):
        names = sorted(
            n for n in os.listdir(src)
            if os.path.islink(os.path.join(src, n))
            or (os.path.isfile(os.path.join(src, n)) and os.path.getsize(os.path.join(src, n)) <= max_size)
        )[:limit]
        target = dest / src.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--", *[os.path.join(src, n) for n in names], str(target)], check=True)
    return dest


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
