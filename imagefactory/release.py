"""Debian/Ubuntu archive metadata: InRelease, verified before it is parsed.

Only the bytes gpgv says were signed are ever parsed (gpgv --output), so a
clearsigned file with extra unsigned text cannot smuggle fields in.
"""

from __future__ import annotations

import email.utils
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from imagefactory.errors import EnvironmentProblem, VerificationError


@dataclass(frozen=True)
class IndexFile:
    path: str  # relative to dists/<suite>/
    sha256: str
    size: int


@dataclass(frozen=True)
class Release:
    suite: str
    codename: str
    date: datetime
    valid_until: datetime | None
    by_hash: bool
    arch_all_separate: bool  # No-Support-for-Architecture-all: Packages
    architectures: tuple[str, ...]
    components: tuple[str, ...]
    files: dict[str, IndexFile] = field(default_factory=dict)
    date_text: str = ""


def _parse_date(text: str, what: str) -> datetime:
    try:
        dt = email.utils.parsedate_to_datetime(text.replace("UTC", "+0000"))
    except (TypeError, ValueError):
        raise VerificationError(f"Release has a malformed {what}: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_release(text: str) -> Release:
    """Parse a (verified) Release file; SHA256 lines become IndexFile entries."""
    fields: dict[str, str] = {}
    files: dict[str, IndexFile] = {}
    section = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t":
            if section == "sha256":
                parts = line.split()
                if len(parts) != 3:
                    raise VerificationError(f"Release has a malformed SHA256 line: {line.strip()!r}")
                files[parts[2]] = IndexFile(parts[2], parts[0], int(parts[1]))
            continue
        key, _, value = line.partition(":")
        section = key.strip().lower()
        fields[section] = value.strip()
    if "date" not in fields:
        raise VerificationError("Release has no Date field")
    if not files:
        raise VerificationError("Release lists no SHA256 checksums")
    return Release(
        suite=fields.get("suite", ""),
        codename=fields.get("codename", ""),
        date=_parse_date(fields["date"], "Date"),
        valid_until=_parse_date(fields["valid-until"], "Valid-Until") if "valid-until" in fields else None,
        by_hash=fields.get("acquire-by-hash", "no").lower() == "yes",
        arch_all_separate="packages" in fields.get("no-support-for-architecture-all", "").lower().split(),
        architectures=tuple(fields.get("architectures", "").split()),
        components=tuple(fields.get("components", "").split()),
        files=files,
        date_text=fields["date"],
    )


def check_valid_until(rel: Release, now: datetime, allow_expired: bool) -> None:
    """Refuse an expired Release (a replay or a stale mirror) unless explicitly allowed."""
    if rel.valid_until and now > rel.valid_until and not allow_expired:
        raise VerificationError(
            f"Release of {rel.codename or rel.suite} expired on {rel.valid_until:%Y-%m-%d %H:%M} UTC "
            f"(a stale mirror or snapshot); pass --allow-expired-release to accept it"
        )


def _gpgv_keyring(keyring: Path, tmp: Path) -> Path:
    """gpgv wants a binary keyring; dearmor an .asc key file first."""
    data = keyring.read_bytes()
    if not data.lstrip().startswith(b"-----BEGIN PGP"):
        return keyring
    out = tmp / "keyring.gpg"
    subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "-o", str(out), str(keyring)], check=True,
                   capture_output=True)
    return out


def verify_signed(data: bytes, keyring: Path, what: str) -> bytes:
    """Verify a clearsigned document with gpgv; return exactly the signed text."""
    if not keyring.is_file():
        raise VerificationError(f"keyring {keyring} not found (install debian-archive-keyring or set 'keyring')")
    with tempfile.TemporaryDirectory(prefix="imagefactory-gpgv.") as tmp:
        tmpdir = Path(tmp)
        signed = tmpdir / "InRelease"
        signed.write_bytes(data)
        out = tmpdir / "Release"
        try:
            kr = _gpgv_keyring(keyring, tmpdir)
            proc = subprocess.run(
                ["gpgv", "--status-fd", "1", "--keyring", str(kr), "--output", str(out), str(signed)],
                capture_output=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            )
        except FileNotFoundError as exc:
            raise EnvironmentProblem(f"{exc.filename} not found: install gpgv (scripts/setup does)") from None
        status = proc.stdout.decode(errors="replace")
        if proc.returncode != 0 or "[GNUPG:] VALIDSIG" not in status:
            reason = "no valid signature"
            if "NO_PUBKEY" in status:
                reason = "signed by a key not in " + str(keyring)
            elif "BADSIG" in status:
                reason = "BAD signature (the file was altered)"
            elif "NODATA" in status:
                reason = "not signed at all"
            raise VerificationError(f"{what}: {reason}")
        return out.read_bytes()
