"""SIGKILL `imagefactory unify` at random instants on trees of real host files: every guest path
must still hold its original content (or the identical unified file), and the next run must
finish the job and leave no temporary names behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_unify_helpers import clear_flags, copy_host_subset, tree_state, write
from unify import maintain
from unify.store import Store
from unify.walk import TMP_PREFIX

CLI = [sys.executable, "-c", "from imagefactory.cli import main; main()", "unify", "-q"]


def visible(state: dict) -> dict:
    return {k: v for k, v in state.items() if not Path(k).name.startswith(TMP_PREFIX)}


def temp_names(*tops: Path) -> list[str]:
    return [os.path.join(d, n) for top in tops for d, _, files in os.walk(top) for n in files
            if n.startswith(TMP_PREFIX)]


@pytest.mark.root
def test_sigkill_at_random_points_never_loses_a_file(tmp_path):
    guests = [copy_host_subset(tmp_path / f"g{i}", limit=120) for i in range(3)]
    # One guest differs a little: a changed binary and an extra file.
    write(guests[2] / "usr/bin/zz-extra", b"only in guest 2\n" * 100, 0o755)
    original = [tree_state(g) for g in guests]
    store = tmp_path / "store"
    args = [*CLI, *map(str, guests), "--store", str(store), "--mode", "immutable"]
    seed = int(os.environ.get("UNIFY_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    kills = 0
    try:
        for _ in range(8):
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            assert [visible(tree_state(g)) for g in guests] == original, f"seed {seed}"
        done = subprocess.run(args, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert [tree_state(g) for g in guests] == original, f"seed {seed}"
        assert temp_names(*guests, store) == [], f"seed {seed}"
        assert kills > 0, f"seed {seed}: the run was never interrupted; nothing was tested"
        assert maintain.verify(store)[1] == []
        again = subprocess.run([*args, "--json"], capture_output=True, text=True, check=True)
        assert '"linked": 0' in again.stdout and '"hashed": 0' in again.stdout
        # Everything linkable was linked: each entry is shared by all the guests holding it.
        assert all(e.nlink >= 3 for e in Store(store).entries())
    finally:
        clear_flags(store, *guests)
