"""Which cgroup controllers this host has, and on which hierarchy version.

A limit is only enforced when the engine writes it into the hierarchy that
actually carries its controller: LXC applies `lxc.cgroup.*` keys to cgroup v1
hierarchies and `lxc.cgroup2.*` keys to the unified (v2) one, and quietly
skips keys for a hierarchy that lacks the controller. So seed reads the
layout first and writes the keys that match it.

Sources, all read-only:
- /proc/self/mountinfo: every cgroup (v1) mount with its controllers in the
  super options (`rw,cpu,cpuacct`; `name=systemd` is a named hierarchy
  without controllers), and the cgroup2 mount;
- `cgroup.controllers` at the cgroup2 mount: the controllers v2 offers;
- /proc/cgroups: controllers the kernel has and whether they are enabled
  (`cgroup_disable=memory` shows as enabled 0).
Parsing is pure (text in, layout out); `detect()` reads the host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

V1, V2 = 1, 2
# The controllers guest limits need: memory (memory.max / limit_in_bytes) and
# cpu (cpu.max / cfs_quota_us); cpuacct is where v1 counts CPU time.
NEEDED = ("memory", "cpu")


@dataclass(frozen=True)
class Hierarchy:
    version: int
    mountpoint: str
    root: str  # the mount's root inside the hierarchy ("/" unless a sub-cgroup is mounted)
    controllers: frozenset[str]


@dataclass(frozen=True)
class Layout:
    hierarchies: tuple[Hierarchy, ...]
    disabled: frozenset[str] = frozenset()  # known to the kernel but switched off

    @classmethod
    def unified(cls, controllers: tuple[str, ...]) -> Layout:
        """A host with only the unified hierarchy at /sys/fs/cgroup."""
        return cls((Hierarchy(V2, "/sys/fs/cgroup", "/", frozenset(controllers)),))

    @classmethod
    def legacy(cls, controllers: tuple[str, ...]) -> Layout:
        """A host with one v1 hierarchy per controller under /sys/fs/cgroup."""
        return cls(tuple(Hierarchy(V1, f"/sys/fs/cgroup/{c}", "/", frozenset({c})) for c in controllers))

    @property
    def kind(self) -> str:
        """'v2' (unified only), 'v1' (legacy only), 'hybrid' (both mounted) or 'none'."""
        v1 = any(h.version == V1 and h.controllers for h in self.hierarchies)
        v2 = any(h.version == V2 for h in self.hierarchies)
        if v1 and v2:
            return "hybrid"
        return "v1" if v1 else "v2" if v2 else "none"

    def version_of(self, controller: str) -> int | None:
        """The hierarchy version carrying this controller here, or None."""
        if controller in self.disabled:
            return None
        for hierarchy in self.hierarchies:
            if controller in hierarchy.controllers:
                return hierarchy.version
        return None

    def hierarchy_of(self, controller: str) -> Hierarchy | None:
        for hierarchy in self.hierarchies:
            if controller in hierarchy.controllers and controller not in self.disabled:
                return hierarchy
        return None

    def describe(self) -> str:
        parts = []
        for controller in NEEDED + ("cpuacct",):
            version = self.version_of(controller)
            parts.append(f"{controller} on {'v' + str(version) if version else 'no hierarchy'}")
        return f"cgroup {self.kind}: " + ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "controllers": {
                c: self.version_of(c)
                for h in self.hierarchies for c in sorted(h.controllers)
            },
            "hierarchies": [
                {"version": h.version, "mountpoint": h.mountpoint, "controllers": sorted(h.controllers)}
                for h in self.hierarchies
            ],
        }


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[tuple[str, str, str, str]]:
    """(fstype, mountpoint, root, super options) of every cgroup/cgroup2 mount."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((tail[0], _unescape(fields[4]), _unescape(fields[3]), tail[2]))
    return mounts


def parse_proc_cgroups(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(enabled, disabled) controller names from /proc/cgroups."""
    enabled: set[str] = set()
    disabled: set[str] = set()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) >= 4:
            (enabled if fields[3] == "1" else disabled).add(fields[0])
    return frozenset(enabled), frozenset(disabled)


def parse_layout(mountinfo: str, proc_cgroups: str, v2_controllers: dict[str, str]) -> Layout:
    """The layout from mountinfo text, /proc/cgroups text and {cgroup2 mountpoint: cgroup.controllers text}.

    A controller mounted on several v1 hierarchies (bind mounts) counts once;
    a hierarchy mounted more than once is listed at its first mount point.
    """
    _, disabled = parse_proc_cgroups(proc_cgroups)
    hierarchies: list[Hierarchy] = []
    seen: set[frozenset[str]] = set()
    for fstype, mountpoint, root, options in parse_mountinfo(mountinfo):
        if fstype == "cgroup2":
            controllers = frozenset(v2_controllers.get(mountpoint, "").split())
            key = frozenset({"cgroup2"})
        else:
            controllers = frozenset(
                o for o in options.split(",") if o not in ("rw", "ro") and "=" not in o
                and o not in ("clone_children", "noprefix", "xattr", "cpuset_v2_mode", "nsdelegate")
            )
            key = controllers or frozenset(o for o in options.split(",") if o.startswith("name="))
        if key in seen:
            continue
        seen.add(key)
        hierarchies.append(Hierarchy(V2 if fstype == "cgroup2" else V1, mountpoint, root, controllers))
    # A controller bound to a v1 hierarchy is not available on v2 even if listed there.
    v1_bound = frozenset(c for h in hierarchies if h.version == V1 for c in h.controllers)
    hierarchies = [
        h if h.version == V1 else Hierarchy(h.version, h.mountpoint, h.root, h.controllers - v1_bound)
        for h in hierarchies
    ]
    return Layout(tuple(hierarchies), disabled)


def detect(proc: Path = Path("/proc")) -> Layout:
    """This host's layout (reads /proc/self/mountinfo, /proc/cgroups, cgroup.controllers)."""
    mountinfo = (proc / "self/mountinfo").read_text()
    try:
        proc_cgroups = (proc / "cgroups").read_text()
    except OSError:
        proc_cgroups = ""
    v2 = {}
    for fstype, mountpoint, _, _ in parse_mountinfo(mountinfo):
        if fstype == "cgroup2":
            try:
                v2[mountpoint] = (Path(mountpoint) / "cgroup.controllers").read_text()
            except OSError:
                v2[mountpoint] = ""
    return parse_layout(mountinfo, proc_cgroups, v2)


def cgroup_paths(text: str) -> dict[str, str]:
    """/proc/PID/cgroup text -> {controller or 'unified': path inside its hierarchy}."""
    paths = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        if not controllers:
            paths["unified"] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def process_cgroup(layout: Layout, pid: int, controller: str, proc: Path = Path("/proc")) -> Path | None:
    """The directory of the cgroup that holds pid for this controller, on the host."""
    hierarchy = layout.hierarchy_of(controller)
    if hierarchy is None:
        return None
    paths = cgroup_paths((proc / str(pid) / "cgroup").read_text())
    path = paths.get(controller if hierarchy.version == V1 else "unified")
    if path is None:
        return None
    # A mount of a sub-cgroup (root != "/") shows paths relative to the hierarchy's root.
    relative = path[len(hierarchy.root):] if path.startswith(hierarchy.root) else path
    return Path(hierarchy.mountpoint) / relative.lstrip("/")


def cpu_usage_ns(layout: Layout, pid: int, proc: Path = Path("/proc")) -> int | None:
    """CPU time used by pid's cgroup, in ns: cpuacct.usage on v1, cpu.stat usage_usec on v2."""
    if layout.version_of("cpuacct") == V1:
        directory = process_cgroup(layout, pid, "cpuacct", proc)
        return int((directory / "cpuacct.usage").read_text()) if directory else None
    directory = process_cgroup(layout, pid, "cpu", proc)
    if directory is None:
        return None
    for line in (directory / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) * 1000
    return None
