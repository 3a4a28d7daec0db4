"""Packages indices: parsed once into compact records, cached by index hash.

A sid Packages file has ~70,000 stanzas; we keep only the fields the
resolver and downloader need, and pickle the result next to the cached
index so a warm build skips decompression and parsing entirely.
"""

from __future__ import annotations

import gzip
import lzma
import pickle
from dataclasses import dataclass
from pathlib import Path

from imagefactory.errors import VerificationError

FIELDS = {
    "package", "version", "architecture", "multi-arch", "essential", "priority", "depends",
    "pre-depends", "provides", "filename", "size", "sha256", "conflicts", "breaks",
}


@dataclass(frozen=True, slots=True)
class Package:
    name: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str
    priority: str = "optional"
    essential: bool = False
    multi_arch: str = "no"
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    conflicts: str = ""
    breaks: str = ""


def parse_packages(text: str, origin: str = "Packages") -> list[Package]:
    """Parse a Packages index. Unknown fields are skipped; required ones checked."""
    out = []
    for stanza in text.split("\n\n"):
        if not stanza.strip():
            continue
        f: dict[str, str] = {}
        key = ""
        for line in stanza.split("\n"):
            if not line:
                continue
            if line[0] in " \t":
                if key in FIELDS:
                    f[key] += " " + line.strip()
                continue
            k, _, v = line.partition(":")
            key = k.lower()
            if key in FIELDS:
                f[key] = v.strip()
        try:
            out.append(
                Package(
                    name=f["package"],
                    version=f["version"],
                    architecture=f["architecture"],
                    filename=f["filename"],
                    size=int(f["size"]),
                    sha256=f["sha256"],
                    priority=f.get("priority", "optional"),
                    essential=f.get("essential", "no").lower() == "yes",
                    multi_arch=f.get("multi-arch", "no"),
                    depends=f.get("depends", ""),
                    pre_depends=f.get("pre-depends", ""),
                    provides=f.get("provides", ""),
                    conflicts=f.get("conflicts", ""),
                    breaks=f.get("breaks", ""),
                )
            )
        except (KeyError, ValueError) as exc:
            name = f.get("package", "?")
            raise VerificationError(f"{origin}: malformed stanza for package {name!r} ({exc})") from None
    return out


def decompress(path: Path, name: str) -> str:
    """Decompress an index by its published name (.xz, .gz or plain)."""
    data = path.read_bytes()
    try:
        if name.endswith(".xz"):
            data = lzma.decompress(data)
        elif name.endswith(".gz"):
            data = gzip.decompress(data)
    except (lzma.LZMAError, OSError) as exc:
        raise VerificationError(f"{name}: corrupt compressed index ({exc})") from None
    return data.decode("utf-8", errors="replace")


def load_index(path: Path, name: str) -> list[Package]:
    """Parsed index for a verified cached file, memoized as <file>.parsed."""
    memo = path.with_name(path.name + ".parsed")
    if memo.is_file():
        try:
            with memo.open("rb") as f:
                return pickle.load(f)
        except Exception:  # a stale or truncated memo is just recomputed
            pass
    pkgs = parse_packages(decompress(path, name), name)
    tmp = memo.with_name(memo.name + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(pkgs, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(memo)
    return pkgs
