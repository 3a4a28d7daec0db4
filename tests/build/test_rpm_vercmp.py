"""EVR comparison must agree with rpm exactly: upstream's own cases, then rpm itself."""

from __future__ import annotations

import subprocess

import pytest

from imagefactory.build.rpm.rpmvercmp import EQUAL, EVR, GREATER, LESS, evrcmp, overlap, rpmvercmp
from tests.support import need_tool

# rpm's tests/rpmvercmp.at: (a, b, expected)
UPSTREAM = [
    ("1.0", "1.0", 0), ("1.0", "2.0", -1), ("2.0", "1.0", 1), ("2.0.1", "2.0.1", 0), ("2.0", "2.0.1", -1),
    ("2.0.1", "2.0", 1), ("2.0.1a", "2.0.1a", 0), ("2.0.1a", "2.0.1", 1), ("2.0.1", "2.0.1a", -1),
    ("5.5p1", "5.5p1", 0), ("5.5p1", "5.5p2", -1), ("5.5p2", "5.5p1", 1), ("5.5p10", "5.5p10", 0),
    ("5.5p1", "5.5p10", -1), ("5.5p10", "5.5p1", 1), ("10xyz", "10.1xyz", -1), ("10.1xyz", "10xyz", 1),
    ("xyz10", "xyz10", 0), ("xyz10", "xyz10.1", -1), ("xyz10.1", "xyz10", 1), ("xyz.4", "xyz.4", 0),
    ("xyz.4", "8", -1), ("8", "xyz.4", 1), ("xyz.4", "2", -1), ("2", "xyz.4", 1), ("5.5p2", "5.6p1", -1),
    ("5.6p1", "5.5p2", 1), ("5.6p1", "6.5p1", -1), ("6.5p1", "5.6p1", 1), ("6.0.rc1", "6.0", 1),
    ("6.0", "6.0.rc1", -1), ("10b2", "10a1", 1), ("10a2", "10b2", -1), ("1.0aa", "1.0aa", 0),
    ("1.0a", "1.0aa", -1), ("1.0aa", "1.0a", 1), ("10.0001", "10.0001", 0), ("10.0001", "10.1", 0),
    ("10.1", "10.0001", 0), ("10.0001", "10.0039", -1), ("10.0039", "10.0001", 1), ("4.999.9", "5.0", -1),
    ("5.0", "4.999.9", 1), ("20101121", "20101121", 0), ("20101121", "20101122", -1),
    ("20101122", "20101121", 1), ("2_0", "2_0", 0), ("2.0", "2_0", 0), ("2_0", "2.0", 0), ("a", "a", 0),
    ("a+", "a+", 0), ("a+", "a_", 0), ("a_", "a+", 0), ("+a", "+a", 0), ("+a", "_a", 0), ("_a", "+a", 0),
    ("+_", "+_", 0), ("_+", "+_", 0), ("_+", "_", 0), ("+", "_", 0), ("_", "+", 0),
    ("1.0~rc1", "1.0~rc1", 0), ("1.0~rc1", "1.0", -1), ("1.0", "1.0~rc1", 1), ("1.0~rc1", "1.0~rc2", -1),
    ("1.0~rc2", "1.0~rc1", 1), ("1.0~rc1~git123", "1.0~rc1~git123", 0), ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0~rc1", "1.0~rc1~git123", 1), ("1.0^", "1.0^", 0), ("1.0^", "1.0", 1), ("1.0", "1.0^", -1),
    ("1.0^git1", "1.0^git1", 0), ("1.0^git1", "1.0", 1), ("1.0", "1.0^git1", -1), ("1.0^git1", "1.0^git2", -1),
    ("1.0^git2", "1.0^git1", 1), ("1.0^git1", "1.01", -1), ("1.01", "1.0^git1", 1),
    ("1.0^20160101", "1.0^20160101", 0), ("1.0^20160101", "1.0.1", -1), ("1.0.1", "1.0^20160101", 1),
    ("1.0^20160101^git1", "1.0^20160101^git1", 0), ("1.0^20160102", "1.0^20160101^git1", 1),
    ("1.0^20160101^git1", "1.0^20160102", -1), ("1.0~rc1^git1", "1.0~rc1^git1", 0),
    ("1.0~rc1^git1", "1.0~rc1", 1), ("1.0~rc1", "1.0~rc1^git1", -1), ("1.0^git1~pre", "1.0^git1~pre", 0),
    ("1.0^git1", "1.0^git1~pre", 1), ("1.0^git1~pre", "1.0^git1", -1),
]
# Full EVRs: epoch beats everything, a missing epoch is 0, a missing release sorts first.
EVRS = [
    ("1:1.0-1", "2.0-1", 1), ("0:1.0-1", "1.0-1", 0), ("1.0-1", "1.0-2", -1), ("1.0-1.fc41", "1.0-1.fc42", -1),
    ("2:0.1-1", "1:9.9-9", 1), ("1.0", "1.0-5", -1), ("1.0~beta-1", "1.0-0", -1), ("3.0-1^1", "3.0-1", 1),
    ("1.2.3-10.el9", "1.2.3-9.el9", 1), ("0.9.1a-1", "0.9.1-1", 1),
]


@pytest.mark.parametrize("a,b,want", UPSTREAM)
def test_upstream_cases(a, b, want):
    assert rpmvercmp(a, b) == want


@pytest.mark.parametrize("a,b,want", EVRS)
def test_evr_cases(a, b, want):
    assert evrcmp(EVR.parse(a), EVR.parse(b)) == want


def test_agrees_with_rpm_itself():
    """Every case above, asked of the installed rpm in one Lua call (rpm.vercmp compares EVRs)."""
    need_tool("rpm")
    pairs = [(a, b) for a, b, _ in UPSTREAM + EVRS] + [("1.0.0", "1.0"), ("1.0a1", "1.0a"), ("1~", "1"), ("1^", "1")]
    lua = "".join(f'print(rpm.vercmp("{a}", "{b}") .. " ")\n' for a, b in pairs)
    out = subprocess.run(["rpm", "--eval", "%{lua:" + lua + "}"], capture_output=True, text=True, check=True).stdout
    theirs = [int(x) for x in out.split()]
    ours = [evrcmp(EVR.parse(a), EVR.parse(b)) for a, b in pairs]
    assert len(theirs) == len(pairs)
    assert ours == theirs


def test_parse_evr():
    assert EVR.parse("3:1.2-4.fc41") == EVR("3", "1.2", "4.fc41")
    assert EVR.parse("1.2") == EVR("", "1.2", "")
    assert EVR.parse("1.2-3-4") == EVR("", "1.2-3", "4")
    assert str(EVR("0", "1.0", "1")) == "1.0-1" and str(EVR("2", "1.0", "")) == "2:1.0"


@pytest.mark.parametrize("provide,pflags,require,rflags,want", [
    ("1.0-1", EQUAL, "1.0", GREATER | EQUAL, True),
    ("1.0-1", EQUAL, "1.0-2", GREATER | EQUAL, False),
    ("1.0-1", EQUAL, "1.0", EQUAL, True),  # no release on one side: any release matches
    ("1.0-1", EQUAL, "2.0", LESS, True),
    ("2.0-1", EQUAL, "2.0", LESS, False),
    ("1:1.0-1", EQUAL, "2.0", GREATER, True),  # the epoch wins
    ("1.0-1", EQUAL, "1:0.1", GREATER, False),
    ("1.0", GREATER | EQUAL, "3.0", LESS, True),  # two open ranges overlap
    ("3.0", GREATER, "2.0", LESS, False),
])
def test_overlap(provide, pflags, require, rflags, want):
    assert overlap(pflags, EVR.parse(provide), rflags, EVR.parse(require)) is want


def test_unversioned_matches_everything():
    assert overlap(0, None, GREATER, EVR.parse("99"))
    assert overlap(EQUAL, EVR.parse("1"), 0, None)
