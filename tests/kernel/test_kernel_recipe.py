"""Kernel recipe loading: the shipped recipe, and each kind of bad input named clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagefactory.core.errors import EnvironmentProblem, RecipeError, VerificationError
from imagefactory.core.hashing import sha256_file
from kernel.build import cache_key
from kernel.recipe import load_recipe
from kernel.source import resolve_patch, resolve_source

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "kernel/recipes/host-6.1.toml"
SHIPPED_612 = REPO / "kernel/recipes/host-6.12.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "k.toml"
    path.write_text(text)
    return path


def test_shipped_recipe_loads():
    r = load_recipe(SHIPPED)
    assert r.source.debian_package == "linux-source-6.1"
    assert [p.name for p in r.patches] == ["0001-vfs-ixunlink-flag.patch", "0002-ext4-ixunlink-flag.patch"]
    assert r.config_base == "tinyconfig" and r.formats == ["deb"]
    req = r.config_request
    assert req["CONFIG_64BIT"] == "y" and req["CONFIG_EXT4_FS"] == "y" and req["CONFIG_VIRTIO_BLK"] == "y"
    assert req["CONFIG_MODULES"] is None
    assert req["CONFIG_LOCALVERSION"] == '"-imagefactory"' and req["CONFIG_LOCALVERSION_AUTO"] is None


def test_shipped_612_recipe_fetches_trixie_source_and_adds_guest_host_fragment():
    r = load_recipe(SHIPPED_612)
    assert (r.source.debian_package, r.source.suite, r.source.version) == ("linux-source-6.12", "trixie", None)
    assert [p.path.parent.name for p in r.patches if p.path] == ["6.12", "6.12"]
    assert [p.name for p in r.patches] == ["0001-vfs-ixunlink-flag.patch", "0002-ext4-ixunlink-flag.patch"]
    req = r.config_request
    for option in ("CONFIG_EROFS_FS", "CONFIG_OVERLAY_FS", "CONFIG_FS_VERITY", "CONFIG_EXT4_FS", "CONFIG_QUOTA",
                   "CONFIG_QFMT_V2", "CONFIG_XFS_QUOTA", "CONFIG_BLK_DEV_LOOP"):
        assert req[option] == "y", option
    assert req["CONFIG_VIRTIO_BLK"] == "y" and req["CONFIG_MODULES"] is None  # the same VM base as 6.1


@pytest.mark.parametrize(
    "body, message",
    [
        ('[source]\ndebian_package = "linux-source-6.12"\nsuite = "Trixie!"\n', "suite must be"),
        ('[source]\ndebian_package = "linux-source-6.12"\nversion = "6.12.1-1"\n', "version needs suite"),
        ('[source]\ndebian_package = "linux-source-6.12"\nsuite = "trixie"\nversion = "x y"\n', "Debian version"),
        ('[source]\ntarball = "x.tar"\nsuite = "trixie"\n', "go with debian_package"),
        ('[source]\ndebian_package = "linux-source-6.1"\ntarball = "x.tar"\n', "exactly one of"),
        ("[source]\n", "exactly one of"),
        ('[source]\ndebian_package = "bash"\n', "linux-source-6.1"),
        ('[source]\ntarball = "https://example.invalid/linux.tar.xz"\n', "needs its sha256"),
        ('[source]\ndebian_package = "linux-source-6.1"\nsha256 = "abc"\n', "64 hex"),
        ('colour = "red"\n[source]\ndebian_package = "linux-source-6.1"\n', "unknown key"),
        ('localversion = "-Bad_Name"\n[source]\ndebian_package = "linux-source-6.1"\n', "localversion"),
        ('[source]\ndebian_package = "linux-source-6.1"\n[package]\nformats = ["tar"]\n', "formats"),
        ('[source]\ndebian_package = "linux-source-6.1"\n[config]\nbase = "nosuchconfig"\n', "base must be"),
        ('[source]\ndebian_package = "linux-source-6.1"\n[config]\nfragments = ["missing.config"]\n',
         "cannot read config fragment"),
        ('[source]\ndebian_package = "linux-source-6.1"\n[patches]\nseries = "none"\n', "cannot read patch series"),
        ('[source]\ndebian_package = "linux-source-6.1"\n[[patches.external]]\nurl = "https://x.invalid/p.diff"\n',
         "needs its sha256"),
        ('[source\n', "not valid TOML"),
    ],
)
def test_bad_recipes(tmp_path, body, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path, body))


def test_series_names_missing_patch(tmp_path):
    (tmp_path / "series").write_text("# comment\nthere.patch\nmissing.patch\n")
    (tmp_path / "there.patch").write_text("")
    body = '[source]\ndebian_package = "linux-source-6.1"\n[patches]\nseries = "series"\n'
    with pytest.raises(RecipeError, match="missing.patch"):
        load_recipe(write(tmp_path, body))


def test_fragment_may_not_set_localversion(tmp_path):
    (tmp_path / "f.config").write_text('CONFIG_LOCALVERSION="-x"\n')
    body = '[source]\ndebian_package = "linux-source-6.1"\n[config]\nfragments = ["f.config"]\n'
    with pytest.raises(RecipeError, match="localversion"):
        load_recipe(write(tmp_path, body))


def test_missing_source_package_is_a_host_problem(tmp_path):
    r = load_recipe(write(tmp_path, '[source]\ndebian_package = "linux-source-9.9"\n'))
    with pytest.raises(EnvironmentProblem, match="apt-get install linux-source-9.9"):
        resolve_source(r.source, tmp_path / "dl", usr_src=tmp_path)


def test_tarball_hash_checked_and_file_url_fetched(tmp_path):
    tarball = tmp_path / "linux-1.0.tar"
    tarball.write_bytes(b"not really a tarball")
    good = sha256_file(tarball)[0]
    r = load_recipe(write(tmp_path, f'[source]\ntarball = "linux-1.0.tar"\nsha256 = "{"0" * 64}"\n'))
    with pytest.raises(VerificationError, match="sha256"):
        resolve_source(r.source, tmp_path / "dl")
    r = load_recipe(write(tmp_path, f'[source]\ntarball = "file://{tarball}"\nsha256 = "{good}"\n'))
    src = resolve_source(r.source, tmp_path / "dl")
    assert src.sha256 == good and src.tarball.parent == tmp_path / "dl"
    assert src.tarball.read_bytes() == tarball.read_bytes() and src.origin == {}


def test_external_patch_by_url_verified(tmp_path):
    patch = tmp_path / "vs.diff"
    patch.write_text("--- a/x\n+++ b/x\n")
    body = (f'[source]\ndebian_package = "linux-source-6.1"\n[[patches.external]]\n'
            f'url = "file://{patch}"\nsha256 = "{"1" * 64}"\n')
    r = load_recipe(write(tmp_path, body))
    with pytest.raises(VerificationError):
        resolve_patch(r.patches[0], tmp_path / "dl")
    assert not list((tmp_path / "dl").glob("*vs.diff"))  # nothing unverified is kept


def test_cache_key_changes_with_every_input():
    base = ("a" * 64, ["p1"], "CONFIG_A=y\n", "tinyconfig", "-x", ["deb"])
    key = cache_key(*base)
    assert key == cache_key(*base)
    for i, other in enumerate(["b" * 64, ["p2"], "CONFIG_A=m\n", "defconfig", "-y", ["deb", "rpm"]]):
        changed = list(base)
        changed[i] = other
        assert cache_key(*changed) != key
