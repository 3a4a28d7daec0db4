"""What a build will do, decided before anything is written.

A backend (Debian/Ubuntu via dpkg, Fedora via rpm) turns a recipe into a Plan:
verified metadata, a resolved package set, and the files to download. The
rest of the pipeline (fetch, image, manifest) is family-neutral.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from imagefactory.build.recipe import Recipe
from imagefactory.core.progress import Progress


@dataclass(frozen=True)
class Artifact:
    """One package file to download and verify (sha256 + size from signed metadata)."""

    name: str
    version: str
    architecture: str
    url: str
    sha256: str
    size: int
    essential: bool = False  # Debian: part of the first, tar-extracted set

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SourceSnapshot:
    """One verified source of a plan: a suite's InRelease or a repository's repomd.xml."""

    suite: str  # suite (Debian) or repository path (Fedora)
    mirror: str
    date: str  # Release Date / repomd revision, as published
    epoch: int
    digest: str  # sha256 of the signed metadata (InRelease / repomd.xml)


@dataclass
class Plan:
    recipe: Recipe
    mirror: str
    snapshot_date: str  # Release Date / repomd revision of the first source, as published
    snapshot_epoch: int  # the same instant as a Unix time
    packages: list[Artifact] = field(default_factory=list)
    sources: list[SourceSnapshot] = field(default_factory=list)
    index_digests: tuple[str, ...] = ()  # sha256 of every verified index the resolution read
    # The set without the recipe's extra packages (None: unknown); a cached tree of it can be extended.
    base_packages: list[Artifact] | None = None
    # SOURCE_DATE_EPOCH of the build: derived from the package set once the files are there
    # (Plan.set_epoch), so the same packages give the same bytes whatever day the Release was signed.
    source_date_epoch: int = 0

    def __post_init__(self) -> None:
        if not self.source_date_epoch:
            self.source_date_epoch = self.snapshot_epoch

    @property
    def download_size(self) -> int:
        return sum(a.size for a in self.packages)


@dataclass(frozen=True)
class BuildOptions:
    mirror: str | None = None
    allow_expired_release: bool = False
    force: bool = False  # rebuild even when the output is up to date, and reuse no cached tree
    explain: bool = False  # say why each stage was or was not reused
    cache_dir: Path = Path("/var/cache/imagefactory")
    jobs: int = 8  # parallel downloads
    zstd_level: int = 3
    formats: tuple[str, ...] = ()  # --format, added to the recipe's `formats`


class Backend(Protocol):
    """A distro family's metadata, resolver and package manager."""

    def plan(self, recipe: Recipe, opts: BuildOptions, progress: Progress) -> Plan:
        """Fetch and verify metadata, resolve the package set. Writes only to the cache."""

    def install(self, plan: Plan, files: dict[str, Path], rootfs: Path, progress: Progress) -> None:
        """Install the downloaded packages (files: Artifact.name -> cached path) into rootfs
        with the guest's own package manager in a chroot."""

    def configure(self, plan: Plan, rootfs: Path, progress: Progress) -> None:
        """Family-specific configuration and cleanup (sources, caches, logs)."""

    def package_epoch(self, plan: Plan, files: dict[str, Path]) -> int:
        """The build time of the newest package in the set (the images' SOURCE_DATE_EPOCH)."""
