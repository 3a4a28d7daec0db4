"""repodata/repomd.xml: the signed root of an rpm-md repository.

repomd.xml names every metadata file with its checksum and size; verifying
its detached signature (repomd.xml.asc, when the recipe sets repo_gpgcheck)
and then each file's checksum makes all metadata as trustworthy as the key.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from imagefactory.core.errors import UnsafeInput, VerificationError

REPO = "{http://linux.duke.edu/metadata/repo}"


@dataclass(frozen=True)
class RepoFile:
    """One metadata file listed in repomd.xml (primary, filelists, group, ...)."""

    type: str
    href: str
    checksum_type: str
    checksum: str
    size: int | None
    timestamp: int


@dataclass(frozen=True)
class Repomd:
    revision: str
    files: dict[str, RepoFile]

    @property
    def timestamp(self) -> int:
        """The repository's publication time: the newest metadata file."""
        return max((f.timestamp for f in self.files.values()), default=0)


def safe_href(href: str, what: str) -> str:
    """Metadata and package locations must stay inside the repository."""
    if not href or href.startswith("/") or "://" in href or ".." in href.split("/"):
        raise UnsafeInput(f"{what}: location {href!r} leaves the repository")
    return href


def parse_repomd(data: bytes) -> Repomd:
    """Parse repomd.xml; every listed file must carry a checksum and a location."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise VerificationError(f"repomd.xml: malformed XML ({exc})") from None
    if root.tag != REPO + "repomd":
        raise VerificationError(f"repomd.xml: not an rpm-md index (root element {root.tag})")
    files = {}
    for d in root.iter(REPO + "data"):
        kind = d.get("type", "")
        csum = d.find(REPO + "checksum")
        loc = d.find(REPO + "location")
        if csum is None or loc is None or not (csum.text or "").strip():
            raise VerificationError(f"repomd.xml: entry {kind!r} lacks a checksum or location")
        try:
            size_text = d.findtext(REPO + "size")
            files[kind] = RepoFile(
                type=kind,
                href=safe_href(loc.get("href", ""), f"repomd.xml entry {kind!r}"),
                checksum_type=csum.get("type", ""),
                checksum=(csum.text or "").strip().lower(),
                size=int(size_text) if size_text else None,
                timestamp=int(float(d.findtext(REPO + "timestamp") or 0)),
            )
        except ValueError as exc:
            raise VerificationError(f"repomd.xml: entry {kind!r}: {exc}") from None
    return Repomd(revision=(root.findtext(REPO + "revision") or "").strip(), files=files)


