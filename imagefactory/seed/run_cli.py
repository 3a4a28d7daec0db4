"""`imagefactory start|stop|exec|enter NAME` and `imagefactory limits NAME`: guests run by LXC."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from imagefactory.core.units import human
from imagefactory.seed import relimit, runtime
from imagefactory.seed.disk import MODES

DIR = click.Path(file_okay=False, path_type=Path)
CONFDIR = click.option("--confdir", type=DIR, default=Path("/etc/vservers"), show_default=True,
                       help="util-vserver config base holding the guest's conf dir.")


def _guest(confdir: Path, name: str) -> runtime.Installed:
    return runtime.find(confdir.absolute(), name)


@click.command()
@click.argument("name")
@CONFDIR
def start(name, confdir) -> None:
    """Start guest NAME with LXC (lxc-start, or lxc-execute for a guest without init).

    Its own layer (disk limit) is mounted first; LXC applies the memory, CPU
    and capability limits from CONFDIR/NAME/lxc/NAME/config.
    """
    guest = _guest(confdir, name)
    how = runtime.start(guest)
    click.echo(f"started {name} ({how}, init pid {runtime.init_pid(guest)})")


@click.command()
@click.argument("name")
@CONFDIR
@click.option("-t", "--timeout", default=10, show_default=True, help="Seconds before the guest is killed.")
def stop(name, confdir, timeout) -> None:
    """Stop guest NAME (lxc-stop) and unmount its own layer."""
    runtime.stop(_guest(confdir, name), timeout)
    click.echo(f"stopped {name}")


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@CONFDIR
def exec_(name, command, confdir) -> None:
    """Run COMMAND in guest NAME; exits with its exit code.

    \b
    A running guest: lxc-attach. A stopped one: lxc-execute, a one-shot
    container with the same limits.
      imagefactory exec web1 -- cat /etc/os-release
    """
    code = runtime.exec_in(_guest(confdir, name), list(command))
    raise SystemExit(code)  # click.Exit codes are dropped by imagefactory.cli.main (standalone_mode=False)


@click.command()
@click.argument("name")
@CONFDIR
def enter(name, confdir) -> None:
    """Open a login shell in running guest NAME (lxc-attach; bash -l, else sh -l)."""
    argv = runtime.enter_argv(_guest(confdir, name))
    os.execv(argv[0], argv)


@click.command()
@click.argument("name")
@CONFDIR
@click.option("--memory", help="New RSS hard limit (memory.max), e.g. 1G.")
@click.option("--cpu", help="New CPU share of one CPU, e.g. 50%.")
@click.option("--disk", "disk_size", help="New limit for the guest's own layer, e.g. 2G.")
@click.option("--disk-mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="How a new disk limit is applied: a sized image, or a project quota.")
@click.option("--cap-add", multiple=True, metavar="CAP", help="Give the guest a capability back (repeatable).")
@click.option("--cap-drop", multiple=True, metavar="CAP", help="Take a capability away (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def limits(name, confdir, memory, cpu, disk_size, disk_mode, cap_add, cap_drop, as_json) -> None:
    """Change guest NAME's limits, or with no option rewrite its configs for this host's cgroups.

    All configs (util-vserver, nspawn, LXC) are rendered again from the one
    limits record. A running guest gets memory and CPU at once (lxc-cgroup);
    capabilities at its next start; an image-backed disk only while stopped.
    """
    guest, _ = relimit.load_guest(confdir.absolute(), name)
    new = relimit.changed(guest.limits, memory=memory, cpu=cpu, disk_size=disk_size,
                          cap_add=cap_add, cap_drop=cap_drop)
    result = relimit.apply(confdir, name, new, disk_mode=disk_mode)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    lim = result["limits"]
    click.echo(f"{name}: memory {human(lim['memory'])}, cpu {float(lim['cpu_percent']):g}%, "
               f"disk {human(lim['disk']) if lim['disk'] else 'unlimited'}"
               f"{' (' + result['disk'] + ')' if result['disk'] else ''}, "
               f"without {' '.join(lim['dropped']) or 'nothing'}")
    click.echo(f"  written for {result['cgroup']}")
    for what in result["unenforced"]:
        click.echo(f"  warning: no {what} controller here: the {what} limit is not enforced", err=True)
    if result["applied_live"]:
        click.echo(f"  applied to the running guest: {', '.join(result['applied_live'])}")
