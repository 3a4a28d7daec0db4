"""Incus's own tools against our images: incus-simplestreams (sid's incus-extra) reads the published
tree and `add`s the same image the same way; distrobuilder `pack-incus` packs the same rootfs.

Both tools come from the sid tools root (recipes/tools-sid.toml), built once from the real archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from imagefactory.build import tools
from imagefactory.build.plan import BuildOptions
from imagefactory.core.progress import Progress
from tests.support.formats import busybox_tree, distrobuilder, formats_image, tree
from tests.support.repo import init_repo, run

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.slow]
VERSION = "20261030_080801"
ARCH = {"amd64": "x86_64", "x86_64": "x86_64"}  # Incus accepts both names for one architecture


@pytest.fixture(scope="module")
def toolsroot() -> tools.ToolsRoot:
    cache = Path(os.environ.get("IMAGEFACTORY_CACHE", "/var/cache/imagefactory"))
    return tools.ensure(BuildOptions(allow_expired_release=True, cache_dir=cache), Progress(quiet=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("incus")
    rootfs = busybox_tree(base / "rootfs")
    (rootfs / "etc/resolv.conf").touch()  # distrobuilder bind-mounts onto it
    image = formats_image(rootfs, base / "out", formats=("incus", "incus-unified"))
    return rootfs, image


def simplestreams(root: tools.ToolsRoot, cwd: Path, *args: str) -> str:
    proc = root.run(["incus-simplestreams", *args], binds=[cwd], cwd=cwd, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_incus_simplestreams_reads_our_tree_and_adds_the_same_image(toolsroot, built, tmp_path, capsys, gpg_key):
    rootfs, image = built
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    assert run(capsys, "publish", "--repo", repo, image)[0] == 0
    state = (repo / "current").resolve()
    simplestreams(toolsroot, state, "verify")  # every item: exists, size, sha256
    listed = json.loads(simplestreams(toolsroot, state, "list", "--format", "json"))
    ours = json.loads((state / "streams/v1/images.json").read_text())["products"]["imagefactory:debian-sid:amd64"]
    items = ours["versions"][VERSION]["items"]
    fingerprints = {i["fingerprint"] for i in listed}
    assert fingerprints == {items["incus.tar.xz"]["combined_squashfs_sha256"], items["incus_combined.tar.gz"]["sha256"]}
    for img in listed:
        assert img["architecture"] == "x86_64" and img["properties"]["os"] == "debian"
        assert img["properties"]["release"] == "sid" and img["properties"]["serial"] == VERSION
        assert img["created_at"].startswith("2026-10-30")
    aliases = {a["name"] for img in listed for a in img.get("aliases") or []}  # an alias names one image
    assert aliases >= {"debian-sid", "debian/sid/default", "debian/sid"}

    # the same split and unified image through `incus-simplestreams add`
    theirs_dir = tmp_path / "theirs"
    theirs_dir.mkdir()
    out = image.parent
    for name in ("debian-sid.incus.tar.xz", "debian-sid.squashfs", "debian-sid.incus.tar.gz"):
        shutil.copy(out / name, theirs_dir / name)
    simplestreams(toolsroot, theirs_dir, "add", "debian-sid.incus.tar.xz", "debian-sid.squashfs")
    # `add` of any unified tarball fails at random here ("exit status 1": it stops reading while
    # `gzip -d` still writes; 2 of 10 runs fail for a GNU-tar-made tarball too): retry that one
    failures = 0
    while (proc := toolsroot.run(["incus-simplestreams", "add", "debian-sid.incus.tar.gz"], binds=[theirs_dir],
                                 cwd=theirs_dir, check=False)).returncode != 0 and failures < 8:
        assert proc.stderr.decode().strip() == "Error: exit status 1", proc.stderr.decode()
        failures += 1
    assert proc.returncode == 0, f"incus-simplestreams add of the unified image failed {failures} times"
    theirs = json.loads((theirs_dir / "streams/v1/images.json").read_text())["products"]
    (pid, product), = theirs.items()
    assert pid == "debian:sid:default:x86_64"
    for key in ("os", "release", "release_title", "variant"):
        assert product[key] == ours[key], key
    assert ARCH[product["arch"]] == ARCH[ours["arch"]]
    (vkey, version), = product["versions"].items()
    assert vkey[:8] == VERSION[:8]  # both keys start with the snapshot's YYYYMMDD (theirs: creation_date)
    for ftype, item in version["items"].items():
        mine = items[ftype]
        for field in ("ftype", "sha256", "size", "combined_squashfs_sha256", "combined_type"):
            assert item.get(field) == mine.get(field), (ftype, field)
    assert set(version["items"]) == {"incus.tar.xz", "squashfs", "incus_combined.tar.gz"}
    assert set(items) >= set(version["items"]) | {"lxd.tar.xz", "lxd_combined.tar.gz"}
    theirs_index = json.loads((theirs_dir / "streams/v1/index.json").read_text())["index"]["images"]
    ours_index = json.loads((state / "streams/v1/index.json").read_text())["index"]["imagefactory:images"]
    assert (theirs_index["datatype"], theirs_index["format"], theirs_index["path"]) == \
        (ours_index["datatype"], ours_index["format"], ours_index["path"])


def test_distrobuilder_pack_incus_of_the_same_rootfs(toolsroot, built, tmp_path):
    rootfs, image = built
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    subprocess.run(["cp", "-a", str(rootfs), str(work / "src")], check=True)  # owners, links, devices
    (work / "def.yaml").write_text(
        "image: {distribution: debian, release: sid, architecture: amd64, variant: default, description: x}\n"
        "source: {downloader: debootstrap, url: 'http://127.0.0.1/unused', skip_verification: true}\n"
        "packages: {manager: apt, update: false, cleanup: false}\n"
        "files:\n- {path: /etc/hostname, generator: hostname}\n")
    proc = distrobuilder(toolsroot.root, work, "pack-incus", "def.yaml", "src", "out", "--type", "split",
                         "--compression", "xz")
    assert proc.returncode == 0, proc.stderr[-800:]
    meta, squash = work / "out/incus.tar.xz", work / "out/rootfs.squashfs"
    with tarfile.open(meta) as tar:
        theirs = yaml.safe_load(tar.extractfile("metadata.yaml").read())
    with tarfile.open(image.parent / "debian-sid.incus.tar.xz") as tar:
        ours = yaml.safe_load(tar.extractfile("metadata.yaml").read())
    # the same fields; distrobuilder adds expiry_date (+30 days) and stamps "now" (we use the snapshot)
    assert set(theirs) - set(ours) == {"expiry_date"} and set(ours) <= set(theirs)
    assert set(theirs["properties"]) == set(ours["properties"])
    for key in ("os", "release", "variant"):
        assert theirs["properties"][key] == ours["properties"][key]
    assert ARCH[theirs["architecture"]] == ARCH[ours["architecture"]]
    assert theirs["creation_date"] > ours["creation_date"]  # theirs is the build time
    assert theirs["templates"]["/etc/hostname"] == ours["templates"]["/etc/hostname"]
    # the squashfs holds the same tree (their settings are ours: xz, 1 MiB blocks), except that
    # distrobuilder empties /dev and adds the proc, sys and run mount points
    subprocess.run(["unsquashfs", "-d", str(tmp_path / "x"), str(squash)], check=True, capture_output=True)
    theirs_tree = {k: v for k, v in tree(tmp_path / "x").items() if k not in ("proc", "sys", "run")}
    assert theirs_tree == {k: v for k, v in tree(rootfs).items() if not k.startswith("dev/")}
    # fingerprint scheme: what incus-simplestreams computes for their image is sha256(meta || rootfs)
    for name in ("incus.tar.xz", "rootfs.squashfs"):
        shutil.copy(work / "out" / name, tmp_path / name)
    listing = tmp_path / "listing"
    listing.mkdir()
    shutil.move(tmp_path / "incus.tar.xz", listing / "m.incus.tar.xz")
    shutil.move(tmp_path / "rootfs.squashfs", listing / "r.squashfs")
    simplestreams(toolsroot, listing, "add", "m.incus.tar.xz", "r.squashfs")
    (listed,) = json.loads(simplestreams(toolsroot, listing, "list", "--format", "json"))
    assert listed["fingerprint"] == hashlib.sha256(meta.read_bytes() + squash.read_bytes()).hexdigest()
