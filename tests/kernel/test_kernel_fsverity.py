"""The user-space fs-verity digest agrees with fsverity-utils (`fsverity digest`)."""

from __future__ import annotations

import pytest

from kernel.fsverity import fsverity_digest


@pytest.mark.parametrize("content, expected", [
    # Vectors from `fsverity digest` (fsverity-utils, Debian sid): empty, one block, a two-level tree.
    (b"", "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"),
    (b"imagefactory\n" * 300, "288f19229c1b92c115404f37caceeee630fdb4ed20a09e00b603c99454ca5f7a"),
    (bytes(range(256)) * 4000, "cc447d756c36a3a1468591f3397b49984f02110ba989e46ccfeac8a71cc46406"),
])
def test_digest_matches_fsverity_utils(tmp_path, content, expected):
    path = tmp_path / "f"
    path.write_bytes(content)
    assert fsverity_digest(path) == expected
