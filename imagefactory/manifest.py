"""The image manifest (schema in MANIFEST.md): what is in an image and where it came from."""

from __future__ import annotations

import json
from pathlib import Path

from imagefactory import __version__
from imagefactory.image import TreeStats
from imagefactory.plan import Plan

SCHEMA = 1


def build_manifest(plan: Plan, image_name: str, image_sha256: str, image_size: int,
                   stats: TreeStats, seconds: float) -> dict:
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
        "snapshot": {"date": plan.snapshot_date, "epoch": plan.snapshot_epoch, "mirror": plan.mirror},
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
    }


def dumps(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=False) + "\n"


def load(path: Path) -> dict:
    return json.loads(path.read_text())
