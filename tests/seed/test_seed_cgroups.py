"""The host's cgroup layout, read from mountinfo, /proc/cgroups and cgroup.controllers."""

from __future__ import annotations

import os
from pathlib import Path

from imagefactory.seed import cgroups
from imagefactory.seed.cgroups import V1, V2, parse_layout

# The shapes hosts have (mountinfo lines trimmed to what matters; the fields are real).
HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = ("30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - "
           "cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n")
LEGACY = """\
25 24 0:22 / /sys/fs/cgroup/systemd rw,nosuid shared:9 - cgroup cgroup rw,xattr,name=systemd
28 24 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
29 24 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
30 24 0:27 / /sys/fs/cgroup/pids rw,nosuid shared:12 - cgroup cgroup rw,pids
"""
PROC_CGROUPS = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t4\t32\t1\nhugetlb\t0\t1\t1\n"


def test_hybrid_host_has_its_controllers_on_v1():
    layout = parse_layout(HYBRID, PROC_CGROUPS, {"/sys/fs/cgroup/unified": "hugetlb\n"})
    assert layout.kind == "hybrid"
    assert layout.version_of("memory") == layout.version_of("cpu") == layout.version_of("cpuacct") == V1
    assert layout.version_of("hugetlb") == V2
    assert layout.hierarchy_of("memory").mountpoint == "/sys/fs/cgroup/memory"


def test_unified_host():
    layout = parse_layout(UNIFIED, "", {"/sys/fs/cgroup": "cpuset cpu io memory hugetlb pids rdma misc\n"})
    assert layout.kind == "v2"
    assert layout.version_of("memory") == layout.version_of("cpu") == V2
    assert layout.version_of("cpuacct") is None  # v2 counts CPU time in cpu.stat


def test_legacy_host_with_comounted_cpu_and_cpuacct():
    layout = parse_layout(LEGACY, PROC_CGROUPS, {})
    assert layout.kind == "v1"
    assert layout.hierarchy_of("cpu") == layout.hierarchy_of("cpuacct")
    assert layout.hierarchy_of("cpu").mountpoint == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.version_of("io") is None


def test_a_disabled_controller_is_not_there():
    disabled = PROC_CGROUPS.replace("memory\t4\t32\t1", "memory\t0\t1\t0")
    layout = parse_layout(UNIFIED, disabled, {"/sys/fs/cgroup": "cpu io pids\n"})
    assert layout.version_of("memory") is None and layout.version_of("cpu") == V2


def test_a_controller_bound_to_v1_is_not_offered_on_v2():
    layout = parse_layout(HYBRID, PROC_CGROUPS, {"/sys/fs/cgroup/unified": "memory hugetlb\n"})
    assert layout.version_of("memory") == V1


def test_escaped_mountpoint():
    text = r"35 31 0:32 / /sys/fs/cgroup/mem\040ory rw - cgroup cgroup rw,memory" + "\n"
    assert parse_layout(text, "", {}).hierarchy_of("memory").mountpoint == "/sys/fs/cgroup/mem ory"


def test_cgroup_paths_of_a_process():
    text = "4:memory:/lxc.payload.web1\n2:cpu,cpuacct:/lxc.payload.web1\n1:name=systemd:/x\n0::/lxc.payload.web1\n"
    paths = cgroups.cgroup_paths(text)
    assert paths["memory"] == paths["cpuacct"] == paths["unified"] == "/lxc.payload.web1"


def test_this_host():
    """detect() reads this host; whatever its layout, our own cgroup dir for memory exists."""
    layout = cgroups.detect()
    assert layout.kind in ("v1", "v2", "hybrid")
    if layout.version_of("memory"):
        directory = cgroups.process_cgroup(layout, os.getpid(), "memory")
        assert directory is not None and Path(directory).is_dir()
    assert cgroups.cpu_usage_ns(layout, os.getpid()) > 0
