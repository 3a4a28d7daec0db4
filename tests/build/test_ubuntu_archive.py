"""An Ubuntu guest through the Debian pipeline, from a local Ubuntu-style archive.

Ubuntu's archive is not reachable here, so the test builds one with Ubuntu's
conventions: every .deb with zstd-compressed members (dpkg-deb -Zzstd, as
Ubuntu builds them), main + universe components, a Release with Origin and
Label "Ubuntu", Version, MD5Sum and SHA256 sections, no Valid-Until, entries
for uncompressed Packages files the mirror does not serve, and InRelease
signed with a throwaway key.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build import recipe as recipes
from imagefactory.build.chroot import mounts_below
from imagefactory.build.debian.debfile import ar_members
from tests.support import need_tool
from tests.support.debarchive import base_packages, build_deb, extra_packages, make_key, serve

SUITE = "noble"
UNIVERSE = {"hello", "greeting-data-en", "greeting-data-fr", "broken"}  # the rest is in main


def ubuntu_release(dists: Path) -> str:
    """Release text as archive.ubuntu.com publishes it (fields and their order)."""
    entries = []
    for comp in ("main", "universe"):
        for name in ("Packages", "Packages.gz", "Packages.xz"):
            rel = f"{comp}/binary-amd64/{name}"
            if name == "Packages":  # listed by Ubuntu, but only the compressed files are served
                data = lzma.decompress((dists / (rel + ".xz")).read_bytes())
            else:
                data = (dists / rel).read_bytes()
            entries.append((rel, data))
    lines = ["Origin: Ubuntu", "Label: Ubuntu", f"Suite: {SUITE}", "Version: 24.04", f"Codename: {SUITE}",
             "Date: Thu, 25 Apr 2024 15:10:33 UTC", "Architectures: amd64 arm64 armhf i386 ppc64el riscv64 s390x",
             "Components: main restricted universe multiverse", "Description: Ubuntu Noble 24.04",
             "Acquire-By-Hash: yes"]
    for field, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append(f"{field}:")
        lines += [f" {algo(data).hexdigest()} {len(data):>16} {rel}" for rel, data in entries]
    for rel, data in entries:
        if not rel.endswith("/Packages"):
            byhash = dists / rel.rsplit("/", 1)[0] / "by-hash/SHA256" / hashlib.sha256(data).hexdigest()
            byhash.parent.mkdir(parents=True, exist_ok=True)
            byhash.write_bytes(data)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    need_tool("dpkg-deb", "dpkg-scanpackages", "gpg", "gpgv", "busybox", "zstd")
    root = tmp_path_factory.mktemp("ubuntu") / "ubuntu"
    for deb in base_packages() + extra_packages():
        comp = "universe" if deb.name in UNIVERSE else "main"
        pool = root / "pool" / comp
        pool.mkdir(parents=True, exist_ok=True)
        build_deb(dataclasses.replace(deb, compress="zstd"), pool)
    dists = root / "dists" / SUITE
    for comp in ("main", "universe"):
        text = subprocess.run(["dpkg-scanpackages", "--multiversion", f"pool/{comp}", "/dev/null"], cwd=root,
                              check=True, capture_output=True).stdout
        binary = dists / comp / "binary-amd64"
        binary.mkdir(parents=True)
        (binary / "Packages.xz").write_bytes(lzma.compress(text))
        (binary / "Packages.gz").write_bytes(gzip.compress(text, mtime=0))
    (dists / "Release").write_text(ubuntu_release(dists))
    home = root.parent / "gnupg"
    keyring = make_key(home)
    subprocess.run(["gpg", "--batch", "--yes", "--clearsign", "-o", str(dists / "InRelease"), str(dists / "Release")],
                   check=True, capture_output=True, env=dict(os.environ, GNUPGHOME=str(home)))
    return root, keyring


def test_ubuntu_recipes():
    for name, suite in (("ubuntu-noble", "noble"), ("ubuntu-jammy", "jammy")):
        r = recipes.load(name)
        assert (r.family, r.suite, r.components, r.architecture) == ("ubuntu", suite, ("main", "universe"), "amd64")
        assert r.keyring == "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
        assert r.mirror == "http://archive.ubuntu.com/ubuntu"


def test_debs_really_use_zstd(archive):
    root, _ = archive
    for deb in (root / "pool").rglob("*.deb"):
        members = ar_members(deb.read_bytes(), deb.name)
        assert "data.tar.zst" in members and "control.tar.zst" in members, deb.name


@pytest.mark.root
def test_ubuntu_guest_from_main_and_universe(archive, tmp_path):
    root, keyring = archive
    with serve(root) as url:
        # the shipped ubuntu-noble recipe, pointed at the local archive and its key
        data, _ = recipes.load_raw("ubuntu-noble")
        data.update(name="noble", variant="essential", packages=["hello"], keyring=str(keyring), mirror=url)
        r = tmp_path / "noble.toml"
        r.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items()))
        proc = subprocess.run([sys.executable, "-m", "imagefactory", "build", str(r), "-o", str(tmp_path / "out"),
                               "--cache-dir", str(tmp_path / "cache"), "--json"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads(proc.stdout)
        assert (manifest["family"], manifest["suite"]) == ("ubuntu", "noble")
        assert manifest["snapshot"]["date"] == "Thu, 25 Apr 2024 15:10:33 UTC"
        guest = tmp_path / "out/noble/rootfs"
        status = subprocess.run(["chroot", str(guest), "dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Package}\n"],
                                capture_output=True, text=True, check=True).stdout
        installed = {line.split()[-1] for line in status.splitlines() if line.startswith("ii")}
        assert {"hello", "libgreet1", "dpkg", "busybox-base"} <= installed  # hello from universe, the rest main
        assert subprocess.run(["chroot", str(guest), "hello"], capture_output=True, text=True).stdout == \
            "hello from the guest\n"
        sources = (guest / "etc/apt/sources.list.d/ubuntu.sources").read_text()
        assert f"URIs: {url}" in sources and "Suites: noble" in sources and "Components: main universe" in sources
        assert not mounts_below(tmp_path)
        # a component the archive does not have is one clear error
        data["components"] = ["main", "partner"]
        r.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items()))
        proc = subprocess.run([sys.executable, "-m", "imagefactory", "build", str(r), "-o", str(tmp_path / "o2"),
                               "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True)
        assert proc.returncode == 1 and "'partner' is not in noble" in proc.stderr.strip().splitlines()[-1]
