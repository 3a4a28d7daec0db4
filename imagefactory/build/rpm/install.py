"""Install a resolved rpm set into a guest root with rpm itself.

One `rpm --install` transaction: rpm orders the packages (Requires(pre)
first), unpacks them and runs every scriptlet chrooted into the guest. The
database is the sqlite rpmdb at /usr/lib/sysimage/rpm, where Fedora's own
rpm looks for it. Before anything touches the root, every package's
signature is checked with `rpmkeys --checksig` against the recipe's key only
(a throwaway keyring, never the host's); the key is then imported into the
guest so rpm re-checks each signature while installing.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import rpmfile

from imagefactory.build import buildlog
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError, VerificationError

RPMDB = "/usr/lib/sysimage/rpm"
DEBIAN_NAG = ("rpm: RPM should not be used directly", "rpm: However assuming you know")  # Debian's wrapper
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root"}


def _run(argv: list[str], what: str, epoch: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run an rpm tool; with epoch, rpm records it as every install time (a reproducible rpmdb)."""
    env = dict(ENV, SOURCE_DATE_EPOCH=str(epoch)) if epoch is not None else ENV
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise EnvironmentProblem(f"{argv[0]} not found: install rpm (scripts/setup does) to {what}") from None
    buildlog.record(argv, proc.stdout + proc.stderr, proc.returncode)
    return proc


def rpm_argv(root: Path) -> list[str]:
    """rpm acting on the guest's database (Debian's rpm defaults to ~/.rpmdb)."""
    return ["rpm", "--root", os.path.abspath(root), "--dbpath", RPMDB, "--define", "_db_backend sqlite"]


def check_signatures(files: dict[str, Path], keyring: Path) -> None:
    """Every package must carry a valid signature by a key in keyring (rpmkeys --checksig)."""
    if not keyring.is_file():
        raise VerificationError(f"keyring {keyring} not found (set the recipe's 'keyring' to the distribution's key)")
    with tempfile.TemporaryDirectory(prefix="imagefactory-rpmkeys.") as db:
        proc = _run(["rpmkeys", "--dbpath", db, "--import", str(keyring)], "check package signatures")
        if proc.returncode != 0:
            raise VerificationError(f"keyring {keyring}: rpmkeys cannot import it ({proc.stderr.strip()})")
        names = {str(path): name for name, path in files.items()}
        proc = _run(["rpmkeys", "--dbpath", db, "--define", "_pkgverify_level signature", "--checksig",
                     *names], "check package signatures")
    verdicts = {}
    for line in proc.stdout.splitlines():
        path, sep, verdict = line.rpartition(": ")
        if sep and path in names:
            verdicts[path] = verdict
    for path, name in sorted(names.items(), key=lambda kv: kv[1]):
        verdict = verdicts.get(path, "")
        if "signatures OK" not in verdict or "NOT OK" in verdict:
            reason = verdict or (proc.stderr.strip().splitlines() or ["no verdict"])[-1]
            raise VerificationError(f"package {name}: signature check against {keyring} failed ({reason})")
    if proc.returncode != 0:
        raise VerificationError(f"package signature check failed: {proc.stdout.strip()} {proc.stderr.strip()}")


def _as_tuple(value) -> tuple:
    """rpmfile gives a one-element array as a bare value, and no files as None."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def build_time(path: Path) -> int:
    """BUILDTIME from a package's header (set from SOURCE_DATE_EPOCH by reproducible builds)."""
    try:
        with rpmfile.open(path) as rpm:
            value = rpm.headers.get("buildtime")
    except Exception as exc:  # rpmfile raises plain errors on a malformed header
        raise VerificationError(f"{path}: unreadable rpm header ({exc})") from None
    value = _as_tuple(value)
    return int(value[0]) if value else 0


def file_list(path: Path) -> list[tuple[str, int]]:
    """(path, RPMFILE_* flags) of every file a package ships, from its header."""
    try:
        with rpmfile.open(path) as rpm:
            h = rpm.headers
    except Exception as exc:  # rpmfile raises assorted types (even AssertionError) on bad input
        raise VerificationError(f"{path}: unreadable rpm header ({type(exc).__name__}: {exc})") from None
    dirs = [d.decode() for d in _as_tuple(h.get("dirnames"))]
    names = [b.decode() for b in _as_tuple(h.get("basenames"))]
    index = _as_tuple(h.get("dirindexes"))
    flags = _as_tuple(h.get("fileflags"))
    return [(dirs[i] + n, f) for n, i, f in zip(names, index, flags, strict=False)]


def excluded(paths: Iterable[str], patterns: tuple[str, ...]) -> list[str]:
    """The paths matching the recipe's exclude_paths (fnmatch, as dpkg's path-exclude)."""
    return [p for p in paths if any(fnmatch.fnmatchcase(p, pat) for pat in patterns)]


def install(files: dict[str, Path], root: Path, keyring: Path, exclude: tuple[str, ...], epoch: int) -> None:
    """Verify, then install every package in one rpm transaction into root, dated epoch."""
    check_signatures(files, keyring)
    (root / RPMDB.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for argv in (["--initdb"], ["--import", str(keyring)]):
        proc = _run(rpm_argv(root) + argv, "install packages", epoch)
        if proc.returncode != 0:
            raise ImageFactoryError(f"rpm {argv[0]} in {root} failed: {proc.stderr.strip()}")
    skip = sorted({p for path in files.values() for p in excluded((f for f, _ in file_list(path)), exclude)}
                  if exclude else ())
    argv = rpm_argv(root) + ["--install", "--quiet", "--define", "_pkgverify_level signature"]
    argv += [x for p in skip for x in ("--excludepath", p)]
    proc = _run(argv + [str(p) for p in files.values()], "install packages", epoch)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(DEBIAN_NAG)]
        tail = " | ".join(lines[-4:])
        raise ImageFactoryError(f"rpm --install into {root} failed (exit {proc.returncode}): {tail}")


def restore_mountpoints(root: Path, points: tuple[str, ...] = ("/proc", "/sys", "/dev")) -> None:
    """Give the mount points the modes their package records (555 for /proc, /sys).

    rpm set them on the mounted filesystems during the install; the directories
    underneath still have the modes they were created with.
    """
    proc = _run(rpm_argv(root) + ["-qf", "--qf", "%{NAME}\n", *points], "restore mount points")
    # owners only, not "file /dev is not owned by any package"
    owners = sorted({line for line in proc.stdout.splitlines() if line and " " not in line})
    if owners:
        proc = _run(rpm_argv(root) + ["--restore", *owners], "restore mount points")
        if proc.returncode != 0:
            raise ImageFactoryError(f"rpm --restore {' '.join(owners)} in {root} failed: {proc.stderr.strip()}")


def tidy_rpmdb(root: Path) -> None:
    """Drop sqlite's shared-memory and empty write-ahead files: state of the build host, not the guest."""
    db = root / RPMDB.lstrip("/")
    if os.path.realpath(db) != os.path.join(os.path.realpath(root), RPMDB.lstrip("/")):
        return  # a guest symlink points the database elsewhere: not ours to touch
    wal = db / "rpmdb.sqlite-wal"
    if wal.is_file() and not wal.is_symlink() and wal.stat().st_size == 0:
        wal.unlink()
        (db / "rpmdb.sqlite-shm").unlink(missing_ok=True)


def config_files(root: Path) -> list[str]:
    """The guest's %config files (rpm -qac), which unification must leave alone."""
    proc = _run(rpm_argv(root) + ["-qac"], "list config files")
    if proc.returncode != 0:
        raise ImageFactoryError(f"rpm -qac in {root} failed: {proc.stderr.strip()}")
    return sorted(line for line in proc.stdout.splitlines() if line.startswith("/"))
