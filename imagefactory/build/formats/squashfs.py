"""`squashfs`: the rootfs as a squashfs image (Incus's split-image root, also mountable as is).

mksquashfs sorts directory entries itself, keeps numeric owners, xattrs and hard links, and
builds reproducibly by default; SOURCE_DATE_EPOCH sets the filesystem time and clamps newer
file times to it. The settings are distrobuilder's (xz, 1 MiB blocks, no NFS export table,
no recovery file), so the image matches what Incus users get from images.linuxcontainers.org.
The host's mksquashfs is used when present, else the tools root's.
"""

from __future__ import annotations

import os
import subprocess

from imagefactory.build import tools
from imagefactory.build.formats import Target, record
from imagefactory.build.formats.archive import FormatError
from imagefactory.build.plan import BuildOptions
from imagefactory.core import atomic

SUFFIX = ".squashfs"
OPTIONS = ["-noappend", "-comp", "xz", "-b", "1M", "-no-exports", "-no-recovery", "-quiet", "-no-progress"]


def version(argv: list[str], root: tools.ToolsRoot | None) -> str:
    cmd = [*argv, "-version"]
    proc = root.run(cmd, check=False) if root else subprocess.run(cmd, capture_output=True)
    first = proc.stdout.decode(errors="replace").splitlines()
    return first[0].strip() if first else "mksquashfs"


def write(target: Target) -> list[dict]:
    argv, root = tools.host_or_tools("mksquashfs", target.opts or BuildOptions(), target.progress)
    final = target.path(SUFFIX)
    with atomic.staged_path(final) as stage:
        cmd = ["env", f"SOURCE_DATE_EPOCH={target.epoch}", *argv, str(target.rootfs), str(stage), *OPTIONS]
        if root is None:
            proc = subprocess.run(cmd, capture_output=True)
        else:
            proc = root.run(cmd, binds=[target.rootfs, target.out_dir], check=False)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            raise FormatError(f"mksquashfs failed: {detail[-1] if detail else proc.returncode}")
        os.chmod(stage, 0o644)
    return [record(target, "squashfs", "rootfs", final, tool=version(argv, root))]
