"""`imagefactory build` and `imagefactory recipes`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click

from imagefactory.build import fetch, pipeline
from imagefactory.build import recipe as recipes_mod
from imagefactory.build.formats import FORMATS
from imagefactory.build.plan import BuildOptions
from imagefactory.core.progress import Progress

DEFAULT_CACHE = Path(os.environ.get("IMAGEFACTORY_CACHE", "/var/cache/imagefactory"))


@click.command(epilog=fetch.TIMEOUT_HELP)
@click.argument("recipe")
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), default=Path("out"),
              show_default=True, help="Directory for <name>/rootfs, <name>.tar.zst and <name>.manifest.json.")
@click.option("--mirror", help="Archive base URL (default: the recipe's, else the host's apt sources).")
@click.option("--allow-expired-release", is_flag=True,
              help="Accept a Release past its Valid-Until (snapshot mirrors). The signature is still checked.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=DEFAULT_CACHE, show_default=True,
              help="Shared content-addressed package cache ($IMAGEFACTORY_CACHE).")
@click.option("-j", "--jobs", default=8, show_default=True, help="Parallel downloads.")
@click.option("--zstd-level", type=click.IntRange(1, 19), default=3, show_default=True,
              help="Image compression level (higher: smaller image, slower build).")
@click.option("--format", "formats", multiple=True, type=click.Choice(sorted(FORMATS)),
              help="Also write this format (repeatable; added to the recipe's `formats`).")
@click.option("--arch", help="Build for this architecture instead of the recipe's (e.g. arm64; foreign ones run "
                              "under qemu-user-static via binfmt_misc).")
@click.option("--force", is_flag=True, help="Rebuild even if the output is up to date, reusing no cached tree.")
@click.option("--explain", is_flag=True, help="Say why each stage was or was not reused.")
@click.option("--dry-run", is_flag=True, help="Verify and resolve only: print the package set and download size.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (the plan or the manifest).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def build(recipe: str, out_dir: Path, mirror: str | None, allow_expired_release: bool, cache_dir: Path,
          jobs: int, zstd_level: int, formats: tuple[str, ...], arch: str | None, force: bool, explain: bool,
          dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Build a guest from RECIPE (a name from recipes/ or a .toml path).

    Fetches and verifies the archive metadata, resolves the package set,
    downloads into the shared cache, installs with the guest's own package
    manager in a chroot, configures the guest and writes a reproducible
    tar.zst image plus a manifest. Needs root.
    """
    r = recipes_mod.load(recipe)
    if arch:
        r = dataclasses.replace(r, architecture=arch)
    if mirror is not None:
        recipes_mod.check_mirror(mirror, "--mirror")
    fetch.timeouts()  # a bad $IMAGEFACTORY_*_TIMEOUT fails here, before any work
    opts = BuildOptions(mirror=mirror, allow_expired_release=allow_expired_release, cache_dir=cache_dir, jobs=jobs,
                        zstd_level=zstd_level, formats=formats, force=force, explain=explain)
    progress = Progress(quiet=quiet)
    if dry_run:
        _, plan = pipeline.plan(r, opts, progress)
        if as_json:
            click.echo(json.dumps({
                "recipe": r.name, "snapshot": plan.snapshot_date, "download_size": plan.download_size,
                "packages": [{"name": a.name, "version": a.version, "size": a.size, "essential": a.essential}
                             for a in sorted(plan.packages, key=lambda a: a.name)],
            }, indent=2))
            return
        for a in sorted(plan.packages, key=lambda a: a.name):
            click.echo(f"{a.name:40} {a.version:30} {a.size / 1024:9.0f} KiB{'  essential' if a.essential else ''}")
        click.echo(f"{len(plan.packages)} packages, {plan.download_size / 1e6:.1f} MB to download "
                   f"(snapshot {plan.snapshot_date})")
        return
    result = pipeline.build(r, out_dir, opts, progress)
    if as_json:
        click.echo(json.dumps(result.manifest, indent=2))
    elif result.up_to_date:
        click.echo(f"{result.image}  up to date (sha256 {result.manifest['image']['sha256']})")
    else:
        m = result.manifest
        click.echo(f"{result.image}  sha256 {m['image']['sha256']}")
        for art in m.get("artifacts", []):
            click.echo(f"{out_dir / art['file']}  sha256 {art['sha256']}  ({art['format']} {art['role']})")
        click.echo(f"{result.rootfs}  {m['files']} files, {m['apparent_size'] / 1e6:.1f} MB, "
                   f"{len(m['packages'])} packages, {m['build_seconds']} s")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable list.")
@click.option("--keys", is_flag=True, help="List the keys a recipe file may use, with their meaning.")
def recipes(as_json: bool, keys: bool) -> None:
    """List the recipes in recipes/ with distro, suite and variant."""
    if keys:
        schema = {key: {"kind": kind.value, "help": text} for key, (kind, text) in recipes_mod.SCHEMA.items()}
        if as_json:
            click.echo(json.dumps(schema, indent=2))
        else:
            for key, spec in schema.items():
                click.echo(f"{key:14} {spec['kind']:18} {spec['help']}")
        return
    found = recipes_mod.list_recipes()
    if as_json:
        click.echo(json.dumps([
            {"name": r.name, "family": r.family, "suite": r.suite, "architecture": r.architecture,
             "variant": r.variant, "packages": list(r.packages), "description": r.description}
            for r in found
        ], indent=2))
        return
    click.echo(f"{'NAME':22} {'FAMILY':8} {'SUITE':10} {'ARCH':8} {'VARIANT':10} DESCRIPTION")
    for r in found:
        click.echo(f"{r.name:22} {r.family:8} {r.suite:10} {r.architecture:8} {r.variant:10} {r.description}")
