"""One Limits value, three host formats: parsing and consistency."""

from __future__ import annotations

import configparser
from fractions import Fraction
from pathlib import Path

import pytest

from imagefactory.seed import lxc, nspawn
from imagefactory.seed.guest import Guest, Interface
from imagefactory.seed.limits import MEMORY_FLOOR, LimitError, Limits, parse_memory, parse_share, render, token_bucket


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
    return dict(line.split(" = ", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize("memory,cpu,page", [
    ("512M", "25%", 4096), ("64M", "100%", 4096), ("3G", "12.5%", 16384), ("1000000000", "0.1%", 65536),
    ("777M", "33.3%", 4096),
])
def test_three_formats_agree(memory, cpu, page):
    """Parse what each renderer wrote and check all formats state the same limits."""
    limits = Limits.parse(memory, cpu)
    rendered = render(limits, page)
    guest = _guest(limits)
    v = {k: int(s) for k, s in rendered.vserver.items()}
    sd = _systemd_values(nspawn.render(guest, rendered, boot=True)[nspawn.dropin_path("web1")])
    lx = _lxc_values(lxc.render(guest, rendered)[lxc.config_path("web1")])

    hard_bytes = v["rlimits/rss.hard"] * page
    soft_bytes = v["rlimits/rss.soft"] * page
    assert hard_bytes == int(sd["MemoryMax"]) == int(lx["lxc.cgroup2.memory.max"])
    assert soft_bytes == int(sd["MemoryHigh"]) == int(lx["lxc.cgroup2.memory.high"])
    assert 0 <= limits.memory - hard_bytes < page  # whole pages, never above what was asked
    assert soft_bytes < hard_bytes

    quota, period = map(int, lx["lxc.cgroup2.cpu.max"].split())
    ratio = Fraction(v["sched/fill-rate"], v["sched/interval"])
    assert ratio == Fraction(quota, period) == Fraction(sd["CPUQuota"].rstrip("%")) / 100 == limits.cpu_percent / 100
    assert v["sched/tokens-min"] < v["sched/tokens-max"] and v["sched/tokens"] <= v["sched/tokens-max"]
    assert v["rlimits/as"] >= v["rlimits/rss.hard"]
