"""Cached installed trees, keyed osbuild-style: a tree's id is the SHA-256 of everything that went into it.

The install stage (packages unpacked and configured by the guest's own package manager, before
the recipe's configure and customize steps) is a pure function of its inputs: the family and
architecture, the dpkg/rpm exclusions, the verified index hashes the resolution read, and the
resolved set (name, version, sha256 of each package). Its id hashes exactly these, so a cached
tree is reused only for the same inputs, and a recipe that differs from another only in
customize steps (or hostname) gets the same id. A recipe that adds packages to a cached base set
starts from a copy of that base tree and installs only the rest.

Layout: <cache>/trees/<id>/rootfs and <id>/inputs.json, both staged under a hidden name and
renamed into place together, so a tree directory is always complete. The newest KEEP trees are
kept. Copies are reflinks where the filesystem
can (XFS, btrfs), else real copies: never hard links, because maintainer scripts and customize
steps may write a file in place, which would change the cached tree through the link.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagefactory.build.plan import Artifact, Plan
from imagefactory.core import atomic
from imagefactory.core.errors import EnvironmentProblem

FORMAT = 1  # bump when what an install stage produces changes
KEEP = 6


def inputs(plan: Plan, packages: Sequence[Artifact]) -> dict[str, Any]:
    """The install stage's inputs, as stored beside the tree and hashed into its id."""
    r = plan.recipe
    return {
        "format": FORMAT,
        "stage": "install",
        "family": r.family,
        "architecture": r.architecture,
        "components": list(r.components),
        "exclude_paths": list(r.exclude_paths),
        "index": list(plan.index_digests),
        "packages": sorted([a.name, a.version, a.sha256] for a in packages),
        "recipe": r.name,  # informational: not part of the id
    }


def tree_id(inp: dict[str, Any]) -> str:
    keyed = {k: v for k, v in inp.items() if k != "recipe"}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


class TreeCache:
    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "trees"

    def lookup(self, tid: str) -> Path | None:
        d = self.dir / tid
        return d / "rootfs" if (d / "inputs.json").is_file() and (d / "rootfs").is_dir() else None

    def restore(self, tid: str, dest: Path) -> None:
        """Copy the cached tree to dest (which must not exist)."""
        src = self.lookup(tid)
        if src is None:
            raise EnvironmentProblem(f"cached tree {tid[:12]} vanished")
        copy_tree(src, dest)
        os.utime(self.dir / tid / "inputs.json")  # most recently used

    def store(self, tid: str, inp: dict[str, Any], rootfs: Path) -> None:
        """Copy rootfs into the cache under tid (staged with its inputs, then renamed into place)."""
        if self.lookup(tid) is not None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / tid
        stage = atomic.staging_name(final)
        if stage.exists():
            atomic.remove_tree(stage)
        stage.mkdir()
        try:
            copy_tree(rootfs, stage / "rootfs")
            atomic.write_text(stage / "inputs.json", json.dumps(inp, indent=1) + "\n")
            try:
                os.rename(stage, final)
            except OSError:  # another build stored the same tree meanwhile: keep theirs
                atomic.remove_tree(stage)
                return
        except BaseException:
            if stage.exists():
                atomic.remove_tree(stage)
            raise
        self.evict()

    def _complete(self) -> list[Path]:
        """inputs.json of every tree in place (not the hidden ones being staged)."""
        return [p for p in self.dir.glob("*/inputs.json") if not p.parent.name.startswith(".")]

    def evict(self, keep: int = KEEP) -> None:
        done = sorted(self._complete(), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in done[keep:]:
            old.unlink()  # incomplete from now on, then removed
            atomic.remove_tree(old.parent)

    def nearest(self, inp: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The newest cached tree of the same recipe, else of the same family and architecture."""
        best: tuple[int, float, str, dict[str, Any]] | None = None
        for meta in self._complete():
            try:
                other = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            rank = 2 if other.get("recipe") == inp["recipe"] else (
                1 if (other.get("family"), other.get("architecture")) == (inp["family"], inp["architecture"]) else 0)
            if rank and (best is None or (rank, meta.stat().st_mtime) > best[:2]):
                best = (rank, meta.stat().st_mtime, meta.parent.name, other)
        return None if best is None else (best[2], best[3])


def differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why two install stages differ, in a few words."""
    out = []
    for key in ("format", "family", "architecture", "components", "exclude_paths"):
        if old.get(key) != new.get(key):
            out.append(f"{key} {old.get(key)} -> {new.get(key)}")
    if old.get("index") != new.get("index"):
        n = len(set(map(str, new.get("index", []))) - set(map(str, old.get("index", []))))
        out.append(f"{n} index file(s) changed")
    a = {p[0]: p for p in map(tuple, old.get("packages", []))}
    b = {p[0]: p for p in map(tuple, new.get("packages", []))}
    if a != b:
        added = sorted(set(b) - set(a))
        removed = sorted(set(a) - set(b))
        changed = sorted(n for n in set(a) & set(b) if a[n] != b[n])
        parts = [f"+{n}" for n in added[:5]] + [f"-{n}" for n in removed[:5]]
        parts += [f"{n} {a[n][1]} -> {b[n][1]}" for n in changed[:5]]
        more = len(added) + len(removed) + len(changed) - len(parts)
        out.append("packages " + ", ".join(parts) + (f" and {more} more" if more > 0 else ""))
    return "; ".join(out) or "same inputs"


def copy_tree(src: Path, dest: Path) -> None:
    """cp -a with reflinks where the filesystem supports them (owners, modes, times, xattrs, hard links
    inside the tree and device nodes kept; symlinks copied as symlinks, never followed)."""
    proc = subprocess.run(["cp", "-a", "--reflink=auto", "--", str(src), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"copying the cached tree failed: {proc.stderr.strip()}")
