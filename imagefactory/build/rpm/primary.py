"""primary.xml: every package's name, EVR, location, checksum and dependencies.

Fedora's primary.xml is ~70,000 packages and hundreds of MB uncompressed, so
it is streamed with iterparse and each <package> element is cleared once read.
Only the architectures the guest can install are kept. The parsed result is
memoized next to the verified cache file, so a warm build skips the parse.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from imagefactory.build.rpm.rpmvercmp import EVR, FLAGS
from imagefactory.core.errors import VerificationError

COMMON = "{http://linux.duke.edu/metadata/common}"
RPMNS = "{http://linux.duke.edu/metadata/rpm}"
XMLBASE = "{http://www.w3.org/XML/1998/namespace}base"
MEMO_VERSION = 3


@dataclass(frozen=True)
class Dep:
    """One Provides/Requires/Obsoletes entry; `name` may be a rich dependency `(a or b)`."""

    name: str
    flags: int = 0
    evr: EVR | None = None
    pre: bool = False

    def __str__(self) -> str:
        if self.evr is None:
            return self.name
        op = {2: "<", 4: ">", 8: "=", 10: "<=", 12: ">="}[self.flags]
        return f"{self.name} {op} {self.evr}"


@dataclass(frozen=True)
class Package:
    name: str
    arch: str
    evr: EVR
    href: str
    base: str  # xml:base of <location>, or "" for the repository itself
    checksum_type: str
    checksum: str
    size: int
    provides: tuple[Dep, ...] = ()
    requires: tuple[Dep, ...] = ()
    obsoletes: tuple[Dep, ...] = ()
    conflicts: tuple[Dep, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"


# What open_decompressed returns: a readable binary stream (gzip/lzma/bz2 files are io classes,
# zstandard's reader and plain files are typing.IO).
ByteStream = IO[bytes] | io.BufferedIOBase


def open_decompressed(path: Path, name: str) -> ByteStream:
    """A stream of the uncompressed file, chosen by the published name's suffix."""
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".xz"):
        return lzma.open(path, "rb")
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True)
    return path.open("rb")


def _deps(fmt: ET.Element, kind: str, seen: dict) -> tuple[Dep, ...]:
    """The entries of one dependency list; equal entries share one object (libc.so.6 is
    required by thousands of packages), which keeps memory and the memo small."""
    group = fmt.find(RPMNS + kind)
    if group is None:
        return ()
    out = []
    for e in group.iter(RPMNS + "entry"):
        key = (e.get("name", ""), e.get("flags", ""), e.get("epoch", "0"), e.get("ver", ""), e.get("rel", ""),
               e.get("pre") == "1")
        dep = seen.get(key)
        if dep is None:
            flags = FLAGS.get(key[1], 0)
            dep = seen[key] = Dep(key[0], flags, EVR(key[2], key[3], key[4]) if flags else None, key[5])
        out.append(dep)
    return tuple(out)


def _package(elem: ET.Element, seen: dict) -> Package:
    ver = elem.find(COMMON + "version")
    loc = elem.find(COMMON + "location")
    csum = elem.find(COMMON + "checksum")
    size = elem.find(COMMON + "size")
    fmt = elem.find(COMMON + "format")
    name = elem.findtext(COMMON + "name")
    if ver is None or loc is None or csum is None or size is None or fmt is None or not name or not loc.get("href"):
        raise ValueError(f"package {name or '?'} lacks version, location, checksum, size or format")
    return Package(
        name=name,
        arch=elem.findtext(COMMON + "arch", ""),
        evr=EVR(ver.get("epoch", "0"), ver.get("ver", ""), ver.get("rel", "")),
        href=loc.get("href", ""),
        base=loc.get(XMLBASE, ""),
        checksum_type=csum.get("type", ""),
        checksum=(csum.text or "").strip(),
        size=int(size.get("package", "")),
        provides=_deps(fmt, "provides", seen),
        requires=_deps(fmt, "requires", seen),
        obsoletes=_deps(fmt, "obsoletes", seen),
        conflicts=_deps(fmt, "conflicts", seen),
        files=tuple(f.text for f in fmt.iter(COMMON + "file") if f.text),
    )


def iter_packages(stream: ByteStream, arches: frozenset[str], origin: str = "primary.xml") -> Iterator[Package]:
    """Yield the packages of the given architectures, one element in memory at a time."""
    try:
        seen: dict = {}
        context = ET.iterparse(stream, events=("start", "end"))
        _, root = next(context)
        if root.tag != COMMON + "metadata":
            raise VerificationError(f"{origin}: not rpm-md primary metadata (root element {root.tag})")
        for event, elem in context:
            if event != "end" or elem.tag != COMMON + "package":
                continue
            if elem.findtext(COMMON + "arch") in arches:
                yield _package(elem, seen)
            root.clear()  # drop the finished <package> (and its subtree)
    except ET.ParseError as exc:
        raise VerificationError(f"{origin}: malformed XML ({exc})") from None
    except (ValueError, KeyError) as exc:
        raise VerificationError(f"{origin}: malformed package entry ({exc})") from None
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as exc:
        raise VerificationError(f"{origin}: corrupt compressed metadata ({exc})") from None


def load_primary(path: Path, name: str, arches: frozenset[str]) -> list[Package]:
    """Parsed packages of a verified cached primary file, memoized as <file>.parsed."""
    memo = path.with_name(path.name + ".parsed")
    key = (MEMO_VERSION, sorted(arches))
    if memo.is_file():
        try:
            with memo.open("rb") as f:
                stored_key, pkgs = pickle.load(f)
            if stored_key == key:
                return pkgs
        except Exception:  # a stale or truncated memo is just recomputed
            pass
    with open_decompressed(path, name) as stream:
        pkgs = list(iter_packages(stream, arches, name))
    tmp = memo.with_name(memo.name + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump((key, pkgs), f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(memo)
    return pkgs
