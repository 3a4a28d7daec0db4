"""The guest as an LXC container config, usable as `lxc-start -P CONF/lxc -n NAME`."""

from __future__ import annotations

from imagefactory.seed.disk import Layer
from imagefactory.seed.guest import Guest
from imagefactory.seed.limits import Rendered

COMMON = "/usr/share/lxc/config/common.conf"  # LXC's default capability/device policy


def config_path(name: str) -> str:
    return f"lxc/{name}/config"


def rootfs(guest: Guest) -> str:
    """The root LXC mounts: the seeded tree, or with a disk limit an overlay of
    the seeded tree (lower, shared) and the guest's own layer (upper; LXC puts
    its workdir `olwork` beside it)."""
    if guest.limits.disk is None:
        return f"dir:{guest.root}"
    return f"overlay:{guest.root}:{Layer(guest.root).upper}"


def render(guest: Guest, limits: Rendered) -> dict[str, str]:
    """{path under the conf dir: content} for the container's config file."""
    iface = guest.interface
    family = "ipv4" if iface.ip.version == 4 else "ipv6"
    lines = [
        ("lxc.include", COMMON),
        ("lxc.uts.name", guest.hostname),
        ("lxc.rootfs.path", rootfs(guest)),
        ("lxc.net.0.type", "macvlan"),
        ("lxc.net.0.macvlan.mode", "bridge"),
        ("lxc.net.0.link", iface.dev),
        ("lxc.net.0.flags", "up"),
        ("lxc.net.0.name", "eth0"),
        (f"lxc.net.0.{family}.address", iface.cidr),
        *limits.lxc,
    ]
    text = "# Written by imagefactory seed: the same limits as rlimits/, sched/, bcapabilities, dlimits/.\n"
    text += "".join(f"{key} = {value}\n".replace(" = \n", " =\n") for key, value in lines)
    return {config_path(guest.name): text}
