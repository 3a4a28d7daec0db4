"""Apply a patch series with GNU patch: dry-run every patch first, then apply.

A patch that does not apply is reported with the file and hunk that failed,
and nothing of that patch is written to the tree.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from imagefactory.core.errors import RecipeError
from kernel.patchstats import read_patch

_FILE = re.compile(r"^(?:checking|patching) file (.+)$")
_FAILED = re.compile(r"^Hunk #(\d+) FAILED at (\d+)")
_MISSING = re.compile(r"^can't find file to patch at input line (\d+)")


def parse_patch_failures(output: str) -> list[str]:
    """Human-readable failures from GNU patch output: 'fs/namei.c hunk #2 (at line 3019)'."""
    current = "?"
    problems = []
    for line in output.splitlines():
        if m := _FILE.match(line):
            current = m.group(1).strip().strip("'")
        elif m := _FAILED.match(line):
            problems.append(f"{current} hunk #{m.group(1)} (at line {m.group(2)})")
        elif m := _MISSING.match(line):
            problems.append(f"file to patch not found (patch input line {m.group(1)})")
        elif "Reversed (or previously applied) patch detected" in line:
            problems.append(f"{current}: already applied (or reversed)")
    return problems


def _patch(tree: Path, text: bytes, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-d", str(tree), *extra],
        input=text, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
    )


def apply_patch(tree: Path, name: str, path: Path, log) -> None:
    """Dry-run then apply one patch; RecipeError names the failing file and hunk."""
    text = read_patch(path).encode("utf-8", errors="surrogateescape")
    trial = _patch(tree, text, "--dry-run")
    output = trial.stdout.decode(errors="replace")
    log.write(f"$ patch -p1 --dry-run < {path}\n{output}")
    if trial.returncode != 0:
        last = output.strip().splitlines()[-1] if output.strip() else f"exit {trial.returncode}"
        problems = parse_patch_failures(output) or [last]
        raise RecipeError(f"patch {name} does not apply: {'; '.join(problems)}")
    real = _patch(tree, text)
    log.write(f"$ patch -p1 < {path}\n{real.stdout.decode(errors='replace')}")
    if real.returncode != 0:
        raise RecipeError(f"patch {name} failed after a clean dry run (exit {real.returncode}); see the build log")
