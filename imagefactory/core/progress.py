"""Progress lines on stderr: one updating line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """Report stage starts and counters without flooding logs.

    On a TTY a counter rewrites its line; elsewhere (CI, pipes) it prints at
    most about once every few seconds, plus the final value.
    """

    def __init__(self, quiet: bool = False, stream=None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._start = time.monotonic()

    def stage(self, text: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self._start
            self._emit(f"[{elapsed:6.1f}s] {text}", final=True)

    def warn(self, text: str) -> None:
        """One warning line, shown even when quiet (a warning is not progress)."""
        self._emit(f"imagefactory: warning: {text}", final=True)

    def count(self, label: str, done: int, total: int, unit: str = "") -> None:
        if self.quiet:
            return
        now = time.monotonic()
        final = done >= total
        if not final and now - self._last < (0.1 if self.tty else 5.0):
            return
        self._last = now
        self._emit(f"  {label}: {done}/{total}{unit}", final=final)

    def _emit(self, text: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
