"""Recipes: TOML files describing a guest, validated strictly.

A recipe names a distro family, a suite and a variant; `extends` layers one
recipe on another (lists are concatenated, scalars overridden). Validation is
pure: every error names the file and the key, in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from imagefactory.core.errors import RecipeError
from imagefactory.core.tomlcheck import Kind, check_kinds, read_toml

# Shipped recipes: package data (imagefactory/recipes, a symlink to the top-level recipes/ in a checkout).
RECIPES_DIR = Path(os.environ.get("IMAGEFACTORY_RECIPES", Path(__file__).resolve().parents[1] / "recipes"))


class Family(StrEnum):
    DEBIAN = "debian"
    UBUNTU = "ubuntu"
    FEDORA = "fedora"

    @property
    def is_deb(self) -> bool:
        return self is not Family.FEDORA

    @property
    def variants(self) -> tuple[Variant, ...]:
        return DEB_VARIANTS if self.is_deb else RPM_VARIANTS

    @property
    def default_architecture(self) -> str:
        return "amd64" if self.is_deb else "x86_64"


class Variant(StrEnum):
    """What gets installed: mmdebstrap's variants (Debian/Ubuntu) or a comps group set (Fedora)."""

    ESSENTIAL = "essential"
    MINBASE = "minbase"
    IMPORTANT = "important"
    STANDARD = "standard"
    MINIMAL = "minimal"


FAMILIES = tuple(f.value for f in Family)
DEB_VARIANTS = (Variant.ESSENTIAL, Variant.MINBASE, Variant.IMPORTANT, Variant.STANDARD)  # the first default
RPM_VARIANTS = (Variant.MINIMAL, Variant.STANDARD)
_DEFAULT_VARIANT = {True: Variant.MINBASE, False: Variant.MINIMAL}  # by Family.is_deb


def setting(kind: Kind, help: str, default: Any = MISSING, *, merge: bool = False) -> Any:
    """A recipe key: its TOML kind, help text and default live on the field (mkosi's idea).

    merge: with `extends`, the child's list is appended to the parent's instead of replacing it.
    """
    return field(default=default, metadata={"kind": kind, "help": help, "merge": merge})


@dataclass(frozen=True)
class CustomizeStep:
    """Either write a file into the guest or run a shell command in its chroot."""

    write: str | None = setting(Kind.STRING, "absolute guest path of a file to write", None)
    content: str = setting(Kind.STRING, "the file's content", "")
    mode: int = setting(Kind.STRING, "the file's mode, an octal string like '0644'", 0o644)
    run: str | None = setting(Kind.STRING, "a shell command run in the guest's chroot", None)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. The fields with metadata are the TOML keys: SCHEMA is derived from them."""

    name: str = setting(Kind.STRING, "recipe name (defaults to the file name)")
    family: Family = setting(Kind.STRING, " | ".join(FAMILIES))
    suite: str = setting(Kind.STRING, "suite or release (sid, trixie, noble, 42, ...)")
    architecture: str = setting(Kind.STRING, "dpkg architecture or rpm basearch (default amd64 / x86_64)")
    variant: Variant = setting(Kind.STRING, f"{' | '.join(DEB_VARIANTS)} (Debian/Ubuntu, default minbase); "
                                            f"{' | '.join(RPM_VARIANTS)} (Fedora, default minimal)")
    components: tuple[str, ...] = setting(Kind.STRINGS, "archive components (Debian/Ubuntu)", ("main",))
    packages: tuple[str, ...] = setting(Kind.STRINGS, "extra packages to install", (), merge=True)
    exclude_paths: tuple[str, ...] = setting(
        Kind.STRINGS, "fnmatch patterns of paths dpkg/rpm must not install (docs, man pages)", (), merge=True)
    keyring: str = setting(Kind.STRING, "OpenPGP keyring/key file that signs the archive", "")
    mirror: str = setting(Kind.STRING, "archive base URL; default: the host's apt sources (Debian)", "")
    hostname: str = setting(Kind.STRING, "the guest's hostname (default: the recipe name)", "")
    description: str = setting(Kind.STRING, "one line for `imagefactory recipes`", "")
    repo_gpgcheck: bool = setting(Kind.BOOL, "verify the signature of repomd.xml (Fedora)", True)
    customize: tuple[CustomizeStep, ...] = setting(
        Kind.TABLES, "steps run after install: {write, content, mode} or {run}", (), merge=True)
    source: str = ""  # path of the file the recipe came from
    digest: str = field(default="", compare=False)  # sha256 of the merged recipe

    @property
    def is_deb(self) -> bool:
        return self.family.is_deb


def _keys(cls: type) -> dict[str, Field]:
    return {f.name: f for f in fields(cls) if "kind" in f.metadata}


# key -> (kind, help), derived from the Recipe fields; `extends` is a file-level key only.
SCHEMA: dict[str, tuple[Kind, str]] = {
    **{name: (f.metadata["kind"], f.metadata["help"]) for name, f in _keys(Recipe).items()},
    "extends": (Kind.STRING, "name of a recipe this one builds on"),
}
MERGED = frozenset(name for name, f in _keys(Recipe).items() if f.metadata["merge"])
CUSTOMIZE_KEYS = {name: f.metadata["kind"] for name, f in _keys(CustomizeStep).items()}


def _check_types(data: dict[str, Any], where: str) -> None:
    check_kinds(data, {key: kind for key, (kind, _) in SCHEMA.items()}, where)
    for i, step in enumerate(data.get("customize", [])):
        here = f"{where}: customize[{i}]"
        check_kinds(step, CUSTOMIZE_KEYS, here)
        if ("write" in step) == ("run" in step):
            raise RecipeError(f"{here} needs exactly one of 'write' or 'run'")
        if "write" in step and not step["write"].startswith("/"):
            raise RecipeError(f"{here}: 'write' must be an absolute guest path")


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
        if key in MERGED and key in merged:
            merged[key] = list(merged[key]) + list(value)
        else:
            merged[key] = value
    return merged


def load_raw(ref: str, search: Path | None = None, _seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path]:
    """Read, type-check and flatten `extends` chains; returns (data, path)."""
    path = find_recipe(ref, search)
    data = read_toml(path)
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
    """Load a recipe by name or path into a validated Recipe; defaults come from the Recipe fields."""
    data, path = load_raw(ref, search)
    where = str(path)
    for key in ("family", "suite"):
        if key not in data:
            raise RecipeError(f"{where}: missing required key {key!r}")
    if data["family"] not in FAMILIES:
        raise RecipeError(f"{where}: key 'family' must be one of {', '.join(FAMILIES)}, not {data['family']!r}")
    family = Family(data["family"])
    variant = data.get("variant", _DEFAULT_VARIANT[family.is_deb])
    if variant not in family.variants:
        raise RecipeError(f"{where}: key 'variant' must be one of {', '.join(family.variants)}, not {variant!r}")
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
    given = {key: tuple(v) if isinstance(v, list) else v for key, v in data.items() if key in _keys(Recipe)}
    return Recipe(**{
        **given,
        "family": family,
        "variant": Variant(variant),
        "architecture": data.get("architecture", family.default_architecture),
        "hostname": data.get("hostname", data["name"]),
        "customize": steps,
        "source": where,
        "digest": digest,
    })


def list_recipes(search: Path | None = None) -> list[Recipe]:
    """Every recipe in the recipes directory, loaded (so broken ones surface)."""
    search = search or RECIPES_DIR
    return [load(p.stem, search) for p in sorted(search.glob("*.toml"))]
