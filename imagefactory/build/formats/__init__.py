"""Output formats beyond the rootfs + tar.zst: one module per format, registered by name.

`write_all` is the one pipeline hook: after the rootfs and the tar.zst exist it writes the
formats a recipe (`formats = [...]`) or the command line (`--format`, repeatable) asks for,
each file beside the image, and returns their manifest records (file, sha256, size).

Every writer is reproducible: times come from the snapshot epoch (never "now"), entries are
sorted, owners numeric, compressors run with fixed settings. Two builds from the same
snapshot give the same bytes.
"""

from __future__ import annotations

import datetime as _dt
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imagefactory.core.errors import RecipeError
from imagefactory.core.hashing import sha256_file
from imagefactory.core.progress import Progress

if TYPE_CHECKING:  # plan imports recipe, which imports this package for the format names
    from imagefactory.build.plan import BuildOptions
    from imagefactory.build.recipe import Recipe

# name -> "module:function"; imported only when the format is asked for.
FORMATS: dict[str, str] = {
    "squashfs": "imagefactory.build.formats.squashfs:write",
    "incus": "imagefactory.build.formats.incus:write_split",
    "incus-unified": "imagefactory.build.formats.incus:write_unified",
    "lxc": "imagefactory.build.formats.lxc:write",
    "oci": "imagefactory.build.formats.oci:write",
}
DEFAULT: tuple[str, ...] = ()  # the rootfs and the tar.zst are always written

# dpkg/rpm architecture -> (kernel name used by Incus/LXC, OCI/Go name)
ARCHES = {
    "amd64": ("x86_64", "amd64"), "x86_64": ("x86_64", "amd64"),
    "arm64": ("aarch64", "arm64"), "aarch64": ("aarch64", "arm64"),
    "i386": ("i686", "386"), "armhf": ("armv7l", "arm"), "ppc64el": ("ppc64le", "ppc64le"),
    "ppc64le": ("ppc64le", "ppc64le"), "s390x": ("s390x", "s390x"), "riscv64": ("riscv64", "riscv64"),
}


def check_names(names: list[str] | tuple[str, ...], where: str) -> tuple[str, ...]:
    """The names in order without repeats; an unknown name is a recipe error."""
    for name in names:
        if name not in FORMATS:
            raise RecipeError(f"{where}: unknown format {name!r} (known: {', '.join(sorted(FORMATS))})")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class OciConfig:
    """The image config an OCI runtime reads (recipe table `[oci]`)."""

    cmd: tuple[str, ...] = ("/bin/sh",)
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    working_dir: str = "/"
    user: str = ""
    tag: str = "latest"
    labels: tuple[tuple[str, str], ...] = ()


@dataclass
class Target:
    """What a writer needs: the tree, where to write, and the image's identity."""

    rootfs: Path
    out_dir: Path
    name: str
    epoch: int
    distro: str
    suite: str
    architecture: str
    variant: str
    description: str = ""
    oci: OciConfig = field(default_factory=OciConfig)
    opts: BuildOptions | None = None  # for the tools root (cache dir) when the host lacks a tool
    progress: Progress = field(default_factory=lambda: Progress(quiet=True))
    done: dict[str, list[dict]] = field(default_factory=dict)  # format -> records already written

    @property
    def serial(self) -> str:
        """The version the repository will give this build (snapshot time, UTC)."""
        return _dt.datetime.fromtimestamp(self.epoch, _dt.UTC).strftime("%Y%m%d_%H%M%S")

    @property
    def kernel_arch(self) -> str:
        return ARCHES.get(self.architecture, (self.architecture, self.architecture))[0]

    @property
    def oci_arch(self) -> str:
        return ARCHES.get(self.architecture, (self.architecture, self.architecture))[1]

    @property
    def image_variant(self) -> str:
        """The variant LXC/Incus clients select by: `default` for <distro>-<suite>, else the name's rest."""
        return image_variant(self.name, self.distro, self.suite)

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.name}{suffix}"


def image_variant(name: str, distro: str, suite: str) -> str:
    base = f"{distro}-{suite}"
    if name == base:
        return "default"
    return name[len(base) + 1:] if name.startswith(base + "-") else name


def record(target: Target, fmt: str, role: str, path: Path, **extra: object) -> dict:
    """A manifest entry for one written file (path relative to the output directory)."""
    digest, size = sha256_file(path)
    return {"format": fmt, "role": role, "file": str(path.relative_to(target.out_dir)), "sha256": digest,
            "size": size, **extra}


Writer = Callable[[Target], list[dict]]


def writer(name: str) -> Writer:
    module, attr = FORMATS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def ensure(target: Target, name: str) -> list[dict]:
    """Write format `name` once per build (incus reuses the squashfs) and return its records."""
    if name not in target.done:
        target.progress.stage(f"format {name}: writing")
        target.done[name] = writer(name)(target)
    return target.done[name]


def write_all(target: Target, names: tuple[str, ...]) -> list[dict]:
    """Write each chosen format; the records of all of them, in the order asked, each file once."""
    records: list[dict] = []
    seen: set[str] = set()
    for name in check_names(names, "formats"):
        for rec in ensure(target, name):
            if rec["file"] not in seen:
                seen.add(rec["file"])
                records.append(rec)
    return records


def write_for(recipe: Recipe, rootfs: Path, out_dir: Path, epoch: int, opts: BuildOptions,
              progress: Progress) -> list[dict]:
    """The pipeline hook: the recipe's formats plus --format ones, written beside the image."""
    names = tuple(dict.fromkeys(recipe.formats + opts.formats))
    target = Target(rootfs=rootfs, out_dir=out_dir, name=recipe.name, epoch=epoch, distro=recipe.family,
                    suite=recipe.suite, architecture=recipe.architecture, variant=recipe.variant,
                    description=recipe.description, oci=recipe.oci, opts=opts, progress=progress)
    return write_all(target, names)
