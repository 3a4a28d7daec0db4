"""comps.xml: the package groups that define Fedora's install variants.

Fedora's minimal install is the `core` group (what a kickstart's %packages
pulls in by default); `standard` adds the group of that name. A group
contributes its mandatory and default packages, never the optional ones.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from imagefactory.build.rpm.primary import ByteStream
from imagefactory.core.errors import VerificationError

VARIANT_GROUPS = {"minimal": ("core",), "standard": ("core", "standard")}


def group_packages(stream: ByteStream, groups: tuple[str, ...], origin: str = "comps.xml") -> list[str]:
    """Mandatory and default packages of the named groups, in order, without duplicates."""
    try:
        root = ET.parse(stream).getroot()
    except ET.ParseError as exc:
        raise VerificationError(f"{origin}: malformed XML ({exc})") from None
    found: dict[str, list[str]] = {}
    for g in root.iter("group"):
        reqs = g.find("packagelist")
        found[g.findtext("id", "")] = [
            (r.text or "").strip() for r in (reqs.iter("packagereq") if reqs is not None else ())
            if r.get("type", "mandatory") in ("mandatory", "default")
        ]
    missing = [g for g in groups if g not in found]
    if missing:
        raise VerificationError(f"{origin}: no group {', '.join(missing)} (known: {', '.join(sorted(found))})")
    return list(dict.fromkeys(p for g in groups for p in found[g] if p))
