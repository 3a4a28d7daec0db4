"""Context id allocation: unique, from 40000 up, never reused while a guest holds it.

util-vserver numbers static contexts 2..49151 and its own auto-numbering
starts at 40000; the ids in use are the `context` files of every guest's
conf dir. An flock on a lock file in the confdir serialises concurrent
seeds: the lock is held from allocation until the new conf dir is renamed
into place, so two seeds can never pick the same id.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from imagefactory.core.errors import EnvironmentProblem

FIRST = 40000
LAST = 49151  # util-vserver: static contexts are 2..49151
LOCK_NAME = ".imagefactory-seed.lock"


def next_free(used: Iterable[int], first: int = FIRST, last: int = LAST) -> int:
    """The lowest id in [first, last] not in used."""
    taken = set(used)
    for ctx in range(first, last + 1):
        if ctx not in taken:
            return ctx
    raise EnvironmentProblem(f"no free context id left in {first}..{last}")


def read_context(conf: Path) -> int | None:
    """The context id in a guest's conf dir, or None if absent/unreadable."""
    try:
        return int((conf / "context").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def used_contexts(confdir: Path) -> dict[str, int]:
    """Guest name -> context id for every guest config under confdir."""
    used: dict[str, int] = {}
    if confdir.is_dir():
        for conf in sorted(confdir.iterdir()):
            if conf.name.startswith(".") or not conf.is_dir():
                continue
            ctx = read_context(conf)
            if ctx is not None:
                used[conf.name] = ctx
    return used


@contextlib.contextmanager
def allocation_lock(confdir: Path) -> Iterator[None]:
    """Hold the confdir-wide seeding lock (blocks while another seed holds it)."""
    confdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(confdir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def allocate(confdir: Path, name: str) -> int:
    """Context for guest `name`: its existing id when reseeding, else the lowest free one.

    Call with allocation_lock(confdir) held.
    """
    used = used_contexts(confdir)
    if name in used:
        return used[name]
    return next_free(used.values())
