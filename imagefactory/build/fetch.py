"""Downloads into a shared, content-addressed cache.

Every file is named by its SHA256 (`<cache>/sha256/ab/abcdef...`), so a cache
is shared by all recipes and builds, a second build downloads nothing, and a
file can only enter the cache after its size and hash matched the signed
metadata (imagefactory.core.download stages it and renames it only when verified;
its HTTP client, timeouts and retry are the ones described in TIMEOUT_HELP).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imagefactory.build.plan import Artifact
from imagefactory.core import download as download_mod
from imagefactory.core.download import ATTEMPTS, TIMEOUT_HELP, MissingFile, download, stream, timeouts
from imagefactory.core.download import fetch_bytes as fetch_url
from imagefactory.core.progress import Progress

__all__ = ["ATTEMPTS", "TIMEOUT_HELP", "MissingFile", "cache_path", "cached_fetch", "clear_partial",
           "download_all", "fetch_url", "stream", "timeouts"]


def cache_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "sha256" / sha256[:2] / sha256


def cached_fetch(url: str, sha256: str, size: int | None, cache_dir: Path) -> Path:
    """Return the cached file for sha256, downloading and verifying it if needed."""
    target = cache_path(cache_dir, sha256)
    if not target.is_file():
        download(url, target, sha256=sha256, size=size, trusted="the signed index")
    return target


def download_all(
    artifacts: Iterable[Artifact], cache_dir: Path, jobs: int, progress: Progress
) -> dict[str, Path]:
    """Fetch every artifact (in parallel) into the cache; name -> cached path."""
    items = list(artifacts)
    todo = [a for a in items if not cache_path(cache_dir, a.sha256).is_file()]
    total = sum(a.size for a in todo)
    progress.stage(
        f"download: {len(todo)} of {len(items)} packages ({total / 1e6:.1f} MB), {len(items) - len(todo)} cached"
    )
    done = 0
    lock = threading.Lock()

    def one(a: Artifact) -> None:
        nonlocal done
        cached_fetch(a.url, a.sha256, a.size, cache_dir)
        with lock:
            done += a.size
            progress.count("downloaded", done, total, " bytes")

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for f in [pool.submit(one, a) for a in sorted(todo, key=lambda a: -a.size)]:
                f.result()
    return {a.name: cache_path(cache_dir, a.sha256) for a in items}


def clear_partial(cache_dir: Path) -> None:
    """Remove leftovers of interrupted downloads (they never became cache entries)."""
    shutil.rmtree(cache_dir / "partial", ignore_errors=True)  # where earlier versions staged them
    if (cache_dir / "sha256").is_dir():
        download_mod.clear_partial(cache_dir / "sha256", levels=1)
