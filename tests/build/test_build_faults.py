"""A misbehaving mirror (tests/support/faultserver.py) for every failure class of `build`.

Each case checks the exit code, that the one error line names the URL (or
file and mirror), and that nothing is left behind: no -o directory, no
partial downloads, no mounts. Timeouts are shortened through the documented
environment variables so stalls cost seconds, not minutes.
"""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build.chroot import mounts_below
from tests.support.debarchive import Deb, base_packages, extra_packages, make_archive, write_packages, write_release
from tests.support.faultserver import FaultServer

ENV = {**os.environ, "IMAGEFACTORY_CONNECT_TIMEOUT": "2", "IMAGEFACTORY_READ_TIMEOUT": "1"}
NO_ARCH_ALL = "No-Support-for-Architecture-all: Packages"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """The test archive plus an Architecture: all package, with binary-all split out as Debian does."""
    base = tmp_path_factory.mktemp("faults")
    (base / "host").mkdir()  # a host directory a hostile package points a guest symlink at
    debs = base_packages() + extra_packages() + [
        Deb("tzdata-test", "1", arch="all", fields={"Priority": "optional"}, files={"/usr/share/tz": b"UTC\n"}),
        Deb("victim-link", "1", fields={"Priority": "optional"}, links={"/victim": str(base / "host")})]
    archive = make_archive(base / "archive", debs)
    write_packages(archive, split_all=True)
    write_release(archive, fields=(NO_ARCH_ALL,))
    return archive


@pytest.fixture
def server(archive):
    with FaultServer(archive.root) as srv:
        yield srv


def recipe(tmp_path: Path, archive, url: str, packages: str = '["hello"]', tail: str = "") -> Path:
    path = tmp_path / "guest.toml"
    path.write_text(f'family = "debian"\nsuite = "{archive.suite}"\nvariant = "essential"\npackages = {packages}\n'
                    f'keyring = "{archive.keyring}"\nmirror = "{url}"\nhostname = "guest1"\n{tail}')
    return path


def build(tmp_path: Path, archive, url: str, *extra: str, packages: str = '["hello"]', tail: str = ""):
    out = tmp_path / "out" / "sub"
    proc = subprocess.run([sys.executable, "-m", "imagefactory", "build",
                           str(recipe(tmp_path, archive, url, packages, tail)),
                           "-o", str(out), "--cache-dir", str(tmp_path / "cache"), *extra],
                          capture_output=True, text=True, env=ENV)
    return proc, out


def failed(tmp_path: Path, proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("imagefactory: error: ") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in line, (needle, line)
    assert not (tmp_path / "out").exists()  # the -o directory this build created is gone
    partial = tmp_path / "cache" / "partial"
    assert not partial.exists() or not any(partial.iterdir())
    assert not mounts_below(tmp_path)
    return line


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("imagefactory: warning:")]


def test_clean_mirror_plans_without_warnings(tmp_path, archive, server):
    proc, _ = build(tmp_path, archive, server.url, "--dry-run", packages='["hello", "tzdata-test"]')
    assert proc.returncode == 0, proc.stderr
    assert "tzdata-test" in proc.stdout and not warnings(proc.stderr)
    assert server.hits["/dists/testing/main/binary-all/by-hash/SHA256/" + _sha(archive, "all")] == 1


def _sha(archive, arch: str) -> str:
    import hashlib
    return hashlib.sha256((archive.root / f"dists/testing/main/binary-{arch}/Packages.xz").read_bytes()).hexdigest()


def test_binary_all_mid_sync_falls_back_to_the_per_arch_index(tmp_path, archive, server):
    """trixie on this machine's mirror: by-hash 404, plain binary-all of another size (mid-sync)."""
    server.fault("*/binary-all/by-hash/*", "404")
    server.fault("*/binary-all/Packages.xz", "wrong")
    server.fault("*/binary-all/Packages.gz", "404")
    proc, _ = build(tmp_path, archive, server.url, "--dry-run", packages='["hello", "tzdata-test"]')
    assert proc.returncode == 0, proc.stderr
    assert "tzdata-test" in proc.stdout  # the Architecture: all package, from binary-amd64
    (warning,) = warnings(proc.stderr)
    assert "binary-all/Packages cannot be verified" in warning and server.url in warning
    assert "binary-amd64" in warning


def test_per_arch_index_mid_sync_is_exit_3_naming_file_and_mirror(tmp_path, archive, server):
    server.fault("*/binary-amd64/by-hash/*", "404")
    server.fault("*/binary-amd64/Packages.*", "wrong")
    proc, _ = build(tmp_path, archive, server.url, "--dry-run")
    line = failed(tmp_path, proc, 3, "mirror inconsistent (probably mid-sync)", "binary-amd64/Packages", server.url)
    assert "HTTP 404" in line and "does not match the signed index" in line


def test_no_fallback_when_the_per_arch_index_lacks_arch_all(tmp_path, archive, server):
    """Without Architecture: all stanzas in binary-amd64 there is no verified fallback: refuse."""
    binary = archive.root / "dists/testing/main/binary-amd64"
    original = {p: p.read_bytes() for p in binary.glob("Packages.*")}
    text = lzma.decompress(original[binary / "Packages.xz"])
    kept = b"".join(s + b"\n\n" for s in text.split(b"\n\n") if s.strip() and b"Architecture: all" not in s)
    (binary / "Packages.xz").write_bytes(lzma.compress(kept))
    (binary / "Packages.gz").write_bytes(gzip.compress(kept, mtime=0))
    write_release(archive, fields=(NO_ARCH_ALL,))
    try:
        server.fault("*/binary-all/*", "404")
        proc, _ = build(tmp_path, archive, server.url, "--dry-run")
        failed(tmp_path, proc, 3, "mirror inconsistent (probably mid-sync)", "binary-all/Packages", server.url)
    finally:
        for path, data in original.items():
            path.write_bytes(data)
        write_release(archive, fields=(NO_ARCH_ALL,))


@pytest.mark.parametrize("kind,extra,code,needle", [
    ("404", {}, 4, "HTTP 404"),
    ("500", {}, 4, "HTTP 500"),
    ("stall", {"after": 20}, 4, "stalled (no data for 1 s) after 20 bytes"),
    ("delay", {"seconds": 30}, 4, "stalled (no data for 1 s)"),
    ("drop", {}, 4, "dropped"),
    ("drop", {"after": 30}, 4, "connection dropped after 30 of"),
])
def test_inrelease_failures(tmp_path, archive, server, kind, extra, code, needle):
    server.fault("*/InRelease", kind, **extra)
    proc, _ = build(tmp_path, archive, server.url, "--dry-run")
    url = f"{server.url}/dists/testing/InRelease"
    failed(tmp_path, proc, code, url, needle)
    retried = 1 if kind == "404" else 2  # transient failures are retried exactly once
    assert server.hits["/dists/testing/InRelease"] == retried


def test_one_transient_failure_is_survived(tmp_path, archive, server):
    server.fault("*/InRelease", "500", times=1)
    server.fault("*/binary-amd64/by-hash/*", "stall", after=10, times=1)
    proc, _ = build(tmp_path, archive, server.url, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert server.hits["/dists/testing/InRelease"] == 2


def test_wrong_signature_bytes_are_exit_3(tmp_path, archive, server):
    server.fault("*/InRelease", "wrong")
    proc, _ = build(tmp_path, archive, server.url, "--dry-run")
    failed(tmp_path, proc, 3, "InRelease")


@pytest.mark.root
@pytest.mark.parametrize("kind,extra,code,needle", [
    ("stall", {"after": 100}, 4, "stalled"),
    ("drop", {"after": 100}, 4, "dropped"),
    ("500", {}, 4, "HTTP 500"),
    ("404", {}, 4, "HTTP 404"),
    ("wrong", {}, 3, "does not match the signed index"),
])
def test_package_download_failures_leave_nothing(tmp_path, archive, server, kind, extra, code, needle):
    deb = next((archive.root / "pool/main").glob("hello_*.deb"))
    server.fault(f"/pool/main/{deb.name}", kind, **extra)
    proc, out = build(tmp_path, archive, server.url)
    failed(tmp_path, proc, code, f"{server.url}/pool/main/{deb.name}", needle)
    cached = [p.name for p in (tmp_path / "cache/sha256").rglob("*") if p.is_file()]
    import hashlib
    assert hashlib.sha256(deb.read_bytes()).hexdigest() not in cached


def test_unreachable_mirror_is_exit_4(tmp_path, archive):
    proc, _ = build(tmp_path, archive, "http://127.0.0.1:9", "--dry-run")
    failed(tmp_path, proc, 4, "http://127.0.0.1:9/dists/testing/InRelease", "Connection refused")


def test_keep_alive_connections_are_reused_without_a_failed_attempt(tmp_path):
    """Responses used to stay open, so every second request on a connection failed once and reconnected."""
    from imagefactory.build import fetch
    from imagefactory.core.errors import VerificationError

    (tmp_path / "a").write_bytes(b"a" * 100)
    (tmp_path / "b").write_bytes(b"b" * 100)
    with FaultServer(tmp_path) as srv:
        for name in ("a", "b", "a", "b"):
            assert fetch.fetch_url(f"{srv.url}/{name}") == name.encode() * 100
        assert dict(srv.hits) == {"/a": 2, "/b": 2}
        # a download refused mid-body (too large) must not leave its bytes to be read as the next answer
        with pytest.raises(VerificationError):
            fetch.cached_fetch(f"{srv.url}/a", "0" * 64, 10, tmp_path / "cache")
        assert fetch.fetch_url(f"{srv.url}/b") == b"b" * 100
        assert srv.hits["/b"] == 3


@pytest.mark.root
def test_customize_write_through_a_guest_symlink_stays_in_the_guest(tmp_path, archive, server):
    """Issue 12: a package's /victim -> <host dir> plus write = "/victim/newdir/sub/pwned" created dirs on the host."""
    host = archive.root.parent / "host"
    tail = ('[[customize]]\nwrite = "/victim/newdir/sub/pwned"\ncontent = "x"\n'
            '[[customize]]\nrun = "cat /victim/newdir/sub/pwned > /etc/seen"\n')  # the guest sees it there
    proc, out = build(tmp_path, archive, server.url, packages='["hello", "victim-link"]', tail=tail)
    assert proc.returncode == 0, proc.stderr
    assert not any(host.iterdir())  # nothing on the host
    root = out / "guest/rootfs"
    assert os.readlink(root / "victim") == str(host)
    assert (root / "etc/seen").read_text() == "x"  # (the file itself sat under the guest's /tmp: cleaned up)
    assert not mounts_below(tmp_path)
