"""Debian/Ubuntu archive metadata: the Release file and its Valid-Until.

It is parsed only after imagefactory.core.gpgv verified InRelease, and only the
bytes gpgv says were signed are parsed, so a clearsigned file with extra
unsigned text cannot smuggle fields in.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from datetime import UTC, datetime

from imagefactory.core.errors import VerificationError


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
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


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
            f"Release of {rel.codename or rel.suite} is past its Valid-Until ({rel.valid_until:%Y-%m-%d %H:%M} UTC): "
            "a stale mirror or snapshot, or a replayed Release; pass --allow-expired-release to accept it"
        )
