"""`imagefactory unify`: share identical guest files through a protected store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from imagefactory.core.errors import VerificationError
from imagefactory.core.progress import Progress
from imagefactory.core.units import human
from imagefactory.core.verbs import VerbGroup
from unify import engine, maintain
from unify.protect import AUTO, MODES


def summary_lines(s: engine.Summary) -> list[str]:
    """A hardlink(1)-like summary."""
    would = "Would link" if s.dry_run else "Linked"
    return [
        f"Mode:            {s.mode or 'none'} ({s.mode_reason})",
        "Method:          xxh3-128 of content + mode/owner/mtime/xattrs key; byte-compared before linking",
        f"Store:           {s.store}",
        f"Guests:          {s.guests}",
        f"Directories:     {s.dirs}",
        f"Files:           {s.files} regular ({s.candidates} eligible; excluded {s.excluded}, "
        f"config files {s.conffiles}, too small {s.too_small}); {s.special} symlinks/special skipped",
        f"Hashed:          {s.hashed} files, {human(s.hashed_bytes)} (index reused {s.index_hits})",
        f"Already unified: {s.already_unified} files, {human(s.already_bytes)} ({s.by_inode} known by inode number)",
        f"{would + ':':<17}{s.linked} files ({s.new_entries} new store entries; "
        f"{s.duplicates} duplicates, as hardlink(1) counts)",
        *([f"Link limit:      {s.overflow_entries} overflow entries started (EMLINK)"] if s.overflow_entries else []),
        f"Saved:           {human(s.bytes_saved)} ({human(s.disk_saved)} on disk)"
        + (" (estimated)" if s.dry_run else ""),
        *([f"Left alone:      {s.changed} changed during the run, {s.collisions} hash collisions, "
           f"{s.failed} failed"] if s.changed or s.collisions or s.failed else []),
        *([f"Cleaned:         {s.temp_removed} temporary names from an interrupted run"] if s.temp_removed else []),
        f"Duration:        {s.seconds:.2f} seconds",
    ]


# The verbs were flags before (`unify --status`); those stay for one release as hidden aliases.
OLD_FLAGS = {"--status": "status", "--verify": "verify", "--gc": "gc", "--split": "split"}


def _store_option(f):
    return click.option("--store", type=click.Path(file_okay=False, path_type=Path), required=True,
                        help="Store directory (e.g. /vservers/.hash); must be on the guests' filesystem.")(f)


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")(f)


@click.group(cls=VerbGroup, old_flags=OLD_FLAGS, context_settings={"help_option_names": ["-h", "--help"]})
def unify() -> None:
    """Share identical guest files through a protected store."""


@unify.default()
@click.argument("roots", nargs=-1, required=True, metavar="GUEST_ROOT...",
                type=click.Path(file_okay=False, path_type=Path))
@_store_option
@click.option("--mode", type=click.Choice([AUTO, *MODES]), default=AUTO, show_default=True,
              help="How shared files are protected: auto = vserver if the kernel has it, else reflink, else refuse.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be linked and saved; change no guest file.")
@click.option("--ignore-mtime", is_flag=True, help="Link files whose only difference is the mtime.")
@click.option("--min-size", type=click.IntRange(min=1), default=engine.MIN_SIZE, show_default=True,
              help="Never unify files smaller than this many bytes.")
@click.option("--exclude-from", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Exclude list (+/~/- fnmatch lines) replacing the default; a guest's own "
                   "<ROOT>.vunify-exclude still wins.")
@click.option("-j", "--workers", type=click.IntRange(min=0), default=0,
              help="Processes that walk and hash guests (the index is written by one). "
                   "[default: 0 = one per usable CPU, at most 4]")
@_json_option
@click.option("-v", "--verbose", is_flag=True, help="List every file linked (with -n: that would be linked).")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def run(roots, store, mode, dry_run, ignore_mtime, min_size, exclude_from, workers, as_json, verbose, quiet) -> None:
    """Replace identical files in the GUEST_ROOTs by links to one protected store entry.

    Files are shared only when content and the metadata a link shares (mode,
    owner, mtime, xattrs) are equal. Symlinks, special files, files under
    --min-size, package config files and the exclude list are never touched.
    Each file is swapped atomically; an interrupted run is simply run again.

    \b
    Examples:
      imagefactory unify /vservers/web1 /vservers/web2 --store /vservers/.hash
      imagefactory unify -n --json /vservers/* --store /vservers/.hash
      imagefactory unify status --store /vservers/.hash
      imagefactory unify split /vservers/web1 --store /vservers/.hash
    """
    opts = engine.UnifyOptions(mode, dry_run, ignore_mtime, min_size, exclude_from, list_files=verbose,
                               workers=workers)
    s = engine.run(list(roots), store, opts, Progress(quiet=quiet or as_json))
    for w in s.warnings:
        click.echo(f"imagefactory: warning: {w}", err=True)
    verb = "would link" if dry_run else "linked"
    listing = [f"{verb} {path} ({size} B) -> {entry}" for path, entry, size in sorted(s.listing or [])]
    emit(as_json, s.to_dict(), listing + summary_lines(s))


@unify.command()
@_store_option
@_json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def status(store: Path, as_json: bool, quiet: bool) -> None:
    """Show store size, entries, links and orphans."""
    st = maintain.status(store)
    emit(as_json, st.to_dict(), [
        f"Store:        {st.store} ({st.mode or 'no mode yet'} mode)",
        f"Entries:      {st.entries}, {human(st.entry_bytes)}",
        f"Guest links:  {st.guest_links} from {len(st.guests)} indexed guests",
        f"Orphans:      {st.orphans}, {human(st.orphan_bytes)} (removed by gc)",
        *([f"Link limit:   {st.overflow_entries} overflow entries (contents linked more often than "
           "the filesystem allows per inode)"] if st.overflow_entries else []),
        f"Saved:        {human(st.bytes_saved)}",
    ])


@unify.command()
@_store_option
@_json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def verify(store: Path, as_json: bool, quiet: bool) -> None:
    """Re-hash every entry; exit 3 if any no longer matches."""
    checked, problems = maintain.verify(store, progress=Progress(quiet=quiet or as_json))
    emit(as_json, {"checked": checked, "problems": [p.__dict__ for p in problems]},
         [f"{p.entry}: {p.problem}" for p in problems] + [f"Verified {checked} entries, {len(problems)} problems"])
    if problems:
        bad = len({p.entry for p in problems})
        raise VerificationError(f"{bad} of {checked} store entries no longer match their key")


@unify.command()
@_store_option
@click.option("-n", "--dry-run", is_flag=True, help="Only say what would be removed.")
@_json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def gc(store: Path, dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Remove entries no guest uses any more (and indexes of vanished guests)."""
    res = maintain.gc(store, dry_run=dry_run)
    verb = "Would remove" if dry_run else "Removed"
    emit(as_json, res, [f"{verb} {res['removed']} entries ({human(res['bytes'])}) "
                        f"and {res['indexes_removed']} indexes of vanished guests"])


@unify.command()
@click.argument("roots", nargs=-1, required=True, metavar="GUEST_ROOT...",
                type=click.Path(file_okay=False, path_type=Path))
@_store_option
@_json_option
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def split(roots: tuple[Path, ...], store: Path, as_json: bool, quiet: bool) -> None:
    """Give the GUEST_ROOTs private copies again and drop them from the store."""
    results = [maintain.split(r, store) for r in roots]
    emit(as_json, results, [f"{r['guest']}: {r['copied']} files made private ({human(r['bytes'])})"
                            for r in results])


def emit(as_json: bool, data: object, lines: list[str]) -> None:
    """JSON for scripts, or the human lines."""
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            click.echo(line)

