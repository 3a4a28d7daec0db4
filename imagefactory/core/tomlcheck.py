"""TOML input checked strictly: tables with known keys, values of the declared kind.

Shared by build recipes (imagefactory/build/recipe.py) and kernel recipes (kernel/recipe.py).
Every error is one RecipeError line naming the file, the table and the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from imagefactory.core.errors import RecipeError, shown

MAX_BYTES = 1 << 20  # a recipe is a page of TOML; anything bigger is a mistake or an attack


class Kind(Enum):
    """What a key's TOML value must be (checked exactly: a boolean is not a string)."""

    STRING = "a string"
    BOOL = "a boolean"
    STRINGS = "a list of strings"
    TABLES = "a list of tables"
    TABLE = "a table"

    def check(self, value: Any, where: str, key: str) -> None:
        ok = {
            Kind.STRING: isinstance(value, str),
            Kind.BOOL: isinstance(value, bool),
            Kind.STRINGS: isinstance(value, list) and all(isinstance(v, str) for v in value),
            Kind.TABLES: isinstance(value, list) and all(isinstance(v, dict) for v in value),
            Kind.TABLE: isinstance(value, dict),
        }[self]
        if not ok:
            raise RecipeError(f"{where}: key {key!r} must be {self.value}, not {_toml_type(value)}")


def _toml_type(value: Any) -> str:
    if isinstance(value, list):
        return "a list holding " + ", ".join(sorted({_toml_type(v) for v in value})) if value else "an empty list"
    return {bool: "a boolean", str: "a string", int: "an integer", float: "a float", dict: "a table"}.get(
        type(value), type(value).__name__)


def read_toml(path: Path, limit: int = MAX_BYTES) -> dict[str, Any]:
    """A TOML file's top-level table; every way it can be unreadable is a RecipeError naming it."""
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise RecipeError(f"{path}: larger than {limit} bytes; not a recipe")
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


def check_keys(data: Mapping[str, Any], known: Collection[str], where: str) -> None:
    """Refuse the first unknown key (sorted), listing the known ones."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(f"{where}: unknown key {shown(unknown[0])} (known: {', '.join(sorted(known))})")


def check_kinds(data: Mapping[str, Any], kinds: Mapping[str, Kind], where: str) -> None:
    """Only known keys, each holding a value of its kind."""
    check_keys(data, kinds, where)
    for key, value in data.items():
        kinds[key].check(value, where, key)


def table(data: Mapping[str, Any], key: str, where: str, known: Collection[str]) -> dict[str, Any]:
    """data[key] (an empty table when absent), which must be a table using only known keys."""
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: [{key}] must be a table")
    check_keys(value, known, f"{where}: [{key}]")
    return value
