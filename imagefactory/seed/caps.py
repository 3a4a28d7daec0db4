"""A guest's capability bounding set, in util-vserver, LXC and systemd-nspawn terms.

Linux-VServer bounded every guest's capabilities (`bcapabilities`): a
process inside could never gain one outside the set, even as root. With
`--secure`, util-vserver's start keeps only 13 (lib/getinsecurebcaps.c:
CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, KILL, SETGID, SETUID,
NET_BIND_SERVICE, SYS_CHROOT, SYS_PTRACE, SYS_TTY_CONFIG, LEASE) and each
line of `bcapabilities` adds one back (`~NAME` removes one).

Our default is modelled on it but fits today's guests (systemd, apt and
mount namespaces need SYS_ADMIN, SETPCAP, AUDIT_WRITE, ...): every capability
except those that reach past the guest into the host's kernel, clock,
devices or network: SYS_MODULE, SYS_RAWIO, SYS_TIME, MKNOD, NET_ADMIN, plus
MAC_ADMIN and MAC_OVERRIDE, which LXC's own policy always drops; a guest with
a disk limit also loses SYS_RESOURCE (root would ignore its quota). `--cap-add`
puts one back for a guest, `--cap-drop` takes one more away.
"""

from __future__ import annotations

from imagefactory.core.errors import ImageFactoryError

# Numbers from linux/capability.h (0..40 as of Linux 6.x).
NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
NUMBER = {name: number for number, name in enumerate(NAMES)}
DEFAULT_DROP = frozenset({"SYS_MODULE", "SYS_RAWIO", "SYS_TIME", "MKNOD", "NET_ADMIN", "MAC_ADMIN", "MAC_OVERRIDE"})
DISK_DROP = frozenset({"SYS_RESOURCE"})
# util-vserver's --secure set (kept by every guest) and the names its tools know (bcaps-v13.c: 0..33).
VSERVER_SECURE = frozenset({
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "NET_BIND_SERVICE", "SYS_CHROOT", "SYS_PTRACE", "SYS_TTY_CONFIG", "LEASE",
})
VSERVER_KNOWN = frozenset(NAMES[: NUMBER["MAC_ADMIN"] + 1])


class CapabilityError(ImageFactoryError):
    """A capability name the user gave is unknown."""


def canonical(name: str) -> str:
    """'sys_time', 'CAP_SYS_TIME', 'SYS_TIME' -> 'SYS_TIME'."""
    key = name.strip().upper().removeprefix("CAP_")
    if key not in NUMBER:
        raise CapabilityError(f"unknown capability {name!r} (examples: SYS_TIME, NET_ADMIN, MKNOD)")
    return key


def dropped(add: frozenset[str], drop: frozenset[str], disk_limited: bool = False) -> frozenset[str]:
    """The capabilities outside a guest's bounding set.

    A guest with a disk limit also loses SYS_RESOURCE: with it, root ignores
    quota limits (the kernel's generic quota code exempts it; ext4 uses that
    code) and may fill ext4's reserved blocks.
    """
    return ((DEFAULT_DROP | (DISK_DROP if disk_limited else frozenset())) - add) | drop


def bounding_mask(drop: frozenset[str]) -> int:
    """CapBnd as /proc/PID/status shows it, for a kernel that knows all NAMES."""
    return sum(1 << n for name, n in NUMBER.items() if name not in drop)


def in_mask(mask: int) -> frozenset[str]:
    return frozenset(name for name, n in NUMBER.items() if mask >> n & 1)


def ordered(names: frozenset[str]) -> list[str]:
    return sorted(names, key=NUMBER.__getitem__)


def vserver_lines(drop: frozenset[str]) -> list[str]:
    """bcapabilities lines: what util-vserver adds to its --secure set ('~NAME' takes one away)."""
    keep = VSERVER_KNOWN - drop
    lines = [f"CAP_{n}" for n in ordered(keep - VSERVER_SECURE)]
    lines += [f"~CAP_{n}" for n in ordered(VSERVER_SECURE & drop)]
    return lines


def parse_vserver_lines(text: str) -> frozenset[str]:
    """The dropped capabilities util-vserver knows, read back from a bcapabilities file."""
    keep = set(VSERVER_SECURE)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line[0] in "~!"
        name = canonical(line.lstrip("~!"))
        (keep.discard if negate else keep.add)(name)
    return frozenset(VSERVER_KNOWN - keep)
