"""Composefs conversion, split, verify and gc on small synthetic guests (root, real overlay mounts).

These use the directory metadata layer, which needs no tool; the EROFS layer (mkcomposefs from
the sid tools root) is proven on a real debian-sid image in tests/seed/test_seed_composefs_sid.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.composefs import fingerprint, mounts_below, umount_below
from tests.support.seed import CAP_NET_RAW, run_cli
from tests.support.unify import make_guest, write
from unify.composefs import maintain
from unify.composefs import mount as mnt
from unify.composefs.convert import split
from unify.composefs.guest import GuestLayers, GuestRecord
from unify.composefs.store import ObjectStore

pytestmark = pytest.mark.root


@pytest.fixture
def area(tmp_path):
    yield tmp_path
    umount_below(tmp_path)


def rich_guest(root: Path, n: int = 0) -> Path:
    make_guest(root, {"etc/hostname": f"guest{n}\n".encode()})
    write(root / "usr/bin/su", b"setuid binary\n" * 50, 0o4755)
    ping = write(root / "usr/bin/ping", b"ping binary\n" * 50, 0o755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.setxattr(root / "usr/share/doc/README", "user.note", b"kept")
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-again")
    os.chown(root / "etc/app.conf", 1234, 4321)
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mkfifo(root / "run.fifo")
    write(root / "usr/lib/big.so", bytes(range(256)) * 4096 * 3)  # 3 MiB: several Merkle levels
    write(root / "var/empty-file", b"")
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    return root


def cli(capsys, *args) -> tuple[int, str, str]:
    return run_cli(["unify", *map(str, args)], capsys)


def test_convert_two_guests_share_objects_and_stay_identical(area, capsys):
    g1, g2 = rich_guest(area / "g1", 1), rich_guest(area / "g2", 2)
    before = {g: fingerprint(g) for g in (g1, g2)}
    store = area / "store"
    code, out, err = cli(capsys, g1, g2, "--store", store, "--mode", "composefs", "--meta", "dir", "--json")
    assert code == 0, err
    res = json.loads(out)["guests"]
    assert res[0]["objects_added"] > 0 and res[1]["objects_added"] == 1  # only /etc/hostname differs
    for g in (g1, g2):
        assert mnt.is_mounted(g, "overlay")
        assert fingerprint(g) == before[g]
    objects = {d: ObjectStore(store).path_of(d).read_bytes() for d in ObjectStore(store).digests()}
    # In-guest changes: replace like dpkg does, write in place, chmod: store and g2 untouched.
    (g1 / "usr/bin/tool.new").write_bytes(b"new tool\n")
    os.rename(g1 / "usr/bin/tool.new", g1 / "usr/bin/tool")
    with open(g1 / "usr/lib/libx.so.1", "r+b") as f:
        f.write(b"PATCHED")
    os.chmod(g1 / "usr/share/doc/README", 0o600)
    assert {d: ObjectStore(store).path_of(d).read_bytes() for d in ObjectStore(store).digests()} == objects
    assert fingerprint(g2) == before[g2]
    upper = GuestLayers(g1).upper
    assert (upper / "usr/bin/tool").read_bytes() == b"new tool\n"
    assert (upper / "usr/lib/libx.so.1").read_bytes().startswith(b"PATCHED")
    changed = fingerprint(g1)
    # Across umount/mount the changes persist.
    code, out, err = cli(capsys, g1, "--store", store, "--mode", "composefs", "--meta", "dir")
    assert code == 0 and "already a composefs guest" in out
    mnt.umount(GuestLayers(g1))
    assert not any(os.scandir(g1))
    mnt.mount(GuestLayers(g1))
    assert fingerprint(g1) == changed
    # Split: a plain directory again, changes included; the store forgets the guest.
    code, out, err = cli(capsys, "--split", g1, "--store", store)
    assert code == 0, err
    assert not mnt.is_mounted(g1) and not GuestLayers(g1).state.exists()
    assert fingerprint(g1) == changed
    assert [g.root for g in maintain.guests_of(ObjectStore(store))[0]] == [str(g2)]


def test_verify_names_the_tampered_object_and_its_guests(area, capsys):
    g1, g2 = rich_guest(area / "g1"), rich_guest(area / "g2")
    store = area / "store"
    assert cli(capsys, g1, g2, "--store", store, "--mode", "composefs", "--meta", "dir")[0] == 0
    code, out, _ = cli(capsys, "--verify", "--store", store)
    assert code == 0 and ", 0 problems" in out
    s = ObjectStore(store)
    big = next(d for d in s.digests() if s.path_of(d).stat().st_size == 3 * 4096 * 256)
    with open(s.path_of(big), "r+b") as f:
        f.seek(777_777)
        byte = f.read(1)
        f.seek(777_777)
        f.write(bytes([byte[0] ^ 1]))
    code, out, err = cli(capsys, "--verify", "-q", "--store", store)
    assert code == 3
    assert err.count("\n") == 1
    assert f"object {big[:2]}/{big[2:]} content changed; used by {g1}, {g2}" in err


def test_gc_removes_unused_objects_and_waits_for_a_seed(area, capsys):
    g1, g2 = rich_guest(area / "g1", 1), rich_guest(area / "g2", 2)
    store = area / "store"
    assert cli(capsys, g1, g2, "--store", store, "--mode", "composefs", "--meta", "dir")[0] == 0
    s = ObjectStore(store)
    total = len(list(s.digests()))
    code, out, _ = cli(capsys, "--status", "--store", store, "--json")
    st = json.loads(out)
    assert code == 0 and st["objects"] == total and sorted(st["guests"]) == [str(g1), str(g2)] and st["orphans"] == 0
    assert st["bytes_saved"] >= 3 * 4096 * 256  # the big library is stored once for two guests
    assert cli(capsys, "--split", g2, "--store", store)[0] == 0
    code, out, _ = cli(capsys, "--gc", "-n", "--store", store, "--json")
    assert json.loads(out)["removed"] == 1 and len(list(s.digests())) == total  # g2's hostname only
    # A seed holds the shared lock from its first object until its guest is registered: an
    # object it wrote meanwhile must survive a concurrent gc.
    done = threading.Event()
    with s.locked():
        s.add_bytes(b"fresh object of a seed in progress\n", "0" * 64)
        t = threading.Thread(target=lambda: (maintain.gc(ObjectStore(store)), done.set()))
        t.start()
        time.sleep(0.5)
        assert not done.is_set()  # gc waits
        layers = GuestLayers(area / "g3")
        layers.state.mkdir(parents=True)
        layers.listing.write_text(f"/f 35 100644 1 0 0 0 0.0 00/{'0' * 62} - {'0' * 64}\n")
        layers.write(GuestRecord(root=str(layers.root), store=str(store), phase="active"))
        s.register(layers.root, layers.state)
    t.join(30)
    assert done.is_set()
    assert s.has("0" * 64)
    assert len(list(s.digests())) == total  # g2's hostname object is gone, the seed's new one kept


def test_auto_mode_picks_composefs_here(area, capsys):
    g = rich_guest(area / "g1")
    code, out, err = cli(capsys, g, "--store", area / "store", "--meta", "dir")
    assert code == 0, err
    assert "Mode:            composefs (overlayfs follows metacopy redirects" in out
    assert mnt.is_mounted(g, "overlay")


KILL_SCRIPT = """
import sys
from pathlib import Path
from unify.composefs.convert import convert
from unify.composefs.store import ObjectStore
s = ObjectStore(Path(sys.argv[2])); s.create()
convert(Path(sys.argv[1]), s, "dir")
"""


def test_sigkill_during_conversion_never_loses_the_guest(area):
    root = rich_guest(area / "g", 7)
    for i in range(300):
        write(root / f"usr/share/many/f{i}", f"file {i}\n".encode() * (i % 40 + 1))
    original = fingerprint(root)
    store = area / "store"
    rng = random.Random(11)
    states = set()
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(root), str(store)])
        time.sleep(rng.uniform(0.05, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)  # an orphaned underlay cleaner may still be finishing
        record = GuestLayers(root).read()
        states.add((record.phase if record else None, mnt.is_mounted(root)))
        # Right after the kill the guest path shows the original content, mounted or not.
        assert fingerprint(root) == original
        assert set(mounts_below(area)) <= {str(root)}
        if record and record.phase == "active":  # converted before the kill: start over from plain
            split(root)
    # Finally a run that completes leaves one clean composefs guest.
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(root), str(store)], check=True)
    assert mnt.is_mounted(root, "overlay") and fingerprint(root) == original
    assert GuestLayers(root).read().phase == "active"
    assert sorted(p.name for p in (area / ".composefs").iterdir()) == ["g"]
    print("(phase, mounted) at kill time:", sorted(states, key=str))


def test_convert_a_guest_unified_immutable_keeps_the_other_guest_protected(area, capsys):
    from tests.support.unify import clear_flags
    from unify import probe

    g1, g2 = rich_guest(area / "g1", 1), rich_guest(area / "g2", 2)
    before = {g: fingerprint(g) for g in (g1, g2)}
    old = area / "hash"
    try:
        code, _, err = cli(capsys, g1, g2, "--store", old, "--mode", "immutable", "-q")
        assert code == 0, err
        shared = g2 / "usr/lib/big.so"
        assert shared.stat().st_nlink == 3  # g1, g2 and the old store's entry
        code, out, err = cli(capsys, g1, "--store", area / "store", "--mode", "composefs", "--meta", "dir", "-q")
        assert code == 0, err
        assert mnt.is_mounted(g1, "overlay") and fingerprint(g1) == before[g1]
        # g1's links to the immutable entries are gone; the entries and g2 keep their protection.
        assert shared.stat().st_nlink == 2 and fingerprint(g2) == before[g2]
        fd = os.open(shared, os.O_RDONLY)
        try:
            assert probe.get_flags(fd) & probe.FS_IMMUTABLE_FL
        finally:
            os.close(fd)
        code, out, _ = cli(capsys, "--verify", "-q", "--store", old)
        assert code == 0
    finally:
        umount_below(area)
        clear_flags(g1, g2, old)
