"""`report --what-if` predicts what unify will save: checked against util-linux hardlink and unify itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import need_tool
from tests.support.report import MTIME, build_copies, build_mixed, du, du_total
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


# build_mixed's groups, most saved first (4 KiB blocks): (path, guest of that name, size, package,
# guests of each copy (one per guest inode), extra names by guest). The two tie.so groups save the
# same under the same path: the one met first (guest0) comes first, though its key sorts last.
MIXED_SHARED = [
    ("/usr/share/doc/big", 0, 60_000, "tie", [0, 1, 2, 2, 3], []),
    ("/usr/lib/libc.so.6", 0, 30_000, "libc6", [0, 1, 2, 3], []),
    ("/usr/bin/perl", 0, 20_000, "perl-base", [0, 1, 2, 3], [3]),
    ("/usr/share/conf.d/setting", 1, 17_000, None, [1, 2, 3], []),
    ("/usr/bin/tool", 0, 12_345, None, [0, 1, 2], []),
    ("/usr/share/doc/renamed", 0, 5_000, None, [0, 1, 2, 3], []),
    ("/usr/lib/tie.so", 0, 8_000, "tie", [0, 1], []),
    ("/usr/lib/tie.so", 2, 8_000, "tie", [2, 3], []),
]
LISTS = ["/var/lib/dpkg/info/libc6:amd64.list", "/var/lib/dpkg/info/perl-base.list", "/var/lib/dpkg/info/tie.list"]
COMMON_PRIVATE = ["/etc/config", "/usr/share/tiny", "/usr/share/own", "/usr/share/same-size", *LISTS]


def _expected_mixed(roots: list[Path], top: int) -> dict:
    """The --json document of what_if(build_mixed roots), from the fixture's design and du/lstat.

    (Captured from the implementation that kept one record per file, before the scratch index.)
    """
    def blk(g: int, rel: str) -> int:
        return blocks(roots[g] / rel.lstrip("/"))

    names = [r.name for r in roots]
    doc = roots[3] / "usr/share/doc"
    first_link = next(n for n in os.listdir(doc) if n in ("x", "y"))  # the name the walk meets first
    private = [
        [*COMMON_PRIVATE, "/usr/share/conf.d/setting", "/var/lib/dpkg/info/settings.conffiles"],
        COMMON_PRIVATE, COMMON_PRIVATE,
        [*COMMON_PRIVATE, "/usr/bin/tool", f"/usr/share/doc/{first_link}"],
    ]
    items, shared, shared_files, first_seen = [], [0] * 4, [0] * 4, [0] * 4
    for path, g0, size, package, occ, extra in MIXED_SHARED:
        disk = blk(g0, path)
        items.append({"path": path, "guest": names[g0], "size": size, "disk_bytes": disk, "package": package,
                      "guests": len(set(occ)), "copies": len(occ), "links": len(occ) + len(extra),
                      "saved_bytes": disk * (len(occ) - 1)})
        for g in occ:
            shared[g] += disk
        for g in occ + extra:
            shared_files[g] += 1
        first_seen[min(occ)] += disk
    assert [i["saved_bytes"] for i in items] == sorted((i["saved_bytes"] for i in items), reverse=True)
    saved = sum(i["saved_bytes"] for i in items)
    without = sum(du(r) for r in roots)
    guests, cumulative, run_without, run_with = [], [], 0, 0
    for g, root in enumerate(roots):
        disk = du(root)
        largest = sorted(((blk(g, p), os.lstat(root / p.lstrip("/")).st_size, p) for p in private[g]), reverse=True)
        guests.append({
            "root": str(root), "name": names[g], "files": [15, 14, 15, 17][g],
            "apparent_bytes": du(root, apparent=True), "disk_bytes": disk,
            "shared_bytes": shared[g], "shared_files": shared_files[g],
            "largest_private": [{"path": p, "guest": names[g], "size": s, "disk_bytes": d, "package": None,
                                 "guests": 1, "copies": 1, "links": 1, "saved_bytes": 0}
                                for d, s, p in largest[:top]],
            "private_bytes": disk - shared[g], "share_ratio": round(shared[g] / disk, 6),
        })
        run_without += disk
        run_with += disk - shared[g] + first_seen[g]
        cumulative.append({"guests": g + 1, "name": names[g], "without_bytes": run_without, "with_bytes": run_with})
    assert shared_files == [6, 7, 8, 7]
    packages = {}
    for i in items:
        n, b = packages.get(i["package"] or "(no package)", (0, 0))
        packages[i["package"] or "(no package)"] = (n + 1, b + i["saved_bytes"])
    libs = [i for i in items if ".so" in i["path"]]
    return {
        "schema": 1,
        "mode": "what-if",
        "totals": {
            "guests": 4, "files": 61, "apparent_bytes": sum(du(r, apparent=True) for r in roots),
            "without_unification_bytes": without, "disk_bytes": without - saved, "saved_bytes": saved,
            "saved_percent": round(100.0 * saved / without, 2), "shared_bytes": sum(shared),
            "store_overhead_bytes": 0, "within_guest_links_bytes": 0,
            "current_disk_bytes": du_total(*roots), "apparent_unique_bytes": du_total(*roots, apparent=True),
        },
        "guests": guests,
        "store": None,
        "top_shared": items[:top],
        "top_packages": [{"package": p, "files": n, "saved_bytes": b}
                         for p, (n, b) in sorted(packages.items(), key=lambda kv: (-kv[1][1], kv[0]))][:top],
        "shared_libraries": {"files": 3, "bytes": 46_000, "copies": 8, "page_cache_saved_bytes": 106_000,
                             "top": libs[:top]},
        "cumulative": cumulative,
    }


@pytest.mark.parametrize("top", [20, 2])
def test_what_if_report_on_mixed_guests(tmp_path, top):
    """Every figure and list of the report, on guests with each case the what-if tells apart."""
    need_tool("du")
    roots = build_mixed(tmp_path)
    assert what_if(roots, top=top).to_dict() == _expected_mixed(roots, top)
