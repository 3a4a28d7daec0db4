"""The build log: every command run in a guest, with its full output, kept outside the image.

`out/NAME.build.log` gets each chroot command (dpkg, maintainer scripts, customize steps, rpm)
with all it printed, in order. It is written under a hidden name and renamed into place when
the build ends, whether it succeeded or not, so a failed build leaves its log for reading and
an earlier log is never half overwritten.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TextIO

from imagefactory.core import atomic

_current: ContextVar[TextIO | None] = ContextVar("build_log", default=None)


def record(argv: Sequence[str], output: str, returncode: int, seconds: float | None = None) -> None:
    """Append one command and its output to the current build log (no-op outside a build)."""
    log = _current.get()
    if log is None:
        return
    log.write(f"$ {shlex.join(argv)}\n{output}")
    if output and not output.endswith("\n"):
        log.write("\n")
    took = f", {seconds:.1f} s" if seconds is not None else ""
    log.write(f"[exit {returncode}{took}]\n\n")
    log.flush()


def note(text: str) -> None:
    log = _current.get()
    if log is not None:
        log.write(f"# {time.strftime('%H:%M:%S')} {text}\n")
        log.flush()


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[Path]:
    """Collect the build's command output into path (staged, renamed at the end either way)."""
    stage = atomic.staging_name(path)
    with open(stage, "w", encoding="utf-8", errors="replace") as f:
        token = _current.set(f)
        try:
            yield path
        finally:
            _current.reset(token)
            f.flush()
            os.fsync(f.fileno())
            os.replace(stage, path)
