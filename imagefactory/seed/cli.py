"""`imagefactory seed` and `imagefactory guests`."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import click

from imagefactory.core.errors import ImageFactoryError
from imagefactory.core.manifest import IMAGE_SUFFIX
from imagefactory.core.progress import Progress
from imagefactory.core.units import human
from imagefactory.core.verbs import VerbGroup
from imagefactory.seed import barrier, cgroups, check, composefs, disk, inventory, lxc, relimit
from imagefactory.seed.disk import MODES
from imagefactory.seed.guest import Guest, Interface, check_hostname, check_name, check_vdir
from imagefactory.seed.limits import Limits
from imagefactory.seed.seeder import SeedResult, seed_image

DIR = click.Path(file_okay=False, path_type=Path)
MIB = 1024 * 1024


def resolve_source(source: str, repo: str | None, keyring: Path | None, cache: Path, progress: Progress) -> Path:
    """A local image path, or pull NAME[@VERSION] (from --repo, or URL/NAME) verified into cache."""
    if source.endswith(IMAGE_SUFFIX) and "://" not in source:
        path = Path(source)
        if not path.is_file():
            raise ImageFactoryError(f"{path}: no such image file")
        return path
    if "://" in source:
        repo, _, source = source.rstrip("/").rpartition("/")
    if not repo:
        raise ImageFactoryError(
            f"{source!r} is neither a local *{IMAGE_SUFFIX} nor a URL; give --repo URL to pull it by name"
        )
    if keyring is None:
        raise ImageFactoryError("pulling from a repository needs --keyring (the key its SHA256SUMS is signed with)")
    from repo.pull import pull  # only needed on this path

    name, _, version = source.partition("@")
    pulled = pull(repo, name, cache, keyring, version=version or None, progress=progress)
    return Path(pulled["image"])


def _print_seed(result: SeedResult, unified: dict | None) -> None:
    click.echo(f"seeded {result.name}: context {result.context}, image {result.image} ({result.image_sha256[:12]})")
    click.echo(f"  {'root':<13} {result.root}")
    for fmt, path in result.files.items():
        click.echo(f"  {fmt:<13} {path}")
    state = "set" if result.barrier["barrier"] else "NOT set"
    click.echo(f"  {'barrier':<13} {state} on {result.barrier['path']}: {result.barrier['detail']}")
    click.echo(f"  {'cgroup keys':<13} for {result.cgroup}")
    if result.disk:
        click.echo(f"  {'disk':<13} own layer by {result.disk}")
    for what in result.unenforced:
        click.echo(f"  warning: no {what} controller on this host: the {what} limit is not enforced", err=True)
    if unified is not None and unified["mode"] == "composefs":
        reused = "image seen before, no content read" if unified["listing_reused"] else "image read"
        click.echo(f"  {'composefs':<13} {'mounted' if unified['mounted'] else 'NOT mounted'}; "
                   f"{unified['objects']} objects, {unified['objects_added']} new ({reused}); {unified['state']}")
    elif unified is not None:
        click.echo(
            f"  {'unified':<13} mode {unified['mode']}: {unified['linked']} files linked, "
            f"{unified['bytes_saved'] / MIB:.1f} MiB saved"
        )
    for leftover in result.leftovers:
        click.echo(f"  warning: old tree left behind: {leftover}", err=True)


def guest_enforcement(conf: Path, layout: cgroups.Layout, page: int) -> list[check.Finding]:
    """Whether this host would enforce what the guest's LXC config says (reads its conf dir)."""
    config = conf / lxc.config_path(conf.name)
    try:
        limits = relimit.stored_limits(conf, page)
        text = config.read_text()
    except (OSError, ImageFactoryError) as exc:
        return [check.Finding("warning", "unreadable", f"{conf.name}: {exc}")]
    root = conf / os.readlink(conf / "vdir") if (conf / "vdir").is_symlink() else None
    mode = disk.Layer(Path(os.path.normpath(root))).mode if root else None
    return check.enforcement(conf.name, text, limits, layout, page, mode)


def run_check(confdir: Path, vdir: Path | None, as_json: bool) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    guests = inventory.list_guests(confdir.absolute(), page, measure=False)
    ram, swap = check.meminfo(Path("/proc/meminfo").read_text())
    statuses = [barrier.status(p) for p in check.vdir_parents(guests, [vdir] if vdir else [])]
    findings = check.evaluate(guests, ram, swap, statuses)
    findings += [check.Finding("error", "not-mounted", f"composefs guest {g.name} is not mounted at {g.root}: "
                               f"imagefactory mount {g.name}") for g in guests if g.mounted is False]
    layout = cgroups.detect()
    for guest in guests:
        findings += guest_enforcement(Path(guest.conf), layout, page)
    if as_json:
        click.echo(json.dumps({
            "guests": len(guests),
            "cgroup": layout.to_dict(),
            "memory": {"rss_hard_total": sum(g.memory or 0 for g in guests), "ram": ram, "swap": swap},
            "barriers": [s.to_dict() for s in statuses],
            "findings": [f.to_dict() for f in findings],
        }, indent=2))
    else:
        total = sum(g.memory or 0 for g in guests)
        click.echo(f"{len(guests)} guests; RSS hard limits {total // MIB} MiB, RAM {ram // MIB} MiB, "
                   f"swap {swap // MIB} MiB")
        for status in statuses:
            click.echo(f"barrier on {status.path}: {status.detail}")
        click.echo(layout.describe())
        for finding in findings:
            click.echo(f"{finding.level}: {finding.message}")
        if not findings:
            click.echo("ok")
    if any(f.level == "error" for f in findings):
        raise SystemExit(1)  # click.Exit codes are dropped by imagefactory.cli.main (standalone_mode=False)


def run_unify(result: SeedResult, confdir: Path, store: Path, mode: str, progress: Progress) -> dict:
    """Unify the new root together with every guest already on this store.

    The engine hashes only sizes that occur more than once among the roots it
    is given (as hardlink(1) does), so the new guest alone would find few
    partners; the other guests cost little, as their digests are indexed.
    """
    from unify.engine import unify

    new_root = Path(result.root)
    roots = [new_root] + [r for r in inventory.roots_sharing_store(confdir, store) if r != new_root]
    progress.stage(f"unifying {new_root} into {store} (with {len(roots) - 1} other guests)")
    try:
        summary = unify(roots, store, mode=mode, progress=progress)
    except ImageFactoryError as exc:
        raise type(exc)(f"guest {result.name} is seeded, but unifying it failed: {exc}") from None
    return summary.to_dict()


@click.group(cls=VerbGroup, old_flags={"--check": "check"}, context_settings={"help_option_names": ["-h", "--help"]})
def seed() -> None:
    """Seed guests from images; `seed check` checks every guest on this host."""


@seed.default(epilog="Without a VServer kernel, use the nspawn/ or lxc/ files in the conf dir; see docs/seed.md.")
@click.argument("source")
@click.argument("name")
@click.option("--vdir", type=DIR, default=Path("/vservers"), show_default=True, help="Directory holding guest roots.")
@click.option("--confdir", type=DIR, default=Path("/etc/vservers"), show_default=True,
              help="util-vserver config base; the guest's config goes to CONFDIR/NAME.")
@click.option("--ip", "address", metavar="IP/PREFIX", help="Guest address, e.g. 10.0.0.11/24.")
@click.option("--dev", default="eth0", show_default=True, help="Host network device carrying the address.")
@click.option("--hostname", help="Guest host name (default: NAME).")
@click.option("--memory", default="512M", show_default=True,
              help="RSS hard limit (memory.max); soft limit is 90%. K/M/G suffixes, floor 64M.")
@click.option("--cpu", default="100%", show_default=True, help="CPU share of one CPU, in (0, 100]%.")
@click.option("--disk", "disk_size", metavar="SIZE",
              help="Limit the guest's own layer (what it writes; shared store files never count), e.g. 2G.")
@click.option("--disk-mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="image: a sized ext4 image, loop-mounted; quota: a project quota; auto: quota where on.")
@click.option("--cap-add", multiple=True, metavar="CAP",
              help="Give back a capability the default bounding set drops (repeatable), e.g. NET_ADMIN.")
@click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop one more capability (repeatable).")
@click.option("--unify", "do_unify", is_flag=True, help="Unify the new guest into --store right away.")
@click.option("--store", type=DIR, help="Unification store (also recorded in apps/vunify/hash/).")
@click.option("--unify-mode", default="auto", show_default=True,
              help="composefs, or a mode passed to the unify engine; auto = composefs where the host runs it.")
@click.option("--meta", type=click.Choice(["erofs", "dir"]), default="erofs", show_default=True,
              help="composefs metadata layer: EROFS image (mkcomposefs) or a directory of sparse files.")
@click.option("--replace", is_flag=True, help="Replace an existing guest of that name (keeps its context id).")
@click.option("--repo", help="Repository URL to pull SOURCE from by name.")
@click.option("--keyring", type=click.Path(dir_okay=False, path_type=Path), help="Key for the repository's signature.")
@click.option("--cache", type=DIR, default=Path("/var/cache/imagefactory/images"), show_default=True,
              help="Where pulled images are kept.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def run(source, name, vdir, confdir, address, dev, hostname, memory, cpu, disk_size, disk_mode, cap_add, cap_drop,
        do_unify, store, unify_mode, meta, replace, repo, keyring, cache, as_json, quiet) -> None:
    """Seed guest NAME from SOURCE: a local IMAGE.tar.zst (with its manifest beside it),
    NAME[@VERSION] from --repo, or REPO-URL/NAME[@VERSION].

    \b
    Writes the root to VDIR/NAME (hash checked first, unpacked safely) and
    CONFDIR/NAME in util-vserver's layout, plus the same guest as a
    systemd-nspawn machine (nspawn/) and an LXC container (lxc/), all with the
    same memory and CPU limits. Nothing is left half-written on failure.

    \b
    Example:
      imagefactory seed debian-sid.tar.zst web1 --ip 10.0.0.11/24 --dev eth0 \\
          --hostname web1.example.net --memory 512M --cpu 25%
      imagefactory seed check          # every guest: overcommit, duplicates, barrier
    """
    if not address:
        raise click.UsageError("need --ip IP/PREFIX")
    if do_unify and store is None:
        raise click.UsageError("--unify needs --store")
    guest = Guest(
        name=check_name(name),
        hostname=check_hostname(hostname or name),
        interface=Interface.parse(address, dev),
        limits=Limits.parse(memory, cpu, disk_size, cap_add, cap_drop),
        vdir=check_vdir(vdir.absolute()),
        confdir=confdir.absolute(),
        store=store.absolute() if store else None,
    )
    # A service manager's stop (SIGTERM) cleans up like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        progress = Progress(quiet=quiet)
        image = resolve_source(source, repo, keyring, cache, progress)
        layout = composefs.layout_for(guest.store, unify_mode, meta) if do_unify and guest.store else None
        result = seed_image(image, guest, replace=replace, progress=progress, layout=layout, disk_mode=disk_mode)
        unified = None
        if do_unify and guest.store is not None:
            unified = layout.summary() if layout else run_unify(result, guest.confdir, guest.store, unify_mode,
                                                                progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), "unified": unified}, indent=2))
    else:
        _print_seed(result, unified)


@seed.command("check")
@click.option("--vdir", type=DIR, default=Path("/vservers"), show_default=True, help="Directory holding guest roots.")
@click.option("--confdir", type=DIR, default=Path("/etc/vservers"), show_default=True, help="util-vserver config base.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="(no progress to hide; accepted like the other commands)")
def check_guests(vdir: Path, confdir: Path, as_json: bool, quiet: bool) -> None:
    """Check every guest: memory overcommit, duplicate contexts and IPs, the chroot barrier."""
    run_check(confdir, vdir, as_json)


@click.command()
@click.option("--confdir", type=DIR, default=Path("/etc/vservers"), show_default=True, help="util-vserver config base.")
@click.option("--json", "as_json", is_flag=True, help="Print the guests as JSON.")
@click.option("--usage", is_flag=True,
              help="Also measure each root's disk use and shared % (walks every file of every guest).")
def guests(confdir, as_json, usage) -> None:
    """List guests: name, context id, image + version, limits (and with --usage: size, shared %).

    Without --usage the roots are not walked (1,000 guests: 0.4-0.9 s, 1.0-1.9 s with all of
    them running, bench/guests.sh); size and shared % then show as "-" (null in JSON).
    """
    rows = inventory.list_guests(confdir.absolute(), os.sysconf("SC_PAGE_SIZE"), measure=usage, live=True)
    if as_json:
        click.echo(json.dumps([g.to_dict() for g in rows], indent=2))
        return
    header = (f"{'NAME':<16} {'STATE':<8} {'CTX':>5}  {'IMAGE':<24} {'VERSION':<15} {'IP':<18} {'SIZE':>10} "
              f"{'SHARED':>6} {'MEMORY':>10} {'CPU':>6} {'MOUNTED':>7} {'UPPER':>10}  DISK (OWN LAYER / LIMIT)")
    click.echo(header)

    def fmt(value, spec: str = "", suffix: str = "") -> str:
        return "-" if value is None else f"{value:{spec}}{suffix}"

    for g in rows:
        click.echo(
            f"{g.name:<16} {(g.state or '-').lower():<8} {fmt(g.context):>5}  {fmt(g.image):<24} "
            f"{fmt(g.version):<15} {fmt(g.ip):<18} {human(g.disk_usage):>10} {fmt(g.shared_percent, '.1f', '%'):>6} "
            f"{human(g.memory):>10} {fmt(g.cpu_percent, 'g', '%'):>6}"
            f" {'-' if g.mounted is None else 'yes' if g.mounted else 'NO':>7} {human(g.upper_bytes):>10}  "
            + (f"{human(g.disk_used)} / {human(g.disk_limit)} ({g.disk_mode})" if g.disk_limit else "unlimited")
        )
