"""The guest as a systemd-nspawn machine: a .nspawn file plus a unit drop-in.

.nspawn files cannot carry cgroup limits, so memory and CPU go into a drop-in
for systemd-nspawn@NAME.service (the unit `machinectl start NAME` runs).
"""

from __future__ import annotations

from imagefactory.seed.guest import Guest
from imagefactory.seed.limits import Rendered

DROPIN = "50-imagefactory-limits.conf"


def settings_path(name: str) -> str:
    return f"nspawn/{name}.nspawn"


def dropin_path(name: str) -> str:
    return f"nspawn/systemd-nspawn@{name}.service.d/{DROPIN}"


def render(guest: Guest, limits: Rendered, *, boot: bool) -> dict[str, str]:
    """{path under the conf dir: content} for the .nspawn file and the drop-in."""
    settings = (
        "# Written by imagefactory seed. Install: ln -s this file /etc/systemd/nspawn/\n"
        "[Exec]\n"
        f"Boot={'yes' if boot else 'no'}\n"
        f"Hostname={guest.hostname}\n"
        "PrivateUsers=pick\n"
        "# the bounding set, as bcapabilities and lxc.cap.drop state it (honoured in /etc/systemd/nspawn/)\n"
        + "".join(f"{key}={value}\n" for key, value in limits.nspawn.items()) +
        "\n"
        "[Files]\n"
        "# map ids with an idmapped mount, never chown: unified files are shared with other guests\n"
        "PrivateUsersOwnership=map\n"
        "\n"
        "[Network]\n"
        f"# the guest configures {guest.interface.cidr} itself on this macvlan"
        f"{' (needs --cap-add NET_ADMIN)' if 'CAP_NET_ADMIN' in limits.nspawn['DropCapability'].split() else ''}\n"
        f"MACVLAN={guest.interface.dev}\n"
    )
    dropin = (
        "# Written by imagefactory seed: the same limits as rlimits/ and sched/.\n"
        "[Service]\n" + "".join(f"{key}={value}\n" for key, value in limits.systemd.items())
    )
    return {settings_path(guest.name): settings, dropin_path(guest.name): dropin}
