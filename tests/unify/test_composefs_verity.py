"""The pure-Python fs-verity digest against fsverity-utils, and the listing format (no root needed)."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from tests.support import need_tool
from unify.composefs import dump, units
from unify.composefs.verity import VerityHasher, digest_bytes, digest_fd

SIZES = [0, 1, 100, 4095, 4096, 4097, 8192, 4096 * 128, 4096 * 128 + 1, 4096 * 129 + 5, 4096 * 128 * 128 + 7]


def test_digest_matches_fsverity_digest(tmp_path):
    need_tool("fsverity")
    paths = []
    for size in SIZES:
        p = tmp_path / f"f{size}"
        p.write_bytes(os.urandom(size))
        paths.append(p)
    out = subprocess.run(["fsverity", "digest", "--hash-alg=sha256", "--block-size=4096", *map(str, paths)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    expected = {line.split()[1]: line.split()[0].removeprefix("sha256:") for line in out}
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            assert digest_fd(fd, chunk=5000) == (expected[str(p)], p.stat().st_size), p.name
        finally:
            os.close(fd)


def test_chunking_does_not_change_the_digest():
    data = os.urandom(4096 * 130 + 17)
    h = VerityHasher()
    for i in range(0, len(data), 777):
        h.update(data[i:i + 777])
    assert h.hexdigest() == digest_bytes(data)


def test_listing_round_trip_with_awkward_names_and_xattrs():
    entries = [
        dump.Entry("/", stat.S_IFDIR | 0o755, mtime_ns=1_700_000_000_123_456_789),
        dump.Entry("/a dir=x\\y", stat.S_IFDIR | 0o700, uid=5, gid=6),
        dump.Entry("/a dir=x\\y/-", stat.S_IFREG | 0o4755, size=10, digest="ab" * 32, payload="ab/" + "ab" * 31,
                   xattrs={"security.capability": b"\x00\x01 =\n", "user.k=v": b""}),
        dump.Entry("/l\u00e9", stat.S_IFLNK | 0o777, payload="/etc/x y", size=8),
        dump.Entry("/h", stat.S_IFREG | 0o4755, hardlink=True, payload="/a dir=x\\y/-", size=10, digest="ab" * 32),
        dump.Entry("/dev-null", stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3)),
    ]
    text = dump.render(entries)
    assert len(text.splitlines()) == len(entries)
    back = list(dump.parse(text))
    assert [dump.format_entry(e) for e in back] == [dump.format_entry(e) for e in entries]
    assert back[2].xattrs == {"security.capability": b"\x00\x01 =\n", "user.k=v": b""}
    assert back[3].path == "/l\u00e9" and back[4].hardlink and back[0].mtime_ns == 1_700_000_000_123_456_789


def test_only_object_files_count_as_used(tmp_path):
    entries = [dump.Entry("/", stat.S_IFDIR | 0o755),
               dump.Entry("/f", stat.S_IFREG | 0o644, size=3, digest="cd" * 32, payload="cd/" + "cd" * 31),
               dump.Entry("/g", stat.S_IFREG | 0o644, hardlink=True, payload="/f", digest="cd" * 32),
               dump.Entry("/e", stat.S_IFREG | 0o644)]
    dump.write(tmp_path / "l.dump", entries)
    assert dump.digests(tmp_path / "l.dump") == {"cd" * 32}


@pytest.mark.parametrize("path", ["/vservers/web1", "/srv/.composefs/web-1/erofs", "/a b/ü", "/"])
def test_unit_names_match_systemd_escape(path):
    need_tool("systemd-escape")
    expected = subprocess.run(["systemd-escape", "--path", "--suffix=mount", path], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert units.unit_name(path) == expected
