"""`imagefactory report` figures on hand-built unified trees, checked against du and the fixture."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import need_tool
from tests.support.report import SIZES, build_fixture, du, du_total
from unify.report.figures import Builder, Group, link_histogram
from unify.report.measure import measure


def blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


@pytest.fixture
def fx(tmp_path: Path) -> dict:
    need_tool("du")
    return build_fixture(tmp_path)


def test_totals_agree_with_du(fx):
    roots, store = fx["roots"], fx["store"]
    r = measure(roots, store)
    t = r.totals
    assert r.mode == "inode"
    assert t["disk_bytes"] == du_total(store, *roots)
    assert t["apparent_unique_bytes"] == du_total(store, *roots, apparent=True)
    assert t["without_unification_bytes"] == sum(du(g) for g in roots)
    assert t["apparent_bytes"] == sum(du(g, apparent=True) for g in roots)
    for g, fig in zip(roots, r.guests):
        assert fig.disk_bytes == du(g)
        assert fig.apparent_bytes == du(g, apparent=True)
    assert t["saved_bytes"] == t["without_unification_bytes"] - t["disk_bytes"]
    assert t["saved_percent"] == round(100 * t["saved_bytes"] / t["without_unification_bytes"], 2)
    assert r.cumulative[-1]["with_bytes"] == t["disk_bytes"]
    assert r.cumulative[-1]["without_bytes"] == t["without_unification_bytes"]


def test_per_guest_shared_and_private_from_the_fixture(fx):
    roots, e = fx["roots"], fx["entries"]
    r = measure(roots, fx["store"])
    a, b, d = blocks(e["a"]), blocks(e["b"]), blocks(e["d"])
    g1, g2, g3 = r.guests
    assert (g1.shared_bytes, g2.shared_bytes, g3.shared_bytes) == (a + b + d, a + b, a)
    assert (g1.shared_files, g2.shared_files, g3.shared_files) == (4, 2, 1)
    # 4 names in g1 (libfoo twice), but du -s g1 counts the a inode once.
    assert g1.private_bytes == du(roots[0]) - (a + b + d)
    assert g3.share_ratio == pytest.approx(a / du(roots[2]))
    assert [g.files for g in r.guests] == [7, 7, 5]  # regular-file names, links included
    # g3's private copy of b and g2's private hard-linked pair lead their lists.
    assert (g3.largest_private[0].path, g3.largest_private[0].package) == ("/usr/bin/big", "bigpkg")
    assert g2.largest_private[0].path == "/usr/share/doc/x"
    assert g2.largest_private[0].disk_bytes == blocks(roots[1] / "usr/share/doc/x")
    # saved = what each shared entry saves, minus what the store costs beyond them
    store_extra = du(fx["store"]) - a - b - d
    assert r.totals["saved_bytes"] == 2 * a + b - store_extra
    assert r.totals["store_overhead_bytes"] == store_extra


def test_top_lists_name_the_package(fx):
    r = measure(fx["roots"], fx["store"], top=5)
    a, b = blocks(fx["entries"]["a"]), blocks(fx["entries"]["b"])
    by_path = {i.path: i for i in r.top_shared}
    lib = by_path["/usr/lib/x86_64-linux-gnu/libfoo.so.1"]  # smallest name of the inode in g1
    assert (lib.package, lib.guests, lib.copies, lib.links, lib.saved_bytes) == ("libfoo1", 3, 3, 4, 2 * a)
    big = by_path["/usr/bin/big"]
    assert (big.package, big.copies, big.saved_bytes) == ("bigpkg", 2, b)
    assert r.top_shared == sorted(r.top_shared, key=lambda i: -i.saved_bytes)
    assert {p["package"]: p["saved_bytes"] for p in r.top_packages} == {"libfoo1": 2 * a, "bigpkg": b}
    libs = r.shared_libraries
    assert (libs["files"], libs["copies"], libs["page_cache_saved_bytes"]) == (1, 3, 2 * SIZES["a"])


def test_mode_without_store_marker(fx):
    (fx["store"] / ".imagefactory-store").unlink()
    assert measure(fx["roots"], fx["store"]).mode == "inode"


def test_store_histogram_counts_links(fx):
    r = measure(fx["roots"], fx["store"])
    s = r.store
    e = fx["entries"]
    assert (s.entries, s.orphans, s.disk_bytes) == (4, 1, du(fx["store"]))
    # a: store + 4 guest names = 5 links; b: 3; c: 1 (orphan); d: 2
    assert s.link_histogram == [
        {"min_links": 1, "max_links": 1, "entries": 1, "disk_bytes": blocks(e["c"])},
        {"min_links": 2, "max_links": 2, "entries": 1, "disk_bytes": blocks(e["d"])},
        {"min_links": 3, "max_links": 4, "entries": 1, "disk_bytes": blocks(e["b"])},
        {"min_links": 5, "max_links": 8, "entries": 1, "disk_bytes": blocks(e["a"])},
    ]


def test_link_histogram_buckets():
    assert link_histogram([]) == []
    got = link_histogram([(1, 1), (2, 2), (3, 4), (4, 8), (9, 16), (100, 32)])
    assert [(h["min_links"], h["max_links"], h["entries"], h["disk_bytes"]) for h in got] == [
        (1, 1, 1, 1), (2, 2, 1, 2), (3, 4, 2, 12), (9, 16, 1, 16), (65, 128, 1, 32)]


def test_cumulative_curve_adds_guests_in_order(fx):
    roots, e = fx["roots"], fx["entries"]
    r = measure(roots, fx["store"])
    overhead = r.totals["store_overhead_bytes"]
    a, b, d = blocks(e["a"]), blocks(e["b"]), blocks(e["d"])
    g1, g2, g3 = r.guests
    assert [p["with_bytes"] for p in r.cumulative] == [
        overhead + g1.private_bytes + a + b + d,
        overhead + g1.private_bytes + a + b + d + g2.private_bytes,
        overhead + g1.private_bytes + a + b + d + g2.private_bytes + g3.private_bytes,
    ]
    assert [p["without_bytes"] for p in r.cumulative] == [du(roots[0]), du(roots[0]) + du(roots[1]),
                                                          sum(du(g) for g in roots)]


def test_guests_linked_without_a_store(tmp_path):
    """util-linux hardlink over guests: no store, sharing = one inode reached from two guests."""
    g1, g2 = tmp_path / "g1", tmp_path / "g2"
    for g in (g1, g2):
        (g / "usr").mkdir(parents=True)
    (g1 / "usr/shared").write_bytes(os.urandom(30_000))
    os.link(g1 / "usr/shared", g2 / "usr/shared")
    (g2 / "usr/own").write_bytes(os.urandom(5_000))
    r = measure([g1, g2])
    assert r.store is None
    shared = blocks(g1 / "usr/shared")
    assert [g.shared_bytes for g in r.guests] == [shared, shared]
    assert r.totals["disk_bytes"] == du_total(g1, g2)
    assert r.totals["saved_bytes"] == shared


def test_hostile_guest_is_not_followed(fx, tmp_path):
    """Symlinks out of the guest (files, the dpkg database) are counted as symlinks, never read."""
    roots = fx["roots"]
    g = roots[0]
    evil_db = tmp_path / "evil-db"
    evil_db.mkdir()
    (evil_db / "evil.list").write_text("/etc/conf\n")
    os.rename(g / "var/lib/dpkg/info", g / "var/lib/dpkg/real-info")
    os.symlink(str(evil_db), g / "var/lib/dpkg/info")
    os.symlink("/", g / "usr/share/doc/root")
    r = measure(roots, fx["store"])
    assert r.guests[0].disk_bytes == du(g)
    assert all(i.package != "evil" for i in r.guests[0].largest_private)
    assert r.totals["disk_bytes"] == du_total(fx["store"], *roots)


def test_cli_json_schema_and_errors(fx, tmp_path):
    roots, store = fx["roots"], fx["store"]
    exe = [os.path.join(os.path.dirname(os.sys.executable), "imagefactory")]
    out = subprocess.run([*exe, "report", "-q", "--json", "--store", str(store), *map(str, roots)],
                         capture_output=True, text=True, check=True).stdout
    doc = json.loads(out)
    assert doc["schema"] == 1 and doc["mode"] == "inode"
    assert set(doc) == {"schema", "mode", "totals", "guests", "store", "top_shared", "top_packages",
                        "shared_libraries", "cumulative"}
    assert set(doc["guests"][0]) >= {"root", "name", "files", "apparent_bytes", "disk_bytes", "private_bytes",
                                     "shared_bytes", "shared_files", "share_ratio", "largest_private"}
    assert doc["totals"]["disk_bytes"] == du_total(store, *roots)
    text = subprocess.run([*exe, "report", "-q", "--store", str(store), *map(str, roots)],
                          capture_output=True, text=True, check=True).stdout
    assert "saved" in text and "libfoo1" in text and "Links" in text
    bad = subprocess.run([*exe, "report", str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("imagefactory: error:") and len(bad.stderr.strip().splitlines()) == 1
    link = tmp_path / "link-to-guest"
    os.symlink(roots[0], link)
    bad = subprocess.run([*exe, "report", str(link)], capture_output=True, text=True)
    assert bad.returncode == 1 and "not a directory" in bad.stderr


SPEC = """Name: rpmthing
Version: 1.0
Release: 1
Summary: report test package
License: MIT
BuildArch: noarch
%description
Owns one shared library.
%install
mkdir -p %{buildroot}/usr/lib64
head -c 6000 /dev/zero | tr '\\\\0' x > %{buildroot}/usr/lib64/librpmthing.so.1
%files
/usr/lib64/librpmthing.so.1
"""


@pytest.mark.root
def test_rpm_database_names_the_owner(tmp_path):
    """Fedora-style guests: the owner comes from the guest's rpm database, read through rpm."""
    need_tool("rpm", "rpmbuild")
    top = tmp_path / "rpmbuild"
    (top / "SPECS").mkdir(parents=True)
    (top / "SPECS/rpmthing.spec").write_text(SPEC)
    subprocess.run(["rpmbuild", "--quiet", "--define", f"_topdir {top}", "-bb", str(top / "SPECS/rpmthing.spec")],
                   check=True, capture_output=True)
    package = next(top.glob("RPMS/noarch/rpmthing-*.rpm"))
    roots = [tmp_path / "f1", tmp_path / "f2"]
    for g in roots:
        g.mkdir()
        subprocess.run(["rpm", "--root", str(g), "--dbpath", "/var/lib/rpm", "--initdb"], check=True)
        subprocess.run(["rpm", "--root", str(g), "--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts",
                        str(package)], check=True, capture_output=True)
    lib = "usr/lib64/librpmthing.so.1"
    os.unlink(roots[1] / lib)
    os.link(roots[0] / lib, roots[1] / lib)
    r = measure(roots)
    assert [(i.path, i.package, i.copies) for i in r.top_shared] == [("/" + lib, "rpmthing", 2)]
    assert r.top_packages == [{"package": "rpmthing", "files": 1, "saved_bytes": blocks(roots[0] / lib)}]


def test_absurd_nesting_is_refused(tmp_path):
    from imagefactory.core.errors import UnsafeInput

    g = tmp_path / "deep"
    (g / "/".join(["d"] * 520)).mkdir(parents=True)
    with pytest.raises(UnsafeInput):
        measure([g])


def test_top_lists_keep_only_what_they_show(tmp_path):
    """Thousands of shared groups: the lists equal those of a full sort, ties in the order met."""
    roots = [tmp_path / "a", tmp_path / "b"]  # no dpkg database: no owners
    b = Builder(roots, top=3)
    expected = []
    for n in range(5_000):
        path = f"/usr/lib/f{n % 7}.so.1" if n % 3 == 0 else f"/usr/share/f{n % 11}"
        grp = Group(100, 4096 * (n % 13), (n % 2, path))
        grp.occ.extend([0, 1] if n % 17 else [0])  # every 17th is one guest's own file
        grp.paths.extend(grp.occ)
        grp.inodes = len(grp.occ)
        b.settle(grp, True, n)
        if len(grp.occ) == 2:
            expected.append((-grp.disk, path, n))
    expected.sort()
    r = b.finish("what-if", None, True, {})
    assert [(i.path, i.guest, -i.saved_bytes) for i in r.top_shared] == \
        [(p, roots[n % 2].name, s) for s, p, n in expected[:3]]
    carrying = [e for e in expected[:2000] if e[0] < 0]
    assert r.top_packages == [{"package": "(no package)", "files": len(carrying),
                               "saved_bytes": -sum(e[0] for e in carrying)}]
    libs = [e for e in expected if ".so" in e[1]]
    assert r.shared_libraries["files"] == len(libs)
    assert r.shared_libraries["copies"] == 2 * len(libs)
    assert [(i["path"], i["saved_bytes"]) for i in r.shared_libraries["top"]] == [(p, -s) for s, p, _ in libs[:3]]
