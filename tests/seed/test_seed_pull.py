"""`imagefactory seed NAME --repo URL` and `seed URL/NAME`: pulled through repo.pull, verified, seeded."""

from __future__ import annotations

import json

from tests.support.repo import init_repo, run
from tests.support.seed import run_cli, seed_args, tiny_image


def _published(tmp_path, capsys, gpg_key):  # noqa: F811
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    (tmp_path / "build").mkdir()
    image = tiny_image(tmp_path / "build")
    assert run(capsys, "publish", "--repo", repo, image)[0] == 0
    return f"file://{repo}/current", repo / "current/key.gpg", image


def test_seed_by_name_from_repo_and_by_url(tmp_path, capsys, gpg_key):  # noqa: F811
    url, keyring, image = _published(tmp_path, capsys, gpg_key)
    cache = tmp_path / "cache"
    args = seed_args("tiny", "web1", tmp_path, "--repo", url, "--keyring", str(keyring), "--cache", str(cache),
                     "--json")
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads(out)["image_sha256"] == json.loads(image.with_name("tiny.manifest.json").read_text())["image"]["sha256"]
    assert (cache / "tiny.tar.zst").read_bytes() == image.read_bytes()
    assert (tmp_path / "vservers/web1/etc/hostname").read_text() == "image\n"

    args = seed_args(f"{url}/tiny@20261030_080801", "web2", tmp_path, "--keyring", str(keyring),
                     "--cache", str(cache), ip="10.0.0.12/24")
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert (tmp_path / "etc/web2/context").read_text() == "40001\n"


def test_seed_from_repo_needs_a_keyring(tmp_path, capsys):
    code, _, err = run_cli(seed_args("tiny", "web1", tmp_path, "--repo", "file:///nowhere"), capsys)
    assert code == 1 and "--keyring" in err


def test_seed_name_without_repo_is_explained(tmp_path, capsys):
    code, _, err = run_cli(seed_args("debian-sid", "web1", tmp_path), capsys)
    assert code == 1 and "give --repo URL" in err
