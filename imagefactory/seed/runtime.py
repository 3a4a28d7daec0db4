"""Run seeded guests with LXC: `start`, `stop`, `exec`, `enter`, and their state.

Like util-vserver's `vserver NAME start|stop|exec|enter`, but driving LXC's
own clients on the config seed wrote (CONF/NAME/lxc/NAME/config): there is no
home-made runtime here, only the steps LXC cannot do itself, in order:

1. mount what the guest's root is made of: its own layer when it has a disk
   limit (seed/disk.py) and, for composefs guests, the composefs mount;
2. hand over to LXC: `lxc-start` when the guest has an init, else
   `lxc-execute -d` keeping `sleep infinity` as the guest's only process
   under LXC's init.lxc (a minbase guest has no init of its own);
3. on stop, `lxc-stop` (SIGPWR to init, killed after the timeout), then
   unmount what step 1 mounted.

`exec` attaches to a running guest (`lxc-attach`); on a stopped guest it runs
the command as a one-shot container (`lxc-execute`) with the same limits.
systemd-nspawn is the engine where systemd is PID 1 (`machinectl start`
with the seeded nspawn files); this module drives LXC, which needs no
service manager.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError
from imagefactory.seed import disk, lxc
from imagefactory.seed.guest import check_name
from imagefactory.seed.limits import Limits
from imagefactory.seed.vserver_conf import LIMITS
from unify.composefs import mount as cfs_mount
from unify.composefs.convert import recover
from unify.composefs.guest import GuestLayers

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KEEPER = ("/bin/sleep", "infinity")  # the guest's own sleep keeps an init-less guest up
SHELLS = (("/bin/bash", "-l"), ("/bin/sh", "-l"))  # util-vserver's `enter` order


class GuestStateError(ImageFactoryError):
    """The guest is not in a state for this command (not seeded, running, stopped)."""


class EngineError(ImageFactoryError):
    """LXC refused or failed to run the guest."""


@dataclass(frozen=True)
class Installed:
    """A seeded guest as its conf dir describes it."""

    name: str
    conf: Path
    root: Path
    limits: Limits | None

    @property
    def lxcpath(self) -> Path:
        return self.conf / "lxc"

    @property
    def layer(self) -> disk.Layer:
        return disk.Layer(self.root)

    def lxc_args(self) -> list[str]:
        return ["-P", str(self.lxcpath), "-n", self.name]


def find(confdir: Path, name: str) -> Installed:
    conf = confdir / check_name(name)
    link = conf / "vdir"
    if not link.is_symlink() or not (conf / lxc.config_path(name)).is_file():
        raise GuestStateError(f"no guest {name!r} under {confdir} (seed it first)")
    record = conf / LIMITS
    limits = Limits.from_json(record.read_text()) if record.is_file() else None
    return Installed(name, conf, conf / os.readlink(link), limits)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise EnvironmentProblem(f"{name} not found: install LXC (Debian package 'lxc')")
    return path


def lxc_state(lxcpath: Path, name: str) -> str | None:
    """LXC's state of a container: RUNNING, STOPPED, STARTING, ... (None without LXC or its config)."""
    if shutil.which("lxc-info") is None or not (lxcpath / name / "config").is_file():
        return None
    result = subprocess.run(["lxc-info", "-P", str(lxcpath), "-n", name, "-sH"], capture_output=True, text=True)
    return result.stdout.strip() or None


def state(guest: Installed) -> str:
    return lxc_state(guest.lxcpath, guest.name) or "unknown"


def init_pid(guest: Installed) -> int | None:
    result = subprocess.run([_tool("lxc-info"), *guest.lxc_args(), "-pH"], capture_output=True, text=True)
    text = result.stdout.strip()
    return int(text) if text.isdigit() else None


def inside(root: Path, path: str, hops: int = 40) -> Path | None:
    """Where path leads in the guest, symlinks resolved as the guest sees them; None if nowhere."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = root
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops -= 1
            if hops < 0:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not os.path.lexists(candidate):
            return None
        current = candidate
    return current


def has_init(root: Path) -> bool:
    target = inside(root, "/sbin/init")
    return target is not None and target.is_file() and os.access(target, os.X_OK)


def prepare(guest: Installed) -> None:
    """Mount what the root is made of before LXC starts the guest.

    composefs guests (seed --unify-mode composefs): their root is the
    composefs overlay, mounted as `imagefactory mount NAME` does (finishing
    an interrupted conversion first); it stays mounted after stop, as its
    mount unit keeps it. With a disk limit, LXC's own overlay then stacks
    the guest's own layer on that mounted root.
    """
    layers = GuestLayers(guest.root)
    if layers.exists():
        record = recover(layers)
        if record is not None:
            cfs_mount.mount(layers, record)
    if guest.limits is not None and guest.limits.disk is not None:
        disk.attach(guest.layer)


def release(guest: Installed) -> None:
    """Undo prepare() (a composefs root stays mounted)."""
    if guest.limits is not None and guest.limits.disk is not None:
        disk.detach(guest.layer)


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        raise EngineError(f"{what}: {lines[-1] if lines else f'{argv[0]} exited {result.returncode}'}")


def start(guest: Installed) -> str:
    """Start the guest; returns how (the LXC command used)."""
    if state(guest) == "RUNNING":
        raise GuestStateError(f"guest {guest.name} is already running")
    prepare(guest)
    try:
        if has_init(guest.root):
            _run([_tool("lxc-start"), *guest.lxc_args(), "-d"], f"starting {guest.name}")
            return "lxc-start"
        if inside(guest.root, KEEPER[0]) is None:
            raise GuestStateError(f"guest {guest.name} has neither /sbin/init nor {KEEPER[0]} to keep it running")
        _run([_tool("lxc-execute"), *guest.lxc_args(), "-d", "--", *KEEPER], f"starting {guest.name}")
        return "lxc-execute"
    except BaseException:
        release(guest)
        raise


def stop(guest: Installed, timeout: int = 10) -> None:
    if state(guest) != "STOPPED":
        _run([_tool("lxc-stop"), *guest.lxc_args(), "-t", str(timeout)], f"stopping {guest.name}")
    release(guest)


def exec_in(guest: Installed, argv: list[str]) -> int:
    """Run argv in the guest (attached if running, a one-shot container if not); its exit code."""
    if not argv:
        raise GuestStateError("exec needs a command: imagefactory exec NAME -- CMD ...")
    env = ["--clear-env", "-v", f"PATH={PATH}", "-v", "HOME=/root"]
    if state(guest) == "RUNNING":
        return subprocess.run([_tool("lxc-attach"), *guest.lxc_args(), *env, "--", *argv]).returncode
    prepare(guest)
    try:
        return subprocess.run([_tool("lxc-execute"), *guest.lxc_args(), "--", *argv]).returncode
    finally:
        release(guest)


def enter_argv(guest: Installed) -> list[str]:
    """The lxc-attach command that opens a login shell in the running guest."""
    if state(guest) != "RUNNING":
        raise GuestStateError(f"guest {guest.name} is not running (imagefactory start {guest.name})")
    shell = next((s for s in SHELLS if inside(guest.root, s[0]) is not None), None)
    if shell is None:
        raise GuestStateError(f"guest {guest.name} has no shell ({', '.join(s[0] for s in SHELLS)})")
    term = os.environ.get("TERM", "dumb")
    return [_tool("lxc-attach"), *guest.lxc_args(), "--clear-env", "-v", f"PATH={PATH}", "-v", "HOME=/root",
            "-v", f"TERM={term}", "--", *shell]
