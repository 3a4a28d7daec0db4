"""The qemu IXUNLINK proof: console parsing, initramfs format, and (opt-in) the real boot.

The real boot builds the patched kernel (cached) and runs it under
qemu-system-x86_64; it is opt-in with IMAGEFACTORY_QEMU_TESTS=1 because TCG
boots take a while on a shared 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernel.qemutest import EXPECTED_RULES, newc_archive, parse_console, parse_debugfs_flags
from tests.support import need_tool

REPO = Path(__file__).resolve().parents[2]


def test_parse_console_all_rules():
    text = "".join(f"[    1.0] junk\r\nIXUNLINK-TEST {r} PASS rc=0 errno=none\r\n" for r in EXPECTED_RULES)
    report = parse_console(text + "IXUNLINK-SUMMARY passed=30 failed=0\n")
    assert report.ok and report.passed == len(EXPECTED_RULES) and report.failed == 0


def test_parse_console_failure_and_missing_lines():
    text = "IXUNLINK-TEST mount_ext4 PASS ok\nIXUNLINK-TEST write_denied FAIL rc=3 errno=none\n"
    report = parse_console(text + "IXUNLINK-SUMMARY passed=1 failed=1\n")
    assert not report.ok
    failed = {r.name for r in report.rules if not r.ok}
    assert "write_denied" in failed and "unlink_allowed" in failed  # never printed -> failed
    assert "mount_ext4" not in failed


def test_no_summary_is_not_ok():
    text = "".join(f"IXUNLINK-TEST {r} PASS x\n" for r in EXPECTED_RULES)
    assert not parse_console(text).ok  # the VM died before finishing


def test_debugfs_flags():
    assert parse_debugfs_flags("Inode: 12   Type: regular    Mode:  0644   Flags: 0x8080010\n") == 0x8080010
    assert parse_debugfs_flags("stat: File not found by ext2_lookup") is None


def test_newc_archive_readable_by_cpio(tmp_path):
    need_tool("cpio")
    data = newc_archive([("dir", 0o040755, b"", (0, 0)), ("dir/init", 0o100755, b"#!hello\n", (0, 0)),
                         ("dev/console", 0o020600, b"", (5, 1))])
    assert len(data) % 512 == 0
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True, check=True).stdout.decode()
    assert "dir/init" in listing and "dev/console" in listing and "5,   1" in listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--no-absolute-filenames"], input=data, cwd=out, capture_output=True, check=True)
    assert (out / "dir/init").read_bytes() == b"#!hello\n"


def test_test_program_compiles_static(tmp_path):
    need_tool("gcc")
    binary = tmp_path / "init"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(binary),
                    str(REPO / "kernel/qemu/ixunlink-test.c")], check=True)
    assert b"IXUNLINK-SUMMARY" in binary.read_bytes()
    assert b"ld-linux" not in binary.read_bytes()[:4096]  # no dynamic loader: runs as /init


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("IMAGEFACTORY_QEMU_TESTS") != "1", reason="opt-in: IMAGEFACTORY_QEMU_TESTS=1")
def test_ixunlink_rules_under_qemu():
    need_tool("qemu-system-x86_64", "gcc", "mkfs.ext4", "debugfs")
    cache = Path(os.environ.get("IMAGEFACTORY_KERNEL_CACHE", "/var/cache/imagefactory/kernel"))
    result = subprocess.run([str(REPO / "kernel/qemu/run-ixunlink-test"), "--cache-dir", str(cache)],
                            capture_output=True, text=True, timeout=3600)
    print(result.stdout[-4000:], result.stderr[-2000:])
    assert result.returncode == 0
    assert f"{len(EXPECTED_RULES) + 1} passed, 0 failed" in result.stdout


def test_demo_console_parsing():
    from kernel.qemutest import DEMO_STEPS

    text = "".join(f"UNIFY-DEMO {s} PASS ok\n" for s in DEMO_STEPS) + "UNIFY-DEMO-SUMMARY passed=11 failed=0\n"
    assert parse_console(text, DEMO_STEPS, "UNIFY-DEMO", "UNIFY-DEMO-SUMMARY").ok
    # the summary tag must not be read as a step named "-SUMMARY"
    assert parse_console("UNIFY-DEMO-SUMMARY passed=0 failed=0\n", DEMO_STEPS, "UNIFY-DEMO",
                         "UNIFY-DEMO-SUMMARY").failed == len(DEMO_STEPS)


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
@pytest.mark.skipif(os.environ.get("IMAGEFACTORY_QEMU_TESTS") != "1", reason="opt-in: IMAGEFACTORY_QEMU_TESTS=1")
def test_unify_vserver_inside_vm():
    """The real `imagefactory unify --mode vserver` on the IXUNLINK kernel, plus a dpkg-style update."""
    need_tool("qemu-system-x86_64", "mmdebstrap", "mkfs.ext4")
    cache = os.environ.get("IMAGEFACTORY_KERNEL_CACHE", "/var/cache/imagefactory/kernel")
    result = subprocess.run([sys.executable, "-c", "from imagefactory.cli import main; main()",
                             "kernel", "demo-unify", "--cache-dir", cache],
                            capture_output=True, text=True, timeout=3600, cwd=REPO)
    print(result.stdout[-4000:], result.stderr[-2000:])
    assert result.returncode == 0
