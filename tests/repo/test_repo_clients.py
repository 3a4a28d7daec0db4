"""Real clients accept the published repository: apt (separate apt root), rpmkeys and dnf."""

from __future__ import annotations

import lzma
import shutil
import subprocess

import pytest

from tests.support import need_tool
from tests.support.repo import apt, apt_root, init_repo, make_deb, make_rpm, run, stop_gpg_agents


@pytest.mark.root
def test_apt_update_and_install_from_published_repo(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    assert run(capsys, "publish", "--repo", repo, make_deb(tmp_path, payload=b"from the repo\n"))[0] == 0
    cmd = apt_root(tmp_path, repo)
    update = apt(cmd, "update")
    assert update.returncode == 0 and "W:" not in update.stdout + update.stderr, update.stdout + update.stderr
    install = apt(cmd, "install", "hello-if")
    assert install.returncode == 0, install.stdout + install.stderr
    assert (tmp_path / "aptroot/usr/share/hello-if/data").read_bytes() == b"from the repo\n"
    assert "Status: install ok installed" in (tmp_path / "aptroot/var/lib/dpkg/status").read_text()

    # A second publish (new version) is picked up by a plain update + upgrade.
    assert run(capsys, "publish", "--repo", repo, make_deb(tmp_path / "v2", version="1.1-1", payload=b"v2\n"))[0] == 0
    assert apt(cmd, "update").returncode == 0
    upgrade = apt(cmd, "upgrade")
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert (tmp_path / "aptroot/usr/share/hello-if/data").read_bytes() == b"v2\n"


def test_apt_rejects_tampered_package_and_index(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    assert run(capsys, "publish", "--repo", repo, make_deb(tmp_path))[0] == 0
    cmd = apt_root(tmp_path, repo)
    assert apt(cmd, "update").returncode == 0

    # A swapped package body: apt downloads it and refuses the hash.
    pool = repo / "current/pool/main/hello-if/hello-if_1.0-1_all.deb"
    good = pool.read_bytes()
    shutil.copy(make_deb(tmp_path / "evil", payload=b"evil\n"), pool)
    (tmp_path / "dl/partial").mkdir(parents=True, exist_ok=True)
    fetch = apt(cmd, "install", "--download-only", "-o=Dir::Cache::Archives=" + str(tmp_path / "dl"), "hello-if")
    assert fetch.returncode != 0 and "Hash Sum mismatch" in fetch.stdout + fetch.stderr, fetch.stdout + fetch.stderr
    assert run(capsys, "repo", "verify", repo)[0] == 3
    pool.write_bytes(good)

    # A rewritten Packages index (every copy, as a hostile mirror would): the signed Release disagrees.
    binary = repo / "current/dists/stable/main/binary-amd64"
    text = (binary / "Packages").read_text().replace("Version: 1.0-1", "Version: 1.0-2")
    for path in [binary / "Packages", *(binary / "by-hash/SHA256").iterdir()]:
        path.write_bytes(text.encode())
    (binary / "Packages.xz").write_bytes(lzma.compress(text.encode()))
    shutil.rmtree(tmp_path / "aptroot/var/lib/apt/lists")
    (tmp_path / "aptroot/var/lib/apt/lists/partial").mkdir(parents=True)
    update = apt(cmd, "update")
    output = update.stdout + update.stderr
    assert update.returncode != 0 or "E:" in output, output
    assert "Hash Sum mismatch" in output or "File has unexpected size" in output, output
    assert run(capsys, "repo", "verify", repo)[0] == 3


def test_rpm_signatures_and_dnf_install(tmp_path, capsys, gpg_key):
    need_tool("rpmkeys", "dnf")
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    source = make_rpm(tmp_path)
    assert run(capsys, "publish", "--repo", repo, source)[0] == 0
    published = repo / "current/rpm/Packages/hello-if-1.0-1.noarch.rpm"

    rpmdb = tmp_path / "rpmdb"
    rpmdb.mkdir()
    subprocess.run(["rpmkeys", "--root", str(rpmdb), "--import", str(repo / "current/key.asc")], check=True)
    check = subprocess.run(["rpmkeys", "--root", str(rpmdb), "--checksig", "-v", str(published)],
                           capture_output=True, text=True)
    assert check.returncode == 0 and "Signature, key ID" in check.stdout and ": OK" in check.stdout, check.stdout
    unsigned = subprocess.run(["rpmkeys", "--root", str(rpmdb), "--checksig", "-v", str(source)],
                              capture_output=True, text=True)
    assert "Signature, key ID" not in unsigned.stdout  # the signature is the repository's doing

    conf = tmp_path / "dnf.conf"
    conf.write_text("[main]\nreposdir=/nonexistent\n")
    root = tmp_path / "dnfroot"
    dnf = ["dnf", "-y", "-q", f"--installroot={root}", f"--config={conf}", f"--setopt=cachedir={tmp_path}/dnfcache",
           f"--repofrompath=ifrepo,file://{repo}/current/rpm", "--setopt=ifrepo.gpgcheck=1",
           "--setopt=ifrepo.repo_gpgcheck=1", f"--setopt=ifrepo.gpgkey=file://{repo}/current/key.asc",
           "--releasever=40"]
    try:
        result = subprocess.run(dnf + ["install", "hello-if"], capture_output=True, text=True, timeout=120)
    finally:
        stop_gpg_agents(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "usr/share/hello-if/data").read_text() == "1.0\n"

    # A tampered repomd.xml fails its signature for dnf and for `repo verify`.
    repomd = repo / "current/rpm/repodata/repomd.xml"
    repomd.write_text(repomd.read_text().replace("<revision>", "<revision>9"))
    shutil.rmtree(tmp_path / "dnfcache")
    try:
        result = subprocess.run(dnf + ["--refresh", "makecache"], capture_output=True, text=True, timeout=120)
    finally:
        stop_gpg_agents(tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    code, out, _ = run(capsys, "repo", "verify", repo)
    assert code == 3 and "FAIL rpm: bad signature repomd.xml.asc" in out
