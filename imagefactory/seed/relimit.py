"""Change a seeded guest's limits later (`imagefactory limits NAME ...`).

The guest's conf dir is read back into the same Guest value seeding used,
its Limits are changed, and every config file is rendered again from them
for this host's cgroup layout, so the formats stay in step (and a guest
seeded for another layout is rewritten for this one). A running guest gets
its new memory and CPU limits at once through `lxc-cgroup`; capabilities
and a grown or shrunk disk image take effect at its next start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

from imagefactory.core import atomic
from imagefactory.core.errors import ImageFactoryError
from imagefactory.seed import caps, cgroups, contexts, disk, runtime
from imagefactory.seed.guest import Guest, Interface, check_name
from imagefactory.seed.limits import LimitError, Limits, parse_disk, parse_memory, parse_share, render
from imagefactory.seed.seeder import config_tree, has_init
from imagefactory.seed.vserver_conf import LIMITS, MANIFEST


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def stored_limits(conf: Path, page_size: int) -> Limits:
    """The guest's Limits: its limits.json, or for older guests its rlimits/ and sched/ files."""
    record = conf / LIMITS
    if record.is_file():
        return Limits.from_json(record.read_text())
    rss, fill, interval = (_text(conf / p) for p in ("rlimits/rss.hard", "sched/fill-rate", "sched/interval"))
    if not (rss and rss.isdigit()):
        raise ImageFactoryError(f"{conf}: no {LIMITS} and no rlimits/rss.hard to read the limits from")
    share = Fraction(int(fill), int(interval)) * 100 if fill and interval else Fraction(100)
    return Limits(int(rss) * page_size, share)


def load_guest(confdir: Path, name: str) -> tuple[Guest, int]:
    """The Guest value and context id of a seeded guest, from its conf dir."""
    conf = confdir / check_name(name)
    context = contexts.read_context(conf)
    link = conf / "vdir"
    if context is None or not link.is_symlink():
        raise runtime.GuestStateError(f"no guest {name!r} under {confdir} (seed it first)")
    root = Path(os.path.normpath(conf / os.readlink(link)))
    ip, prefix, dev = (_text(conf / f"interfaces/0/{k}") for k in ("ip", "prefix", "dev"))
    store = conf / "apps/vunify/hash/0"
    guest = Guest(
        name=name,
        hostname=_text(conf / "uts/nodename") or name,
        interface=Interface.parse(f"{ip}/{prefix}", dev or "eth0"),
        limits=stored_limits(conf, os.sysconf("SC_PAGE_SIZE")),
        vdir=root.parent,
        confdir=confdir,
        store=Path(os.readlink(store)) if store.is_symlink() else None,
    )
    return guest, context


def changed(limits: Limits, *, memory: str | None, cpu: str | None, disk_size: str | None,
            cap_add: tuple[str, ...], cap_drop: tuple[str, ...]) -> Limits:
    """limits with the given changes; --cap-add/--cap-drop undo each other for a capability."""
    add = frozenset(caps.canonical(c) for c in cap_add)
    drop = frozenset(caps.canonical(c) for c in cap_drop)
    if add & drop:
        raise LimitError(f"capability both added and dropped: {', '.join(caps.ordered(add & drop))}")
    return replace(
        limits,
        memory=parse_memory(memory) if memory else limits.memory,
        cpu_percent=parse_share(cpu) if cpu else limits.cpu_percent,
        disk=parse_disk(disk_size) if disk_size else limits.disk,
        cap_add=(limits.cap_add - drop) | add,
        cap_drop=(limits.cap_drop - add) | drop,
    )


def apply(confdir: Path, name: str, new: Limits | None = None, *, layout: cgroups.Layout | None = None,
          disk_mode: str = "auto") -> dict:
    """Render every config of guest NAME again from `new` (default: its current limits)."""
    guest, context = load_guest(confdir.absolute(), name)
    old = guest.limits
    new = new or old
    if old.disk is not None and new.disk is None:
        raise ImageFactoryError(f"guest {name} has a disk limit; removing it is not supported")
    layout = layout or cgroups.detect()
    installed = runtime.find(guest.confdir, name)
    running = runtime.state(installed) == "RUNNING"
    guest = replace(guest, limits=new)
    if new.disk is not None and new.disk != old.disk:
        if running and disk.Layer(guest.root).mode == "image":
            raise runtime.GuestStateError(f"guest {name} is running: stop it to change its disk image")
        disk.setup(disk.Layer(guest.root), new.disk, disk_mode, context)
    manifest = (guest.conf / MANIFEST).read_text() if (guest.conf / MANIFEST).is_file() else "{}\n"
    tree, unenforced = config_tree(guest, context, manifest, boot=has_init(guest.root), layout=layout)
    for rel, content in sorted(tree.files.items()):
        path = guest.conf / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, content)
    live = []
    if running and shutil.which("lxc-cgroup"):
        for key, value in render(new, os.sysconf("SC_PAGE_SIZE"), layout).lxc:
            if key.startswith(("lxc.cgroup.", "lxc.cgroup2.")):
                setting = key.split(".", 2)[2]
                result = subprocess.run(["lxc-cgroup", *installed.lxc_args(), setting, value],
                                        capture_output=True, text=True)
                if result.returncode != 0:
                    lines = result.stderr.strip().splitlines()
                    raise runtime.EngineError(f"configs rewritten, but setting {setting} = {value} on the running "
                                              f"guest failed: {lines[-1] if lines else result.returncode}")
                live.append(setting)
    return {"name": name, "limits": new.to_dict(), "cgroup": layout.describe(), "unenforced": unenforced,
            "running": running, "applied_live": live, "disk": disk.Layer(guest.root).mode}
