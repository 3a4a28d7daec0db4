"""One set of guest limits, rendered for util-vserver, systemd-nspawn and LXC.

Everything here is pure: parse the user's memory/CPU figures once into a
Limits value, then derive every host format from it, so the three formats can
never disagree (tests check that they do not).

Conventions, kept identical in all three formats:
- memory: the hard limit (util-vserver rss.hard, cgroup memory.max) is the
  user's figure rounded down to whole pages; the soft limit (rss.soft,
  memory.high, where reclaim starts) is 90 % of it.
- address space (util-vserver rlimits/as; cgroups have no equivalent) is
  AS_FACTOR times the memory: shared libraries are mapped in every process,
  so address space is always far above resident memory.
- CPU: the share is of one CPU, with 0.1 % resolution. util-vserver's token
  bucket refills fill-rate tokens every interval ticks (one token = one tick
  of one CPU), so fill-rate/interval = share; cgroup cpu.max is quota/period
  with the same ratio; systemd's CPUQuota= is the percentage itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from imagefactory.core.errors import ImageFactoryError, shown

MIB = 1024 * 1024
MEMORY_FLOOR = 64 * MIB  # below this a Debian minbase guest cannot even run apt
SOFT_RATIO = Fraction(9, 10)
AS_FACTOR = 4
# Every rendered figure must fit what its consumer parses: systemd's MemoryMax= and the cgroup files LXC
# writes take at most a signed 64-bit byte count, and util-vserver's rlimits/as is AS_FACTOR times the memory
# (the kernel's rlimit is 64-bit bytes). So memory stops at 2^63 / AS_FACTOR bytes (2 EiB).
MEMORY_CEILING = (1 << 63) // AS_FACTOR
CPU_PERIOD_US = 100_000  # cgroup v2 default period
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
    """A memory or CPU figure the user gave is malformed or out of range."""


def parse_memory(text: str) -> int:
    """'512M', '2G', '536870912' -> bytes (K/M/G/T are binary, as in util-vserver docs)."""
    match = _SIZE.match(text) if len(text) <= 64 else None
    if not match:
        raise LimitError(f"memory {shown(text)} is not a size (examples: 512M, 2G, 1073741824)")
    number, unit = match.groups()
    value = int(Fraction(number) * _UNITS[unit.upper()])
    if value < MEMORY_FLOOR:
        raise LimitError(f"memory {text!r} is below the floor of {MEMORY_FLOOR // MIB}M")
    if value > MEMORY_CEILING:
        raise LimitError(f"memory {text!r} is above the ceiling of {MEMORY_CEILING >> 60} EiB "
                         "(systemd, LXC and the kernel take 64-bit byte counts)")
    return value


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
    """A guest's limits as the user meant them: bytes of memory, percent of one CPU."""

    memory: int
    cpu_percent: Fraction

    @classmethod
    def parse(cls, memory: str, cpu: str) -> Limits:
        return cls(parse_memory(memory), parse_share(cpu))


@dataclass(frozen=True)
class Rendered:
    """The same limits in the three host formats."""

    vserver: dict[str, str]  # path under the conf dir -> file content
    systemd: dict[str, str]  # [Service] key -> value for systemd-nspawn@NAME.service
    lxc: dict[str, str]  # lxc.cgroup2.* key -> value


def memory_pages(limits: Limits, page_size: int) -> tuple[int, int]:
    """(hard, soft) memory limits in whole pages."""
    hard = limits.memory // page_size
    return hard, math.floor(hard * SOFT_RATIO)


def token_bucket(share: Fraction) -> tuple[int, int]:
    """(fill-rate, interval) in lowest terms with fill-rate/interval = share/100."""
    ratio = Fraction(round(share * 10), SHARE_RESOLUTION)
    return ratio.numerator, ratio.denominator


def cpu_max(share: Fraction) -> tuple[int, int]:
    """cgroup v2 cpu.max (quota, period) in microseconds."""
    # Shares are whole tenths of a percent and the period is 100 000 us, so
    # the quota is always a whole number of microseconds.
    return int(Fraction(CPU_PERIOD_US) * share / 100), CPU_PERIOD_US


def render(limits: Limits, page_size: int) -> Rendered:
    """Derive all host formats from one Limits value (see the module docstring)."""
    hard, soft = memory_pages(limits, page_size)
    fill_rate, interval = token_bucket(limits.cpu_percent)
    quota, period = cpu_max(limits.cpu_percent)
    max_bytes, high_bytes = hard * page_size, soft * page_size
    percent = f"{float(limits.cpu_percent):g}%"
    vserver = {
        "rlimits/rss.hard": f"{hard}\n",
        "rlimits/rss.soft": f"{soft}\n",
        "rlimits/as": f"{hard * AS_FACTOR}\n",  # soft = hard
        "sched/fill-rate": f"{fill_rate}\n",
        "sched/interval": f"{interval}\n",
        "sched/tokens": f"{TOKENS_MAX}\n",
        "sched/tokens-min": f"{TOKENS_MIN}\n",
        "sched/tokens-max": f"{TOKENS_MAX}\n",
    }
    systemd = {"MemoryHigh": str(high_bytes), "MemoryMax": str(max_bytes), "CPUQuota": percent}
    lxc = {
        "lxc.cgroup2.memory.high": str(high_bytes),
        "lxc.cgroup2.memory.max": str(max_bytes),
        "lxc.cgroup2.cpu.max": f"{quota} {period}",
    }
    return Rendered(vserver, systemd, lxc)
