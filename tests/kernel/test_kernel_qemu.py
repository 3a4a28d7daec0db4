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
from tests.support import QEMU_OPT_IN, need_tool

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


@pytest.mark.parametrize("program, tag", [("ixunlink-test.c", b"IXUNLINK"), ("composefs-test.c", b"COMPOSEFS")])
def test_test_program_compiles_static(tmp_path, program, tag):
    need_tool("gcc")
    binary = tmp_path / "init"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(binary),
                    str(REPO / "kernel/qemu" / program)], check=True)
    assert tag + b"-SUMMARY" in binary.read_bytes() and tag + b"-TEST" in binary.read_bytes()
    assert b"ld-linux" not in binary.read_bytes()[:4096]  # no dynamic loader: runs as /init


OPT_IN = QEMU_OPT_IN
RECIPES = {"6.1": REPO / "kernel/recipes/host-6.1.toml", "6.12": REPO / "kernel/recipes/host-6.12.toml"}


def kernel_cli(*args: str) -> subprocess.CompletedProcess:
    cache = os.environ.get("IMAGEFACTORY_KERNEL_CACHE", "/var/cache/imagefactory/kernel")
    result = subprocess.run([sys.executable, "-c", "from imagefactory.cli import main; main()", "kernel", *args,
                             "--cache-dir", cache], capture_output=True, text=True, timeout=7200, cwd=REPO)
    print(result.stdout[-6000:], result.stderr[-2000:])
    return result


@pytest.mark.slow
@OPT_IN
def test_ixunlink_rules_under_qemu():
    need_tool("qemu-system-x86_64", "gcc", "mkfs.ext4", "debugfs")
    cache = Path(os.environ.get("IMAGEFACTORY_KERNEL_CACHE", "/var/cache/imagefactory/kernel"))
    result = subprocess.run([str(REPO / "kernel/qemu/run-ixunlink-test"), "--cache-dir", str(cache)],
                            capture_output=True, text=True, timeout=3600)
    print(result.stdout[-4000:], result.stderr[-2000:])
    assert result.returncode == 0
    assert f"{len(EXPECTED_RULES) + 1} passed, 0 failed" in result.stdout


@pytest.mark.slow
@pytest.mark.network
@OPT_IN
def test_ixunlink_rules_under_qemu_612():
    """The same 41 rules (+ the on-disk flags) on the 6.12 port; builds host-6.12 first (cached)."""
    need_tool("qemu-system-x86_64", "gcc", "mkfs.ext4", "debugfs")
    result = kernel_cli("test-ixunlink", "--recipe", str(RECIPES["6.12"]))
    assert result.returncode == 0
    assert f"{len(EXPECTED_RULES) + 1} passed, 0 failed  (kernel 6.12." in result.stdout


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
@OPT_IN
@pytest.mark.parametrize("series", ["6.1", "6.12"])
def test_unify_vserver_inside_vm(series):
    """The real `imagefactory unify --mode vserver` on the IXUNLINK kernel, plus a dpkg-style update;
    on 6.12 the in-VM `kernel probe` must also see fs-verity, EROFS and overlay data-only + verity."""
    need_tool("qemu-system-x86_64", "mmdebstrap", "mkfs.ext4")
    result = kernel_cli("demo-unify", "--recipe", str(RECIPES[series]))
    assert result.returncode == 0
    if series == "6.12":
        assert "PASS  probe_detects_composefs" in result.stdout


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.network
@OPT_IN
def test_composefs_verity_require_under_qemu_612():
    """A Debian guest as composefs on an ext4 store with fs-verity on every object; one flipped byte
    makes that file unreadable (EIO) inside the VM while every other file still reads."""
    need_tool("qemu-system-x86_64", "gcc", "mkfs.ext4", "debugfs", "mmdebstrap")
    result = kernel_cli("test-composefs", "--recipe", str(RECIPES["6.12"]))
    assert result.returncode == 0
    assert ", 0 failed  (kernel 6.12." in result.stdout
    for rule in ("boot1.enable_verity_all_objects", "boot1.read_every_file", "objects_verity_on_disk",
                 "boot2.tampered_file_read_fails", "boot2.other_files_still_read"):
        assert f"PASS  {rule}:" in result.stdout, rule


def test_composefs_console_parsing_and_program():
    from kernel.qemutest import COMPOSEFS_BOOT1, COMPOSEFS_BOOT2, COMPOSEFS_SOURCE

    for rules in (COMPOSEFS_BOOT1, COMPOSEFS_BOOT2):
        text = "".join(f"COMPOSEFS-TEST {r} PASS x\n" for r in rules) + "COMPOSEFS-SUMMARY passed=1 failed=0\n"
        assert parse_console(text, rules, "COMPOSEFS-TEST", "COMPOSEFS-SUMMARY").ok
    source = COMPOSEFS_SOURCE.read_text()
    for rules in (COMPOSEFS_BOOT1, COMPOSEFS_BOOT2):  # every expected rule is printed by the program
        for rule in rules:
            assert f'"{rule}"' in source, rule
