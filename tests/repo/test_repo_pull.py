"""`imagefactory pull` over real HTTP (python -m http.server on 127.0.0.1)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.support.repo import init_repo, make_image, run


@pytest.fixture
def served(tmp_path, capsys, gpg_key):
    """A repository with two versions of one image, served over HTTP from its root."""
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    old = make_image(tmp_path / "old", epoch=1790000000, content=b"old\n")
    new = make_image(tmp_path / "new", epoch=1793347681, content=b"new\n")
    assert run(capsys, "publish", "--repo", repo, old, new)[0] == 0
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(repo)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        port = re.search(r"port (\d+)", line).group(1)
        yield {"repo": repo, "url": f"http://127.0.0.1:{port}/current", "keyring": repo / "current/key.gpg",
               "new": new}
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_pull_newest_and_pinned_version(tmp_path, capsys, served):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "pull", served["url"], "testimg", "-o", out, "--keyring", served["keyring"],
                            "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["version"] == "20261030_080801"
    assert (out / "testimg.tar.zst").read_bytes() == served["new"].read_bytes()
    manifest = json.loads((out / "testimg.manifest.json").read_text())
    assert manifest["image"]["sha256"] == result["sha256"]
    assert sorted(p.name for p in out.iterdir()) == ["testimg.manifest.json", "testimg.tar.zst"]

    pinned = tmp_path / "pinned"
    code, _, err = run(capsys, "pull", served["url"], "testimg", "-o", pinned, "--keyring",
                       served["repo"] / "current/key.asc", "--version", "20260921_141320")
    assert code == 0, err  # the armored key works too
    assert (pinned / "testimg.tar.zst").read_bytes() != served["new"].read_bytes()

    code, _, err = run(capsys, "pull", served["url"], "nosuch", "-o", tmp_path / "none", "--keyring",
                       served["keyring"])
    assert code == 1 and "no image nosuch" in err and "available: testimg@20260921_141320, testimg@20261030_080801" in err
    assert not (tmp_path / "none").exists()


def test_pull_refuses_corrupt_image(tmp_path, capsys, served):
    image = served["repo"] / "current/images/testimg/20261030_080801/testimg.tar.zst"
    image.write_bytes(image.read_bytes()[:-1] + b"\x00")
    out = tmp_path / "out"
    code, _, err = run(capsys, "pull", served["url"], "testimg", "-o", out, "--keyring", served["keyring"])
    assert code == 3 and "does not match the signed SHA256SUMS" in err and "nothing written" in err
    assert err.count("imagefactory: error:") == 1 and "Traceback" not in err
    assert not out.exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    code, _, _ = run(capsys, "pull", served["url"], "testimg", "-o", existing, "--keyring", served["keyring"])
    assert code == 3 and list(existing.iterdir()) == []


def test_pull_refuses_bad_signature(tmp_path, capsys, served, other_key):
    sums = served["repo"] / "current/SHA256SUMS"
    original = sums.read_text()
    # An attacker re-points the newest image at different bytes: the signature no longer covers it.
    sums.write_text(original.replace(original[:8], "00000000", 1))
    out = tmp_path / "out"
    code, _, err = run(capsys, "pull", served["url"], "testimg", "-o", out, "--keyring", served["keyring"])
    assert code == 3 and "BAD signature" in err and "refusing to download" in err
    assert not out.exists()
    sums.write_text(original)

    # The right files, but the user trusts a different key.
    wrong = tmp_path / "wrong.gpg"
    home = tmp_path / "g"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    subprocess.run(["gpg", "--batch", "--import", str(other_key)], env=env, check=True, capture_output=True)
    wrong.write_bytes(subprocess.run(["gpg", "--batch", "--export"], env=env, check=True,
                                     capture_output=True).stdout)
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)
    code, _, err = run(capsys, "pull", served["url"], "testimg", "-o", out, "--keyring", wrong)
    assert code == 3 and "signed by a key not in" in err
    assert not out.exists()


def test_pull_unreachable_url(tmp_path, capsys, gpg_key):
    code, _, err = run(capsys, "pull", "http://127.0.0.1:9/repo", "x", "-o", tmp_path / "o", "--keyring",
                       gpg_key["public"])
    assert code == 4 and "127.0.0.1:9" in err
