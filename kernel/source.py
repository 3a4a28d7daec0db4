"""Locate and verify build inputs: the source tarball and external patches.

Debian's linux-source-X.Y package puts its tarball under /usr/src; with a
suite, the package is fetched from the Debian archive and verified by the
project's archive code instead (kernel/debsource.py); anything named by URL
is downloaded once into the cache and checked against the recipe's SHA256
before use.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from imagefactory.core.atomic import staged_path
from imagefactory.core.errors import EnvironmentProblem, FetchError, VerificationError
from imagefactory.core.hashing import sha256_file
from imagefactory.core.progress import Progress
from kernel.debsource import ArchiveAccess, fetch_debian_source
from kernel.recipe import PatchSpec, SourceSpec

USR_SRC = Path("/usr/src")


def _verify(path: Path, expected: str | None, what: str) -> str:
    actual = sha256_file(path)[0]
    if expected and actual != expected:
        raise VerificationError(f"{what}: sha256 is {actual}, the recipe says {expected}")
    return actual


def fetch(url: str, sha256: str, downloads: Path) -> Path:
    """Download url into downloads/<sha256>-<name> unless a verified copy is there."""
    target = downloads / f"{sha256}-{url.rsplit('/', 1)[-1]}"
    if target.is_file() and sha256_file(target)[0] == sha256:
        return target
    try:
        with urllib.request.urlopen(url, timeout=60) as response, staged_path(target) as stage:
            with open(stage, "wb") as out:
                shutil.copyfileobj(response, out)
            _verify(stage, sha256, url)
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    return target


@dataclass(frozen=True)
class ResolvedSource:
    """The source tarball on disk, its sha256, and (for an archive fetch) where it came from."""

    tarball: Path
    sha256: str
    origin: dict = field(default_factory=dict)


def resolve_source(spec: SourceSpec, downloads: Path, usr_src: Path = USR_SRC, access: ArchiveAccess | None = None,
                   progress: Progress | None = None) -> ResolvedSource:
    """The source tarball on disk and its sha256."""
    if spec.debian_package and spec.suite:
        src = fetch_debian_source(spec.debian_package, spec.suite, spec.version, downloads, access, progress)
        return ResolvedSource(src.tarball, _verify(src.tarball, spec.sha256, str(src.tarball)), src.origin())
    if spec.debian_package:
        found = sorted(usr_src.glob(f"{spec.debian_package}.tar.*"))
        if not found:
            raise EnvironmentProblem(
                f"kernel source package {spec.debian_package} is not installed "
                f"(no {usr_src}/{spec.debian_package}.tar.*): apt-get install {spec.debian_package}"
            )
        return ResolvedSource(found[0], _verify(found[0], spec.sha256, str(found[0])))
    assert spec.tarball is not None
    if spec.tarball.startswith(("http://", "https://", "file://")):
        assert spec.sha256 is not None
        return ResolvedSource(fetch(spec.tarball, spec.sha256, downloads), spec.sha256)
    path = Path(spec.tarball)
    if not path.is_file():
        raise EnvironmentProblem(f"kernel source tarball {path} does not exist")
    return ResolvedSource(path, _verify(path, spec.sha256, str(path)))


def resolve_patch(spec: PatchSpec, downloads: Path) -> tuple[Path, str]:
    """A patch file on disk and its sha256 (verified when the recipe gives one)."""
    if spec.url:
        assert spec.sha256 is not None
        return fetch(spec.url, spec.sha256, downloads), spec.sha256
    assert spec.path is not None
    return spec.path, _verify(spec.path, spec.sha256, str(spec.path))
