"""unify.engine on small trees: what is linked, what never is, incremental runs, updates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.unify import make_guest, tree_state, write
from unify import index
from unify.engine import unify
from unify.store import Store


@pytest.fixture
def guests(tmp_path):
    return [make_guest(tmp_path / f"g{i}") for i in range(3)]


def ino(p: Path) -> int:
    return p.lstat().st_ino


def test_hardlink_mode_links_identical_files_and_nothing_else(tmp_path, guests):
    before = [tree_state(g) for g in guests]
    store = tmp_path / "store"
    s = unify(guests, store, mode="hardlink")
    # tool + libx in 3 guests; README is a (declared) conffile, /etc and /var are excluded.
    assert (s.linked, s.new_entries, s.duplicates) == (6, 2, 4)
    assert s.conffiles == 6 and s.too_small == 3 and s.special == 3
    sizes = [(guests[0] / rel).stat().st_size for rel in ("usr/bin/tool", "usr/lib/libx.so.1")]
    assert s.bytes_saved == 2 * sum(sizes)
    for rel in ("usr/bin/tool", "usr/lib/libx.so.1"):
        assert len({ino(g / rel) for g in guests}) == 1
        assert (guests[0] / rel).stat().st_nlink == 4  # three guests + the store
    for rel in ("usr/share/doc/README", "etc/app.conf", "var/cache/big", "usr/share/tiny"):
        assert len({ino(g / rel) for g in guests}) == 3
    assert [tree_state(g) for g in guests] == before  # same content, modes, symlinks
    assert (guests[0] / "usr/bin/link").is_symlink()
    names = Store(store).names()
    assert len(names) == 2
    for d in (store, store / "objects", *{Store(store).path_of(n).parent for n in names}):
        assert d.stat().st_mode & 0o777 == 0o700  # guests holding links cannot browse the store


def test_metadata_is_part_of_the_key(tmp_path):
    data = b"same bytes in every file here\n" * 5
    a = write(tmp_path / "a/f", data, 0o644)
    b = write(tmp_path / "b/f", data, 0o600)  # other mode
    c = write(tmp_path / "c/f", data, 0o644, mtime=1_600_000_000)  # other mtime
    d = write(tmp_path / "d/f", data, 0o644)
    os.setxattr(d, "user.tag", b"x")  # other xattrs
    e = write(tmp_path / "e/f", data, 0o644)
    roots = [tmp_path / n for n in "abcde"]
    s = unify(roots, tmp_path / "store", mode="hardlink")
    assert s.linked == 2 and ino(a) == ino(e)
    assert len({ino(a), ino(b), ino(c), ino(d)}) == 4
    assert os.getxattr(d, "user.tag") == b"x"
    # --ignore-mtime: c may join a's entry (another key, so a second store).
    s2 = unify([tmp_path / "a", tmp_path / "c"], tmp_path / "store2", mode="hardlink", ignore_mtime=True)
    assert s2.linked == 2 and ino(a) == ino(c)


def test_symlinks_are_never_followed_out_of_the_guest(tmp_path):
    secret = write(tmp_path / "host/secret", b"host-only secret content, must stay\n" * 3)
    g1 = tmp_path / "g1"
    write(g1 / "usr/x", secret.read_bytes())
    g2 = tmp_path / "g2"
    (g2 / "usr").mkdir(parents=True)
    (g2 / "usr/x").symlink_to(secret)  # a file symlink to the host
    (g2 / "usr/lib").symlink_to(tmp_path / "host")  # a directory symlink to the host
    s = unify([g1, g2], tmp_path / "store", mode="hardlink")
    assert s.linked == 0 and s.special == 2  # both symlinks skipped, neither followed
    assert secret.stat().st_nlink == 1
    assert os.readlink(g2 / "usr/x") == str(secret)


def test_dry_run_changes_no_guest_but_counts_like_a_real_run(tmp_path, guests):
    before = [tree_state(g) for g in guests]
    inodes = [ino(g / "usr/bin/tool") for g in guests]
    dry = unify(guests, tmp_path / "store", mode="hardlink", dry_run=True)
    assert [tree_state(g) for g in guests] == before
    assert [ino(g / "usr/bin/tool") for g in guests] == inodes
    assert not (tmp_path / "store").exists()  # a dry run writes nothing, not even the store skeleton
    real = unify(guests, tmp_path / "store", mode="hardlink")
    assert (dry.linked, dry.new_entries, dry.bytes_saved) == (real.linked, real.new_entries, real.bytes_saved)
    # A dry run over a store reads its index but changes nothing in it.
    write(guests[0] / "usr/bin/new", b"a file the index has never seen\n" * 3)
    index_file = tmp_path / "store" / "index.sqlite"
    before_index = (index_file.stat().st_mtime_ns, index_file.stat().st_size)
    again = unify(guests, tmp_path / "store", mode="hardlink", dry_run=True)
    assert (again.already_unified, again.linked) == (real.linked, 0)
    assert (index_file.stat().st_mtime_ns, index_file.stat().st_size) == before_index


def test_rerun_hashes_only_changed_files(tmp_path, guests):
    store = tmp_path / "store"
    first = unify(guests, store, mode="hardlink")
    assert first.hashed == 6
    again = unify(guests, store, mode="hardlink")
    assert (again.hashed, again.linked, again.already_unified) == (0, 0, 6)
    # A guest gets a new file and replaces one (package-manager style): only those are read.
    write(guests[2] / "usr/bin/new", b"brand new binary in one guest only\n")
    write(guests[1] / "usr/bin/tool.new", b"#!/bin/sh\necho updated tool\n" * 40, 0o755)
    os.rename(guests[1] / "usr/bin/tool.new", guests[1] / "usr/bin/tool")
    third = unify(guests, store, mode="hardlink")
    assert third.hashed == 0  # both changed files have a unique size: nothing to compare them with
    assert third.already_unified == 5 and third.linked == 0
    write(guests[0] / "usr/bin/new", b"brand new binary in one guest only\n")
    fourth = unify(guests, store, mode="hardlink")
    assert fourth.hashed == 2 and fourth.linked == 2


def test_dpkg_style_update_leaves_store_and_other_guests_alone(tmp_path, guests):
    store = tmp_path / "store"
    unify(guests, store, mode="hardlink")
    entry = Store(store).path_of(next(iter(Store(store).names())))
    entry_bytes = {n: Store(store).path_of(n).read_bytes() for n in Store(store).names()}
    target = guests[0] / "usr/bin/tool"
    write(target.with_name("tool.dpkg-new"), b"#!/bin/sh\necho v2\n" * 50, 0o755)
    os.rename(target.with_name("tool.dpkg-new"), target)
    assert target.read_bytes().startswith(b"#!/bin/sh\necho v2")
    assert (guests[1] / "usr/bin/tool").read_bytes().startswith(b"#!/bin/sh\necho shared tool")
    assert {n: Store(store).path_of(n).read_bytes() for n in Store(store).names()} == entry_bytes
    assert entry.exists()


def test_corrupted_store_entry_is_never_linked(tmp_path, guests):
    """Same name (digest + key), different bytes: the byte comparison refuses to link."""
    store = tmp_path / "store"
    unify(guests[:2], store, mode="hardlink")
    name = next(n for n in Store(store).names() if n.endswith(f"-{(guests[2] / 'usr/bin/tool').stat().st_size}"))
    path = Store(store).path_of(name)
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    tmp = path.with_name("x")
    write(tmp, bytes(data), path.stat().st_mode & 0o7777, mtime=int(path.stat().st_mtime))
    os.utime(tmp, ns=(path.stat().st_mtime_ns, path.stat().st_mtime_ns))
    os.rename(tmp, path)
    s = unify(guests, store, mode="hardlink")
    assert s.collisions == 1
    assert (guests[2] / "usr/bin/tool").read_bytes() != bytes(data)
    assert (guests[2] / "usr/bin/tool").stat().st_nlink == 1


def test_leftover_temp_names_are_removed(tmp_path, guests):
    store = tmp_path / "store"
    unify(guests, store, mode="hardlink")
    entry = Store(store).path_of(sorted(Store(store).names())[0])
    os.link(entry, guests[0] / "usr/bin/.ifunify-deadbeef")  # as a kill between link and rename leaves it
    (Store(store).tmp / "half-written").write_bytes(b"x")
    s = unify(guests, store, mode="hardlink")
    assert s.temp_removed == 2
    assert not (guests[0] / "usr/bin/.ifunify-deadbeef").exists()
    assert list(Store(store).tmp.iterdir()) == []


def test_index_api_for_reports(tmp_path, guests):
    store = tmp_path / "store"
    unify(guests, store, mode="hardlink")
    loaded = index.load(store)
    assert set(loaded) == {str(g) for g in guests}
    files = {f.path: f for f in loaded[str(guests[0])]}
    assert set(files) == {"usr/bin/tool", "usr/lib/libx.so.1"}
    assert files["usr/bin/tool"].size == (guests[0] / "usr/bin/tool").stat().st_size
    entries = list(Store(store).entries())
    assert sorted(e.nlink for e in entries) == [4, 4]


def test_per_guest_exclude_override(tmp_path, guests):
    (tmp_path / "g2.vunify-exclude").write_text("/usr/lib\n")
    s = unify(guests, tmp_path / "store", mode="hardlink")
    assert s.linked == 5  # libx is private in g2, shared by g0 and g1
    assert (guests[2] / "usr/lib/libx.so.1").stat().st_nlink == 1


def du(*paths: Path) -> int:
    """Allocated bytes, each inode counted once (like `du -s` over several arguments)."""
    seen, total = set(), 0
    for top in paths:
        names = [str(top)] if top.is_file() else \
            [os.path.join(d, n) for d, dirs, files in os.walk(top) for n in [*dirs, *files, "."]]
        for name in names:
            st = os.lstat(name)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def test_reported_saving_is_what_du_shows(tmp_path, guests):
    """Guests before vs guests + store entries after (the store's own directories and index aside)."""
    store = tmp_path / "store"
    dry = unify(guests, store, mode="hardlink", dry_run=True)
    before = du(*guests)
    s = unify(guests, store, mode="hardlink")
    assert s.disk_saved == dry.disk_saved > 0
    entries = [e.path for e in Store(store).entries()]
    assert before - du(*guests, *entries) == s.disk_saved


def test_names_already_sharing_an_inode_are_left_alone(tmp_path):
    g = tmp_path / "g"
    write(g / "usr/bin/perl", b"an interpreter binary of some size\n" * 20, 0o755)
    os.link(g / "usr/bin/perl", g / "usr/bin/perl5.40")
    s = unify([g], tmp_path / "store", mode="hardlink")
    assert (s.linked, s.new_entries, s.bytes_saved) == (0, 0, 0)
    h = tmp_path / "h"
    write(h / "usr/bin/perl", b"an interpreter binary of some size\n" * 20, 0o755)
    s = unify([g, h], tmp_path / "store", mode="hardlink")
    assert (s.linked, s.new_entries, s.duplicates) == (3, 1, 1)
    assert s.bytes_saved == (h / "usr/bin/perl").stat().st_size
    assert (h / "usr/bin/perl").stat().st_nlink == 4


def test_directory_swapped_for_a_symlink_mid_run_is_not_followed(tmp_path, guests):
    """A guest replaces usr/bin by a symlink to a host directory between hashing and linking."""
    from imagefactory.core.progress import Progress
    from unify.engine import Summary, Unifier, UnifyOptions
    from unify.protect import Mode, Protection

    host = tmp_path / "host"
    victim = write(host / "tool", (guests[0] / "usr/bin/tool").read_bytes(), 0o755)
    os.utime(victim, ns=((guests[0] / "usr/bin/tool").stat().st_mtime_ns,) * 2)
    store = Store(tmp_path / "store")
    store.create("hardlink")
    summary = Summary("hardlink", "test", False, str(store.root))
    db = index.connect(store.index)
    u = Unifier(guests, store, Protection(Mode.HARDLINK), summary, UnifyOptions(), Progress(quiet=True), db, db)
    try:
        u.scan()
        os.rename(guests[1] / "usr/bin", guests[1] / "usr/bin.real")
        (guests[1] / "usr/bin").symlink_to(host)
        for chunk in u.groups():
            u.create_entries(chunk)
            u.link_chunk(chunk)
    finally:
        u.close()
        db.close()
    assert victim.stat().st_nlink == 1 and sorted(p.name for p in host.iterdir()) == ["tool"]
    assert summary.changed >= 1
    assert (guests[0] / "usr/bin/tool").stat().st_nlink == 3  # g0 and g2 still unified
