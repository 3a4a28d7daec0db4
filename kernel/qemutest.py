"""Boot the patched kernel under qemu and check the IXUNLINK rules, and composefs, inside it.

The kernel under test is the one from the recipe's linux-image .deb (what we
ship), not a side build. The VM gets a tiny initramfs (the static test
program as /init, plus /dev/console) and a fresh ext4 disk made on the host;
the program prints one line per rule on the serial console, and the host
parses them, then reads the flags the VM left on disk with debugfs.

The composefs test boots twice on one store disk: the first boot enables
fs-verity on every object and reads the guest through a verity=require
mount; between the boots the host flips one byte of one object on the disk
image; the second boot must fail that file with EIO and read all others.
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
from unify.composefs.verity import digest_fd

HERE = Path(__file__).resolve().parent
DEFAULT_RECIPE = HERE / "recipes" / "host-6.1.toml"
COMPOSEFS_RECIPE = HERE / "recipes" / "host-6.12.toml"  # the first with fs-verity, EROFS and data-only overlay
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
# Only on a kernel with the guest-host fragment (fs-verity): kernel probe sees what composefs needs.
DEMO_COMPOSEFS_STEP = "probe_detects_composefs"

COMPOSEFS_SOURCE = HERE / "qemu" / "composefs-test.c"
COMPOSEFS_BOOT1 = (
    "mount_store", "mount_before_verity", "read_refused_without_verity", "enable_verity_all_objects",
    "measured_digest_is_object_name", "image_digest", "mount_verity_require", "read_every_file",
    "guest_write_denied", "verity_object_write_denied",
)
COMPOSEFS_BOOT2 = (
    "mount_store", "tampered_object_read_fails", "mount_verity_require", "tampered_file_read_fails",
    "other_files_still_read", "walk_saw_tampered_file",
)
EXT4_VERITY_FL = 0x00100000
_SIMPLE_PATH = re.compile(r"^[A-Za-z0-9._+/-]+$")


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


def prepare_kernel(recipe_path: Path, cache_root: Path, run_name: str, progress: Progress) -> tuple[Path, str]:
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


def static_init_initramfs(run_dir: Path, source: Path, progress: Progress) -> Path:
    """Compile the static test program and pack it as /init (with /dev/console) into run_dir/initramfs.cpio."""
    progress.stage(f"qemu test: compile {source.name} (static)")
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(run_dir / "init"), str(source)], check=True)
    initramfs = run_dir / "initramfs.cpio"
    initramfs.write_bytes(newc_archive([
        ("dev", 0o040755, b"", (0, 0)),
        ("dev/console", 0o020600, b"", (5, 1)),
        ("mnt", 0o040755, b"", (0, 0)),
        ("init", 0o100755, (run_dir / "init").read_bytes(), (0, 0)),
    ]))
    return initramfs


def run_ixunlink_test(recipe_path: Path, cache_root: Path, timeout: int, progress: Progress) -> Report:
    _need("qemu-system-x86_64", "gcc", "mkfs.ext4", "debugfs", "dpkg-deb")
    run_dir, release = prepare_kernel(recipe_path, cache_root, "qemu-test", progress)
    static_init_initramfs(run_dir, TEST_SOURCE, progress)
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
    from kernel.recipe import load_recipe

    _need("qemu-system-x86_64", "mkfs.ext4", "dpkg-deb", "mmdebstrap", "tar")
    if os.geteuid() != 0:
        raise EnvironmentProblem("the unify demo needs root (the guest root keeps its owners in the disk image)")
    # A kernel with fs-verity gets an ext4 root with the verity feature (a kernel without it would
    # mount that read-only), and the demo also checks that `kernel probe` sees what composefs needs.
    verity = load_recipe(recipe_path).config_request.get("CONFIG_FS_VERITY") == "y"
    run_dir, release = prepare_kernel(recipe_path, cache_root, "unify-demo", progress)
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
        subprocess.run(["mkfs.ext4", "-q", "-F", *(["-O", "verity"] if verity else []), "-d", str(root), str(disk),
                        "1G"], check=True)
    console = run_dir / "console.log"
    console.unlink(missing_ok=True)
    progress.stage(f"unify demo: booting {release} with the Debian root (console: {console})")
    boot(run_dir / "vmlinuz", None, disk, console, timeout, memory="512",
         append=f"root=/dev/vda rw rootfstype=ext4 init=/unify-demo.sh DEMO_COMPOSEFS={int(verity)}")
    text = console.read_text(errors="replace") if console.exists() else ""
    steps = DEMO_STEPS + ((DEMO_COMPOSEFS_STEP,) if verity else ())
    report = parse_console(text, steps, "UNIFY-DEMO", "UNIFY-DEMO-SUMMARY")
    report.kernel, report.console_log = release, str(console)
    return report


def _tools_runner(binds: list[Path], progress: Progress):
    """Run mkcomposefs from the host if it has one, else from the sid tools root (binds visible in it)."""
    from imagefactory.build import tools
    from imagefactory.build.plan import BuildOptions

    cache = Path(os.environ.get("IMAGEFACTORY_CACHE", "/var/cache/imagefactory"))
    argv0, root = tools.host_or_tools("mkcomposefs", BuildOptions(allow_expired_release=True, cache_dir=cache),
                                      progress)

    def run(argv: list[str]) -> str:
        try:
            if root is None:
                out = subprocess.run(argv, check=True, capture_output=True).stdout
            else:
                out = root.run(argv, binds=binds).stdout
        except subprocess.CalledProcessError as exc:
            lines = (exc.stderr or b"").decode(errors="replace").strip().splitlines() or [f"exit {exc.returncode}"]
            raise EnvironmentProblem(f"{argv[0]} failed: {lines[-1]}") from None
        return out.decode().strip()
    return run


def guest_digests(guest: Path) -> dict[str, list[str]]:
    """fs-verity digest -> guest paths (relative, '/'-rooted) of every regular file with content."""
    out: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(guest):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file() or path.stat().st_size == 0:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                digest = digest_fd(fd)[0]
            finally:
                os.close(fd)
            out.setdefault(digest, []).append("/" + str(path.relative_to(guest)))
    return out


def pick_files(guest: Path, digests: dict[str, list[str]], count: int = 2) -> list[tuple[str, str]]:
    """(guest path, digest) of files fit to tamper with: 16 KiB..4 MiB, one link, content no other file shares."""
    found = []
    for digest, paths in sorted(digests.items(), key=lambda item: item[1]):
        if len(paths) != 1 or not _SIMPLE_PATH.match(paths[0]):
            continue
        st = (guest / paths[0].lstrip("/")).stat()
        if 16384 <= st.st_size <= 4 << 20 and st.st_nlink == 1:
            found.append((paths[0], digest))
    if len(found) < count:
        raise EnvironmentProblem(f"the guest {guest} has fewer than {count} files fit for the tamper test")
    return found[:count]


def _objects_flags(disk: Path, objects: list[str]) -> dict[str, int | None]:
    """On-disk inode flags of each store object, read by debugfs in one run."""
    commands = "".join(f"stat /objects/{o[:2]}/{o[2:]}\n" for o in objects)
    proc = subprocess.run(["debugfs", "-f", "-", str(disk)], input=commands, capture_output=True, text=True,
                          env={**os.environ, "DEBUGFS_PAGER": "__none__", "PAGER": "__none__"})
    flags = [int(m, 16) for m in re.findall(r"Flags:\s*(0x[0-9a-fA-F]+)", proc.stdout)]
    return {o: (flags[i] if i < len(flags) else None) for i, o in enumerate(objects)}


def flip_byte(disk: Path, obj: str, offset_in_file: int = 1000) -> str:
    """Flip one byte of a store object inside the ext4 image (as an attacker with the disk would)."""
    proc = subprocess.run(["debugfs", "-R", f"blocks /objects/{obj[:2]}/{obj[2:]}", str(disk)],
                          capture_output=True, text=True, check=True)
    blocks = proc.stdout.split()
    if not blocks:
        raise EnvironmentProblem(f"debugfs found no data blocks for object {obj}")
    offset = int(blocks[0]) * 4096 + offset_in_file
    with open(disk, "r+b") as handle:
        handle.seek(offset)
        old = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([old[0] ^ 0xFF]))
    return f"object {obj[:16]}... block {blocks[0]} byte {offset_in_file}: {old[0]:#04x} -> {old[0] ^ 0xFF:#04x}"


def run_composefs_test(recipe_path: Path, cache_root: Path, timeout: int, progress: Progress,
                       guest: Path | None = None, suite: str = "bookworm", mirror: str | None = None) -> Report:
    """composefs with verity=require on the recipe's kernel: enable, read, tamper, read again (two boots)."""
    from imagefactory.build.sources import host_debian_mirror

    _need("qemu-system-x86_64", "gcc", "mkfs.ext4", "debugfs", "dpkg-deb", "tar")
    if os.geteuid() != 0:
        raise EnvironmentProblem("the composefs test needs root (mkcomposefs reads every guest file, "
                                 "the store keeps their owners)")
    run_dir, release = prepare_kernel(recipe_path, cache_root, "composefs-test", progress)
    static_init_initramfs(run_dir, COMPOSEFS_SOURCE, progress)
    report = Report(kernel=release)
    host = report.rules.append
    disk = run_dir / "store.img"
    disk.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        work = Path(tmp)
        if guest is None:
            guest = work / "guest"
            guest.mkdir()
            tarball = _demo_rootfs(cache_root, suite, mirror or host_debian_mirror(), progress)
            subprocess.run(["tar", "-xf", str(tarball), "-C", str(guest)], check=True)
        store = work / "store"
        store.mkdir()
        progress.stage(f"composefs test: mkcomposefs --digest-store of {guest}")
        mkcomposefs = _tools_runner([work, guest], progress)
        image_digest = mkcomposefs(["mkcomposefs", "--print-digest", f"--digest-store={store / 'objects'}",
                                    str(guest), str(store / "guest.cfs")])
        objects = sorted(p.parent.name + p.name for p in (store / "objects").glob("??/*"))
        host(Rule("mkcomposefs", len(image_digest) == 64 and bool(objects),
                  f"{len(objects)} objects, image {(store / 'guest.cfs').stat().st_size} bytes, digest {image_digest}"))
        progress.stage("composefs test: fs-verity digests of every guest file (host side)")
        digests = guest_digests(guest)
        unknown = [o for o in objects if o not in digests]
        host(Rule("host_digests_name_objects", not unknown,
                  f"{len(objects) - len(unknown)} of {len(objects)} objects named by our fs-verity digest"))
        (probe, probe_obj), (tampered, tampered_obj) = pick_files(guest, digests)
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "verity", "-d", str(store), str(disk),
                        f"{size * 13 // 10 // (1 << 20) + 64}M"], check=True, capture_output=True)
    params = f"CFS_PROBE={probe} CFS_PROBE_OBJECT={probe_obj[:2]}/{probe_obj[2:]} CFS_IMAGE_DIGEST={image_digest}"
    report.console_log = str(run_dir / "console-1.log")
    for n, expected, append in ((1, COMPOSEFS_BOOT1, f"CFS_PHASE=1 {params}"),
                                (2, COMPOSEFS_BOOT2, f"CFS_PHASE=2 CFS_TAMPERED={tampered} "
                                                     f"CFS_TAMPERED_OBJECT={tampered_obj[:2]}/{tampered_obj[2:]}")):
        console = run_dir / f"console-{n}.log"
        console.unlink(missing_ok=True)
        progress.stage(f"composefs test: boot {n} of {release} (console: {console})")
        boot(run_dir / "vmlinuz", run_dir / "initramfs.cpio", disk, console, timeout, append=append, memory="512")
        booted = parse_console(console.read_text(errors="replace") if console.exists() else "", expected,
                               "COMPOSEFS-TEST", "COMPOSEFS-SUMMARY")
        report.rules += [Rule(f"boot{n}.{r.name}", r.ok, r.detail) for r in booted.rules]
        report.summary_seen = booted.summary_seen if n == 1 else report.summary_seen and booted.summary_seen
        if n == 1:
            flags = _objects_flags(disk, objects)
            missing = [o for o, f in flags.items() if f is None or not f & EXT4_VERITY_FL]
            host(Rule("objects_verity_on_disk", not missing,
                      f"debugfs: {len(objects) - len(missing)} of {len(objects)} objects carry EXT4_VERITY_FL"))
            host(Rule("byte_flipped", True, f"{tampered}: {flip_byte(disk, tampered_obj)}"))
    return report
