"""Make a guest's state dir from its listing: metadata layer (directory or EROFS), upper, work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from imagefactory.core.atomic import syncfs
from imagefactory.core.progress import Progress
from unify.composefs import dump, metadir
from unify.composefs.guest import GuestLayers, GuestRecord

if TYPE_CHECKING:
    from imagefactory.build.plan import BuildOptions


def _link(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
        return True
    except OSError:
        return False


def _keep(source: Path, template: Path) -> None:
    """Publish a file as the store's template (link to a temp name, rename: never half there)."""
    if template.exists():
        return
    tmp = template.with_name(f".{template.name}.{os.getpid()}")
    if _link(source, tmp):
        os.rename(tmp, template)


def build_state(stage: GuestLayers, entries: list[dump.Entry], record: GuestRecord,
                opts: BuildOptions | None = None, progress: Progress | None = None,
                template: Path | None = None) -> None:
    """Create stage.state with every layer and the record (flushed to disk before returning).

    template: the store's images/SHA256 prefix for a seeded image. Its .dump holds this very
    listing and its .cfs the EROFS image made from it; the guest's copies become hard links
    (read-only layers, so one inode for all guests of an image: no disk and one page cache),
    and the first guest of an image leaves its EROFS image there for the next."""
    stage.make_dirs(record.meta)
    if template is None or not _link(template.with_suffix(".dump"), stage.listing):
        Path(stage.listing).write_bytes(dump.render(entries))
    if record.meta == "erofs":
        if template is None or not _link(template.with_suffix(".cfs"), stage.meta_image):
            from unify.composefs import erofs  # imports the build pipeline: only when mkcomposefs runs

            erofs.mkcomposefs(stage.listing.read_bytes(), stage.meta_image, opts, progress)
            if template is not None:
                _keep(stage.meta_image, template.with_suffix(".cfs"))
    else:
        metadir.build(stage.meta_dir, entries)
    record.objects = len({e.digest for e in entries if e.is_object})
    stage.write(record)
    syncfs(stage.state)
