"""`imagefactory report`: what unification saves, as a table, JSON or one HTML page."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from imagefactory.core.atomic import write_text
from imagefactory.core.errors import ImageFactoryError
from imagefactory.core.progress import Progress
from unify import index as uindex
from unify.report.composefs import is_composefs, registered_roots
from unify.report.measure import measure
from unify.report.text import render_text
from unify.report.whatif import MIN_SIZE, what_if


def _roots_from_store(store: Path) -> list[Path]:
    roots = registered_roots(store) if is_composefs(store) else [Path(root) for root, _ in uindex.guests(store)]
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
