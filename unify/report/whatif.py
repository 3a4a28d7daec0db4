"""What if: roots not unified yet, measured by the unify engine's own walk, rules and keys."""

from __future__ import annotations

import os
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from imagefactory.core.errors import UnsafeInput
from unify import index as uindex
from unify import store as ustore
from unify import walk as uwalk
from unify.engine import MIN_SIZE
from unify.exclude import Matcher, load_rules
from unify.ownership import config_files
from unify.report.figures import Builder, GuestCount
from unify.report.model import Report


@dataclass(slots=True)
class _Candidate:
    """An eligible file met in the walk (one per guest inode)."""

    guest: int
    rel: str
    dev: int
    ino: int
    size: int
    disk: int
    names: int = 1  # hard links to it inside its guest


def what_if(roots: list[Path], store: Path | None = None, ignore_mtime: bool = False,
            min_size: int = MIN_SIZE, exclude_file: Path | None = None, top: int = 20,
            progress=None) -> Report:
    """What unifying `roots` would save, by the engine's own rules and keys.

    Eligibility is the engine's walk (exclude list, config files, minimum size); files are
    keyed like store entries (XXH3-128 of content + metadata key + size). Only files whose
    size occurs at least twice are read; a digest in a fresh unify-index record (when
    --store names a store that knows the guest) is reused instead of reading the file.
    """
    b = Builder(roots, top)
    candidates: list[_Candidate] = []
    for g, root in enumerate(roots):
        guest = GuestCount(b.guests[g])
        eligible = _eligible(g, root, min_size, exclude_file)
        linked: dict[tuple[int, int], _Candidate] = {}
        for _fd, _name, rel, st in uwalk.walk_all(root):
            b.count_real(st)
            if not guest.first_time(st):
                if (st.st_dev, st.st_ino) in linked:
                    linked[(st.st_dev, st.st_ino)].names += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            disk = st.st_blocks * 512
            if rel[1:] in eligible:
                rec = _Candidate(g, rel, st.st_dev, st.st_ino, st.st_size, disk)
                candidates.append(rec)
                if st.st_nlink > 1:
                    linked[(st.st_dev, st.st_ino)] = rec
            else:
                b.private(g, rel, st.st_size, disk)
        if progress:
            progress.count("guests walked", g + 1, len(roots))
    by_size: dict[int, list[_Candidate]] = defaultdict(list)
    for rec in candidates:
        by_size[rec.size].append(rec)
    to_hash = [rec for recs in by_size.values() if len(recs) > 1 for rec in recs]
    keys = _content_keys(to_hash, roots, store, ignore_mtime, progress)
    for rec in candidates:
        key = keys.get((rec.dev, rec.ino))
        if key is None:
            b.private(rec.guest, rec.rel, rec.size, rec.disk)
            continue
        grp = b.join(key, rec.guest, rec.rel, rec.size, rec.disk)
        grp.occ.append(rec.guest)
        grp.paths.extend([rec.guest] * rec.names)
    inodes: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for rec in to_hash:
        key = keys.get((rec.dev, rec.ino))
        if key is not None:
            inodes[key].add((rec.dev, rec.ino))
    for key, ids in inodes.items():
        b.groups[key].inodes = len(ids)
    return b.finish("what-if", None, True, {"current_disk_bytes": b.real_disk,
                                            "apparent_unique_bytes": b.real_apparent})


def _eligible(g: int, root: Path, min_size: int, exclude_file: Path | None) -> set[str]:
    """Relative paths the unify engine would consider (its walk, its rules)."""
    root_fd = uwalk.open_root(root)
    try:
        matcher = Matcher(load_rules(root, exclude_file))
        conffiles = config_files(root_fd)
        walker = uwalk.walk(g, root_fd, matcher, min_size, conffiles, Counter(), [])
        return {ref.rel for ref in walker}
    finally:
        os.close(root_fd)


def _content_keys(recs: list[_Candidate], roots: list[Path], store: Path | None, ignore_mtime: bool,
                  progress) -> dict[tuple[int, int], str]:
    """(dev, ino) -> store entry name the file would be unified with."""
    keys: dict[tuple[int, int], str] = {}
    indexes: dict[int, dict[str, uindex.Record]] = {}
    buf = bytearray(ustore.CHUNK)
    for n, rec in enumerate(recs, 1):
        if (rec.dev, rec.ino) in keys:
            continue
        g = rec.guest
        if store is not None and g not in indexes:
            indexes[g] = uindex.read(store, roots[g])
        key = _hash_file(roots[g], rec.rel, rec.dev, rec.ino, ignore_mtime, buf, indexes.get(g, {}))
        if key is not None:
            keys[(rec.dev, rec.ino)] = key
        if progress:
            progress.count("files hashed", n, len(recs))
    return keys


def _hash_file(root: Path, rel: str, dev: int, ino: int, ignore_mtime: bool, buf: bytearray,
               records: dict) -> str | None:
    dir_rel, _, name = rel[1:].rpartition("/")
    try:
        dfd = uwalk.open_guest_dir(root, dir_rel)
    except (OSError, UnsafeInput):
        return None
    try:
        fd = os.open(name, uwalk.FILE_FLAGS, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (dev, ino) or not stat.S_ISREG(st.st_mode):
            return None  # replaced since the walk
        meta = ustore.meta_of(st, ustore.read_xattrs(fd), ignore_mtime)
        rec = records.get(rel[1:])
        if rec and rec.digest and rec.fresh(st):
            digest, size = rec.hexdigest, st.st_size
        else:
            digest, size = ustore.hash_fd(fd, buf)
        return ustore.entry_name(digest, meta.key(), size)
    finally:
        os.close(fd)
