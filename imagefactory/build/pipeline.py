"""The build pipeline: recipe -> plan (verify + resolve) -> fetch -> install
-> configure -> image -> manifest, each stage explicit.

Outputs are staged under hidden names in the output directory and renamed
into place only when everything succeeded; the manifest is renamed last, so
its presence means the build is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from imagefactory import __version__
from imagefactory.build import buildlog, chroot, emulation, fetch, formats, manifest, trees
from imagefactory.build.image import write_image
from imagefactory.build.plan import Backend, BuildOptions, Plan
from imagefactory.build.recipe import Recipe
from imagefactory.core import atomic
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError
from imagefactory.core.manifest import ImageFiles, dumps
from imagefactory.core.progress import Progress

BACKENDS = {
    "debian": "imagefactory.build.debian.backend:DebianBackend",
    "ubuntu": "imagefactory.build.debian.backend:DebianBackend",
    "fedora": "imagefactory.build.rpm.backend:RpmBackend",
}


@dataclass
class BuildResult:
    rootfs: Path
    image: Path
    manifest_path: Path
    manifest: dict
    up_to_date: bool = False


def backend_for(recipe: Recipe) -> Backend:
    module, attr = BACKENDS[recipe.family].split(":")
    return getattr(importlib.import_module(module), attr)()


def plan(recipe: Recipe, opts: BuildOptions, progress: Progress) -> tuple[Backend, Plan]:
    backend = backend_for(recipe)
    return backend, backend.plan(recipe, opts, progress)


def _sigterm_as_interrupt(signum, frame):  # so `finally` blocks unmount and clean up
    raise KeyboardInterrupt


def _discard(stage: Path) -> None:
    """Remove a staged tree, but never across a mount point left behind."""
    if not stage.exists():
        return
    if chroot.mounts_below(stage):
        raise EnvironmentProblem(f"mounts remain below {stage}; not removing it")
    atomic.remove_tree(stage)


def build_inputs(p: Plan, opts: BuildOptions, epoch: int | None) -> dict:
    """What the outputs of a build depend on: if a finished build in the output directory has the same,
    it is up to date (the packages by name, version and sha256; not the Release dates)."""
    listing = "\n".join(sorted(f"{a.name} {a.version} {a.architecture} {a.sha256}" for a in p.packages))
    return {
        "recipe": p.recipe.digest,
        "architecture": p.recipe.architecture,
        "sources": [[s.mirror, s.suite] for s in p.sources] or [[p.mirror, p.recipe.suite]],
        "packages": hashlib.sha256(listing.encode()).hexdigest(),
        "zstd_level": opts.zstd_level,
        "formats": sorted(opts.formats),
        "source_date_epoch": epoch,
        "imagefactory": __version__,
    }


def _up_to_date(out_dir: Path, name: str, want: dict) -> str | None:
    """None if out_dir holds a complete build with these inputs, else why not."""
    files = ImageFiles.named(out_dir, name)
    try:
        doc = json.loads(files.manifest.read_text())
    except FileNotFoundError:
        return "no earlier build in the output directory"
    except (OSError, ValueError):
        return "the earlier manifest is unreadable"
    have = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(have, dict):
        return "the earlier build recorded no inputs"
    changed = [k for k in want if have.get(k) != want[k]]
    if changed:
        return "changed since the earlier build: " + ", ".join(changed)
    try:
        if files.image.stat().st_size != doc["image"]["size"] or not (out_dir / name / "rootfs").is_dir():
            return "the earlier image or root is missing or altered"
    except (OSError, KeyError, TypeError):
        return "the earlier image or root is missing"
    return None


class _Explain:
    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, stage: str, text: str) -> None:
        if self.on:
            print(f"explain: {stage}: {text}", file=sys.stderr, flush=True)
        buildlog.note(f"{stage}: {text}")


def _install(backend: Backend, the_plan: Plan, files: dict[str, Path], rootfs: Path, opts: BuildOptions,
             progress: Progress, explain: _Explain) -> None:
    """The install stage: from a cached tree with the same id, from a cached base tree plus the extra
    packages, or from nothing; the result is cached under its id."""
    cache = trees.TreeCache(opts.cache_dir)
    inp = trees.inputs(the_plan, the_plan.packages)
    tid = trees.tree_id(inp)
    if opts.force:
        explain("install", f"not reused: --force (tree {tid[:12]} is rebuilt)")
    elif cache.lookup(tid) is not None:
        progress.stage(f"install: copying cached tree {tid[:12]}")
        cache.restore(tid, rootfs)
        explain("install", f"reused tree {tid[:12]}: same index hashes, package set and install inputs")
        return
    else:
        base = the_plan.base_packages
        install_more = getattr(backend, "install_more", None)
        if base is not None and len(base) < len(the_plan.packages) and install_more is not None:
            binp = trees.inputs(the_plan, base)
            bid = trees.tree_id(binp)
            if cache.lookup(bid) is not None:
                extra = len(the_plan.packages) - len(base)
                progress.stage(f"install: copying cached base tree {bid[:12]}, then {extra} more packages")
                cache.restore(bid, rootfs)
                explain("install", f"started from base tree {bid[:12]} (the set without the recipe's packages); "
                        f"installing {extra} more; then cached as {tid[:12]}")
                install_more(the_plan, files, rootfs, {a.name for a in base}, progress)
                cache.store(tid, inp, rootfs)
                return
            explain("install", f"base tree {bid[:12]} (without the recipe's packages) is not cached")
        near = cache.nearest(inp)
        why = "nothing cached" if near is None else f"nearest tree {near[0][:12]} differs: " + \
            trees.differences(near[1], inp)
        explain("install", f"not reused ({why}); installing from scratch, then cached as {tid[:12]}")
    rootfs.mkdir()
    os.chmod(rootfs, 0o755)
    backend.install(the_plan, files, rootfs, progress)
    cache.store(tid, inp, rootfs)


def build(recipe: Recipe, out_dir: Path, opts: BuildOptions, progress: Progress,
          epoch: int | None = None) -> BuildResult:
    """Build recipe into out_dir/<name>/rootfs, <name>.tar.zst, <name>.manifest.json (and <name>.build.log);
    if out_dir already holds a build with the same inputs, only the metadata is verified."""
    if os.geteuid() != 0:
        raise EnvironmentProblem("building a guest needs root (chroot, mounts, device nodes)")
    started = time.monotonic()
    old_handler = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]  # removed again if the build fails
    out_dir.mkdir(parents=True, exist_ok=True)
    name = recipe.name
    final_dir = out_dir / name
    stage_dir = atomic.staging_name(final_dir)
    image_final, manifest_final = ImageFiles.named(out_dir, name).image, ImageFiles.named(out_dir, name).manifest
    image_stage = atomic.staging_name(image_final)
    log_path = out_dir / f"{name}.build.log"
    explain = _Explain(opts.explain)
    if epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
        epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        fetch.clear_partial(opts.cache_dir)
        backend, the_plan = plan(recipe, opts, progress)
        want = build_inputs(the_plan, opts, epoch)
        why = "--force" if opts.force else _up_to_date(out_dir, name, want)
        if why is None:
            explain("build", "up to date: same recipe, sources and package set (names, versions, sha256)")
            progress.stage(f"up to date: {out_dir / name} ({len(the_plan.packages)} packages); --force rebuilds")
            doc = json.loads(manifest_final.read_text())
            return BuildResult(final_dir / "rootfs", image_final, manifest_final, doc, up_to_date=True)
        explain("build", f"rebuilding: {why}")
        handler = emulation.ensure(recipe.architecture)
        if handler:
            progress.stage(f"emulation: {recipe.architecture} binaries run under qemu-user-static ({handler})")
        files = fetch.download_all(the_plan.packages, opts.cache_dir, opts.jobs, progress)
        # Timestamps follow the package set, not the Release date: same packages, same bytes.
        the_plan.source_date_epoch = epoch if epoch is not None else backend.package_epoch(the_plan, files)
        _discard(stage_dir)
        stage_dir.mkdir(parents=True)
        rootfs = stage_dir / "rootfs"
        try:
            with buildlog.logging_to(log_path):
                buildlog.note(f"imagefactory {__version__}: building {name} ({recipe.source})")
                _install(backend, the_plan, files, rootfs, opts, progress, explain)
                explain("configure", "always run: identity, apt sources, customize steps, cleanup")
                backend.configure(the_plan, rootfs, progress)
        except ImageFactoryError as exc:
            if str(log_path) not in str(exc):
                exc.args = (f"{exc} (full output in {log_path})",)
            raise
        explain("image", f"always written: tar.zst of the configured root, mtimes clamped to "
                f"{the_plan.source_date_epoch} (the newest package's build time)" if epoch is None else
                f"always written: tar.zst of the configured root, mtimes clamped to SOURCE_DATE_EPOCH {epoch}")
        progress.stage("image: writing reproducible tar.zst")
        when = the_plan.source_date_epoch
        sha, size, stats = write_image(rootfs, image_stage, when, level=opts.zstd_level)
        doc = manifest.build_manifest(the_plan, image_final.name, sha, size, stats, time.monotonic() - started,
                                      want)
        doc["artifacts"] = formats.write_for(recipe, rootfs, out_dir, when, opts, progress)
        # Commit: rootfs, then image, then the manifest that says both are complete.
        manifest_final.unlink(missing_ok=True)
        if final_dir.exists():
            old = out_dir / f".{name}.old-{os.getpid()}"
            os.rename(final_dir, old)
            os.rename(stage_dir, final_dir)
            _discard(old)
        else:
            os.rename(stage_dir, final_dir)
        os.replace(image_stage, image_final)
        atomic.write_text(manifest_final, dumps(doc))
        progress.stage(
            f"done: {len(the_plan.packages)} packages, {stats.files} files, "
            f"{stats.apparent_size / 1e6:.1f} MB, image {size / 1e6:.1f} MB sha256 {sha[:16]}…"
        )
        return BuildResult(final_dir / "rootfs", image_final, manifest_final, doc)
    except BaseException:
        image_stage.unlink(missing_ok=True)
        _discard(stage_dir)
        for directory in created:  # deepest first; only while empty (nothing of anyone else's)
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    finally:
        signal.signal(signal.SIGTERM, old_handler)
