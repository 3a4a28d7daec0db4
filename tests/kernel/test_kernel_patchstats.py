"""patch-stats: counting by hunk headers, new/removed files, compressed input, CLI."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

from click.testing import CliRunner

from kernel.cli import kernel
from kernel.patchstats import format_table, parse_patch, read_patch, total

REPO = Path(__file__).resolve().parents[2]

GIT_PATCH = """\
From: someone
Subject: example

diff --git a/fs/a.c b/fs/a.c
index 1..2 100644
--- a/fs/a.c
+++ b/fs/a.c
@@ -1,3 +1,4 @@
 context
--- a line that looks like a header but is a removal
+++ a line that looks like a header but is an addition
+another addition
 context
@@ -10,2 +11,2 @@ func()
-old
+new
 context
diff --git a/fs/new.c b/fs/new.c
new file mode 100644
--- /dev/null
+++ b/fs/new.c
@@ -0,0 +1,2 @@
+int x;
+int y;
diff --git a/fs/gone.c b/fs/gone.c
deleted file mode 100644
--- a/fs/gone.c
+++ /dev/null
@@ -1 +0,0 @@
-int z;
\\ No newline at end of file
"""


def test_counts_hunks_lines_and_files():
    s = parse_patch(GIT_PATCH, "x")
    assert (s.files, s.new_files, s.removed_files, s.hunks) == (3, 1, 1, 4)
    # '+++ a line...' and '--- a line...' inside the hunk are content, not headers.
    assert (s.added, s.removed) == (5, 3)


def test_plain_diff_u_with_timestamps():
    text = "--- a/x.c\t2024-01-01 00:00:00\n+++ b/x.c\t2024-01-02 00:00:00\n@@ -1 +1 @@\n-a\n+b\n"
    s = parse_patch(text)
    assert (s.files, s.hunks, s.added, s.removed) == (1, 1, 1, 1)


def test_project_patches_measured(tmp_path):
    stats = [parse_patch(read_patch(p), p.name) for p in sorted((REPO / "kernel/patches").glob("*.patch"))]
    assert len(stats) == 2
    t = total(stats)
    assert t.files == 6 and t.new_files == 0 and t.hunks == 12
    assert (t.added, t.removed) == (25, 8)
    table = format_table(stats)
    assert table.splitlines()[0].split() == ["patch", "files", "new", "removed", "hunks", "+lines", "-lines"]
    assert table.splitlines()[-1].split()[0] == "total"


def test_compressed_patch_and_json_cli(tmp_path):
    path = tmp_path / "p.diff.bz2"
    path.write_bytes(bz2.compress(GIT_PATCH.encode()))
    result = CliRunner().invoke(kernel, ["patch-stats", "--json", str(path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["patches"][0]["hunks"] == 4 and data["total"]["added"] == 5
