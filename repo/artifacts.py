"""Read the artifacts given to `publish`: .deb, .rpm, images with manifests, extra JSON.

Each reader returns a plain record with the identity the repository keys on
(package/version/arch, NEVRA, image name/version) and the content hash used to
detect a "same version, different content" conflict. Inputs are untrusted:
names that end up in paths are checked against a strict pattern.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import rpmfile
from debian_inspector.debcon import get_paragraph_data

from imagefactory.build.debian import debfile
from imagefactory.core.errors import ImageFactoryError, UnsafeInput, VerificationError
from imagefactory.core.hashing import sha256_file
from imagefactory.core.manifest import ImageFiles
from imagefactory.core.paths import is_inside

KERNEL_MANIFEST = "kernel-manifest.json"  # written by `imagefactory kernel build` beside its packages
KERNEL_MANIFEST_SCHEMA = "imagefactory-kernel-manifest/1"
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~:-]*$")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+~:-]*$")


class ArtifactError(ImageFactoryError):
    """An input file is not what it claims to be."""


def _safe(value: str, what: str, source: Path) -> str:
    if not SAFE_NAME.match(value) or ".." in value:
        raise UnsafeInput(f"{source}: {what} {value!r} is not a safe name")
    return value


@dataclass
class Deb:
    path: Path
    package: str
    version: str
    architecture: str
    control: str  # the control paragraph as shipped, without a trailing newline
    sha256: str
    size: int

    @property
    def key(self) -> str:
        return f"{self.package}_{self.version}_{self.architecture}"


@dataclass
class Rpm:
    path: Path
    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    sha256: str
    size: int

    @property
    def key(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch else ""
        return f"{self.name}-{epoch}{self.version}-{self.release}.{self.arch}"


@dataclass
class Image:
    path: Path
    manifest_path: Path
    name: str
    version: str
    manifest: dict
    sha256: str
    size: int
    manifest_sha256: str = ""
    manifest_size: int = 0
    formats: list[tuple[dict, Path]] = field(default_factory=list)  # (manifest record, file beside the image)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class Extra:
    """A JSON document published as-is (e.g. the kernel recipe manifest beside packages)."""

    path: Path
    name: str
    sha256: str
    size: int
    data: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.name


def deb_control(data: bytes) -> str:
    """The control file text of a .deb given as bytes."""
    members = debfile.ar_members(data, "package")
    if members.get("debian-binary", b"").strip() != b"2.0":
        raise ValueError("not a Debian binary package (debian-binary is not 2.0)")
    name = next((n for n in members if n.startswith("control.tar")), None)
    if name is None:
        raise ValueError("no control.tar member")
    with tarfile.open(fileobj=io.BytesIO(debfile.decompress_member(name, members[name], "package"))) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.name in ("control", "./control") else None
            if handle is not None:
                return handle.read().decode("utf-8").strip("\n")
    raise ValueError("control.tar has no control file")


def read_deb(path: Path) -> Deb:
    try:
        control = deb_control(path.read_bytes())
    except (ValueError, VerificationError, tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not a readable .deb ({exc})") from None
    fields = get_paragraph_data(control)
    missing = [f for f in ("package", "version", "architecture") if not fields.get(f)]
    if missing:
        raise ArtifactError(f"{path}: control file lacks {', '.join(missing)}")
    for line in control.splitlines():
        if line.lower().startswith(("filename:", "size:", "md5sum:", "sha256:", "sha1:")):
            raise ArtifactError(f"{path}: control file carries an archive-only field: {line.split(':')[0]}")
    digest, size = sha256_file(path)
    return Deb(path, _safe(fields["package"], "package", path), _safe(fields["version"], "version", path),
               _safe(fields["architecture"], "architecture", path), control, digest, size)


def read_rpm(path: Path) -> Rpm:
    try:
        with rpmfile.open(str(path)) as rpm:
            headers = rpm.headers
    except Exception as exc:  # rpmfile raises assorted errors on garbage input
        raise ArtifactError(f"{path}: not a readable .rpm ({exc})") from None

    def text(tag: str) -> str:
        value = headers.get(tag)
        return value.decode() if isinstance(value, bytes) else str(value or "")

    if headers.get("sourcerpm") is None:
        raise ArtifactError(f"{path}: source RPMs are not published")
    digest, size = sha256_file(path)
    epoch = headers.get("epoch")
    return Rpm(path, _safe(text("name"), "name", path), int(epoch) if epoch is not None else None,
               _safe(text("version"), "version", path), _safe(text("release"), "release", path),
               _safe(text("arch"), "arch", path), digest, size)


def image_version(manifest: dict) -> str | None:
    """simplestreams-style version from the snapshot time: same snapshot, same version."""
    epoch = (manifest.get("snapshot") or {}).get("epoch")
    if not isinstance(epoch, int):
        return None
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y%m%d_%H%M%S")


def read_image(path: Path, version: str | None = None) -> Image:
    """An image and the manifest beside it; refuse when the manifest's hash is not the file's."""
    files = ImageFiles.of_image(path)
    stem, manifest_path = files.stem, files.manifest
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: no manifest {manifest_path.name} beside it")
    try:
        manifest = json.loads(manifest_path.read_text())
        claimed = manifest["image"]
        claimed_sha, claimed_size = claimed["sha256"], claimed["size"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{manifest_path}: not an image manifest ({exc})") from None
    digest, size = sha256_file(path)
    if digest != claimed_sha or size != claimed_size:
        raise VerificationError(
            f"{path}: does not match its manifest (sha256 {digest[:16]}…/{size} B, "
            f"manifest says {str(claimed_sha)[:16]}…/{claimed_size} B); refusing to publish")
    name = _safe(str(manifest.get("name") or stem), "image name", manifest_path)
    version = version or image_version(manifest)
    if version is None:
        raise ArtifactError(f"{manifest_path}: no snapshot.epoch to derive a version from; pass --version")
    m_sha, m_size = sha256_file(manifest_path)
    return Image(path, manifest_path, name, _safe(version, "version", path), manifest, digest, size, m_sha, m_size,
                 format_files(path.parent, manifest, manifest_path))


def format_files(directory: Path, manifest: dict, where: Path) -> list[tuple[dict, Path]]:
    """The extra formats the manifest lists (squashfs, incus, lxc, oci), each checked against its sha256."""
    records = manifest.get("artifacts") or []
    if not isinstance(records, list):
        raise ArtifactError(f"{where}: 'artifacts' must be a list")
    out = []
    for rec in records:
        try:
            rel, fmt, role, claimed_sha, claimed_size = (rec["file"], rec["format"], rec["role"], rec["sha256"],
                                                         rec["size"])
        except (KeyError, TypeError):
            raise ArtifactError(f"{where}: an 'artifacts' entry lacks file/format/role/sha256/size") from None
        parts = str(rel).split("/")
        if str(rel).startswith("/") or ".." in parts or not all(_SAFE_PART.match(x) for x in parts):
            raise UnsafeInput(f"{where}: artifact path {rel!r} is not a safe relative path")
        path = directory / rel
        if path.is_symlink() or not is_inside(os.path.realpath(path), os.path.realpath(directory)):
            raise UnsafeInput(f"{where}: artifact {rel} leads outside {directory} through a symlink")
        if not path.is_file():
            raise ArtifactError(f"{where}: artifact {rel} ({fmt}) is missing beside the image")
        digest, size = sha256_file(path)
        if digest != claimed_sha or size != claimed_size:
            raise VerificationError(f"{path}: does not match its manifest entry; refusing to publish")
        out.append((dict(rec) | {"format": str(fmt), "role": str(role)}, path))
    return out


def read_extra(path: Path) -> Extra:
    """A JSON document; kernel build manifests get a per-release name (every build calls its file
    kernel-manifest.json, so the plain file name would collide across kernels)."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    name = path.name
    if data.get("schema") == KERNEL_MANIFEST_SCHEMA:
        name = f"{data.get('recipe')}-{data.get('kernel_release')}.{KERNEL_MANIFEST}"
    digest, size = sha256_file(path)
    return Extra(path, _safe(name, "manifest name", path), digest, size, data)


def _listed(extra: Extra) -> dict[str, str]:
    packages = extra.data.get("packages") if extra.data.get("schema") == KERNEL_MANIFEST_SCHEMA else None
    return {p["name"]: p["sha256"] for p in packages or []
            if isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("sha256"), str)}


def with_kernel_manifests(artifacts: list) -> list:
    """Add the kernel manifest lying beside given packages, and refuse packages it contradicts."""
    packages = [a for a in artifacts if isinstance(a, (Deb, Rpm))]
    manifests = {a.path.resolve(): a for a in artifacts if isinstance(a, Extra) and _listed(a)}
    added = []
    for pkg in packages:
        beside = pkg.path.parent / KERNEL_MANIFEST
        if beside.is_file() and beside.resolve() not in manifests:
            extra = read_extra(beside)
            if pkg.path.name in _listed(extra):
                manifests[beside.resolve()] = extra
                added.append(extra)
    for extra in manifests.values():
        listed = _listed(extra)
        for pkg in packages:
            if pkg.path.parent.resolve() == extra.path.parent.resolve() and pkg.path.name in listed \
                    and listed[pkg.path.name] != pkg.sha256:
                raise VerificationError(f"{pkg.path}: does not match the sha256 in {extra.path}; refusing to publish")
    return artifacts + added


def read_any(path: Path, version: str | None = None) -> Deb | Rpm | Image | Extra:
    """Dispatch on the file name; the content is validated by the reader."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    name = path.name
    if name.endswith(".deb"):
        return read_deb(path)
    if name.endswith(".rpm"):
        return read_rpm(path)
    if name.endswith(".tar.zst"):
        return read_image(path, version)
    if name.endswith(".manifest.json") and path.with_name(name.removesuffix(".manifest.json") + ".tar.zst").exists():
        raise ArtifactError(f"{path}: give the image ({name.removesuffix('.manifest.json')}.tar.zst), "
                            "its manifest comes along")
    if name.endswith(".json"):
        return read_extra(path)
    raise ArtifactError(f"{path}: not a .deb, .rpm, .tar.zst image or .json manifest")
