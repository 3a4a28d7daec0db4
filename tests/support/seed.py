"""Small hand-made images for the seed tests (helpers only; no tests here).

Built with tarfile + zstandard directly so tests can also craft hostile
archives that no real image writer would produce.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import zstandard

from imagefactory.seed import disk, runtime

SECURE_DEVS = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
               ("tty", 5, 0), ("ptmx", 5, 2)]
CAP_NET_RAW = bytes.fromhex("0000000200200000000000000000000000000000")  # vfs cap v2: cap_net_raw=ep


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, **attrs) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 1_700_000_000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def directory(name: str, mode: int = 0o755) -> tuple:
    return entry(name, tarfile.DIRTYPE, mode=mode)


def basic_tree(devices: bool) -> list[tuple]:
    """A tiny OS-like tree: dirs, files, setuid binary, symlinks, a hard link, /dev."""
    entries = [
        directory("./etc"), directory("./usr"), directory("./usr/bin"), directory("./usr/sbin"),
        directory("./tmp", 0o1777), directory("./dev"),
        entry("./etc/hostname", data=b"image\n"),
        entry("./etc/os-release", data=b"ID=debian\n"),
        entry("./usr/bin/tool", data=b"#!/bin/sh\necho tool\n" * 20, mode=0o755, uid=0, gid=0),
        entry("./usr/bin/su", data=b"setuid binary\n" * 10, mode=0o4755),
        entry("./usr/bin/ping", data=b"ping binary\n" * 10, mode=0o755,
              pax_headers={"SCHILY.xattr.security.capability": CAP_NET_RAW.decode("utf-8", "surrogateescape")}),
        entry("./usr/bin/tool-again", tarfile.LNKTYPE, linkname="./usr/bin/tool"),
        entry("./usr/bin/solo", data=b"the only file of this size\n" * 7, mode=0o755),
        entry("./bin", tarfile.SYMTYPE, linkname="usr/bin"),
        entry("./etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/Etc/UTC"),
        entry("./usr/sbin/init", tarfile.SYMTYPE, linkname="/lib/systemd/systemd"),
        entry("./etc/owned", data=b"owned by 1234\n", uid=1234, gid=4321, uname="nosuchuser", gname="nosuchgroup"),
        entry("./dev/fd", tarfile.SYMTYPE, linkname="/proc/self/fd"),
    ]
    if devices:
        mode = {"random": 0o644, "urandom": 0o644}
        entries += [entry(f"./dev/{n}", tarfile.CHRTYPE, mode=mode.get(n, 0o666), devmajor=a, devminor=b)
                    for n, a, b in SECURE_DEVS]
    return entries


def write_image(directory_: Path, name: str, entries: list[tuple], *, manifest_extra: dict | None = None) -> Path:
    """Write `<name>.tar.zst` and a schema-1 manifest beside it; returns the image path."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    blob = zstandard.ZstdCompressor().compress(raw.getvalue())
    image = directory_ / f"{name}.tar.zst"
    image.write_bytes(blob)
    manifest = {
        "schema": 1, "name": name, "family": "debian", "distro": "debian", "suite": "sid",
        "architecture": "amd64", "variant": "minbase",
        "snapshot": {"date": "Fri, 30 Oct 2026 08:08:01 UTC", "epoch": 1793347681, "mirror": "http://mirror.invalid/"},
        "packages": [], "files": len(entries),
        "image": {"file": image.name, "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)},
        "imagefactory": "0.1.0", **(manifest_extra or {}),
    }
    (directory_ / f"{name}.manifest.json").write_text(json.dumps(manifest))
    return image


def tiny_image(directory_: Path, name: str = "tiny") -> Path:
    return write_image(directory_, name, basic_tree(devices=os.geteuid() == 0))


def seed_args(image: Path, name: str, tmp: Path, *extra: str, ip: str = "10.0.0.11/24") -> list[str]:
    return ["seed", str(image), name, "--vdir", str(tmp / "vservers"), "--confdir", str(tmp / "etc"),
            "--ip", ip, "--dev", "eth0", "--memory", "512M", "--cpu", "25%", "-q", *extra]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process; returns (exit code, stdout, stderr)."""
    from imagefactory.cli import main

    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


BUSYBOX_APPLETS = ("sh", "cat", "dd", "mknod", "grep", "sleep", "ls", "insmod", "ip", "df", "rm", "head", "sync", "cmp")


def busybox_image(directory_: Path, name: str = "bb", *, shared: bytes = b"") -> Path:
    """A guest LXC can really run: the host's static busybox and its applets, the dirs LXC
    mounts onto, and (if given) a large file `usr/share/shared.bin` every guest of it carries."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    entries = [directory(f"./{d}") for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "usr", "usr/share", "root")]
    entries += [entry("./bin/busybox", data=busybox, mode=0o755),
                entry("./etc/os-release", data=b"ID=busybox\n"),
                entry("./etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")]
    entries += [entry(f"./bin/{applet}", tarfile.SYMTYPE, linkname="busybox") for applet in BUSYBOX_APPLETS]
    if shared:
        entries.append(entry("./usr/share/shared.bin", data=shared))
    return write_image(directory_, name, entries)


SHARED_BIN = bytes(range(256)) * (80 * 1024)  # 20 MiB, the same in every guest of LxcHost's image


class LxcHost:
    """A vdir + confdir under tmp whose guests LXC really runs (macvlan on `bridge`), seeded from a
    busybox image carrying SHARED_BIN as usr/share/shared.bin; the CLI runs as a subprocess."""

    def __init__(self, tmp: Path, bridge: str):
        self.tmp, self.bridge = tmp, bridge
        self.vdir, self.confdir = tmp / "vservers", tmp / "etc"
        tmp.mkdir(parents=True, exist_ok=True)
        self.image = busybox_image(tmp, shared=SHARED_BIN)
        self.count = 0

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imagefactory", *args], capture_output=True, text=True,
                              timeout=120)

    def seed(self, name: str, *extra: str) -> None:
        self.count += 1
        result = self.cli("seed", str(self.image), name, "--vdir", str(self.vdir), "--confdir", str(self.confdir),
                          "--ip", f"10.0.0.{10 + self.count}/24", "--dev", self.bridge, "-q", *extra)
        assert result.returncode == 0, result.stderr

    def start(self, name: str) -> runtime.Installed:
        result = self.cli("start", name, "--confdir", str(self.confdir))
        assert result.returncode == 0, result.stderr
        return runtime.find(self.confdir, name)

    def exec(self, name: str, *command: str) -> subprocess.CompletedProcess:
        return self.cli("exec", name, "--confdir", str(self.confdir), "--", *command)

    def guests(self) -> dict[str, dict]:
        result = self.cli("guests", "--confdir", str(self.confdir), "--json")
        assert result.returncode == 0, result.stderr
        return {g["name"]: g for g in json.loads(result.stdout)}

    def cleanup(self) -> None:
        if not self.confdir.is_dir():
            return
        for conf in self.confdir.iterdir():
            if (conf / "lxc").is_dir():
                subprocess.run(["lxc-stop", "-P", str(conf / "lxc"), "-n", conf.name, "-k"], capture_output=True)
                root = conf / os.readlink(conf / "vdir")
                disk.detach(disk.Layer(Path(os.path.normpath(root))))
        self.cli("umount", "--all", "--confdir", str(self.confdir))  # composefs roots


@contextmanager
def lxc_bridge() -> Iterator[str]:
    """A bridge for the guests' macvlan links, removed afterwards (root)."""
    bridge = f"iflim{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        yield bridge
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False)
