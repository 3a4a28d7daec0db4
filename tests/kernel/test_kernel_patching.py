"""Applying a series with GNU patch: dry run first, failures name file and hunk."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from imagefactory.core.errors import RecipeError
from kernel.patching import apply_patch, parse_patch_failures

PATCH = """\
--- a/fs/namei.c
+++ b/fs/namei.c
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
--- a/fs/ioctl.c
+++ b/fs/ioctl.c
@@ -1,3 +1,3 @@
 alpha
-beta
+BETA
 gamma
"""


def tree(tmp_path: Path, ioctl: str = "alpha\nbeta\ngamma\n") -> Path:
    root = tmp_path / "linux"
    (root / "fs").mkdir(parents=True)
    (root / "fs/namei.c").write_text("one\ntwo\nthree\n")
    (root / "fs/ioctl.c").write_text(ioctl)
    return root


def patch_file(tmp_path: Path) -> Path:
    path = tmp_path / "0001-x.patch"
    path.write_text(PATCH)
    return path


def test_applies_cleanly(tmp_path):
    root = tree(tmp_path)
    apply_patch(root, "0001-x.patch", patch_file(tmp_path), io.StringIO())
    assert (root / "fs/namei.c").read_text() == "one\nTWO\nthree\n"
    assert (root / "fs/ioctl.c").read_text() == "alpha\nBETA\ngamma\n"
    assert not list(root.rglob("*.orig")) and not list(root.rglob("*.rej"))


def test_failing_hunk_named_and_tree_untouched(tmp_path):
    root = tree(tmp_path, ioctl="alpha\nchanged upstream\ngamma\n")
    with pytest.raises(RecipeError, match=r"0001-x.patch does not apply: fs/ioctl.c hunk #1 \(at line 1\)"):
        apply_patch(root, "0001-x.patch", patch_file(tmp_path), io.StringIO())
    # the dry run failed, so not even the good first file was changed
    assert (root / "fs/namei.c").read_text() == "one\ntwo\nthree\n"


def test_already_applied_and_missing_file_reported(tmp_path):
    root = tree(tmp_path)
    apply_patch(root, "p", patch_file(tmp_path), io.StringIO())
    with pytest.raises(RecipeError, match="already applied"):
        apply_patch(root, "p", patch_file(tmp_path), io.StringIO())
    (root / "fs/ioctl.c").unlink()
    (root / "fs/namei.c").write_text("one\ntwo\nthree\n")
    with pytest.raises(RecipeError, match="file to patch not found"):
        apply_patch(root, "p", patch_file(tmp_path), io.StringIO())


def test_parse_failures_from_gnu_patch_output():
    out = "checking file fs/namei.c\nHunk #2 FAILED at 3019.\n1 out of 2 hunks FAILED\nchecking file fs/ext4/ext4.h\n"
    assert parse_patch_failures(out) == ["fs/namei.c hunk #2 (at line 3019)"]
