"""`imagefactory build` of a Fedora-like guest from a real, signed rpm-md repository.

The repository is made by rpmbuild + rpmsign + createrepo_c (tests/support/rpmdata);
the guest is installed by rpm itself, its scriptlets run in the chroot, and
the image and manifest come out of the family-neutral pipeline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build.chroot import mounts_below
from imagefactory.build.rpm.install import RPMDB, config_files, file_list
from tests.support import need_tool
from tests.support.debarchive import serve
from tests.support.rpmdata.makerepo import make_key, make_repo, sign_repomd

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    need_tool("rpm", "rpmbuild", "rpmsign", "rpmkeys", "createrepo_c", "gpg", "gpgv", "busybox")
    return make_repo(tmp_path_factory.mktemp("rpmrepo"))


def recipe(tmp_path: Path, repo, mirror: str, **extra: str) -> Path:
    keys = {
        "family": '"fedora"', "suite": '"41"', "variant": '"minimal"', "mirror": f'"{mirror}"',
        "keyring": f'"{repo.key}"', "repo_gpgcheck": "true", "hostname": '"toy1"',
        "packages": '["oldutils"]', "exclude_paths": '["/usr/lib64/*"]',
    }
    keys.update(extra)
    path = tmp_path / "toy.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in keys.items())
                    + '[[customize]]\nrun = "toyutils > /etc/greeting"\n')
    return path


def imagefactory(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagefactory", *args], capture_output=True, text=True)


def rpmq(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rpm", "--root", str(root), "--dbpath", RPMDB, *args], capture_output=True, text=True)


def test_full_build_over_http(tmp_path, repo):
    out = tmp_path / "out"
    with serve(repo.path) as url:
        r = str(recipe(tmp_path, repo, url + "/"))
        proc = imagefactory("build", r, "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "--json")
        assert proc.returncode == 0, proc.stderr
        again = imagefactory("build", r, "-o", str(tmp_path / "out2"), "--cache-dir", str(tmp_path / "cache"))
    # a second build downloads nothing and is byte-identical (the rpmdb too: install times = the snapshot)
    assert again.returncode == 0 and "download: 0 of 6 packages" in again.stderr
    assert (tmp_path / "out2/toy.tar.zst").read_bytes() == (out / "toy.tar.zst").read_bytes()
    manifest = json.loads((out / "toy.manifest.json").read_text())
    assert manifest == json.loads(proc.stdout)
    assert manifest["family"] == "fedora" and manifest["snapshot"]["mirror"] == url + "/"
    want = {f"{p['name']}-{p['version'].split(':')[-1]}.{p['architecture']}" for p in manifest["packages"]}
    # the comps group core (basesystem, toyutils) + oldutils (obsoleted: toyutils) and their closure;
    # the newest libtoy (caret sorts after the base version), never the i686 one; (toysh or mksh) -> toysh
    assert want == {"basesystem-11-1.tc1.noarch", "filesystem-3.18-1.tc1.x86_64", "libtoy-1.0^git1-1.tc1.x86_64",
                    "setup-2.15.0-2.tc1.noarch", "toysh-1.35.0-1.tc1.x86_64", "toyutils-2.0-1.tc1.x86_64"}
    root = out / "toy" / "rootfs"
    installed = set(rpmq(root, "-qa").stdout.split())
    assert min(map(int, rpmq(root, "-qa", "--qf", "%{INSTALLTIME}\n").stdout.split())) == manifest["source_date_epoch"]
    assert want <= installed and all(n.startswith("gpg-pubkey-") for n in installed - want)
    verify = rpmq(root, "-Va")
    assert "missing" not in verify.stdout and verify.stderr == ""
    # only /etc/hosts differs from its package: the guest's identity is written over setup's %config
    assert [line.split()[-1] for line in verify.stdout.splitlines()] == ["/etc/hosts"]
    assert subprocess.run(["chroot", str(root), "/bin/sh", "-c", "echo ok"], capture_output=True,
                          text=True).stdout == "ok\n"
    assert (root / "var/lib/toyutils.stamp").read_text() == "toyutils configured\n"  # %post ran in the chroot
    assert (root / "etc/greeting").read_text() == "toyutils\n" and (root / "etc/hostname").read_text() == "toy1\n"
    assert not (root / "usr/lib64/libtoy.so.1").exists()  # exclude_paths, and -Va does not call it missing
    assert (root / "proc").stat().st_mode & 0o777 == 0o555 and not mounts_below(root)
    # the %config list unify must respect: rpm's database agrees with the package headers (rpmfile)
    cache = tmp_path / "cache/sha256"
    from_headers = sorted(path for p in manifest["packages"]
                          for path, flags in file_list(cache / p["sha256"][:2] / p["sha256"]) if flags & 1)
    assert config_files(root) == from_headers == ["/etc/group", "/etc/hosts", "/etc/passwd", "/etc/toyutils.conf"]
    listing = subprocess.run(["tar", "-tvf", str(out / "toy.tar.zst"), "--zstd"], capture_output=True, text=True).stdout
    assert "./usr/lib/sysimage/rpm/rpmdb.sqlite" in listing and "rpmdb.sqlite-shm" not in listing
    assert manifest["image"]["sha256"] and manifest["files"] > 30


def failing_build(tmp_path, repo, mirror, **extra) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    proc = imagefactory("build", str(recipe(tmp_path, repo, mirror, **extra)), "-o", str(out),
                        "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in proc.stderr
    assert not (out / "toy").exists() and not (out / "toy.manifest.json").exists()
    assert not list(out.glob(".*")) if out.exists() else True  # no staged leftovers
    return proc


def last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


def test_unknown_package(tmp_path, repo):
    proc = failing_build(tmp_path, repo, repo.url, packages='["nosuch"]')
    assert proc.returncode == 5
    assert last_line(proc) == ("imagefactory: error: unknown package 'nosuch': no package of that name "
                               "and nothing provides it")


def test_unsatisfiable_names_the_chain(tmp_path, repo):
    proc = failing_build(tmp_path, repo, repo.url, packages='["wrapper"]')
    assert proc.returncode == 5
    assert last_line(proc) == (
        "imagefactory: error: cannot resolve: recipe asks for 'wrapper' -> wrapper-1-1.tc1.noarch requires "
        "'broken' -> broken-1-1.tc1.noarch requires 'libmissing.so.7()(64bit)', which nothing provides")


def test_failing_scriptlet_fails_the_build(tmp_path, repo):
    proc = failing_build(tmp_path, repo, repo.url, packages='["failpre"]')
    assert proc.returncode == 1 and "rpm --install into" in last_line(proc)
    assert "%prein(failpre-1-1.tc1.noarch) scriptlet failed" in last_line(proc)
    assert not mounts_below(tmp_path)


def copy_repo(repo, tmp_path) -> Path:
    dest = tmp_path / "mirror"
    shutil.copytree(repo.path, dest)
    return dest


def test_altered_repomd_fails_its_signature(tmp_path, repo):
    mirror = copy_repo(repo, tmp_path)
    md = mirror / "repodata/repomd.xml"
    md.write_bytes(md.read_bytes().replace(b"<revision>", b"<revision>9"))
    proc = failing_build(tmp_path, repo, mirror.as_uri())
    assert proc.returncode == 3 and "repomd.xml: BAD signature" in last_line(proc)
    (mirror / "repodata/repomd.xml.asc").unlink()
    proc = failing_build(tmp_path, repo, mirror.as_uri())
    assert proc.returncode == 3 and "repomd.xml is not signed (repo_gpgcheck is on)" in last_line(proc)


def test_metadata_checksum_mismatch(tmp_path, repo):
    mirror = copy_repo(repo, tmp_path)
    primary = next((mirror / "repodata").glob("*-primary.xml.xz"))
    data = bytearray(primary.read_bytes())
    data[-20] ^= 0xFF
    primary.write_bytes(bytes(data))
    proc = failing_build(tmp_path, repo, mirror.as_uri())
    assert proc.returncode == 3 and "does not match the signed index" in last_line(proc)
    assert not list((tmp_path / "cache").rglob("*-primary*"))  # never entered the cache


def test_malformed_metadata(tmp_path, repo):
    mirror = copy_repo(repo, tmp_path)
    (mirror / "repodata/repomd.xml").write_text("<repomd><data type='primary'>")
    sign_repomd(mirror, repo.gnupghome)  # validly signed garbage is still garbage
    proc = failing_build(tmp_path, repo, mirror.as_uri())
    assert proc.returncode == 3 and last_line(proc).startswith("imagefactory: error: repomd.xml: malformed XML")


def test_packages_signed_by_another_key(tmp_path, repo):
    make_key(tmp_path / "other")
    other = tmp_path / "other.asc"
    other.write_bytes(subprocess.run(["gpg", "--homedir", str(tmp_path / "other"), "--armor", "--export"],
                                     capture_output=True, check=True).stdout)
    proc = failing_build(tmp_path, repo, repo.url, keyring=f'"{other}"', repo_gpgcheck="false")
    assert proc.returncode == 3
    assert "signature check against" in last_line(proc) and "other.asc failed" in last_line(proc)


def test_dry_run_lists_the_plan(tmp_path, repo):
    proc = imagefactory("build", str(recipe(tmp_path, repo, repo.url)), "--dry-run", "--json",
                        "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert [p["name"] for p in plan["packages"]] == ["basesystem", "filesystem", "libtoy", "setup", "toysh", "toyutils"]
    assert [p["version"] for p in plan["packages"] if p["name"] == "toyutils"] == ["1:2.0-1.tc1"]


def test_updates_repository_wins(tmp_path, repo):
    """Fedora's `updates` the same way as Debian's -security: each repomd.xml verified, newest EVR wins."""
    from tests.support.rpmdata.makerepo import make_updates_repo

    updates = make_updates_repo(tmp_path / "updates", repo, [("libtoy.spec", ["--define", "ver 1.1"])])
    r = recipe(tmp_path, repo, repo.url, sources=f'["{repo.url}", "{updates.url}"]')
    proc = imagefactory("build", str(r), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--json")
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    assert {p["name"]: p["version"] for p in m["packages"]}["libtoy"].endswith("1.1-1.tc1")
    assert [s["mirror"] for s in m["snapshot"]["sources"]] == [repo.url, updates.url]
    root = tmp_path / "out/toy/rootfs"
    assert rpmq(root, "-q", "libtoy").stdout.strip() == "libtoy-1.1-1.tc1.x86_64"
    # the updates repository's metadata is verified on its own
    (updates.path / "repodata/repomd.xml.asc").write_text("not a signature\n")
    proc = imagefactory("build", str(r), "-o", str(tmp_path / "out2"), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 3 and updates.url in proc.stderr.splitlines()[-1], proc.stderr
