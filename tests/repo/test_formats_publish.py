"""Publishing the runtime formats and the repository lifecycle, proven with real clients:
lxc-create -t download over HTTPS + lxc-execute, gpgv on the LXC .asc files, skopeo on the
published OCI layout, apt on Valid-Until; simplestreams checked item by item."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from repo.layout import Repo
from repo.publish import resign
from tests.support import need_tool
from tests.support.formats import EPOCH, busybox_tree, formats_image, serve_https, throwaway_ca
from tests.support.repo import apt, apt_root, init_repo, make_deb, run

pytestmark = pytest.mark.root
VERSION = "20261030_080801"


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> Path:
    return busybox_tree(tmp_path_factory.mktemp("tree") / "rootfs")


@pytest.fixture(scope="module")
def image(rootfs, tmp_path_factory) -> Path:
    return formats_image(rootfs, tmp_path_factory.mktemp("out"))


@pytest.fixture
def published(tmp_path, capsys, gpg_key, image) -> Path:
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    code, _, err = run(capsys, "publish", "--repo", repo, image)
    assert code == 0, err
    return repo


def test_simplestreams_items_for_incus_and_lxd(published, capsys):
    cur = published / "current"
    products = json.loads((cur / "streams/v1/images.json").read_text())["products"]
    product = products["imagefactory:debian-sid:amd64"]
    assert product["aliases"] == "debian-sid,debian/sid/default,debian/sid"
    assert (product["os"], product["release"], product["release_title"], product["arch"]) == \
        ("debian", "sid", "sid", "amd64")
    assert list(product["versions"]) == [VERSION] and VERSION[:8].isdigit()  # Incus skips non-YYYYMMDD keys
    items = product["versions"][VERSION]["items"]
    meta, squash = items["incus.tar.xz"], items["squashfs"]
    assert items["lxd.tar.xz"] == meta | {"ftype": "lxd.tar.xz"}  # same file under both clients' names
    combined = hashlib.sha256((cur / meta["path"]).read_bytes() + (cur / squash["path"]).read_bytes()).hexdigest()
    assert meta["combined_squashfs_sha256"] == combined
    assert items["incus_combined.tar.gz"]["combined_type"] == "container"
    for item in items.values():
        data = (cur / item["path"]).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (item["sha256"], item["size"])
    # items are written before images.json, images.json before index.json
    assert os.stat(cur / meta["path"]).st_mtime_ns <= os.stat(cur / "streams/v1/images.json").st_mtime_ns \
        <= os.stat(cur / "streams/v1/index.json").st_mtime_ns
    code, out, err = run(capsys, "repo", "verify", published)
    assert code == 0, out + err


def test_published_oci_layout_is_read_by_skopeo(published, capsys, rootfs, tmp_path):
    need_tool("skopeo")
    layout = published / "current/oci/debian-sid"
    for tag in (VERSION, "latest"):
        info = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{layout}:{tag}"], capture_output=True,
                                         text=True, check=True).stdout)
        assert info["Architecture"] == "amd64"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:latest", f"dir:{tmp_path / 'd'}"], check=True,
                   capture_output=True)


def test_lxc_download_template_over_https_then_lxc_execute(published, tmp_path, gpg_key):
    need_tool("lxc-create", "lxc-execute", "lxc-destroy", "wget", "gpgv")
    cur = published / "current"
    index = (cur / "meta/1.0/index-system").read_text()
    assert index == f"debian;sid;amd64;default;{VERSION};/images/debian-sid/{VERSION}/lxc\n"
    keyring = cur / "key.gpg"
    for rel in ("meta/1.0/index-system", f"images/debian-sid/{VERSION}/lxc/meta.tar.xz",
                f"images/debian-sid/{VERSION}/lxc/rootfs.tar.xz"):  # what LXC <= 4.0 templates verify
        subprocess.run(["gpgv", "--keyring", str(keyring), str(cur / (rel + ".asc")), str(cur / rel)], check=True,
                       capture_output=True)
    ca, cert, key = throwaway_ca(tmp_path / "tls")
    lxcpath, cache = tmp_path / "lxc", tmp_path / "lxc-cache"
    lxcpath.mkdir()
    (tmp_path / "default.conf").write_text("lxc.net.0.type = empty\n")  # no host bridge here
    args = ["lxc-create", "-P", str(lxcpath), "-n", "c1", "-f", str(tmp_path / "default.conf"), "-t", "download",
            "--", "--dist", "debian", "--release", "sid", "--arch", "amd64"]
    with serve_https(cur, cert, key) as server:
        untrusted = subprocess.run([*args, "--server", server], capture_output=True, text=True, timeout=120,
                                   env={**os.environ, "LXC_CACHE_PATH": str(cache), "WGETRC": "/dev/null"})
        assert untrusted.returncode != 0  # the template refuses a server whose certificate it cannot verify
        (tmp_path / "wgetrc").write_text(f"ca_certificate = {ca}\n")
        env = {**os.environ, "LXC_CACHE_PATH": str(cache), "WGETRC": str(tmp_path / "wgetrc")}
        created = subprocess.run([*args, "--server", server], capture_output=True, text=True, timeout=300, env=env)
    try:
        assert created.returncode == 0, created.stdout + created.stderr
        assert "built by imagefactory" in created.stdout  # our create-message
        config = (lxcpath / "c1/config").read_text()
        assert "lxc.arch = x86_64" in config and "lxc.uts.name = c1" in config
        ran = subprocess.run(["lxc-execute", "-P", str(lxcpath), "-n", "c1", "--", "/bin/cat",
                              "/etc/debian_version"], capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "forky/sid\n"
    finally:
        subprocess.run(["lxc-destroy", "-P", str(lxcpath), "-n", "c1", "-f"], capture_output=True, timeout=120)


def test_apt_refuses_expired_release_until_resign(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo", "--valid-days", "7")
    assert run(capsys, "publish", "--repo", repo, make_deb(tmp_path))[0] == 0
    # this host's apt.conf.d turns the checks off (for sid's expired InRelease); apt's defaults are on
    cmd = apt_root(tmp_path, repo) + ["-o=Acquire::Check-Valid-Until=true", "-o=Acquire::Check-Date=true"]
    assert apt(cmd, "update").returncode == 0
    resign(Repo(repo), now=time.time() - 8 * 86400)  # signed eight days ago: Valid-Until is yesterday
    shutil.rmtree(tmp_path / "aptroot/var/lib/apt/lists")
    (tmp_path / "aptroot/var/lib/apt/lists/partial").mkdir(parents=True)
    stale = apt(cmd, "update")
    assert "is expired" in stale.stdout + stale.stderr, stale.stdout + stale.stderr
    code, out, err = run(capsys, "repo", "verify", repo)
    assert code == 3 and "expired" in out + err and "repo resign" in out + err
    code, out, err = run(capsys, "repo", "resign", repo)
    assert code == 0 and "valid until" in out, err
    fresh = apt(cmd, "update")
    assert fresh.returncode == 0 and "is expired" not in fresh.stdout + fresh.stderr, fresh.stdout + fresh.stderr
    assert apt(cmd, "install", "hello-if").returncode == 0
    assert run(capsys, "repo", "verify", repo)[0] == 0


def test_retention_keeps_n_versions_and_old_files_leave_after_grace(tmp_path, capsys, gpg_key, rootfs):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo", "--grace", "3600")
    code, out, err = run(capsys, "repo", "configure", repo, "--keep-versions", "2")
    assert code == 0 and "keep 2 version(s)" in out, err
    for n in range(3):
        img = formats_image(rootfs, tmp_path / f"b{n}", epoch=EPOCH + n * 86400, formats=("lxc",))
        deb = make_deb(tmp_path / f"d{n}", version=f"1.{n}-1", payload=f"v{n}\n".encode())
        code, out, err = run(capsys, "publish", "--repo", repo, img, deb)
        assert code == 0, err
    state = json.loads((repo / "current/state.json").read_text())
    assert sorted(state["images"]) == ["debian-sid@20261031_080801", "debian-sid@20261101_080801"]
    assert sorted(state["debs"]) == ["hello-if_1.1-1_all", "hello-if_1.2-1_all"]
    gone = repo / "current/images/debian-sid/20261030_080801"
    assert not gone.exists() and not (repo / "current/pool/main/hello-if/hello-if_1.0-1_all.deb").exists()
    index = (repo / "current/meta/1.0/index-system").read_text()
    assert "20261101_080801" in index and "20261030" not in index
    previous = repo / "states" / f"{state['serial'] - 1:06d}"
    assert (previous / "images/debian-sid/20261030_080801/lxc/rootfs.tar.xz").is_file()  # grace: still served
    assert run(capsys, "repo", "verify", repo)[0] == 0
    # after the grace period only the kept states remain, and with them the retired files are gone
    removed = Repo(repo).prune(keep=1, grace=3600, now=time.time() + 7200)
    assert removed and not list((repo / "states").glob("*/images/debian-sid/20261030_080801"))


def test_repo_remove_an_image_version(published, capsys):
    code, out, err = run(capsys, "repo", "remove", published, f"debian-sid@{VERSION}")
    assert code == 0, err
    cur = published / "current"
    assert not (cur / "images/debian-sid").exists() and not list((cur / "oci").rglob("*"))
    assert not (cur / "meta/1.0/index-system").exists()
    assert json.loads((cur / "streams/v1/images.json").read_text())["products"] == {}
    assert run(capsys, "repo", "verify", published)[0] == 0
    code, out, err = run(capsys, "repo", "remove", published, "debian-sid@19990101_000000")
    assert code == 1 and "is not published" in err and "Traceback" not in err


def test_replace_drops_the_old_builds_formats(tmp_path, capsys, gpg_key, rootfs):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    assert run(capsys, "publish", "--repo", repo, formats_image(rootfs, tmp_path / "a", formats=("lxc", "oci")))[0] == 0
    changed = tmp_path / "changed"
    subprocess.run(["cp", "-a", str(rootfs), str(changed)], check=True)
    (changed / "etc/motd").write_text("rebuilt\n")
    code, _, err = run(capsys, "publish", "--repo", repo, "--replace",
                       formats_image(changed, tmp_path / "b", formats=("incus",)))
    assert code == 0, err
    base = repo / f"current/images/debian-sid/{VERSION}"
    assert sorted(p.name for p in base.iterdir()) == ["debian-sid.incus.tar.xz", "debian-sid.manifest.json",
                                                      "debian-sid.squashfs", "debian-sid.tar.zst"]
    assert not (repo / "current/oci").exists() or not list((repo / "current/oci").iterdir())
    assert not (repo / "current/meta/1.0/index-system").exists()
    assert run(capsys, "repo", "verify", repo)[0] == 0
