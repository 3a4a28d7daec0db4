"""Dependency resolution over a Packages index, the way apt does it for a fresh root.

Pure: input is the parsed index and the requested names, output the ordered
package set. Like apt with no Recommends: everything requested is marked
first, then Pre-Depends and Depends are followed; an alternative group is
satisfied by anything already chosen, else by its first installable
alternative (a real package with a matching version, else a provider, the
most important first). Versioned constraints are checked against real
versions and versioned Provides (debian-inspector does the comparing).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cache

from debian_inspector import deps
from debian_inspector.version import compare_strings

from imagefactory.build.debian.packages import Package
from imagefactory.core.errors import ResolveError

PRIORITY_RANK = {"required": 0, "important": 1, "standard": 2, "optional": 3, "extra": 4}
VARIANT_PRIORITIES = {
    "essential": (),
    "minbase": ("required",),
    "important": ("required", "important"),
    "standard": ("required", "important", "standard"),
}


@dataclass(frozen=True)
class Rel:
    """One alternative of a dependency: name, optional (op, version)."""

    name: str
    op: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.op} {self.version})" if self.op else self.name

    def allows(self, version: str | None) -> bool:
        """Does a package (or a Provides:) at `version` satisfy this relation? None: unversioned."""
        if self.op is None or self.version is None:
            return True
        return version is not None and version_satisfies(version, self.op, self.version)


@cache
def _split(v: str) -> tuple[int, str, str]:
    """epoch:upstream-revision as dpkg splits it (debian-inspector's Version
    object rejects valid versions such as '3.1~', so we split ourselves and use
    its dpkg-exact string comparison for the parts)."""
    epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    if not epoch.isdigit() or not upstream or not upstream[0].isdigit():
        raise ValueError(f"invalid version {v!r}")
    return int(epoch), upstream, revision


@cache
def compare_versions(a: str, b: str) -> int:
    """dpkg --compare-versions as -1/0/1."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return compare_strings(ua, ub) or compare_strings(ra, rb)


def version_satisfies(have: str, op: str, want: str) -> bool:
    try:
        c = compare_versions(have, want)
    except ValueError:
        raise ResolveError(f"malformed version in a relation: {have!r} {op} {want!r}") from None
    return {"<<": c < 0, "<=": c <= 0, "<": c <= 0, ">>": c > 0, ">=": c >= 0, ">": c >= 0, "=": c == 0}[op]


def _arch_ok(restrictions: tuple[str, ...], arch: str) -> bool:
    if not restrictions:
        return True
    if all(r.startswith("!") for r in restrictions):
        return f"!{arch}" not in restrictions
    return arch in restrictions


@cache
def parse_relations(text: str, arch: str) -> tuple[tuple[Rel, ...], ...]:
    """'a (>= 1) | b, c:any [amd64]' -> ((a>=1, b), (c,)); arch-restricted ones dropped."""
    if not text.strip():
        return ()
    try:
        tree = deps.parse_depends(text)
    except Exception:
        raise ResolveError(f"malformed relation field: {text!r}") from None
    groups = []
    for item in tree.relationships:
        alts = item.relationships if isinstance(item, deps.OrRelationships) else (item,)
        group = tuple(
            Rel(a.name.split(":", 1)[0], getattr(a, "operator", None), getattr(a, "version", None))
            for a in alts
            if _arch_ok(tuple(a.architectures), arch)
        )
        if group:
            groups.append(group)
    return tuple(groups)


@cache
def parse_provides(text: str) -> tuple[tuple[str, str | None], ...]:
    """'a (= 1), b:any' -> (('a', '1'), ('b', None)). Provides has no alternatives
    or ranges, so a split is exact and much faster than a full relation parse
    (it runs over every package of the archive)."""
    out = []
    for item in text.split(","):
        name, _, rest = item.strip().partition(" ")
        version = rest.strip(" ()").lstrip("=").strip() or None
        out.append((name.split(":", 1)[0], version))
    return tuple(out)


class Universe:
    """The installable packages of one architecture, indexed for lookups."""

    def __init__(self, packages: list[Package], arch: str) -> None:
        self.arch = arch
        self.candidates: dict[str, Package] = {}
        self.invalid: list[Package] = []  # versions dpkg would reject; never candidates
        for p in packages:
            if p.architecture not in (arch, "all"):
                continue
            cur = self.candidates.get(p.name)
            try:
                if cur is None:
                    _split(p.version)
                    self.candidates[p.name] = p
                elif p.version != cur.version and compare_versions(p.version, cur.version) > 0:
                    self.candidates[p.name] = p
            except ValueError:
                self.invalid.append(p)
        self.providers: dict[str, list[tuple[Package, str | None]]] = {}
        for p in self.candidates.values():
            if p.provides:
                for name, version in parse_provides(p.provides):
                    self.providers.setdefault(name, []).append((p, version))

    def matches(self, rel: Rel) -> list[Package]:
        """Packages that would satisfy rel: the real package, then providers."""
        out = []
        real = self.candidates.get(rel.name)
        if real and rel.allows(real.version):
            out.append(real)
        provs = [
            p for p, pv in self.providers.get(rel.name, [])
            if rel.allows(pv)
        ]
        provs.sort(key=lambda p: (PRIORITY_RANK.get(p.priority, 9), p.name))
        return out + [p for p in provs if p not in out]


def initial_set(universe: Universe, variant: str, extra: tuple[str, ...]) -> list[str]:
    """What a variant asks for, mmdebstrap's meanings: Essential:yes, then priorities, then apt."""
    names = sorted(n for n, p in universe.candidates.items() if p.essential)
    prios = VARIANT_PRIORITIES[variant]
    if prios:
        names += sorted(n for n, p in universe.candidates.items() if p.priority in prios and not p.essential)
        names.append("apt")
    return list(dict.fromkeys(names + list(extra)))


def _hits(universe: Universe, pkg: Package, other: Package) -> str | None:
    """The Conflicts/Breaks relation of pkg that other violates, or None. A package never conflicts
    with itself, nor through a virtual name it provides itself (apt's rule for 'Provides: x, Conflicts: x')."""
    if pkg.name == other.name:
        return None
    for field, text in (("Conflicts", pkg.conflicts), ("Breaks", pkg.breaks)):
        if not text:
            continue
        for group in parse_relations(text, universe.arch):
            for rel in group:
                if rel.name == other.name:
                    if rel.allows(other.version):
                        return f"{field}: {rel}"
                elif other.provides and rel.op is None:
                    if any(n == rel.name for n, _ in parse_provides(other.provides)):
                        return f"{field}: {rel} (provided by {other.name})"
    return None


def conflict(universe: Universe, a: Package, b: Package) -> str | None:
    """How a and b cannot be installed together ('a Breaks: b (<< 2)'), or None."""
    why = _hits(universe, a, b)
    if why:
        return f"{a.name} {a.version} {why}"
    why = _hits(universe, b, a)
    return f"{b.name} {b.version} {why}" if why else None


def resolve(universe: Universe, requested: list[str], where: str = "the archive") -> list[Package]:
    """Close `requested` under Pre-Depends and Depends, honouring Conflicts and Breaks;
    returns packages in selection order."""
    chosen: dict[str, Package] = {}
    why: dict[str, tuple[str, str]] = {}  # name -> (parent, relation) for error chains
    declaring: list[Package] = []  # chosen packages that declare Conflicts/Breaks (few)

    def clash(pkg: Package) -> str | None:
        """The first conflict between pkg and the chosen set."""
        if pkg.conflicts or pkg.breaks:
            for other in chosen.values():
                c = conflict(universe, pkg, other)
                if c:
                    return c
        for other in declaring:
            c = conflict(universe, other, pkg)
            if c:
                return c
        return None

    def choose(pkg: Package) -> None:
        chosen[pkg.name] = pkg
        if pkg.conflicts or pkg.breaks:
            declaring.append(pkg)

    def chain(name: str) -> str:
        links = [name]
        while name in why and len(links) < 20:
            name, _ = why[name]
            links.append(name)
        return " <- ".join(links)

    for name in requested:
        pkg = universe.candidates.get(name)
        if pkg is None:
            provs = universe.matches(Rel(name))
            if not provs:
                raise ResolveError(f"unknown package {name!r}: not in {where}")
            pkg = next((p for p in provs if p.name in chosen or not clash(p)), provs[0])
        if pkg.name in chosen:
            continue
        c = clash(pkg)
        if c:
            other = next(o for o in chosen.values() if conflict(universe, pkg, o))
            raise ResolveError(f"requested packages {other.name} and {pkg.name} conflict ({c}) in {where}")
        choose(pkg)

    def satisfied(rel: Rel) -> bool:
        real = chosen.get(rel.name)
        if real and rel.allows(real.version):
            return True
        return any(p.name in chosen and chosen[p.name] is p for p in universe.matches(rel) if p.name != rel.name)

    queue = deque(chosen.values())
    while queue:
        pkg = queue.popleft()
        for field in (pkg.pre_depends, pkg.depends):
            for group in parse_relations(field, universe.arch):
                if any(satisfied(rel) for rel in group):
                    continue
                cands = [m for rel in group for m in universe.matches(rel)]
                # like apt: the first alternative that can be installed next to what is chosen
                pick = next((m for m in cands if m.name not in chosen and not clash(m)), None)
                if pick is None:
                    alts = " | ".join(str(r) for r in group)
                    if not cands:
                        raise ResolveError(f"unsatisfiable dependency {alts} of {chain(pkg.name)} in {where}")
                    first = cands[0]
                    if first.name in chosen:  # a different version would be needed
                        raise ResolveError(
                            f"{chain(pkg.name)} needs {alts}, but {first.name} {chosen[first.name].version} "
                            "is already chosen"
                        )
                    blocker = next(o for o in chosen.values() if conflict(universe, first, o))
                    raise ResolveError(f"{chain(pkg.name)} needs {alts}, but {clash(first)} "
                                       f"({blocker.name} is there for {chain(blocker.name)})")
                choose(pick)
                why[pick.name] = (pkg.name, " | ".join(str(r) for r in group))
                queue.append(pick)
    return list(chosen.values())


def install_rounds(packages: list[Package], installed: list[Package], arch: str) -> list[list[Package]]:
    """Split packages into `dpkg --install` rounds. dpkg unpacks a package only
    when its Pre-Depends are already configured, and configures it only when
    its Depends are at least unpacked, so a package's round is the least
    fixed point of: after the rounds of its Pre-Depends, no earlier than the
    rounds of its Depends (for an alternative, the earliest candidate in the
    plan counts; a group nothing in the plan satisfies is left to dpkg)."""
    providers: dict[str, set[str]] = {}
    for p in [*installed, *packages]:
        providers.setdefault(p.name, set()).add(p.name)
        for name, _ in parse_provides(p.provides) if p.provides else ():
            providers.setdefault(name, set()).add(p.name)
    level = {p.name: -1 for p in installed} | {p.name: 0 for p in packages}

    def earliest(group: tuple[Rel, ...]) -> int | None:
        cands = set().union(*(providers.get(r.name, set()) for r in group))
        return min((level[c] for c in cands), default=None)

    limit = len(packages)  # a Pre-Depends cycle cannot push a package further than this
    for _ in range(limit + 1):
        changed = False
        for p in packages:
            want = 0
            for group in parse_relations(p.pre_depends, arch):
                e = earliest(group)
                if e is not None:
                    want = max(want, e + 1)
            for group in parse_relations(p.depends, arch):
                e = earliest(group)
                if e is not None:
                    want = max(want, e)
            want = min(want, limit)
            if want != level[p.name]:
                level[p.name], changed = want, True
        if not changed:
            break
    by_round: dict[int, list[Package]] = {}
    for p in packages:
        by_round.setdefault(level[p.name], []).append(p)
    return [sorted(by_round[k], key=lambda p: p.name) for k in sorted(by_round)]
