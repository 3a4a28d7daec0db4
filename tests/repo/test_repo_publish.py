"""publish / repo init|verify|list through the CLI: layout, bad input, tampering."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from tests.support.repo import init_repo, make_deb, make_image, make_rpm, run, snapshot


def test_publish_everything_then_verify_and_list(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    deb, rpm = make_deb(tmp_path), make_rpm(tmp_path)
    image = make_image(tmp_path / "img")
    extra = tmp_path / "kernel-6.1-vs.json"
    extra.write_text(json.dumps({"kernel": "6.1", "config_sha256": "0" * 64}))

    code, out, err = run(capsys, "publish", "--repo", repo, "--json", deb, rpm, image, extra)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["serial"] == 2 and len(summary["added"]) == 4

    current = repo / "current"
    assert os.readlink(current) == "states/000002"
    for rel in ("dists/stable/InRelease", "dists/stable/Release.gpg", "dists/stable/main/binary-amd64/Packages.xz",
                "pool/main/hello-if/hello-if_1.0-1_all.deb", "rpm/repodata/repomd.xml.asc",
                "images/testimg/20261030_080801/testimg.tar.zst",
                "images/testimg/20261030_080801/testimg.manifest.json", "manifests/kernel-6.1-vs.json",
                "streams/v1/index.json", "streams/v1/images.sjson", "SHA256SUMS.gpg", "key.gpg"):
        assert (current / rel).is_file(), rel
    release = (current / "dists/stable/Release").read_text()
    assert "Acquire-By-Hash: yes" in release and "MD5Sum:" in release and "SHA256:" in release
    packages = (current / "dists/stable/main/binary-amd64/Packages").read_text()
    assert "Package: hello-if\n" in packages and " Second paragraph." in packages
    assert "Filename: pool/main/hello-if/hello-if_1.0-1_all.deb" in packages
    products = json.loads((current / "streams/v1/images.json").read_text())["products"]
    item = products["imagefactory:testimg:amd64"]["versions"]["20261030_080801"]["items"]["root.tar.zst"]
    assert item["sha256"] == json.loads((tmp_path / "img/testimg.manifest.json").read_text())["image"]["sha256"]
    assert "manifests/kernel-6.1-vs.json" in (current / "SHA256SUMS").read_text()

    code, out, err = run(capsys, "repo", "verify", repo)
    assert code == 0, out + err
    code, out, _ = run(capsys, "repo", "list", repo, "--json")
    kinds = sorted(a["kind"] for a in json.loads(out)["artifacts"])
    assert kinds == ["deb", "image", "manifest", "rpm"]

    # Publishing the same files again is a no-op, not a new state.
    code, out, err = run(capsys, "publish", "--repo", repo, deb, rpm, image)
    assert code == 0 and "nothing to publish" in out
    assert os.readlink(current) == "states/000002"


def test_bad_inputs_leave_repository_unchanged(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    deb = make_deb(tmp_path / "v1", payload=b"one\n")
    image = make_image(tmp_path / "img")
    assert run(capsys, "publish", "--repo", repo, deb, image)[0] == 0
    before = snapshot(repo)

    # 1. manifest hash does not match the image
    bad = make_image(tmp_path / "bad", name="badimg")
    bad.write_bytes(bad.read_bytes() + b"\0")
    code, _, err = run(capsys, "publish", "--repo", repo, make_deb(tmp_path / "new", name="other"), bad)
    assert code == 3 and "does not match its manifest" in err and err.count("imagefactory: error:") == 1

    # 2. same package version, different content
    code, _, err = run(capsys, "publish", "--repo", repo, make_deb(tmp_path / "v2", payload=b"two\n"))
    assert code == 1 and "already published with different content" in err and "--replace" in err

    # 3. same image version, different content
    changed = make_image(tmp_path / "img2", content=b"changed\n")
    code, _, err = run(capsys, "publish", "--repo", repo, changed)
    assert code == 1 and "testimg@20261030_080801 is already published" in err

    # 4. the signing key is gone
    config_path = repo / ".imagefactory/config.json"
    config = json.loads(config_path.read_text())
    moved = tmp_path / "moved.asc"
    shutil.move(config["key_file"], moved)
    code, _, err = run(capsys, "publish", "--repo", repo, make_deb(tmp_path / "new2", name="third"))
    assert code == 1 and "key file" in err and "does not exist" in err
    shutil.move(moved, config["key_file"])

    # 5. not a package at all
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"!<arch>\nnot really")
    code, _, err = run(capsys, "publish", "--repo", repo, junk)
    assert code == 1 and "not a readable .deb" in err

    assert snapshot(repo) == before

    # --replace is the explicit way through.
    code, _, err = run(capsys, "publish", "--repo", repo, "--replace", make_deb(tmp_path / "v2b", payload=b"two\n"))
    assert code == 0, err
    assert run(capsys, "repo", "verify", repo)[0] == 0


def test_init_refuses_missing_key_and_wrong_key_later(tmp_path, capsys, gpg_key, other_key):
    code, _, err = run(capsys, "repo", "init", tmp_path / "r1", "--key", "NoSuchKey-0xDEADBEEF")
    assert code == 1 and "no secret signing key" in err
    assert not (tmp_path / "r1").exists()
    code, _, err = run(capsys, "repo", "init", tmp_path / "r2")
    assert code == 2 and "exactly one of --key" in err

    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    before = snapshot(repo)
    config_path = repo / ".imagefactory/config.json"
    config = json.loads(config_path.read_text())
    shutil.copy(other_key, config["key_file"] + ".other")
    config["key_file"] += ".other"
    config_path.write_text(json.dumps(config))
    code, _, err = run(capsys, "publish", "--repo", repo, make_deb(tmp_path))
    assert code == 1 and "clients would reject" in err
    before[".imagefactory/config.json"] = snapshot(repo)[".imagefactory/config.json"]
    assert snapshot(repo) == before


def test_verify_catches_tampering(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    files = [make_deb(tmp_path), make_rpm(tmp_path), make_image(tmp_path / "img")]
    assert run(capsys, "publish", "--repo", repo, *files)[0] == 0
    current = repo / "current"
    targets = {
        "pool/main/hello-if/hello-if_1.0-1_all.deb": "apt: pool/main/hello-if/hello-if_1.0-1_all.deb",
        "dists/stable/main/binary-amd64/Packages": "apt: main/binary-amd64/Packages",
        "dists/stable/InRelease": "apt: bad signature on InRelease",
        "rpm/Packages/hello-if-1.0-1.noarch.rpm": "rpm: Packages/hello-if-1.0-1.noarch.rpm",
        "rpm/repodata/repomd.xml": "rpm: bad signature repomd.xml.asc",
        "images/testimg/20261030_080801/testimg.tar.zst": "images: images/testimg/20261030_080801/testimg.tar.zst",
        "SHA256SUMS": "images: bad signature SHA256SUMS.gpg",
    }
    for rel, expected in targets.items():
        path = current / rel
        original = path.read_bytes()
        tampered = original.replace(b"1.0", b"6.6") if b"1.0" in original else original + b"\n"
        if rel.endswith("InRelease"):
            tampered = original.replace(b"Suite: stable", b"Suite: stabl3")
        assert tampered != original
        path.write_bytes(tampered)
        code, out, err = run(capsys, "repo", "verify", repo)
        assert code == 3, rel
        assert any(line.startswith(f"FAIL {expected}") for line in out.splitlines()), (rel, out)
        path.write_bytes(original)
    assert run(capsys, "repo", "verify", repo)[0] == 0


def _kernel_manifest(directory, packages) -> None:
    (directory / "kernel-manifest.json").write_text(json.dumps({
        "schema": "imagefactory-kernel-manifest/1", "recipe": "vs-test", "kernel_release": "6.1.0-vs1",
        "packages": [{"name": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                      "size": p.stat().st_size} for p in packages]}))


def test_kernel_manifest_beside_packages_is_published_and_checked(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    kdir = tmp_path / "kernel"
    kdir.mkdir()
    deb, rpm = make_deb(kdir, name="linux-image-6.1.0-vs1"), make_rpm(kdir, name="kernel-vs")
    _kernel_manifest(kdir, [deb, rpm])
    code, out, err = run(capsys, "publish", "--repo", repo, "--json", deb, rpm)  # like kernel/*.deb kernel/*.rpm
    assert code == 0, err
    assert "vs-test-6.1.0-vs1.kernel-manifest.json" in json.loads(out)["added"]
    published = repo / "current/manifests/vs-test-6.1.0-vs1.kernel-manifest.json"
    assert published.read_bytes() == (kdir / "kernel-manifest.json").read_bytes()
    assert "manifests/vs-test-6.1.0-vs1.kernel-manifest.json" in (repo / "current/SHA256SUMS").read_text()

    # A package the manifest does not describe (rebuilt behind its back) is refused.
    other = tmp_path / "other"
    other.mkdir()
    stale = make_deb(other, name="linux-image-6.1.0-vs2", payload=b"old")
    _kernel_manifest(other, [stale])
    make_deb(other / "rebuilt", name="linux-image-6.1.0-vs2", payload=b"new")
    shutil.copy(other / "rebuilt/linux-image-6.1.0-vs2_1.0-1_all.deb", stale)
    before = snapshot(repo)
    code, _, err = run(capsys, "publish", "--repo", repo, stale)
    assert code == 3 and "does not match the sha256 in" in err
    assert snapshot(repo) == before


def test_init_with_key_from_users_keyring(tmp_path, capsys, gpg_key, monkeypatch):
    monkeypatch.setenv("GNUPGHOME", str(gpg_key["home"]))
    code, out, err = run(capsys, "repo", "init", tmp_path / "repo", "--key", "t@example.invalid", "--json")
    assert code == 0, err
    assert len(json.loads(out)["fingerprint"]) == 40
    assert run(capsys, "publish", "--repo", tmp_path / "repo", make_deb(tmp_path))[0] == 0
    assert run(capsys, "repo", "verify", tmp_path / "repo")[0] == 0
