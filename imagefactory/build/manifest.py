"""Build the image manifest (schema in MANIFEST.md) from a plan; naming and reading live in core.manifest."""

from __future__ import annotations

from imagefactory import __version__
from imagefactory.build.image import TreeStats
from imagefactory.build.plan import Plan
from imagefactory.core.manifest import SCHEMA


def build_manifest(plan: Plan, image_name: str, image_sha256: str, image_size: int,
                   stats: TreeStats, seconds: float, inputs: dict | None = None) -> dict:
    r = plan.recipe
    return {
        "schema": SCHEMA,
        "name": r.name,
        "recipe": {"name": r.name, "sha256": r.digest, "source": r.source},
        "family": r.family,
        "distro": r.family,
        "suite": r.suite,
        "architecture": r.architecture,
        "variant": r.variant,
        "snapshot": {
            "date": plan.snapshot_date, "epoch": plan.snapshot_epoch, "mirror": plan.mirror,
            # every verified source: suite (or repository), mirror, its Release/repomd date and digest
            "sources": [{"suite": s.suite, "mirror": s.mirror, "date": s.date, "epoch": s.epoch, "sha256": s.digest}
                        for s in plan.sources],
        },
        "source_date_epoch": plan.source_date_epoch,
        "packages": [
            {"name": a.name, "version": a.version, "architecture": a.architecture, "sha256": a.sha256,
             "size": a.size}
            for a in sorted(plan.packages, key=lambda a: a.name)
        ],
        "files": stats.files,
        "apparent_size": stats.apparent_size,
        "disk_usage": stats.disk_usage,
        "image": {"file": image_name, "sha256": image_sha256, "size": image_size},
        "build_seconds": round(seconds, 2),
        "imagefactory": __version__,
        "inputs": inputs,
    }
