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
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagefactory.build.formats import OciConfig
from imagefactory.build.formats import check_names as check_formats
from imagefactory.core.errors import RecipeError, shown
from imagefactory.core.hostname import check_hostname

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
    "formats": (list, "output formats besides rootfs + tar.zst: squashfs, incus, incus-unified, lxc, oci"),
    "oci": (dict, "OCI image config: cmd, entrypoint, env (lists), working_dir, user, tag, labels (table)"),
}
OCI_KEYS: dict[str, type] = {"cmd": list, "entrypoint": list, "env": list, "working_dir": str, "user": str,
                             "tag": str, "labels": dict}
CUSTOMIZE_KEYS = {"write": str, "content": str, "mode": str, "run": str}

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of TOML; anything bigger is a mistake or an attack
MAX_EXTENDS = 16  # extends chains deeper than this are refused (cycles are caught before)
PATH_MAX, NAME_MAX = 4096, 255  # Linux limits for a 'write' path and each of its components
# Words that become URL path segments or file names: checked so none can be '..' or carry a '/'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}")
_ARCH = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._+-]{0,63})?")
_MODE = re.compile(r"0?[0-7]{1,4}")


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
    formats: tuple[str, ...] = ()
    oci: OciConfig = OciConfig()
    source: str = ""  # path of the file the recipe came from
    digest: str = field(default="", compare=False)  # sha256 of the merged recipe

    @property
    def is_deb(self) -> bool:
        return self.family in ("debian", "ubuntu")


def _check_types(data: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        if key not in SCHEMA:
            raise RecipeError(f"{where}: unknown key {shown(key)} (known: {', '.join(sorted(SCHEMA))})")
        want = SCHEMA[key][0]
        if not isinstance(value, want) or (want is str and isinstance(value, bool)):
            raise RecipeError(f"{where}: key {key!r} must be a {want.__name__}, not {type(value).__name__}")
        if isinstance(value, dict) and key == "oci":
            _check_oci(value, where)
        texts: list[Any] = value if isinstance(value, list) and key != "customize" else [value]
        if want is list and key != "customize" and not all(isinstance(v, str) for v in texts):
            raise RecipeError(f"{where}: key {key!r} must be a list of strings")
        for text in texts:
            if isinstance(text, str) and "\0" in text:
                raise RecipeError(f"{where}: key {key!r} contains a NUL character")
    for i, step in enumerate(data.get("customize", [])):
        here = f"{where}: customize[{i}]"
        if not isinstance(step, dict):
            raise RecipeError(f"{here} must be a table")
        for k, v in step.items():
            if k not in CUSTOMIZE_KEYS:
                raise RecipeError(f"{here}: unknown key {shown(k)} (known: {', '.join(CUSTOMIZE_KEYS)})")
            if not isinstance(v, CUSTOMIZE_KEYS[k]):
                raise RecipeError(f"{here}: key {k!r} must be a string")
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


def _read_toml(path: Path) -> dict[str, Any]:
    """The parsed file; every way it can be unreadable is a RecipeError naming it."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES} bytes; not a recipe")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 (invalid byte at offset {exc.start}); TOML files are UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise RecipeError(f"{path}: invalid TOML: nested too deeply") from None


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
        if key in ("packages", "exclude_paths", "customize") and key in merged:
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
    data = _read_toml(path)
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


def load(ref: str, search: Path | None = None) -> Recipe:
    """Load a recipe by name or path into a validated Recipe (before any work is done)."""
    data, path = load_raw(ref, search)
    where = str(path)
    for key in ("family", "suite"):
        if key not in data:
            raise RecipeError(f"{where}: missing required key {key!r}")
    family = data["family"]
    if family not in FAMILIES:
        raise RecipeError(f"{where}: key 'family' must be one of {', '.join(FAMILIES)}, not {shown(family)}")
    deb = family in ("debian", "ubuntu")
    variants = DEB_VARIANTS if deb else RPM_VARIANTS
    variant = data.get("variant", "minbase" if deb else "minimal")
    if variant not in variants:
        raise RecipeError(f"{where}: key 'variant' must be one of {', '.join(variants)}, not {shown(variant)}")
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
        hostname=hostname,
        description=data.get("description", ""),
        repo_gpgcheck=data.get("repo_gpgcheck", True),
        customize=steps,
        formats=check_formats(data.get("formats", []), f"{where}: key 'formats'"),
        oci=oci_config(data.get("oci", {})),
        source=where,
        digest=digest,
    )


def list_recipes(search: Path | None = None) -> list[Recipe]:
    """Every recipe in the recipes directory, loaded (so broken ones surface)."""
    search = search or RECIPES_DIR
    return [load(p.stem, search) for p in sorted(search.glob("*.toml"))]
