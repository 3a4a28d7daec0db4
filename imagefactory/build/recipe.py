"""Recipes: TOML files describing a guest, validated strictly.

A recipe names a distro family, a suite and a variant; `extends` layers one
recipe on another (lists are concatenated, scalars overridden). Validation is
pure: every error names the file and the key, in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from imagefactory.build.formats import OciConfig
from imagefactory.build.formats import check_names as check_formats
from imagefactory.core.errors import RecipeError, shown
from imagefactory.core.hostname import check_hostname
from imagefactory.core.tomlcheck import MAX_BYTES, Kind, check_kinds, read_toml

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
DEB_VARIANTS = (Variant.ESSENTIAL, Variant.MINBASE, Variant.IMPORTANT, Variant.STANDARD)
RPM_VARIANTS = (Variant.MINIMAL, Variant.STANDARD)
_DEFAULT_VARIANT = {True: Variant.MINBASE, False: Variant.MINIMAL}  # by Family.is_deb
OCI_KEYS: dict[str, type] = {"cmd": list, "entrypoint": list, "env": list, "working_dir": str, "user": str,
                             "tag": str, "labels": dict}

MAX_RECIPE_BYTES = MAX_BYTES  # a recipe is a page of TOML; anything bigger is a mistake or an attack
MAX_EXTENDS = 16  # extends chains deeper than this are refused (cycles are caught before)
PATH_MAX, NAME_MAX = 4096, 255  # Linux limits for a 'write' path and each of its components
# Words that become URL path segments or file names: checked so none can be '..' or carry a '/'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")
_ARCH = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._+-]{0,63})?")
_MODE = re.compile(r"0?[0-7]{1,4}")


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
    sources: tuple[str, ...] = setting(  # empty: the suite alone (Debian) / the mirror itself (Fedora)
        Kind.STRINGS, "suites read together, highest version wins (default: [suite]); an entry 'URL SUITE' "
                      "names its mirror; Fedora: repository paths under mirror", ())
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
    formats: tuple[str, ...] = setting(
        Kind.STRINGS, "output formats besides rootfs + tar.zst: squashfs, incus, incus-unified, lxc, oci", ())
    oci: OciConfig = setting(
        Kind.TABLE, "OCI image config: cmd, entrypoint, env (lists), working_dir, user, tag, labels (table)",
        OciConfig())
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
    for key, value in data.items():
        if key == "oci":
            _check_oci(value, where)
        texts: list[Any] = value if isinstance(value, list) and key != "customize" else [value]
        for text in texts:
            if isinstance(text, str) and "\0" in text:
                raise RecipeError(f"{where}: key {key!r} contains a NUL character")
    for i, step in enumerate(data.get("customize", [])):
        here = f"{where}: customize[{i}]"
        check_kinds(step, CUSTOMIZE_KEYS, here)
        for k, v in step.items():
            if k != "content" and "\0" in v:
                raise RecipeError(f"{here}: key {k!r} contains a NUL character")
        if ("write" in step) == ("run" in step):
            raise RecipeError(f"{here} needs exactly one of 'write' or 'run'")
        if "write" in step:
            _check_write_path(step["write"], here)
        if "mode" in step:
            _parse_mode(step["mode"], here)


def _check_write_path(path: str, where: str) -> None:
    """An absolute guest file path without '..': checked before any work, never resolved on the host."""
    if not path.startswith("/"):
        raise RecipeError(f"{where}: 'write' must be an absolute guest path")
    parts = path.split("/")
    if ".." in parts:
        raise RecipeError(f"{where}: 'write' {shown(path)} contains '..' (paths stay inside the guest)")
    if parts[-1] in ("", "."):
        raise RecipeError(f"{where}: 'write' {shown(path)} does not name a file")
    if len(path.encode()) > PATH_MAX or any(len(p.encode()) > NAME_MAX for p in parts):
        raise RecipeError(f"{where}: 'write' {shown(path)} is longer than Linux allows")


def _check_oci(table: dict[str, Any], where: str) -> None:
    for k, v in table.items():
        if k not in OCI_KEYS:
            raise RecipeError(f"{where}: oci: unknown key {k!r} (known: {', '.join(OCI_KEYS)})")
        if not isinstance(v, OCI_KEYS[k]):
            raise RecipeError(f"{where}: oci: key {k!r} must be a {OCI_KEYS[k].__name__}")
        if isinstance(v, list) and not all(isinstance(x, str) for x in v):
            raise RecipeError(f"{where}: oci: key {k!r} must be a list of strings")
        if isinstance(v, dict) and not all(isinstance(x, str) for x in v.values()):
            raise RecipeError(f"{where}: oci: labels must map strings to strings")


def oci_config(table: dict[str, Any]) -> OciConfig:
    defaults = OciConfig()
    return OciConfig(
        cmd=tuple(table.get("cmd", defaults.cmd)), entrypoint=tuple(table.get("entrypoint", defaults.entrypoint)),
        env=tuple(table.get("env", defaults.env)), working_dir=table.get("working_dir", defaults.working_dir),
        user=table.get("user", defaults.user), tag=table.get("tag", defaults.tag),
        labels=tuple(sorted(table.get("labels", {}).items())))


def find_recipe(ref: str, search: Path | None = None) -> Path:
    """A recipe by file path (contains / or ends in .toml) or by name: in
    `search` first (the directory of the recipe that extends it), then recipes/.
    A relative path in `extends` is relative to that directory too."""
    if "/" in ref or ref.endswith(".toml"):
        return search / ref if search is not None and not ref.startswith("/") else Path(ref)
    dirs = [d for d in (search, RECIPES_DIR) if d is not None]
    for d in dirs:
        if (d / f"{ref}.toml").is_file():
            return d / f"{ref}.toml"
    known = ", ".join(sorted({p.stem for d in dirs for p in d.glob("*.toml")})) or "none"
    raise RecipeError(f"unknown recipe {shown(ref)} (known: {known})")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if key in MERGED and key in merged:
            merged[key] = list(merged[key]) + list(value)
        else:
            merged[key] = value
    return merged


def load_raw(ref: str, search: Path | None = None, _seen: tuple[str, ...] = (),
             _chain: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path]:
    """Read, type-check and flatten `extends` chains; returns (data, path).

    Cycles are found by the files' real paths, so a cycle written with names,
    relative paths or symlinks is the same cycle; chains are at most
    MAX_EXTENDS deep."""
    path = find_recipe(ref, search)
    data = read_toml(path, MAX_RECIPE_BYTES)
    _check_types(data, str(path))
    data.setdefault("name", path.stem)
    parent = data.pop("extends", None)
    if parent is None:
        return data, path
    real = os.path.realpath(path)
    chain = _chain + (str(path),)
    if len(chain) > MAX_EXTENDS:
        raise RecipeError(f"{chain[0]}: key 'extends' nests more than {MAX_EXTENDS} recipes deep (at {path})")
    try:
        parent_path = find_recipe(parent, path.parent)
    except RecipeError as exc:
        raise RecipeError(f"{path}: key 'extends': {exc}") from None
    if not parent_path.is_file():
        raise RecipeError(f"{path}: key 'extends': no such recipe file {parent_path}")
    if os.path.realpath(parent_path) in _seen + (real,):
        raise RecipeError(f"{path}: key 'extends' forms a cycle: {' -> '.join(chain + (str(parent_path),))}")
    base, _ = load_raw(str(parent_path), None, _seen + (real,), chain)
    base.pop("name", None)
    base.pop("description", None)
    return _merge(base, data), path


def _parse_mode(value: str, where: str) -> int:
    if not _MODE.fullmatch(value) or int(value, 8) > 0o7777:
        raise RecipeError(f"{where}: key 'mode' must be an octal string from '0000' to '7777' like '0644', "
                          f"not {shown(value)}")
    return int(value, 8)


def check_mirror(url: str, where: str) -> str:
    """An http(s):// or file:// base URL; anything else is refused before it reaches a socket."""
    problem = ""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
        if any(c.isspace() or ord(c) < 32 for c in url):
            problem = "contains whitespace or control characters"
        elif parts.scheme not in ("http", "https", "file"):
            problem = "must be an http://, https:// or file:// URL"
        elif parts.scheme != "file" and not parts.hostname:
            problem = "has no host"
        elif parts.query or parts.fragment:
            problem = "must not have a query or fragment"
    except ValueError as exc:
        problem = f"is not a valid URL ({exc})"
    if problem:
        raise RecipeError(f"{where}: {shown(url)} {problem}")
    return url


def _check_word(data: dict[str, Any], key: str, pattern: re.Pattern[str], what: str, where: str) -> None:
    values = data[key] if isinstance(data.get(key), list) else [data[key]] if key in data else []
    for value in values:
        if not pattern.fullmatch(value):
            raise RecipeError(f"{where}: key {key!r}: {shown(value)} is not {what}")


def _sources(entries: list[str], where: str) -> tuple[str, ...]:
    """Each entry is 'SUITE' or 'URL SUITE' (Debian) or a repository path (Fedora); no duplicates."""
    out: list[str] = []
    for entry in entries:
        parts = entry.split()
        if not parts or len(parts) > 2 or (len(parts) == 2 and "://" not in parts[0]):
            raise RecipeError(f"{where}: key 'sources': {entry!r} must be 'SUITE' or 'URL SUITE'")
        if parts[-1] in [o.split()[-1] for o in out]:
            raise RecipeError(f"{where}: key 'sources': {parts[-1]!r} is listed twice")
        out.append(" ".join(parts))
    return tuple(out)


def load(ref: str, search: Path | None = None) -> Recipe:
    """Load a recipe by name or path into a validated Recipe (before any work is done);
    defaults come from the Recipe fields."""
    data, path = load_raw(ref, search)
    where = str(path)
    for key in ("family", "suite"):
        if key not in data:
            raise RecipeError(f"{where}: missing required key {key!r}")
    if data["family"] not in FAMILIES:
        raise RecipeError(f"{where}: key 'family' must be one of {', '.join(FAMILIES)}, not {shown(data['family'])}")
    family = Family(data["family"])
    variant = data.get("variant", _DEFAULT_VARIANT[family.is_deb])
    if variant not in family.variants:
        raise RecipeError(f"{where}: key 'variant' must be one of {', '.join(family.variants)}, "
                          f"not {shown(variant)}")
    _check_word(data, "name", _NAME, "a recipe name (1-128 of A-Z a-z 0-9 . _ + -, not starting with . _ + -)",
                where)
    _check_word(data, "suite", _SUITE, "a suite name (like sid, bookworm-updates, 42)", where)
    _check_word(data, "architecture", _ARCH, "an architecture name (like amd64, x86_64)", where)
    _check_word(data, "components", _COMPONENT, "an archive component (like main, non-free-firmware)", where)
    if data.get("components") == []:
        raise RecipeError(f"{where}: key 'components' must name at least one component")
    if "mirror" in data:
        check_mirror(data["mirror"], f"{where}: key 'mirror'")
    hostname = check_hostname(
        data.get("hostname", data["name"]), RecipeError,
        f"{where}: key 'hostname'{'' if 'hostname' in data else ' (defaults to the name; set it)'}: ")
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
    return Recipe(**{  # defaults: the Recipe fields'
        **given,
        "family": family,
        "variant": Variant(variant),
        "architecture": data.get("architecture", family.default_architecture),
        "hostname": hostname,
        "customize": steps,
        "sources": _sources(data.get("sources", []), where),
        "formats": check_formats(data.get("formats", []), f"{where}: key 'formats'"),
        "oci": oci_config(data.get("oci", {})),
        "source": where,
        "digest": digest,
    })


def list_recipes(search: Path | None = None) -> list[Recipe]:
    """Every recipe in the recipes directory, loaded (so broken ones surface)."""
    search = search or RECIPES_DIR
    return [load(p.stem, search) for p in sorted(search.glob("*.toml"))]
