"""Dependency closure over rpm-md packages, the way dnf would pick them.

Pure: a list of Package records in, the package set out. Handles package
names, virtual and versioned Provides, file provides (paths primary.xml
lists, like /bin/sh), rich dependencies ((a or b), and, if/else, unless,
with, without), Obsoletes (an obsoleted package is replaced by its
successor) and Conflicts. A failure names the chain of requirements that led
to it, from the recipe down to the missing capability.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cmp_to_key

from imagefactory.build.rpm.primary import Dep, Package
from imagefactory.build.rpm.rpmvercmp import EQUAL, EVR, OPERATORS, evrcmp, overlap
from imagefactory.core.errors import ResolveError

RICH_OPS = ("and", "or", "if", "else", "unless", "with", "without")


# --- rich dependencies -------------------------------------------------------

@dataclass(frozen=True)
class Rich:
    """An operator node: op in RICH_OPS (except else), args; `orelse` for if/unless ... else."""

    op: str
    args: tuple[Rich | Dep, ...]
    orelse: Rich | Dep | None = None


def _tokens(text: str) -> list[str]:
    """Split a rich dependency; names may contain balanced parens (libc.so.6()(64bit))."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()":
            out.append(c)
            i += 1
        else:
            j, depth = i, 0
            while j < len(text) and not text[j].isspace():
                if text[j] == "(":
                    depth += 1
                elif text[j] == ")":
                    if depth == 0:
                        break
                    depth -= 1
                j += 1
            out.append(text[i:j])
            i = j
    return out


def parse_rich(text: str) -> Rich | Dep:
    """Parse `(a or (b >= 1 and c))` into a tree; raises ValueError when malformed."""
    toks = _tokens(text)
    pos = 0

    def term() -> Rich | Dep:
        nonlocal pos
        if pos >= len(toks):
            raise ValueError("unexpected end")
        if toks[pos] == "(":
            pos += 1
            node = expr()
            if pos >= len(toks) or toks[pos] != ")":
                raise ValueError("missing ')'")
            pos += 1
            return node
        name = toks[pos]
        if name == ")" or name in RICH_OPS:
            raise ValueError(f"expected a name, got {name!r}")
        pos += 1
        if pos + 1 < len(toks) and toks[pos] in OPERATORS:
            flags, evr = OPERATORS[toks[pos]], EVR.parse(toks[pos + 1])
            pos += 2
            return Dep(name, flags, evr)
        return Dep(name)

    def expr() -> Rich | Dep:
        nonlocal pos
        first = term()
        if pos >= len(toks) or toks[pos] == ")":
            return first
        op = toks[pos]
        if op not in RICH_OPS or op == "else":
            raise ValueError(f"unknown operator {op!r}")
        args = [first]
        while pos < len(toks) and toks[pos] == op:
            pos += 1
            args.append(term())
        orelse = None
        if op in ("if", "unless") and pos < len(toks) and toks[pos] == "else":
            pos += 1
            orelse = term()
        return Rich(op, tuple(args), orelse)

    node = term()
    if pos != len(toks):
        raise ValueError("trailing text")
    return node


# --- the package universe -----------------------------------------------------

class Universe:
    """Installable packages indexed by name, capability and file path."""

    def __init__(self, packages: Iterable[Package]) -> None:
        best: dict[tuple[str, str], Package] = {}
        for p in packages:  # newest EVR per name.arch, as dnf's best=True
            old = best.get((p.name, p.arch))
            if old is None or evrcmp(p.evr, old.evr) > 0:
                best[(p.name, p.arch)] = p
        self.obsoleted_by: dict[str, Package] = {}
        names: dict[str, list[Package]] = {}
        for p in best.values():
            names.setdefault(p.name, []).append(p)
        for p in best.values():
            for o in p.obsoletes:
                if o.name != p.name and any(overlap(EQUAL, q.evr, o.flags, o.evr) for q in names.get(o.name, ())):
                    self.obsoleted_by.setdefault(o.name, p)
        self.by_name: dict[str, list[Package]] = {}
        self.provides: dict[str, list[tuple[Package, Dep]]] = {}
        self.files: dict[str, list[Package]] = {}
        for p in best.values():
            if p.name in self.obsoleted_by:
                continue
            self.by_name.setdefault(p.name, []).append(p)
            for d in p.provides:
                self.provides.setdefault(d.name, []).append((p, d))
            for f in p.files:
                self.files.setdefault(f, []).append(p)
        def newer(a: Package, b: Package) -> int:
            return evrcmp(b.evr, a.evr) or (a.arch == "noarch") - (b.arch == "noarch")

        for group in self.by_name.values():  # newest first; x86_64 before noarch at equal EVR
            group.sort(key=cmp_to_key(newer))

    def what_provides(self, dep: Dep) -> list[Package]:
        """Packages satisfying a simple (non-rich) dependency."""
        found = [p for p, d in self.provides.get(dep.name, ()) if overlap(d.flags, d.evr, dep.flags, dep.evr)]
        if dep.name.startswith("/"):
            found += [p for p in self.files.get(dep.name, ()) if p not in found]
        return found


# --- resolution ---------------------------------------------------------------

class _Solver:
    def __init__(self, universe: Universe, requested: list[str]) -> None:
        self.u = universe
        self.requested = set(requested)
        self.chosen: dict[str, Package] = {}
        self.why: dict[str, tuple[str | None, str]] = {}  # name -> (parent name, requirement)
        self.queue: deque[Package] = deque()
        self.conditionals: list[tuple[Rich, Package, str]] = []  # if/unless, re-checked to a fixpoint

    def chain(self, name: str) -> str:
        """How a chosen package came in: "recipe asks for 'a' -> a-1-1.x86_64 requires 'b' -> ..."."""
        links = []
        node: str | None = name
        while node is not None:
            parent, req = self.why[node]
            links.append((req, self.chosen[node].nevra))
            node = parent
        links.reverse()
        return f"recipe asks for {links[0][0]!r} -> {links[0][1]}" + "".join(
            f" requires {req!r} -> {nevra}" for req, nevra in links[1:])

    def fail(self, requirement: str, parent: Package) -> None:
        raise ResolveError(
            f"cannot resolve: {self.chain(parent.name)} requires {requirement!r}, which nothing provides")

    def add(self, pkg: Package, parent: Package | None, req: str) -> None:
        if pkg.name in self.chosen:
            return
        self.chosen[pkg.name] = pkg
        self.why[pkg.name] = (parent.name if parent else None, req)
        self.queue.append(pkg)

    def satisfied(self, node: Rich | Dep) -> bool:
        if isinstance(node, Dep):
            return any(self.chosen.get(p.name) is p for p in self.u.what_provides(node))
        if node.op == "and":
            return all(self.satisfied(a) for a in node.args)
        if node.op == "or":
            return any(self.satisfied(a) for a in node.args)
        if node.op in ("if", "unless"):
            cond = self.satisfied(node.args[1])
            if cond == (node.op == "if"):
                return self.satisfied(node.args[0])
            return node.orelse is None or self.satisfied(node.orelse)
        return bool(self.candidates(node, installed_only=True))

    def candidates(self, node: Rich | Dep, installed_only: bool = False) -> list[Package]:
        """Packages that could satisfy a simple dep or a with/without node, best first."""
        if isinstance(node, Dep):
            found = self.u.what_provides(node)
        else:  # with / without: one package must match all / the first but not the rest
            first = node.args[0]
            rest = [r for r in node.args[1:] if isinstance(r, Dep)]
            if not isinstance(first, Dep) or len(rest) != len(node.args) - 1:
                return []
            found = [p for p in self.u.what_provides(first)
                     if all((p in self.u.what_provides(r)) == (node.op == "with") for r in rest)]
        if installed_only:
            return [p for p in found if self.chosen.get(p.name) is p]
        found = [p for p in found if p.name not in self.chosen or self.chosen[p.name] is p]
        dep_name = node.name if isinstance(node, Dep) else ""
        return sorted(found, key=lambda p: (p.name not in self.requested, p.name != dep_name,
                                            len(p.name), p.name, p.arch == "noarch"))

    def possible(self, node: Rich | Dep) -> bool:
        """Could this alternative be installed (cheap check, used to pick an `or` branch)?"""
        if isinstance(node, Rich) and node.op in ("and", "or"):
            test = all if node.op == "and" else any
            return test(self.possible(a) for a in node.args)
        if isinstance(node, Rich) and node.op in ("if", "unless"):
            return True
        return bool(self.candidates(node))

    def require(self, node: Rich | Dep, parent: Package, text: str) -> None:
        if isinstance(node, Rich) and node.op in ("if", "unless"):
            if (node, parent, text) not in self.conditionals:  # decided once the set is complete
                self.conditionals.append((node, parent, text))
        elif self.satisfied(node):
            return
        elif isinstance(node, Rich) and node.op == "and":
            for a in node.args:
                self.require(a, parent, text)
        elif isinstance(node, Rich) and node.op == "or":
            errors = []
            for a in node.args:  # the first alternative whose whole closure resolves
                if not self.possible(a):
                    continue
                saved = (dict(self.chosen), dict(self.why), deque(self.queue), list(self.conditionals))
                try:
                    self.require(a, parent, text)
                    self.drain()
                    return
                except ResolveError as exc:
                    errors.append(exc)
                    self.chosen, self.why, self.queue, self.conditionals = saved
            if errors:
                raise errors[0]
            self.fail(text, parent)
        else:
            found = self.candidates(node)
            if not found:
                self.fail(str(node) if isinstance(node, Dep) else text, parent)
            self.add(found[0], parent, text)

    def drain(self) -> None:
        """Process the requirements of every package queued so far."""
        while self.queue:
            pkg = self.queue.popleft()
            for dep in pkg.requires:
                if dep.name.startswith("rpmlib("):  # features of rpm itself
                    continue
                try:
                    node = parse_rich(dep.name) if dep.name.startswith("(") else dep
                except ValueError as exc:
                    raise ResolveError(f"{pkg.nevra}: malformed rich dependency {dep.name!r} ({exc})") from None
                self.require(node, pkg, str(dep))

    def run(self, requested: list[str]) -> list[Package]:
        for name in requested:
            self.add(self.lookup(name), None, name)
        while True:
            self.drain()
            for node, parent, text in list(self.conditionals):
                cond = self.satisfied(node.args[1])
                branch = node.args[0] if cond == (node.op == "if") else node.orelse
                if branch is not None:
                    self.require(branch, parent, text)
            if not self.queue:
                break
        self.check_conflicts()
        return sorted(self.chosen.values(), key=lambda p: p.name)

    def lookup(self, name: str) -> Package:
        """A requested name: a package, the successor of an obsoleted one, or a provider."""
        if name in self.u.by_name:
            return self.u.by_name[name][0]
        if name in self.u.obsoleted_by:
            return self.u.obsoleted_by[name]
        found = self.candidates(Dep(name))
        if found:
            return found[0]
        raise ResolveError(f"unknown package {name!r}: no package of that name and nothing provides it")

    def check_conflicts(self) -> None:
        for pkg in self.chosen.values():
            for c in pkg.conflicts:
                for other in self.u.what_provides(c):
                    if other is not pkg and self.chosen.get(other.name) is other:
                        raise ResolveError(
                            f"{pkg.nevra} conflicts with {other.nevra} ({c}); "
                            f"{pkg.name} required by {self.chain(pkg.name)}, {other.name} by {self.chain(other.name)}"
                        )


def resolve(universe: Universe, requested: list[str]) -> list[Package]:
    """The closure of the requested names under Requires, sorted by name."""
    return _Solver(universe, requested).run(list(dict.fromkeys(requested)))
