"""unify/probe.py's composefs probes: fs-verity, EROFS, overlayfs data-only layer and verity=require.

Each answer comes from really trying it on this machine (no stand-ins), so the
tests check that every answer agrees with an independent look at the same
kernel and carries its evidence; the qemu test (tests/kernel/test_kernel_qemu.py)
sees all four say yes on our 6.12 kernel.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unify.probe import ComposefsSupport, find_erofs, probe_composefs, try_fsverity, try_overlay_data_only


def test_fsverity_answer_carries_the_ioctl_result(tmp_path):
    ok, evidence = try_fsverity(tmp_path)
    assert evidence.startswith(f"FS_IOC_ENABLE_VERITY on a probe file in {tmp_path}")
    if ok:
        assert "enabled; FS_IOC_MEASURE_VERITY sha256:" in evidence
    else:
        assert any(name in evidence for name in ("EOPNOTSUPP", "ENOTTY", "EINVAL", "EPERM", "EACCES"))
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, verity or not


def test_fsverity_on_tmpfs_is_refused_with_evidence(tmp_path):
    shm = Path("/dev/shm")
    assert os.access(shm, os.W_OK), "/dev/shm (a tmpfs on every Debian machine) is not writable here"
    ok, evidence = try_fsverity(shm)
    assert not ok and "(tmpfs)" in evidence  # tmpfs has no fs-verity on any kernel


def test_erofs_answer_matches_proc_filesystems():
    listed = "erofs" in Path("/proc/filesystems").read_text().split()
    ok, evidence = find_erofs()
    assert ok == listed or "module" in evidence
    assert find_erofs("nodev\tproc\n\terofs\n") == (True, "erofs listed in /proc/filesystems")
    ok, evidence = find_erofs("nodev\tproc\n", modules=Path("/nonexistent"))
    assert not ok and "neither in /proc/filesystems nor as a module" in evidence


@pytest.mark.root
def test_overlay_mounts_tried_and_undone(tmp_path):
    (data_only, data_evidence), (verity, verity_evidence) = try_overlay_data_only(tmp_path)
    release = tuple(int(x) for x in os.uname().release.split(".")[:2])
    assert data_only == (release >= (6, 5)), data_evidence  # data-only lower layers: Linux 6.5
    assert verity == (release >= (6, 6)), verity_evidence  # overlayfs verity=: Linux 6.6
    assert "lowerdir=A::B" in data_evidence and "verity=require" in verity_evidence
    assert "imagefactory-probe" not in Path("/proc/self/mountinfo").read_text()
    assert list(tmp_path.iterdir()) == []


def test_composefs_support_is_a_typed_record(tmp_path):
    result = probe_composefs(tmp_path)
    assert isinstance(result, ComposefsSupport)
    d = result.to_dict()
    for name in ("fsverity", "erofs", "overlay_data_only", "overlay_verity"):
        assert isinstance(d[name], bool) and d[f"{name}_evidence"]
    assert d["composefs_verity_ready"] == (result.fsverity and result.erofs and result.overlay_data_only
                                           and result.overlay_verity)
