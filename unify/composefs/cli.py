"""`imagefactory unify` with composefs: the unify command of unify/cli.py plus `--mode composefs`,
`--meta`, the auto-mode choice, and convert / split / status / verify / gc for composefs
stores; everything else goes to the plain unify commands unchanged."""

from __future__ import annotations

from pathlib import Path

import click

from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError, VerificationError
from imagefactory.core.progress import Progress
from imagefactory.core.units import human
from imagefactory.core.verbs import DEFAULT, DefaultCommand, VerbGroup
from unify import probe
from unify.cli import OLD_FLAGS, emit
from unify.cli import unify as plain_unify
from unify.composefs import convert, maintain, support
from unify.composefs.store import ObjectStore
from unify.store import Store

META_CHOICES = ("erofs", "dir")


def is_composefs_store(store: Path) -> bool:
    return ObjectStore(store).is_composefs()


def auto_mode(store: Path) -> tuple[str, str]:
    """("composefs", why) where this host runs composefs guests, else ("auto", why not): the
    unify engine's own auto choice (vserver, reflink or refusal) then applies. A store already
    made in another mode keeps it; a VServer/IXUNLINK kernel keeps vserver mode."""
    recorded = Store(store).info().get("mode")
    if recorded:
        return ("composefs", "the store is a composefs store") if recorded == "composefs" else \
            ("auto", f"the store was made in {recorded} mode")
    base = store if store.is_dir() else store.parent
    if not base.is_dir():
        raise ImageFactoryError(f"{base}: no such directory for the store")
    found = probe.probe(base)
    if found.auto_mode == "vserver":
        return "auto", found.reason
    cfs = support.check(base)
    if cfs.usable:
        return "composefs", cfs.reason
    return "auto", f"composefs not available: {cfs.reason}"


def run(action: str | None, roots: list[Path], store_dir: Path, meta: str, dry_run: bool, as_json: bool,
        quiet: bool, reason: str = "chosen with --mode") -> None:
    store = ObjectStore(store_dir)
    progress = Progress(quiet=quiet or as_json)
    if action == "status":
        st = maintain.status(store.open_existing())
        emit(as_json, st.to_dict(), [
            f"Store:        {st.store} (composefs mode)",
            f"Objects:      {st.objects}, {human(st.object_bytes)}",
            f"Guests:       {len(st.guests)} ({st.referenced} object references, {human(st.referenced_bytes)})",
            f"Orphans:      {st.orphans}, {human(st.orphan_bytes)} (removed by gc)",
            f"Saved:        {human(st.bytes_saved)}",
        ])
    elif action == "verify":
        checked, problems = maintain.verify(store.open_existing(), progress=progress)
        lines = [f"{p.object}: {p.problem}; used by {', '.join(p.guests) or 'no guest'}" for p in problems]
        emit(as_json, {"checked": checked, "problems": [p.__dict__ for p in problems]},
             lines + [f"Verified {checked} objects (fs-verity SHA-256), {len(problems)} problems"])
        if problems:
            p = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise VerificationError(f"object {p.object} {p.problem.split(' (')[0]}; used by "
                                    f"{', '.join(p.guests) or 'no guest'}{more}")
    elif action == "gc":
        res = maintain.gc(store.open_existing(), dry_run=dry_run)
        verb = "Would remove" if dry_run else "Removed"
        emit(as_json, res, [f"{verb} {res['removed']} objects ({human(res['bytes'])}), "
                            f"{res['listings_removed']} image listings and {res['registrations_removed']} "
                            "registrations of vanished guests"])
    elif action == "split":
        splits = [convert.split(r, progress) for r in roots]
        emit(as_json, splits, [f"{r['guest']}: a plain directory again" for r in splits])
    else:
        if dry_run:
            raise click.UsageError("--mode composefs has no dry run (it would have to copy every file to hash it)")
        store.create()
        results = [convert.convert(r, store, meta, progress=progress) for r in roots]
        emit(as_json, {"mode": "composefs", "reason": reason, "meta": meta,
                       "guests": [r.to_dict() for r in results]},
             [f"Mode:            composefs ({reason}); metadata layer: {meta}"] + [
                 f"{r.guest}: already a composefs guest (mounted)" if r.already else
                 f"{r.guest}: {r.files} files, {human(r.bytes)}; {r.objects_added} new objects "
                 f"({human(r.bytes_added)}); mounted; {r.seconds:.2f} s" for r in results])


def _params(plain: click.Command) -> list[click.Parameter]:
    params = []
    for p in plain.params:
        if p.name == "mode" and isinstance(p, click.Option):
            p = click.Option(["--mode"], type=click.Choice([*p.type.choices, "composefs"]),  # type: ignore[attr-defined]
                             default="auto", show_default=True,
                             help="How shared files are protected: auto = vserver if the kernel has it, else "
                                  "composefs (overlayfs over a shared object store), else reflink, else refuse.")
        params.append(p)
    params.insert(3, click.Option(["--meta"], type=click.Choice(META_CHOICES), default="erofs", show_default=True,
                                  help="composefs metadata layer: an EROFS image written by mkcomposefs, or a "
                                       "directory of sparse files (no tool needed)."))
    return params


def _unify(meta: str, **kw) -> None:
    """The default action: composefs when chosen (or picked by auto), else the plain engine."""
    roots, store, mode = list(kw["roots"]), kw["store"], kw["mode"]
    reason, why_not = "chosen with --mode", ""
    if mode == "auto" and not kw["dry_run"]:
        mode, reason = auto_mode(store)
        why_not = reason if reason.startswith("composefs not available") else ""
    if mode == "composefs":
        run(None, roots, store, meta, kw["dry_run"], kw["as_json"], kw["quiet"], reason)
        return
    plain = plain_unify.commands[DEFAULT]
    assert plain.callback is not None
    try:
        plain.callback(**{**kw, "mode": mode})
    except EnvironmentProblem as exc:
        raise EnvironmentProblem(f"{exc}; {why_not}" if why_not else str(exc)) from None
    if why_not:
        click.echo(f"imagefactory: warning: {why_not}", err=True)


def _verb(name: str, plain: click.Command) -> click.Command:
    """A verb that works on composefs stores too: same options, composefs upkeep for such a store."""

    def callback(**kw) -> None:
        if is_composefs_store(kw["store"]):
            run(name, list(kw.get("roots", ())), kw["store"], "erofs", kw.get("dry_run", False), kw["as_json"],
                kw["quiet"])
            return
        assert plain.callback is not None
        plain.callback(**kw)

    return click.Command(name, params=plain.params, callback=callback, help=plain.help)


def _group() -> VerbGroup:
    plain_run = plain_unify.commands[DEFAULT]
    group = VerbGroup("unify", old_flags=OLD_FLAGS, help=plain_unify.help,
                      context_settings={"help_option_names": ["-h", "--help"]})
    group.add_command(DefaultCommand(DEFAULT, params=_params(plain_run), callback=_unify, help=plain_run.help,
                                     hidden=True))
    for name, cmd in plain_unify.commands.items():
        if name != DEFAULT:
            group.add_command(_verb(name, cmd))
    return group


unify = _group()
