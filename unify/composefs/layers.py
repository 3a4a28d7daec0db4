"""Make a guest's state dir from its listing: metadata layer (directory or EROFS), upper, work."""

from __future__ import annotations

import os
from pathlib import Path

from imagefactory.build.plan import BuildOptions
from imagefactory.core.progress import Progress
from unify.composefs import dump, erofs, metadir
from unify.composefs.guest import GuestLayers, GuestRecord
from unify.composefs.store import syncfs


def build_state(stage: GuestLayers, entries: list[dump.Entry], record: GuestRecord,
                opts: BuildOptions | None = None, progress: Progress | None = None,
                same_listing: Path | None = None) -> None:
    """Create stage.state with every layer and the record (flushed to disk before returning).

    same_listing: a file already holding this very listing (the store's copy for the image);
    the guest's listing becomes a hard link to it where both share a filesystem."""
    stage.make_dirs(record.meta)
    listing = dump.render(entries)
    try:
        if same_listing is None:
            raise OSError
        os.link(same_listing, stage.listing)
    except OSError:
        Path(stage.listing).write_bytes(listing)
    if record.meta == "erofs":
        erofs.mkcomposefs(listing, stage.meta_image, opts, progress)
    else:
        metadir.build(stage.meta_dir, entries)
    record.objects = len({e.digest for e in entries if e.is_object})
    stage.write(record)
    syncfs(stage.state)
