"""The whole build pipeline against a real, signed local archive served over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imagefactory.build.chroot import mounts_below
from tests.support.debarchive import Deb, base_packages, make_archive, make_key, serve, write_packages, write_release

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("mirror") / "archive")


@pytest.fixture(scope="module")
def mirror(archive):
    with serve(archive.root) as url:
        yield url


def recipe(tmp_path: Path, archive, mirror: str, **extra) -> Path:
    lines = {
        "family": '"debian"', "suite": f'"{archive.suite}"', "variant": '"essential"',
        "packages": '["hello"]', "keyring": f'"{archive.keyring}"', "mirror": f'"{mirror}"',
        "hostname": '"guest1"',
    }
    lines.update(extra)
    text = "".join(f"{k} = {v}\n" for k, v in lines.items())
    text += '[[customize]]\nrun = "hello > /etc/greeting"\n[[customize]]\nwrite = "/etc/motd"\ncontent = "hi\\n"\n'
    path = tmp_path / "guest.toml"
    path.write_text(text)
    return path


def imagefactory(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "imagefactory", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"imagefactory {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def chroot(root: Path, *argv: str) -> str:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, check=True).stdout


def test_full_build_is_real_and_reproducible(tmp_path, archive, mirror):
    cache = tmp_path / "cache"
    r = recipe(tmp_path, archive, mirror)
    out1 = imagefactory("build", str(r), "-o", str(tmp_path / "out1"), "--cache-dir", str(cache), "--json")
    m = json.loads(out1.stdout)
    root = tmp_path / "out1/guest/rootfs"
    # every package installed and configured by the guest's own dpkg
    status = chroot(root, "dpkg-query", "-W", "-f", "${db:Status-Abbrev}${Package}\n")
    assert sorted(line.replace(" ", "") for line in status.splitlines()) == sorted(
        ["iibase-files", "iibusybox-base", "iidpkg", "iigreeting-data-fr", "iihello", "iilibc-test", "iilibgreet1"]
    )
    assert chroot(root, "dpkg", "--audit") == ""
    assert (root / "var/lib/hello-configured").read_text() == "configured\n"  # postinst ran
    assert (root / "etc/greeting").read_text() == "hello from the guest\n"  # customize run in the chroot
    assert (root / "etc/motd").read_text() == "hi\n"
    assert chroot(root, "/bin/sh", "-c", "echo ok") == "ok\n"
    assert (root / "etc/hostname").read_text() == "guest1\n"
    assert sorted(p.name for p in (root / "dev").iterdir()) == sorted(
        ["null", "zero", "full", "random", "urandom", "tty", "ptmx", "fd", "stdin", "stdout", "stderr", "pts", "shm"])
    assert (root / "bin").is_symlink()
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert f"URIs: {mirror}" in (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert os.listdir(root / "tmp") == []
    # manifest
    assert m["suite"] == "testing" and m["snapshot"]["date"].startswith("Thu, 01 Oct 2026")
    names = {p["name"]: p for p in m["packages"]}
    assert names["libgreet1"]["version"] == "2.0-1" and len(names["hello"]["sha256"]) == 64
    image = tmp_path / "out1/guest.tar.zst"
    assert m["image"]["sha256"] == subprocess.run(["sha256sum", str(image)], capture_output=True,
                                                  text=True).stdout.split()[0]
    assert m["files"] > 50 and m["apparent_size"] > 0 and m["disk_usage"] > 0
    assert not mounts_below(tmp_path)
    # second build: nothing downloaded, byte-identical image
    out2 = imagefactory("build", str(r), "-o", str(tmp_path / "out2"), "--cache-dir", str(cache))
    assert "download: 0 of 7 packages" in out2.stderr
    assert (tmp_path / "out2/guest.tar.zst").read_bytes() == image.read_bytes()
    assert not [p for p in (tmp_path / "out2").iterdir() if p.name.startswith(".")]


def test_dry_run_writes_nothing(tmp_path, archive, mirror):
    r = recipe(tmp_path, archive, mirror)
    proc = imagefactory("build", str(r), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
                        "--dry-run", "--json")
    plan = json.loads(proc.stdout)
    assert {p["name"] for p in plan["packages"]} >= {"hello", "dpkg", "libgreet1"}
    assert plan["download_size"] == sum(p["size"] for p in plan["packages"])
    assert not (tmp_path / "out").exists()


def only_logs(out: Path) -> bool:
    """Nothing but build logs (kept on failure, outside the image) in the output directory."""
    return not out.exists() or all(p.name.endswith(".build.log") for p in out.iterdir())


def fails(tmp_path, args, code, pattern):
    proc = imagefactory(*args, check=False)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("imagefactory: error: ") and pattern in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_inputs_fail_cleanly(tmp_path, archive, mirror):
    out = tmp_path / "out"
    cache = ["--cache-dir", str(tmp_path / "c")]
    r = recipe(tmp_path, archive, mirror, packages='["hello", "nosuch"]')
    fails(tmp_path, ["build", str(r), "-o", str(out), *cache], 5, "unknown package 'nosuch'")
    r = recipe(tmp_path, archive, mirror, packages='["broken"]')
    fails(tmp_path, ["build", str(r), "-o", str(out), *cache], 5, "missing-lib (>= 3) of broken")
    r = recipe(tmp_path, archive, "http://127.0.0.1:9")
    fails(tmp_path, ["build", str(r), "-o", str(out), *cache], 4, "cannot reach 127.0.0.1:9")
    other = make_key(tmp_path / "other-gnupg")
    r = recipe(tmp_path, archive, mirror, keyring=f'"{other}"')
    fails(tmp_path, ["build", str(r), "-o", str(out), *cache], 3, "signed by a key not in")
    fails(tmp_path, ["build", "no-such-recipe"], 1, "unknown recipe 'no-such-recipe'")
    assert not out.exists()  # a failed build removes the -o directory it created


def test_expired_release_and_corrupt_package(tmp_path, tmp_path_factory):
    archive = make_archive(tmp_path / "archive")
    write_release(archive, valid_until=datetime.now(UTC) - timedelta(days=1))
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    with serve(archive.root) as url:
        r = recipe(tmp_path, archive, url)
        fails(tmp_path, ["build", str(r), "-o", str(out), "--cache-dir", str(cache)], 3, "--allow-expired-release")
        fails(tmp_path, ["build", str(r), "-o", str(out), "--cache-dir", str(cache)], 3, "past its Valid-Until")
        # accepted with the switch; then corrupt hello's .deb on the mirror (index unchanged)
        deb = next((archive.root / "pool/main").glob("hello_*.deb"))
        data = bytearray(deb.read_bytes())
        data[-10] ^= 0xFF
        deb.write_bytes(bytes(data))
        fails(tmp_path, ["build", str(r), "-o", str(out), "--cache-dir", str(cache), "--allow-expired-release"],
              3, "does not match the signed index")
    cached = [p for p in (cache / "sha256").rglob("*") if p.is_file() and not p.name.endswith(".parsed")]
    import hashlib
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in cached)  # nothing bad cached
    assert not list(cache.rglob("*.partial-*"))  # no staging file left behind
    assert not out.exists() or not any(out.iterdir())


def test_hostile_package_is_refused_and_nothing_left(tmp_path):
    import io
    import tarfile

    archive_root = tmp_path / "archive"
    debs = base_packages()
    # an essential package whose data.tar has a member with '..'
    evil = Deb("evil", "1", fields={"Essential": "yes", "Priority": "required"}, files={"/etc/x": b"x"})
    archive = make_archive(archive_root, debs + [evil])
    deb = next((archive_root / "pool/main").glob("evil_*.deb"))
    # rebuild its data member by hand: dpkg-deb refuses to create such a package
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo("./../../escaped")
        ti.size = 1
        tar.addfile(ti, io.BytesIO(b"x"))
    blob = buf.getvalue()
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout

    def ar(name, b):
        return f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(b):<10}`\n".encode() + b + (b"\n" * (len(b) % 2))

    deb.write_bytes(b"!<arch>\n" + ar("debian-binary", b"2.0\n") + ar("control.tar", control) + ar("data.tar", blob))
    write_packages(archive)
    write_release(archive)
    r = tmp_path / "r.toml"
    r.write_text(f'family = "debian"\nsuite = "testing"\nvariant = "essential"\nkeyring = "{archive.keyring}"\n'
                 f'mirror = "file://{archive_root}"\n')
    out = tmp_path / "out"
    fails(tmp_path, ["build", str(r), "-o", str(out), "--cache-dir", str(tmp_path / "c")], 7, "'..'")
    assert not (tmp_path / "escaped").exists() and not (out / "escaped").exists()
    assert only_logs(out)
    assert not mounts_below(tmp_path)


def test_interrupt_and_disk_full_leave_nothing(tmp_path, archive, mirror):
    import signal
    import time

    r = recipe(tmp_path, archive, mirror)
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "imagefactory", "build", str(r), "-o", str(out),
                             "--cache-dir", str(cache)], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # interrupt while dpkg runs in the chroot (mounts are up)
        if "dpkg: installing" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "imagefactory: error: interrupted" in rest and "Traceback" not in rest
    assert not mounts_below(tmp_path)
    assert only_logs(out)

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        proc = imagefactory("build", str(r), "-o", str(small / "out"), "--cache-dir", str(cache), check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "No space left" in proc.stderr or "disk full" in proc.stderr, proc.stderr
        assert not mounts_below(small / "out")
        assert only_logs(small / "out")
    finally:
        time.sleep(0.2)
        subprocess.run(["umount", str(small)], check=True)
