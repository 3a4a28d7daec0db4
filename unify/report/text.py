"""The terminal report: per-guest table, totals, store, top lists."""

from __future__ import annotations

from imagefactory.core.units import human
from unify.report.model import Report


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_text(report: Report, top: int) -> str:
    """The terminal report: per-guest table, totals, store, top lists."""
    t = report.totals
    what_if_mode = report.mode == "what-if"
    kind = "what if these roots were unified" if what_if_mode else report.mode + " sharing"
    out = [f"Disk-savings report ({kind})", ""]
    shared_head = "Would share" if what_if_mode else "Shared"
    rows = [
        [g.name, f"{g.files:,}", human(g.apparent_bytes), human(g.disk_bytes), human(g.private_bytes),
         human(g.shared_bytes), f"{100 * g.share_ratio:.1f}%"]
        for g in report.guests
    ]
    out += _table(["Guest", "Files", "Apparent", "Disk alone", "Private", shared_head, "Ratio"], rows,
                  {1, 2, 3, 4, 5, 6})
    out += ["", f"Totals over {t['guests']} guests, {t['files']:,} files"]
    figures = [
        ("apparent size (sum over guests)", t["apparent_bytes"]),
        ("disk use without unification", t["without_unification_bytes"]),
    ]
    if what_if_mode:
        figures += [("disk use now (each inode once)", t["current_disk_bytes"]),
                    ("disk use after unification", t["disk_bytes"])]
    else:
        figures += [("real disk use (each inode once)", t["disk_bytes"])]
    for label, value in figures:
        out.append(f"  {label:<34} {human(value):>12}  ({value:,} bytes)")
    out.append(f"  {'saved':<34} {human(t['saved_bytes']):>12}  "
               f"({t['saved_bytes']:,} bytes, {t['saved_percent']:.1f}%)")
    if report.mode == "reflink":
        out.append(f"  (du counts reflinked extents once per file: it says {human(t['du_disk_bytes'])})")
    if report.mode == "composefs":
        out.append(f"  composefs: {t['composefs_guests']} guests on {t['shared_objects']:,} shared objects; upper "
                   f"layers {human(t['upper_bytes'])}, metadata layers {human(t['metadata_bytes'])}")
        out.append(f"  page cache: one copy per object for all guests ({human(t['page_cache_shared_bytes'])} "
                   "that private copies would cache once more per guest)")
    s = report.store
    if s is not None:
        out += ["", f"Store {s.path}: {s.entries:,} entries, {human(s.disk_bytes)} on disk, "
                    f"{s.orphans:,} with no guest link"]
        if s.overflow_entries:
            out.append(f"Link limit: {s.overflow_entries:,} overflow entries (contents linked more often "
                       "than the filesystem allows per inode)")
        if report.mode == "inode" and s.link_histogram:
            rows = [[f"{h['min_links']}" if h["min_links"] == h["max_links"] else f"{h['min_links']}-{h['max_links']}",
                     f"{h['entries']:,}", human(h["disk_bytes"])] for h in s.link_histogram]
            out += ["  " + line for line in _table(["Links", "Entries", "Disk"], rows, {1, 2})]
    if report.top_shared:
        out += ["", f"Top {min(top, len(report.top_shared))} shared files by bytes saved"]
        rows = [[human(i.saved_bytes), human(i.size), f"{i.copies}", i.package or "-", i.path]
                for i in report.top_shared[:top]]
        out += ["  " + line for line in _table(["Saved", "Size", "Copies", "Package", "Path"], rows, {0, 1, 2})]
    if report.top_packages:
        out += ["", "Top packages by bytes saved"]
        rows = [[human(p["saved_bytes"]), f"{p['files']:,}", p["package"]] for p in report.top_packages[:top]]
        out += ["  " + line for line in _table(["Saved", "Files", "Package"], rows, {0, 1})]
    lib = report.shared_libraries
    out += ["", f"Shared libraries (.so) {'that would be ' if what_if_mode else ''}unified: {lib['files']:,} files, "
            f"{human(lib['bytes'])}, {lib['copies']:,} copies; page cache saved if every guest maps them: "
            f"{human(lib['page_cache_saved_bytes'])}"]
    private = report.largest_private()
    if private:
        out += ["", "Largest private files (what keeps guests from sharing more)"]
        rows = [[human(i.disk_bytes), i.guest, i.package or "-", i.path] for i in private[:top]]
        out += ["  " + line for line in _table(["Disk", "Guest", "Package", "Path"], rows, {0})]
    return "\n".join(out) + "\n"
