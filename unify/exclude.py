"""Which guest paths are never unified: the vhashify-style exclude list and config files.

The list syntax is util-vserver's (`+` include, `-` exclude, `~` skip, bare =
exclude; fnmatch where `*` also matches `/`; first match wins). All patterns
are compiled into one regular expression so a path costs one match, not one
per line. Package-manager config files (dpkg conffiles, RPM %config) are
excluded first: an admin edits them per guest, and a shared immutable copy
would make every edit fail.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from imagefactory.core.errors import RecipeError

DEFAULT_LIST = Path(__file__).with_name("vunify-exclude")
_WILDCARDS = re.compile(r"[*?\[]")


class Verdict(Enum):
    INCLUDE = "+"
    EXCLUDE = "-"
    SKIP = "~"


@dataclass(frozen=True)
class Rule:
    verdict: Verdict
    pattern: str


def parse_rules(text: str, source: str = "exclude list") -> list[Rule]:
    """Parse `+`/`-`/`~`/bare pattern lines; `#` comments and blank lines are ignored."""
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        verdict = Verdict.EXCLUDE
        if line[0] in "+-~":
            verdict, line = Verdict(line[0]), line[1:].strip()
        if not line.startswith("/"):
            raise RecipeError(f"{source}:{number}: pattern must be guest-absolute (start with /): {raw.strip()!r}")
        rules.append(Rule(verdict, line.rstrip("/") or "/"))
    return rules


class Matcher:
    """Decide per guest path; directories report whether their subtree needs walking."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._literals = [_WILDCARDS.split(r.pattern, 1)[0] for r in rules]  # each rule's start before a wildcard
        self._include_prefixes = [lit for lit, r in zip(self._literals, rules, strict=True)
                                  if r.verdict is Verdict.INCLUDE]
        self._subsets: dict[tuple[int, ...], Callable[[str], re.Match | None]] = {}
        self._match = self._compiled(self.every_rule)

    def _compiled(self, picked: tuple[int, ...]) -> Callable[[str], re.Match | None]:
        """One regular expression for the rules `picked`, each a named group r<index> (the first
        match wins, as alternation does), cached per set."""
        found = self._subsets.get(picked)
        if found is None:
            if picked:
                found = re.compile("|".join(f"(?P<r{i}>{fnmatch.translate(self.rules[i].pattern)})"
                                            for i in picked)).match
            else:
                found = _no_match
            self._subsets[picked] = found
        return found

    def match(self, path: str) -> Verdict | None:
        """The verdict of the first rule matching `path`, or None."""
        m = self._match(path)
        return None if m is None else self.verdict_of(m)

    @property
    def every_rule(self) -> tuple[int, ...]:
        return tuple(range(len(self.rules)))

    def below(self, prefix: str, rules: tuple[int, ...]) -> tuple[int, ...]:
        """Of `rules` (those that may match below the parent directory), the ones that may match
        something below the directory `prefix` ("/usr/share/"): their literal start (up to the first
        wildcard) and the directory agree as far as both go. The walk narrows this set as it
        descends, so deep directories test one or two rules, not the whole list."""
        lits = self._literals
        return tuple(i for i in rules if prefix.startswith(lits[i]) or lits[i].startswith(prefix))

    def file_matcher(self, prefix: str, rules: tuple[int, ...]) -> Callable[[str], re.Match | None]:
        """The match function of only those of `rules` (from below()) that can match a file directly in
        the directory `prefix` ("/usr/bin/"). The walk calls it per file and verdict_of() on a match:
        the same verdicts as verdict() (a test checks), but a sid guest's /usr files meet one of the
        default list's 27 rules instead of all of them."""
        lits = self._literals
        return self._compiled(tuple(i for i in rules if prefix.startswith(lits[i])
                                    or (lits[i].startswith(prefix) and "/" not in lits[i][len(prefix):])))

    def verdict_of(self, m: re.Match) -> Verdict:
        """The verdict of a file_matcher() match."""
        assert m.lastgroup is not None
        return self.rules[int(m.lastgroup[1:])].verdict

    def verdict(self, path: str, inside_excluded: bool) -> Verdict:
        """First match wins; unmatched paths inherit their directory's exclusion."""
        v = self.match(path)
        if v is None:
            return Verdict.EXCLUDE if inside_excluded else Verdict.INCLUDE
        return v

    def may_include_below(self, directory: str) -> bool:
        """Could any `+` rule match something under an excluded `directory`?"""
        below = directory.rstrip("/") + "/"
        return any(p.startswith(below) or below.startswith(p) for p in self._include_prefixes)


def _no_match(_path: str) -> None:
    return None


def load_rules(guest_root: Path, exclude_file: Path | None = None) -> list[Rule]:
    """Rules for one guest: a host-side override beside the guest, else --exclude-from, else default.

    The per-guest override is `<ROOT>.vunify-exclude` (host side, never inside the
    hostile guest) or util-vserver's `/etc/vservers/<name>/apps/vunify/exclude`.
    """
    candidates = [
        guest_root.with_name(guest_root.name + ".vunify-exclude"),
        Path("/etc/vservers", guest_root.name, "apps/vunify/exclude"),
    ]
    for path in [*candidates, exclude_file or DEFAULT_LIST]:
        if path.is_file():
            return parse_rules(path.read_text(), str(path))
    raise RecipeError(f"exclude list not found: {exclude_file}")
