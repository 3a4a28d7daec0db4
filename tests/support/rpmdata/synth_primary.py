"""Measure primary.xml parsing and resolution at Fedora scale on synthetic metadata.

    python tests/support/rpmdata/synth_primary.py [PACKAGES]

Writes a Fedora-sized primary.xml.gz (each package with sonames, file
provides, ~12 requires and a few files; half x86_64, a quarter noarch, a
quarter i686), then measures the streaming parse, the index build, one
resolution and the memoized reload in CPU seconds (so a busy machine does not
skew them), and the parser's own peak Python memory.
"""

from __future__ import annotations

import gzip
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from imagefactory.build.rpm.primary import iter_packages, load_primary, open_decompressed
from imagefactory.build.rpm.resolve import Universe, resolve


def package(i: int, rnd: random.Random) -> str:
    arch = ("x86_64", "x86_64", "noarch", "i686")[i % 4]
    deps = [j for j in (rnd.randrange(i) for _ in range(12)) if j % 4 != 3] if i else []  # never on i686
    reqs = "".join(f'<rpm:entry name="libp{j}.so.1()(64bit)"/>' for j in deps)
    return (
        f'<package type="rpm"><name>p{i}</name><arch>{arch}</arch><version epoch="0" ver="1.{i}" rel="1.fc42"/>'
        f'<checksum type="sha256" pkgid="YES">{i:064x}</checksum><summary>package {i}</summary>'
        f'<description>{"A synthetic package. " * 20}</description><packager>Fedora Project</packager><url/>'
        f'<time file="1" build="1"/><size package="{1000 + i}" installed="1" archive="1"/>'
        f'<location href="Packages/p/p{i}-1.{i}-1.fc42.{arch}.rpm"/><format><rpm:license>MIT</rpm:license>'
        f'<rpm:provides><rpm:entry name="p{i}" flags="EQ" epoch="0" ver="1.{i}" rel="1.fc42"/>'
        f'<rpm:entry name="libp{i}.so.1()(64bit)"/>'
        f'<rpm:entry name="p{i}(x86-64)" flags="EQ" epoch="0" ver="1.{i}" rel="1.fc42"/>'
        f'</rpm:provides><rpm:requires>{reqs}<rpm:entry name="/bin/sh"/></rpm:requires>'
        f'<file>/usr/bin/p{i}</file><file>/etc/p{i}.conf</file>{"<file>/bin/sh</file>" if i == 0 else ""}'
        f'</format></package>\n'
    )


def main(n: int) -> None:
    rnd = random.Random(42)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "primary.xml.gz"
        with gzip.open(path, "wt", compresslevel=1) as f:
            f.write('<?xml version="1.0" encoding="UTF-8"?>\n<metadata xmlns="http://linux.duke.edu/metadata/common" '
                    f'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{n}">\n')
            raw = 0
            for i in range(n):
                raw += f.write(package(i, rnd))
            f.write("</metadata>\n")
        gz_size = path.stat().st_size
        t0 = time.process_time()
        pkgs = load_primary(path, path.name, frozenset({"x86_64", "noarch"}))
        parse = time.process_time() - t0
        tracemalloc.start()
        with open_decompressed(path, path.name) as stream:
            for _ in iter_packages(stream, frozenset()):  # what the parser itself holds
                pass
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        t1 = time.process_time()
        universe = Universe(pkgs)
        t2 = time.process_time()
        chosen = resolve(universe, [f"p{n - 3}", f"p{n - 7}"])
        t3 = time.process_time()
        load_primary(path, path.name, frozenset({"x86_64", "noarch"}))
        memo = time.process_time() - t3
    print(f"{n} packages, {raw / 1e6:.0f} MB XML ({gz_size / 1e6:.0f} MB gz): "
          f"parse {parse:.1f} s (parser peak {peak / 1e6:.1f} MB, {len(pkgs)} kept), "
          f"index {t2 - t1:.2f} s, resolve {t3 - t2:.2f} s -> {len(chosen)} packages, memoized reload {memo:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 70000)
