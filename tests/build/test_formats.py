"""Output formats proven with the real consumers: skopeo, umoci, podman, unsquashfs, tar, a YAML parser.

Fast: a small static-busybox tree (tests/support/formats.py). The pipeline test builds a real
guest from the local test archive with formats from the recipe and from --format, twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import yaml

from imagefactory.build import recipe as recipes
from imagefactory.build.formats import FORMATS, OciConfig
from imagefactory.core.errors import RecipeError
from tests.support import need_tool
from tests.support.debarchive import make_archive, serve
from tests.support.formats import ALL, EPOCH, busybox_tree, formats_image, tree

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(rootfs, output dir, manifest) with every format written."""
    base = tmp_path_factory.mktemp("formats")
    rootfs = busybox_tree(base / "rootfs")
    formats_image(rootfs, base / "out")
    return rootfs, base / "out", json.loads((base / "out/debian-sid.manifest.json").read_text())


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{argv[0]} failed: {proc.stderr[-500:]}"
    return proc


def test_every_artifact_is_in_the_manifest_and_reproducible(built, tmp_path):
    rootfs, out, manifest = built
    records = {r["file"]: r for r in manifest["artifacts"]}
    assert {r["format"] for r in records.values()} >= set(ALL) - {"squashfs"}  # incus brings the squashfs
    for rel, rec in records.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == rec["sha256"], rel
    again = tmp_path / "again"
    formats_image(rootfs, again)
    for rel in records:
        assert (again / rel).read_bytes() == (out / rel).read_bytes(), f"{rel} differs between two builds"


def test_oci_layout_read_by_skopeo_and_unpacked_by_umoci_equals_rootfs(built, tmp_path):
    need_tool("skopeo", "umoci")
    rootfs, out, manifest = built
    layout = out / "debian-sid.oci"
    info = json.loads(sh("skopeo", "inspect", f"oci:{layout}:latest").stdout)
    digest = next(r["manifest_digest"] for r in manifest["artifacts"] if r["format"] == "oci")
    assert info["Digest"] == digest and info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert info["Created"].startswith("2026-10-30T08:08:01")
    sh("skopeo", "copy", f"oci:{layout}:latest", f"dir:{tmp_path / 'copy'}")
    assert (tmp_path / "copy/manifest.json").read_bytes() == (layout / "blobs/sha256" / digest[7:]).read_bytes()
    sh("skopeo", "inspect", f"oci-archive:{out / 'debian-sid.oci.tar'}:latest")
    sh("umoci", "unpack", "--image", f"{layout}:latest", tmp_path / "bundle")
    unpacked, original = tree(tmp_path / "bundle/rootfs"), tree(rootfs)
    assert unpacked == original  # paths, contents, modes, owners, link targets, devices, hard links
    config = json.loads((tmp_path / "bundle/config.json").read_text())
    assert config["process"]["args"] == ["/bin/sh"]


def test_podman_runs_the_oci_archive(built):
    """podman on this machine kind: vfs storage, cgroupfs manager, runc (crun refuses hybrid cgroups),
    and ulimits below the sandbox's hard limits (raising them needs CAP_SYS_RESOURCE)."""
    need_tool("podman", "runc")
    _, out, _ = built
    home = Path(tempfile.mkdtemp(prefix="if-pod-", dir="/tmp"))  # podman wants a runroot under 50 characters
    base = ["podman", "--runtime", "runc", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
            "--root", str(home / "st"), "--runroot", str(home / "run")]
    try:
        run = sh(*base, "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit",
                 "nproc=1024:1024", f"oci-archive:{out / 'debian-sid.oci.tar'}", "cat", "/etc/debian_version")
        assert run.stdout == "forky/sid\n"
    finally:
        subprocess.run([*base, "rmi", "-af"], capture_output=True, timeout=120)
        subprocess.run(["umount", "-R", str(home / "st")], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_squashfs_lists_and_stats_and_extracts_equal_to_rootfs(built, tmp_path):
    need_tool("unsquashfs")
    rootfs, out, _ = built
    image = out / "debian-sid.squashfs"
    listed = sh("unsquashfs", "-l", image).stdout.splitlines()
    assert {p.removeprefix("squashfs-root").lstrip("/") for p in listed} - {""} == set(tree(rootfs))
    stat_out = sh("unsquashfs", "-stat", image).stdout
    assert "Compression xz" in stat_out and "Block size 1048576" in stat_out
    assert "Thu Oct 29" in stat_out or "Fri Oct 30" in stat_out  # filesystem time = snapshot epoch
    sh("unsquashfs", "-d", tmp_path / "x", image)
    assert tree(tmp_path / "x") == tree(rootfs)


def test_incus_split_and_unified(built):
    _, out, manifest = built
    meta, squash = out / "debian-sid.incus.tar.xz", out / "debian-sid.squashfs"
    with tarfile.open(meta) as tar:
        names = tar.getnames()
        doc = yaml.safe_load(tar.extractfile("metadata.yaml").read())
    assert names == ["metadata.yaml", "templates", "templates/hostname.tpl", "templates/hosts.tpl"]
    assert doc["architecture"] == "x86_64" and doc["creation_date"] == EPOCH
    assert {"os", "release", "variant", "serial", "description", "architecture"} <= set(doc["properties"])
    assert doc["properties"]["os"] == "debian" and doc["properties"]["release"] == "sid"
    assert doc["properties"]["serial"] == "20261030_080801" and doc["properties"]["variant"] == "default"
    assert doc["templates"]["/etc/hostname"] == {"when": ["create", "copy"], "create_only": False,
                                                 "template": "hostname.tpl", "properties": {}}
    rec = next(r for r in manifest["artifacts"] if r["format"] == "incus" and r["role"] == "metadata")
    assert rec["fingerprint"] == hashlib.sha256(meta.read_bytes() + squash.read_bytes()).hexdigest()
    with tarfile.open(out / "debian-sid.incus.tar.gz") as tar:
        names = tar.getnames()
        assert yaml.safe_load(tar.extractfile("metadata.yaml").read()) == doc
    assert "rootfs" in names and "rootfs/bin/busybox" in names and "rootfs/etc/debian_version" in names


def test_lxc_meta_and_rootfs(built, tmp_path):
    rootfs, out, _ = built
    with tarfile.open(out / "debian-sid.lxc-meta.tar.xz") as tar:
        assert sorted(tar.getnames()) == ["config", "config-user", "create-message", "excludes-user", "templates"]
        config = tar.extractfile("config").read().decode()
    assert "lxc.include = LXC_TEMPLATE_CONFIG/common.conf" in config and "lxc.arch = x86_64" in config
    (tmp_path / "x").mkdir()
    sh("tar", "--numeric-owner", "-xpJf", out / "debian-sid.lxc-rootfs.tar.xz", "-C", tmp_path / "x")
    assert tree(tmp_path / "x") == tree(rootfs)  # what lxc-download's own tar call unpacks


def test_recipe_formats_and_oci_table_are_validated(tmp_path):
    base = tmp_path / "r.toml"
    base.write_text('family = "debian"\nsuite = "sid"\nformats = ["oci", "incus"]\n'
                    '[oci]\ncmd = ["/bin/bash"]\ntag = "v1"\nlabels = {a = "b"}\n')
    r = recipes.load(str(base))
    assert r.formats == ("oci", "incus") and r.oci == OciConfig(cmd=("/bin/bash",), tag="v1", labels=(("a", "b"),))
    for bad, message in (('formats = ["qcow9"]', "unknown format 'qcow9'"), ('formats = "oci"', "must be a list"),
                         ('oci = {cmd = "x"}', "oci: key 'cmd' must be a list"),
                         ('oci = {shell = ["x"]}', "oci: unknown key 'shell'")):
        base.write_text(f'family = "debian"\nsuite = "sid"\n{bad}\n')
        with pytest.raises(RecipeError, match=message):
            recipes.load(str(base))
    assert set(FORMATS) == set(ALL)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("mirror") / "archive")


def test_pipeline_writes_recipe_and_cli_formats_identically_twice(tmp_path, archive):
    """A real guest from the local archive: recipe `formats` + `--format`, two builds, same bytes."""
    with serve(archive.root) as mirror:
        text = (f'family = "debian"\nsuite = "{archive.suite}"\nvariant = "essential"\npackages = ["hello"]\n'
                f'keyring = "{archive.keyring}"\nmirror = "{mirror}"\nformats = ["oci"]\n')
        (tmp_path / "guest.toml").write_text(text)
        outs = []
        for n in (1, 2):
            out = tmp_path / f"out{n}"
            proc = subprocess.run([sys.executable, "-m", "imagefactory", "build", str(tmp_path / "guest.toml"),
                                   "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "--format", "incus",
                                   "-q"], capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr
            outs.append(out)
    m = json.loads((outs[0] / "guest.manifest.json").read_text())
    files = [r["file"] for r in m["artifacts"]]
    assert {r["format"] for r in m["artifacts"]} == {"oci", "incus"}
    assert "guest.squashfs" in files and "guest.oci.tar" in files and "guest.incus.tar.xz" in files
    for rel in files:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    assert m["artifacts"] == json.loads((outs[1] / "guest.manifest.json").read_text())["artifacts"]
    assert not [p for p in outs[0].iterdir() if p.name.startswith(".")]  # nothing staged left


@pytest.mark.network
@pytest.mark.slow
def test_real_sid_image_runs_in_podman_and_unpacks_equal(tmp_path):
    """debian-sid from the real archive with --format oci: podman runs it, umoci unpacks the same tree."""
    need_tool("podman", "runc", "umoci")
    cache = Path(os.environ.get("IMAGEFACTORY_CACHE", "/var/cache/imagefactory"))
    out = tmp_path / "out"
    sh(sys.executable, "-m", "imagefactory", "build", "debian-sid", "--allow-expired-release", "-q", "-o", out,
       "--cache-dir", cache, "--format", "oci")
    rootfs = out / "debian-sid/rootfs"
    home = Path(tempfile.mkdtemp(prefix="if-pod-", dir="/tmp"))
    base = ["podman", "--runtime", "runc", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
            "--root", str(home / "st"), "--runroot", str(home / "run")]
    try:
        ran = sh(*base, "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit",
                 "nproc=1024:1024", f"oci-archive:{out / 'debian-sid.oci.tar'}", "cat", "/etc/debian_version")
        assert ran.stdout == (rootfs / "etc/debian_version").read_text()
    finally:
        subprocess.run([*base, "rmi", "-af"], capture_output=True, timeout=120)
        subprocess.run(["umount", "-R", str(home / "st")], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    sh("umoci", "unpack", "--image", f"{out / 'debian-sid.oci'}:latest", tmp_path / "bundle")
    assert tree(tmp_path / "bundle/rootfs") == tree(rootfs)
