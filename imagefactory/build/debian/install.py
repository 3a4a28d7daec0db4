"""Install a resolved Debian package set with the guest's own dpkg.

Stages, as in mmdebstrap: (1) extract the essential set so the root can run
programs, (2) `dpkg --install --force-depends` the essential set inside the
chroot (the real unpack + maintainer scripts), (3) `dpkg --install` the rest
in rounds ordered by Pre-Depends. No apt is needed inside: the set is already
resolved and verified. The package cache is bind-mounted read-only into the
guest for the duration instead of copying .debs.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from imagefactory.build import chroot
from imagefactory.build.debian.debfile import extract_data
from imagefactory.build.debian.packages import Package
from imagefactory.build.debian.resolve import install_rounds
from imagefactory.core.errors import EnvironmentProblem, UnsafeInput
from imagefactory.core.paths import is_inside
from imagefactory.core.progress import Progress

MERGED_USR = {"amd64": ("bin", "sbin", "lib", "lib64"), "i386": ("bin", "sbin", "lib"),
              "arm64": ("bin", "sbin", "lib")}
BUILD_FILES = ("etc/dpkg/dpkg.cfg.d/imagefactory-build", "etc/dpkg/dpkg.cfg.d/imagefactory-excludes",
               "usr/sbin/policy-rc.d", "var/lib/dpkg/arch")
DEB_MOUNT = "run/imagefactory-debs"
POLICY_RC_D = "#!/bin/sh\n# imagefactory: no service starts while building\nexit 101\n"


def prepare_root(root: Path, arch: str, exclude: tuple[str, ...]) -> None:
    """The skeleton dpkg expects, merged-/usr symlinks, and build-time dpkg config."""
    for d in ("etc/dpkg/dpkg.cfg.d", "etc/apt/apt.conf.d", "etc/apt/sources.list.d", "etc/apt/preferences.d",
              "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/apt/lists/partial",
              "var/cache/apt/archives/partial", "usr/sbin", "tmp", "run", "dev", "proc", "sys"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    for f in ("var/lib/dpkg/status", "var/lib/dpkg/available"):
        (root / f).touch()
    (root / "var/lib/dpkg/arch").write_text(arch + "\n")
    for name in MERGED_USR.get(arch, ("bin", "sbin", "lib")):
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        link = root / name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(f"usr/{name}")
    # Build-time only: fast unpacking (the image is fsync'd as a whole later).
    (root / "etc/dpkg/dpkg.cfg.d/imagefactory-build").write_text("force-unsafe-io\n")
    if exclude:
        (root / "etc/dpkg/dpkg.cfg.d/imagefactory-excludes").write_text(
            "".join(f"path-exclude={p}\n" for p in exclude)
        )
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)


def finish_root(root: Path) -> None:
    """Remove what only the build needed."""
    for f in ("usr/sbin/policy-rc.d", "etc/dpkg/dpkg.cfg.d/imagefactory-build"):
        (root / f).unlink(missing_ok=True)
    mnt = root / DEB_MOUNT
    if mnt.is_dir() and not mnt.is_symlink():
        mnt.rmdir()


def extract_essential(pkgs: list[Package], files: dict[str, Path], root: Path,
                      exclude: tuple[str, ...], progress: Progress) -> None:
    """Unpack the essential set, in parallel processes (tar parsing is CPU-bound Python)."""
    progress.stage(f"extract: {len(pkgs)} essential packages")
    # base-files first: it owns the top-level layout (and, on new suites, the /usr symlinks).
    ordered = sorted(pkgs, key=lambda p: (p.name != "base-files", p.name))
    first, rest = ordered[:1], ordered[1:]
    for p in first:
        extract_data(files[p.name], root, exclude)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for f in [pool.submit(extract_data, files[p.name], root, exclude) for p in rest]:
            f.result()


def _bind_cache(root: Path, cache_dir: Path) -> Path:
    mnt = chroot.safe_mountpoint(root, DEB_MOUNT)
    for args in (["--bind", str(cache_dir), str(mnt)], ["-o", "remount,bind,ro", str(mnt)]):
        proc = subprocess.run(["mount", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EnvironmentProblem(f"bind-mounting the package cache failed: {proc.stderr.strip()}")
    return mnt


def _in_guest(path: Path, cache_dir: Path) -> str:
    return "/" + DEB_MOUNT + "/" + str(path.relative_to(cache_dir))


def dpkg_install(root: Path, debs: list[Path], cache_dir: Path, env: dict[str, str],
                 force_depends: bool, what: str) -> None:
    argv = ["dpkg", "--install"] + (["--force-depends"] if force_depends else [])
    chroot.run(root, argv + [_in_guest(d, cache_dir) for d in debs], env, what)


def _install_rounds(root: Path, others: list[Package], installed: list[Package], files: dict[str, Path],
                    cache_dir: Path, arch: str, env: dict[str, str], progress: Progress) -> None:
    """dpkg --install `others` in Pre-Depends order on top of `installed`, then audit the database."""
    mnt = _bind_cache(root, cache_dir)
    try:
        rounds = install_rounds(others, installed, arch)
        for i, batch in enumerate(rounds, 1):
            progress.stage(f"dpkg: installing {len(batch)} packages (round {i}/{len(rounds)})")
            dpkg_install(root, [files[p.name] for p in batch], cache_dir, env, False, f"dpkg (round {i})")
        progress.stage("dpkg: checking the database")
        audit = chroot.run(root, ["dpkg", "--audit"], env, "dpkg --audit")
        if audit.strip():
            raise EnvironmentProblem(f"dpkg --audit reports problems: {audit.strip().splitlines()[0]}")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def install_more(root: Path, extra: list[Package], installed: list[Package], files: dict[str, Path],
                 cache_dir: Path, arch: str, exclude: tuple[str, ...], epoch: int, progress: Progress) -> None:
    """Extend a finished root (a copy of a cached base tree) with more packages."""
    real = os.path.realpath(root)
    for rel in BUILD_FILES:  # packages are installed there now: never write through one of their symlinks
        if not is_inside(os.path.realpath(os.path.dirname(root / rel)), real) or (root / rel).is_symlink():
            raise UnsafeInput(f"{root / rel} resolves outside the guest; not extending this tree")
    prepare_root(root, arch, exclude)
    with chroot.mounted(root):
        _install_rounds(root, extra, installed, files, cache_dir, arch, {"SOURCE_DATE_EPOCH": str(epoch)}, progress)
    finish_root(root)


def install(root: Path, packages: list[Package], essential_names: set[str], files: dict[str, Path],
            cache_dir: Path, arch: str, exclude: tuple[str, ...], epoch: int, progress: Progress) -> None:
    """The whole Debian install: prepare, extract the essential closure, dpkg in the chroot."""
    essential = [p for p in packages if p.name in essential_names]
    others = [p for p in packages if p.name not in essential_names]
    prepare_root(root, arch, exclude)
    extract_essential(essential, files, root, exclude, progress)
    env = {"SOURCE_DATE_EPOCH": str(epoch)}
    with chroot.mounted(root):
        mnt = _bind_cache(root, cache_dir)
        try:
            progress.stage(f"dpkg: installing {len(essential)} essential packages")
            dpkg_install(root, [files[p.name] for p in essential], cache_dir, env, True, "dpkg (essential set)")
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        _install_rounds(root, others, essential, files, cache_dir, arch, env, progress)
    finish_root(root)
