"""Packages indices parsed into compact records.

A sid Packages file has ~77,000 stanzas; only the fields the resolver and
downloader need are kept. Warm builds do not parse at all: the resolution
itself is memoized per signed Release (see debian.py).
"""

from __future__ import annotations

import gzip
import lzma
import re
from pathlib import Path
from typing import NamedTuple

from imagefactory.core.errors import VerificationError


class Package(NamedTuple):
    """One stanza's fields the resolver and downloader need (a tuple: cheap to
    build, pickle and pass between processes for 100,000 stanzas)."""

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


_FIELD = re.compile(
    r"^(Package|Version|Architecture|Multi-Arch|Essential|Priority|Depends|Pre-Depends|Provides|Filename"
    r"|Size|SHA256|Conflicts|Breaks):[ \t]*(.*(?:\n[ \t].*)*)",
    re.MULTILINE,
)


def parse_packages(text: str, origin: str = "Packages") -> list[Package]:
    """Parse a Packages index (one regex pass per stanza: the wanted fields only,
    continuation lines folded). Required fields are checked."""
    out = []
    for stanza in text.split("\n\n"):
        if not stanza.strip():
            continue
        f = dict(_FIELD.findall(stanza))
        try:
            out.append(
                Package(
                    f["Package"], f["Version"], f["Architecture"], f["Filename"], int(f["Size"]), f["SHA256"],
                    f.get("Priority", "optional"), f.get("Essential", "no").lower() == "yes",
                    f.get("Multi-Arch", "no"), _fold(f.get("Depends", "")), _fold(f.get("Pre-Depends", "")),
                    _fold(f.get("Provides", "")), _fold(f.get("Conflicts", "")), _fold(f.get("Breaks", "")),
                )
            )
        except (KeyError, ValueError) as exc:
            name = f.get("Package", "?")
            raise VerificationError(f"{origin}: malformed stanza for package {name!r} ({exc})") from None
    return out


def _fold(value: str) -> str:
    return " ".join(value.split()) if "\n" in value else value.strip()


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
    """Parsed index for a verified cached file."""
    return parse_packages(decompress(path, name), name)
