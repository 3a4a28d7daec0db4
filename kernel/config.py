"""Kconfig fragments: parse, merge the request, and check what `make olddefconfig` kept.

Kconfig silently drops an option whose dependencies are missing, so a build
that "succeeded" may lack what the recipe asked for. The checker compares the
final .config with the merged request and names every option that did not stick.
"""

from __future__ import annotations

import re

# A request value: "y", "m", a quoted string, a number, or None for "is not set".
ConfigValue = str | None

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str, origin: str = "<config>") -> dict[str, ConfigValue]:
    """Parse .config / fragment syntax. Raises ValueError naming the bad line."""
    out: dict[str, ConfigValue] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if m := _UNSET.match(line):
            out[m.group(1)] = None
        elif m := _SET.match(line):
            value = m.group(2)
            if value == "n":
                value = None
            out[m.group(1)] = value
        elif not line.startswith("#"):
            raise ValueError(f"{origin}:{number}: not a Kconfig line: {raw!r}")
    return out


def merge_requests(fragments: list[dict[str, ConfigValue]]) -> dict[str, ConfigValue]:
    """Later fragments win, as in merge_config.sh."""
    merged: dict[str, ConfigValue] = {}
    for fragment in fragments:
        merged.update(fragment)
    return merged


def render_fragment(request: dict[str, ConfigValue]) -> str:
    """Canonical fragment text (sorted): what is merged and what the cache key hashes."""
    lines = []
    for name in sorted(request):
        value = request[name]
        lines.append(f"# {name} is not set" if value is None else f"{name}={value}")
    return "\n".join(lines) + "\n"


def unmet_options(request: dict[str, ConfigValue], final: dict[str, ConfigValue]) -> list[str]:
    """Every requested option whose final value differs, as 'NAME: asked X, got Y'."""
    problems = []
    for name in sorted(request):
        want, got = request[name], final.get(name)
        if want != got:
            problems.append(f"{name}: asked {_show(want)}, got {_show(got)}")
    return problems


def _show(value: ConfigValue) -> str:
    return "not set" if value is None else value
