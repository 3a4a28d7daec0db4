"""unify at scale: the link limit on a real ext4, the index's stat-only re-runs, dry runs that write nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.unify import write
from unify import index, maintain
from unify.engine import unify
from unify.report.measure import measure
from unify.report.text import render_text
from unify.store import Store

EXT4_LINK_MAX = 65_000
CONTENT = b"the same licence text, repeated under many names in many guests\n"


@pytest.fixture
def ext4(tmp_path):
    """A fresh ext4 filesystem on a loop device (ext4 allows 65,000 links per inode)."""
    img, mnt = tmp_path / "ext4.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(400 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-N", "150000", "-b", "1024", "-I", "128", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.root
def test_link_limit_starts_a_second_entry_and_every_path_still_resolves(ext4):
    """65,600 guest files want one content: the entry fills up at ext4's limit, a second entry
    takes the rest, the run never fails or copies silently, and status/verify agree."""
    per_guest, guests = 32_800, [ext4 / "g0", ext4 / "g1"]
    paths = [g / f"usr/share/doc/pkg{i // 1000:03d}/copyright{i % 1000:03d}" for g in guests for i in range(per_guest)]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            f.write(CONTENT)
        os.utime(p, (1_700_000_000, 1_700_000_000))
    store = ext4 / "store"
    s = unify(guests, store, mode="hardlink")
    assert s.failed == 0 and s.changed == 0
    assert s.linked == len(paths)
    assert s.overflow_entries == 1 and s.new_entries == 2
    assert any("link limit" in w for w in s.warnings)
    entries = sorted(Store(store).entries(), key=lambda e: e.copy)
    assert [e.copy for e in entries] == [0, 1]
    assert entries[0].nlink == EXT4_LINK_MAX  # full: the store name + 64,999 guest names
    assert entries[0].nlink + entries[1].nlink - 2 == len(paths)
    # Every guest path resolves to the content, linked to one of the two entries; nothing was copied.
    inodes = {e.ino for e in entries}
    for p in paths:
        st = p.stat()
        assert st.st_ino in inodes and st.st_size == len(CONTENT)
    assert all(p.read_bytes() == CONTENT for p in paths[::997])
    assert maintain.verify(store)[1] == []
    st = maintain.status(store)
    assert (st.entries, st.overflow_entries, st.guest_links) == (2, 1, len(paths))
    out = subprocess.run([sys.executable, "-c", "from imagefactory.cli import main; main()", "unify", "--status",
                          "--store", str(store)], capture_output=True, text=True, check=True).stdout
    assert "Link limit:   1 overflow entries" in out
    report = measure(guests, store)  # ... and in the report
    assert report.store is not None and report.store.overflow_entries == 1
    assert "Link limit: 1 overflow entries" in render_text(report, 5)
    # A re-run decides every file by stat alone: nothing hashed, nothing opened, nothing linked.
    again = unify(guests, store, mode="hardlink")
    assert (again.hashed, again.linked, again.already_unified, again.new_entries) == (0, 0, len(paths), 0)
    # A new guest file with the same content goes to the entry that still has room.
    extra = write(guests[0] / "usr/share/doc/late/copyright", CONTENT)
    third = unify(guests, store, mode="hardlink")
    assert (third.linked, third.new_entries, third.failed) == (1, 0, 0)
    assert extra.stat().st_ino == entries[1].ino


def test_rerun_decides_by_stat_alone_and_never_opens_unified_files(tmp_path, monkeypatch):
    """An unchanged re-run reads no content and opens no unified file; a guest that replaces a file
    (new inode) or drops one is seen by stat, and only the new file is read."""
    from unify.engine import Unifier

    guests = [tmp_path / f"g{i}" for i in range(3)]
    for g in guests:
        write(g / "usr/bin/tool", b"#!/bin/sh\necho shared tool\n" * 40, 0o755)
        write(g / "usr/lib/libx.so", b"\x7fELF shared library body " * 200)
        for i in range(20):
            write(g / f"usr/share/f{i:02d}", f"file {i} shared by every guest\n".encode() * 4)
    store = tmp_path / "store"
    first = unify(guests, store, mode="hardlink")
    assert first.linked == 66
    recs = index.read(store, guests[0])
    rec = recs["usr/bin/tool"]
    assert isinstance(rec, index.Record) and rec.copy == 0 and rec.entry in Store(store).names()
    assert rec.linked_as(os.lstat(guests[0] / "usr/bin/tool"))
    opened: list[str] = []
    real_open = Unifier._open_guest_file
    monkeypatch.setattr(Unifier, "_open_guest_file", lambda self, ref, dirs: opened.append(ref.rel)
                        or real_open(self, ref, dirs))
    again = unify(guests, store, mode="hardlink", workers=1)  # the spy counts in this process only
    assert (again.hashed, again.linked, again.already_unified) == (0, 0, 66)
    assert opened == []
    os.unlink(guests[1] / "usr/share/f07")
    write(guests[1] / "usr/lib/libx.so.new", b"\x7fELF shared library BODY " * 200)
    os.rename(guests[1] / "usr/lib/libx.so.new", guests[1] / "usr/lib/libx.so")
    third = unify(guests, store, mode="hardlink", workers=1)
    assert (third.already_unified, third.hashed, third.linked) == (64, 1, 0)
    assert opened == ["usr/lib/libx.so"]  # its size matches an entry's, so it is read; nothing else
    recs = index.read(store, guests[1])
    assert "usr/share/f07" not in recs and recs["usr/lib/libx.so"].copy is None


def test_dry_run_writes_nothing_and_reads_an_existing_index(tmp_path):
    guests = [tmp_path / f"g{i}" for i in range(2)]
    for g in guests:
        write(g / "usr/bin/tool", b"#!/bin/sh\necho shared tool\n" * 40, 0o755)
    store = tmp_path / "store"
    dry = unify(guests, store, mode="auto", dry_run=True)
    assert not store.exists()
    assert dry.linked == 2 and dry.new_entries == 1
    unify(guests, store, mode="hardlink")
    listing = sorted(os.listdir(store))
    dry = unify(guests, store, mode="hardlink", dry_run=True)
    assert (dry.already_unified, dry.linked, dry.hashed) == (2, 0, 0)
    assert sorted(os.listdir(store)) == listing
    assert not any(Path(store, n).name.endswith(("-journal", "-wal", "-shm")) for n in os.listdir(store))


def test_worker_processes_give_the_same_index_and_figures_as_one(tmp_path):
    """Guests walked and hashed in two worker processes: the same links, entries, index rows and counts
    as in one process; a re-run finds every unified file by readdir's inode number in the workers too."""
    results = []
    for workers in (1, 2):
        base = tmp_path / f"w{workers}"
        guests = [base / f"g{i}" for i in range(4)]
        for i, g in enumerate(guests):
            write(g / "usr/bin/tool", b"#!/bin/sh\necho shared tool\n" * 40, 0o755)
            write(g / "usr/share/doc/own", f"guest {i} only\n".encode() * 10)  # a unique size per guest
            for j in range(12):
                write(g / f"usr/share/f{j:02d}", f"file {j} shared by every guest\n".encode() * (4 + j % 3))
            write(g / "usr/share/pair", b"twin of guest %d" % (i // 2) * 9)  # shared by two guests
        store = base / "store"
        first = unify(guests, store, mode="hardlink", workers=workers)
        again = unify(guests, store, mode="hardlink", workers=workers)
        rows = {g.name: {p: (r.digest, r.metakey, r.copy) for p, r in index.read(store, g).items()} for g in guests}
        results.append((first, again, rows, sorted(Store(store).names())))
    (one, one_again, one_rows, one_names), (two, two_again, two_rows, two_names) = results
    figures = ("files", "candidates", "hashed", "linked", "new_entries", "duplicates", "bytes_saved", "changed")
    assert [getattr(one, f) for f in figures] == [getattr(two, f) for f in figures]
    assert one.linked == 4 * 13 + 4 and one.new_entries == 13 + 2
    assert one_rows == two_rows and one_names == two_names
    assert (two_again.already_unified, two_again.by_inode, two_again.hashed) == (one.linked, one.linked, 0)
    assert (one_again.already_unified, one_again.by_inode) == (one.linked, one.linked)
