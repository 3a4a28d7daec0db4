"""Seeding at scale: 20 seeds at once into one host, and `guests` over many configs without walking roots."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.seed import run_cli, seed_args, tiny_image

CLI = [sys.executable, "-c", "from imagefactory.cli import main; main()"]


def test_twenty_concurrent_seeds_get_distinct_contexts(tmp_path):
    """20 real `imagefactory seed` processes started together: every guest gets its own context id,
    the ids fill the free slots from 40000 up (skipping one an existing guest holds), and no
    staging directory is left behind."""
    image = tiny_image(tmp_path)
    held = tmp_path / "etc/old"
    held.mkdir(parents=True)
    (held / "context").write_text("40003\n")
    names = [f"web{i:02d}" for i in range(20)]
    procs = [subprocess.Popen([*CLI, *seed_args(image, n, tmp_path, "--json", ip=f"10.0.1.{10 + i}/24")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, n in enumerate(names)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    contexts = sorted(r["context"] for r in results)
    assert contexts == [c for c in range(40000, 40021) if c != 40003]
    for r in results:  # each guest's conf dir holds the id its seed reported
        assert Path(r["conf"], "context").read_text().split()[0] == str(r["context"])
    out = subprocess.run([*CLI, "guests", "--confdir", str(tmp_path / "etc"), "--json"],
                         capture_output=True, text=True, check=True).stdout
    listed = {g["name"]: g["context"] for g in json.loads(out)}
    assert listed == {**{r["name"]: r["context"] for r in results}, "old": 40003}
    assert [p.name for p in (tmp_path / "etc").iterdir() if p.name.startswith(".") and "partial" in p.name] == []
    assert [p.name for p in (tmp_path / "vservers").iterdir() if "partial" in p.name] == []


def test_guests_json_over_many_configs_reads_conf_dirs_only(tmp_path, capsys):
    """300 guest configs (copies of a real seed's): listed with their own names and contexts; the
    roots are not walked unless --usage asks for it."""
    image = tiny_image(tmp_path)
    code, _, err = run_cli(seed_args(image, "g000", tmp_path), capsys)
    assert code == 0, err
    conf = tmp_path / "etc/g000"
    for i in range(1, 300):
        copy = tmp_path / f"etc/g{i:03d}"
        shutil.copytree(conf, copy, symlinks=True)
        (copy / "name").write_text(f"g{i:03d}\n")
        (copy / "context").write_text(f"{40000 + i}\n")
    code, out, _ = run_cli(["guests", "--confdir", str(tmp_path / "etc"), "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == 300
    assert [(g["name"], g["context"]) for g in rows] == [(f"g{i:03d}", 40000 + i) for i in range(300)]
    assert all(g["image"] == "tiny" and g["disk_usage"] is None for g in rows)
    code, out, _ = run_cli(["guests", "--confdir", str(tmp_path / "etc"), "--json", "--usage"], capsys)
    assert all(g["disk_usage"] > 0 for g in json.loads(out))
