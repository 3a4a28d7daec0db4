"""`seed --unify-mode composefs` on a small hand-made image (root, real mounts, no network).

Uses the directory metadata layer (no tool needed); the EROFS layer is proven with a real
debian-sid image in test_seed_composefs_sid.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.composefs import assert_whole_or_nothing, fingerprint, mounts_below, umount_below
from tests.support.seed import run_cli, seed_args, tiny_image
from unify.composefs import mount as mnt
from unify.composefs.guest import GuestLayers
from unify.composefs.store import ObjectStore

pytestmark = pytest.mark.root


@pytest.fixture
def area(tmp_path):
    yield tmp_path
    umount_below(tmp_path)


def cfs_args(image: Path, name: str, tmp: Path, *extra: str, ip: str = "10.0.0.11/24") -> list[str]:
    return seed_args(image, name, tmp, "--unify", "--store", str(tmp / "vservers/.store"), "--unify-mode",
                     "composefs", "--meta", "dir", *extra, ip=ip)


def objects(store: Path) -> dict[str, bytes]:
    s = ObjectStore(store)
    return {d: s.path_of(d).read_bytes() for d in s.digests()}


def test_seed_into_the_store_matches_a_plain_seed(area, capsys):
    image = tiny_image(area)
    code, out, err = run_cli(seed_args(image, "plain", area), capsys)
    assert code == 0, err
    code, out, err = run_cli(cfs_args(image, "web1", area, "--json", ip="10.0.0.12/24"), capsys)
    assert code == 0, err
    res = json.loads(out)
    root, store = area / "vservers/web1", area / "vservers/.store"
    assert res["unified"]["mode"] == "composefs" and res["unified"]["mounted"]
    assert res["unified"]["objects_added"] == res["unified"]["objects"] > 0
    assert mnt.is_mounted(root, "overlay")
    cfs, plain = fingerprint(root), fingerprint(area / "vservers/plain")
    # Two known differences of the plain unpack (tarfile): it leaves symlink mtimes at "now", and
    # a hard link member's mode (0644 in this hand-made image) is applied to the shared inode.
    for rel, (mode, *rest) in plain.items():
        if os.path.islink(area / "vservers/plain" / rel):
            rest[3] = cfs[rel][4]
        if rel in ("usr/bin/tool", "usr/bin/tool-again"):
            mode = cfs[rel][0]
        plain[rel] = (mode, *rest)
    assert cfs == plain
    # The guest itself holds only its state: metadata layer, listing, upper, work.
    layers = GuestLayers(root)
    assert sorted(p.name for p in layers.state.iterdir()) == ["guest.json", "meta", "meta.dump", "upper", "work"]
    assert not any(layers.upper.iterdir())
    before = objects(store)
    # A second guest of the same image writes no content and reads none.
    code, out, err = run_cli(cfs_args(image, "web2", area, "--json", ip="10.0.0.13/24"), capsys)
    assert code == 0, err
    res2 = json.loads(out)["unified"]
    assert res2["objects_added"] == 0 and res2["listing_reused"]
    assert objects(store) == before
    assert fingerprint(area / "vservers/web2") == fingerprint(root)
    # Host config that mounts it at boot, and the other configs point at the mount point.
    conf = area / "etc/web2"
    units = sorted(p.name for p in (conf / "composefs").iterdir())
    assert units == ["fstab", subprocess.run(["systemd-escape", "--path", "--suffix=mount",
                                              str(area / "vservers/web2")], capture_output=True, text=True,
                                             check=True).stdout.strip()]
    fstab = (conf / "composefs/fstab").read_text().splitlines()[-1].split()
    assert fstab[:3] == ["overlay", str(area / "vservers/web2"), "overlay"]
    assert os.readlink(conf / "vdir") == str(area / "vservers/web2")
    assert f"lxc.rootfs.path = dir:{area / 'vservers/web2'}" in (conf / "lxc/web2/config").read_text()
    # Writes stay in the guest's upper layer.
    (area / "vservers/web2/etc/hostname").write_text("web2\n")
    assert objects(store) == before and (root / "etc/hostname").read_text() == "image\n"


def test_mount_umount_guests_and_check(area, capsys):
    image = tiny_image(area)
    for i, name in enumerate(("a", "b")):
        assert run_cli(cfs_args(image, name, area, ip=f"10.0.0.{20 + i}/24"), capsys)[0] == 0
    (area / "vservers/a/etc/new").write_bytes(b"x" * 10000)
    etc = ["--confdir", str(area / "etc")]
    code, out, _ = run_cli(["umount", "a", *etc], capsys)
    assert code == 0 and "a: unmounted" in out
    assert not mnt.is_mounted(area / "vservers/a") and not any((area / "vservers/a").iterdir())
    rows = {g["name"]: g for g in json.loads(run_cli(["guests", *etc, "--json"], capsys)[1])}
    assert rows["a"]["mounted"] is False and rows["b"]["mounted"] is True
    assert rows["a"]["upper_bytes"] >= 10000 and rows["b"]["upper_bytes"] < 10000
    code, out, _ = run_cli(["seed", "--check", *etc, "--vdir", str(area / "vservers")], capsys)
    assert code == 1 and "composefs guest a is not mounted" in out
    code, out, _ = run_cli(["mount", "--all", *etc], capsys)
    assert code == 0 and "a: mounted" in out and "b: already mounted" in out
    assert (area / "vservers/a/etc/new").read_bytes() == b"x" * 10000
    assert run_cli(["umount", "--all", *etc], capsys)[0] == 0
    assert mounts_below(area) == []
    # Once no guest of the image is left, gc drops its listing, its EROFS/dir template and objects.
    store = area / "vservers/.store"
    for name in ("a", "b"):
        assert run_cli(["unify", "--split", str(area / "vservers" / name), "--store", str(store), "-q"], capsys)[0] == 0
    assert (area / "vservers/a/etc/new").read_bytes() == b"x" * 10000
    code, out, _ = run_cli(["unify", "--gc", "--store", str(store), "--json"], capsys)
    res = json.loads(out)
    assert code == 0 and res["removed"] > 0 and res["listings_removed"] == 1
    assert list(ObjectStore(store).digests()) == [] and list((store / "images").iterdir()) == []


def test_replace_a_composefs_guest(area, capsys):
    image = tiny_image(area)
    assert run_cli(cfs_args(image, "web1", area), capsys)[0] == 0
    (area / "vservers/web1/etc/hostname").write_text("changed\n")
    code, _, err = run_cli(cfs_args(image, "web1", area, "--replace"), capsys)
    assert code == 0, err
    assert (area / "vservers/web1/etc/hostname").read_text() == "image\n"
    assert mounts_below(area) == [str(area / "vservers/web1")]


SEED = """
import sys
from imagefactory.cli import main
main(sys.argv[1:])
"""


def test_sigkill_during_seed_leaves_no_half_guest_and_no_orphan_mount(area, capsys):
    image = tiny_image(area)
    rng = random.Random(5)
    complete = []
    for i in range(10):
        name = f"k{i}"
        proc = subprocess.Popen([sys.executable, "-c", SEED, *cfs_args(image, name, area, ip=f"10.0.1.{i + 1}/24")],
                                stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_whole_or_nothing(area, name, complete)
    if complete:
        code, _, err = run_cli(["mount", "--all", "--confdir", str(area / "etc")], capsys)
        assert code == 0, err
        for name in complete:
            assert (area / "vservers" / name / "etc/hostname").read_text() == "image\n"
    # A later seed of a killed name cleans up after it.
    code, _, err = run_cli(cfs_args(image, "k0", area, "--replace", ip="10.0.2.1/24"), capsys)
    assert code == 0, err
    print(f"{len(complete)} of 10 killed seeds had committed")
