"""`imagefactory seed` end to end: the written tree, transactions, context ids, replace."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagefactory.seed import contexts, seeder
from tests.support.seed import basic_tree, entry, run_cli, seed_args, tiny_image, write_image

PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(conf: Path, rel: str) -> str:
    return (conf / rel).read_text().strip()


def _hidden_leftovers(tmp: Path) -> list[str]:
    """Staging or moved-aside names left in vdir/confdir (the lock file is expected)."""
    return sorted(p.name for d in (tmp / "vservers", tmp / "etc") if d.is_dir() for p in d.iterdir()
                  if p.name.startswith(".") and p.name != contexts.LOCK_NAME)


def test_seed_writes_root_and_util_vserver_layout(tmp_path, capsys):
    image = tiny_image(tmp_path)
    code, out, err = run_cli(seed_args(image, "web1", tmp_path, "--hostname", "web1.example.net", "--json"), capsys)
    assert code == 0, err
    result = json.loads(out)
    root, conf = tmp_path / "vservers/web1", tmp_path / "etc/web1"
    assert result["context"] == 40000 and result["root"] == str(root)
    assert (root / "etc/hostname").read_text() == "image\n"
    expected = {
        "context": "40000", "name": "web1", "uts/nodename": "web1.example.net",
        "interfaces/0/ip": "10.0.0.11", "interfaces/0/prefix": "24", "interfaces/0/dev": "eth0",
        "apps/init/mark": "default",
        "rlimits/rss.hard": str((512 << 20) // PAGE), "rlimits/rss.soft": str((512 << 20) // PAGE * 9 // 10),
        "sched/fill-rate": "1", "sched/interval": "4",
    }
    assert {rel: _read(conf, rel) for rel in expected} == expected
    fstab = [line.split()[1:3] for line in _read(conf, "fstab").splitlines()]
    assert fstab == [["/proc", "proc"], ["/tmp", "tmpfs"], ["/dev/pts", "devpts"]]
    assert os.readlink(conf / "vdir") == str(root)
    manifest = json.loads((conf / "apps/imagefactory/manifest.json").read_text())
    assert manifest["image"]["sha256"] == result["image_sha256"]
    assert "Boot=yes" in (conf / "nspawn/web1.nspawn").read_text()  # the image has /usr/sbin/init
    assert result["barrier"]["path"] == str(tmp_path / "vservers")
    assert _hidden_leftovers(tmp_path) == []


def test_store_is_recorded_for_vunify(tmp_path, capsys):
    image = tiny_image(tmp_path)
    store = tmp_path / "vservers/.hash"
    code, _, err = run_cli(seed_args(image, "web1", tmp_path, "--store", str(store)), capsys)
    assert code == 0, err
    assert os.readlink(tmp_path / "etc/web1/apps/vunify/hash/0") == str(store)


def test_contexts_are_unique_and_kept_on_replace(tmp_path, capsys):
    image = tiny_image(tmp_path)
    for i, name in enumerate(["a", "b", "c"]):
        assert run_cli(seed_args(image, name, tmp_path, ip=f"10.0.0.{11 + i}/24"), capsys)[0] == 0
    ids = {n: contexts.read_context(tmp_path / "etc" / n) for n in "abc"}
    assert ids == {"a": 40000, "b": 40001, "c": 40002}
    code, _, err = run_cli(seed_args(image, "b", tmp_path, ip="10.0.0.12/24"), capsys)
    assert code == 1 and "exists" in err and "--replace" in err
    marker = tmp_path / "vservers/b/etc/marker"
    marker.write_text("old guest")
    assert run_cli(seed_args(image, "b", tmp_path, "--replace", ip="10.0.0.12/24"), capsys)[0] == 0
    assert contexts.read_context(tmp_path / "etc/b") == 40001
    assert not marker.exists()
    assert _hidden_leftovers(tmp_path) == []


def test_freed_context_is_reused_only_after_its_guest_is_gone(tmp_path):
    assert contexts.next_free([40000, 40002]) == 40001
    assert contexts.next_free([]) == 40000
    with pytest.raises(Exception, match="no free context"):
        contexts.next_free(range(40000, 49152))


def _allocate_one(confdir: str, name: str) -> None:
    confdir_path = Path(confdir)
    with contexts.allocation_lock(confdir_path):
        ctx = contexts.allocate(confdir_path, name)
        (confdir_path / name).mkdir()
        (confdir_path / name / "context").write_text(f"{ctx}\n")


def test_concurrent_allocations_never_collide(tmp_path):
    names = [f"g{i}" for i in range(12)]
    with multiprocessing.get_context("fork").Pool(6) as pool:
        pool.starmap(_allocate_one, [(str(tmp_path), n) for n in names])
    ids = contexts.used_contexts(tmp_path)
    assert sorted(ids.values()) == list(range(40000, 40012))


def test_hostile_image_leaves_nothing(tmp_path, capsys):
    image = write_image(tmp_path, "evil", basic_tree(devices=False) + [entry("./etc/../../x", data=b"x")])
    code, _, err = run_cli(seed_args(image, "web1", tmp_path), capsys)
    assert code == 7 and err.startswith("imagefactory: error: image member")
    assert not (tmp_path / "vservers/web1").exists() and not (tmp_path / "etc/web1").exists()
    assert _hidden_leftovers(tmp_path) == []


def test_tampered_image_is_refused_with_exit_3(tmp_path, capsys):
    image = tiny_image(tmp_path)
    data = bytearray(image.read_bytes())
    data[-5] ^= 0xFF
    image.write_bytes(bytes(data))
    code, _, err = run_cli(seed_args(image, "web1", tmp_path), capsys)
    assert code == 3 and "sha256" in err
    assert not (tmp_path / "vservers/web1").exists() and not (tmp_path / "etc/web1").exists()


def test_interrupt_while_writing_config_leaves_no_half_guest(tmp_path, capsys, monkeypatch):
    """Ctrl-C after the root is unpacked but before the commit: both stages vanish."""
    image = tiny_image(tmp_path)

    def interrupted(stage, tree):
        stage.mkdir()
        (stage / "context").write_text("40000\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(seeder, "write_tree", interrupted)
    code, _, err = run_cli(seed_args(image, "web1", tmp_path), capsys)
    assert code == 130 and "interrupted" in err
    assert not (tmp_path / "vservers/web1").exists() and not (tmp_path / "etc/web1").exists()
    assert _hidden_leftovers(tmp_path) == []


def test_interrupted_replace_keeps_the_old_guest(tmp_path, capsys, monkeypatch):
    image = tiny_image(tmp_path)
    assert run_cli(seed_args(image, "web1", tmp_path), capsys)[0] == 0
    (tmp_path / "vservers/web1/etc/marker").write_text("old")
    monkeypatch.setattr(seeder, "write_tree", lambda stage, tree: (_ for _ in ()).throw(KeyboardInterrupt))
    assert run_cli(seed_args(image, "web1", tmp_path, "--replace"), capsys)[0] == 130
    assert (tmp_path / "vservers/web1/etc/marker").read_text() == "old"
    assert contexts.read_context(tmp_path / "etc/web1") == 40000
    assert _hidden_leftovers(tmp_path) == []


def test_commit_rolls_back_when_a_later_rename_fails(tmp_path):
    first_stage, first = tmp_path / ".a.partial", tmp_path / "a"
    first.mkdir()
    (first / "old").write_text("old")
    first_stage.mkdir()
    (first_stage / "new").write_text("new")
    missing_stage, second = tmp_path / ".b.partial", tmp_path / "b"
    with pytest.raises(FileNotFoundError):
        seeder.commit([(first_stage, first), (missing_stage, second)])
    assert (first / "old").read_text() == "old" and not (first / "new").exists()
    assert (first_stage / "new").exists()  # back at its staging name for the caller to remove
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.partial", "a"]


def test_stale_staging_of_a_killed_seed_is_cleaned(tmp_path, capsys):
    image = tiny_image(tmp_path)
    dead = tmp_path / "vservers/.web1.partial-999999999"
    dead.mkdir(parents=True)
    (dead / "junk").write_text("x")
    assert run_cli(seed_args(image, "web1", tmp_path), capsys)[0] == 0
    assert not dead.exists()


SIGTERM_DURING_SEED = """
import os, signal, sys
from imagefactory.seed import seeder
from imagefactory.cli import main

def killed(stage, tree):
    stage.mkdir()
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pause()  # the handler raises before this returns

seeder.write_tree = killed
main(sys.argv[1:])
"""


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    image = tiny_image(tmp_path)
    result = subprocess.run([sys.executable, "-c", SIGTERM_DURING_SEED, *seed_args(image, "web1", tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 130 and "interrupted" in result.stderr
    assert not (tmp_path / "vservers/web1").exists() and not (tmp_path / "etc/web1").exists()
    assert _hidden_leftovers(tmp_path) == []
