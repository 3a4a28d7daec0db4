"""Make an installed root a guest: identity, /dev, sources, customization, cleanup.

Cleanup follows mmdebstrap's list so images carry no build leftovers and are
reproducible: apt lists and caches, package-manager logs, ldconfig's
aux-cache, machine ids, /tmp and /run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from imagefactory.build import chroot
from imagefactory.build.recipe import Recipe
from imagefactory.core.errors import UnsafeInput
from imagefactory.core.paths import open_dir_in_root

CLEANUP_GLOBS = (
    "var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
    "var/log/dpkg.log", "var/log/apt/*", "var/log/alternatives.log", "var/log/bootstrap.log",
    "var/cache/ldconfig/aux-cache", "var/lib/dbus/machine-id", "var/lib/dpkg/*-old",
    "var/cache/debconf/*-old", "tmp/*", "run/*",
)
KEEP = {"var/lib/apt/lists/partial", "var/lib/apt/lists/lock", "run/lock"}


def write_identity(root: Path, hostname: str) -> None:
    write_in_root(root, "/etc/hostname", f"{hostname}\n".encode(), 0o644)
    write_in_root(root, "/etc/hosts", (
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    ).encode(), 0o644)


def write_dev(root: Path) -> None:
    """The secure /dev set Linux-VServer guests get; nothing else."""
    dev = chroot.safe_mountpoint(root, "dev")
    for entry in dev.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    chroot.populate_dev(dev)


def write_apt_sources(root: Path, recipe: Recipe, sources: list[tuple[str, str]]) -> None:
    """deb822 sources pointing the guest at every (mirror, suite) it was built from, one stanza per
    mirror in the recipe's order, so `apt-get upgrade` in the guest sees what the build saw."""
    keyring = recipe.keyring if recipe.keyring and (root / recipe.keyring.lstrip("/")).exists() else ""
    by_mirror: dict[str, list[str]] = {}
    for mirror, suite in sources:
        by_mirror.setdefault(mirror, []).append(suite)
    text = "\n".join(
        f"Types: deb\nURIs: {mirror}\nSuites: {' '.join(suites)}\nComponents: {' '.join(recipe.components)}\n"
        + (f"Signed-By: {keyring}\n" if keyring else "")
        for mirror, suites in by_mirror.items()
    )
    write_in_root(root, f"/etc/apt/sources.list.d/{recipe.family}.sources", text.encode(), 0o644)
    legacy = root / "etc/apt/sources.list"
    if legacy.is_file() and not legacy.is_symlink() and not legacy.read_text().strip():
        legacy.unlink()


def customize(root: Path, recipe: Recipe, env: dict[str, str]) -> None:
    """Recipe steps: files written inside the guest, commands run in the chroot."""
    for step in recipe.customize:
        if step.write:
            write_in_root(root, step.write, step.content.encode(), step.mode)
        elif step.run is not None:
            chroot.run(root, ["/bin/sh", "-c", step.run], env, f"customize step {step.run!r}")


def write_in_root(root: Path, guest_path: str, data: bytes, mode: int) -> None:
    """Write a guest file atomically; its parents are found (or made) inside the root, fd by fd.

    Containment is ensured before anything is created: the parent directory is
    reached with core.paths.open_dir_in_root (guest symlinks resolved as the
    guest sees them, never by the host kernel), then a temporary file is
    written in that directory fd and renamed over the name, replacing a symlink
    there rather than writing through it.
    """
    parent, _, name = guest_path.rstrip("/").rpartition("/")
    if name in ("", ".", "..") or ".." in parent.split("/"):
        raise UnsafeInput(f"customize: {guest_path} is not a file path inside the guest")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dir_fd = open_dir_in_root(root_fd, parent, create=True)
    except UnsafeInput as exc:
        raise UnsafeInput(f"customize: writing {guest_path}: {exc}") from None
    finally:
        os.close(root_fd)
    tmp = f".{name[:200]}.imagefactory-tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        if isinstance(exc, IsADirectoryError):
            raise UnsafeInput(f"customize: {guest_path} is a directory in the guest; not replacing it") from None
        raise
    finally:
        os.close(dir_fd)


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
