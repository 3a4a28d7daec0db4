"""One self-contained HTML page for a Report: inline CSS and SVG, no script, no network.

A provider mails this page around or opens it offline on the host, so everything it
needs is inside it. Every string from a guest (paths, package names) is escaped: guest
trees are hostile input and file names can contain markup.
"""

from __future__ import annotations

import html
import math

from imagefactory.core.units import human
from unify.report.model import FileItem, Report

PRIVATE, SHARED, WITHOUT, WITH = "#c8553d", "#2a9d8f", "#c8553d", "#2a9d8f"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1120px;
color:#1d2935;padding:0 16px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde3ea;padding-bottom:4px}
.sub{color:#5b6b7b;margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 180px;border:1px solid #dde3ea;border-radius:8px;padding:10px 14px;background:#f7f9fb}
.card b{display:block;font-size:22px}.card span{color:#5b6b7b;font-size:12px}
table{border-collapse:collapse;width:100%;margin:6px 0 4px;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid #edf0f3;text-align:left;vertical-align:top}
th{background:#f2f5f8;font-weight:600}td.n,th.n{text-align:right;white-space:nowrap}
td.p{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;word-break:break-all}
svg{display:block;max-width:100%;height:auto}svg text{font:12px system-ui,sans-serif;fill:#1d2935}
.legend{display:flex;gap:18px;margin:4px 0;font-size:13px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.note{color:#5b6b7b;font-size:12.5px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ticks(top: float, count: int = 5) -> tuple[list[float], float, str]:
    """Round tick values for an axis reaching `top` bytes, in one binary unit."""
    unit, name = 1.0, "B"
    for u, n in ((1024.0**4, "TiB"), (1024.0**3, "GiB"), (1024.0**2, "MiB"), (1024.0, "KiB")):
        if top >= u:
            unit, name = u, n
            break
    raw = max(top / unit / count, 1e-9)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks = [i * step * unit for i in range(int(top / unit / step) + 2)]
    return ticks, unit, name


def _tick_label(value: float, unit: float, name: str) -> str:
    """As many decimals as the tick needs: 0.25 GiB stays 0.25 GiB (".1f" made it 0.2)."""
    v = round(value / unit, 6)  # steps are 1, 2, 2.5 or 5 x 10^k: six places absorb float noise
    return "0" if v == 0 else f"{v:g} {name}"


def _axes(width: int, height: int, left: int, bottom: int, top_pad: int, ymax: float) -> tuple[list[str], float]:
    """Horizontal grid lines with labels; returns the SVG parts and the y scale's maximum."""
    ticks, unit, name = _ticks(ymax)
    ymax = ticks[-1] if ticks[-1] > 0 else 1.0
    plot_h = height - bottom - top_pad
    parts = []
    for t in ticks:
        y = top_pad + plot_h - plot_h * t / ymax
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e8ee"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(_tick_label(t, unit, name))}</text>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top_pad}" y2="{height - bottom}" stroke="#8895a3"/>')
    return parts, ymax


MAX_BARS = 50  # beyond this many guests, one bar stands for a group of consecutive guests


def bar_chart(report: Report, width: int = 1080, height: int = 380) -> str:
    """One stacked column per guest: private bytes below, shared bytes above.

    With more than MAX_BARS guests, each column is the mean of a run of consecutive guests
    (at most MAX_BARS columns, labelled with the guest numbers they cover): 1,000 bars of
    one pixel each show nothing and make the page heavy.
    """
    guests = report.guests
    per = max(1, math.ceil(len(guests) / MAX_BARS))
    bars = []  # (label, tooltip, private, shared)
    for start in range(0, len(guests), per):
        run = guests[start:start + per]
        private = sum(g.private_bytes for g in run) / len(run)
        shared = sum(g.shared_bytes for g in run) / len(run)
        ratio = 100 * shared / (private + shared) if private + shared else 0.0
        if per == 1:
            g = run[0]
            bars.append((_short(g.name), f"{g.name}: private {human(g.private_bytes)}, shared "
                         f"{human(g.shared_bytes)} ({100 * g.share_ratio:.1f}%)", private, shared))
        else:
            span = f"{start + 1}–{start + len(run)}"
            bars.append((span, f"guests {span} ({run[0].name} … {run[-1].name}), mean per guest: private "
                         f"{human(private)}, shared {human(shared)} ({ratio:.1f}%)", private, shared))
    longest = max((len(label) for label, *_ in bars), default=1)
    left, top_pad = 78, 12
    bottom = 28 + int(longest * 7 * 0.65) if len(bars) <= 40 or per > 1 else 40  # rotated labels need room
    ymax: float = max((p + s for _, _, p, s in bars), default=0) or 1
    parts, ymax = _axes(width, height, left, bottom, top_pad, ymax)
    plot_w, plot_h = width - left - 20, height - bottom - top_pad
    slot = plot_w / max(len(bars), 1)
    bar = max(min(slot * 0.7, 60), 1.5)
    for i, (label, tip, private, shared) in enumerate(bars):
        x = left + 6 + i * slot + (slot - bar) / 2
        y0 = top_pad + plot_h
        hp = plot_h * private / ymax
        hs = plot_h * shared / ymax
        parts.append(f'<g><title>{_e(tip)}</title>'
                     f'<rect x="{x:.1f}" y="{y0 - hp:.1f}" width="{bar:.1f}" height="{hp:.1f}" fill="{PRIVATE}"/>'
                     f'<rect x="{x:.1f}" y="{y0 - hp - hs:.1f}" width="{bar:.1f}" height="{hs:.1f}" '
                     f'fill="{SHARED}"/></g>')
        if len(bars) <= 40 or per > 1:
            cx = x + bar / 2
            parts.append(f'<text x="{cx:.1f}" y="{y0 + 14}" text-anchor="end" '
                         f'transform="rotate(-40 {cx:.1f} {y0 + 14})">{_e(label)}</text>')
        elif i % 5 == 0 or i == len(bars) - 1:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{y0 + 16}" text-anchor="middle">{i + 1}</text>')
    parts.append(_baseline(left, width, top_pad + plot_h))
    title = "Private and shared bytes per guest"
    if per > 1:
        title += f" (each column: the mean of {per} consecutive guests)"
    return _svg(width, height, title, parts)


def curve_chart(report: Report, width: int = 1080, height: int = 380) -> str:
    """Disk used by guests 1..n, with and without unification."""
    points = report.cumulative
    left, bottom, top_pad = 78, 46, 12
    ymax = max((max(p["without_bytes"], p["with_bytes"]) for p in points), default=0) or 1
    parts, ymax = _axes(width, height, left, bottom, top_pad, ymax)
    plot_w, plot_h = width - left - 30, height - bottom - top_pad
    n = len(points)

    def xy(i: int, value: int) -> tuple[float, float]:
        x = left + 10 + (plot_w - 10) * (i / (n - 1) if n > 1 else 0.5)
        return x, top_pad + plot_h - plot_h * value / ymax

    for key, colour, label in (("without_bytes", WITHOUT, "without unification"),
                               ("with_bytes", WITH, "with unification")):
        coords = [xy(i, p[key]) for i, p in enumerate(points)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2.5" '
                     f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in coords)}"/>')
        radius = 3.5 if n <= 60 else 2
        dot_every = max(1, math.ceil(n / 100))  # at most ~100 dots per line (1,000 guests stay light)
        for i, ((x, y), p) in enumerate(zip(coords, points, strict=True)):
            if i % dot_every and i != n - 1:
                continue
            tip = _e(f"{p['guests']} guests ({p['name']}): {label} {human(p[key])}")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{colour}">'
                         f'<title>{tip}</title></circle>')
    every = max(1, math.ceil(n / 20))
    for i in range(n):
        if i % every == 0 or i == n - 1:
            x, _ = xy(i, 0)
            parts.append(f'<text x="{x:.1f}" y="{top_pad + plot_h + 16}" text-anchor="middle">{i + 1}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle">guests</text>')
    parts.append(_baseline(left, width, top_pad + plot_h))
    return _svg(width, height, "Cumulative disk use with and without unification", parts)


def _baseline(left: int, width: int, y: float) -> str:
    return f'<line x1="{left}" x2="{width - 10}" y1="{y}" y2="{y}" stroke="#8895a3"/>'


def _svg(width: int, height: int, title: str, parts: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
            + "".join(parts) + "</svg>")


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _table(headers: list[tuple[str, bool]], rows: list[list[tuple[str, str]]]) -> str:
    """headers: (title, numeric); cells: (text, css class)."""
    head = "".join(f'<th class="n">{_e(h)}</th>' if num else f"<th>{_e(h)}</th>" for h, num in headers)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{_e(t)}</td>' for t, c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _files_table(items: list[FileItem], saved: bool) -> str:
    headers = [("Saved", True)] if saved else []
    headers += [("Size", True), ("Disk", True)]
    headers += [("Copies", True)] if saved else [("Guest", False)]
    headers += [("Package", False), ("Path", False)]
    rows = []
    for i in items:
        row = [(human(i.saved_bytes), "n")] if saved else []
        row += [(human(i.size), "n"), (human(i.disk_bytes), "n")]
        row += [(str(i.copies), "n")] if saved else [(i.guest, "")]
        row += [(i.package or "–", ""), (i.path, "p")]
        rows.append(row)
    return _table(headers, rows)


def render_html(report: Report, top: int = 20) -> str:
    """The whole page as a string (the caller writes it atomically)."""
    t = report.totals
    what_if = report.mode == "what-if"
    cards = [
        ("Without unification", human(t["without_unification_bytes"]), "sum of each guest's du -s"),
        ("After unification" if what_if else "Real disk use", human(t["disk_bytes"]),
         "if unified now" if what_if else "each inode once (du -s over all)"),
        ("Saved", f"{human(t['saved_bytes'])} ({t['saved_percent']:.1f}%)",
         f"{t['guests']} guests, {t['files']:,} files"),
    ]
    if report.store is not None:
        cards.append(("Store entries", f"{report.store.entries:,}", f"{report.store.orphans:,} with no guest link"))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Disk-savings report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Disk-savings report</h1>",
        f'<p class="sub">{"What unifying these roots would save" if what_if else _e(report.mode) + " sharing"}'
        f" · {t['guests']} guests · schema {_e(1)}</p>",
        '<div class="cards">'
        + "".join(f'<div class="card"><span>{_e(a)}</span><b>{_e(b)}</b><span>{_e(c)}</span></div>'
                  for a, b, c in cards)
        + "</div>",
        "<h2>Per guest</h2>",
        f'<div class="legend"><span><i class="sw" style="background:{PRIVATE}"></i>private</span>'
        f'<span><i class="sw" style="background:{SHARED}"></i>'
        f'{"would be shared" if what_if else "shared through the store"}'
        "</span></div>",
        bar_chart(report),
        *([f'<p class="note">{len(report.guests)} guests: each column is the mean of '
           f'{math.ceil(len(report.guests) / MAX_BARS)} consecutive guests; the table below lists every guest.</p>']
          if len(report.guests) > MAX_BARS else []),
        "<h2>Cumulative disk use</h2>",
        f'<div class="legend"><span><i class="sw" style="background:{WITHOUT}"></i>without unification</span>'
        f'<span><i class="sw" style="background:{WITH}"></i>with unification</span></div>',
        curve_chart(report),
        '<p class="note">Guests in the order given'
        f'{"" if what_if else "; with unification includes the store overhead"}.</p>',
        "<h2>Guests</h2>",
        _table(
            [("Guest", False), ("Files", True), ("Apparent", True), ("Disk alone", True), ("Private", True),
             ("Would share" if what_if else "Shared", True), ("Ratio", True)],
            [[(g.name, ""), (f"{g.files:,}", "n"), (human(g.apparent_bytes), "n"), (human(g.disk_bytes), "n"),
              (human(g.private_bytes), "n"), (human(g.shared_bytes), "n"), (f"{100 * g.share_ratio:.1f}%", "n")]
             for g in report.guests],
        ),
    ]
    totals = [("apparent size (sum over guests)", t["apparent_bytes"]),
              ("disk use without unification", t["without_unification_bytes"])]
    if what_if:
        totals.append(("disk use now (each inode once)", t["current_disk_bytes"]))
    totals += [("after unification" if what_if else "real disk use", t["disk_bytes"]), ("saved", t["saved_bytes"])]
    out += ["<h2>Totals</h2>",
            _table([("Figure", False), ("Size", True), ("Bytes", True)],
                   [[(a, ""), (human(b), "n"), (f"{b:,}", "n")] for a, b in totals])]
    if report.mode == "reflink":
        out.append('<p class="note">du counts reflinked extents once per file and reports '
                   f'{human(t["du_disk_bytes"])}.</p>')
    s = report.store
    if s is not None:
        out += [f"<h2>Store</h2><p>{_e(s.path)}: {s.entries:,} entries, {_e(human(s.disk_bytes))} on disk.</p>"]
        if s.overflow_entries:
            out.append(f"<p>Link limit: {s.overflow_entries:,} overflow entries (contents linked more often "
                       "than the filesystem allows per inode).</p>")
        if report.mode == "inode":
            out.append(_table(
                [("Links", False), ("Entries", True), ("Disk", True)],
                [[(str(h["min_links"]) if h["min_links"] == h["max_links"]
                   else f"{h['min_links']}–{h['max_links']}", ""),
                  (f"{h['entries']:,}", "n"), (human(h["disk_bytes"]), "n")] for h in s.link_histogram],
            ))
    if report.top_shared:
        out += ["<h2>Top shared files</h2>", _files_table(report.top_shared[:top], saved=True)]
    if report.top_packages:
        out += ["<h2>Top packages</h2>",
                _table([("Saved", True), ("Files", True), ("Package", False)],
                       [[(human(p["saved_bytes"]), "n"), (f"{p['files']:,}", "n"), (p["package"], "")]
                        for p in report.top_packages[:top]])]
    lib = report.shared_libraries
    out += ["<h2>Shared libraries</h2>",
            f"<p>{lib['files']:,} unified <code>.so</code> files ({_e(human(lib['bytes']))}) stand for "
            f"{lib['copies']:,} copies: when every guest maps them, the page cache holds "
            f"{_e(human(lib['page_cache_saved_bytes']))} less.</p>"]
    if lib["top"]:
        out.append(_files_table([FileItem(**i) for i in lib["top"][:top]], saved=True))
    private = report.largest_private()
    if private:
        out += ["<h2>Largest private files</h2>", '<p class="note">What keeps guests from sharing more.</p>',
                _files_table(private[:top], saved=False)]
    out.append("</body></html>\n")
    return "\n".join(out)
