"""Make a guest's state dir from its listing: metadata layer (directory or EROFS), upper, work."""

from __future__ import annotations

from pathlib import Path

from imagefactory.build.plan import BuildOptions
from imagefactory.core.progress import Progress
from unify.composefs import dump, erofs, metadir
from unify.composefs.guest import GuestLayers, GuestRecord
from unify.composefs.store import syncfs


def build_state(stage: GuestLayers, entries: list[dump.Entry], record: GuestRecord,
                opts: BuildOptions | None = None, progress: Progress | None = None) -> None:
    """Create stage.state with every layer and the record (flushed to disk before returning)."""
    stage.make_dirs(record.meta)
    listing = dump.render(entries)
    Path(stage.listing).write_bytes(listing)
    if record.meta == "erofs":
        erofs.mkcomposefs(listing, stage.meta_image, opts, progress)
    else:
        metadir.build(stage.meta_dir, entries)
    record.objects = len({e.digest for e in entries if e.is_object})
    stage.write(record)
    syncfs(stage.state)
