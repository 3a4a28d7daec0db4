"""The host's apt sources: where a Debian recipe's mirror comes from by default.

A provider's host already points at the mirror it trusts (often a local one);
guests built there should use the same. Both the one-line format
(sources.list) and deb822 (*.sources) are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from imagefactory.core.errors import RecipeError

APT_DIR = Path("/etc/apt")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str = ""


def parse_one_line(text: str) -> list[AptSource]:
    """Parse sources.list lines: `deb [opts] uri suite comp...`."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        opts = {}
        if rest.startswith("["):
            optstr, _, rest = rest[1:].partition("]")
            for tok in optstr.split():
                k, _, v = tok.partition("=")
                opts[k] = v
        parts = rest.split()
        if len(parts) >= 2:
            out.append(AptSource(parts[0], (parts[1],), tuple(parts[2:]), opts.get("signed-by", "")))
    return out


def parse_deb822(text: str) -> list[AptSource]:
    """Parse deb822 .sources stanzas with Types: deb (Enabled: no is skipped)."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(
                AptSource(
                    uri,
                    tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()),
                    fields.get("signed-by", ""),
                )
            )
    return out


def host_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """All enabled deb sources of the host, sources.list first."""
    found: list[AptSource] = []
    main = apt_dir / "sources.list"
    if main.is_file():
        found += parse_one_line(main.read_text(errors="replace"))
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".list":
                found += parse_one_line(f.read_text(errors="replace"))
            elif f.suffix == ".sources":
                found += parse_deb822(f.read_text(errors="replace"))
    return found


def is_archive_uri(src: AptSource) -> bool:
    """A main archive (not security, not a third-party repo): it has main-archive suites."""
    return not any(is_security_suite(s) for s in src.suites) and "main" in src.components


def host_debian_mirror(apt_dir: Path = APT_DIR, keyring_hint: str = "debian-archive-keyring") -> str:
    """The host's Debian mirror base URL, e.g. for recipes without `mirror`."""
    sources = [s for s in host_sources(apt_dir) if is_archive_uri(s)]
    preferred = [s for s in sources if keyring_hint in s.signed_by] or sources
    for src in preferred:
        if not src.uri.endswith("-security"):
            return src.uri.rstrip("/")
    raise RecipeError(
        f"no Debian mirror configured in {apt_dir}/sources.list*; give the recipe a 'mirror' or pass --mirror"
    )


def is_security_suite(suite: str) -> bool:
    """bookworm-security, trixie-security (and the old 'bullseye/updates' naming)."""
    return suite.endswith(("-security", "/updates"))


def host_security_mirror(apt_dir: Path = APT_DIR, keyring_hint: str = "debian-archive-keyring") -> str:
    """The host's security archive base URL (the source that lists a *-security suite)."""
    sources = [s for s in host_sources(apt_dir) if any(is_security_suite(x) for x in s.suites)]
    preferred = [s for s in sources if keyring_hint in s.signed_by] or sources
    if not preferred:
        raise RecipeError(
            f"no security archive configured in {apt_dir}/sources.list*; give the source as 'URL SUITE' in the "
            "recipe's 'sources'"
        )
    return preferred[0].uri.rstrip("/")


def mirror_for(suite: str, main_mirror: str, apt_dir: Path = APT_DIR) -> str:
    """Where a recipe's source lives: a security suite on the host's security archive, else the main mirror."""
    return host_security_mirror(apt_dir) if is_security_suite(suite) else main_mirror
