"""The metadata layer as an EROFS image, written by mkcomposefs from the guest's listing.

`mkcomposefs --from-file - -` reads the composefs-dump listing on stdin and writes the image
to stdout: it never reads file content (the objects are already in the store), so it takes a
fraction of a second. The host's mkcomposefs is used where there is one (Fedora, Debian from
trixie-backports/forky, Ubuntu 24.10+); otherwise the one in the sid tools root that
imagefactory builds from recipes/tools-sid.toml once and runs by chroot. We never write
EROFS ourselves.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from imagefactory.build import tools
from imagefactory.build.plan import BuildOptions
from imagefactory.core.errors import EnvironmentProblem
from imagefactory.core.progress import Progress


def default_options() -> BuildOptions:
    """Where the tools root is cached ($IMAGEFACTORY_CACHE, as for builds). A mirror whose sid
    Release is past Valid-Until (snapshot mirrors) needs IMAGEFACTORY_ALLOW_EXPIRED_RELEASE=1 for
    the one build of the tools root."""
    return BuildOptions(cache_dir=Path(os.environ.get("IMAGEFACTORY_CACHE", "/var/cache/imagefactory")),
                        allow_expired_release=os.environ.get("IMAGEFACTORY_ALLOW_EXPIRED_RELEASE") == "1")


def mkcomposefs(listing: bytes, target: Path, opts: BuildOptions | None = None,
                progress: Progress | None = None) -> None:
    """Write the EROFS image for listing to target (fsync'd; the caller renames it into place)."""
    progress = progress or Progress(quiet=True)
    argv, root = tools.host_or_tools("mkcomposefs", opts or default_options(), progress)
    argv = [*argv, "--from-file", "-", "-"]
    proc = root.run(argv, input=listing, check=False) if root else \
        subprocess.run(argv, input=listing, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise EnvironmentProblem(f"mkcomposefs failed ({proc.returncode}): "
                                 f"{proc.stderr.decode(errors='replace').strip()[:300]}")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(proc.stdout)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
