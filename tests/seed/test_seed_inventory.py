"""`imagefactory guests` and `imagefactory seed check`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from imagefactory.seed import check
from imagefactory.seed.barrier import BarrierStatus
from imagefactory.seed.inventory import GuestInfo, tree_usage
from tests.support.seed import run_cli, seed_args, tiny_image

GIB = 1 << 30


def _guest(name: str, ctx: int, ip: str, memory: int | None = GIB) -> GuestInfo:
    return GuestInfo(name, ctx, f"/etc/vservers/{name}", f"/vservers/{name}", "debian-sid", "20261030_080801",
                     "0" * 64, ip, memory, 25.0, None, None)


def test_evaluate_overcommit_duplicates_and_barrier():
    guests = [_guest("a", 40000, "10.0.0.11/24", 6 * GIB), _guest("b", 40000, "10.0.0.11/24", 6 * GIB),
              _guest("c", 40002, "10.0.0.13/24", None)]
    no_barrier = BarrierStatus("/vservers", False, "barrier not available (no VServer kernel)")
    findings = check.evaluate(guests, ram=8 * GIB, swap=2 * GIB, barriers=[no_barrier])
    by_code = {f.code: f for f in findings}
    assert set(by_code) == {"overcommit", "no-memory-limit", "duplicate-context", "duplicate-ip", "no-barrier"}
    assert "12288 MiB" in by_code["overcommit"].message and "10240 MiB" in by_code["overcommit"].message
    assert by_code["duplicate-context"].level == "error" and "a, b" in by_code["duplicate-context"].message
    assert by_code["duplicate-ip"].message == "IP 10.0.0.11 used by a, b"
    assert "/vservers" in by_code["no-barrier"].message


def test_evaluate_quiet_when_healthy():
    guests = [_guest("a", 40000, "10.0.0.11/24"), _guest("b", 40001, "10.0.0.12/24")]
    assert check.evaluate(guests, ram=8 * GIB, swap=0, barriers=[BarrierStatus("/vservers", True, "set")]) == []


def test_meminfo():
    text = "MemTotal:       24683656 kB\nMemFree:  1 kB\nSwapTotal:       1048576 kB\n"
    assert check.meminfo(text) == (24683656 * 1024, 1 << 30)


def test_tree_usage_counts_inodes_once_and_shared_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "b").write_bytes(b"y" * 3000)
    (tmp_path / "a-link").hardlink_to(tmp_path / "a")
    (tmp_path / "sym").symlink_to("/etc/passwd")  # never followed
    usage = tree_usage(tmp_path)
    assert (usage.file_bytes, usage.shared_bytes) == (4000, 1000)


def test_guests_lists_what_seed_wrote(tmp_path, capsys):
    image = tiny_image(tmp_path)
    store = tmp_path / "vservers/.hash"
    for i, name in enumerate(["web1", "web2"]):
        args = seed_args(image, name, tmp_path, "--unify", "--store", str(store), "--unify-mode", "hardlink",
                         ip=f"10.0.0.{11 + i}/24")
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
    code, out, _ = run_cli(["guests", "--confdir", str(tmp_path / "etc"), "--json"], capsys)
    assert code == 0 and all(g["disk_usage"] is None for g in json.loads(out))  # roots walked only with --usage
    code, out, _ = run_cli(["guests", "--confdir", str(tmp_path / "etc"), "--json", "--usage"], capsys)
    rows = {g["name"]: g for g in json.loads(out)}
    assert code == 0 and set(rows) == {"web1", "web2"}
    web2 = rows["web2"]
    assert (web2["context"], web2["image"], web2["version"], web2["ip"]) == (40001, "tiny", "20261030_080801", "10.0.0.12/24")
    assert web2["memory"] == 512 << 20 and web2["cpu_percent"] == 25.0
    assert web2["disk_usage"] > 0 and 0 < web2["shared_percent"] <= 100
    assert web2["root"] == str(tmp_path / "vservers/web2")
    vservers = tmp_path / "vservers"  # --unify really linked the second guest to the first's files
    for rel in ("usr/bin/tool", "usr/bin/solo"):  # solo's size is unique within each guest
        assert (vservers / "web1" / rel).stat().st_ino == (vservers / "web2" / rel).stat().st_ino

    code, out, _ = run_cli(["guests", "--confdir", str(tmp_path / "etc")], capsys)
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "STATE", "CTX", "IMAGE"]
    assert lines[2].split()[:4] == ["web2", "stopped" if shutil.which("lxc-info") else "-", "40001", "tiny"]


def test_check_reports_duplicates_overcommit_and_barrier(tmp_path, capsys):
    image = tiny_image(tmp_path)
    etc = tmp_path / "etc"
    assert run_cli(seed_args(image, "big", tmp_path, "--memory", "64T"), capsys)[0] == 0
    code, out, _ = run_cli(["seed", "check", "--confdir", str(etc), "--vdir", str(tmp_path / "vservers"), "--json"],
                           capsys)
    report = json.loads(out)
    codes = {f["code"] for f in report["findings"]}
    assert code == 0 and "overcommit" in codes  # a warning, not an error
    assert report["memory"]["rss_hard_total"] == 64 << 40
    barrier_findings = [f for f in report["findings"] if f["code"] == "no-barrier"]
    assert [b["barrier"] for b in report["barriers"]] == [False] and len(barrier_findings) == 1

    shutil.copytree(etc / "big", etc / "clone", symlinks=True)  # a hand-made copy: same context and IP
    (etc / "clone/name").write_text("clone\n")
    code, out, err = run_cli(["seed", "--check", "--confdir", str(etc)], capsys)  # the old flag, for one release
    assert "`seed --check` is deprecated" in err and "use `imagefactory seed check`" in err
    assert code == 1
    assert "error: context 40000 used by big, clone" in out and "error: IP 10.0.0.11 used by big, clone" in out


def test_check_rejects_positional_arguments(tmp_path, capsys):
    code, _, err = run_cli(["seed", "check", "x.tar.zst", "--confdir", str(tmp_path)], capsys)
    assert code == 2 and "unexpected extra argument (x.tar.zst)" in err
    code, _, err = run_cli(["seed", "x.tar.zst", "--confdir", str(tmp_path)], capsys)
    assert code == 2 and "Missing argument 'NAME'" in err and "imagefactory seed [OPTIONS] SOURCE NAME" in err


def test_empty_host(tmp_path, capsys):
    code, out, _ = run_cli(["guests", "--confdir", str(tmp_path / "none"), "--json"], capsys)
    assert code == 0 and json.loads(out) == []
    assert Path(tmp_path / "none").exists() is False
