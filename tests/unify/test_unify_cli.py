"""`imagefactory unify` from the command line: summary, --json, store upkeep, errors as one line."""

from __future__ import annotations

import json
import os

import pytest

from imagefactory.cli import main
from tests.support.unify import make_guest, write
from unify import probe
from unify.composefs import support
from unify.store import Store


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["unify", "-q", *map(str, args)])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def run_ok(capsys, *args):
    try:
        main(["unify", "-q", *map(str, args)])
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    return capsys.readouterr()


@pytest.fixture
def guests(tmp_path):
    return [make_guest(tmp_path / f"g{i}") for i in range(2)]


def test_summary_and_json(tmp_path, guests, capsys):
    store = tmp_path / "store"
    out = run_ok(capsys, *guests, "--store", store, "--mode", "hardlink", "-n", "-v")
    assert "Would link:      4 files (2 new store entries; 2 duplicates" in out.out
    assert f"would link {guests[1]}/usr/bin/tool (1080 B) -> " in out.out
    assert len([line for line in out.out.splitlines() if line.startswith("would link ")]) == 4
    assert "Saved:" in out.out and "(estimated)" in out.out
    out = run_ok(capsys, *guests, "--store", store, "--mode", "hardlink", "--json")
    data = json.loads(out.out)
    assert data["linked"] == 4 and data["mode"] == "hardlink" and data["dry_run"] is False
    assert "HARDLINK MODE" in out.err
    status = json.loads(run_ok(capsys, "--status", "--store", store, "--json").out)
    assert (status["entries"], status["guest_links"], status["orphans"]) == (2, 4, 0)


def test_auto_mode_refuses_on_plain_ext4_with_one_line(tmp_path, guests, capsys, monkeypatch):
    # What probe() finds on a mainline kernel with ext4 (this machine): the policy must refuse.
    mode, reason = probe.decide_auto(False, False, True, False, "ext4")
    monkeypatch.setattr(probe, "probe", lambda path: probe.ProbeResult(
        vserver=False, immutable=True, filesystem="ext4", auto_mode=mode, reason=reason))
    # ... on a kernel without overlayfs data-only layers (this one has them: composefs would win).
    monkeypatch.setattr(support, "check", lambda path: support.Support(False, False, False, "no overlay (test)"))
    code, out, err = run(capsys, *guests, "--store", tmp_path / "store")
    assert code == 6
    assert err.count("\n") == 1 and err.startswith("imagefactory: error: --mode auto refuses: ")
    assert "--mode immutable" in err and err.rstrip().endswith("; composefs not available: no overlay (test)")


def test_verify_reports_a_tampered_entry_and_gc_removes_orphans(tmp_path, guests, capsys):
    store = tmp_path / "store"
    run_ok(capsys, *guests, "--store", store, "--mode", "hardlink")
    assert "Verified 2 entries, 0 problems" in run_ok(capsys, "--verify", "--store", store).out
    # A guest writing in place (what hardlink mode cannot prevent) changes the shared entry.
    with open(guests[0] / "usr/bin/tool", "r+b") as f:
        f.write(b"#!/bin/false")
    code, out, err = run(capsys, "--verify", "--store", store)
    assert code == 3 and "content changed" in out
    assert err.startswith("imagefactory: error: 1 of 2 store entries no longer match")
    for g in guests:  # both guests replace libx: its entry becomes an orphan
        write(g / "usr/lib/libx.so.new", b"new lib" * 50)
        os.rename(g / "usr/lib/libx.so.new", g / "usr/lib/libx.so.1")
    assert "Would remove 1 entries" in run_ok(capsys, "--gc", "-n", "--store", store).out
    assert len(Store(store).names()) == 2
    assert "Removed 1 entries" in run_ok(capsys, "--gc", "--store", store).out
    assert len(Store(store).names()) == 1


def test_split_gives_private_copies(tmp_path, guests, capsys):
    store = tmp_path / "store"
    run_ok(capsys, *guests, "--store", store, "--mode", "hardlink")
    out = run_ok(capsys, "--split", guests[0], "--store", store)
    assert "2 files made private" in out.out
    assert (guests[0] / "usr/bin/tool").stat().st_nlink == 1
    assert (guests[0] / "usr/bin/tool").read_bytes() == (guests[1] / "usr/bin/tool").read_bytes()
    status = json.loads(run_ok(capsys, "--status", "--json", "--store", store).out)
    assert str(guests[0]) not in status["guests"] and str(guests[1]) in status["guests"]


def test_usage_errors(tmp_path, guests, capsys):
    assert run(capsys, "--status", guests[0], "--store", tmp_path / "s")[0] == 2
    assert run(capsys, "--store", tmp_path / "s")[0] == 2
    code, _, err = run(capsys, "--status", "--store", tmp_path / "nostore")
    assert code == 1 and "is not a unify store" in err
    code, _, err = run(capsys, tmp_path / "missing", "--store", tmp_path / "s", "--mode", "hardlink")
    assert code != 0 and err.count("\n") <= 2 and "Traceback" not in err
