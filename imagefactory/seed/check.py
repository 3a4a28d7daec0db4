"""Host-wide sanity of seeded guests (`imagefactory seed --check`).

Linux-VServer's memory advice: the RSS hard limits of all guests together
should stay below RAM + swap, or the OOM killer decides who lives. Context
ids and IPs must be unique, and the directory holding guest roots needs the
barrier attribute. The evaluation is pure; reading the host is separate.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from imagefactory.seed.barrier import BarrierStatus
from imagefactory.seed.inventory import GuestInfo

MIB = 1024 * 1024


@dataclass(frozen=True)
class Finding:
    level: str  # "error" (must fix) or "warning"
    code: str  # overcommit, duplicate-context, duplicate-ip, no-barrier
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def meminfo(text: str) -> tuple[int, int]:
    """(MemTotal, SwapTotal) in bytes from /proc/meminfo text."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key] = int(fields[0]) * 1024
    return values.get("MemTotal", 0), values.get("SwapTotal", 0)


def _duplicates(guests: list[GuestInfo], attr: str) -> dict:
    seen: dict = defaultdict(list)
    for guest in guests:
        value = getattr(guest, attr)
        if value is not None:
            seen[value.split("/")[0] if attr == "ip" else value].append(guest.name)
    return {value: names for value, names in seen.items() if len(names) > 1}


def evaluate(guests: list[GuestInfo], ram: int, swap: int, barriers: list[BarrierStatus]) -> list[Finding]:
    """All findings for these guests on a host with this much RAM and swap."""
    findings = []
    total = sum(g.memory or 0 for g in guests)
    if total > ram + swap:
        findings.append(Finding(
            "warning", "overcommit",
            f"RSS hard limits total {total // MIB} MiB over {len(guests)} guests, above "
            f"RAM {ram // MIB} MiB + swap {swap // MIB} MiB = {(ram + swap) // MIB} MiB",
        ))
    unlimited = [g.name for g in guests if g.memory is None]
    if unlimited:
        findings.append(Finding("warning", "no-memory-limit", f"no RSS hard limit: {', '.join(unlimited)}"))
    for ctx, names in sorted(_duplicates(guests, "context").items()):
        findings.append(Finding("error", "duplicate-context", f"context {ctx} used by {', '.join(names)}"))
    for ip, names in sorted(_duplicates(guests, "ip").items()):
        findings.append(Finding("error", "duplicate-ip", f"IP {ip} used by {', '.join(names)}"))
    for status in barriers:
        if not status.present:
            findings.append(Finding("warning", "no-barrier", f"{status.path}: {status.detail}"))
    return findings


def vdir_parents(guests: list[GuestInfo], extra: list[Path]) -> list[Path]:
    """The directories holding guest roots (where the barrier belongs)."""
    parents = {Path(os.path.abspath(g.root)).parent for g in guests if g.root} | {p.absolute() for p in extra}
    return sorted(p for p in parents if p.is_dir())
