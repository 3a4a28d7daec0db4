"""`report --what-if` predicts what unify will save: checked against util-linux hardlink and unify itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import need_tool
from tests.support.report import MTIME, build_copies, du_total
from unify.report.measure import measure
from unify.report.whatif import what_if


def blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def test_what_if_predicts_hardlink_result(tmp_path):
    """After util-linux hardlink with unify's rules, du shows exactly the predicted disk use."""
    need_tool("hardlink", "du")
    roots = build_copies(tmp_path)
    r = what_if(roots)
    b_common, b_tool = blocks(roots[0] / "usr/lib/common.so"), blocks(roots[0] / "usr/bin/tool")
    assert r.mode == "what-if"
    assert r.totals["current_disk_bytes"] == du_total(*roots)
    # common.so: 4 copies (2 in guest0) -> 1; tool: 2 of 3 guests share metadata -> 1.
    assert r.totals["saved_bytes"] == 3 * b_common + b_tool
    by_path = {i.path: i for i in r.top_shared}
    assert by_path["/usr/lib/common.so"].copies == 4
    assert by_path["/usr/bin/tool"].copies == 2
    assert "/etc/config" not in by_path and "/usr/share/tiny" not in by_path
    assert [g.shared_bytes for g in r.guests] == [2 * b_common + b_tool, b_common + b_tool, b_common]
    # Same rules by an independent tool: hardlink links equal content+mode+owner+mtime+xattrs.
    # etc/ (excluded by unify) and tiny files are moved away for the check.
    for g in roots:
        shutil.move(g / "etc", tmp_path / f"{g.name}-etc")
    subprocess.run(["hardlink", "-q", "-X", "-s", "16", *map(str, roots)], check=True, capture_output=True)
    for g in roots:
        shutil.move(tmp_path / f"{g.name}-etc", g / "etc")
    assert du_total(*roots) == r.totals["disk_bytes"]


def test_ignore_mtime_groups_more(tmp_path):
    roots = build_copies(tmp_path, guests=2)
    os.utime(roots[1] / "usr/lib/common.so", (MTIME + 60, MTIME + 60))
    strict = what_if(roots)
    loose = what_if(roots, ignore_mtime=True)
    assert loose.totals["saved_bytes"] - strict.totals["saved_bytes"] == blocks(roots[1] / "usr/lib/common.so")


def test_what_if_matches_a_real_unify_run(tmp_path):
    """Predict, then unify for real (hardlink mode) and measure: the store holds what was predicted."""
    from unify.engine import unify

    roots = build_copies(tmp_path)
    store = tmp_path / "store"
    predicted = what_if(roots)
    unify(roots, store, mode="hardlink")
    after = measure(roots, store)
    assert after.mode == "inode"
    assert after.totals["disk_bytes"] == du_total(store, *roots)
    # Every predicted saving happened; the store adds only its directories and indexes.
    assert after.totals["disk_bytes"] - after.totals["store_overhead_bytes"] == predicted.totals["disk_bytes"]
    # guest0's two copies of common.so become one inode, which du (and the report) count once;
    # the second name shows up as "within_guest_links_bytes" instead.
    b_common = blocks(roots[0] / "usr/lib/common.so")
    expected = [g.shared_bytes for g in predicted.guests]
    expected[0] -= b_common
    assert [g.shared_bytes for g in after.guests] == expected
    assert after.totals["within_guest_links_bytes"] == b_common
    assert after.totals["saved_bytes"] + after.totals["within_guest_links_bytes"] + \
        after.totals["store_overhead_bytes"] == predicted.totals["saved_bytes"]
    assert {i.path: i.links for i in after.top_shared} == {i.path: i.links for i in predicted.top_shared}
    # Without GUEST_ROOT arguments the report covers every guest the store's index knows.
    exe = os.path.join(os.path.dirname(os.sys.executable), "imagefactory")
    doc = json.loads(subprocess.run([exe, "report", "-q", "--json", "--store", str(store)],
                                    check=True, capture_output=True, text=True).stdout)
    assert sorted(g["root"] for g in doc["guests"]) == sorted(map(str, roots))
    assert doc["totals"]["disk_bytes"] == after.totals["disk_bytes"]
    # With the index present, a second what-if reuses its digests and still agrees.
    again = what_if(roots, store)
    assert again.totals["disk_bytes"] == after.totals["disk_bytes"] - after.totals["store_overhead_bytes"]


@pytest.mark.parametrize("min_size", [0, 16, 100_000])
def test_min_size(tmp_path, min_size):
    roots = build_copies(tmp_path, guests=2)
    r = what_if(roots, min_size=min_size)
    paths = {i.path for i in r.top_shared}
    assert ("/usr/share/tiny" in paths) == (min_size <= 5)
    assert ("/usr/lib/common.so" in paths) == (min_size <= 40_000)
