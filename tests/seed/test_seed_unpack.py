"""Verifying and unpacking images: what an OS tree needs survives, hostile members are refused."""

from __future__ import annotations

import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from imagefactory.core.errors import ImageFactoryError, UnsafeInput, VerificationError
from imagefactory.seed import unpack
from tests.support.seed import CAP_NET_RAW, basic_tree, directory, entry, tiny_image, write_image


def _unpack(image: Path, dest: Path) -> None:
    manifest = unpack.load_manifest(image)
    dest.mkdir()
    with open(image, "rb") as fh:
        unpack.verify(fh, manifest, str(image))
        fh.seek(0)
        unpack.unpack(fh, dest)


def test_unpacks_files_links_and_modes(tmp_path):
    image = tiny_image(tmp_path)
    root = tmp_path / "root"
    _unpack(image, root)
    assert (root / "etc/hostname").read_text() == "image\n"
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "usr/bin/su").stat().st_mode) == 0o4755  # setuid kept
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert (root / "usr/bin/tool").stat().st_ino == (root / "usr/bin/tool-again").stat().st_ino
    assert os.readlink(root / "bin") == "usr/bin"
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Etc/UTC"  # absolute, in-guest
    assert os.readlink(root / "dev/fd") == "/proc/self/fd"


@pytest.mark.root
def test_root_unpack_keeps_numeric_owners_devices_and_capabilities(tmp_path):
    image = tiny_image(tmp_path)
    root = tmp_path / "root"
    _unpack(image, root)
    st = (root / "etc/owned").stat()
    assert (st.st_uid, st.st_gid) == (1234, 4321)  # not looked up in the host's passwd
    for name, major, minor in [("null", 1, 3), ("urandom", 1, 9), ("ptmx", 5, 2)]:
        st = os.lstat(root / "dev" / name)
        assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)
    assert stat.S_IMODE(os.lstat(root / "dev/random").st_mode) == 0o644
    assert os.getxattr(root / "usr/bin/ping", "security.capability") == CAP_NET_RAW


def test_image_writer_round_trip(tmp_path):
    """An image from the project's own writer (imagefactory/image.py) unpacks to the same tree."""
    from imagefactory.build.image import walk_sorted
    from imagefactory.build.image import write_image as build_image

    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/motd").write_text("hello\n")
    os.symlink("motd", src / "etc/motd.link")
    os.link(src / "etc/motd", src / "etc/motd.hard")
    image = tmp_path / "rt.tar.zst"
    digest, size, _ = build_image(src, image, epoch=1_700_000_000)
    (tmp_path / "rt.manifest.json").write_text(json.dumps({"name": "rt", "image": {"sha256": digest, "size": size}}))
    root = tmp_path / "root"
    _unpack(image, root)
    assert [p for p, _ in walk_sorted(root)] == [p for p, _ in walk_sorted(src)]
    assert (root / "etc/motd").stat().st_ino == (root / "etc/motd.hard").stat().st_ino


def test_hash_mismatch_is_refused_before_unpacking(tmp_path):
    image = tiny_image(tmp_path)
    manifest_file = unpack.manifest_path(image)
    manifest = json.loads(manifest_file.read_text())
    manifest["image"]["sha256"] = "0" * 64
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(VerificationError, match="does not match"):
        _unpack(image, tmp_path / "root")
    assert not any((tmp_path / "root").iterdir())


def test_missing_manifest_is_refused(tmp_path):
    image = tiny_image(tmp_path)
    unpack.manifest_path(image).unlink()
    with pytest.raises(ImageFactoryError, match="manifest missing"):
        unpack.load_manifest(image)


def test_corrupt_archive_is_one_clear_error(tmp_path):
    image = tmp_path / "bad.tar.zst"
    image.write_bytes(b"not zstd at all")
    (tmp_path / "root").mkdir()
    with open(image, "rb") as fh, pytest.raises(ImageFactoryError, match="not a valid .tar.zst"):
        unpack.unpack(fh, tmp_path / "root")


HOSTILE = {
    "absolute": [entry("/tmp/seed-test-escape", data=b"x")],
    "dotdot": [directory("./etc"), entry("./etc/../../seed-test-escape", data=b"x")],
    "symlink-relative-escape": [entry("./evil", tarfile.SYMTYPE, linkname="../../../../etc/passwd")],
    "write-through-symlink": [entry("./etc2", tarfile.SYMTYPE, linkname="/tmp"),
                              entry("./etc2/seed-test-escape", data=b"x")],
    "file-through-own-symlink": [entry("./passwd", tarfile.SYMTYPE, linkname="/tmp/seed-test-escape"),
                                 entry("./passwd", data=b"x")],
    "dir-replaced-by-symlink": [entry("./etc", tarfile.SYMTYPE, linkname="/tmp")],
    "hardlink-absolute": [entry("./shadow", tarfile.LNKTYPE, linkname="/etc/shadow")],
    "hardlink-dotdot": [entry("./shadow", tarfile.LNKTYPE, linkname="../../etc/shadow")],
    "hardlink-via-symlink": [entry("./hostetc", tarfile.SYMTYPE, linkname="/etc"),
                             entry("./shadow", tarfile.LNKTYPE, linkname="hostetc/shadow")],
    "dir-over-symlink": [entry("./x", tarfile.SYMTYPE, linkname="/tmp"), directory("./x", 0o700)],
    "hardlink-to-symlink": [entry("./s", tarfile.SYMTYPE, linkname="/etc/shadow"),
                            entry("./h", tarfile.LNKTYPE, linkname="./s")],
    "hardlink-to-missing": [entry("./h", tarfile.LNKTYPE, linkname="./nothere")],
    "block-device": [directory("./dev"), entry("./dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0)],
    "chr-outside-set": [directory("./dev"), entry("./dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1)],
    "chr-wrong-numbers": [directory("./dev"), entry("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=1)],
    "chr-outside-dev": [entry("./null", tarfile.CHRTYPE, devmajor=1, devminor=3)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused(tmp_path, case):
    image = write_image(tmp_path, "evil", basic_tree(devices=False) + HOSTILE[case])
    with pytest.raises(UnsafeInput):
        _unpack(image, tmp_path / "root")
    assert not Path("/tmp/seed-test-escape").exists()


def test_secure_dev_set_matches_util_vserver():
    assert unpack.SECURE_DEV == {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
                                 "urandom": (1, 9), "tty": (5, 0), "ptmx": (5, 2)}
