"""The sid tools root: built once from recipes/tools-sid.toml, tools run in it by chroot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagefactory.build import tools
from imagefactory.build.plan import BuildOptions
from imagefactory.core.progress import Progress

pytestmark = [pytest.mark.network, pytest.mark.root]


def test_tools_root_runs_a_sid_tool_on_host_paths(tmp_path: Path):
    cache = Path(os.environ.get("IMAGEFACTORY_CACHE", "/var/cache/imagefactory"))
    root = tools.ensure(BuildOptions(allow_expired_release=True, cache_dir=cache), Progress(quiet=True))
    again = tools.ensure(BuildOptions(allow_expired_release=True, cache_dir=cache), Progress(quiet=True))
    assert again.root == root.root  # cached, not rebuilt
    src = tmp_path / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("g1\n")
    image = tmp_path / "g1.cfs"
    out = root.run(["mkcomposefs", "--print-digest", str(src), str(image)], binds=[tmp_path])
    digest = out.stdout.decode().strip()
    assert len(digest) == 64 and image.stat().st_size > 0
    # The bind mount lived in a private namespace: nothing is left mounted below the root.
    assert str(root.root) not in Path("/proc/self/mountinfo").read_text()
