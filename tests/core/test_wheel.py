"""The built wheel, installed into a fresh venv outside the checkout, carries its data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(REPO)],
                   check=True, capture_output=True)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wheel = next((work / "dist").glob("imagefactory-*.whl"))
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True)
    return venv / "bin/imagefactory"


def run(exe: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True)


def test_wheel_lists_every_shipped_recipe(installed: Path, tmp_path: Path):
    out = run(installed, "recipes", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shipped = {p.stem for p in (REPO / "recipes").glob("*.toml")}
    assert {r["name"] for r in json.loads(out.stdout)} == shipped


def test_wheel_has_exclude_list_and_kernel_data(installed: Path, tmp_path: Path):
    site = next(installed.parent.parent.glob("lib/python3*/site-packages"))
    assert (site / "unify/vunify-exclude").is_file()
    assert (site / "kernel/patches/series").is_file() and (site / "kernel/recipes/host-6.1.toml").is_file()
    assert (site / "kernel/patches/6.12/series").is_file() and (site / "kernel/recipes/host-6.12.toml").is_file()
    assert (site / "kernel/patches/6.12/0001-vfs-ixunlink-flag.patch").is_file()
    assert (site / "kernel/config/guest-host.config").is_file() and (site / "kernel/qemu/composefs-test.c").is_file()
    guest = tmp_path / "g"
    (guest / "etc").mkdir(parents=True)
    out = run(installed, "unify", "-n", str(guest), "--store", str(tmp_path / "store"), "--mode", "hardlink",
              cwd=tmp_path)
    assert "exclude list not found" not in out.stderr and out.returncode == 0, out.stderr


@pytest.mark.network
def test_wheel_dry_run_builds_a_plan(installed: Path, tmp_path: Path):
    out = run(installed, "build", "debian-sid", "--dry-run", "--allow-expired-release", "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "packages," in out.stdout
