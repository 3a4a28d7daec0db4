"""Pickled memos of pure computations over verified inputs (a resolution, a parsed primary.xml).

A memo is a cache, never a source of truth: it is stored with its key, written atomically
(temp name, rename), and anything missing, truncated, unreadable by this version of the
records, or stored under another key is simply recomputed. Memos live only in the build cache
the user owns (pickle must never read a file from anywhere else).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def load(path: Path, key: object) -> Any | None:
    """The value memoized at path under key, or None (then it is recomputed)."""
    try:
        with path.open("rb") as f:
            stored_key, value = pickle.load(f)
    except Exception:  # missing, truncated, or records of another layout
        return None
    return value if stored_key == key else None


def save(path: Path, key: object, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with tmp.open("wb") as f:
        pickle.dump((key, value), f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def memoized(path: Path, key: object, compute: Callable[[], T]) -> tuple[T, bool]:
    """(value, True) from the memo, or (compute(), False) after memoizing it."""
    value = load(path, key)
    if value is not None:
        return value, True
    value = compute()
    save(path, key, value)
    return value, False
