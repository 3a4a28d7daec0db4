"""A kernel source package fetched from a Debian suite through the project's own archive code.

For a recipe whose [source] names a suite (e.g. linux-source-6.12 from trixie on a bookworm
host), nothing comes from the host's apt: the suite's InRelease is verified with gpgv against
the Debian archive keyring (and its Valid-Until checked), the Packages index is checked
against the SHA256 and size in that signed Release, and the .deb against the SHA256 and size
in that verified index. Only then is its /usr/src/<package>.tar.* taken out of it.

Cache layout (under the kernel cache's downloads/):
    sha256/ab/<sha256>                          verified indices and .debs (build/fetch.py's layout)
    debian-source/<key>.json                    which package version a signed Release names (memo)
    debian-source/<deb sha256>/<package>.tar.xz the tarball taken out of that .deb
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import tarfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from imagefactory.build import fetch
from imagefactory.build.debian.backend import DEFAULT_KEYRINGS, fetch_index, index_arches
from imagefactory.build.debian.packages import Package
from imagefactory.build.debian.release import Release, check_valid_until, parse_release
from imagefactory.build.debian.resolve import compare_versions
from imagefactory.build.sources import host_debian_mirror
from imagefactory.core.atomic import staged_path, write_text
from imagefactory.core.errors import EnvironmentProblem, VerificationError
from imagefactory.core.gpgv import verify_clearsigned
from imagefactory.core.hashing import sha256_file
from imagefactory.core.progress import Progress

_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
MEMO_FORMAT = 1


@dataclass(frozen=True)
class ArchiveAccess:
    """Where a suite is fetched from: the host's Debian mirror and Debian's keyring unless given."""

    mirror: str | None = None
    keyring: Path = Path(DEFAULT_KEYRINGS["debian"])
    allow_expired_release: bool = False


@dataclass(frozen=True)
class DebianSource:
    """The verified source package and the tarball taken out of it."""

    package: str
    version: str
    suite: str
    release_date: str
    deb: str  # pool file name
    deb_sha256: str
    deb_size: int
    tarball: Path
    tarball_sha256: str

    def origin(self) -> dict:
        """What the kernel manifest records about where the source came from."""
        return {k: v for k, v in asdict(self).items() if k not in ("tarball", "tarball_sha256")}


def pick(packages: list[Package], name: str, version: str | None) -> Package | None:
    """The pinned version of name, or its highest version."""
    found = [p for p in packages if p.name == name and (version is None or p.version == version)]
    best = None
    for p in found:
        if best is None or compare_versions(p.version, best.version) > 0:
            best = p
    return best


def _find(rel: Release, release_text: str, mirror: str, suite: str, name: str, version: str | None,
          downloads: Path, progress: Progress) -> Package:
    """The package's record from the verified index (memoized per signed Release)."""
    arch = _DEB_ARCH.get(platform.machine(), platform.machine())
    key = hashlib.sha256(f"{MEMO_FORMAT}\n{name}\n{version}\n{arch}\n{release_text}".encode()).hexdigest()[:32]
    memo = downloads / "debian-source" / f"{key}.json"
    try:
        return Package(**json.loads(memo.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    # Debian lists Architecture: all packages in every arch's index too, so the arch index
    # normally suffices; binary-all (when split out) is read only if it does not.
    for index_arch in index_arches(rel, "main", arch):
        progress.stage(f"kernel source: {suite} main/binary-{index_arch}/Packages (checked against the signed Release)")
        found = pick(fetch_index(mirror, suite, rel, "main", index_arch, downloads), name, version)
        if found:
            write_text(memo, json.dumps(found._asdict()) + "\n")
            return found
    wanted = f"{name} {version}" if version else name
    raise EnvironmentProblem(f"{wanted} is not in {suite} main ({mirror})")


def extract_tarball(deb: Path, package: str, target_dir: Path) -> Path:
    """Stream /usr/src/<package>.tar.* out of the .deb (dpkg-deb --fsys-tarfile) into target_dir."""
    wanted = {f"./usr/src/{package}.tar.{ext}" for ext in ("xz", "gz", "bz2", "zst")}
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    found = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name if member.name.startswith("./") else f"./{member.name}"
                if name in wanted and member.isfile():
                    found = target_dir / name.rsplit("/", 1)[1]
                    source = tar.extractfile(member)
                    assert source is not None
                    with staged_path(found) as stage, open(stage, "wb") as out:
                        while chunk := source.read(1 << 20):
                            out.write(chunk)
                    break
    except tarfile.TarError as exc:
        raise VerificationError(f"{deb.name}: unreadable data archive ({exc})") from None
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    if found is None:
        raise VerificationError(f"{deb.name} holds no /usr/src/{package}.tar.*")
    return found


def fetch_debian_source(package: str, suite: str, version: str | None, downloads: Path,
                        access: ArchiveAccess | None = None, progress: Progress | None = None) -> DebianSource:
    """Fetch and verify package from suite (signed Release -> Packages -> .deb) and unpack its tarball."""
    access = access or ArchiveAccess()
    progress = progress or Progress(quiet=True)
    if not access.keyring.is_file():
        raise EnvironmentProblem(f"archive keyring {access.keyring} is missing "
                                 "(apt-get install debian-archive-keyring)")
    mirror = (access.mirror or host_debian_mirror()).rstrip("/")
    progress.stage(f"kernel source: {mirror} {suite} InRelease")
    raw = fetch.fetch_url(f"{mirror}/dists/{suite}/InRelease")
    text = verify_clearsigned(raw, access.keyring, f"InRelease of {suite}").decode("utf-8", "replace")
    rel = parse_release(text)
    check_valid_until(rel, datetime.now(UTC), access.allow_expired_release)
    pkg = _find(rel, text, mirror, suite, package, version, downloads, progress)
    progress.stage(f"kernel source: {pkg.name} {pkg.version} ({pkg.size / 1e6:.1f} MB, checked against the index)")
    deb = fetch.cached_fetch(f"{mirror}/{pkg.filename}", pkg.sha256, pkg.size, downloads)
    out_dir = downloads / "debian-source" / pkg.sha256
    tarballs = sorted(out_dir.glob(f"{package}.tar.*")) if out_dir.is_dir() else []
    tarball = tarballs[0] if tarballs else extract_tarball(deb, package, out_dir)
    return DebianSource(package, pkg.version, suite, rel.date_text, pkg.filename.rsplit("/", 1)[-1], pkg.sha256,
                        pkg.size, tarball, sha256_file(tarball)[0])
