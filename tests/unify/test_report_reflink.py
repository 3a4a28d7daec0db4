"""Reflink sharing: no shared inode, so the report reads extents (FIEMAP) or the unify index.

Runs on a loop-mounted XFS with reflink=1 that the test creates (root only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import need_tool
from tests.support.report import build_copies, du, du_total
from unify import index as uindex
from unify.probe import clone_file
from unify.report.measure import measure
from unify.report.whatif import what_if

pytestmark = pytest.mark.root


@pytest.fixture
def xfs(tmp_path: Path):
    need_tool("mkfs.xfs", "mount", "umount")
    image, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def _clone(src: Path, dst: Path) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        clone_file(d.fileno(), s.fileno())
    shutil.copystat(src, dst)


def blocks(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def test_reflinked_guests_by_extents(xfs):
    """Guests cloned from store entries by hand, no index: FIEMAP finds the sharing."""
    store = xfs / "store"
    (store / "objects/aa").mkdir(parents=True)
    (store / ".imagefactory-store").write_text('{"format": 1, "hash": "xxh3-128", "mode": "reflink"}\n')
    lib = store / "objects/aa" / f"{'a' * 32}-{'a' * 16}-200000"
    lib.write_bytes(os.urandom(200_000))
    roots = []
    for i in range(3):
        g = xfs / f"g{i}"
        (g / "usr/lib").mkdir(parents=True)
        _clone(lib, g / "usr/lib/libbig.so.1")
        (g / "usr/lib/own").write_bytes(os.urandom(30_000 + 4096 * i))
        roots.append(g)
    os.sync()
    r = measure(roots, store)
    assert r.mode == "reflink"
    shared = blocks(lib)
    assert [g.shared_bytes for g in r.guests] == [shared] * 3
    assert [g.disk_bytes for g in r.guests] == [du(g) for g in roots]
    # du counts each clone in full; the extents exist once.
    assert r.totals["du_disk_bytes"] == du_total(store, *roots)
    assert r.totals["disk_bytes"] == du_total(store, *roots) - 3 * shared
    assert r.totals["saved_bytes"] == sum(du(g) for g in roots) - r.totals["disk_bytes"]
    top = r.top_shared[0]
    assert (top.path, top.copies, top.saved_bytes) == ("/usr/lib/libbig.so.1", 3, 2 * shared)
    assert r.shared_libraries["page_cache_saved_bytes"] == 2 * 200_000
    # A guest that rewrites its copy in place no longer shares it.
    with open(roots[2] / "usr/lib/libbig.so.1", "r+b") as f:
        f.write(os.urandom(200_000))
    os.sync()
    r2 = measure(roots, store)
    assert r2.guests[2].shared_bytes == 0
    assert r2.totals["disk_bytes"] == du_total(store, *roots) - 2 * shared
    # Without the store's marker the entries' shared extents still tell the mode.
    (store / ".imagefactory-store").unlink()
    assert measure(roots, store).mode == "reflink"
    assert measure(roots, store, sharing="inode").totals["saved_bytes"] == -du(store)  # du's blind view


def test_real_unify_run_in_reflink_mode(xfs):
    """unify --mode reflink, then report from its index and from FIEMAP: same numbers, as predicted."""
    from unify.engine import unify

    roots = build_copies(xfs)
    store = xfs / "store"
    predicted = what_if(roots)
    unify(roots, store, mode="reflink")
    os.sync()
    assert all(uindex.read(store, g) for g in roots)  # the engine wrote its index
    by_index = measure(roots, store)
    assert by_index.mode == "reflink"
    assert by_index.totals["disk_bytes"] - by_index.totals["store_overhead_bytes"] == predicted.totals["disk_bytes"]
    for g in roots:
        uindex.remove(store, g)
    by_extents = measure(roots, store)  # the store lost its index files: less overhead, same sharing
    for key in ("without_unification_bytes", "shared_bytes"):
        assert by_extents.totals[key] == by_index.totals[key], key
    assert by_extents.totals["disk_bytes"] - by_extents.totals["store_overhead_bytes"] == predicted.totals["disk_bytes"]
    assert [g.shared_bytes for g in by_extents.guests] == [g.shared_bytes for g in by_index.guests]
