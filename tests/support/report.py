"""Builders for report tests: unified guest fixtures and du(1) cross-checks."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import xxhash

SIZES = {"a": 10_000, "b": 50_000, "c": 3_000, "d": 7_000}


def _entry(store: Path, tag: str, size: int) -> Path:
    path = store / "objects" / (tag * 2) / f"{tag * 32}-{tag * 16}-{size}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def build_fixture(base: Path, guests: int = 3) -> dict:
    """A store and guests linked to it the way unify's hardlink mode leaves them.

    entry a (a .so) is linked into every guest, and twice into g1; b into all guests but the
    last, which keeps a private copy; c has no guest (orphan); d only into g1. g2 also has a
    private hard-linked pair (x, y) and every guest a symlink pointing out of the tree.
    """
    store = base / "store"
    (store / "guests").mkdir(parents=True)
    (store / ".imagefactory-store").write_text('{"format": 1, "hash": "xxh3-128", "mode": "hardlink"}\n')
    (store / ".lock").write_text("")
    entries = {tag: _entry(store, tag, size) for tag, size in SIZES.items()}
    outside = base / "outside-secret"
    outside.write_bytes(os.urandom(100_000))
    roots = []
    for i in range(1, guests + 1):
        g = base / f"g{i}"
        roots.append(g)
        for d in ("usr/lib/x86_64-linux-gnu", "usr/bin", "usr/share/doc", "etc", "var/lib/dpkg/info"):
            (g / d).mkdir(parents=True)
        os.symlink("usr/bin", g / "bin")  # merged /usr
        os.link(entries["a"], g / "usr/lib/x86_64-linux-gnu/libfoo.so.1")
        if i < guests:
            os.link(entries["b"], g / "usr/bin/big")
        else:
            (g / "usr/bin/big").write_bytes(entries["b"].read_bytes())
        if i == 1:
            os.link(entries["d"], g / "usr/share/doc/d")
            os.link(entries["a"], g / "usr/lib/x86_64-linux-gnu/libfoo.so.1.0")
        if i == 2:
            (g / "usr/share/doc/x").write_bytes(os.urandom(20_000))
            os.link(g / "usr/share/doc/x", g / "usr/share/doc/y")
        (g / "etc/conf").write_bytes(os.urandom(1000 * i))
        os.symlink(str(outside), g / "etc/escape")
        (g / "var/lib/dpkg/info/libfoo1:amd64.list").write_text(
            "/.\n/usr\n/usr/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu/libfoo.so.1\n")
        (g / "var/lib/dpkg/info/bigpkg.list").write_text("/bin/big\n")  # merged-/usr alias
    return {"store": store, "roots": roots, "entries": entries}


def du(*paths: Path, apparent: bool = False) -> int:
    cmd = ["du", "-s", "-B1", *(["--apparent-size"] if apparent else []), *map(str, paths)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.split()[0]) if len(paths) == 1 else sum(int(line.split()[0]) for line in out.splitlines())


def du_total(*paths: Path, apparent: bool = False) -> int:
    """du over several trees at once: hard links count once across all of them (-c total)."""
    cmd = ["du", "-s", "-c", "-B1", *(["--apparent-size"] if apparent else []), *map(str, paths)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(out.splitlines()[-1].split()[0])



MTIME = 1_700_000_000


def build_copies(base: Path, guests: int = 3) -> list[Path]:
    """Guests made of copies (no links): what a fresh build of the same packages looks like.

    usr/lib/common.so and usr/bin/tool are identical everywhere; usr/bin/tool is mode 0700 in
    the last guest (different metadata = not linkable); tiny files are below unify's minimum
    size; etc/ is on unify's default exclude list; one file per guest is its own.
    """
    common = os.urandom(40_000)
    tool = os.urandom(12_345)
    tiny = b"tiny\n"
    roots = []
    for i in range(guests):
        g = base / f"guest{i}"
        roots.append(g)
        for d in ("usr/lib", "usr/bin", "usr/share", "etc"):
            (g / d).mkdir(parents=True)
        files = {
            "usr/lib/common.so": common,
            "usr/bin/tool": tool,
            "usr/share/tiny": tiny,
            "etc/config": common,
            "usr/share/own": os.urandom(9_000 + i),
        }
        for rel, data in files.items():
            (g / rel).write_bytes(data)
            os.utime(g / rel, (MTIME, MTIME))
        if i == 0:  # a second copy inside the same guest
            (g / "usr/share/common-copy").write_bytes(common)
            os.utime(g / "usr/share/common-copy", (MTIME, MTIME))
        if i == guests - 1:
            os.chmod(g / "usr/bin/tool", 0o700)
    return roots



def _data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def build_mixed(base: Path, guests: int = 4) -> list[Path]:
    """Unlinked guests with every case `report --what-if` tells apart (deterministic content).

    Shared by all guests: usr/lib/libc.so.6, usr/bin/perl (plus a second name, usr/bin/perl5.36,
    hard-linked in the last guest), usr/share/doc/big (a second copy in guest2); renamed in the
    last guest: usr/share/doc/renamed -> other-name; usr/bin/tool is mode 0700 in the last guest
    (its own group); usr/lib/tie.so has one content in guests 0-1 and another of the same size in
    the others (two groups with equal savings and path, the first met listed first, though its
    key sorts last); usr/share/conf.d/setting is a dpkg conffile in guest0 only. Private:
    etc/config (excluded), usr/share/tiny (below the minimum size), usr/share/own (a size met
    once), usr/share/same-size (a size every guest has, contents all differ), usr/share/doc/x
    and its hard link y in the last guest, var/lib/dpkg/info (excluded).
    """
    lib, perl, big, renamed, setting, tool = (_data(s, n) for s, n in
                                              ((1, 30_000), (2, 20_000), (3, 60_000), (4, 5_000), (5, 17_000),
                                               (6, 12_345)))
    x, y = _data(7, 8_000), _data(8, 8_000)
    if xxhash.xxh3_128(x).digest() < xxhash.xxh3_128(y).digest():
        x, y = y, x
    roots = []
    for i in range(guests):
        g = base / f"guest{i}"
        roots.append(g)
        for d in ("usr/lib", "usr/bin", "usr/share/doc", "usr/share/conf.d", "etc", "var/lib/dpkg/info"):
            (g / d).mkdir(parents=True)
        last = i == guests - 1
        files = {
            "usr/lib/libc.so.6": lib,
            "usr/bin/perl": perl,
            "usr/lib/tie.so": x if i < 2 else y,
            "usr/share/doc/big": big,
            "usr/share/doc/" + ("other-name" if last else "renamed"): renamed,
            "etc/config": lib,
            "usr/share/conf.d/setting": setting,
            "usr/share/tiny": b"tiny\n",
            "usr/share/own": _data(100 + i, 9_000 + i),
            "usr/share/same-size": _data(200 + i, 7_777),
            "usr/bin/tool": tool,
            "var/lib/dpkg/info/libc6:amd64.list": b"/.\n/usr\n/usr/lib\n/usr/lib/libc.so.6\n",
            "var/lib/dpkg/info/perl-base.list": b"/usr/bin/perl\n/usr/bin/perl5.36\n",
            "var/lib/dpkg/info/tie.list": b"/usr/lib/tie.so\n/usr/share/doc/big\n",
        }
        if i == 0:
            files["var/lib/dpkg/info/settings.conffiles"] = b"/usr/share/conf.d/setting\n"
        if i == 2:
            files["usr/share/doc/big-copy"] = big
        if last:
            files["usr/share/doc/x"] = _data(9, 11_111)
        for rel, content in files.items():
            (g / rel).write_bytes(content)
            os.utime(g / rel, (MTIME, MTIME))
        if last:
            os.link(g / "usr/bin/perl", g / "usr/bin/perl5.36")
            os.link(g / "usr/share/doc/x", g / "usr/share/doc/y")
            os.chmod(g / "usr/bin/tool", 0o700)
        os.symlink("usr/bin", g / "bin")
    return roots
