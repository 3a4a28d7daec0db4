"""APT index text: Packages stanzas and the Release file (pure functions).

The layout follows the Debian archive: dists/<suite>/<component>/binary-<arch>/
Packages(.xz) listed with MD5Sum/SHA256 and sizes in Release, plus by-hash
copies so a client that read an older Release still fetches matching indexes.
"""

from __future__ import annotations

import email.utils
import hashlib
from dataclasses import dataclass

from debian_inspector.debcon import get_paragraphs_data


@dataclass(frozen=True)
class PackageEntry:
    control: str
    filename: str  # path relative to the repository root (pool/...)
    size: int
    md5: str
    sha256: str
    architecture: str


def pool_path(component: str, package: str, version: str, architecture: str) -> str:
    """Debian-style pool file name (the epoch is not part of file names)."""
    bare = version.split(":", 1)[-1]
    return f"pool/{component}/{package}/{package}_{bare}_{architecture}.deb"


def stanza(entry: PackageEntry) -> str:
    return (f"{entry.control}\nFilename: {entry.filename}\nSize: {entry.size}\n"
            f"MD5sum: {entry.md5}\nSHA256: {entry.sha256}\n")


def packages_text(entries: list[PackageEntry], arch: str) -> str:
    """The Packages index for one architecture; `all` packages appear in every one."""
    chosen = [e for e in entries if e.architecture in (arch, "all")]
    return "\n".join(stanza(e) for e in sorted(chosen, key=lambda e: e.filename))


@dataclass(frozen=True)
class IndexFile:
    path: str  # relative to dists/<suite>/
    data: bytes

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def release_text(*, origin: str, label: str, suite: str, codename: str, architectures: list[str],
                 components: list[str], files: list[IndexFile], date: float, description: str = "",
                 valid_seconds: int = 0) -> str:
    """A Release file: apt checks every index it fetches against these sizes and hashes."""
    lines = [
        f"Origin: {origin}",
        f"Label: {label}",
        f"Suite: {suite}",
        f"Codename: {codename}",
        f"Date: {email.utils.formatdate(date, usegmt=True)}",
        *([f"Valid-Until: {valid_until(date, valid_seconds)}"] if valid_seconds > 0 else []),
        f"Architectures: {' '.join(architectures)}",
        f"Components: {' '.join(components)}",
        "Acquire-By-Hash: yes",
    ]
    if description:
        lines.append(f"Description: {description}")
    width = len(str(max((len(f.data) for f in files), default=0)))
    lines.append("MD5Sum:")
    lines += [f" {f.md5} {len(f.data):>{width}} {f.path}" for f in files]
    lines.append("SHA256:")
    lines += [f" {f.sha256} {len(f.data):>{width}} {f.path}" for f in files]
    return "\n".join(lines) + "\n"


def valid_until(date: float, valid_seconds: int) -> str:
    """The RFC 2822 date after which apt refuses the Release (`Check-Valid-Until`)."""
    return email.utils.formatdate(date + valid_seconds, usegmt=True)


def expires_at(fields: dict[str, str]) -> float | None:
    """Valid-Until of parsed Release fields as a timestamp (None: no expiry or unparsable)."""
    value = fields.get("Valid-Until")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def parse_release(text: str) -> tuple[dict[str, str], dict[str, tuple[str, int]]]:
    """Release fields and its SHA256 list {path: (sha256, size)}."""
    fields: dict[str, str] = {}
    sums: dict[str, tuple[str, int]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith(" "):
            if section == "SHA256":
                digest, size, path = line.split()
                sums[path] = (digest, int(size))
            continue
        name, _, value = line.partition(":")
        section = name
        fields[name] = value.strip()
    return fields, sums


def parse_packages(text: str) -> list[dict[str, str]]:
    """Packages stanzas as {lower-case field: value} (debian-inspector does the deb822 work)."""
    return list(get_paragraphs_data(text))
