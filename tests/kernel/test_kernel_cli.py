"""`imagefactory kernel probe` / `--help`: wiring through the top-level CLI."""

from __future__ import annotations

import json

from click.testing import CliRunner

from imagefactory.cli import cli
from unify.probe import decide_auto


def test_probe_json_matches_unify_policy(tmp_path):
    result = CliRunner().invoke(cli, ["kernel", "probe", "--json", str(tmp_path)])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert set(d) >= {"vserver", "vci", "immutable", "ixunlink", "reflink", "filesystem", "auto_mode", "reason"}
    assert set(d) >= {"fsverity", "fsverity_evidence", "erofs", "erofs_evidence", "overlay_data_only",
                      "overlay_data_only_evidence", "overlay_verity", "overlay_verity_evidence",
                      "composefs_verity_ready"}
    assert d["filesystem"] and d["filesystem"] != "unknown"
    assert (d["auto_mode"], d["reason"]) == decide_auto(d["vserver"], d["ixunlink"], d["immutable"], d["reflink"],
                                                        d["filesystem"])
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


def test_probe_text(tmp_path):
    result = CliRunner().invoke(cli, ["kernel", "probe", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "VServer kernel", "filesystem", "immutable flag", "IXUNLINK flag", "reflink (FICLONE)", "unify --mode auto",
        "fs-verity", "EROFS", "overlay data-only", "overlay verity", "composefs verity=require"]
    assert "FS_IOC_ENABLE_VERITY" in lines[6] and "/proc/filesystems" in lines[7] and "mount -t overlay" in lines[8]


def test_kernel_help_lists_commands():
    result = CliRunner().invoke(cli, ["kernel", "--help"])
    assert result.exit_code == 0
    for name in ("build", "patch-stats", "probe", "test-ixunlink", "demo-unify", "test-composefs"):
        assert name in result.output
