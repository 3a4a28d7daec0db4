"""Version comparison exactly as rpm does it (lib/rpmvercmp.c, lib/rpmver.c).

Resolution must pick the same "newest" package and accept the same versioned
dependencies as rpm itself, or the install transaction would disagree with
the plan. So this is a faithful port, including `~` (sorts before anything,
for pre-releases) and `^` (sorts after the base version, for snapshots).
"""

from __future__ import annotations

from dataclasses import dataclass

# RPMSENSE bits, and the flag names primary.xml uses for them.
LESS, GREATER, EQUAL = 2, 4, 8
FLAGS = {"LT": LESS, "GT": GREATER, "EQ": EQUAL, "LE": LESS | EQUAL, "GE": GREATER | EQUAL}
OPERATORS = {"<": LESS, ">": GREATER, "=": EQUAL, "<=": LESS | EQUAL, ">=": GREATER | EQUAL}


def _isalnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def rpmvercmp(a: str, b: str) -> int:
    """Compare two version (or release) strings: -1, 0 or 1."""
    if a == b:
        return 0
    i = j = 0
    la, lb = len(a), len(b)
    while i < la or j < lb:
        while i < la and not _isalnum(a[i]) and a[i] not in "~^":
            i += 1
        while j < lb and not _isalnum(b[j]) and b[j] not in "~^":
            j += 1
        ca = a[i] if i < la else ""
        cb = b[j] if j < lb else ""
        if ca == "~" or cb == "~":  # tilde sorts before everything, even the end
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i, j = i + 1, j + 1
            continue
        if ca == "^" or cb == "^":  # caret sorts after the end, before anything else
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i, j = i + 1, j + 1
            continue
        if not (ca and cb):
            break
        isnum = ca.isascii() and ca.isdigit()
        kind = (lambda c: c.isascii() and c.isdigit()) if isnum else (lambda c: c.isascii() and c.isalpha())
        si, sj = i, j
        while i < la and kind(a[i]):
            i += 1
        while j < lb and kind(b[j]):
            j += 1
        one, two = a[si:i], b[sj:j]
        if not two:  # segments of different types: numeric is newer than alpha
            return 1 if isnum else -1
        if isnum:
            one, two = one.lstrip("0"), two.lstrip("0")
            if len(one) != len(two):
                return 1 if len(one) > len(two) else -1
        if one != two:
            return 1 if one > two else -1
    if i >= la and j >= lb:
        return 0
    return -1 if i >= la else 1


@dataclass(frozen=True, order=False)
class EVR:
    """epoch:version-release; an empty epoch means 0, an empty release means "any"."""

    epoch: str = ""
    version: str = ""
    release: str = ""

    @classmethod
    def parse(cls, text: str) -> EVR:
        """Split `[epoch:]version[-release]` as rpm does (the last '-' starts the release)."""
        epoch, sep, rest = text.partition(":")
        if not sep or not epoch.isdigit():
            epoch, rest = "", text
        version, sep, release = rest.rpartition("-")
        if not sep:
            version, release = rest, ""
        return cls(epoch, version, release)

    def __str__(self) -> str:
        e = f"{self.epoch}:" if self.epoch and self.epoch != "0" else ""
        return f"{e}{self.version}" + (f"-{self.release}" if self.release else "")


def evrcmp(x: EVR, y: EVR) -> int:
    """Order two package EVRs (rpmverCmp): epoch, then version, then release (missing = empty)."""
    return (rpmvercmp(x.epoch or "0", y.epoch or "0") or rpmvercmp(x.version, y.version)
            or rpmvercmp(x.release, y.release))


def _atol(text: str) -> int:
    digits = text[: len(text) - len(text.lstrip("0123456789"))]
    return int(digits) if digits else 0


def overlap(f1: int, v1: EVR | None, f2: int, v2: EVR | None) -> bool:
    """Do two dependency ranges intersect (rpmverOverlap)? An unversioned side matches anything."""
    if v1 is None or v2 is None or not (f1 & (LESS | GREATER | EQUAL)) or not (f2 & (LESS | GREATER | EQUAL)):
        return True
    sense = 0
    if v1.epoch and v2.epoch:
        sense = rpmvercmp(v1.epoch, v2.epoch)
    elif _atol(v1.epoch) > 0:
        sense = 1
    elif _atol(v2.epoch) > 0:
        sense = -1
    if sense == 0:
        sense = rpmvercmp(v1.version, v2.version)
        if sense == 0:
            if v1.release and v2.release:
                sense = rpmvercmp(v1.release, v2.release)
            elif (v1.release and f2 & EQUAL) or (v2.release and f1 & EQUAL):
                return True  # the side without a release matches any release
    if sense < 0:
        return bool(f1 & GREATER or f2 & LESS)
    if sense > 0:
        return bool(f1 & LESS or f2 & GREATER)
    return any(f1 & bit and f2 & bit for bit in (EQUAL, LESS, GREATER))
