"""Nightly-build proofs against the real Debian archive (the host's apt sources): security updates
in a bookworm guest, an arm64 sid guest under qemu-user-static, and the important/standard sets
against mmdebstrap. All network and slow (minutes each; arm64 runs dpkg under emulation)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build import fetch
from imagefactory.build.chroot import mounts_below
from imagefactory.build.debian.backend import fetch_index, index_arches
from imagefactory.build.debian.release import parse_release
from imagefactory.build.debian.resolve import compare_versions
from imagefactory.build.recipe import RECIPES_DIR
from imagefactory.build.sources import host_debian_mirror, host_security_mirror
from imagefactory.core.gpgv import verify_clearsigned

pytestmark = [pytest.mark.network, pytest.mark.root, pytest.mark.slow]
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
EXPIRED = "--aptopt=Acquire::Check-Valid-Until \"false\""


def run(*argv: str, **kw) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, **kw).stdout


def imagefactory_build(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "imagefactory", "build", *args, "--json"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def newest(mirror: str, suite: str, tmp: Path) -> dict[str, str]:
    """name -> highest version in one verified suite (read independently of the build)."""
    rel = parse_release(verify_clearsigned(fetch.fetch_url(f"{mirror}/dists/{suite}/InRelease"), KEYRING,
                                           suite).decode())
    out: dict[str, str] = {}
    for arch in index_arches(rel, "main", "amd64"):
        for p in fetch_index(mirror, suite, rel, "main", arch, tmp):
            if p.name not in out or compare_versions(p.version, out[p.name]) > 0:
                out[p.name] = p.version
    return out


def test_bookworm_guest_has_the_security_updates(tmp_path):
    m = imagefactory_build("debian-bookworm", "-o", str(tmp_path / "out"))
    installed = {p["name"]: p["version"] for p in m["packages"]}
    main = newest(host_debian_mirror(), "bookworm", tmp_path / "idx")
    security = newest(host_security_mirror(), "bookworm-security", tmp_path / "idx")
    # packages of this guest whose security version is newer than the release's: the guest has that one
    updated = sorted(n for n in installed if n in security and n in main
                     and compare_versions(security[n], main[n]) > 0)
    assert updated, "no package of the guest has a security update in this snapshot"
    print("security updates in the guest:", ", ".join(f"{n} {security[n]}" for n in updated))
    assert all(installed[n] == security[n] for n in updated)
    assert [s["suite"] for s in m["snapshot"]["sources"]] == ["bookworm", "bookworm-updates", "bookworm-security"]
    # apt in the guest, on the guest's own sources, finds nothing to upgrade
    guest = tmp_path / "guest"
    subprocess.run(["cp", "-a", str(tmp_path / "out/debian-bookworm/rootfs"), str(guest)], check=True)
    shutil.copy("/etc/resolv.conf", guest / "etc/resolv.conf")
    run("chroot", str(guest), "apt-get", "-q", "update")
    upgrade = run("chroot", str(guest), "apt-get", "-s", "upgrade")
    assert "0 upgraded, 0 newly installed, 0 to remove and 0 not upgraded." in upgrade, upgrade
    assert not mounts_below(tmp_path)


def dpkg_list(root: Path) -> str:
    return run("dpkg-query", "--admindir", str(root / "var/lib/dpkg"), "-W", "-f", "${Package} ${Version}\n")


def test_sid_arm64_under_emulation_equals_mmdebstrap(tmp_path):
    m = imagefactory_build("debian-sid", "--arch", "arm64", "--allow-expired-release", "-o", str(tmp_path / "out"))
    root = tmp_path / "out/debian-sid/rootfs"
    assert m["architecture"] == "arm64" and {p["architecture"] for p in m["packages"]} <= {"arm64", "all"}
    assert "ARM aarch64" in run("file", "-L", str(root / "usr/bin/dpkg"))
    assert run("chroot", str(root), "dpkg", "--print-architecture") == "arm64\n"
    assert run("chroot", str(root), "dpkg", "-V") == ""
    assert run("chroot", str(root), "dpkg", "--audit") == ""
    mm = tmp_path / "mm"
    subprocess.run(["mmdebstrap", "--quiet", "--arch=arm64", "--variant=minbase", EXPIRED, "sid", str(mm),
                    host_debian_mirror()], check=True, capture_output=True)
    assert dpkg_list(root) == dpkg_list(mm)
    assert not mounts_below(tmp_path)


@pytest.mark.parametrize("variant", ["important", "standard"])
def test_variant_set_equals_mmdebstrap(tmp_path, variant):
    recipe = tmp_path / f"sid-{variant}.toml"
    recipe.write_text(f'extends = "debian-sid"\nvariant = "{variant}"\n')
    proc = subprocess.run([sys.executable, "-m", "imagefactory", "build", str(recipe), "--allow-expired-release",
                           "--dry-run", "--json", "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ours = sorted(f"{p['name']} {p['version']}" for p in json.loads(proc.stdout)["packages"])
    # mmdebstrap's simulation prints apt's 'Inst NAME (VERSION ...)' for the essential and the remaining set
    sim = subprocess.run(["mmdebstrap", "--simulate", "--verbose", f"--variant={variant}", EXPIRED, "sid",
                          "/dev/null", host_debian_mirror()], capture_output=True, text=True, check=True)
    theirs = sorted({f"{ln.split()[1]} {ln.split()[2].lstrip('(')}" for ln in (sim.stdout + sim.stderr).splitlines()
                     if ln.startswith("Inst ")})
    assert ours == theirs


def test_sid_web_customize_change_reuses_the_tree_and_equals_force(tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache"), "--allow-expired-release"]
    imagefactory_build("debian-sid-web", "-o", str(tmp_path / "web"), *cache)
    changed = tmp_path / "r/debian-sid-web.toml"  # same name, one customize step changed
    changed.parent.mkdir()
    text = (RECIPES_DIR / "debian-sid-web.toml").read_text()
    assert 'content = "Built by imagefactory.\\n"' in text
    changed.write_text(text.replace('content = "Built by imagefactory.\\n"', 'content = "Changed.\\n"'))
    proc = subprocess.run([sys.executable, "-m", "imagefactory", "build", str(changed), "-o", str(tmp_path / "web"),
                           "--explain", *cache], capture_output=True, text=True)
    assert proc.returncode == 0 and "explain: install: reused tree" in proc.stderr, proc.stderr
    assert "dpkg: installing" not in proc.stderr
    imagefactory_build(str(changed), "-o", str(tmp_path / "force"), "--force", *cache)
    web = (tmp_path / "web/debian-sid-web.tar.zst").read_bytes()
    assert web == (tmp_path / "force/debian-sid-web.tar.zst").read_bytes()
    assert (tmp_path / "web/debian-sid-web/rootfs/etc/motd").read_text() == "Changed.\n"
