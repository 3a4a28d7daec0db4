"""The quota way of `seed --disk`, proven on a kernel with quota support under qemu (opt-in).

This machine's kernel has no quota support, so the project-quota code in
seed/disk.py is run inside a VM: a kernel built from tests/seed/qemu/quota-6.1.toml
(the project's vm fragments plus CONFIG_QUOTA/QFMT_V2), a Debian minbase +
python3 root on an ext4 disk made with `-O quota,project` and mounted with
prjquota, and tests/seed/qemu/quota-demo.sh as init. Opt-in with
IMAGEFACTORY_QEMU_TESTS=1 like the other qemu tests (kernel build + TCG boot).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from imagefactory.core.progress import Progress
from kernel.build import DEFAULT_CACHE
from kernel.qemutest import _demo_rootfs, boot, parse_console, prepare_kernel
from tests.support import QEMU_OPT_IN, need_tool

HERE = Path(__file__).resolve().parent / "qemu"
REPO = HERE.parents[2]
STEPS = ("quota_available", "auto_picks_quota", "layer_g1", "layer_g2", "g1_writes_40M", "g1_full_edquot",
         "g2_has_its_own_50M", "usage_against_limit", "shared_not_counted", "root_with_sys_resource_ignores_it",
         "raise_limit", "g1_writes_after_raise")


@QEMU_OPT_IN
@pytest.mark.slow
@pytest.mark.root  # the VM's root disk keeps owners
@pytest.mark.network
def test_quota_way_under_qemu():
    need_tool("qemu-system-x86_64", "mkfs.ext4", "dpkg-deb", "mmdebstrap", "tar")
    from imagefactory.build.sources import host_debian_mirror

    progress = Progress(quiet=True)
    cache = Path(os.environ.get("IMAGEFACTORY_KERNEL_CACHE", DEFAULT_CACHE))
    run_dir, release = prepare_kernel(HERE / "quota-6.1.toml", cache, "quota-demo", progress)
    tarball = _demo_rootfs(cache, "bookworm", host_debian_mirror(), progress)
    disk = run_dir / "root.img"
    disk.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=run_dir) as tmp:
        root = Path(tmp)
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(root)], check=True)
        shutil.copytree(REPO / "imagefactory", root / "opt/imagefactory/imagefactory",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(HERE / "quota-demo.sh", root / "quota-demo.sh")
        (root / "quota-demo.sh").chmod(0o755)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "quota,project", "-E", "quotatype=prjquota", "-d", str(root),
                        str(disk), "1G"], check=True)
    console = run_dir / "console.log"
    console.unlink(missing_ok=True)
    boot(run_dir / "vmlinuz", None, disk, console, 900,
         append="root=/dev/vda rw rootfstype=ext4 rootflags=prjquota init=/quota-demo.sh", memory="512")
    text = console.read_text(errors="replace") if console.exists() else ""
    report = parse_console(text, STEPS, "QUOTA-DEMO", "QUOTA-DEMO-SUMMARY")
    failed = [f"{r.name}: {r.detail}" for r in report.rules if not r.ok]
    assert report.ok, f"kernel {release}, console {console}: " + "; ".join(failed)
