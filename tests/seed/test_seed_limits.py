"""One Limits value, three host formats: parsing and consistency."""

from __future__ import annotations

import configparser
from fractions import Fraction
from pathlib import Path

import pytest

from imagefactory.seed import caps, check, lxc, nspawn
from imagefactory.seed.cgroups import Layout
from imagefactory.seed.guest import Guest, Interface
from imagefactory.seed.limits import (
    MEMORY_FLOOR,
    UNIFIED,
    LimitError,
    Limits,
    inodes_for,
    parse_disk,
    parse_memory,
    parse_share,
    render,
    token_bucket,
)

LEGACY = Layout.legacy(("cpu", "cpuacct", "memory", "pids"))


@pytest.mark.parametrize("text,expected", [
    ("512M", 512 << 20), ("2G", 2 << 30), ("1.5G", 3 << 29), ("65536K", 64 << 20),
    ("536870912", 512 << 20), ("512MiB", 512 << 20), ("1gb", 1 << 30), (" 64M ", 64 << 20),
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["63M", "1000", "0", "lots", "-512M", "512X", ""])
def test_parse_memory_refuses(text):
    with pytest.raises(LimitError):
        parse_memory(text)


def test_memory_floor_message_names_the_floor():
    with pytest.raises(LimitError, match="floor of 64M"):
        parse_memory("32M")
    assert parse_memory("64M") == MEMORY_FLOOR


@pytest.mark.parametrize("text,expected", [("25%", 25), ("25", 25), ("12.5%", Fraction(25, 2)), ("100%", 100),
                                           ("0.1%", Fraction(1, 10)), ("33.33%", Fraction(333, 10))])
def test_parse_share(text, expected):
    assert parse_share(text) == expected


@pytest.mark.parametrize("text", ["0", "0%", "0.04%", "100.1%", "150", "-5%", "abc", "1/0"])
def test_parse_share_refuses(text):
    with pytest.raises(LimitError):
        parse_share(text)


def test_token_bucket_is_the_share_in_lowest_terms():
    assert token_bucket(Fraction(25)) == (1, 4)  # the classic vserver fill-rate 1 / interval 4
    assert token_bucket(Fraction(100)) == (1, 1)
    assert token_bucket(Fraction(125, 10)) == (1, 8)
    assert token_bucket(Fraction(333, 10)) == (333, 1000)


def _guest(limits: Limits) -> Guest:
    return Guest("web1", "web1.example.net", Interface.parse("10.0.0.11/24", "eth0"), limits,
                 Path("/vservers"), Path("/etc/vservers"))


def _systemd_values(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(comment_prefixes=("#",), interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return dict(parser["Service"])


def _lxc_values(text: str) -> dict[str, str]:
    """Key -> value; for a repeated key (lxc.cap.drop after its clearing line) the last one."""
    return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))


@pytest.mark.parametrize("memory,cpu,page", [
    ("512M", "25%", 4096), ("64M", "100%", 4096), ("3G", "12.5%", 16384), ("1000000000", "0.1%", 65536),
    ("777M", "33.3%", 4096),
])
@pytest.mark.parametrize("layout", [UNIFIED, LEGACY], ids=["v2", "v1"])
def test_three_formats_agree(memory, cpu, page, layout):
    """Parse what each renderer wrote and check all formats state the same limits."""
    limits = Limits.parse(memory, cpu)
    rendered = render(limits, page, layout)
    guest = _guest(limits)
    v = {k: int(s) for k, s in rendered.vserver.items() if k.startswith(("rlimits/", "sched/"))}
    sd = _systemd_values(nspawn.render(guest, rendered, boot=True)[nspawn.dropin_path("web1")])
    lx = _lxc_values(lxc.render(guest, rendered)[lxc.config_path("web1")])

    hard_bytes = v["rlimits/rss.hard"] * page
    soft_bytes = v["rlimits/rss.soft"] * page
    if layout is UNIFIED:
        quota, period = map(int, lx["lxc.cgroup2.cpu.max"].split())
        assert hard_bytes == int(sd["MemoryMax"]) == int(lx["lxc.cgroup2.memory.max"])
        assert soft_bytes == int(sd["MemoryHigh"]) == int(lx["lxc.cgroup2.memory.high"])
        assert not any(k.startswith("lxc.cgroup.") for k in lx)
    else:
        quota, period = int(lx["lxc.cgroup.cpu.cfs_quota_us"]), int(lx["lxc.cgroup.cpu.cfs_period_us"])
        assert hard_bytes == int(sd["MemoryMax"]) == int(lx["lxc.cgroup.memory.limit_in_bytes"])
        assert soft_bytes == int(lx["lxc.cgroup.memory.soft_limit_in_bytes"])
        assert "MemoryHigh" not in sd  # no cgroup v1 counterpart: not written where it would not hold
        assert not any(k.startswith("lxc.cgroup2.") for k in lx)
    assert rendered.unenforced == []
    assert 0 <= limits.memory - hard_bytes < page  # whole pages, never above what was asked
    assert soft_bytes < hard_bytes

    ratio = Fraction(v["sched/fill-rate"], v["sched/interval"])
    assert ratio == Fraction(quota, period) == Fraction(sd["CPUQuota"].rstrip("%")) / 100 == limits.cpu_percent / 100
    assert v["sched/tokens-min"] < v["sched/tokens-max"] and v["sched/tokens"] <= v["sched/tokens-max"]
    assert v["rlimits/as"] >= v["rlimits/rss.hard"]


def test_a_missing_controller_is_reported_not_written():
    rendered = render(Limits.parse("512M", "25%"), 4096, Layout.legacy(("memory",)))
    assert rendered.unenforced == ["cpu"]
    assert not any("cpu" in key for key, _ in rendered.lxc)


def _nspawn_exec(text: str) -> dict[str, str]:
    parser = configparser.ConfigParser(comment_prefixes=("#",), interpolation=None, strict=False)
    parser.optionxform = str
    parser.read_string(text)
    return dict(parser["Exec"])


@pytest.mark.parametrize("add,drop", [((), ()), (("net_admin",), ()), (("CAP_SYS_TIME", "mknod"), ("sys_admin",)),
                                      ((), ("chown", "BPF"))])
def test_capabilities_agree_in_all_formats(add, drop):
    limits = Limits.parse("512M", "25%", cap_add=add, cap_drop=drop)
    rendered = render(limits, 4096)
    guest = _guest(limits)
    expected = (caps.DEFAULT_DROP - {caps.canonical(c) for c in add}) | {caps.canonical(c) for c in drop}
    assert limits.dropped == expected
    lxc_text = lxc.render(guest, rendered)[lxc.config_path("web1")]
    drops = [line.split("=", 1)[1].split() for line in lxc_text.splitlines() if line.startswith("lxc.cap.drop")]
    assert drops[0] == []  # clears common.conf's list first, so ours is the whole list
    assert {c.upper() for c in drops[1]} == expected
    settings = _nspawn_exec(nspawn.render(guest, rendered, boot=False)[nspawn.settings_path("web1")])
    assert {c.removeprefix("CAP_") for c in settings["DropCapability"].split()} == expected
    assert {c.removeprefix("CAP_") for c in settings.get("Capability", "").split()} == limits.cap_add
    # util-vserver starts from its --secure set and adds/removes per line; it knows capabilities 0..33.
    assert caps.parse_vserver_lines(rendered.vserver["bcapabilities"]) == expected & caps.VSERVER_KNOWN


def test_default_bounding_set_drops_what_reaches_the_host():
    dropped = Limits.parse("512M", "25%").dropped
    assert {"SYS_MODULE", "SYS_RAWIO", "SYS_TIME", "MKNOD", "NET_ADMIN"} <= dropped
    assert "SYS_ADMIN" not in dropped and "CHOWN" not in dropped
    mask = caps.bounding_mask(dropped)
    assert caps.in_mask(mask) == frozenset(caps.NAMES) - dropped


def test_a_disk_limited_guest_also_loses_sys_resource():
    """With SYS_RESOURCE root ignores quota limits (proven under qemu: test_seed_quota_qemu.py)."""
    assert "SYS_RESOURCE" in Limits.parse("512M", "25%", disk="1G").dropped
    assert "SYS_RESOURCE" not in Limits.parse("512M", "25%").dropped
    assert "SYS_RESOURCE" not in Limits.parse("512M", "25%", disk="1G", cap_add=("sys_resource",)).dropped
    quota = Limits.parse("512M", "25%", disk="1G", cap_add=("sys_resource",))
    text = lxc.render(_guest(quota), render(quota, 4096))[lxc.config_path("web1")]
    assert [f.code for f in check.enforcement("web1", text, quota, UNIFIED, 4096, "quota")] == ["quota-bypass"]


@pytest.mark.parametrize("name", ["sys_frobnicate", "", "CAP_"])
def test_unknown_capability_is_refused(name):
    with pytest.raises(caps.CapabilityError):
        Limits.parse("512M", "25%", cap_add=(name,))


def test_a_capability_cannot_be_added_and_dropped():
    with pytest.raises(LimitError, match="both added and dropped"):
        Limits.parse("512M", "25%", cap_add=("mknod",), cap_drop=("CAP_MKNOD",))


@pytest.mark.parametrize("text,expected", [("50M", 50 << 20), ("2G", 2 << 30), ("16M", 16 << 20)])
def test_disk_limit_in_util_vserver_units(text, expected):
    limits = Limits.parse("512M", "25%", disk=text)
    assert limits.disk == expected
    rendered = render(limits, 4096)
    assert int(rendered.vserver["dlimits/0/space_total"]) == expected // 1024  # 1 KiB blocks
    assert int(rendered.vserver["dlimits/0/inodes_total"]) == inodes_for(expected)
    assert rendered.vserver["dlimits/0/reserved"] == "0\n"


@pytest.mark.parametrize("text", ["15M", "lots", "-1G"])
def test_disk_limit_refuses(text):
    with pytest.raises(LimitError):
        parse_disk(text)


def test_limits_record_round_trips():
    limits = Limits.parse("777M", "33.3%", disk="2G", cap_add=("net_admin",), cap_drop=("sys_boot",))
    assert Limits.from_json(limits.to_json()) == limits
    assert "dlimits/0/space_total" not in render(Limits.parse("512M", "25%"), 4096).vserver


def test_disk_limit_ceiling_is_what_dlimits_can_state():
    with pytest.raises(LimitError, match="ceiling"):
        parse_disk("4T")
    assert int(render(Limits.parse("512M", "25%", disk="4095G"), 4096).vserver["dlimits/0/space_total"]) < 1 << 32
