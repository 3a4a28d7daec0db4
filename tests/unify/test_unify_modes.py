"""Each protection mode for real where this kernel allows it: immutable (chattr +i), reflink on a
loop-mounted XFS the test creates, vserver through the ioctl seam (mainline refuses IXUNLINK)."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
from pathlib import Path

import pytest

from tests.support import need_tool
from tests.support.unify import clear_flags, make_guest, tree_state, write
from unify import maintain, probe
from unify.engine import unify
from unify.store import Store


class VserverKernel:
    """Attribute flags kept per inode the way a VServer kernel keeps them (the ioctl seam)."""

    def __init__(self) -> None:
        self.flags: dict[int, int] = {}
        self.calls: list[tuple[int, int]] = []

    def __call__(self, fd, request, arg):
        ino = os.fstat(fd).st_ino
        if request == probe.FS_IOC_GETFLAGS:
            return struct.pack("l", self.flags.get(ino, 0))
        assert request == probe.FS_IOC_SETFLAGS
        value = struct.unpack("l", arg)[0] & 0xFFFFFFFF
        self.calls.append((ino, value))
        self.flags[ino] = value
        return arg


VS = probe.FS_IMMUTABLE_FL | probe.FS_IXUNLINK_FL


def test_vserver_mode_sets_immutable_and_ixunlink_on_every_entry(tmp_path):
    kernel = VserverKernel()
    guests = [make_guest(tmp_path / f"g{i}") for i in range(3)]
    store = tmp_path / "store"
    s = unify(guests, store, mode="vserver", ioctl=kernel)
    assert s.mode == "vserver" and s.linked == 6
    entries = list(Store(store).entries())
    assert {kernel.flags.get(e.ino) for e in entries} == {VS}
    assert kernel.flags[store.stat().st_ino] == probe.FS_BARRIER_FL  # vhashify's barrier on the store root
    # A re-run that links a new guest lifts the flags for the link() and sets them again.
    g3 = make_guest(tmp_path / "g3")
    kernel.calls.clear()
    s2 = unify([*guests, g3], store, mode="vserver", ioctl=kernel)
    assert s2.linked == 2 and s2.already_unified == 6
    assert [v for _, v in kernel.calls] == [0, VS, 0, VS]
    assert {kernel.flags.get(e.ino) for e in Store(store).entries()} == {VS}
    checked, problems = maintain.verify(store, ioctl=kernel)
    assert checked == 2 and problems == []
    # A run killed between lifting and restoring the flags, after linking every guest: the next
    # run, with nothing left to link, still restores them.
    kernel.flags[entries[0].ino] = 0
    assert unify([*guests, g3], store, mode="vserver", ioctl=kernel).already_unified == 8
    assert kernel.flags[entries[0].ino] == VS
    kernel.flags[entries[0].ino] = probe.FS_IMMUTABLE_FL  # IXUNLINK lost
    assert [p.problem for p in maintain.verify(store, ioctl=kernel)[1]] == ["not protected (vserver flags missing)"]


def test_vserver_gc_unprotects_before_removing(tmp_path):
    kernel = VserverKernel()
    guests = [make_guest(tmp_path / f"g{i}") for i in range(2)]
    store = tmp_path / "store"
    unify(guests, store, mode="vserver", ioctl=kernel)
    for g in guests:  # every guest replaces its copy of the tool (IXUNLINK allows that)
        write(g / "usr/bin/tool.new", b"v2" * 100, 0o755)
        os.rename(g / "usr/bin/tool.new", g / "usr/bin/tool")
    tool_entry = next(e for e in Store(store).entries() if e.nlink == 1)
    res = maintain.gc(store, ioctl=kernel)
    assert res["removed"] == 1
    assert kernel.flags[tool_entry.ino] == 0
    assert not tool_entry.path.exists()


@pytest.mark.root
def test_immutable_mode_protects_and_blocks_updates_as_documented(tmp_path):
    guests = [make_guest(tmp_path / f"g{i}") for i in range(2)]
    store = tmp_path / "store"
    before = [tree_state(g) for g in guests]
    try:
        s = unify(guests, store, mode="immutable")
        assert s.linked == 4 and any("immutable mode" in w for w in s.warnings)
        tool = guests[0] / "usr/bin/tool"
        fd = os.open(tool, os.O_RDONLY)
        assert probe.get_flags(fd) & probe.FS_IMMUTABLE_FL
        os.close(fd)
        # dpkg's write-new-then-rename fails with EPERM; so does an in-place write.
        write(tool.with_name("tool.dpkg-new"), b"v2" * 100, 0o755)
        with pytest.raises(PermissionError) as exc:
            os.rename(tool.with_name("tool.dpkg-new"), tool)
        assert exc.value.errno == errno.EPERM
        with pytest.raises(PermissionError):
            open(tool, "r+b")
        os.unlink(tool.with_name("tool.dpkg-new"))
        assert [tree_state(g) for g in guests] == before
        assert maintain.verify(store)[1] == []
        # --split gives the guest private, writable copies; the other guest stays unified.
        res = maintain.split(guests[0], store)
        assert res["copied"] == 2
        assert tool.stat().st_nlink == 1 and (guests[1] / "usr/bin/tool").stat().st_nlink == 2
        assert [tree_state(g) for g in guests] == before
        write(tool.with_name("tool.dpkg-new"), b"v2" * 100, 0o755)
        os.rename(tool.with_name("tool.dpkg-new"), tool)
        assert maintain.status(store).orphans == 0
    finally:
        clear_flags(store, *guests)


@pytest.fixture
def xfs(tmp_path):
    """A loop-mounted XFS with reflink=1, always unmounted."""
    need_tool("mkfs.xfs", "mount", "umount")
    image, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def shared_extents(path: Path) -> bool:
    out = subprocess.run(["filefrag", "-v", str(path)], capture_output=True, text=True, check=True).stdout
    return "shared" in out


@pytest.mark.root
def test_reflink_mode_on_xfs_shares_extents_but_no_inode(xfs):
    result = probe.probe(xfs)
    assert result.filesystem == "xfs" and result.reflink and result.auto_mode == "reflink"
    guests = [make_guest(xfs / f"g{i}") for i in range(3)]
    big = os.urandom(256 << 10)
    for g in guests:
        write(g / "usr/lib/big.so", big)
    before = [tree_state(g) for g in guests]
    store = xfs / "store"
    s = unify(guests, store, mode="auto")
    assert s.mode == "reflink" and s.linked == 9
    assert [tree_state(g) for g in guests] == before
    libs = [g / "usr/lib/big.so" for g in guests]
    assert len({p.stat().st_ino for p in libs}) == 3 and all(p.stat().st_nlink == 1 for p in libs)
    assert all(shared_extents(p) for p in libs)
    again = unify(guests, store, mode="auto")
    assert (again.hashed, again.linked, again.already_unified) == (0, 0, 9)
    # A guest writing in place only changes its own copy (copy-on-write).
    with open(libs[0], "r+b") as f:
        f.write(b"patched")
    assert libs[1].read_bytes() == big
    assert maintain.verify(store)[1] == []
    # dpkg-style replacement works as well.
    write(libs[2].with_name("big.new"), b"v2" * 1000)
    os.rename(libs[2].with_name("big.new"), libs[2])
    assert libs[1].read_bytes() == big
    assert maintain.status(store).orphans == 0  # guest 1 still refers to the entry
    res = maintain.split(guests[1], store)
    assert res["copied"] == 0  # reflinked guests already own their inodes


@pytest.mark.root
def test_probe_tries_each_mechanism_for_real(tmp_path):
    result = probe.probe(tmp_path)
    assert result.immutable  # root has CAP_LINUX_IMMUTABLE on every local filesystem we use
    assert result.vserver == probe.VIRTUAL_INFO.exists()
    if not result.vserver:
        assert not result.ixunlink  # a mainline kernel refuses 0x08000000
    if result.filesystem == "ext4":
        assert not result.reflink and result.auto_mode is None and "refuse" not in result.reason
    assert list(tmp_path.iterdir()) == []  # the probe files are gone
    assert set(result.to_dict()) == {"vserver", "vci", "immutable", "ixunlink", "reflink", "filesystem",
                                     "auto_mode", "reason"}
