"""SIGKILL `imagefactory unify` at random instants on trees of real host files: every guest path
must still hold its original content (or the identical unified file), and the next run must
finish the job and leave no temporary names behind."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.unify import clear_flags, copy_host_subset, tree_state, write
from unify import maintain
from unify.store import Store
from unify.walk import TMP_PREFIX

CLI = [sys.executable, "-c", "from imagefactory.cli import main; main()", "unify", "-q"]


def visible(state: dict) -> dict:
    return {k: v for k, v in state.items() if not Path(k).name.startswith(TMP_PREFIX)}


def temp_names(*tops: Path) -> list[str]:
    return [os.path.join(d, n) for top in tops for d, _, files in os.walk(top) for n in files
            if n.startswith(TMP_PREFIX) or Path(d).name == "tmp"]


@pytest.mark.root
def test_sigkill_at_random_points_never_loses_a_file(tmp_path):
    templates = [copy_host_subset(tmp_path / f"t{i}", limit=120) for i in range(3)]
    write(templates[2] / "usr/bin/zz-extra", b"only in guest 2\n" * 100, 0o755)  # one guest differs
    original = [tree_state(t) for t in templates]
    work = tmp_path / "work"
    guests = [work / f"g{i}" for i in range(3)]
    store = tmp_path / "store"
    args = [*CLI, *map(str, guests), "--store", str(store), "--mode", "immutable"]
    seed = int(os.environ.get("UNIFY_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)

    def fresh_guests(new_store: bool) -> None:
        clear_flags(work, store)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        for t, g in zip(templates, guests):
            subprocess.run(["cp", "-a", str(t), str(g)], check=True)
        if new_store:
            shutil.rmtree(store, ignore_errors=True)

    try:
        fresh_guests(new_store=True)
        started = time.monotonic()
        subprocess.run(args, check=True, capture_output=True)
        full = time.monotonic() - started
        for iteration in range(6):
            # Even iterations also start without a store (kills land in entry creation too).
            delay = rng.uniform(0.1, 0.9) * full
            while True:  # a run that finished before its kill tested nothing: retry sooner
                fresh_guests(new_store=iteration % 2 == 0)
                proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(delay)
                killed = proc.poll() is None
                if killed:
                    proc.send_signal(signal.SIGKILL)
                proc.wait()
                if killed or delay < 0.05:
                    break
                delay /= 2
            where = f"seed {seed}, iteration {iteration}, killed after {delay:.2f}s"
            assert [visible(tree_state(g)) for g in guests] == original, where
            done = subprocess.run(args, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            assert [tree_state(g) for g in guests] == original, where
            assert temp_names(*guests, store) == [], where
            assert maintain.verify(store)[1] == [], where
            # Everything linkable was linked: each entry is shared by every guest holding it.
            assert all(e.nlink >= 4 for e in Store(store).entries() if e.nlink > 1), where
    finally:
        clear_flags(work, store)
