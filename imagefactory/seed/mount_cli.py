"""`imagefactory mount` / `imagefactory umount`: attach or detach composefs guests by name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from imagefactory.core.errors import ImageFactoryError
from imagefactory.seed import inventory
from unify.composefs import mount as mnt
from unify.composefs.convert import recover
from unify.composefs.guest import GuestLayers

DIR = click.Path(file_okay=False, path_type=Path)


def composefs_guests(confdir: Path, names: tuple[str, ...], every: bool) -> list[tuple[str, GuestLayers]]:
    """(name, layers) of the named composefs guests, or all of them with --all."""
    if every == bool(names):
        raise click.UsageError("give guest NAMEs or --all")
    found = {}
    for conf in inventory.guest_dirs(confdir.absolute()):
        link = conf / "vdir"
        if link.is_symlink():
            layers = GuestLayers(conf / os.readlink(link))
            if layers.exists():
                found[conf.name] = layers
    if every:
        return sorted(found.items())
    missing = [n for n in names if n not in found]
    if missing:
        raise ImageFactoryError(f"not composefs guests in {confdir}: {', '.join(missing)}")
    return [(n, found[n]) for n in names]


def _report(as_json: bool, rows: list[dict], verb: str) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']}: {verb if r['changed'] else 'already ' + verb} ({r['root']})")


def _guest_selection(f):
    """NAMES / --all / --confdir / --json: which composefs guests, and how to report."""
    f = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)
    f = click.option("--confdir", type=DIR, default=Path("/etc/vservers"), show_default=True,
                     help="util-vserver config base.")(f)
    f = click.option("--all", "every", is_flag=True, help="Every composefs guest in --confdir.")(f)
    return click.argument("names", nargs=-1)(f)


@click.command("mount")
@_guest_selection
def mount_cmd(names, every, confdir, as_json) -> None:
    """Mount composefs guests at their roots (finishing any interrupted conversion first)."""
    rows = []
    for name, layers in composefs_guests(confdir, names, every):
        record = recover(layers)
        if record is None:
            rows.append({"name": name, "root": str(layers.root), "changed": False, "note": "no longer composefs"})
            continue
        rows.append({"name": name, "root": str(layers.root), "changed": mnt.mount(layers, record)})
    _report(as_json, rows, "mounted")


@click.command("umount")
@_guest_selection
def umount_cmd(names, every, confdir, as_json) -> None:
    """Unmount composefs guests (their roots are then empty directories; nothing is lost)."""
    rows = [{"name": name, "root": str(layers.root), "changed": mnt.umount(layers)}
            for name, layers in composefs_guests(confdir, names, every)]
    _report(as_json, rows, "unmounted")
