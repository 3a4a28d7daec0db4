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

A container's state comes from the kernel's table of unix sockets first
(/proc/net/unix, read once for any number of guests): LXC's monitor listens on
an abstract "command socket" named after the container's lxcpath and name for
as long as the container is not STOPPED, so a container without that listener
is STOPPED, as `lxc-info` itself concludes when its connect is refused. Only
the monitors that listen are asked, over that socket, with the one request
`lxc-info -sH` sends (LXC_CMD_GET_STATE), since only the monitor knows whether
it is RUNNING, FROZEN, STARTING or STOPPING; `lxc-info` is run only for a
monitor that does not answer as LXC 3.0 to 6.x do.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
UNIX_SOCKETS = Path("/proc/net/unix")  # this network namespace's unix sockets, as LXC's clients see them
SUN_PATH = 108  # sizeof(struct sockaddr_un.sun_path) on Linux
ACCEPTCON = 0x10000  # __SO_ACCEPTCON in the Flags column: a listening socket
SOCK_STREAM = 1  # the Type column of LXC's command socket
FNV64_OFFSET, FNV64_PRIME = 0xCBF29CE484222325, 0x100000001B3  # LXC's fnv_64a_buf (FNV-1a, 64 bit)
# LXC's command protocol (src/lxc/commands.[ch], unchanged from 3.0 to 6.x for this request): the client
# sends struct lxc_cmd_req {int cmd; int datalen; const void *data;} with its SCM_CREDENTIALS, the monitor
# answers struct lxc_cmd_rsp {int ret; int datalen; void *data;} with the state in data, and closes.
LXC_CMD = struct.Struct("iiP")
LXC_CMD_GET_STATE = 3
LXC_STATES = ("STOPPED", "STARTING", "RUNNING", "STOPPING", "ABORTING", "FREEZING", "FROZEN", "THAWED")  # state.c
MONITOR_TIMEOUT = 2.0  # seconds; a monitor answers in microseconds
# monitors (or lxc-info processes) asked at once; measured when lxc-info was asked for all 1,000 guests, on
# the 2 shared cores: 8 took 1.9-2.4 s, one at a time 2.9-3.7 s, 16 slower
LXC_INFO_AT_ONCE = 8


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


def fnv1a_64(data: bytes) -> int:
    value = FNV64_OFFSET
    for byte in data:
        value = ((value ^ byte) * FNV64_PRIME) & 0xFFFFFFFFFFFFFFFF
    return value


def command_socket(lxcpath: str, name: str) -> bytes:
    """The abstract address (without its leading NUL) LXC's monitor listens on for a container.

    LXC's rule (lxc_make_abstract_socket_name in src/lxc/commands_utils.c, the same in 4.0, 5.0 and
    6.x): "LXCPATH/NAME/command" when it fits sun_path less a leading and a trailing NUL (105 bytes),
    else "lxc/HASH/command" with HASH the 64-bit FNV-1a of "LXCPATH/NAME" in 16 hex digits. LXCPATH is
    the string the container was started with (`-P`), never resolved; LXC drops trailing slashes
    and newlines (remove_trailing_slashes).
    """
    lxcpath = lxcpath.rstrip("/\n")
    plain = os.fsencode(f"{lxcpath}/{name}/command")
    if len(plain) < SUN_PATH - 2:
        return plain
    return b"lxc/%016x/command" % fnv1a_64(os.fsencode(f"{lxcpath}/{name}"))


def listening_sockets(table: bytes) -> frozenset[bytes]:
    """Abstract names (without the '@' the kernel shows for the leading NUL) of the listening
    stream sockets in a /proc/net/unix table."""
    names = set()
    for line in table.split(b"\n")[1:]:
        # Num RefCount Protocol Flags Type St Inode Path: the path is the rest of the line, as is.
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7].startswith(b"@") and int(fields[3], 16) & ACCEPTCON \
                and int(fields[4], 16) == SOCK_STREAM:
            names.add(fields[7][1:])
    return frozenset(names)


def ask_monitor(address: bytes, timeout: float = MONITOR_TIMEOUT) -> str | None:
    """The state LXC's monitor listening on address (as command_socket) gives for LXC_CMD_GET_STATE,
    the request behind `lxc-info -s`: STOPPED when nothing listens (as lxc-info concludes), None
    when the monitor does not answer as LXC does (refused credentials, another protocol, timeout)."""
    credentials = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(b"\0" + address)
            sock.sendmsg([LXC_CMD.pack(LXC_CMD_GET_STATE, 0, 0)],
                          [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, credentials)])
            answer = sock.recv(LXC_CMD.size, socket.MSG_WAITALL)
    except ConnectionRefusedError:
        return "STOPPED"
    except OSError:
        return None
    if len(answer) != LXC_CMD.size:
        return None
    ret, datalen, state_ = LXC_CMD.unpack(answer)
    return LXC_STATES[state_] if ret == 0 and datalen == 0 and state_ < len(LXC_STATES) else None


def _lxc_info_state(lxcpath: Path, name: str) -> str | None:
    result = subprocess.run(["lxc-info", "-P", str(lxcpath), "-n", name, "-sH"], capture_output=True, text=True)
    return result.stdout.strip() or None


def lxc_states(containers: Sequence[tuple[Path, str]]) -> list[str | None]:
    """LXC's state of each (lxcpath, name): RUNNING, STOPPED, FROZEN, STARTING, ... (None without
    LXC or the container's config), as `lxc-info -sH` says it.

    One read of /proc/net/unix decides every container without a listening command socket:
    STOPPED, which is what lxc-info concludes when its connect is refused (the table is this
    network namespace's, the one lxc-info would connect in). The socket only says LXC's
    monitor is up, which it is from STARTING to STOPPING and while FROZEN (lxc-freeze), and a
    frozen guest is not RUNNING for `exec` and `enter`; so a listener alone is not reported as
    RUNNING: its monitor is asked (ask_monitor), and `lxc-info -sH` only when that gets no
    answer LXC would give; LXC_INFO_AT_ONCE at a time. Without /proc/net/unix every monitor is
    asked. Measured with bench/guests.sh (1,000 guests, load 3-5 on the 2 shared cores): the
    table and the names ~30 ms; with all 1,000 running, `guests --json` takes 1.0-1.9 s (0.6-1.0 s
    CPU) asking the monitors 8 at a time (one after the other: 1.1-1.6 s), 4.4-6.8 s at the same
    load with an lxc-info for each.
    """
    if shutil.which("lxc-info") is None:
        return [None] * len(containers)
    try:
        listening: frozenset[bytes] | None = listening_sockets(UNIX_SOCKETS.read_bytes())
    except OSError:
        listening = None
    states: list[str | None] = [None] * len(containers)
    ask: dict[int, bytes] = {}
    for i, (lxcpath, name) in enumerate(containers):
        if not (lxcpath / name / "config").is_file():
            continue
        address = command_socket(str(lxcpath), name)
        if listening is not None and address not in listening:
            states[i] = "STOPPED"
        else:
            ask[i] = address

    def asked(i: int) -> str | None:
        return ask_monitor(ask[i]) or _lxc_info_state(*containers[i])

    if len(ask) < 2:
        for i in ask:
            states[i] = asked(i)
        return states
    with ThreadPoolExecutor(max_workers=LXC_INFO_AT_ONCE) as pool:
        for i, state_ in zip(ask, pool.map(asked, ask), strict=True):
            states[i] = state_
    return states


def lxc_state(lxcpath: Path, name: str) -> str | None:
    """LXC's state of one container (see lxc_states)."""
    return lxc_states([(lxcpath, name)])[0]


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
