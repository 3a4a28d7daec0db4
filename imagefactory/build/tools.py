"""A tools root: tools newer than the host's release, run by chroot (mkosi's ToolsTree idea).

Tools such as mkcomposefs or incus-simplestreams exist only in Debian sid, and sid must never be
mixed into the host. So imagefactory builds a root from a shipped recipe (`tools-sid`, which
extends `debian-sid`) with its own verified pipeline, caches it, and runs a tool as
`chroot ROOT tool ...` in a private mount namespace where the host paths the tool needs are
bind-mounted at the same path. A tool found on the host is used directly instead.

On-disk layout (under the package cache):
    <cache>/tools/<recipe digest[:16]>/<recipe name>/rootfs     the root (complete once present)
    <cache>/tools/<recipe digest[:16]>/<recipe name>.manifest.json
    <cache>/tools/.lock                                          serialises concurrent builds
Crash ordering: the build pipeline stages the root under a hidden name and renames it into
place, then writes the manifest; a root counts as ready only when its manifest exists, so a
killed build is rebuilt, never used half done. The bind mounts live in a private mount
namespace (unshare -m) and vanish with the process: nothing to clean up after a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagefactory.build import pipeline
from imagefactory.build import recipe as recipes
from imagefactory.build.plan import BuildOptions
from imagefactory.core.errors import EnvironmentProblem
from imagefactory.core.manifest import ImageFiles
from imagefactory.core.progress import Progress

DEFAULT_RECIPE = "tools-sid"


@dataclass(frozen=True)
class ToolsRoot:
    """A ready tools root."""

    root: Path

    def run(self, argv: Sequence[str], binds: Sequence[Path] = (), cwd: Path | None = None,
            check: bool = True, capture: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run argv inside the root; each path in binds is visible at the same path (read-write)."""
        return subprocess.run(self.command(argv, binds, cwd), check=check, capture_output=capture, input=input)

    def command(self, argv: Sequence[str], binds: Sequence[Path] = (), cwd: Path | None = None) -> list[str]:
        """The host command line that runs argv in the root (for callers that stream or time it)."""
        root = shlex.quote(str(self.root))
        script = ["set -e", f"mount -t proc proc {root}/proc", f"mount --rbind /dev {root}/dev"]
        for path in dict.fromkeys(Path(os.path.realpath(b)) for b in binds):
            target = shlex.quote(f"{self.root}{path}")
            kind = "-d" if path.is_dir() else "-f"
            make = f"mkdir -p {target}" if path.is_dir() else f"mkdir -p $(dirname {target}) && touch {target}"
            script.append(f"[ {kind} {target} ] || {make}")
            script.append(f"mount --rbind {shlex.quote(str(path))} {target}")
        inner = shlex.join(argv)
        if cwd is not None:
            inner = f"cd {shlex.quote(str(cwd))} && {inner}"
        script.append(f"exec chroot {root} /bin/sh -c {shlex.quote(inner)}")
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", "\n".join(script)]


def _ready(out: Path, name: str) -> bool:
    return ImageFiles.named(out, name).manifest.is_file() and (out / name / "rootfs").is_dir()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure(opts: BuildOptions, progress: Progress, recipe: str = DEFAULT_RECIPE) -> ToolsRoot:
    """The tools root for recipe, built once (needs root and the archive) and reused after."""
    r = recipes.load(recipe)
    base = opts.cache_dir / "tools"
    out = base / r.digest[:16]
    if not _ready(out, r.name):
        with _locked(base):
            if not _ready(out, r.name):
                progress.stage(f"tools root: building {r.name} (once; cached in {out})")
                pipeline.build(r, out, opts, progress)
    return ToolsRoot(out / r.name / "rootfs")


def host_or_tools(tool: str, opts: BuildOptions, progress: Progress) -> tuple[list[str], ToolsRoot | None]:
    """(argv prefix, tools root or None): the host's tool when it has one, else the tools root's."""
    if shutil.which(tool):
        return [tool], None
    tools = ensure(opts, progress)
    if not any((tools.root / d / tool).exists() for d in ("usr/bin", "usr/sbin", "bin", "sbin")):
        raise EnvironmentProblem(f"{tool} is neither on the host nor in the tools root {tools.root}; "
                                 f"add its package to recipes/{DEFAULT_RECIPE}.toml")
    return [tool], tools
