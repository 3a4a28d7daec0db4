"""The guest as an LXC container config, usable as `lxc-start -P CONF/lxc -n NAME`."""

from __future__ import annotations

from imagefactory.seed.guest import Guest
from imagefactory.seed.limits import Rendered

COMMON = "/usr/share/lxc/config/common.conf"  # LXC's default capability/device policy


def config_path(name: str) -> str:
    return f"lxc/{name}/config"


def render(guest: Guest, limits: Rendered) -> dict[str, str]:
    """{path under the conf dir: content} for the container's config file."""
    iface = guest.interface
    family = "ipv4" if iface.ip.version == 4 else "ipv6"
    lines = {
        "lxc.include": COMMON,
        "lxc.uts.name": guest.hostname,
        "lxc.rootfs.path": f"dir:{guest.root}",
        "lxc.net.0.type": "macvlan",
        "lxc.net.0.macvlan.mode": "bridge",
        "lxc.net.0.link": iface.dev,
        "lxc.net.0.flags": "up",
        "lxc.net.0.name": "eth0",
        f"lxc.net.0.{family}.address": iface.cidr,
        **limits.lxc,
    }
    text = "# Written by imagefactory seed: the same limits as rlimits/ and sched/.\n"
    text += "".join(f"{key} = {value}\n" for key, value in lines.items())
    return {config_path(guest.name): text}
