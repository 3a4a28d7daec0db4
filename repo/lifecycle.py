"""Repository lifecycle: which published versions retention retires, and dropping records from a state.

Retention keeps the newest N versions per image name and per package (name, architecture);
images order by version (snapshot time), .debs by dpkg's rules, RPMs by rpm's. A dropped
version leaves the *new* state only: the superseded states still hard-link its files, and they
are deleted with those states once the grace period has passed (layout.Repo.prune), so a
client that read an older index can still finish its download.
"""

from __future__ import annotations

import functools
from pathlib import Path

from imagefactory.build.debian.resolve import compare_versions
from imagefactory.build.rpm.rpmvercmp import EVR, evrcmp
from imagefactory.core.errors import ImageFactoryError
from repo import images

SECTIONS = ("images", "debs", "rpms", "extras")


class UnknownArtifact(ImageFactoryError):
    """`repo remove` was given an id the current state does not hold."""


def _evr(rec: dict) -> EVR:
    epoch = f"{rec['epoch']}:" if rec.get("epoch") else ""
    return EVR.parse(f"{epoch}{rec['version']}-{rec['release']}")


def _newest_first(section: str, records: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    if section == "images":
        return sorted(records, key=lambda kr: kr[1]["version"], reverse=True)
    def cmp(a: tuple[str, dict], b: tuple[str, dict]) -> int:
        if section == "debs":
            return compare_versions(a[1]["version"], b[1]["version"])
        return evrcmp(_evr(a[1]), _evr(b[1]))

    return sorted(records, key=functools.cmp_to_key(cmp), reverse=True)


def _group(section: str, rec: dict) -> tuple[str, ...]:
    if section == "images":
        return (rec["name"],)
    if section == "debs":
        return (rec["package"], rec["architecture"])
    return (rec["name"], rec["arch"])


def expired(state: dict, keep: int) -> list[tuple[str, str]]:
    """(section, key) of every version beyond the newest `keep` of its image/package (keep 0: none)."""
    if keep <= 0:
        return []
    out = []
    for section in ("images", "debs", "rpms"):
        groups: dict[tuple[str, ...], list[tuple[str, dict]]] = {}
        for key, rec in state[section].items():
            groups.setdefault(_group(section, rec), []).append((key, rec))
        for members in groups.values():
            out += [(section, key) for key, _ in _newest_first(section, members)[keep:]]
    return sorted(out)


def resolve(state: dict, ids: list[str]) -> list[tuple[str, str]]:
    """Map ids as `repo list` prints them to (section, key); an unknown id is an error."""
    out = []
    for ident in ids:
        found = [(s, ident) for s in SECTIONS if ident in state[s]]
        if not found:
            raise UnknownArtifact(f"{ident!r} is not published (see `imagefactory repo list`)")
        out += found
    return out


def drop(stage: Path, state: dict, targets: list[tuple[str, str]]) -> list[str]:
    """Remove the records from state and the files nothing else refers to from the staging state."""
    files: set[str] = set()
    dropped = []
    for section, key in dict.fromkeys(targets):
        record = state[section].pop(key, None)
        if record is not None:
            files |= images.files_of(section, record)
            dropped.append(key)
    images.remove_unreferenced(stage, files, state)
    return dropped
