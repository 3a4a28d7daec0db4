"""One set of guest limits, rendered for util-vserver, systemd-nspawn and LXC.

Everything here is pure: parse the user's figures once into a Limits value,
then derive every host format from it, so the formats can never disagree
(tests check that they do not).

Conventions, kept identical in all formats:
- memory: the hard limit (util-vserver rss.hard, cgroup memory.max or v1
  memory.limit_in_bytes) is the user's figure rounded down to whole pages;
  the soft limit (rss.soft, memory.high or v1 soft_limit_in_bytes) is 90 %.
- address space (util-vserver rlimits/as; cgroups have no equivalent) is
  AS_FACTOR times the memory: shared libraries are mapped in every process,
  so address space is always far above resident memory.
- CPU: the share is of one CPU, with 0.1 % resolution. util-vserver's token
  bucket refills fill-rate tokens every interval ticks (one token = one tick
  of one CPU), so fill-rate/interval = share; cgroup cpu.max (v1:
  cfs_quota_us/cfs_period_us) is quota/period with the same ratio; systemd's
  CPUQuota= is the percentage itself.
- disk: bytes the guest's own layer may hold (see seed/disk.py); shared
  store objects never count. util-vserver's dlimits count 1 KiB blocks.
- capabilities: the bounding set (see seed/caps.py).

LXC and systemd apply a cgroup limit only on the hierarchy that carries its
controller, so the cgroup keys follow the host's layout (seed/cgroups.py):
v1 keys where the controller is on a v1 hierarchy, v2 keys where it is on
the unified one, none (and a `seed --check` finding) where it is missing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

from imagefactory.core.errors import ImageFactoryError, shown
from imagefactory.seed import caps
from imagefactory.seed.cgroups import V1, V2, Layout

MIB = 1024 * 1024
MEMORY_FLOOR = 64 * MIB  # below this a Debian minbase guest cannot even run apt
DISK_FLOOR = 16 * MIB  # an ext4 image smaller than this is mostly its own metadata
SOFT_RATIO = Fraction(9, 10)
AS_FACTOR = 4
# Every rendered figure must fit what its consumer parses: systemd's MemoryMax= and the cgroup files LXC
# writes take at most a signed 64-bit byte count, and util-vserver's rlimits/as is AS_FACTOR times the memory
# (the kernel's rlimit is 64-bit bytes). So memory stops at 2^63 / AS_FACTOR bytes (2 EiB).
MEMORY_CEILING = (1 << 63) // AS_FACTOR
# util-vserver's dlimits space_total is a 32-bit count of KiB (vcmd_ctx_dlimit_v0): just under 4 TiB.
DISK_CEILING = ((1 << 32) - 1) * 1024
CPU_PERIOD_US = 100_000  # cgroup default period (v1 cfs_period_us and v2 cpu.max)
SHARE_RESOLUTION = 1000  # shares are stored as tenths of a percent
# Token bucket bounds: util-vserver's kernel defaults are tokens-max = HZ/2,
# tokens-min = HZ/16 (jiffies). With HZ=1000 a guest may burst half a second
# of CPU and is released from hold once it has ~60 ms worth again.
TOKENS_MAX = 500
TOKENS_MIN = 60

_UNITS = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}
_SHARE = re.compile(r"\d{1,3}(\.\d{1,6})?")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class LimitError(ImageFactoryError):
    """A memory, CPU or disk figure the user gave is malformed or out of range."""


def parse_size(text: str, what: str, floor: int, ceiling: int, why: str) -> int:
    """'512M', '2G', '536870912' -> bytes (K/M/G/T are binary, as in util-vserver docs)."""
    match = _SIZE.match(text) if len(text) <= 64 else None
    if not match:
        raise LimitError(f"{what} {shown(text)} is not a size (examples: 512M, 2G, 1073741824)")
    number, unit = match.groups()
    value = int(Fraction(number) * _UNITS[unit.upper()])
    if value < floor:
        raise LimitError(f"{what} {text!r} is below the floor of {floor // MIB}M")
    if value > ceiling:
        raise LimitError(f"{what} {text!r} is above the ceiling of {why}")
    return value


def parse_memory(text: str) -> int:
    return parse_size(text, "memory", MEMORY_FLOOR, MEMORY_CEILING,
                      f"{MEMORY_CEILING >> 60} EiB (systemd, LXC and the kernel take 64-bit byte counts)")


def parse_disk(text: str) -> int:
    return parse_size(text, "disk", DISK_FLOOR, DISK_CEILING,
                      f"{DISK_CEILING >> 30} GiB (util-vserver's dlimits count KiB in 32 bits)")


def parse_share(text: str) -> Fraction:
    """'25%', '25', '12.5%' -> a CPU share in percent, 0 < share <= 100."""
    raw = text.strip().removesuffix("%").strip()
    if not _SHARE.fullmatch(raw):  # plain decimals only: Fraction would also take '1e999999999'
        raise LimitError(f"CPU share {shown(text)} is not a percentage (example: 25%)")
    try:
        share = Fraction(raw)
    except (ValueError, ZeroDivisionError):
        raise LimitError(f"CPU share {text!r} is not a percentage (example: 25%)") from None
    share = Fraction(round(share * 10), 10)
    if not 0 < share <= 100:
        raise LimitError(f"CPU share {text!r} must be above 0% and at most 100% (0.1% steps)")
    return share


@dataclass(frozen=True)
class Limits:
    """A guest's limits as the user meant them.

    memory in bytes, CPU in percent of one CPU, disk in bytes of the guest's
    own layer (None: unlimited), and the capabilities given back (cap_add)
    or taken away (cap_drop) relative to the default bounding set.
    """

    memory: int
    cpu_percent: Fraction
    disk: int | None = None
    cap_add: frozenset[str] = field(default_factory=frozenset)
    cap_drop: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, memory: str, cpu: str, disk: str | None = None,
              cap_add: tuple[str, ...] = (), cap_drop: tuple[str, ...] = ()) -> Limits:
        add = frozenset(caps.canonical(c) for c in cap_add)
        drop = frozenset(caps.canonical(c) for c in cap_drop)
        if add & drop:
            raise LimitError(f"capability both added and dropped: {', '.join(caps.ordered(add & drop))}")
        return cls(parse_memory(memory), parse_share(cpu), parse_disk(disk) if disk else None, add, drop)

    @property
    def dropped(self) -> frozenset[str]:
        """Capabilities outside the guest's bounding set."""
        return caps.dropped(self.cap_add, self.cap_drop, self.disk is not None)

    def to_dict(self) -> dict:
        return {
            "memory": self.memory, "cpu_percent": str(self.cpu_percent), "disk": self.disk,
            "cap_add": caps.ordered(self.cap_add), "cap_drop": caps.ordered(self.cap_drop),
            "dropped": caps.ordered(self.dropped),
        }

    def to_json(self) -> str:
        """The record kept in the guest's conf dir (apps/imagefactory/limits.json)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Limits:
        data = json.loads(text)
        return cls(int(data["memory"]), Fraction(data["cpu_percent"]),
                   int(data["disk"]) if data.get("disk") else None,
                   frozenset(caps.canonical(c) for c in data.get("cap_add", ())),
                   frozenset(caps.canonical(c) for c in data.get("cap_drop", ())))


@dataclass(frozen=True)
class Rendered:
    """The same limits in the host formats."""

    vserver: dict[str, str]  # path under the conf dir -> file content
    systemd: dict[str, str]  # [Service] key -> value for systemd-nspawn@NAME.service
    nspawn: dict[str, str]  # [Exec] key -> value in NAME.nspawn (capabilities)
    lxc: list[tuple[str, str]]  # LXC keys in order (cap.drop is cleared first, then set)
    unenforced: list[str] = field(default_factory=list)  # limits this host's cgroups cannot carry


def memory_pages(limits: Limits, page_size: int) -> tuple[int, int]:
    """(hard, soft) memory limits in whole pages."""
    hard = limits.memory // page_size
    return hard, math.floor(hard * SOFT_RATIO)


def token_bucket(share: Fraction) -> tuple[int, int]:
    """(fill-rate, interval) in lowest terms with fill-rate/interval = share/100."""
    ratio = Fraction(round(share * 10), SHARE_RESOLUTION)
    return ratio.numerator, ratio.denominator


def cpu_max(share: Fraction) -> tuple[int, int]:
    """cgroup (quota, period) in microseconds."""
    # Shares are whole tenths of a percent and the period is 100 000 us, so
    # the quota is always a whole number of microseconds.
    return int(Fraction(CPU_PERIOD_US) * share / 100), CPU_PERIOD_US


# The layout of a host with only the unified hierarchy (the default of
# current distributions), for rendering without looking at a host.
UNIFIED = Layout.unified(("cpu", "memory", "io", "pids"))


def cgroup_keys(layout: Layout, max_bytes: int, high_bytes: int, quota: int, period: int) -> tuple[list, list]:
    """(LXC cgroup keys, names of limits that cannot be enforced) for this layout."""
    keys: list[tuple[str, str]] = []
    missing = []
    memory, cpu = layout.version_of("memory"), layout.version_of("cpu")
    if memory == V2:
        keys += [("lxc.cgroup2.memory.max", str(max_bytes)), ("lxc.cgroup2.memory.high", str(high_bytes))]
    elif memory == V1:
        keys += [("lxc.cgroup.memory.limit_in_bytes", str(max_bytes)),
                 ("lxc.cgroup.memory.soft_limit_in_bytes", str(high_bytes))]
    else:
        missing.append("memory")
    if cpu == V2:
        keys.append(("lxc.cgroup2.cpu.max", f"{quota} {period}"))
    elif cpu == V1:
        keys += [("lxc.cgroup.cpu.cfs_period_us", str(period)), ("lxc.cgroup.cpu.cfs_quota_us", str(quota))]
    else:
        missing.append("cpu")
    return keys, missing


def render(limits: Limits, page_size: int, layout: Layout = UNIFIED) -> Rendered:
    """Derive all host formats from one Limits value (see the module docstring)."""
    hard, soft = memory_pages(limits, page_size)
    fill_rate, interval = token_bucket(limits.cpu_percent)
    quota, period = cpu_max(limits.cpu_percent)
    max_bytes, high_bytes = hard * page_size, soft * page_size
    percent = f"{float(limits.cpu_percent):g}%"
    dropped = limits.dropped
    vserver = {
        "rlimits/rss.hard": f"{hard}\n",
        "rlimits/rss.soft": f"{soft}\n",
        "rlimits/as": f"{hard * AS_FACTOR}\n",  # soft = hard
        "sched/fill-rate": f"{fill_rate}\n",
        "sched/interval": f"{interval}\n",
        "sched/tokens": f"{TOKENS_MAX}\n",
        "sched/tokens-min": f"{TOKENS_MIN}\n",
        "sched/tokens-max": f"{TOKENS_MAX}\n",
        "bcapabilities": "".join(f"{line}\n" for line in caps.vserver_lines(dropped)),
    }
    if limits.disk is not None:
        vserver["dlimits/0/space_total"] = f"{limits.disk // 1024}\n"
        vserver["dlimits/0/inodes_total"] = f"{inodes_for(limits.disk)}\n"
        vserver["dlimits/0/reserved"] = "0\n"
    systemd = {"MemoryMax": str(max_bytes), "CPUQuota": percent}
    if layout.version_of("memory") != V1:  # MemoryHigh= has no cgroup v1 counterpart
        systemd["MemoryHigh"] = str(high_bytes)
    nspawn = {"DropCapability": " ".join(f"CAP_{c}" for c in caps.ordered(dropped))}
    if limits.cap_add:
        nspawn["Capability"] = " ".join(f"CAP_{c}" for c in caps.ordered(limits.cap_add))
    keys, missing = cgroup_keys(layout, max_bytes, high_bytes, quota, period)
    # An empty lxc.cap.drop clears the list common.conf set, so ours is the whole list.
    keys.append(("lxc.cap.drop", ""))
    if dropped:
        keys.append(("lxc.cap.drop", " ".join(c.lower() for c in caps.ordered(dropped))))
    return Rendered(vserver, systemd, nspawn, keys, missing)


BYTES_PER_INODE = 16384  # mke2fs's default ratio: the image's inode count, and dlimits' inodes_total


def inodes_for(size: int) -> int:
    return max(size // BYTES_PER_INODE, 1024)
