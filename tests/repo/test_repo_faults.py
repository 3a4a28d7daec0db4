"""Missing files in a published state, and a misbehaving server under `pull` (issue 12)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.faultserver import FaultServer
from tests.support.repo import DEB_EPOCH, make_deb, make_image, make_rpm, run

IMAGE = "images/testimg/20261030_080801/testimg.tar.zst"
MANIFEST = "images/testimg/20261030_080801/testimg.manifest.json"


@pytest.fixture(scope="module")
def template(tmp_path_factory, gpg_key) -> Path:
    """One published state (a .deb, an .rpm, an image), made once; each test gets a copy."""
    tmp = tmp_path_factory.mktemp("published")
    repo = tmp / "repo"
    for argv in (["repo", "init", repo, "--key-file", gpg_key["secret"]],
                 ["publish", "-q", "--repo", repo, make_deb(tmp), make_rpm(tmp), make_image(tmp / "img")]):
        subprocess.run([sys.executable, "-m", "imagefactory", *map(str, argv)], check=True, capture_output=True)
    return repo


@pytest.fixture
def published(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "repo", symlinks=True)
    return tmp_path / "repo"


@pytest.mark.parametrize("missing,line", [
    ("dists/stable/InRelease", "FAIL apt: dists/stable/InRelease is missing"),
    ("dists/stable/Release", "FAIL apt: dists/stable/Release is missing"),
    ("dists/stable/Release.gpg", "FAIL apt: dists/stable/Release.gpg is missing"),
    ("rpm/repodata/repomd.xml.asc", "FAIL rpm: rpm/repodata/repomd.xml.asc is missing"),
    ("SHA256SUMS.gpg", "FAIL images: SHA256SUMS.gpg is missing"),
    ("SHA256SUMS", "FAIL images: SHA256SUMS is missing"),
    ("streams/v1/index.sjson", "FAIL images: streams/v1/index.sjson is missing"),
])
def test_verify_names_missing_files_and_checks_everything_else(tmp_path, capsys, published, missing, line):
    current = published / "current"
    (current / missing).unlink()
    # a second, unrelated problem must still be found: verification goes on past the missing file
    pool = current / "pool/main/hello-if/hello-if_1.0-1_all.deb"
    pool.write_bytes(pool.read_bytes() + b"x")
    image = current / IMAGE
    image.write_bytes(image.read_bytes() + b"x")
    code, out, err = run(capsys, "repo", "verify", published)
    assert code == 3, err
    assert line in out.splitlines(), out
    if not missing.startswith(("dists/stable/InRelease", "dists/stable/Release")):
        assert "FAIL apt: pool/main/hello-if/hello-if_1.0-1_all.deb does not match its checksum/size" in out, out
    else:  # one of InRelease / Release+Release.gpg is still signed: the rest is checked against it
        assert "pool/main/hello-if/hello-if_1.0-1_all.deb does not match" in out, out
    if missing != "SHA256SUMS":
        assert f"FAIL images: {IMAGE} does not match its checksum/size" in out, out
    assert err.count("imagefactory: error:") == 1 and "Traceback" not in err
    assert "No such file or directory" not in out + err


def test_test_debs_do_not_depend_on_the_clock(tmp_path):
    """The flaky repo test: two builds of one .deb differed when they straddled a second boundary."""
    deb = make_deb(tmp_path)
    members = subprocess.run(["ar", "tv", str(deb)], capture_output=True, text=True, check=True).stdout
    assert members.count("Jan  1 00:00 2026") == 3, members
    for member in ("control.tar.xz", "data.tar.xz"):
        blob = subprocess.run(["ar", "p", str(deb), member], capture_output=True, check=True).stdout
        extracted = tmp_path / member
        extracted.write_bytes(blob)
        with tarfile.open(extracted) as tar:
            assert {m.mtime for m in tar.getmembers()} == {DEB_EPOCH}


@pytest.fixture
def served(published):
    with FaultServer((published / "current").resolve()) as server:
        yield server, published / "current/key.gpg"


def pull(capsys, server, keyring: Path, out: Path):
    return run(capsys, "pull", server.url, "testimg", "-o", out, "--keyring", keyring)


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    monkeypatch.setenv("IMAGEFACTORY_CONNECT_TIMEOUT", "2")
    monkeypatch.setenv("IMAGEFACTORY_READ_TIMEOUT", "1")


@pytest.mark.parametrize("path,kind,extra,code,needle", [
    ("/SHA256SUMS.gpg", "404", {}, 4, "HTTP 404"),
    ("/SHA256SUMS", "500", {}, 4, "HTTP 500 "),
    ("/" + IMAGE, "stall", {"after": 50}, 4, "stalled (no data for 1 s) after 50 bytes (tried 2 times)"),
    ("/" + IMAGE, "delay", {"seconds": 30}, 4, "stalled"),
    ("/" + IMAGE, "drop", {"after": 10}, 4, "connection dropped after 10 of"),
    ("/" + MANIFEST, "drop", {}, 4, "dropped"),
    ("/" + IMAGE, "wrong", {}, 3, "does not match the signed SHA256SUMS"),
])
def test_pull_failures_name_the_url_and_leave_nothing(tmp_path, capsys, served, path, kind, extra, code, needle):
    server, keyring = served
    server.fault(path, kind, **extra)
    out = tmp_path / "out"
    rc, _, err = pull(capsys, server, keyring, out)
    assert rc == code, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("imagefactory: error: ") and server.url + path in line and needle in line, line
    assert not out.exists()
    if kind in ("500", "stall", "delay") or extra.get("after"):
        assert server.hits[path] == 2, dict(server.hits)  # retried once
    elif kind == "drop":  # a connection closed before any answer looks like a stale keep-alive one at first:
        assert server.hits[path] == 3, dict(server.hits)  # one free reconnect, then the counted retry


def test_pull_survives_one_transient_failure(tmp_path, capsys, served):
    server, keyring = served
    server.fault("/" + IMAGE, "drop", after=10, times=1)
    server.fault("/SHA256SUMS", "500", times=1)
    rc, _, err = pull(capsys, server, keyring, tmp_path / "out")
    assert rc == 0, err
    assert server.hits["/" + IMAGE] == 2 and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "testimg.manifest.json", "testimg.tar.zst"]
