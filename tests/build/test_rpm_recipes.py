"""The shipped Fedora recipes and how the backend reads them (no network, no root)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.build import recipe as recipes
from imagefactory.build.pipeline import backend_for
from imagefactory.build.plan import BuildOptions
from imagefactory.build.rpm.backend import RpmBackend, repo_urls
from imagefactory.core.errors import RecipeError, VerificationError
from imagefactory.core.progress import Progress


@pytest.mark.parametrize("release", ["41", "42"])
def test_fedora_recipes(release):
    r = recipes.load(f"fedora-{release}")
    assert (r.family, r.suite, r.architecture, r.variant) == ("fedora", release, "x86_64", "minimal")
    assert r.keyring == f"/etc/pki/rpm-gpg/RPM-GPG-KEY-fedora-{release}-x86_64"
    base = "https://dl.fedoraproject.org/pub/fedora/linux/"
    assert repo_urls(r, r.mirror) == [f"{base}releases/{release}/Everything/x86_64/os/",
                                      f"{base}updates/{release}/Everything/x86_64/"]
    assert isinstance(backend_for(r), RpmBackend)


def test_recipes_command_lists_every_family():
    proc = subprocess.run([sys.executable, "-m", "imagefactory", "recipes", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    listed = {r["name"]: r["family"] for r in json.loads(proc.stdout)}
    assert {k: listed.get(k) for k in ("fedora-41", "fedora-42", "ubuntu-noble", "ubuntu-jammy")} == {
        "fedora-41": "fedora", "fedora-42": "fedora", "ubuntu-noble": "ubuntu", "ubuntu-jammy": "ubuntu"}


def test_a_mirror_is_required(tmp_path: Path):
    path = tmp_path / "f.toml"
    path.write_text('family = "fedora"\nsuite = "42"\n')
    with pytest.raises(RecipeError, match="key 'mirror' is required for family 'fedora'"):
        RpmBackend().plan(recipes.load(str(path)), BuildOptions(cache_dir=tmp_path), Progress(quiet=True))


def test_the_key_is_checked_before_anything_is_fetched(tmp_path: Path):
    path = tmp_path / "f.toml"
    path.write_text('family = "fedora"\nsuite = "42"\nmirror = "http://127.0.0.1:9/"\n')
    opts, quiet = BuildOptions(cache_dir=tmp_path), Progress(quiet=True)
    with pytest.raises(RecipeError, match="key 'keyring' is required"):
        RpmBackend().plan(recipes.load(str(path)), opts, quiet)
    path.write_text(path.read_text() + f'keyring = "{tmp_path}/missing.asc"\n')
    with pytest.raises(VerificationError, match="missing.asc not found"):
        RpmBackend().plan(recipes.load(str(path)), opts, quiet)
