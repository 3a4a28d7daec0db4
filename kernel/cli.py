"""`imagefactory kernel ...`: build kernel packages, measure patches, probe the running kernel."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from imagefactory.core.errors import ImageFactoryError, RecipeError
from imagefactory.core.progress import Progress


@click.group()
def kernel() -> None:
    """Build, patch and package the VServer-style host kernel."""


@kernel.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out"),
              show_default=True, help="Directory for the packages and kernel-manifest.json.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build cache (default /var/cache/imagefactory/kernel or $IMAGEFACTORY_KERNEL_CACHE).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None, help="Parallel make jobs (default: all CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Print the kernel manifest as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@click.option("--configure-only", is_flag=True,
              help="Unpack, patch and configure, check every requested option, compile nothing.")
@click.option("--allow-expired-release", is_flag=True,
              help="Accept an expired Valid-Until in the InRelease of a [source] suite.")
def build(recipe: Path, out_dir: Path, cache_dir: Path | None, jobs: int | None, as_json: bool, quiet: bool,
          configure_only: bool, allow_expired_release: bool) -> None:
    """Build the kernel packages a RECIPE describes (cached: a repeat is a no-op).

    \b
    Example:
      imagefactory kernel build kernel/recipes/host-6.1.toml -o out/
      imagefactory kernel build kernel/recipes/host-6.12.toml --configure-only
    """
    from kernel.build import DEFAULT_CACHE, resolve_inputs
    from kernel.build import build as run_build
    from kernel.build import configure_only as run_configure
    from kernel.debsource import ArchiveAccess
    from kernel.recipe import load_recipe

    cache = cache_dir or DEFAULT_CACHE
    progress = Progress(quiet=quiet)
    access = ArchiveAccess(allow_expired_release=allow_expired_release)
    inputs = resolve_inputs(load_recipe(recipe), cache, access=access, progress=progress)
    if configure_only:
        checked = run_configure(inputs, cache, progress)
        if as_json:
            click.echo(json.dumps({**asdict(checked), "config": str(checked.config), "log": str(checked.log),
                                   "source": {"tarball": inputs.tarball.name, "sha256": inputs.tarball_sha256,
                                              **inputs.origin}}, indent=2))
            return
        click.echo(f"{checked.recipe}: Linux {checked.kernel_version}, {len(checked.patches)} patches applied, "
                   f"all {checked.options_checked} requested config options set")
        click.echo(f"  {checked.config}")
        return
    result = run_build(inputs, out_dir, cache, jobs, progress)
    if as_json:
        click.echo(json.dumps({**result.manifest, "cached": result.cached}, indent=2))
        return
    state = "up to date (cached)" if result.cached else "built"
    click.echo(f"{result.manifest['kernel_release']}: {state}")
    for pkg in result.manifest["packages"]:
        click.echo(f"  {out_dir / pkg['name']}  {pkg['size']} bytes  sha256:{pkg['sha256'][:16]}")
    click.echo(f"  {result.manifest_path}")


@kernel.command("patch-stats")
@click.argument("patches", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One object per patch plus the total.")
def patch_stats(patches: tuple[Path, ...], as_json: bool) -> None:
    """Files, new files, hunks and lines added/removed of each PATCH (.gz/.bz2/.xz too).

    A kernel recipe (.toml) stands for the patches it applies, e.g.
    `imagefactory kernel patch-stats kernel/recipes/host-6.12.toml`.
    """
    from kernel.patchstats import format_table, parse_patch, read_patch, total
    from kernel.recipe import load_recipe

    files: list[tuple[str, Path]] = []
    for arg in patches:
        if arg.suffix == ".toml":
            files += [(spec.name, spec.path) for spec in load_recipe(arg).patches if spec.path is not None]
        else:
            files.append((arg.name, arg))
    try:
        stats = [parse_patch(read_patch(path), name) for name, path in files]
    except (OSError, EOFError, ValueError) as exc:
        raise RecipeError(f"cannot read patch: {exc}") from None
    if as_json:
        click.echo(json.dumps({"patches": [s.to_dict() for s in stats], "total": total(stats).to_dict()}, indent=2))
    else:
        click.echo(format_table(stats))


@kernel.command()
@click.argument("directory", required=False, default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def probe(directory: Path, as_json: bool) -> None:
    """What the running kernel and DIRECTORY's filesystem support (tried on a probe file)."""
    from unify.probe import probe as run_probe
    from unify.probe import probe_composefs

    try:
        result = run_probe(directory)
    except PermissionError as exc:
        raise ImageFactoryError(f"cannot create a probe file in {directory}: {exc.strerror}") from None
    cfs = probe_composefs(directory)
    if as_json:
        click.echo(json.dumps({**result.to_dict(), **cfs.to_dict()}, indent=2))
        return
    yes = {True: "yes", False: "no"}
    vci = result.vci
    features = ", ".join(vci.get("features", [])) or "no feature bits"
    kernel_line = (f"yes (VCI {vci.get('version', '?')}; {features})" if result.vserver
                   else "no (/proc/virtual/info missing)")
    click.echo(f"VServer kernel:      {kernel_line}")
    click.echo(f"filesystem:          {result.filesystem} ({directory})")
    click.echo(f"immutable flag:      {yes[result.immutable]}")
    click.echo(f"IXUNLINK flag:       {yes[result.ixunlink]}")
    click.echo(f"reflink (FICLONE):   {yes[result.reflink]}")
    click.echo(f"unify --mode auto:   {result.auto_mode or 'refuses'} ({result.reason})")
    click.echo(f"fs-verity:           {yes[cfs.fsverity]} ({cfs.fsverity_evidence})")
    click.echo(f"EROFS:               {yes[cfs.erofs]} ({cfs.erofs_evidence})")
    click.echo(f"overlay data-only:   {yes[cfs.overlay_data_only]} ({cfs.overlay_data_only_evidence})")
    click.echo(f"overlay verity:      {yes[cfs.overlay_verity]} ({cfs.overlay_verity_evidence})")
    click.echo(f"composefs verity=require: {'possible' if cfs.verity_ready else 'not possible'} here")


@kernel.command("test-ixunlink")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Kernel recipe to build and boot (default: kernel/recipes/host-6.1.toml).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Kernel build cache.")
@click.option("--timeout", type=int, default=300, show_default=True, help="Seconds before the VM is killed.")
@click.option("--json", "as_json", is_flag=True, help="Print the parsed results as JSON.")
def test_ixunlink(recipe: Path | None, cache_dir: Path | None, timeout: int, as_json: bool) -> None:
    """Build the patched kernel, boot it under qemu and check every IXUNLINK rule inside."""
    from kernel.build import DEFAULT_CACHE
    from kernel.qemutest import DEFAULT_RECIPE, run_ixunlink_test

    report = run_ixunlink_test(recipe or DEFAULT_RECIPE, cache_dir or DEFAULT_CACHE, timeout, Progress())
    _print_report(report, as_json)
    if not report.ok:
        raise ImageFactoryError(f"IXUNLINK test failed: {report.failed} rule(s) failed or the VM gave no summary; "
                                f"console log: {report.console_log}")


@kernel.command("demo-unify")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Kernel recipe to build and boot (default: kernel/recipes/host-6.1.toml).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Kernel build cache.")
@click.option("--suite", default="bookworm", show_default=True,
              help="Debian suite of the VM's root (needs python3 >= 3.11).")
@click.option("--mirror", default=None, help="Debian mirror (default: the host's apt sources).")
@click.option("--timeout", type=int, default=900, show_default=True, help="Seconds before the VM is killed.")
@click.option("--json", "as_json", is_flag=True, help="Print the parsed results as JSON.")
def demo_unify(recipe: Path | None, cache_dir: Path | None, suite: str, mirror: str | None, timeout: int,
               as_json: bool) -> None:
    """Boot the IXUNLINK kernel on a Debian root and run `unify --mode vserver` inside it.

    Two tiny guests are unified, then one guest updates a unified file the way
    dpkg does (write a new file, rename it over); the other guest and the store
    must stay unchanged.
    """
    from kernel.build import DEFAULT_CACHE
    from kernel.qemutest import DEFAULT_RECIPE, run_unify_demo

    report = run_unify_demo(recipe or DEFAULT_RECIPE, cache_dir or DEFAULT_CACHE, timeout, Progress(), suite, mirror)
    _print_report(report, as_json)
    if not report.ok:
        raise ImageFactoryError(f"unify demo failed: {report.failed} step(s) failed or the VM gave no summary; "
                                f"console log: {report.console_log}")


@kernel.command("test-composefs")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Kernel recipe to build and boot (default: kernel/recipes/host-6.12.toml).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Kernel build cache.")
@click.option("--guest", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Guest root to compose (default: the demo's Debian minbase + python3 root, made with mmdebstrap).")
@click.option("--suite", default="bookworm", show_default=True, help="Debian suite of the default guest.")
@click.option("--mirror", default=None, help="Debian mirror (default: the host's apt sources).")
@click.option("--timeout", type=int, default=900, show_default=True, help="Seconds before each boot is killed.")
@click.option("--json", "as_json", is_flag=True, help="Print the parsed results as JSON.")
def test_composefs(recipe: Path | None, cache_dir: Path | None, guest: Path | None, suite: str, mirror: str | None,
                   timeout: int, as_json: bool) -> None:
    """Prove composefs with fs-verity on our kernel under qemu (two boots).

    The guest is composed with mkcomposefs (host or sid tools root) onto an ext4
    store made with `-O verity`. Boot 1 enables fs-verity on every object and reads
    the guest through overlayfs `verity=require`; then one byte of one object is
    flipped on the disk image; boot 2 must refuse that file (EIO) and read all others.
    """
    from kernel.build import DEFAULT_CACHE
    from kernel.qemutest import COMPOSEFS_RECIPE, run_composefs_test

    report = run_composefs_test(recipe or COMPOSEFS_RECIPE, cache_dir or DEFAULT_CACHE, timeout, Progress(), guest,
                                suite, mirror)
    _print_report(report, as_json)
    if not report.ok:
        raise ImageFactoryError(f"composefs test failed: {report.failed} rule(s) failed or a boot gave no summary; "
                                f"console logs: {Path(report.console_log).parent}/console-*.log")


def _print_report(report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for rule in report.rules:
        click.echo(f"{'PASS' if rule.ok else 'FAIL'}  {rule.name}: {rule.detail}")
    click.echo(f"{report.passed} passed, {report.failed} failed  "
               f"(kernel {report.kernel}, console log {report.console_log})")
