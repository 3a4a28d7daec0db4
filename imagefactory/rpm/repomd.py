"""repodata/repomd.xml: the signed root of an rpm-md repository.

repomd.xml names every metadata file with its checksum and size; verifying
its detached signature (repomd.xml.asc, when the recipe sets repo_gpgcheck)
and then each file's checksum makes all metadata as trustworthy as the key.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from imagefactory.errors import EnvironmentProblem, UnsafeInput, VerificationError

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
                checksum=csum.text.strip().lower(),
                size=int(size_text) if size_text else None,
                timestamp=int(float(d.findtext(REPO + "timestamp") or 0)),
            )
        except ValueError as exc:
            raise VerificationError(f"repomd.xml: entry {kind!r}: {exc}") from None
    return Repomd(revision=(root.findtext(REPO + "revision") or "").strip(), files=files)


def _binary_keyring(keyring: Path, tmp: Path) -> Path:
    """gpgv reads binary keyrings only; Fedora ships armored key files."""
    if not keyring.read_bytes().lstrip().startswith(b"-----BEGIN PGP"):
        return keyring
    out = tmp / "keyring.gpg"
    proc = subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "-o", str(out), str(keyring)],
                          capture_output=True)
    if proc.returncode != 0:
        raise VerificationError(f"keyring {keyring}: not an OpenPGP key file")
    return out


def verify_detached(data: bytes, signature: bytes, keyring: Path, what: str) -> None:
    """Check a detached OpenPGP signature over data with gpgv against keyring only."""
    if not keyring.is_file():
        raise VerificationError(f"keyring {keyring} not found (set the recipe's 'keyring')")
    with tempfile.TemporaryDirectory(prefix="imagefactory-gpgv.") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "data").write_bytes(data)
        (tmpdir / "data.asc").write_bytes(signature)
        try:
            kr = _binary_keyring(keyring, tmpdir)
            proc = subprocess.run(
                ["gpgv", "--status-fd", "1", "--keyring", str(kr), str(tmpdir / "data.asc"), str(tmpdir / "data")],
                capture_output=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            )
        except FileNotFoundError as exc:
            raise EnvironmentProblem(f"{exc.filename} not found: install gpgv (scripts/setup does)") from None
    status = proc.stdout.decode(errors="replace")
    if proc.returncode == 0 and "[GNUPG:] VALIDSIG" in status:
        return
    reason = "no valid signature"
    if "NO_PUBKEY" in status:
        reason = f"signed by a key not in {keyring}"
    elif "BADSIG" in status:
        reason = "BAD signature (the file was altered)"
    elif "NODATA" in status:
        reason = "the signature file holds no signature"
    raise VerificationError(f"{what}: {reason}")
