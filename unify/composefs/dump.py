"""A guest tree as a composefs-dump(5) listing: the one metadata format every layer is made from.

One line per file: PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST XATTR...
(absolute path, octal mode with a leading '@' for a hard link, mtime as SEC.NSEC, payload =
object path `ab/cdef...` for regular files, the target for symlinks, the first path for hard
links; '-' for an empty field; bytes outside printable ASCII, spaces, backslashes and, in
xattrs, '=' are written as \\xHH). `mkcomposefs --from-file` turns it into an EROFS image,
unify.composefs.metadir into a directory of sparse files, and --verify/--gc read it to know
which objects a guest uses. We never inline content: every non-empty regular file is an
object, so a file's bytes exist once per store, whichever layer format a guest uses.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagefactory.core.atomic import write_bytes
from imagefactory.core.errors import ImageFactoryError


@dataclass(slots=True)
class Entry:
    path: str  # absolute, "/" for the root
    mode: int  # st_mode with the type bits
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    rdev: int = 0
    nlink: int = 1
    payload: str = ""  # object path (regular file), symlink target, or hard link target path
    digest: str = ""  # fs-verity digest of a regular file's content ("" when empty)
    hardlink: bool = False
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def is_object(self) -> bool:
        """A regular file whose content lives in the store."""
        return stat.S_ISREG(self.mode) and not self.hardlink and bool(self.digest)


def object_path(digest: str) -> str:
    """The object's path below the store's objects/ (mkcomposefs --digest-store layout)."""
    return f"{digest[:2]}/{digest[2:]}"


_ESCAPE = re.compile(rb"[^\x21-\x5b\x5d-\x7e]")  # all but printable ASCII without backslash
_ESCAPE_XATTR = re.compile(rb"[^\x21-\x3c\x3e-\x5b\x5d-\x7e]")  # ... and without '='
_UNESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)")
_NAMED = {"\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t"}


def _hex(m: re.Match) -> bytes:
    return b"\\x%02x" % m[0][0]


def escape(data: bytes, xattr: bool = False) -> str:
    if not data:
        return "-"
    if data == b"-":
        return "\\x2d"
    return (_ESCAPE_XATTR if xattr else _ESCAPE).sub(_hex, data).decode("ascii")


def _unhex(m: re.Match) -> str:
    code = m[1]
    raw = bytes([int(code[1:], 16)]) if code[0] == "x" else _NAMED[code]
    return raw.decode("latin-1")


def unescape(text: str) -> bytes:
    if text == "-":
        return b""
    if "\\" not in text:
        return text.encode()
    # Unescaped parts are ASCII, so latin-1 maps the result back to the exact bytes.
    return _UNESCAPE.sub(_unhex, text).encode("latin-1")


def _name(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def format_entry(e: Entry) -> str:
    sec, nsec = divmod(e.mtime_ns, 1_000_000_000)
    mode = f"{'@' if e.hardlink else ''}{e.mode:o}"
    fields = [
        escape(_name(e.path)), str(e.size), mode, str(e.nlink), str(e.uid), str(e.gid), str(e.rdev),
        f"{sec}.{nsec}", escape(_name(e.payload)), "-", e.digest or "-",
    ]
    fields += [f"{escape(_name(k), True)}={escape(v, True) if v else ''}" for k, v in sorted(e.xattrs.items())]
    return " ".join(fields)


def parse_line(line: str) -> Entry:
    parts = line.split(" ")
    if len(parts) < 11:
        raise ImageFactoryError(f"composefs dump line has {len(parts)} fields, expected at least 11: {line[:80]!r}")
    path, size, mode, nlink, uid, gid, rdev, mtime, payload, _content, digest = parts[:11]
    hardlink = mode.startswith("@")
    sec, _, nsec = mtime.partition(".")
    xattrs = {}
    for item in parts[11:]:
        key, _, value = item.partition("=")
        xattrs[unescape(key).decode("utf-8", "surrogateescape")] = unescape(value) if value else b""
    return Entry(
        path=unescape(path).decode("utf-8", "surrogateescape"), mode=int(mode.lstrip("@"), 8), uid=int(uid),
        gid=int(gid), size=int(size), mtime_ns=int(sec) * 1_000_000_000 + int(nsec or 0), rdev=int(rdev),
        nlink=int(nlink), payload=unescape(payload).decode("utf-8", "surrogateescape"),
        digest="" if digest == "-" else digest, hardlink=hardlink, xattrs=xattrs,
    )


def render(entries: Iterable[Entry]) -> bytes:
    return "".join(format_entry(e) + "\n" for e in entries).encode()


def write(path: Path, entries: Iterable[Entry]) -> None:
    write_bytes(path, render(entries), mode=0o600)


def parse(data: bytes) -> Iterator[Entry]:
    for line in data.decode().splitlines():
        if line:
            yield parse_line(line)


def read(path: Path) -> list[Entry]:
    try:
        return list(parse(Path(path).read_bytes()))
    except OSError as exc:
        raise ImageFactoryError(f"{path}: cannot read the guest's listing: {exc.strerror}") from None


def digests(path: Path) -> set[str]:
    """The objects a listing uses (cheap: no full parse of the other fields)."""
    out = set()
    for line in Path(path).read_bytes().decode().splitlines():
        parts = line.split(" ", 11)
        if len(parts) >= 11 and parts[10] != "-" and not parts[2].startswith("@"):
            out.add(parts[10])
    return out
