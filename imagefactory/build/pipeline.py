"""The build pipeline: recipe -> plan (verify + resolve) -> fetch -> install
-> configure -> image -> manifest, each stage explicit.

Outputs are staged under hidden names in the output directory and renamed
into place only when everything succeeded; the manifest is renamed last, so
its presence means the build is complete.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from imagefactory.build import chroot, fetch, formats, manifest
from imagefactory.build.image import write_image
from imagefactory.build.plan import Backend, BuildOptions, Plan
from imagefactory.build.recipe import Recipe
from imagefactory.core import atomic
from imagefactory.core.errors import EnvironmentProblem
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


def build(recipe: Recipe, out_dir: Path, opts: BuildOptions, progress: Progress,
          epoch: int | None = None) -> BuildResult:
    """Build recipe into out_dir/<name>/rootfs, <name>.tar.zst, <name>.manifest.json."""
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
    try:
        fetch.clear_partial(opts.cache_dir)
        backend, the_plan = plan(recipe, opts, progress)
        files = fetch.download_all(the_plan.packages, opts.cache_dir, opts.jobs, progress)
        _discard(stage_dir)
        rootfs = stage_dir / "rootfs"
        rootfs.mkdir(parents=True)
        os.chmod(rootfs, 0o755)
        backend.install(the_plan, files, rootfs, progress)
        backend.configure(the_plan, rootfs, progress)
        progress.stage("image: writing reproducible tar.zst")
        when = epoch if epoch is not None else int(os.environ.get("SOURCE_DATE_EPOCH", the_plan.snapshot_epoch))
        sha, size, stats = write_image(rootfs, image_stage, when, level=opts.zstd_level)
        doc = manifest.build_manifest(the_plan, image_final.name, sha, size, stats, time.monotonic() - started)
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
