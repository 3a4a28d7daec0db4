"""`imagefactory report` on composefs guests: sharing read from listings and upper layers (root)."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.composefs import umount_below
from tests.support.seed import run_cli
from tests.support.unify import make_guest, write

pytestmark = pytest.mark.root


@pytest.fixture
def area(tmp_path):
    yield tmp_path
    umount_below(tmp_path)


def test_report_counts_shared_objects_upper_bytes_and_page_cache(area, capsys):
    guests = []
    for i in range(3):
        g = make_guest(area / f"g{i}")
        write(g / "usr/lib/libbig.so.1", b"\x7fELF big shared library " * 80000)
        guests.append(g)
    store = area / "store"
    code, _, err = run_cli(["unify", *map(str, guests), "--store", str(store), "--mode", "composefs", "--meta", "dir",
                            "-q"], capsys)
    assert code == 0, err
    # Guest 0 replaces the library (private now) and deletes the README (whiteout).
    (guests[0] / "usr/lib/libbig.so.1.new").write_bytes(b"patched library " * 9000)
    os.rename(guests[0] / "usr/lib/libbig.so.1.new", guests[0] / "usr/lib/libbig.so.1")
    os.unlink(guests[0] / "usr/share/doc/README")
    code, out, err = run_cli(["report", "--store", str(store), "--json", "-q"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    t = rep["totals"]
    assert rep["mode"] == "composefs" and t["composefs_guests"] == 3
    size = len(b"\x7fELF big shared library " * 80000)
    assert t["upper_bytes"] >= len(b"patched library " * 9000)
    by_name = {g["name"]: g for g in rep["guests"]}
    assert by_name["g0"]["files"] == by_name["g1"]["files"] - 1  # the README is gone in g0
    private0 = {i["path"] for i in by_name["g0"]["largest_private"]}
    assert "usr/lib/libbig.so.1" in private0
    lib = rep["shared_libraries"]
    assert lib["files"] >= 1 and lib["page_cache_saved_bytes"] >= size  # g1 and g2 share it: one copy cached
    assert t["page_cache_shared_bytes"] >= size
    # g1 and g2 share the 2 MB library (g0 replaced it): one copy saved, minus the metadata layers.
    assert size > t["saved_bytes"] > size - t["metadata_bytes"] - t["store_overhead_bytes"] > 0
    assert t["without_unification_bytes"] - t["saved_bytes"] == t["disk_bytes"]
    code, out, _ = run_cli(["report", "--store", str(store), "-q"], capsys)
    assert code == 0 and "composefs: 3 guests on" in out and "page cache: one copy per object" in out
