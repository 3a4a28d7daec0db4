"""Nightly builds on real, signed local archives: several sources (a security suite whose newer
version wins), up-to-date detection, cached install trees (--explain), the build log, and the
foreign-architecture host check. Each build runs the guest's own dpkg in a chroot (~3-5 s each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build import emulation
from imagefactory.build.chroot import mounts_below
from imagefactory.core.errors import EnvironmentProblem
from tests.support.debarchive import Deb, extra_packages, make_archive, make_key, make_suite, serve, write_release

pytestmark = pytest.mark.root

SEC_HELLO = "2.10-3+deb1u1"


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """testing (the main archive) and testing-security on another root, signed by the same key;
    security has a newer hello and an older libgreet1 (the main archive's must still win)."""
    base = tmp_path_factory.mktemp("archives")
    main = make_archive(base / "main")
    hello = next(d for d in extra_packages() if d.name == "hello")
    hello.version = SEC_HELLO
    hello.files = dict(hello.files, **{"/usr/bin/hello": b"#!/bin/sh\necho hello, patched\n"})
    old = Deb("libgreet1", "1.5-1", fields={"Priority": "optional", "Provides": "libgreet-abi (= 2)"},
              files={"/usr/lib/greet/v": b"1.5\n"})
    failing = Deb("failing", "1", fields={"Priority": "optional"},
                  scripts={"postinst": "#!/bin/sh\necho boom from the postinst of failing\nexit 3\n"})
    sec = make_suite(base / "security", "testing-security", [hello, old, failing], main)
    with serve(base) as url:
        yield main, sec, f"{url}/main", f"{url}/security"


def recipe(path: Path, main, main_url: str, sec_url: str, packages='["hello"]', motd="hi", run=True) -> Path:
    path.write_text(
        f'family = "debian"\nsuite = "testing"\nsources = ["testing", "{sec_url} testing-security"]\n'
        f'variant = "essential"\npackages = {packages}\nkeyring = "{main.keyring}"\nmirror = "{main_url}"\n'
        f'hostname = "guest1"\n[[customize]]\nwrite = "/etc/motd"\ncontent = "{motd}\\n"\n'
        + ('[[customize]]\nrun = "hello > /etc/greeting"\n' if run else "")
    )
    return path


def imagefactory(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagefactory", *args], capture_output=True, text=True)


def build(r: Path, out: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = imagefactory("build", str(r), "-o", str(out), "--cache-dir", str(cache), *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_security_source_wins_and_the_guest_lists_every_source(tmp_path, archives):
    main, sec, main_url, sec_url = archives
    r = recipe(tmp_path / "guest.toml", main, main_url, sec_url)
    proc = build(r, tmp_path / "out", tmp_path / "cache", "--json")
    m = json.loads(proc.stdout)
    versions = {p["name"]: p["version"] for p in m["packages"]}
    assert versions["hello"] == SEC_HELLO  # the security archive's newer version
    assert versions["libgreet1"] == "2.0-1"  # the main archive's, newer than security's 1.5-1
    root = tmp_path / "out/guest/rootfs"
    assert (root / "etc/greeting").read_text() == "hello, patched\n"
    status = subprocess.run(["dpkg-query", "--admindir", str(root / "var/lib/dpkg"), "-W", "hello"],
                            capture_output=True, text=True, check=True).stdout
    assert status == f"hello\t{SEC_HELLO}\n"
    sources = (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert f"URIs: {main_url}\nSuites: testing\n" in sources
    assert f"URIs: {sec_url}\nSuites: testing-security\n" in sources
    snaps = m["snapshot"]["sources"]
    assert [(s["suite"], s["mirror"]) for s in snaps] == [("testing", main_url), ("testing-security", sec_url)]
    assert all(s["date"].startswith("Thu, 01 Oct 2026") and len(s["sha256"]) == 64 for s in snaps)
    assert not mounts_below(tmp_path)


def test_each_release_is_verified_on_its_own(tmp_path, archives):
    main, sec, main_url, sec_url = archives
    r = recipe(tmp_path / "guest.toml", main, main_url, sec_url)
    other = tmp_path / "other-gnupg"
    make_key(other)
    write_release(sec, key_home=other)  # security re-signed by a key the recipe does not trust
    try:
        proc = imagefactory("build", str(r), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"))
        assert proc.returncode == 3, proc.stderr
        assert "InRelease of testing-security" in proc.stderr.splitlines()[-1]
    finally:
        write_release(sec)


def test_up_to_date_force_and_cached_trees(tmp_path, archives):
    main, sec, main_url, sec_url = archives
    cache, out = tmp_path / "cache", tmp_path / "out"
    r = recipe(tmp_path / "guest.toml", main, main_url, sec_url)
    build(r, out, cache)
    image = out / "guest.tar.zst"
    first = image.stat().st_mtime_ns
    # nothing changed: up to date, only the Releases re-verified
    proc = build(r, out, cache, "--explain")
    assert "up to date" in proc.stdout and "explain: build: up to date" in proc.stderr
    assert "download:" not in proc.stderr and image.stat().st_mtime_ns == first
    # a customize step changes: the installed tree is reused, configure and customize run again
    recipe(r, main, main_url, sec_url, motd="changed")
    proc = build(r, out, cache, "--explain")
    assert "explain: build: rebuilding: changed since the earlier build: recipe" in proc.stderr
    assert "explain: install: reused tree" in proc.stderr and "dpkg: installing" not in proc.stderr
    assert (out / "guest/rootfs/etc/motd").read_text() == "changed\n"
    # ... and gives the same bytes as a build from scratch
    proc = build(r, tmp_path / "forced", cache, "--force", "--explain")
    assert "explain: install: not reused: --force" in proc.stderr and "dpkg: installing" in proc.stderr
    assert (tmp_path / "forced/guest.tar.zst").read_bytes() == image.read_bytes()
    # a recipe with only the base set, then one that adds a package: it starts from the base tree
    base = recipe(tmp_path / "base.toml", main, main_url, sec_url, packages="[]", run=False)
    build(base, tmp_path / "b", cache)
    recipe(r, main, main_url, sec_url, packages='["hello", "greeting-data-en"]')
    proc = build(r, out, cache, "--explain")
    assert "explain: install: started from base tree" in proc.stderr, proc.stderr
    root = out / "guest/rootfs"
    assert subprocess.run(["chroot", str(root), "hello"], capture_output=True, text=True).stdout == "hello, patched\n"
    assert (root / "usr/share/greet/en").is_file() and (root / "var/lib/hello-configured").is_file()
    assert subprocess.run(["chroot", str(root), "dpkg", "--audit"], capture_output=True, text=True).stdout == ""
    # an unrelated change of the set: explain names the difference against the nearest cached tree
    recipe(r, main, main_url, sec_url, packages='["hello", "greeting-data-fr"]')
    r.write_text('exclude_paths = ["/usr/share/greet/*"]\n' + r.read_text())
    proc = build(r, tmp_path / "other", cache, "--explain")
    assert "explain: install: not reused (nearest tree" in proc.stderr, proc.stderr
    assert "exclude_paths [] -> ['/usr/share/greet/*']" in proc.stderr and "-greeting-data-en" in proc.stderr
    assert not mounts_below(tmp_path)


def test_build_log_keeps_maintainer_script_output(tmp_path, archives):
    main, sec, main_url, sec_url = archives
    out = tmp_path / "out"
    r = recipe(tmp_path / "guest.toml", main, main_url, sec_url, packages='["hello", "failing"]')
    proc = imagefactory("build", str(r), "-o", str(out), "--cache-dir", str(tmp_path / "cache"))
    log = out / "guest.build.log"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(f"(full output in {log})"), proc.stderr
    text = log.read_text()
    assert "boom from the postinst of failing" in text and "dpkg --install" in text
    assert [p.name for p in out.iterdir()] == ["guest.build.log"]  # no half-built image or root
    # a good build writes its log too, outside the image
    r = recipe(tmp_path / "guest.toml", main, main_url, sec_url)
    build(r, out, tmp_path / "cache")
    assert "Setting up hello" in log.read_text() or "hello" in log.read_text()
    assert not list((out / "guest/rootfs").rglob("*.build.log"))


def test_foreign_architecture_needs_binfmt_and_qemu(tmp_path):
    assert emulation.is_native("amd64", "x86_64") and emulation.is_native("i386", "x86_64")
    assert not emulation.is_native("arm64", "x86_64")
    assert emulation.ensure("amd64", machine="x86_64") is None
    with pytest.raises(EnvironmentProblem) as exc:  # no qemu-user-static binfmt.d entry
        emulation.ensure("arm64", binfmt=tmp_path, conf_dirs=(tmp_path / "empty",), machine="x86_64")
    assert exc.value.exit_code == 6 and "qemu-user-static" in str(exc.value)
    with pytest.raises(EnvironmentProblem):
        emulation.ensure("vax", machine="x86_64")
