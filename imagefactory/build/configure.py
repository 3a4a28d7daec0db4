"""Make an installed root a guest: identity, /dev, sources, customization, cleanup.

Cleanup follows mmdebstrap's list so images carry no build leftovers and are
reproducible: apt lists and caches, package-manager logs, ldconfig's
aux-cache, machine ids, /tmp and /run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from imagefactory.build import chroot
from imagefactory.build.recipe import Recipe
from imagefactory.core.paths import is_inside

CLEANUP_GLOBS = (
    "var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
    "var/log/dpkg.log", "var/log/apt/*", "var/log/alternatives.log", "var/log/bootstrap.log",
    "var/cache/ldconfig/aux-cache", "var/lib/dbus/machine-id", "var/lib/dpkg/*-old",
    "var/cache/debconf/*-old", "tmp/*", "run/*",
)
KEEP = {"var/lib/apt/lists/partial", "var/lib/apt/lists/lock", "run/lock"}


def write_identity(root: Path, hostname: str) -> None:
    (root / "etc/hostname").write_text(hostname + "\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )


def write_dev(root: Path) -> None:
    """The secure /dev set Linux-VServer guests get; nothing else."""
    dev = chroot.safe_mountpoint(root, "dev")
    for entry in dev.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    chroot.populate_dev(dev)


def write_apt_sources(root: Path, recipe: Recipe, mirror: str) -> None:
    """deb822 sources pointing the guest at the mirror it was built from."""
    keyring = recipe.keyring if recipe.keyring and (root / recipe.keyring.lstrip("/")).exists() else ""
    text = (
        f"Types: deb\nURIs: {mirror}\nSuites: {recipe.suite}\nComponents: {' '.join(recipe.components)}\n"
        + (f"Signed-By: {keyring}\n" if keyring else "")
    )
    (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (root / f"etc/apt/sources.list.d/{recipe.family}.sources").write_text(text)
    legacy = root / "etc/apt/sources.list"
    if legacy.is_file() and not legacy.read_text().strip():
        legacy.unlink()


def customize(root: Path, recipe: Recipe, env: dict[str, str]) -> None:
    """Recipe steps: files written (never through a guest symlink), commands run in the chroot."""
    for step in recipe.customize:
        if step.write:
            rel = step.write.lstrip("/")
            parent = root / os.path.dirname(rel)
            parent.mkdir(parents=True, exist_ok=True)
            if not is_inside(os.path.realpath(parent), os.path.realpath(root)):
                raise chroot.UnsafeInput(f"customize: {step.write} resolves outside the guest")
            target = root / rel
            if target.is_symlink():
                target.unlink()
            target.write_text(step.content)
            target.chmod(step.mode)
        elif step.run is not None:
            chroot.run(root, ["/bin/sh", "-c", step.run], env, f"customize step {step.run!r}")


def cleanup(root: Path) -> None:
    for pattern in CLEANUP_GLOBS:
        for path in root.glob(pattern):
            rel = str(path.relative_to(root))
            if rel in KEEP:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    machine_id = root / "etc/machine-id"
    if machine_id.exists() or machine_id.is_symlink():
        machine_id.unlink()
        machine_id.write_text("")
    (root / "run/lock").mkdir(parents=True, exist_ok=True)
    os.chmod(root / "run/lock", 0o1777)
