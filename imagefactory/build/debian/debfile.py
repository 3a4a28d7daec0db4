"""Reading .deb files: the ar container and its tar members, extracted safely.

Used for the first (essential) extraction, before the guest's own dpkg can
run. Every member is checked before anything is written: no absolute or
`..` names, no device nodes, no hard links out of the tree, and no path
whose parent resolves outside the root (a symlink planted by an earlier
package must not redirect a write onto the host). Existing directory
symlinks are kept (merged-/usr: /bin -> usr/bin stays a symlink).
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import lzma
import os
import tarfile
from pathlib import Path

import zstandard

from imagefactory.core.errors import UnsafeInput, VerificationError
from imagefactory.core.paths import is_inside

AR_MAGIC = b"!<arch>\n"


def ar_members(data: bytes, origin: str) -> dict[str, bytes]:
    """The members of an ar archive, by name."""
    if not data.startswith(AR_MAGIC):
        raise VerificationError(f"{origin}: not a .deb (no ar header)")
    members: dict[str, bytes] = {}
    pos = len(AR_MAGIC)
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        if header[58:60] != b"`\n":
            raise VerificationError(f"{origin}: corrupt ar member header")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode().strip())
        except ValueError:
            raise VerificationError(f"{origin}: corrupt ar header") from None
        pos += 60
        members[name] = data[pos:pos + size]
        pos += size + (size & 1)
    return members


def ar_mtime(deb: Path) -> int:
    """The timestamp of a .deb's first ar member: when dpkg-deb built it (SOURCE_DATE_EPOCH of the
    package's changelog for reproducible builds). Only the header is read."""
    with open(deb, "rb") as f:
        head = f.read(len(AR_MAGIC) + 60)
    if not head.startswith(AR_MAGIC) or len(head) < len(AR_MAGIC) + 60:
        raise VerificationError(f"{deb}: not a .deb (no ar header)")
    try:
        return int(head[len(AR_MAGIC) + 16:len(AR_MAGIC) + 28].decode().strip() or 0)
    except ValueError:
        raise VerificationError(f"{deb}: corrupt ar header") from None


def decompress_member(name: str, blob: bytes, origin: str) -> bytes:
    """data.tar / control.tar in any compression dpkg accepts (Ubuntu uses zstd)."""
    try:
        if name.endswith(".xz"):
            return lzma.decompress(blob)
        if name.endswith(".zst"):
            return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        if name.endswith(".gz"):
            return gzip.decompress(blob)
        if name.endswith(".tar"):
            return blob
    except (lzma.LZMAError, zstandard.ZstdError, OSError, EOFError) as exc:
        raise VerificationError(f"{origin}: corrupt {name} ({exc})") from None
    raise VerificationError(f"{origin}: unsupported member compression {name}")


def tar_member(deb: Path, prefix: str) -> bytes:
    """The decompressed control.tar or data.tar of a .deb."""
    members = ar_members(deb.read_bytes(), str(deb))
    for name, blob in members.items():
        if name.startswith(prefix + ".tar"):
            return decompress_member(name, blob, str(deb))
    raise VerificationError(f"{deb}: no {prefix}.tar member")


def member_path(name: str, origin: str) -> str:
    """Normalize a tar member name to a root-relative path, refusing unsafe ones."""
    if name.startswith("/"):
        raise UnsafeInput(f"{origin}: archive member with absolute path {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeInput(f"{origin}: archive member with '..' in its path {name!r}")
    return "/".join(parts)


def _excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase("/" + rel, p) for p in patterns)


def safe_members(tar: tarfile.TarFile, root: Path, origin: str, exclude: tuple[str, ...] = ()):
    """Yield members that are safe to extract into root (raises on hostile ones)."""
    real_root = os.path.realpath(root)
    checked: set[str] = set()  # parent directories already resolved inside the root
    for m in tar:
        rel = member_path(m.name, origin)
        if not rel:
            continue
        if m.ischr() or m.isblk() or m.isfifo():
            raise UnsafeInput(f"{origin}: unexpected device node or FIFO {m.name!r}")
        if m.islnk():
            m.linkname = member_path(m.linkname, origin)
        if exclude and _excluded(rel, exclude) and not m.isdir():
            continue
        parent_rel = os.path.dirname(rel)
        if parent_rel not in checked:
            if not is_inside(os.path.realpath(os.path.join(real_root, parent_rel)), real_root):
                raise UnsafeInput(f"{origin}: member {m.name!r} would be written outside the root via a symlink")
            checked.add(parent_rel)
        if m.issym():  # a symlink member may replace a directory resolved earlier
            checked = {c for c in checked if not is_inside(c, rel)}
        m.name = rel
        yield m


def extract_data(deb: Path, root: Path, exclude: tuple[str, ...] = ()) -> None:
    """Extract a .deb's data.tar into root (as `dpkg-deb --fsys-tarfile | tar
    --keep-directory-symlink -x` would, but refusing unsafe members)."""
    raw = tar_member(deb, "data")
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for m in safe_members(tar, root, deb.name, exclude):
            target = root / m.name
            if m.isdir():
                if target.is_dir():  # keeps merged-/usr directory symlinks
                    continue
            elif target.is_symlink() or target.exists():
                if target.is_dir() and not target.is_symlink():
                    continue
                target.unlink()
            try:
                tar.extract(m, root, set_attrs=not m.issym(), numeric_owner=True, filter="fully_trusted")
            except FileExistsError:  # a parallel extraction created a parent directory meanwhile
                tar.extract(m, root, set_attrs=not m.issym(), numeric_owner=True, filter="fully_trusted")
            if m.isdir():
                # Packages run in parallel and the first to create a shared directory would set its
                # mtime (dpkg later leaves existing directories alone): a race. Give it the time of
                # extraction instead, which the image clamps to SOURCE_DATE_EPOCH: the same every build.
                os.utime(target, follow_symlinks=False)
