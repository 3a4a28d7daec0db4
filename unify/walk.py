"""Walk a hostile guest root without ever following a symlink or leaving the root.

Every directory is opened relative to its parent's fd with O_NOFOLLOW, so a
guest that swaps a directory for a symlink mid-walk gets an error, not a tour
of the host. Other filesystems mounted inside the guest (proc, tmpfs) are not
entered: nothing there can be linked to the store anyway.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from imagefactory.core.errors import ImageFactoryError, UnsafeInput
from unify.exclude import Matcher, Verdict

TMP_PREFIX = ".ifunify-"  # temporary names in guest directories; removed by the next run
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
RACES = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ESTALE)  # a name replaced while we walked
MAX_DEPTH = 512  # walk_all: deeper trees are hostile (and would exhaust file descriptors)


class Stat(NamedTuple):
    """The stat fields unify uses (an os.stat_result is ~3x larger; 100 guests hold 400k of these)."""

    st_dev: int
    st_ino: int
    st_mode: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_blocks: int
    st_mtime_ns: int
    st_ctime_ns: int


def small_stat(st: os.stat_result) -> Stat:
    return Stat(st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                st.st_blocks, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(slots=True)
class FileRef:
    guest: int  # index of the guest root in the run
    rel: str  # path relative to the guest root, e.g. "usr/bin/ls"
    st: Stat

    @property
    def dir_rel(self) -> str:
        return self.rel.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.rel.rpartition("/")[2]


def open_root(root: Path) -> int:
    try:
        return os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise UnsafeInput(f"guest root {root} is not a directory (or is a symlink): {exc.strerror}") from None


def open_dir(root_fd: int, rel: str) -> int:
    """Open a directory below the root one component at a time, refusing symlinks."""
    fd = os.dup(root_fd)
    for part in filter(None, rel.split("/")):
        try:
            nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nfd
    return fd


def open_guest_dir(root: Path, rel: str) -> int:
    """A directory fd inside a guest, reached from its root path without following any symlink."""
    root_fd = open_root(root)
    try:
        return open_dir(root_fd, rel)
    finally:
        os.close(root_fd)


def readdir_stat(dev: int, ino: int, size: int) -> Stat:
    """A Stat known without an lstat: a guest name whose directory entry carries the inode
    number of a store entry (in the inode-sharing modes that is the entry's own inode, so its
    size is the entry's). st_nlink 0 marks it: no lstat returns 0 for a name in a directory."""
    return Stat(dev, ino, stat.S_IFREG, 0, 0, 0, size, 0, 0, 0)


def from_readdir(st: Stat) -> bool:
    return st.st_nlink == 0


def walk(
    guest: int,
    root_fd: int,
    matcher: Matcher,
    min_size: int,
    conffiles: set[str],
    counts: Counter,
    leftovers: list[tuple[str, str]],
    shared: Mapping[int, Stat] | None = None,
) -> list[FileRef]:
    """The regular files eligible for unification; every skip is counted by reason.

    Leftover temporary names from a killed run are collected in `leftovers`
    as (dir_rel, name) for the caller to remove. (A list, not a generator:
    yielding through one generator per directory level costs more than the stats.)

    `shared` maps inode numbers of store entries on the root's filesystem to their
    readdir_stat(): a file whose directory entry names one of them gets that Stat, not
    an lstat (OSTree's dev/ino shortcut: a re-run over unified guests then makes one
    getdents call per directory and no per-file syscall; the caller lstats the file if
    its index record does not settle it).
    """
    out: list[FileRef] = []
    root_dev = os.fstat(root_fd).st_dev
    _walk_dir(guest, root_fd, "", False, root_dev, matcher, min_size, conffiles, counts, leftovers, out,
              shared or {}, matcher.every_rule)
    return out


def _walk_dir(guest, fd, rel, inside_excluded, root_dev, matcher, min_size, conffiles, counts, leftovers, out,
              shared, rules):
    counts["dirs"] += 1
    prefix = "/" + rel + "/" if rel else "/"
    verdict, include = matcher.verdict, Verdict.INCLUDE
    rules = matcher.below(prefix, rules)
    match = matcher.file_matcher(prefix, rules)
    subdirs = []
    files = special = excluded = conf = small = 0
    for e in os.scandir(fd):
        name = e.name
        if name.startswith(TMP_PREFIX):
            leftovers.append((rel, name))
            continue
        if e.is_dir(follow_symlinks=False):
            subdirs.append(name)
            continue
        if not e.is_file(follow_symlinks=False):
            special += 1  # symlinks, devices, FIFOs, sockets
            continue
        files += 1
        path = prefix + name
        if path in conffiles:
            conf += 1
        elif (inside_excluded if (m := match(path)) is None else matcher.verdict_of(m) is not include):
            excluded += 1  # (matcher.verdict() inlined: this is the walk's hottest line)
        elif (known := shared.get(e.inode())) is not None:
            out.append(FileRef(guest, path[1:], known))
        else:
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):  # replaced between readdir and stat
                special += 1
            elif st.st_size < min_size:
                small += 1
            else:
                out.append(FileRef(guest, path[1:], small_stat(st)))
    counts["files"] += files
    counts["special"] += special
    counts["excluded"] += excluded
    counts["conffiles"] += conf
    counts["too_small"] += small
    for name in subdirs:
        path = prefix + name
        v = verdict(path, inside_excluded)
        if v is Verdict.SKIP:
            counts["excluded_dirs"] += 1
            continue
        excl = v is Verdict.EXCLUDE
        if excl and not matcher.may_include_below(path):
            counts["excluded_dirs"] += 1
            continue
        try:
            sub = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError:  # became a symlink, vanished, or unreadable: never follow, never fail the run
            counts["unreadable"] += 1
            continue
        try:
            if os.fstat(sub).st_dev != root_dev:
                counts["other_fs"] += 1
                continue
            _walk_dir(guest, sub, path[1:], excl, root_dev, matcher, min_size, conffiles, counts, leftovers, out,
                      shared, rules)
        finally:
            os.close(sub)


def walk_all(root: Path) -> Iterator[tuple[int, str, str, os.stat_result]]:
    """Yield (dir_fd, name, relpath, lstat) for root ("/", dir_fd -1) and everything below it.

    Every entry, not just eligible files: the report counts directories and symlinks as du
    does. dir_fd stays open while the caller handles the entry, so a file can be opened
    relative to it without resolving any path again. Directories on another device (mounts
    inside a running guest: /proc, /sys) are listed but not entered.
    """
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise ImageFactoryError(f"{root}: not a readable directory ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        yield -1, "", "/", st
        yield from _walk_all(fd, "", st.st_dev, 0)
    finally:
        os.close(fd)


def _walk_all(fd: int, rel: str, dev: int, depth: int) -> Iterator[tuple[int, str, str, os.stat_result]]:
    if depth > MAX_DEPTH:
        raise UnsafeInput(f"directory nesting deeper than {MAX_DEPTH} levels at {rel}")
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = f"{rel}/{entry.name}"
            yield fd, entry.name, path, st
            if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                subdirs.append((entry.name, path, st.st_ino))
    for name, path, ino in subdirs:
        try:
            sub = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in RACES:
                continue  # replaced while we walked: not a directory of this tree any more
            raise
        try:
            if os.fstat(sub).st_ino == ino:
                yield from _walk_all(sub, path, dev, depth + 1)
        finally:
            os.close(sub)
