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
from imagefactory.seed.cgroups import Layout
from imagefactory.seed.inventory import GuestInfo
from imagefactory.seed.limits import Limits, render

MIB = 1024 * 1024


@dataclass(frozen=True)
class Finding:
    level: str  # "error" (must fix) or "warning"
    code: str  # overcommit, duplicate-context, duplicate-ip, no-barrier, not-enforced, no-controller, ...
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


def lxc_keys(text: str) -> list[tuple[str, str]]:
    """(key, value) lines of an LXC config, in order."""
    pairs = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            pairs.append((key.strip(), value.strip()))
    return pairs


def enforcement(name: str, lxc_text: str, limits: Limits, layout: Layout, page_size: int,
                disk_mode: str | None) -> list[Finding]:
    """What of guest NAME's limits its LXC config would not get enforced on a host with this layout."""
    findings = []
    rendered = render(limits, page_size, layout)
    have = lxc_keys(lxc_text)
    cgroup_keys = [(k, v) for k, v in have if k.startswith(("lxc.cgroup.", "lxc.cgroup2."))]
    for what in rendered.unenforced:
        findings.append(Finding("error", "no-controller",
                                f"{name}: no {what} controller on this host ({layout.kind}): its {what} limit "
                                "cannot be enforced"))
    reported = set()
    for key, value in rendered.lxc:
        controller = key.split(".")[2] if key.startswith(("lxc.cgroup.", "lxc.cgroup2.")) else None
        if controller and controller not in reported and (key, value) not in cgroup_keys:
            reported.add(controller)
            wrong = [k for k, _ in cgroup_keys if k.split(".")[2] == controller]
            findings.append(Finding(
                "error", "not-enforced",
                f"{name}: {controller} limit not enforced here ({layout.describe()}): its LXC config has "
                f"{', '.join(wrong) or 'no key for it'}, this host needs {key} = {value}; "
                f"rewrite with: imagefactory limits {name}"))
    drops = [v for k, v in have if k == "lxc.cap.drop"]
    cleared = "" in drops
    dropped = {c.upper() for c in (drops[-1].split() if drops else [])}
    if not cleared or dropped != set(limits.dropped):
        findings.append(Finding("warning", "capabilities",
                                f"{name}: its LXC bounding set differs from its limits (drops "
                                f"{' '.join(sorted(dropped)) or 'nothing beyond common.conf'}); "
                                f"rewrite with: imagefactory limits {name}"))
    if disk_mode == "quota" and "SYS_RESOURCE" not in limits.dropped:
        findings.append(Finding("warning", "quota-bypass",
                                f"{name}: keeps SYS_RESOURCE, so root in the guest ignores its disk quota"))
    if limits.disk is not None and disk_mode is None:
        findings.append(Finding("error", "no-disk-layer", f"{name}: disk limit set but its own layer is missing"))
    return findings
