"""Verify an image against its manifest and unpack it without trusting it.

An image is hostile input until proven otherwise: its hash must match the
manifest, and every member is checked by a tarfile extraction filter that
keeps what an OS tree needs (owners, setuid bits, absolute in-guest symlinks,
the secure /dev set) and refuses what could touch the host (absolute or '..'
member names, writes through symlinks, links leaving the root, other device
nodes).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

from imagefactory.core.errors import ImageFactoryError, UnsafeInput, VerificationError
from imagefactory.core.manifest import ImageFiles
from imagefactory.core.paths import is_inside
from imagefactory.core.progress import Progress

# util-vserver's secure /dev (see docs/seed.md): name -> (major, minor).
SECURE_DEV: dict[str, tuple[int, int]] = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
    "ptmx": (5, 2),
}


def manifest_path(image: Path) -> Path:
    """`<name>.tar.zst` -> `<name>.manifest.json` beside it."""
    return ImageFiles.of_image(image).manifest


def load_manifest(image: Path) -> dict:
    """Read and minimally check the manifest that vouches for an image."""
    path = manifest_path(image)
    try:
        manifest = json.loads(path.read_text())
        digest = manifest["image"]["sha256"]
    except FileNotFoundError:
        raise ImageFactoryError(f"{path}: manifest missing; refusing an image nothing vouches for") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageFactoryError(f"{path}: not an image manifest ({exc})") from None
    if not isinstance(digest, str) or len(digest) != 64:
        raise ImageFactoryError(f"{path}: image.sha256 is not a SHA-256 hex digest")
    return manifest


def verify(fileobj: io.BufferedIOBase, manifest: dict, label: str) -> None:
    """Check size and SHA-256 of an open image against its manifest."""
    expected = manifest["image"]
    size = os.fstat(fileobj.fileno()).st_size
    if "size" in expected and expected["size"] != size:
        raise VerificationError(f"{label}: size {size} does not match the manifest's {expected['size']}")
    actual = hashlib.file_digest(fileobj, "sha256").hexdigest()
    if actual != expected["sha256"].lower():
        raise VerificationError(f"{label}: sha256 {actual} does not match the manifest's {expected['sha256']}")


class MemberFilter:
    """tarfile extraction filter for guest images (raises UnsafeInput to refuse).

    Where a member lands is judged by resolving its parent directory with
    realpath, so a member can never be written through a symlink unpacked
    earlier. Parents are cached: since no path may appear twice in an image,
    a directory, once it exists, cannot later turn into a symlink.
    """

    def __init__(self, dest: Path) -> None:
        self.root = os.path.realpath(dest)
        self._dirs: dict[str, str] = {"": self.root}

    def _real_dir(self, rel: str, name: str) -> str:
        real = self._dirs.get(rel)
        if real is None:
            real = os.path.realpath(os.path.join(self.root, rel))
            if not is_inside(real, self.root):
                raise UnsafeInput(f"image member {name!r}: path leads outside the guest root (through a symlink)")
            self._dirs[rel] = real
        return real

    def _real(self, rel: str, name: str) -> str:
        """Host path for rel (normalised, relative), its parent resolved and checked."""
        if rel == ".":
            return self.root
        parent, _, base = rel.rpartition("/")
        return os.path.join(self._real_dir(parent, name), base)

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        name = member.name
        if name.startswith("/") or ".." in name.split("/"):
            raise UnsafeInput(f"image member {name!r}: absolute or '..' path")
        rel = posixpath.normpath(name)
        path = self._real(rel, name)
        # A tree's archive names each path once; a second entry could only
        # swap an earlier file or directory for a link (or chmod through one).
        if os.path.lexists(path) and not (member.isdir() and not os.path.islink(path) and os.path.isdir(path)):
            raise UnsafeInput(f"image member {name!r}: appears twice in the image")
        if member.issym():
            # Absolute targets are resolved inside the guest when it runs;
            # only a relative target can climb out of the root.
            target = member.linkname
            if not target.startswith("/"):
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
                if resolved == ".." or resolved.startswith("../"):
                    raise UnsafeInput(f"image member {name!r}: symlink to {target!r} leaves the guest root")
        elif member.islnk():
            target = member.linkname
            if target.startswith("/") or ".." in target.split("/"):
                raise UnsafeInput(f"image member {name!r}: hard link to {target!r} outside the image")
            # os.link follows a symlink target: only an unpacked regular file may be linked.
            source = self._real(posixpath.normpath(target), name)
            if not (os.path.lexists(source) and stat.S_ISREG(os.lstat(source).st_mode)):
                raise UnsafeInput(f"image member {name!r}: hard link to {target!r}, not a regular file of the image")
        elif member.isblk():
            raise UnsafeInput(f"image member {name!r}: block device node")
        elif member.ischr():
            expected = SECURE_DEV.get(rel.removeprefix("dev/")) if rel.startswith("dev/") else None
            if expected != (member.devmajor, member.devminor):
                raise UnsafeInput(
                    f"image member {name!r}: character device {member.devmajor},{member.devminor} "
                    "is not in the secure /dev set"
                )
        return member


# Extended attributes an OS tree needs (file capabilities such as ping's
# cap_net_raw, ACLs, user attributes); trusted.* and security.* others are
# host policy, not image content.
XATTR_ALLOWED = ("security.capability", "system.posix_acl_access", "system.posix_acl_default")
XATTR_PREFIX = "SCHILY.xattr."


def _wanted_xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    out = {}
    for key, value in member.pax_headers.items():
        name = key.removeprefix(XATTR_PREFIX)
        if key.startswith(XATTR_PREFIX) and (name in XATTR_ALLOWED or name.startswith("user.")):
            out[name] = value.encode("utf-8", "surrogateescape")
    return out


def _apply_xattrs(root: Path, pending: list[tuple[str, dict[str, bytes]]]) -> None:
    """Set xattrs after extraction: chown and writes would clear file capabilities."""
    real = os.path.realpath(root)
    for name, attrs in pending:
        path = os.path.join(real, name)
        if not is_inside(os.path.realpath(os.path.dirname(path)), real):
            raise UnsafeInput(f"image member {name!r}: parent left the guest root during unpacking")
        for key, value in attrs.items():
            os.setxattr(path, key, value, follow_symlinks=False)


def _counted(
    tar: tarfile.TarFile, total: int, progress: Progress, xattrs: list[tuple[str, dict[str, bytes]]]
) -> Iterator[tarfile.TarInfo]:
    for done, member in enumerate(tar, 1):
        progress.count("unpacked", done, max(total, done), " entries")
        if not member.issym() and (attrs := _wanted_xattrs(member)):
            xattrs.append((member.name, attrs))
        yield member


def unpack(fileobj: BinaryIO, dest: Path, *, total: int = 0, progress: Progress | None = None) -> None:
    """Stream a .tar.zst from fileobj into dest (which must exist and be empty)."""
    progress = progress or Progress(quiet=True)
    xattrs: list[tuple[str, dict[str, bytes]]] = []
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(fileobj, closefd=False)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            members = _counted(tar, total, progress, xattrs)
            # numeric_owner: the guest's uids mean nothing in the host's passwd.
            tar.extractall(dest, members=members, numeric_owner=True, filter=MemberFilter(dest))
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise ImageFactoryError(f"image is not a valid .tar.zst: {exc}") from None
    _apply_xattrs(dest, xattrs)
    os.chmod(dest, 0o755)
