"""`imagefactory kernel build`: the real path on Debian's 6.1 source, the cache, and failures.

The slow test builds the shipped recipe (tinyconfig + VM fragments + our
IXUNLINK patches) with `make bindeb-pkg` for real, checks the .deb with
dpkg-deb, and checks that a second build is a cache no-op. The other tests run
the same step runner on tiny fake source trees to check failure reporting.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imagefactory.cli import main
from imagefactory.core.errors import RecipeError
from imagefactory.core.progress import Progress
from kernel.build import KernelBuildError, build, resolve_inputs
from kernel.recipe import load_recipe
from tests.support import need_tool

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "kernel/recipes/host-6.1.toml"


def fake_source(tmp_path: Path, makefile: str) -> Path:
    """A tarball holding one directory with a Makefile, like a kernel source tarball."""
    src = tmp_path / "linux-0.1"
    (src / "fs").mkdir(parents=True)
    (src / "Makefile").write_text(makefile)
    (src / "fs/namei.c").write_text("one\ntwo\nthree\n")
    tarball = tmp_path / "linux-0.1.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname="linux-0.1")
    return tarball


def recipe(tmp_path: Path, tarball: Path, extra: str = "") -> Path:
    path = tmp_path / "fake.toml"
    path.write_text(f'name = "fake"\n[source]\ntarball = "{tarball}"\n{extra}')
    return path


def test_failed_step_named_and_log_kept(tmp_path):
    tarball = fake_source(tmp_path, "tinyconfig:\n\t@echo 'fake: error: no kconfig here'; exit 2\n")
    inputs = resolve_inputs(load_recipe(recipe(tmp_path, tarball)), tmp_path / "cache")
    with pytest.raises(KernelBuildError) as info:
        build(inputs, tmp_path / "out", tmp_path / "cache", progress=Progress(quiet=True))
    message = str(info.value)
    assert "step 'config: make tinyconfig'" in message and "fake: error: no kconfig here" in message
    log = Path(message.rsplit("log kept: ", 1)[1])
    assert log.is_file() and "no kconfig here" in log.read_text()
    assert not (tmp_path / "out" / "kernel-manifest.json").exists()  # nothing published


def test_patch_that_does_not_apply_names_file_and_hunk(tmp_path):
    tarball = fake_source(tmp_path, "all:\n")
    (tmp_path / "0001-bad.patch").write_text(
        "--- a/fs/namei.c\n+++ b/fs/namei.c\n@@ -1,3 +1,3 @@\n one\n-TWO\n+2\n three\n")
    (tmp_path / "series").write_text("0001-bad.patch\n")
    path = recipe(tmp_path, tarball, '[patches]\nseries = "series"\n')
    inputs = resolve_inputs(load_recipe(path), tmp_path / "cache")
    with pytest.raises(RecipeError, match=r"0001-bad.patch does not apply: fs/namei.c hunk #1"):
        build(inputs, tmp_path / "out", tmp_path / "cache", progress=Progress(quiet=True))


def test_cli_reports_missing_source_in_one_line(tmp_path, capsys):
    path = tmp_path / "k.toml"
    path.write_text('[source]\ntarball = "/nonexistent/linux.tar.xz"\n')
    with pytest.raises(SystemExit) as info:
        main(["kernel", "build", str(path), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    assert info.value.code == 6
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["imagefactory: error: kernel source tarball /nonexistent/linux.tar.xz does not exist"]


@pytest.mark.slow
def test_real_build_of_shipped_recipe_then_cache_noop(tmp_path):
    need_tool("make", "gcc", "flex", "bison", "bc", "dpkg-deb")
    if not list(Path("/usr/src").glob("linux-source-6.1.tar.*")):
        pytest.fail("linux-source-6.1 is not installed (scripts/setup installs it)")
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = ["kernel", "build", str(SHIPPED), "-o", str(out), "--cache-dir", str(cache), "--json", "-q"]

    def run(capsys_text=None):
        proc = subprocess.run([sys.executable, "-c", "from imagefactory.cli import main; main()", *argv],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout)

    first = run()
    assert first["cached"] is False
    images = [p for p in first["packages"] if p["name"].startswith("linux-image-") and "dbg" not in p["name"]]
    assert len(images) == 1
    deb = out / images[0]["name"]
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True, check=True).stdout
    assert f"Package: linux-image-{first['kernel_release']}" in info
    assert first["kernel_release"].endswith("-imagefactory") and first["kernel_release"].startswith("6.1.")
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert f"./boot/vmlinuz-{first['kernel_release']}" in files

    manifest = json.loads((out / "kernel-manifest.json").read_text())
    assert manifest["source"]["debian_package"] == "linux-source-6.1" and len(manifest["source"]["sha256"]) == 64
    assert [p["name"] for p in manifest["patches"]] == ["0001-vfs-ixunlink-flag.patch", "0002-ext4-ixunlink-flag.patch"]
    assert all(len(p["sha256"]) == 64 and p["hunks"] > 0 for p in manifest["patches"])
    # the patched tree really carries our flag
    build_dir = cache / manifest["cache_key"]
    tree = next((build_dir / "src").glob("linux-*/"))
    assert "FS_IXUNLINK_FL" in (tree / "include/uapi/linux/fs.h").read_text()
    final = (tree / ".config").read_text()
    assert "CONFIG_EXT4_FS=y" in final and "CONFIG_VIRTIO_BLK=y" in final and "CONFIG_64BIT=y" in final

    log_size = (build_dir / "build.log").stat().st_size
    second = run()
    assert second["cached"] is True and second["packages"] == first["packages"]
    assert (build_dir / "build.log").stat().st_size == log_size  # nothing was rebuilt
    shutil.rmtree(cache)  # ~1.5 GB of build tree; pytest would keep it around


@pytest.mark.slow
def test_config_option_that_does_not_stick_is_named(tmp_path):
    """Real kconfig drops EXT4 when BLOCK is off; the build must stop and name it."""
    need_tool("make", "gcc", "flex", "bison")
    (tmp_path / "frag.config").write_text("CONFIG_64BIT=y\n# CONFIG_BLOCK is not set\nCONFIG_EXT4_FS=y\n")
    path = tmp_path / "k.toml"
    path.write_text('[source]\ndebian_package = "linux-source-6.1"\n[config]\nbase = "tinyconfig"\n'
                    'fragments = ["frag.config"]\n')
    inputs = resolve_inputs(load_recipe(path), tmp_path / "cache")
    with pytest.raises(RecipeError) as info:
        build(inputs, tmp_path / "out", tmp_path / "cache", progress=Progress(quiet=True))
    message = str(info.value)
    assert "did not stick" in message and "CONFIG_EXT4_FS: asked y, got not set" in message
    assert "CONFIG_BLOCK" not in message.split("did not stick")[1].split("log kept")[0]  # that one did stick
    assert Path(message.rsplit("log kept: ", 1)[1]).is_file()
    assert not (tmp_path / "out").exists()
