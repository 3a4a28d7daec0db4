"""Boot the patched kernel under qemu and check the IXUNLINK rules inside it.

The kernel under test is the one from the recipe's linux-image .deb (what we
ship), not a side build. The VM gets a tiny initramfs (the static test
program as /init, plus /dev/console) and a fresh ext4 disk made on the host;
the program prints one line per rule on the serial console, and the host
parses them, then reads the flags the VM left on disk with debugfs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imagefactory.core.atomic import staged_path
from imagefactory.core.errors import EnvironmentProblem, FetchError
from imagefactory.core.progress import Progress

HERE = Path(__file__).resolve().parent
DEFAULT_RECIPE = HERE / "recipes" / "host-6.1.toml"
TEST_SOURCE = HERE / "qemu" / "ixunlink-test.c"
FS_IMMUTABLE_FL, FS_IXUNLINK_FL = 0x10, 0x08000000

# Every rule the VM must report; a missing line is a failure, not a skip.
EXPECTED_RULES = (
    "mount_ext4", "set_immutable_ixunlink", "flags_read_back", "write_denied", "append_denied",
    "truncate_denied", "chmod_denied", "chown_denied", "utimes_denied", "link_allowed", "link_count",
    "write_via_link_denied", "rename_over_allowed", "link_again", "rename_allowed", "unlink_allowed",
    "store_unchanged_after_name_changes", "unify_link_protocol", "link_for_update_demo",
    "set_immutable_only", "immutable_only_unlink_denied", "immutable_only_link_denied",
    "immutable_only_rename_over_denied", "set_dir_flags", "dir_rmdir_denied", "dir_rename_denied", "drop_capability",
    "clear_flags_denied_without_cap",
    "clear_ixunlink_denied_without_cap", "set_ixunlink_denied_without_cap", "flags_unchanged_without_cap",
    "write_denied_without_cap", "guest_update_rename_over_without_cap", "guest_update_content",
    "unlink_allowed_without_cap", "unprivileged_child", "store_unchanged_after_guest_update",
    "clear_flags_with_cap", "write_after_clear", "set_flags_for_persist",
)

DEMO_STEPS = (
    "probe_detects_ixunlink", "unify_vserver", "same_inode", "flags_immutable_ixunlink", "write_denied",
    "chmod_denied", "guest_update_rename_over", "guest_sees_update", "other_guest_unchanged",
    "guest_unlink_unified", "store_verifies",
)
DEMO_SCRIPT = HERE / "qemu" / "unify-demo.sh"


@dataclass
class Rule:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    rules: list[Rule] = field(default_factory=list)
    summary_seen: bool = False
    kernel: str = ""
    console_log: str = ""

    @property
    def passed(self) -> int:
        return sum(r.ok for r in self.rules)

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.rules)

    @property
    def ok(self) -> bool:
        return self.summary_seen and self.failed == 0 and self.passed > 0

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "failed": self.failed, "ok": self.ok}


def parse_console(text: str, expected: tuple[str, ...] = EXPECTED_RULES, line_tag: str = "IXUNLINK-TEST",
                  summary_tag: str = "IXUNLINK-SUMMARY") -> Report:
    """Rules from the serial console; an expected rule that never printed counts as failed."""
    line_re = re.compile(re.escape(line_tag) + r" (\S+) (PASS|FAIL) ?(.*)$")
    summary_re = re.compile(re.escape(summary_tag) + r" passed=(\d+) failed=(\d+)")
    report = Report()
    seen = set()
    for raw in text.splitlines():
        line = raw.replace("\r", "")
        if m := line_re.search(line):
            report.rules.append(Rule(m.group(1), m.group(2) == "PASS", m.group(3).strip()))
            seen.add(m.group(1))
        elif summary_re.search(line):
            report.summary_seen = True
    for name in expected:
        if name not in seen:
            report.rules.append(Rule(name, False, "no result line (VM stopped early?)"))
    return report


def parse_debugfs_flags(text: str) -> int | None:
    """The 'Flags: 0x...' value from `debugfs -R 'stat PATH'`."""
    m = re.search(r"Flags:\s*(0x[0-9a-fA-F]+)", text)
    return int(m.group(1), 16) if m else None


def newc_archive(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """An initramfs (cpio newc) from (name, mode, data, (rdev major, minor)) entries, owned by root."""
    out = bytearray()
    for ino, (name, mode, data, (rmaj, rmin)) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))], 1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(encoded), 0]
        out += b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out + b"\0" * (-len(out) % 512))


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise EnvironmentProblem(f"the IXUNLINK qemu test needs {', '.join(missing)} (scripts/setup installs them)")


def _kernel_image(packages: list[Path], into: Path) -> tuple[Path, str]:
    """Extract vmlinuz from the linux-image .deb the build produced."""
    debs = [p for p in packages if p.name.startswith("linux-image-") and "-dbg" not in p.name and p.suffix == ".deb"]
    if not debs:
        raise EnvironmentProblem("the kernel recipe produced no linux-image .deb to boot")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(into)], check=True)
    images = sorted((into / "boot").glob("vmlinuz-*"))
    if not images:
        raise EnvironmentProblem(f"{debs[0].name} holds no /boot/vmlinuz-*")
    return images[0], images[0].name.removeprefix("vmlinuz-")


def boot(vmlinuz: Path, initramfs: Path | None, disk: Path, console: Path, timeout: int,
         append: str = "", memory: str = "256") -> None:
    """Run the VM until its init reboots it (qemu -no-reboot then exits)."""
    # TCG by default: nested KVM on a cloud VM can hang silently; opt in with IMAGEFACTORY_QEMU_KVM=1.
    accel = "kvm" if os.environ.get("IMAGEFACTORY_QEMU_KVM") == "1" else "tcg"
    argv = ["qemu-system-x86_64", "-accel", accel, "-m", memory, "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", f"file:{console}", "-kernel", str(vmlinuz),
            *(["-initrd", str(initramfs)] if initramfs else []),
            "-drive", f"file={disk},format=raw,if=virtio",
            "-append", f"console=ttyS0 panic=-1 loglevel=4 {append}".strip()]
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        pass  # the console log shows how far it got; parse_console marks the rest failed


def _prepare_kernel(recipe_path: Path, cache_root: Path, run_name: str, progress: Progress) -> tuple[Path, str]:
    """Build (or reuse) the recipe's packages; return the run directory and kernel release."""
    from kernel.build import build, resolve_inputs
    from kernel.recipe import load_recipe

    inputs = resolve_inputs(load_recipe(recipe_path), cache_root)
    run_dir = cache_root / inputs.key / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    result = build(inputs, run_dir / "packages", cache_root, progress=progress)
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        vmlinuz, release = _kernel_image(result.packages, Path(tmp))
        shutil.copyfile(vmlinuz, run_dir / "vmlinuz")
    return run_dir, release


def run_ixunlink_test(recipe_path: Path, cache_root: Path, timeout: int, progress: Progress) -> Report:
    _need("qemu-system-x86_64", "gcc", "mkfs.ext4", "debugfs", "dpkg-deb")
    run_dir, release = _prepare_kernel(recipe_path, cache_root, "qemu-test", progress)
    progress.stage("qemu test: compile the static test program")
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(run_dir / "init"), str(TEST_SOURCE)], check=True)
    (run_dir / "initramfs.cpio").write_bytes(newc_archive([
        ("dev", 0o040755, b"", (0, 0)),
        ("dev/console", 0o020600, b"", (5, 1)),
        ("mnt", 0o040755, b"", (0, 0)),
        ("init", 0o100755, (run_dir / "init").read_bytes(), (0, 0)),
    ]))
    disk = run_dir / "disk.img"
    disk.unlink(missing_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk), "64M"], check=True)
    console = run_dir / "console.log"
    console.unlink(missing_ok=True)
    progress.stage(f"qemu test: booting {release} (console: {console})")
    boot(run_dir / "vmlinuz", run_dir / "initramfs.cpio", disk, console, timeout)
    text = console.read_text(errors="replace") if console.exists() else ""
    report = parse_console(text)
    report.kernel, report.console_log = release, str(console)
    stat = subprocess.run(["debugfs", "-R", "stat /persist", str(disk)], capture_output=True, text=True)
    flags = parse_debugfs_flags(stat.stdout)
    want = FS_IMMUTABLE_FL | FS_IXUNLINK_FL
    report.rules.append(Rule("on_disk_flags", flags is not None and flags & want == want,
                             f"debugfs: /persist flags={flags:#x}" if flags is not None else "debugfs: no /persist"))
    return report


def _demo_rootfs(cache_root: Path, suite: str, mirror: str, progress: Progress) -> Path:
    """A Debian minbase + python3 (+ click, xxhash) root tarball, made once with mmdebstrap."""
    tarball = cache_root / f"demo-rootfs-{suite}.tar"
    if not tarball.is_file():
        progress.stage(f"unify demo: mmdebstrap {suite} minbase + python3")
        with staged_path(tarball) as stage:
            proc = subprocess.run(
                ["mmdebstrap", "--variant=minbase", "--include=python3,python3-click,python3-xxhash",
                 "--format=tar", suite, str(stage), mirror], capture_output=True, text=True)
            if proc.returncode != 0:
                raise FetchError(f"mmdebstrap failed for the demo root: {proc.stderr.strip().splitlines()[-1:]}")
    return tarball


def run_unify_demo(recipe_path: Path, cache_root: Path, timeout: int, progress: Progress,
                   suite: str = "bookworm", mirror: str | None = None) -> Report:
    """Boot the IXUNLINK kernel on a Debian root and run the real `unify --mode vserver` inside."""
    from imagefactory.build.sources import host_debian_mirror

    _need("qemu-system-x86_64", "mkfs.ext4", "dpkg-deb", "mmdebstrap", "tar")
    if os.geteuid() != 0:
        raise EnvironmentProblem("the unify demo needs root (the guest root keeps its owners in the disk image)")
    run_dir, release = _prepare_kernel(recipe_path, cache_root, "unify-demo", progress)
    tarball = _demo_rootfs(cache_root, suite, mirror or host_debian_mirror(), progress)
    disk = run_dir / "root.img"
    disk.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        root = Path(tmp)
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
        project = HERE.parent
        for package in ("imagefactory", "unify", "kernel"):
            shutil.copytree(project / package, root / "opt/imagefactory" / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(DEMO_SCRIPT, root / "unify-demo.sh")
        (root / "unify-demo.sh").chmod(0o755)
        progress.stage("unify demo: mkfs.ext4 -d (guest root disk)")
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(disk), "1G"], check=True)
    console = run_dir / "console.log"
    console.unlink(missing_ok=True)
    progress.stage(f"unify demo: booting {release} with the Debian root (console: {console})")
    boot(run_dir / "vmlinuz", None, disk, console, timeout,
         append="root=/dev/vda rw rootfstype=ext4 init=/unify-demo.sh", memory="512")
    text = console.read_text(errors="replace") if console.exists() else ""
    report = parse_console(text, DEMO_STEPS, "UNIFY-DEMO", "UNIFY-DEMO-SUMMARY")
    report.kernel, report.console_log = release, str(console)
    return report
