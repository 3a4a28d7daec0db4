"""A real debian-sid build from the host's mirror (network; ~30 s, plus ~25 s for mmdebstrap)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from imagefactory.build.chroot import mounts_below
from imagefactory.build.sources import host_debian_mirror

pytestmark = [pytest.mark.network, pytest.mark.root]


def run(*argv: str, **kw) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, **kw).stdout


@pytest.fixture(scope="module")
def sid(tmp_path_factory):
    out = tmp_path_factory.mktemp("sid")
    proc = subprocess.run([sys.executable, "-m", "imagefactory", "build", "debian-sid", "--allow-expired-release",
                           "-o", str(out), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_expired_sid_release_is_refused_by_default(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "imagefactory", "build", "debian-sid", "-o", str(tmp_path)],
                          capture_output=True, text=True)
    if proc.returncode == 0:
        pytest.fail("the mirror's sid Release is expected to be past Valid-Until on this snapshot archive")
    assert proc.returncode == 3 and "--allow-expired-release" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_sid_guest_works(sid):
    out, manifest = sid
    root = out / "debian-sid/rootfs"
    status = run("chroot", str(root), "dpkg-query", "-W", "-f", "${db:Status-Abbrev}\n")
    assert set(status.split("\n")) - {""} == {"ii "}
    assert run("chroot", str(root), "dpkg", "--audit") == ""
    assert run("chroot", str(root), "dpkg", "-V") == ""
    assert run("chroot", str(root), "apt-get", "--version").startswith("apt ")
    assert run("chroot", str(root), "/bin/sh", "-c", "echo ok") == "ok\n"
    assert len(manifest["packages"]) == len(status.split("\n")) - 1
    assert not mounts_below(out)


def test_second_build_is_byte_identical_and_downloads_nothing(sid, tmp_path):
    out, manifest = sid
    proc = subprocess.run([sys.executable, "-m", "imagefactory", "build", "debian-sid", "--allow-expired-release",
                           "-o", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"download: 0 of {len(manifest['packages'])} packages" in proc.stderr
    assert (tmp_path / "debian-sid.tar.zst").read_bytes() == (out / "debian-sid.tar.zst").read_bytes()


def test_minbase_set_equals_mmdebstrap(sid, tmp_path):
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap missing: scripts/setup installs it")
    out, manifest = sid
    target = tmp_path / "mm"
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--aptopt=Acquire::Check-Valid-Until \"false\"",
                    "sid", str(target), host_debian_mirror()], check=True, capture_output=True)
    theirs = run("dpkg-query", "--admindir", str(target / "var/lib/dpkg"), "-W", "-f", "${Package} ${Version}\n")
    ours = run("dpkg-query", "--admindir", str(out / "debian-sid/rootfs/var/lib/dpkg"), "-W",
               "-f", "${Package} ${Version}\n")
    assert ours == theirs
