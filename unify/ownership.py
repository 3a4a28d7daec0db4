"""What a guest's package manager says about its files: config files and owners.

One module reads both package databases a guest may hold, for the engine (config files are
never unified) and for the report (which package owns a shared file):

* dpkg: ``var/lib/dpkg/info/<package>[:<arch>].conffiles`` and ``.list``, plain text;
* rpm: the database in ``usr/lib/sysimage/rpm`` or ``var/lib/rpm``, asked through the
  ``rpm`` CLI on a private copy.

The guest is hostile: every directory is opened with unify.walk's no-follow opener, every
file with O_NOFOLLOW, and rpm never sees the guest's database directory (it would create lock
files in it and follow symlinks inside it); it reads a copy of the regular files taken
through the descriptors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from imagefactory.core.errors import UnsafeInput
from unify.walk import FILE_FLAGS, open_dir, open_root

DPKG_INFO = "var/lib/dpkg/info"
RPMDB_DIRS = ("usr/lib/sysimage/rpm", "var/lib/rpm")
MAX_CONFFILES = 1 << 20  # bytes read from one .conffiles file
RPM_TIMEOUT = 300


def dpkg_info(root_fd: int, suffix: str, limit: int = -1) -> Iterator[tuple[str, str]]:
    """(package, text) of every regular `<package>[:arch]<suffix>` file in the guest's dpkg info dir."""
    try:
        fd = open_dir(root_fd, DPKG_INFO)
    except OSError:
        return
    try:
        for entry in os.scandir(fd):
            if not entry.name.endswith(suffix) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                ffd = os.open(entry.name, FILE_FLAGS, dir_fd=fd)
            except OSError:
                continue
            with open(ffd, "rb") as fh:
                text = fh.read(limit).decode("utf-8", "surrogateescape")
            yield entry.name[: -len(suffix)].partition(":")[0], text
    finally:
        os.close(fd)


def parse_conffiles(text: str) -> set[str]:
    """dpkg info/<pkg>.conffiles: one absolute path per line (newer dpkg may append flags)."""
    out = set()
    for line in text.splitlines():
        path = line.strip().split(" ", 1)[0]
        if path.startswith("/"):
            out.add(path)
    return out


def rpm_query(db_fd: int, *args: str) -> str:
    """`rpm ARGS` on a private copy of a guest's rpm database (db_fd: its directory, opened safely).

    Empty when there is no rpm on the host or it fails or hangs.
    """
    rpm = shutil.which("rpm")
    if rpm is None:
        return ""
    with tempfile.TemporaryDirectory(prefix="imagefactory-rpmdb-") as tmp:
        for e in os.scandir(db_fd):
            if e.is_file(follow_symlinks=False):
                src = os.open(e.name, FILE_FLAGS, dir_fd=db_fd)
                with open(src, "rb") as f, open(os.path.join(tmp, e.name), "wb") as out:
                    shutil.copyfileobj(f, out)
        try:
            proc = subprocess.run([rpm, "--dbpath", tmp, *args], capture_output=True, timeout=RPM_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return proc.stdout.decode("utf-8", "surrogateescape")


def rpm_config_files(db_fd: int) -> set[str]:
    """`rpm -qac`: the guest paths RPM marks %config."""
    return {line for line in rpm_query(db_fd, "-qac").splitlines() if line.startswith("/")}


def _rpm_databases(root_fd: int) -> Iterator[int]:
    """Descriptors of the guest's rpm database directories that exist (closed after each step)."""
    for rel in RPMDB_DIRS:
        try:
            fd = open_dir(root_fd, rel)
        except OSError:
            continue
        try:
            yield fd
        finally:
            os.close(fd)


def config_files(root_fd: int) -> set[str]:
    """Guest-absolute paths of package-manager config files (dpkg conffiles, RPM %config)."""
    out: set[str] = set()
    for _package, text in dpkg_info(root_fd, ".conffiles", MAX_CONFFILES):
        out |= parse_conffiles(text)
    for db_fd in _rpm_databases(root_fd):
        with contextlib.suppress(OSError):
            out |= rpm_config_files(db_fd)
    return out


class PackageDb:
    """Which package owns a guest path; loaded on first use (most guests are never asked)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._owners: dict[str, str] | None = None

    def owner(self, relpath: str) -> str | None:
        if self._owners is None:
            self._owners = self._load()
        owners = self._owners
        # Merged /usr: a .list may name /bin/x while the walk saw /usr/bin/x (or the reverse).
        for candidate in (relpath, relpath[4:] if relpath.startswith("/usr/") else "/usr" + relpath):
            if candidate in owners:
                return owners[candidate]
        return None

    def _load(self) -> dict[str, str]:
        try:
            root_fd = open_root(self.root)
        except UnsafeInput:
            return {}
        try:
            return dpkg_owners(root_fd) or rpm_owners(root_fd)
        finally:
            os.close(root_fd)


def dpkg_owners(root_fd: int) -> dict[str, str]:
    """path -> package from the dpkg .list files (the first package listing a path wins)."""
    owners: dict[str, str] = {}
    for package, text in dpkg_info(root_fd, ".list"):
        for line in text.splitlines():
            owners.setdefault(line, package)
    return owners


def rpm_owners(root_fd: int) -> dict[str, str]:
    """path -> package from the first rpm database found in the guest."""
    owners: dict[str, str] = {}
    for db_fd in _rpm_databases(root_fd):
        try:
            out = rpm_query(db_fd, "-qa", "--qf", r"[%{FILENAMES}\t%{NAME}\n]")
        except OSError:
            out = ""
        for line in out.splitlines():
            path, sep, name = line.rpartition("\t")
            if sep:
                owners.setdefault(path, name)
        break
    return owners
