"""Kernel recipes (TOML): source, patch series, config request, LOCALVERSION, package formats.

Loading validates everything that can be checked without building, so a typo
fails in a second with the file and key named, not after a 3-minute build.
Paths inside a recipe are relative to the recipe file.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from imagefactory.core.errors import RecipeError
from kernel.config import ConfigValue, merge_requests, parse_config

BASE_TARGETS = ("tinyconfig", "allnoconfig", "defconfig", "olddefconfig")
FORMATS = ("deb", "rpm")
_LOCALVERSION = re.compile(r"^[-+.a-z0-9]{0,40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DEBIAN_SOURCE = re.compile(r"^linux-source-\d+\.\d+$")
_SUITE = re.compile(r"^[a-z][-a-z0-9]{0,40}$")
_DEBIAN_VERSION = re.compile(r"^[0-9][-+.~:a-zA-Z0-9]{0,80}$")


@dataclass(frozen=True)
class SourceSpec:
    """Exactly one of debian_package or tarball (path or URL).

    debian_package alone: its tarball under /usr/src (installed with apt). With suite: the
    package is fetched from that suite of the host's Debian mirror and verified (signed
    InRelease, then Packages, then the .deb's sha256); version pins one version of it.
    """

    debian_package: str | None = None
    tarball: str | None = None
    sha256: str | None = None
    suite: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class PatchSpec:
    """A project patch (path) or an external one (path or URL; URL needs sha256)."""

    name: str
    path: Path | None = None
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class KernelRecipe:
    path: Path
    name: str
    source: SourceSpec
    patches: list[PatchSpec] = field(default_factory=list)
    config_base: str = "tinyconfig"
    fragments: list[Path] = field(default_factory=list)
    config_request: dict[str, ConfigValue] = field(default_factory=dict)
    localversion: str = ""
    formats: list[str] = field(default_factory=lambda: ["deb"])


def _table(data: dict, key: str, where: str, allowed: set[str]) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: [{key}] must be a table")
    unknown = set(value) - allowed
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) in [{key}]: {', '.join(sorted(unknown))}")
    return value


def _is_url(text: str) -> bool:
    return bool(re.match(r"^(https?|file)://", text))


def _sha(value, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.match(value.lower()):
        raise RecipeError(f"{where}: sha256 must be 64 hex digits, got {value!r}")
    return value.lower()


def _source(data: dict, where: str, base: Path) -> SourceSpec:
    src = _table(data, "source", where, {"debian_package", "tarball", "sha256", "suite", "version"})
    pkg, tarball = src.get("debian_package"), src.get("tarball")
    if bool(pkg) == bool(tarball):
        raise RecipeError(f"{where}: [source] needs exactly one of debian_package or tarball")
    sha = _sha(src.get("sha256"), f"{where}: [source]")
    suite, version = src.get("suite"), src.get("version")
    if pkg:
        if not _DEBIAN_SOURCE.match(str(pkg)):
            raise RecipeError(f"{where}: [source] debian_package must look like linux-source-6.1, got {pkg!r}")
        if suite is not None and not _SUITE.match(str(suite)):
            raise RecipeError(f"{where}: [source] suite must be a Debian suite name like trixie, got {suite!r}")
        if version is not None and (suite is None or not _DEBIAN_VERSION.match(str(version))):
            raise RecipeError(f"{where}: [source] version needs suite and must be a Debian version "
                              f"like 6.12.117-1, got {version!r}")
        return SourceSpec(debian_package=pkg, sha256=sha, suite=suite, version=version)
    if suite is not None or version is not None:
        raise RecipeError(f"{where}: [source] suite and version go with debian_package, not tarball")
    if not isinstance(tarball, str):
        raise RecipeError(f"{where}: [source] tarball must be a string, got {tarball!r}")
    if _is_url(tarball):
        if sha is None:
            raise RecipeError(f"{where}: [source] a tarball URL needs its sha256")
        return SourceSpec(tarball=tarball, sha256=sha)
    return SourceSpec(tarball=str((base / tarball).resolve()), sha256=sha)


def _series(series: Path, where: str) -> list[PatchSpec]:
    try:
        lines = series.read_text().splitlines()
    except OSError as exc:
        raise RecipeError(f"{where}: cannot read patch series {series}: {exc.strerror}") from None
    out = []
    for line in lines:
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        path = (series.parent / name).resolve()
        if not path.is_file():
            raise RecipeError(f"{where}: patch {name} listed in {series} does not exist")
        out.append(PatchSpec(name=name, path=path))
    return out


def _patches(data: dict, where: str, base: Path) -> list[PatchSpec]:
    table = _table(data, "patches", where, {"series", "external"})
    out = _series((base / table["series"]).resolve(), where) if "series" in table else []
    for i, ext in enumerate(table.get("external", [])):
        here = f"{where}: [[patches.external]] #{i + 1}"
        if not isinstance(ext, dict) or set(ext) - {"url", "path", "sha256"}:
            raise RecipeError(f"{here}: use url or path, plus sha256")
        sha = _sha(ext.get("sha256"), here)
        if "url" in ext:
            if sha is None:
                raise RecipeError(f"{here}: an external patch by URL needs its sha256")
            out.append(PatchSpec(name=ext["url"].rsplit("/", 1)[-1], url=ext["url"], sha256=sha))
        elif "path" in ext:
            path = (base / ext["path"]).resolve()
            if not path.is_file():
                raise RecipeError(f"{here}: {path} does not exist")
            out.append(PatchSpec(name=path.name, path=path, sha256=sha))
        else:
            raise RecipeError(f"{here}: needs url or path")
    return out


def _config(data: dict, where: str, base: Path) -> tuple[str, list[Path], dict[str, ConfigValue]]:
    table = _table(data, "config", where, {"base", "fragments"})
    config_base = str(table.get("base", "tinyconfig"))
    if config_base not in BASE_TARGETS:
        path = (base / config_base).resolve()
        if not path.is_file():
            raise RecipeError(f"{where}: [config] base must be one of {', '.join(BASE_TARGETS)} or a config file; "
                              f"{path} does not exist")
        config_base = str(path)
    fragments, parsed = [], []
    for name in table.get("fragments", []):
        path = (base / name).resolve()
        try:
            parsed.append(parse_config(path.read_text(), str(path)))
        except OSError as exc:
            raise RecipeError(f"{where}: cannot read config fragment {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        fragments.append(path)
    return config_base, fragments, merge_requests(parsed)


def load_recipe(path: Path) -> KernelRecipe:
    """Read and validate a kernel recipe; RecipeError names the file and the problem."""
    path = Path(path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise RecipeError(f"cannot read kernel recipe {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{where}: not valid TOML: {exc}") from None
    unknown = set(data) - {"name", "localversion", "source", "patches", "config", "package"}
    if unknown:
        raise RecipeError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    base = path.resolve().parent
    name = data.get("name") or path.stem
    localversion = str(data.get("localversion", ""))
    if not _LOCALVERSION.match(localversion):
        raise RecipeError(f"{where}: localversion may use only a-z 0-9 . + - (it ends up in package names), "
                          f"got {localversion!r}")
    formats = _table(data, "package", where, {"formats"}).get("formats", ["deb"])
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise RecipeError(f"{where}: [package] formats must be a non-empty subset of {', '.join(FORMATS)}, "
                          f"got {formats!r}")
    config_base, fragments, request = _config(data, where, base)
    if "CONFIG_LOCALVERSION" in request:
        raise RecipeError(f"{where}: set localversion in the recipe, not CONFIG_LOCALVERSION in a fragment")
    request["CONFIG_LOCALVERSION"] = f'"{localversion}"'
    request["CONFIG_LOCALVERSION_AUTO"] = None
    return KernelRecipe(
        path=path.resolve(),
        name=str(name),
        source=_source(data, where, base),
        patches=_patches(data, where, base),
        config_base=config_base,
        fragments=fragments,
        config_request=request,
        localversion=localversion,
        formats=list(dict.fromkeys(formats)),
    )
