"""`imagefactory report`: what unification saves, as a table, JSON or one HTML page."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from imagefactory.core.atomic import write_text
from imagefactory.core.errors import ImageFactoryError
from imagefactory.core.progress import Progress
from imagefactory.core.units import human
from unify import index as uindex
from unify.report.measure import MIN_SIZE, Report, measure, what_if


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_text(report: Report, top: int) -> str:
    """The terminal report: per-guest table, totals, store, top lists."""
    t = report.totals
    what_if_mode = report.mode == "what-if"
    out = [f"Disk-savings report ({'what if these roots were unified' if what_if_mode else report.mode + ' sharing'})", ""]
    shared_head = "Would share" if what_if_mode else "Shared"
    rows = [
        [g.name, f"{g.files:,}", human(g.apparent_bytes), human(g.disk_bytes), human(g.private_bytes),
         human(g.shared_bytes), f"{100 * g.share_ratio:.1f}%"]
        for g in report.guests
    ]
    out += _table(["Guest", "Files", "Apparent", "Disk alone", "Private", shared_head, "Ratio"], rows, {1, 2, 3, 4, 5, 6})
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
    out.append(f"  {'saved':<34} {human(t['saved_bytes']):>12}  ({t['saved_bytes']:,} bytes, {t['saved_percent']:.1f}%)")
    if report.mode == "reflink":
        out.append(f"  (du counts reflinked extents once per file: it says {human(t['du_disk_bytes'])})")
    s = report.store
    if s is not None:
        out += ["", f"Store {s.path}: {s.entries:,} entries, {human(s.disk_bytes)} on disk, {s.orphans:,} with no guest link"]
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
    private = sorted((i for g in report.guests for i in g.largest_private), key=lambda i: (-i.disk_bytes, i.guest, i.path))
    if private:
        out += ["", "Largest private files (what keeps guests from sharing more)"]
        rows = [[human(i.disk_bytes), i.guest, i.package or "-", i.path] for i in private[:top]]
        out += ["  " + line for line in _table(["Disk", "Guest", "Package", "Path"], rows, {0})]
    return "\n".join(out) + "\n"


def _roots_from_store(store: Path) -> list[Path]:
    roots = [Path(root) for root, _ in uindex.guests(store)]
    if not roots:
        raise click.UsageError(f"no GUEST_ROOT given and the store {store} knows no guests")
    return roots


@click.command("report")
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option("--store", type=click.Path(path_type=Path), help="The unify store the guests are linked to.")
@click.option("--what-if", "what_if_", is_flag=True,
              help="ROOTS are not unified yet: report what unifying them would save (reads and hashes files).")
@click.option("--sharing", type=click.Choice(["auto", "inode", "reflink"]), default="auto", show_default=True,
              help="How guests share storage: one inode (hardlink/immutable/vserver) or reflinked extents. "
                   "auto: the store's recorded mode.")
@click.option("--ignore-mtime", is_flag=True, help="--what-if: files differing only in mtime still match.")
@click.option("--min-size", type=click.IntRange(0), default=MIN_SIZE, show_default=True,
              help="--what-if: smaller files are never unified.")
@click.option("--exclude-from", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="--what-if: exclude list (unify's syntax) instead of the default.")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="Length of the top lists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema 1) instead of a table.")
@click.option("--html", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML page with charts to this file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def report(roots: tuple[Path, ...], store: Path | None, what_if_: bool, sharing: str, ignore_mtime: bool,
           min_size: int, exclude_from: Path | None, top: int, as_json: bool, html: Path | None,
           quiet: bool) -> None:
    """Show what unification saves: per guest, for the host, per file and package.

    \b
      imagefactory report --store /vservers/.hash /vservers/web1 /vservers/web2
      imagefactory report --store /vservers/.hash            # every guest the store knows
      imagefactory report --store S GUEST... --json > savings.json
      imagefactory report --store S GUEST... --html savings.html
      imagefactory report --what-if /vservers/new1 /vservers/new2

    Totals agree with du: "real disk use" is `du -s -B1 STORE GUEST...` (hard links once),
    a guest's disk is `du -s -B1 GUEST` alone; saved = sum of those - real. In reflink
    mode du cannot see shared extents, so real disk use is below du's figure.
    """
    if store is not None and not store.is_dir():
        raise ImageFactoryError(f"store {store} is not a directory")
    if not roots:
        if store is None:
            raise click.UsageError("give GUEST_ROOT arguments, or --store to report on every guest it knows")
        roots = tuple(_roots_from_store(store))
    unique = list(dict.fromkeys(Path(os.path.abspath(r)) for r in roots))
    for root in unique:
        if not root.is_dir() or root.is_symlink():
            raise ImageFactoryError(f"guest root {root} is not a directory")
    progress = Progress(quiet=quiet)
    if what_if_:
        result = what_if(unique, store, ignore_mtime, min_size, exclude_from, top, progress)
    else:
        result = measure(unique, store, sharing, top, progress)
    if html is not None:
        from unify.report.html import render_html

        write_text(html, render_html(result))
        if not quiet:
            click.echo(f"wrote {html}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(render_text(result, top), nl=False)
