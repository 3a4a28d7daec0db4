"""RpmBackend: Fedora guests from an rpm-md repository, for the family-neutral build.

plan:      repomd.xml (signature when repo_gpgcheck) -> primary + comps (checksums)
           -> comps group of the variant + recipe packages -> resolved set
install:   rpmkeys --checksig with the recipe's key, then one rpm transaction
configure: identity, the secure /dev, customize steps, cleanup (shared with Debian)
"""

from __future__ import annotations

import datetime
import hashlib
import urllib.parse
from pathlib import Path

from imagefactory.build import chroot, configure
from imagefactory.build.fetch import cached_fetch, fetch_url
from imagefactory.build.plan import Artifact, BuildOptions, Plan, SourceSnapshot
from imagefactory.build.recipe import Recipe
from imagefactory.build.rpm import comps, install
from imagefactory.build.rpm.primary import Package, load_primary, open_decompressed
from imagefactory.build.rpm.repomd import RepoFile, Repomd, parse_repomd, safe_href
from imagefactory.build.rpm.resolve import Universe, resolve
from imagefactory.core.errors import FetchError, RecipeError, ResolveError, VerificationError
from imagefactory.core.gpgv import verify_detached
from imagefactory.core.progress import Progress

GROUP_TYPES = ("group_zst", "group_xz", "group_gz", "group")  # comps, best compression first


def repo_url(template: str, recipe: Recipe) -> str:
    """The repository base URL, with dnf's $releasever and $basearch filled in."""
    url = template.replace("$releasever", recipe.suite).replace("$basearch", recipe.architecture)
    return url.rstrip("/") + "/"


def repo_urls(recipe: Recipe, mirror: str) -> list[str]:
    """The repositories to read: each of the recipe's sources (a path under the mirror, e.g. releases/...
    and updates/..., or a full URL), else the mirror itself. Each repomd.xml is verified on its own and
    the newest EVR of a name wins across them, as dnf decides."""
    base = repo_url(mirror, recipe)
    return [repo_url(urllib.parse.urljoin(base, src), recipe) for src in recipe.sources] or [base]


def _metadata(mirror: str, f: RepoFile, cache_dir: Path) -> Path:
    """A metadata file from the mirror, verified against repomd.xml into the shared cache."""
    if f.checksum_type != "sha256":
        raise VerificationError(f"repomd.xml: {f.type} has a {f.checksum_type or 'missing'} checksum, not sha256")
    return cached_fetch(mirror + f.href, f.checksum, f.size, cache_dir)


def _repomd(mirror: str, recipe: Recipe) -> tuple[Repomd, bytes]:
    """repomd.xml, its detached signature checked first when the recipe asks for it."""
    data = fetch_url(mirror + "repodata/repomd.xml")
    if recipe.repo_gpgcheck:
        try:
            signature = fetch_url(mirror + "repodata/repomd.xml.asc")
        except FetchError as exc:
            raise VerificationError(f"repomd.xml is not signed (repo_gpgcheck is on): {exc}") from None
        verify_detached(data, signature, Path(recipe.keyring), f"{mirror}repodata/repomd.xml")
    md = parse_repomd(data)
    if "primary" not in md.files:
        raise VerificationError(f"{mirror}repodata/repomd.xml lists no primary metadata")
    return md, data


def _artifact(p: Package, mirror: str) -> Artifact:
    if p.checksum_type != "sha256":
        raise VerificationError(f"primary.xml: {p.nevra} has a {p.checksum_type} checksum, not sha256")
    base = p.base.rstrip("/") + "/" if p.base else mirror
    return Artifact(p.name, str(p.evr), p.arch, urllib.parse.urljoin(base, safe_href(p.href, p.nevra)),
                    p.checksum, p.size)


class RpmBackend:
    """The Backend protocol (imagefactory.build.plan) for rpm-md repositories."""

    def plan(self, recipe: Recipe, opts: BuildOptions, progress: Progress) -> Plan:
        where = f"{recipe.source}: key"
        if not (opts.mirror or recipe.mirror):
            raise RecipeError(f"{where} 'mirror' is required for family {recipe.family.value!r}")
        if not recipe.keyring:
            raise RecipeError(f"{where} 'keyring' is required for family {recipe.family.value!r} (package signatures)")
        if not Path(recipe.keyring).is_file():  # fail before downloading anything
            raise VerificationError(f"keyring {recipe.keyring} not found (install the distribution's key)")
        repos = repo_urls(recipe, opts.mirror or recipe.mirror)
        packages: list[Package] = []
        origin: dict[int, str] = {}
        snaps = []
        digests = []
        wanted: list[str] = []
        for mirror, src in zip(repos, recipe.sources or ("",), strict=True):
            progress.stage(f"metadata: {mirror}repodata/repomd.xml")
            md, raw = _repomd(mirror, recipe)
            primary = md.files["primary"]
            path = _metadata(mirror, primary, opts.cache_dir)
            digests.append(primary.checksum)
            progress.stage(f"metadata: parsing {primary.href.rsplit('/', 1)[-1]}")
            found = load_primary(path, primary.href, frozenset({recipe.architecture, "noarch"}))
            for p in found:
                origin[id(p)] = mirror
            packages += found
            if not wanted:
                wanted = self._variant_packages(recipe, md.files, mirror, opts.cache_dir)
            date = datetime.datetime.fromtimestamp(md.timestamp, datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
            if md.revision and md.revision != str(md.timestamp):
                date += f" (revision {md.revision})"
            snaps.append(SourceSnapshot(src or recipe.suite, mirror, date, md.timestamp,
                                        hashlib.sha256(raw).hexdigest()))
        universe = Universe(packages)
        wanted += list(recipe.packages)
        if not wanted:
            raise ResolveError(f"nothing to install: the repository has no comps groups and {recipe.name} "
                               "lists no packages")
        chosen = resolve(universe, wanted)
        progress.stage(f"resolve: {len(wanted)} requested -> {len(chosen)} packages")
        first = snaps[0]
        return Plan(recipe, repos[0], first.date, first.epoch, [_artifact(p, origin[id(p)]) for p in chosen],
                    snaps, tuple(sorted(digests)))

    def _variant_packages(self, recipe: Recipe, files: dict[str, RepoFile], mirror: str,
                          cache_dir: Path) -> list[str]:
        """The comps groups behind the recipe's variant (none if the repository has no comps)."""
        kind = next((k for k in GROUP_TYPES if k in files), None)
        if kind is None:
            return []
        f = files[kind]
        with open_decompressed(_metadata(mirror, f, cache_dir), f.href) as stream:
            return comps.group_packages(stream, comps.VARIANT_GROUPS[recipe.variant], f.href)

    def install(self, plan: Plan, files: dict[str, Path], rootfs: Path, progress: Progress) -> None:
        progress.stage(f"install: checking signatures, then rpm --install of {len(files)} packages")
        rootfs.mkdir(parents=True, exist_ok=True)
        with chroot.mounted(rootfs):
            install.install(files, rootfs, Path(plan.recipe.keyring), plan.recipe.exclude_paths,
                            plan.source_date_epoch)
        install.restore_mountpoints(rootfs)

    def package_epoch(self, plan: Plan, files: dict[str, Path]) -> int:
        """The newest build time in the set (each package's signed header)."""
        return max((install.build_time(files[a.name]) for a in plan.packages), default=plan.snapshot_epoch)

    def configure(self, plan: Plan, rootfs: Path, progress: Progress) -> None:
        r = plan.recipe
        progress.stage("configure: hostname, /dev, customize, cleanup")
        configure.write_identity(rootfs, r.hostname)
        if r.customize:
            with chroot.mounted(rootfs):
                configure.customize(rootfs, r, {"SOURCE_DATE_EPOCH": str(plan.source_date_epoch)})
        configure.write_dev(rootfs)
        configure.cleanup(rootfs)
        install.tidy_rpmdb(rootfs)
