"""A kernel source fetched from a Debian suite: signed InRelease -> Packages -> .deb sha256.

The local tests run the real archive code against a real signed archive built
by tests/support/debarchive (dpkg-deb, dpkg-scanpackages, gpg). The network
test is the CI-sized proof of the 6.12 port: the real trixie linux-source-6.12,
fetched and verified by the project's code, the 6.12 series applied, and the
recipe's config (tinyconfig + VM fragments + guest-host) checked after
olddefconfig, without compiling.
"""

from __future__ import annotations

import io
import json
import lzma
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imagefactory.core.errors import EnvironmentProblem, VerificationError
from kernel.build import resolve_inputs
from kernel.debsource import ArchiveAccess, fetch_debian_source
from kernel.recipe import load_recipe
from tests.support import need_tool
from tests.support.debarchive import Deb, make_archive

REPO = Path(__file__).resolve().parents[2]
SHIPPED_612 = REPO / "kernel/recipes/host-6.12.toml"


def source_tarball(version: str) -> bytes:
    """A tiny linux-source tarball: one top directory with a Makefile."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        body = f"# fake kernel {version}\n".encode()
        info = tarfile.TarInfo("linux-source-9.9/Makefile")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return lzma.compress(buf.getvalue())


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    need_tool("dpkg-deb", "dpkg-scanpackages", "gpg", "gpgv")
    root = tmp_path_factory.mktemp("archive") / "debian"
    debs = [Deb("linux-source-9.9", v, arch="all", files={"/usr/src/linux-source-9.9.tar.xz": source_tarball(v)})
            for v in ("9.9.2-1", "9.9.10-1")]
    debs.append(Deb("linux-source-9.8", "9.8.1-1", arch="all", files={"/usr/share/doc/linux-source-9.8/x": b"x"}))
    archive = make_archive(root, debs)
    yield archive
    subprocess.run(["gpgconf", "--homedir", str(archive.gnupghome), "--kill", "all"], capture_output=True)


def access(archive) -> ArchiveAccess:
    return ArchiveAccess(mirror=f"file://{archive.root}", keyring=archive.keyring)


def test_highest_version_fetched_verified_and_unpacked(archive, tmp_path):
    src = fetch_debian_source("linux-source-9.9", "testing", None, tmp_path / "dl", access(archive))
    assert src.version == "9.9.10-1"  # dpkg order, not string order (9.9.2 < 9.9.10)
    assert src.deb == "linux-source-9.9_9.9.10-1_all.deb" and len(src.deb_sha256) == 64
    assert src.tarball.name == "linux-source-9.9.tar.xz"
    assert src.tarball.read_bytes() == source_tarball("9.9.10-1")
    assert src.origin()["suite"] == "testing" and "tarball" not in src.origin()
    again = fetch_debian_source("linux-source-9.9", "testing", None, tmp_path / "dl", access(archive))
    assert again == src  # from the cache: the same verified files


def test_pinned_version(archive, tmp_path):
    src = fetch_debian_source("linux-source-9.9", "testing", "9.9.2-1", tmp_path / "dl", access(archive))
    assert src.version == "9.9.2-1" and src.tarball.read_bytes() == source_tarball("9.9.2-1")


def test_missing_package_or_version_named(archive, tmp_path):
    with pytest.raises(EnvironmentProblem, match="linux-source-9.9 9.9.3-1 is not in testing main"):
        fetch_debian_source("linux-source-9.9", "testing", "9.9.3-1", tmp_path / "dl", access(archive))
    with pytest.raises(VerificationError, match="holds no /usr/src/linux-source-9.8.tar"):
        fetch_debian_source("linux-source-9.8", "testing", None, tmp_path / "dl", access(archive))


def test_wrong_keyring_refused(archive, tmp_path, gpg_key):
    with pytest.raises(VerificationError):
        fetch_debian_source("linux-source-9.9", "testing", None, tmp_path / "dl",
                            ArchiveAccess(mirror=f"file://{archive.root}", keyring=gpg_key["public"]))
    assert not (tmp_path / "dl" / "debian-source").exists()


def test_tampered_deb_refused_and_not_cached(archive, tmp_path):
    deb = archive.root / "pool/main/linux-source-9.9_9.9.2-1_all.deb"
    original = deb.read_bytes()
    tampered = original[:-1] + bytes([original[-1] ^ 1])
    try:
        deb.write_bytes(tampered)
        with pytest.raises(VerificationError, match="does not match the signed index"):
            fetch_debian_source("linux-source-9.9", "testing", "9.9.2-1", tmp_path / "dl", access(archive))
    finally:
        deb.write_bytes(original)
    assert not any(p.read_bytes() == tampered for p in (tmp_path / "dl").rglob("*") if p.is_file())
    assert not (tmp_path / "dl" / "debian-source" / "linux-source-9.9.tar.xz").exists()


def test_recipe_with_suite_resolves_through_archive(archive, tmp_path):
    recipe = tmp_path / "k.toml"
    recipe.write_text('name = "k"\n[source]\ndebian_package = "linux-source-9.9"\nsuite = "testing"\n')
    inputs = resolve_inputs(load_recipe(recipe), tmp_path / "cache", access=access(archive))
    assert inputs.tarball.read_bytes() == source_tarball("9.9.10-1")
    assert inputs.origin["version"] == "9.9.10-1" and inputs.origin["package"] == "linux-source-9.9"


@pytest.mark.network
@pytest.mark.slow
def test_612_series_applies_and_config_sticks_on_real_trixie_source(tmp_path):
    """CI's proof of the 6.12 build: real source, real patches, real kconfig (no compile)."""
    need_tool("make", "gcc", "flex", "bison", "patch", "dpkg-deb")
    argv = ["kernel", "build", str(SHIPPED_612), "--configure-only", "--cache-dir", str(tmp_path / "cache"), "--json",
            "-q"]
    proc = subprocess.run([sys.executable, "-c", "from imagefactory.cli import main; main()", *argv],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["kernel_version"].startswith("6.12.")
    assert result["patches"] == ["0001-vfs-ixunlink-flag.patch", "0002-ext4-ixunlink-flag.patch"]
    source = result["source"]
    assert source["package"] == "linux-source-6.12" and source["suite"] == "trixie"
    assert source["version"].startswith("6.12.") and len(source["deb_sha256"]) == 64
    final = Path(result["config"]).read_text()
    for option in ("CONFIG_EXT4_FS", "CONFIG_EROFS_FS", "CONFIG_OVERLAY_FS", "CONFIG_FS_VERITY", "CONFIG_QUOTA",
                   "CONFIG_XFS_QUOTA", "CONFIG_VIRTIO_BLK"):
        assert f"{option}=y\n" in final, option
    log = Path(result["log"]).read_text()
    patching = log.split("=== config")[0]
    assert "patch -p1 <" in patching and "Hunk" not in patching  # every hunk applies exactly, no offset or fuzz
    assert not (Path(result["config"]).parent / "src").exists()  # the 1.4 GB tree is gone
