"""Real guests, started by LXC on this host, obeying their limits (root).

Each guest is seeded by the real CLI from a busybox image, started with
`imagefactory start` (lxc-execute for these init-less guests) and probed
with `imagefactory exec` (lxc-attach). Every limit has a control that shows
the same action succeeding when it is within the limit or allowed, so a
guest that failed for another reason could not pass.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagefactory.seed import caps, cgroups, disk, runtime
from tests.support.seed import LxcHost

pytestmark = pytest.mark.root
MIB = 1 << 20


def test_memory_limit_kills_what_allocates_twice_the_limit(lxc_host):
    lxc_host.seed("mem", "--memory", "64M")
    guest = lxc_host.start("mem")
    layout = cgroups.detect()
    directory = cgroups.process_cgroup(layout, runtime.init_pid(guest), "memory")
    limit_file = "memory.limit_in_bytes" if layout.version_of("memory") == cgroups.V1 else "memory.max"
    assert int((directory / limit_file).read_text()) == 64 * MIB  # the kernel holds our figure
    # dd allocates its whole block size up front and fills it from /dev/zero
    over = lxc_host.exec("mem", "dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1")
    assert over.returncode == 128 + 9, over.stderr  # SIGKILL by the OOM killer
    under = lxc_host.exec("mem", "dd", "if=/dev/zero", "of=/dev/null", "bs=32M", "count=1")
    assert under.returncode == 0, under.stderr


def test_cpu_share_is_what_the_kernel_gives(lxc_host):
    lxc_host.seed("cpu", "--cpu", "25%")
    guest = lxc_host.start("cpu")
    layout = cgroups.detect()
    pid = runtime.init_pid(guest)
    loop = subprocess.Popen([sys.executable, "-m", "imagefactory", "exec", "cpu", "--confdir", str(lxc_host.confdir),
                             "--", "sh", "-c", "while :; do :; done"])
    try:
        time.sleep(1)  # the loop is running
        before, t0 = cgroups.cpu_usage_ns(layout, pid), time.monotonic()
        time.sleep(5)
        after, t1 = cgroups.cpu_usage_ns(layout, pid), time.monotonic()
    finally:
        lxc_host.cli("stop", "cpu", "--confdir", str(lxc_host.confdir))
        loop.wait(timeout=30)
    share = (after - before) / ((t1 - t0) * 1e9)
    assert 0.20 <= share <= 0.30, f"{share:.3f} of one CPU"  # measured: the kernel's CFS quota at work


def _bounding_set(lxc_host: LxcHost, name: str) -> frozenset[str]:
    status = lxc_host.exec(name, "grep", "CapBnd", "/proc/self/status")
    assert status.returncode == 0, status.stderr
    return caps.in_mask(int(status.stdout.split()[1], 16))


def test_capabilities_are_bounded_and_can_be_widened(lxc_host):
    lxc_host.seed("plain")
    lxc_host.seed("widened", "--cap-add", "MKNOD", "--cap-add", "net_admin")
    for name in ("plain", "widened"):
        lxc_host.start(name)
    # A guest can hold at most what the host's own bounding set (this process's) holds.
    status = Path("/proc/self/status").read_text()
    known = caps.in_mask(int(status.split("CapBnd:")[1].split()[0], 16))
    plain = _bounding_set(lxc_host, "plain")
    assert plain == known - caps.DEFAULT_DROP
    assert {"SYS_MODULE", "SYS_RAWIO", "SYS_TIME", "MKNOD", "NET_ADMIN"}.isdisjoint(plain)

    mknod = lxc_host.exec("plain", "mknod", "/tmp/null", "c", "1", "3")
    assert mknod.returncode != 0 and "Operation not permitted" in mknod.stderr
    mtu = lxc_host.exec("plain", "ip", "link", "set", "lo", "mtu", "1400")
    assert mtu.returncode != 0 and "not permitted" in mtu.stderr
    module = lxc_host.exec("plain", "sh", "-c", "echo junk > /tmp/x.ko && insmod /tmp/x.ko")
    assert module.returncode != 0  # (this host's kernel has no module support at all; CapBnd shows the bound)

    widened = _bounding_set(lxc_host, "widened")
    assert widened == known - (caps.DEFAULT_DROP - {"MKNOD", "NET_ADMIN"})
    assert lxc_host.exec("widened", "mknod", "/tmp/null", "c", "1", "3").returncode == 0
    assert lxc_host.exec("widened", "ip", "link", "set", "lo", "mtu", "1400").returncode == 0


def test_disk_limit_counts_only_the_guests_own_layer(lxc_host):
    store = lxc_host.vdir / ".hash"
    for name in ("d1", "d2"):
        lxc_host.seed(name, "--disk", "50M", "--unify", "--store", str(store), "--unify-mode", "hardlink")
    shared = [lxc_host.vdir / name / "usr/share/shared.bin" for name in ("d1", "d2")]
    assert shared[0].stat().st_ino == shared[1].stat().st_ino  # one 20 MiB file, unified
    for name in ("d1", "d2"):
        lxc_host.start(name)

    first = lxc_host.exec("d1", "dd", "if=/dev/zero", "of=/own1", "bs=1M", "count=40")
    assert first.returncode == 0, first.stderr  # 40 MiB of own data + the 20 MiB shared file: fits in 50
    full = lxc_host.exec("d1", "dd", "if=/dev/zero", "of=/own2", "bs=1M", "count=40")
    assert full.returncode != 0 and "No space left on device" in full.stderr
    other = lxc_host.exec("d2", "dd", "if=/dev/zero", "of=/own1", "bs=1M", "count=45")
    assert other.returncode == 0, other.stderr  # d2 still has its own 50 MiB
    assert not (lxc_host.vdir / "d1/own1").exists()  # the seeded (shared) tree stays as it was

    rows = lxc_host.guests()
    assert rows["d1"]["disk_limit"] == rows["d2"]["disk_limit"] == 50 * MIB
    assert 40 * MIB <= rows["d1"]["disk_used"] <= 50 * MIB and 45 * MIB <= rows["d2"]["disk_used"] <= 50 * MIB
    assert rows["d1"]["state"] == "RUNNING" and rows["d1"]["disk_mode"] == "image"


def test_start_stop_exec_and_state(lxc_host):
    lxc_host.seed("life", "--disk", "20M")
    layer = disk.Layer(lxc_host.vdir / "life")
    assert lxc_host.guests()["life"]["state"] == "STOPPED"
    lxc_host.start("life")
    assert lxc_host.guests()["life"]["state"] == "RUNNING" and disk.is_mounted(layer)
    assert lxc_host.cli("start", "life", "--confdir", str(lxc_host.confdir)).returncode == 1  # already running
    assert lxc_host.exec("life", "sh", "-c", "echo kept > /kept").returncode == 0
    entered = subprocess.run([sys.executable, "-m", "imagefactory", "enter", "life", "--confdir",
                              str(lxc_host.confdir)], input="cat /kept\nexit 5\n", capture_output=True, text=True,
                             timeout=60)
    assert entered.returncode == 5 and "kept" in entered.stdout  # a login shell in the guest (lxc-attach)
    assert lxc_host.cli("stop", "life", "--confdir", str(lxc_host.confdir)).returncode == 0
    assert lxc_host.guests()["life"]["state"] == "STOPPED" and not disk.is_mounted(layer)
    # A stopped guest runs a command as a one-shot container (lxc-execute) on the same layers.
    once = lxc_host.exec("life", "sh", "-c", "cat /kept; exit 3")
    assert once.returncode == 3 and once.stdout == "kept\n"
    assert not disk.is_mounted(layer)


def test_limits_change_later(lxc_host):
    lxc_host.seed("later", "--memory", "64M", "--disk", "20M")
    guest = lxc_host.start("later")
    changed = lxc_host.cli("limits", "later", "--confdir", str(lxc_host.confdir), "--memory", "128M")
    assert changed.returncode == 0, changed.stderr
    layout = cgroups.detect()
    directory = cgroups.process_cgroup(layout, runtime.init_pid(guest), "memory")
    limit_file = "memory.limit_in_bytes" if layout.version_of("memory") == cgroups.V1 else "memory.max"
    assert int((directory / limit_file).read_text()) == 128 * MIB  # applied to the running guest
    running = lxc_host.cli("limits", "later", "--confdir", str(lxc_host.confdir), "--disk", "60M")
    assert running.returncode == 1  # the disk image cannot change under a running guest
    assert lxc_host.cli("stop", "later", "--confdir", str(lxc_host.confdir)).returncode == 0
    grown = lxc_host.cli("limits", "later", "--confdir", str(lxc_host.confdir), "--disk", "60M")
    assert grown.returncode == 0, grown.stderr
    write = lxc_host.exec("later", "dd", "if=/dev/zero", "of=/big", "bs=1M", "count=50")
    assert write.returncode == 0, write.stderr
    assert lxc_host.guests()["later"]["disk_limit"] == 60 * MIB


def test_disk_limit_on_composefs_guests(lxc_host):
    """composefs guests share the store's objects; LXC stacks each one's own layer on its mounted root."""
    for name in ("c1", "c2"):
        lxc_host.seed(name, "--disk", "50M", "--unify", "--store", str(lxc_host.vdir / ".store"),
                      "--unify-mode", "composefs", "--meta", "dir")
        lxc_host.start(name)
    assert lxc_host.exec("c1", "dd", "if=/dev/zero", "of=/own1", "bs=1M", "count=40").returncode == 0
    full = lxc_host.exec("c1", "dd", "if=/dev/zero", "of=/own2", "bs=1M", "count=40")
    assert full.returncode != 0 and "No space left on device" in full.stderr
    assert lxc_host.exec("c2", "dd", "if=/dev/zero", "of=/own1", "bs=1M", "count=45").returncode == 0
    assert lxc_host.exec("c2", "cmp", "/usr/share/shared.bin", "/usr/share/shared.bin").returncode == 0
    rows = lxc_host.guests()
    assert rows["c1"]["mounted"] and rows["c1"]["disk_limit"] == 50 * MIB
    assert 40 * MIB <= rows["c1"]["disk_used"] <= 50 * MIB
