"""Foreign-architecture guests: their binaries run under qemu-user-static through binfmt_misc.

The guest's own dpkg/rpm and maintainer scripts run in the chroot as usual; the kernel hands
every foreign ELF binary to qemu. The handler must be registered with the F (fix binary) flag,
so the kernel opens the interpreter at registration time and it works inside any chroot without
copying qemu into the guest (the image stays clean). qemu-user-static's binfmt.d files carry F.
If binfmt_misc is not mounted, it is mounted; if the handler is missing or disabled, it is
registered or enabled from /usr/lib/binfmt.d; anything else is a host problem (exit 6).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from imagefactory.core.errors import EnvironmentProblem

BINFMT = Path("/proc/sys/fs/binfmt_misc")
CONF_DIRS = (Path("/usr/lib/binfmt.d"), Path("/etc/binfmt.d"))
# dpkg / rpm architecture -> qemu's name
QEMU = {
    "arm64": "aarch64", "aarch64": "aarch64", "armhf": "arm", "armel": "arm", "armv7hl": "arm",
    "ppc64el": "ppc64le", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
    "mips64el": "mips64el", "loong64": "loongarch64", "i386": "i386", "i686": "i386", "amd64": "x86_64",
    "x86_64": "x86_64",
}
# what a host machine runs without emulation
NATIVE = {"x86_64": {"x86_64", "i386"}, "aarch64": {"aarch64", "arm"}}


def qemu_name(arch: str) -> str:
    try:
        return QEMU[arch]
    except KeyError:
        raise EnvironmentProblem(f"no known qemu emulator for architecture {arch!r} "
                                 f"(known: {', '.join(sorted(QEMU))})") from None


def is_native(arch: str, machine: str | None = None) -> bool:
    machine = machine or platform.machine()
    return qemu_name(arch) in NATIVE.get(machine, {machine})


def _conf(name: str, conf_dirs: tuple[Path, ...]) -> str:
    for d in conf_dirs:
        f = d / f"qemu-{name}.conf"
        if f.is_file():
            return f.read_text().strip()
    raise EnvironmentProblem(
        f"building for {name} needs qemu-user-static (no qemu-{name}.conf in "
        f"{' or '.join(map(str, conf_dirs))}): apt-get install qemu-user-static"
    )


def ensure(arch: str, binfmt: Path = BINFMT, conf_dirs: tuple[Path, ...] = CONF_DIRS,
           machine: str | None = None) -> str | None:
    """Make sure the host can run `arch` binaries; returns the handler used (None when native)."""
    if is_native(arch, machine):
        return None
    name = qemu_name(arch)
    line = _conf(name, conf_dirs)  # ':qemu-aarch64:M::magic:mask:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OCF'
    fields = line.split(":")
    interpreter = fields[6] if len(fields) > 7 else ""
    if not interpreter or not os.path.exists(interpreter):
        raise EnvironmentProblem(f"the qemu interpreter {interpreter or '?'} for {arch} is missing: "
                                 "apt-get install qemu-user-static")
    if not (binfmt / "status").exists():
        proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], capture_output=True,
                              text=True)
        if proc.returncode != 0 or not (binfmt / "status").exists():
            why = proc.stderr.strip() or "mount failed"
            raise EnvironmentProblem(f"binfmt_misc is not available at {binfmt} ({why}"
                                     f"); building for {arch} needs it (modprobe binfmt_misc, run as root)")
    handler = binfmt / f"qemu-{name}"
    try:
        if not handler.exists():
            (binfmt / "register").write_text(line + "\n")
        state = handler.read_text()
        if "enabled" not in state.splitlines()[0]:
            handler.write_text("1\n")
            state = handler.read_text()
        if (binfmt / "status").read_text().strip() != "enabled":
            raise EnvironmentProblem(f"binfmt_misc is disabled ({binfmt}/status); echo 1 > {binfmt}/status")
    except OSError as exc:
        raise EnvironmentProblem(f"cannot register the {arch} handler in {binfmt}: {exc.strerror}") from None
    flags = next((ln.split(":", 1)[1].strip() for ln in state.splitlines() if ln.startswith("flags:")), "")
    if "F" not in flags:
        raise EnvironmentProblem(f"{handler} is registered without the F flag, so it does not work in a chroot; "
                                 f"remove it (echo -1 > {handler}) and let imagefactory register qemu-user-static's")
    return str(handler)
