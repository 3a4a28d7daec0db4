"""The composefs proof on a real debian-sid image (root, network, real mounts, EROFS metadata
layer written by mkcomposefs from the sid tools root).

The sid image and the tools root are built once and kept in the test cache
($IMAGEFACTORY_CACHE, default /var/cache/imagefactory); later runs take about a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagefactory.build import tools
from imagefactory.build.plan import BuildOptions
from imagefactory.core.progress import Progress
from tests.support.composefs import (
    assert_whole_or_nothing,
    cache_dir,
    fingerprint,
    mounts_below,
    sid_image,
    umount_below,
)
from tests.support.seed import run_cli, seed_args
from unify.composefs import mount as mnt
from unify.composefs.guest import GuestLayers
from unify.composefs.store import ObjectStore

pytestmark = [pytest.mark.root, pytest.mark.network]
IMAGEFACTORY = [sys.executable, "-m", "imagefactory"]


@pytest.fixture(scope="module")
def image() -> Path:
    tools.ensure(BuildOptions(allow_expired_release=True, cache_dir=cache_dir()), Progress(quiet=True))
    return sid_image()


@pytest.fixture(scope="module")
def area(tmp_path_factory, image):
    top = tmp_path_factory.mktemp("cfs-sid")
    os.environ.setdefault("IMAGEFACTORY_CACHE", str(cache_dir()))
    yield top
    umount_below(top)


def chroot(root: Path, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, **kw)


def object_hashes(store: Path) -> dict[str, str]:
    s = ObjectStore(store)
    return {d: hashlib.sha256(s.path_of(d).read_bytes()).hexdigest() for d in s.digests()}


@pytest.fixture(scope="module")
def guests(area, image):
    """Three guests seeded from one sid image with an EROFS metadata layer each."""
    results = []
    for i in (1, 2, 3):
        argv = seed_args(image, f"sid{i}", area, "--unify", "--store", str(area / "vservers/.store"),
                         "--unify-mode", "composefs", "--meta", "erofs", "--json", ip=f"10.0.3.{i}/24")
        proc = subprocess.run([*IMAGEFACTORY, *argv], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout))
    return results


def test_three_guests_from_one_image_pass_dpkg_verify(area, guests):
    assert [g["unified"]["objects_added"] > 0 for g in guests] == [True, False, False]
    assert guests[1]["unified"]["listing_reused"] and guests[2]["unified"]["listing_reused"]
    for g in guests:
        root = Path(g["root"])
        assert mnt.is_mounted(root, "overlay")
        assert (GuestLayers(root).state / "meta.cfs").is_file()
        verify = chroot(root, "dpkg", "-V")
        assert verify.returncode == 0 and verify.stdout == "", verify.stdout
        assert chroot(root, "apt-get", "--version", check=True).stdout.startswith("apt ")


def test_in_guest_changes_touch_neither_store_nor_other_guests(area, guests, image):
    root1, root2, root3 = (Path(g["root"]) for g in guests)
    store = area / "vservers/.store"
    before_objects = object_hashes(store)
    before = {r: fingerprint(r) for r in (root2, root3)}
    # 1. overwrite a shared binary in place, from inside the guest (/usr/bin/which is an absolute
    #    symlink chain: only a chroot resolves it inside the guest, never the host's own which)
    chroot(root1, "/bin/sh", "-c", "printf '#!/bin/sh\\necho replaced which\\n' > /usr/bin/which", check=True)
    # 2. install a newer build of an installed package (rebuilt with dpkg-deb)
    manifest = json.loads(image.with_name("debian-sid.manifest.json").read_text())
    pkg = next(p for p in manifest["packages"] if p["name"] == "hostname")
    deb = cache_dir() / "sha256" / pkg["sha256"][:2] / pkg["sha256"]
    work = area / "rebuild"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(work)], check=True)
    control = (work / "DEBIAN/control").read_text().replace(f"Version: {pkg['version']}",
                                                               f"Version: {pkg['version']}+cfs1")
    (work / "DEBIAN/control").write_text(control)
    newer = root1 / "tmp/hostname-newer.deb"
    subprocess.run(["dpkg-deb", "-b", "--root-owner-group", str(work), str(newer)], check=True, capture_output=True)
    res = chroot(root1, "dpkg", "-i", "/tmp/hostname-newer.deb")
    assert res.returncode == 0, res.stderr
    assert chroot(root1, "dpkg-query", "-W", "-f=${Version}", "hostname").stdout == f"{pkg['version']}+cfs1"
    assert chroot(root1, "/usr/bin/which").stdout == "replaced which\n"
    # The store and the other guests are byte-identical to before.
    assert object_hashes(store) == before_objects
    assert {r: fingerprint(r) for r in (root2, root3)} == before
    assert chroot(root2, "dpkg", "-V").stdout == ""
    # After umount and mount the changes are still there.
    conf = ["--confdir", str(area / "etc")]
    subprocess.run([*IMAGEFACTORY, "umount", "sid1", *conf], check=True, capture_output=True)
    assert not any(root1.iterdir())
    subprocess.run([*IMAGEFACTORY, "mount", "sid1", *conf], check=True, capture_output=True)
    assert chroot(root1, "/usr/bin/which").stdout == "replaced which\n"
    assert chroot(root1, "dpkg-query", "-W", "-f=${Version}", "hostname").stdout == f"{pkg['version']}+cfs1"
    rows = {g["name"]: g for g in json.loads(subprocess.run([*IMAGEFACTORY, "guests", *conf, "--json"],
                                                            capture_output=True, text=True, check=True).stdout)}
    assert rows["sid1"]["upper_bytes"] > rows["sid2"]["upper_bytes"]
    # The report counts the three guests on one set of objects.
    rep = json.loads(subprocess.run([*IMAGEFACTORY, "report", "--store", str(store), "--json", "-q"],
                                    capture_output=True, text=True, check=True).stdout)
    t = rep["totals"]
    assert t["composefs_guests"] == 3 and t["upper_bytes"] > 0
    assert t["saved_percent"] > 60  # two of three copies saved, minus metadata layers and upper
    assert rep["shared_libraries"]["page_cache_saved_bytes"] > 10 << 20


def test_convert_a_plain_sid_guest_and_flip_a_byte(area, guests, image, capsys):
    assert run_cli(seed_args(image, "plain", area, ip="10.0.3.9/24"), capsys)[0] == 0
    root = area / "vservers/plain"
    before = fingerprint(root)
    store = area / "vservers/.store"
    count = len(list(ObjectStore(store).digests()))
    code, out, err = run_cli(["unify", str(root), "--store", str(store), "--mode", "composefs", "--json", "-q"],
                             capsys)
    assert code == 0, err
    assert json.loads(out)["guests"][0]["objects_added"] == 0 and len(list(ObjectStore(store).digests())) == count
    assert mnt.is_mounted(root, "overlay") and fingerprint(root) == before
    assert chroot(root, "dpkg", "-V").stdout == ""
    # A flipped byte in an object shared by all four guests is found and named.
    s = ObjectStore(store)
    listing = GuestLayers(root).listing.read_text()
    ls = next(line for line in listing.splitlines() if line.startswith("/usr/bin/ls "))
    digest = ls.split()[10]
    def flip() -> None:
        with open(s.path_of(digest), "r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0x20]))

    flip()
    try:
        code, out, err = run_cli(["unify", "verify", "-q", "--store", str(store)], capsys)
    finally:
        flip()  # the module's store is shared by the tests after this one: give them the object back
    assert code == 3
    assert f"object {digest[:2]}/{digest[2:]} content changed" in err
    for name in ("sid1", "sid2", "sid3", "plain"):
        assert str(area / "vservers" / name) in err
    code, out, err = run_cli(["unify", "--verify", "-q", "--store", str(store)], capsys)
    assert code == 0, err
    assert mounts_below(area)  # left for the module teardown to unmount


@pytest.mark.slow
def test_sigkill_during_sid_seeds(area, guests, image, capsys):
    """Seeds killed at random moments (the first reads the image: several seconds; later ones
    reuse the store's listing and EROFS image) leave whole guests or nothing, never a stray mount."""
    rng = random.Random(3)
    committed: list[str] = []
    for i in range(5):
        name = f"kill{i}"
        argv = seed_args(image, name, area, "--unify", "--store", str(area / "vservers/.store"),
                         "--unify-mode", "composefs", ip=f"10.0.4.{i + 1}/24")
        proc = subprocess.Popen([*IMAGEFACTORY, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_whole_or_nothing(area, name, committed)
    if committed:
        subprocess.run([*IMAGEFACTORY, "mount", *committed, "--confdir", str(area / "etc")], check=True,
                       capture_output=True)
        for name in committed:
            assert chroot(area / "vservers" / name, "dpkg", "-V").stdout == ""
