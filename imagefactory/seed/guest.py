"""What a seeded guest is, validated up front so nothing is written for bad input."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from imagefactory.core.errors import ImageFactoryError
from imagefactory.core.hostname import check_hostname as core_check_hostname
from imagefactory.seed.limits import Limits

# A guest name becomes a directory name in vdir and confdir, a systemd
# instance name and an LXC container name: keep it to what all accept.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Linux interface names: at most 15 bytes (IFNAMSIZ-1), no '/', ':' or spaces;
# dots allowed for VLANs (eth0.42).
_DEV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


class GuestError(ImageFactoryError):
    """A guest argument (name, address, device, hostname) is invalid."""


@dataclass(frozen=True)
class Interface:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    prefix: int
    dev: str

    @classmethod
    def parse(cls, address: str, dev: str) -> Interface:
        """'10.0.0.11/24' + 'eth0' -> Interface; the prefix is required."""
        if "/" not in address:
            raise GuestError(f"IP {address!r} needs a prefix length (example: 10.0.0.11/24)")
        try:
            iface = ipaddress.ip_interface(address)
        except ValueError as exc:
            raise GuestError(f"invalid IP/prefix {address!r}: {exc}") from None
        if iface.ip.is_unspecified or iface.ip.is_multicast or iface.ip.is_loopback:
            raise GuestError(f"IP {address!r} cannot be a guest address")
        if iface.version == 4 and iface.network.prefixlen < 31 and iface.ip in (
            iface.network.network_address,
            iface.network.broadcast_address,
        ):
            raise GuestError(f"IP {address!r} is the network or broadcast address of its prefix")
        if not _DEV.fullmatch(dev) or dev in (".", ".."):
            raise GuestError(
                f"device name {dev!r} is not a Linux interface name "
                "(1-15 of A-Z a-z 0-9 _ . -, not starting with . or -)"
            )
        return cls(iface.ip, iface.network.prefixlen, dev)

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefix}"


@dataclass(frozen=True)
class Guest:
    """Everything seeding needs to know about one guest (context is allocated later)."""

    name: str
    hostname: str
    interface: Interface
    limits: Limits
    vdir: Path  # parent of guest roots, e.g. /vservers
    confdir: Path  # util-vserver config base, e.g. /etc/vservers
    store: Path | None = None  # unification store, if any

    @property
    def root(self) -> Path:
        return self.vdir / self.name

    @property
    def conf(self) -> Path:
        return self.confdir / self.name


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise GuestError(
            f"guest name {name!r} must be 1-64 of A-Z a-z 0-9 _ . - and start with a letter or digit"
        )
    return name


def check_vdir(vdir: Path) -> Path:
    """The guest-root parent must be a real directory: it carries the barrier, and a symlink there
    could be re-pointed under the seeder. Refused before anything is written."""
    if vdir.is_symlink():
        raise GuestError(f"--vdir {vdir} is a symbolic link (to {os.readlink(vdir)}); refusing it: "
                         "pass the real directory")
    if vdir.exists() and not vdir.is_dir():
        raise GuestError(f"--vdir {vdir} exists and is not a directory")
    return vdir


def check_hostname(hostname: str) -> str:
    """RFC 1123 host name (the validator `build` uses too)."""
    return core_check_hostname(hostname, GuestError)
