"""Size of a patch the way the Linux-VServer paper tabulates it.

Counts files touched, new files, removed files, hunks, and lines added and
removed, by walking hunks by their header counts (so a content line that
happens to start with '+++' or '---' is never taken for a file header).
Reads plain, .gz, .bz2 and .xz patches.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_OPENERS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass
class PatchStats:
    name: str
    files: int = 0
    new_files: int = 0
    removed_files: int = 0
    hunks: int = 0
    added: int = 0
    removed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _strip(path: str) -> str:
    return path.split("\t", 1)[0].strip()


def parse_patch(text: str, name: str = "<patch>") -> PatchStats:
    """Stats of a unified diff (git or plain diff -u); binary diffs count as files only."""
    stats = PatchStats(name)
    lines = text.splitlines()
    seen: set[str] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = _strip(line[4:]), _strip(lines[i + 1][4:])
            target = old if new == "/dev/null" else new
            if target not in seen:
                seen.add(target)
                stats.files += 1
                stats.new_files += old == "/dev/null"
                stats.removed_files += new == "/dev/null"
            i += 2
            continue
        m = _HUNK.match(line)
        if m:
            stats.hunks += 1
            old_left = int(m.group(1) or 1)
            new_left = int(m.group(2) or 1)
            i += 1
            while i < len(lines) and (old_left > 0 or new_left > 0):
                body = lines[i]
                if body.startswith("+"):
                    stats.added += 1
                    new_left -= 1
                elif body.startswith("-"):
                    stats.removed += 1
                    old_left -= 1
                elif body.startswith("\\"):
                    pass  # "\ No newline at end of file"
                else:
                    old_left -= 1
                    new_left -= 1
                i += 1
            continue
        if line.startswith("Binary files ") or line.startswith("GIT binary patch"):
            stats.files += 1
        i += 1
    return stats


def read_patch(path: Path) -> str:
    """Patch text, decompressed by extension; undecodable bytes are kept as escapes."""
    opener = _OPENERS.get(path.suffix)
    with (opener(path, "rb") if opener else open(path, "rb")) as handle:
        return handle.read().decode("utf-8", errors="surrogateescape")


def total(stats: list[PatchStats]) -> PatchStats:
    out = PatchStats("total")
    for s in stats:
        for key in ("files", "new_files", "removed_files", "hunks", "added", "removed"):
            setattr(out, key, getattr(out, key) + getattr(s, key))
    return out


def format_table(stats: list[PatchStats]) -> str:
    """A fixed-width table with a total row when there is more than one patch."""
    rows = list(stats) + ([total(stats)] if len(stats) > 1 else [])
    head = ("patch", "files", "new", "removed", "hunks", "+lines", "-lines")
    body = [(r.name, r.files, r.new_files, r.removed_files, r.hunks, r.added, r.removed) for r in rows]
    width = max(len(head[0]), *(len(str(b[0])) for b in body))
    fmt = f"{{:<{width}}} " + " ".join("{:>7}" for _ in head[1:])
    lines = [fmt.format(*head)]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)
