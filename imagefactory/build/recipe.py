"""Recipes: TOML files describing a guest, validated strictly.

A recipe names a distro family, a suite and a variant; `extends` layers one
recipe on another (lists are concatenated, scalars overridden). Validation is
pure: every error names the file and the key, in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagefactory.core.errors import RecipeError

# Shipped recipes: package data (imagefactory/recipes, a symlink to the top-level recipes/ in a checkout).
RECIPES_DIR = Path(os.environ.get("IMAGEFACTORY_RECIPES", Path(__file__).resolve().parents[1] / "recipes"))

FAMILIES = ("debian", "ubuntu", "fedora")
DEB_VARIANTS = ("essential", "minbase", "important", "standard")
RPM_VARIANTS = ("minimal", "standard")

# key -> (type, description). Types are checked exactly; lists are list[str].
SCHEMA: dict[str, tuple[type, str]] = {
    "name": (str, "recipe name (defaults to the file name)"),
    "description": (str, "one line for `imagefactory recipes`"),
    "extends": (str, "name of a recipe this one builds on"),
    "family": (str, "debian | ubuntu | fedora"),
    "suite": (str, "suite or release (sid, trixie, noble, 42, ...)"),
    "components": (list, "archive components (Debian/Ubuntu)"),
    "architecture": (str, "dpkg architecture (amd64) or rpm basearch (x86_64)"),
    "variant": (str, "essential | minbase | important | standard (Debian/Ubuntu); minimal | standard (Fedora)"),
    "packages": (list, "extra packages to install"),
    "exclude_paths": (list, "fnmatch patterns of paths dpkg/rpm must not install (docs, man pages)"),
    "keyring": (str, "OpenPGP keyring/key file that signs the archive"),
    "mirror": (str, "archive base URL; default: the host's apt sources (Debian)"),
    "hostname": (str, "the guest's hostname"),
    "repo_gpgcheck": (bool, "verify the signature of repomd.xml (Fedora)"),
    "customize": (list, "steps run after install: {write, content, mode} or {run}"),
}
CUSTOMIZE_KEYS = {"write": str, "content": str, "mode": str, "run": str}


@dataclass(frozen=True)
class CustomizeStep:
    """Either write a file into the guest or run a shell command in its chroot."""

    write: str | None = None
    content: str = ""
    mode: int = 0o644
    run: str | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    suite: str
    architecture: str
    variant: str
    components: tuple[str, ...] = ("main",)
    packages: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()
    keyring: str = ""
    mirror: str = ""
    hostname: str = ""
    description: str = ""
    repo_gpgcheck: bool = True
    customize: tuple[CustomizeStep, ...] = ()
    source: str = ""  # path of the file the recipe came from
    digest: str = field(default="", compare=False)  # sha256 of the merged recipe

    @property
    def is_deb(self) -> bool:
        return self.family in ("debian", "ubuntu")


def _check_types(data: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        if key not in SCHEMA:
            raise RecipeError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(SCHEMA))})")
        want = SCHEMA[key][0]
        if not isinstance(value, want) or (want is str and isinstance(value, bool)):
            raise RecipeError(f"{where}: key {key!r} must be a {want.__name__}, not {type(value).__name__}")
        if isinstance(value, list) and key != "customize" and not all(isinstance(v, str) for v in value):
            raise RecipeError(f"{where}: key {key!r} must be a list of strings")
    for i, step in enumerate(data.get("customize", [])):
        here = f"{where}: customize[{i}]"
        if not isinstance(step, dict):
            raise RecipeError(f"{here} must be a table")
        for k, v in step.items():
            if k not in CUSTOMIZE_KEYS:
                raise RecipeError(f"{here}: unknown key {k!r} (known: {', '.join(CUSTOMIZE_KEYS)})")
            if not isinstance(v, CUSTOMIZE_KEYS[k]):
                raise RecipeError(f"{here}: key {k!r} must be a string")
        if ("write" in step) == ("run" in step):
            raise RecipeError(f"{here} needs exactly one of 'write' or 'run'")
        if "write" in step and not step["write"].startswith("/"):
            raise RecipeError(f"{here}: 'write' must be an absolute guest path")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None


def find_recipe(ref: str, search: Path | None = None) -> Path:
    """A recipe by file path (contains / or ends in .toml) or by name: in
    `search` first (the directory of the recipe that extends it), then recipes/."""
    if "/" in ref or ref.endswith(".toml"):
        return Path(ref)
    dirs = [d for d in (search, RECIPES_DIR) if d is not None]
    for d in dirs:
        if (d / f"{ref}.toml").is_file():
            return d / f"{ref}.toml"
    known = ", ".join(sorted({p.stem for d in dirs for p in d.glob("*.toml")})) or "none"
    raise RecipeError(f"unknown recipe {ref!r} (known: {known})")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if key in ("packages", "exclude_paths", "customize") and key in merged:
            merged[key] = list(merged[key]) + list(value)
        else:
            merged[key] = value
    return merged


def load_raw(ref: str, search: Path | None = None, _seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path]:
    """Read, type-check and flatten `extends` chains; returns (data, path)."""
    path = find_recipe(ref, search)
    data = _read_toml(path)
    _check_types(data, str(path))
    data.setdefault("name", path.stem)
    parent = data.pop("extends", None)
    if parent is None:
        return data, path
    if parent in _seen or parent == path.stem:
        raise RecipeError(f"{path}: key 'extends' forms a cycle: {' -> '.join(_seen + (path.stem, parent))}")
    base, _ = load_raw(parent, path.parent, _seen + (path.stem,))
    base.pop("name", None)
    base.pop("description", None)
    return _merge(base, data), path


def _parse_mode(value: str, where: str) -> int:
    try:
        return int(value, 8)
    except ValueError:
        raise RecipeError(f"{where}: key 'mode' must be an octal string like '0644'") from None


def load(ref: str, search: Path | None = None) -> Recipe:
    """Load a recipe by name or path into a validated Recipe."""
    data, path = load_raw(ref, search)
    where = str(path)
    for key in ("family", "suite"):
        if key not in data:
            raise RecipeError(f"{where}: missing required key {key!r}")
    family = data["family"]
    if family not in FAMILIES:
        raise RecipeError(f"{where}: key 'family' must be one of {', '.join(FAMILIES)}, not {family!r}")
    deb = family in ("debian", "ubuntu")
    variants = DEB_VARIANTS if deb else RPM_VARIANTS
    variant = data.get("variant", "minbase" if deb else "minimal")
    if variant not in variants:
        raise RecipeError(f"{where}: key 'variant' must be one of {', '.join(variants)}, not {variant!r}")
    steps = tuple(
        CustomizeStep(
            write=s.get("write"),
            content=s.get("content", ""),
            mode=_parse_mode(s.get("mode", "0644"), f"{where}: customize[{i}]"),
            run=s.get("run"),
        )
        for i, s in enumerate(data.get("customize", []))
    )
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return Recipe(
        name=data["name"],
        family=family,
        suite=data["suite"],
        architecture=data.get("architecture", "amd64" if deb else "x86_64"),
        variant=variant,
        components=tuple(data.get("components", ["main"])),
        packages=tuple(data.get("packages", [])),
        exclude_paths=tuple(data.get("exclude_paths", [])),
        keyring=data.get("keyring", ""),
        mirror=data.get("mirror", ""),
        hostname=data.get("hostname", data["name"]),
        description=data.get("description", ""),
        repo_gpgcheck=data.get("repo_gpgcheck", True),
        customize=steps,
        source=where,
        digest=digest,
    )


def list_recipes(search: Path | None = None) -> list[Recipe]:
    """Every recipe in the recipes directory, loaded (so broken ones surface)."""
    search = search or RECIPES_DIR
    return [load(p.stem, search) for p in sorted(search.glob("*.toml"))]
