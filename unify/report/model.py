"""The report's records: what `imagefactory report --json` prints (schema 1, docs/report.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SCHEMA = 1


@dataclass
class FileItem:
    """One file in a top list; `guest` names the guest where `path` was met first."""

    path: str
    guest: str
    size: int
    disk_bytes: int
    package: str | None = None
    guests: int = 1  # guests holding it
    copies: int = 1  # separate files without unification (one per guest inode)
    links: int = 1  # names in guests (hard links inside one guest each count)
    saved_bytes: int = 0


@dataclass
class GuestFigures:
    root: str
    name: str
    files: int = 0
    apparent_bytes: int = 0
    disk_bytes: int = 0
    shared_bytes: int = 0
    shared_files: int = 0
    largest_private: list[FileItem] = field(default_factory=list)

    @property
    def private_bytes(self) -> int:
        return self.disk_bytes - self.shared_bytes

    @property
    def share_ratio(self) -> float:
        return self.shared_bytes / self.disk_bytes if self.disk_bytes else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["private_bytes"] = self.private_bytes
        out["share_ratio"] = round(self.share_ratio, 6)
        return out


@dataclass
class StoreFigures:
    path: str
    entries: int = 0
    apparent_bytes: int = 0
    disk_bytes: int = 0
    orphans: int = 0
    link_histogram: list[dict] = field(default_factory=list)
    overflow_entries: int = 0  # second (third...) entries of a content whose entry hit the link limit


@dataclass
class Report:
    mode: str
    guests: list[GuestFigures]
    store: StoreFigures | None
    totals: dict
    top_shared: list[FileItem]
    top_packages: list[dict]
    shared_libraries: dict
    cumulative: list[dict]

    def largest_private(self) -> list[FileItem]:
        """Every guest's largest private files, largest first."""
        return sorted((i for g in self.guests for i in g.largest_private),
                      key=lambda i: (-i.disk_bytes, i.guest, i.path))

    def to_dict(self) -> dict:
        """The --json document (schema 1, described in docs/report.md)."""
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "totals": self.totals,
            "guests": [g.to_dict() for g in self.guests],
            "store": asdict(self.store) if self.store else None,
            "top_shared": [asdict(i) for i in self.top_shared],
            "top_packages": self.top_packages,
            "shared_libraries": self.shared_libraries,
            "cumulative": self.cumulative,
        }
