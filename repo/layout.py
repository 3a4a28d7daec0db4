"""The repository on disk: config, numbered states and the `current` switch.

    <repo>/.imagefactory/config.json   key, suite, retention (never served)
    <repo>/.imagefactory/keyring.gpg   the public key `repo verify` trusts
    <repo>/states/000007/              one complete, signed repository
    <repo>/current -> states/000007    the only thing a publish changes in place

A new state starts as a hard-link clone of the current one (cheap, and old
files are never written in place: every write replaces the name), is filled
and signed under a hidden name, renamed to its number, and published by
renaming a new symlink over `current`. Superseded states stay for a grace
period so a client that already read an old index can finish.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imagefactory.core.errors import ImageFactoryError

CONFIG_DIR = ".imagefactory"
STATE_FILE = "state.json"


class RepoError(ImageFactoryError):
    """The repository directory is missing, uninitialised or damaged."""


@dataclass
class Config:
    key_id: str | None
    key_file: str | None
    fingerprint: str
    suite: str = "stable"
    component: str = "main"
    architectures: tuple[str, ...] = ("amd64",)
    origin: str = "imagefactory"
    label: str = "imagefactory"
    grace_seconds: int = 3600
    keep_states: int = 2
    valid_seconds: int = 7 * 86400  # Valid-Until = Date + this (0: no Valid-Until); `repo resign` renews
    keep_versions: int = 0  # newest versions kept per image and per package name/arch (0: all)

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["architectures"] = list(self.architectures)
        return {"schema": 1, **data}

    @classmethod
    def from_json(cls, data: dict) -> Config:
        data = {k: v for k, v in data.items() if k != "schema"}
        data["architectures"] = tuple(data.get("architectures") or ("amd64",))
        return cls(**data)


class Repo:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def meta(self) -> Path:
        return self.root / CONFIG_DIR

    @property
    def states(self) -> Path:
        return self.root / "states"

    @property
    def current_link(self) -> Path:
        return self.root / "current"

    @property
    def keyring(self) -> Path:
        return self.meta / "keyring.gpg"

    def is_initialised(self) -> bool:
        return (self.meta / "config.json").is_file()

    def config(self) -> Config:
        if not self.is_initialised():
            raise RepoError(f"{self.root} is not an imagefactory repository (run `imagefactory repo init` first)")
        try:
            return Config.from_json(json.loads((self.meta / "config.json").read_text()))
        except (ValueError, TypeError) as exc:
            raise RepoError(f"{self.meta / 'config.json'} is damaged ({exc})") from None

    def current(self) -> Path | None:
        """The directory `current` points at, or None before the first publish."""
        if not self.current_link.is_symlink():
            return None
        target = self.current_link.resolve()
        return target if target.is_dir() else None

    def serials(self) -> list[int]:
        if not self.states.is_dir():
            return []
        return sorted(int(p.name) for p in self.states.iterdir() if p.name.isdigit())

    def state_dir(self, serial: int) -> Path:
        return self.states / f"{serial:06d}"

    def read_state(self, directory: Path | None) -> dict:
        if directory is None:
            return {"serial": 0, "debs": {}, "rpms": {}, "images": {}, "extras": {}, "indexes": []}
        return json.loads((directory / STATE_FILE).read_text())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One publisher at a time (readers never lock)."""
        self.meta.mkdir(parents=True, exist_ok=True)
        with open(self.meta / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def new_state(self) -> Iterator[tuple[int, Path]]:
        """Yield (serial, staging dir) cloned from current; on success it becomes current."""
        serial = max(self.serials(), default=0) + 1
        stage = self.states / f".{serial:06d}.partial"
        if stage.exists():
            shutil.rmtree(stage)
        self.states.mkdir(parents=True, exist_ok=True)
        current = self.current()
        try:
            if current is not None:
                shutil.copytree(current, stage, copy_function=os.link)
            else:
                stage.mkdir()
            yield serial, stage
            os.sync()  # the new state must be on disk before anything points at it
            final = self.state_dir(serial)
            os.rename(stage, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        self.switch(serial)

    def switch(self, serial: int) -> None:
        """Point `current` at a state with one atomic rename of a fresh symlink."""
        tmp = self.root / f".current.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"states/{serial:06d}", tmp)
        os.replace(tmp, self.current_link)

    def published_times(self) -> dict[int, float]:
        times = {}
        for serial in self.serials():
            with contextlib.suppress(OSError, ValueError, KeyError):
                times[serial] = float(self.read_state(self.state_dir(serial))["published_at"])
        return times

    def prune(self, keep: int, grace: float, now: float | None = None) -> list[int]:
        """Delete states no client can still be reading; return their serials.

        Called under the lock, so leftovers of a crashed publish or prune are garbage too.
        """
        for leftover in [*self.states.glob(".*.partial"), *self.states.glob(".*.deleting")]:
            shutil.rmtree(leftover, ignore_errors=True)
        times = self.published_times()
        survivors = retained(times, keep, grace, time.time() if now is None else now)
        removed = []
        for serial in self.serials():
            if serial not in survivors:
                doomed = self.states / f".{serial:06d}.deleting"
                os.rename(self.state_dir(serial), doomed)  # vanish under its name first
                shutil.rmtree(doomed)
                removed.append(serial)
        return removed


def retained(published: dict[int, float], keep: int, grace: float, now: float) -> set[int]:
    """States to keep: the newest `keep`, plus any superseded less than `grace` seconds ago.

    A state is superseded when the next one is published; until then it is current.
    """
    order = sorted(published)
    keep_set = set(order[-max(keep, 1):])
    for older, newer in itertools.pairwise(order):
        if now - published[newer] < grace:
            keep_set.add(older)
    return keep_set


def put(directory: Path, relpath: str, data: bytes) -> Path:
    """Write a file inside a staging state, replacing (never modifying) any hard-linked old one."""
    target = directory / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def copy_in(directory: Path, relpath: str, source: Path) -> Path:
    """Copy an input file into a staging state (never link: the user may change the input later)."""
    target = directory / relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target
