"""The HTML report: self-contained, escaped, written atomically, and rendered by real headless chromium."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from imagefactory.core.units import human
from tests.support import need_tool
from tests.support.report import build_fixture
from unify.report.html import PRIVATE, SHARED, render_html
from unify.report.measure import measure

HOSTILE = '<img src=x onerror="alert(1)">.so'


@pytest.fixture
def report(tmp_path: Path):
    fx = build_fixture(tmp_path, guests=12)
    g1, g2 = fx["roots"][:2]
    (g1 / "usr/lib" / HOSTILE).write_bytes(os.urandom(9000))  # shared by two guests, no store
    os.link(g1 / "usr/lib" / HOSTILE, g2 / "usr/lib" / HOSTILE)
    return measure(fx["roots"], fx["store"])


def test_self_contained_and_escaped(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=""", page.replace("&lt;img src=x", ""))
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"] * 2  # the SVG namespace only
    assert HOSTILE not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.so" in page
    assert page.count("<svg") == 2 and page.count("<rect") == 2 * len(report.guests)
    assert page.count("<polyline") == 2


def test_cli_writes_html_atomically(tmp_path):
    fx = build_fixture(tmp_path / "fx")
    out = tmp_path / "out" / "savings.html"
    exe = os.path.join(os.path.dirname(os.sys.executable), "imagefactory")
    subprocess.run([exe, "report", "-q", "--store", str(fx["store"]), *map(str, fx["roots"]), "--html", str(out)],
                   check=True, capture_output=True)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert os.listdir(out.parent) == ["savings.html"]  # no staging file left behind


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG (what chromium writes) into rows of pixel bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
        prev = line
    return width, height, rows


def _rgb(colour: str) -> bytes:
    return bytes.fromhex(colour.lstrip("#"))


def test_renders_in_headless_chromium(report, tmp_path):
    need_tool("chromium")
    page = tmp_path / "savings.html"
    page.write_text(render_html(report))
    shot = tmp_path / "out.png"
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--run-all-compositor-stages-before-draw",  # else long pages may be captured half-painted
             f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
            check=True, capture_output=True, timeout=90,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    keep = os.environ.get("REPORT_SCREENSHOT")  # set it to look at the page yourself
    if keep:
        shutil.copy(shot, keep)
    data = shot.read_bytes()
    assert len(data) > 20_000
    width, height, rows = _png_pixels(data)
    assert (width, height) == (1200, 1600)
    counts = {PRIVATE: 0, SHARED: 0, "#ffffff": 0}
    wanted = {_rgb(c): c for c in counts}
    for row in rows[::2]:
        for x in range(0, len(row), 6):
            c = wanted.get(row[x:x + 3])
            if c:
                counts[c] += 1
    sampled = (height // 2) * (width // 2)
    # Both stacked-bar colours are painted in quantity (bars, curves, legend), on a white page.
    assert counts[PRIVATE] > 2000 and counts[SHARED] > 2000, counts
    assert 0.3 * sampled < counts["#ffffff"] < 0.97 * sampled, counts


def test_axis_labels_keep_the_decimals_they_need():
    from unify.report.html import _tick_label, _ticks

    ticks, unit, name = _ticks(1.2 * 1024**3)
    assert [_tick_label(t, unit, name) for t in ticks] == \
        ["0", "0.25 GiB", "0.5 GiB", "0.75 GiB", "1 GiB", "1.25 GiB"]
    ticks, unit, name = _ticks(3.6 * 1024**2)  # step 0.75 would need ".2f" too; steps are 1, 2, 2.5, 5
    assert [_tick_label(t, unit, name) for t in ticks][:3] == ["0", "1 MiB", "2 MiB"]


def test_many_guests_are_aggregated_into_at_most_fifty_columns():
    """1,000 guests: 50 columns, each the mean of 20 consecutive guests, labelled with their numbers."""
    from unify.report.html import MAX_BARS, bar_chart, curve_chart
    from unify.report.model import GuestFigures, Report

    guests = [GuestFigures(f"/vservers/g{i:04d}", f"g{i:04d}", files=4000, disk_bytes=(100 + i % 20) << 20,
                           shared_bytes=90 << 20) for i in range(1000)]
    cumulative = [{"guests": i + 1, "name": g.name, "without_bytes": (i + 1) * (100 << 20),
                   "with_bytes": (i + 1) * (20 << 20)} for i, g in enumerate(guests)]
    report = Report("inode", guests, None, {}, [], [], {}, cumulative)
    bars = bar_chart(report)
    assert bars.count("<rect") == 2 * MAX_BARS
    assert ">1–20<" in bars and ">981–1000<" in bars and "mean of 20 consecutive guests" in bars
    mean_private = sum(g.private_bytes for g in guests[:20]) / 20
    assert f"private {human(mean_private)}" in bars
    assert curve_chart(report).count("<circle") <= 2 * 101
    few = Report("inode", guests[:MAX_BARS], None, {}, [], [], {}, cumulative[:MAX_BARS])
    assert bar_chart(few).count("<rect") == 2 * MAX_BARS and "<title>g0049: private" in bar_chart(few)
