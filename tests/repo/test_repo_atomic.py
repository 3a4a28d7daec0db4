"""Atomic publication: readers never see a mix of states; old states linger for the grace period."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from repo import apt
from repo.pull import pull
from repo.sign import verify_clearsigned
from tests.support.repo import apt as run_apt
from tests.support.repo import apt_root, init_repo, make_deb, make_image, make_rpm, run, snapshot


def apt_client_read(repo: Path, keyring: Path) -> int:
    """Read the repository the way apt does, always through `current`; return packages checked.

    InRelease (one file) is the snapshot; indexes are fetched by hash and pool
    files checked against them, so any mix of states shows up as a mismatch.
    """
    dist = repo / "current/dists/stable"
    release = verify_clearsigned(keyring, dist / "InRelease").decode()
    _, sums = apt.parse_release(release)
    checked = 0
    for rel, (digest, size) in sums.items():
        if not rel.endswith("/Packages"):
            continue
        data = (dist / rel.rsplit("/", 1)[0] / "by-hash/SHA256" / digest).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest and len(data) == size, rel
        for stanza in apt.parse_packages(data.decode()):
            body = (repo / "current" / stanza["filename"]).read_bytes()
            assert hashlib.sha256(body).hexdigest() == stanza["sha256"], stanza["filename"]
            checked += 1
    return checked


def test_readers_only_see_consistent_states_during_publishes(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    keyring = repo / ".imagefactory/keyring.gpg"
    assert run(capsys, "publish", "--repo", repo, make_deb(tmp_path / "d0"), make_image(tmp_path / "i0"))[0] == 0

    apt_cmd = apt_root(tmp_path, repo)
    stop = threading.Event()
    progress = threading.Condition()
    rounds, failures = {"python": 0, "apt": 0}, []

    def python_round(n: int) -> None:
        assert apt_client_read(repo, keyring) >= 1
        result = pull(f"file://{repo}/current", "testimg", tmp_path / f"pulled{n % 2}", keyring)
        assert Path(result["image"]).is_file()

    def apt_round(n: int) -> None:  # the real client: must never hit a hash mismatch or bad signature
        update = run_apt(apt_cmd, "update")
        output = update.stdout + update.stderr
        assert update.returncode == 0 and "W:" not in output and "E:" not in output, output

    def loop(name: str, body) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                body(n)
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                failures.append(f"{name} round {n}: {type(exc).__name__}: {exc}")
            with progress:
                rounds[name] += 1
                progress.notify_all()

    threads = [threading.Thread(target=loop, args=("python", python_round)),
               threading.Thread(target=loop, args=("apt", apt_round))]
    for thread in threads:
        thread.start()
    try:
        for i in range(1, 7):
            with progress:  # let every reader finish at least one full round per state
                seen = dict(rounds)
                assert progress.wait_for(lambda: all(rounds[k] > seen[k] for k in rounds), timeout=60)
            code, _, err = run(capsys, "publish", "--repo", repo, make_deb(tmp_path / f"d{i}", version=f"1.{i}-1"),
                               make_image(tmp_path / f"i{i}", epoch=1793347681 + i, content=b"v%d\n" % i))
            assert code == 0, err
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not failures, failures[:3]
    assert min(rounds.values()) >= 6
    assert os.readlink(repo / "current") == "states/000008"
    assert run(capsys, "repo", "verify", repo)[0] == 0


def test_client_that_read_old_index_finishes_after_two_publishes(tmp_path, capsys, gpg_key):
    """Deterministic version of the race: InRelease read, then the repository moves on twice."""
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    keyring = repo / ".imagefactory/keyring.gpg"
    assert run(capsys, "publish", "--repo", repo, make_deb(tmp_path / "a", version="1.0-1"))[0] == 0
    dist = repo / "current/dists/stable"
    old_release = verify_clearsigned(keyring, dist / "InRelease").decode()
    for version in ("2.0-1", "3.0-1"):
        assert run(capsys, "publish", "--repo", repo, make_deb(tmp_path / version, version=version))[0] == 0
    _, sums = apt.parse_release(old_release)
    digest = sums["main/binary-amd64/Packages"][0]
    old_packages = (dist / "main/binary-amd64/by-hash/SHA256" / digest).read_bytes()  # via *current*
    assert "Version: 1.0-1" in old_packages.decode() and "Version: 3.0-1" not in old_packages.decode()
    assert len(list((dist / "main/binary-amd64/by-hash/SHA256").iterdir())) >= 6  # 3 states x (Packages, .xz)


def test_old_states_pruned_after_grace(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo", "--grace", "0", "--keep", "2")
    for i in range(4):
        assert run(capsys, "publish", "--repo", repo, make_deb(tmp_path / str(i), version=f"{i}.0-1"))[0] == 0
    assert sorted(p.name for p in (repo / "states").iterdir()) == ["000004", "000005"]
    byhash = repo / "current/dists/stable/main/binary-amd64/by-hash/SHA256"
    assert len(list(byhash.iterdir())) == 4  # this state's and the previous one's Packages + Packages.xz
    assert run(capsys, "repo", "verify", repo)[0] == 0


def test_failure_while_writing_the_state_changes_nothing(tmp_path, capsys, gpg_key, monkeypatch):
    """rpmsign missing is only noticed after the new state is half written: it must vanish."""
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    assert run(capsys, "publish", "--repo", repo, make_deb(tmp_path / "first"))[0] == 0
    before = snapshot(repo)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gpg", "gpgv", "gpgconf", "gpg-agent", "createrepo_c"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    inputs = [make_deb(tmp_path / "second", version="2.0-1"), make_rpm(tmp_path)]
    monkeypatch.setenv("PATH", str(bin_dir))
    code, _, err = run(capsys, "publish", "--repo", repo, *inputs)
    assert code == 6 and "rpmsign not found" in err
    assert snapshot(repo) == before


def test_concurrent_publishers_are_serialised(tmp_path, capsys, gpg_key):
    repo = init_repo(capsys, gpg_key, tmp_path / "repo")
    debs = [make_deb(tmp_path / str(i), name=f"pkg{i}") for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-m", "imagefactory", "publish", "-q", "--repo", str(repo), str(deb)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for deb in debs]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), results
    code, out, _ = run(capsys, "repo", "list", repo, "--json")
    listed = json.loads(out)
    assert listed["serial"] == 4 and sorted(a["id"] for a in listed["artifacts"]) == [
        "pkg0_1.0-1_all", "pkg1_1.0-1_all", "pkg2_1.0-1_all"]
    assert run(capsys, "repo", "verify", repo)[0] == 0
