"""The Debian/Ubuntu backend: InRelease -> Packages -> resolver -> dpkg.

Everything read from the mirror is verified before use: InRelease by gpgv
against the recipe's keyring (and Valid-Until), each Packages index by the
SHA256 and size in the signed Release (fetched by-hash when offered), each
.deb by the SHA256 and size in the verified Packages index.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from imagefactory.build import chroot, configure, fetch
from imagefactory.build.debian import install as dpkg_install
from imagefactory.build.debian.debfile import ar_mtime
from imagefactory.build.debian.packages import Package, load_index
from imagefactory.build.debian.release import Release, check_valid_until, parse_release
from imagefactory.build.debian.resolve import Universe, initial_set, resolve
from imagefactory.build.plan import Artifact, BuildOptions, Plan, SourceSnapshot
from imagefactory.build.recipe import Recipe
from imagefactory.build.sources import host_debian_mirror, mirror_for
from imagefactory.core import memo
from imagefactory.core.errors import MirrorInconsistent, RecipeError, VerificationError
from imagefactory.core.gpgv import verify_clearsigned
from imagefactory.core.progress import Progress

DEFAULT_KEYRINGS = {
    "debian": "/usr/share/keyrings/debian-archive-keyring.gpg",
    "ubuntu": "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
}


def index_arches(rel: Release, component: str, arch: str) -> list[str]:
    """Architectures whose Packages index to read for one component: the arch's, plus
    binary-all when the Release lists it split out."""
    if not any(f"{component}/binary-{arch}/Packages{ext}" in rel.files for ext in INDEX_EXTS):
        raise VerificationError(f"Release lists no {component}/binary-{arch}/Packages index "
                                "(component or architecture missing?)")
    listed = any(f"{component}/binary-all/Packages{ext}" in rel.files for ext in INDEX_EXTS)
    return [arch] + (["all"] if rel.arch_all_separate and listed else [])


INDEX_EXTS = (".xz", ".gz", "")


def index_candidates(mirror: str, suite: str, rel: Release, component: str, arch: str) -> list[tuple[str, str]]:
    """Every (url, Release name) that can supply one Packages index, best first: each
    compression the signed Release lists, by-hash (when offered) before the plain name.
    Each is verified against the Release's SHA256 and size, so any may be used."""
    out = []
    listed = [e for e in INDEX_EXTS if f"{component}/binary-{arch}/Packages{e}" in rel.files]
    for ext in [e for e in listed if e] or listed:  # the uncompressed copy only when nothing else is listed
        name = f"{component}/binary-{arch}/Packages{ext}"
        if rel.by_hash:
            out.append((f"{mirror}/dists/{suite}/{component}/binary-{arch}/by-hash/SHA256/{rel.files[name].sha256}",
                        name))
        out.append((f"{mirror}/dists/{suite}/{name}", name))
    return out


def fetch_index(mirror: str, suite: str, rel: Release, component: str, arch: str,
                cache_dir: Path) -> list[Package]:
    """One Packages index from the first candidate that verifies; never an unverified one.

    A missing file (404) or one whose bytes do not match the signed Release
    moves on to the next candidate (a mirror mid-sync has both); network
    failures end the build at once. No candidate left: MirrorInconsistent."""
    tried = []
    for url, name in index_candidates(mirror, suite, rel, component, arch):
        f = rel.files[name]
        try:
            return load_index(fetch.cached_fetch(url, f.sha256, f.size, cache_dir), name)
        except (fetch.MissingFile, VerificationError) as exc:
            how = "by-hash" if "/by-hash/" in url else "plain"
            tried.append(f"{name.rpartition('/')[2]} {how}: {str(exc).removeprefix(url + ': ')}")
    raise MirrorInconsistent(
        f"mirror inconsistent (probably mid-sync): no copy of dists/{suite}/{component}/binary-{arch}/Packages "
        f"on {mirror} matches the signed Release ({'; '.join(tried)}); try again later or another mirror"
    )


MEMO_FORMAT = 3  # bump when the memoized records change shape


@dataclass(frozen=True)
class Source:
    """One verified suite of a recipe."""

    suite: str
    mirror: str
    release: Release
    text: str  # the signed Release text gpgv vouched for


def source_entries(recipe: Recipe, main_mirror: str) -> list[tuple[str, str]]:
    """(mirror, suite) of each of the recipe's sources: 'URL SUITE' as given, a security suite from the
    host's security archive, any other suite from the main mirror."""
    out = []
    for entry in recipe.sources or (recipe.suite,):
        parts = entry.split()
        out.append((parts[0].rstrip("/"), parts[1]) if len(parts) == 2 else (mirror_for(parts[0], main_mirror),
                                                                            parts[0]))
    return out


def _component_ok(rel: Release, comp: str) -> bool:
    """The security archive lists its components as 'updates/main' but serves them as 'main'."""
    return not rel.components or any(c == comp or c.endswith("/" + comp) for c in rel.components)


class DebianBackend:
    """Debian-family guests (Debian, Ubuntu)."""

    def __init__(self) -> None:
        self.selected: list[Package] = []
        self.base_names: set[str] | None = None
        self.cache_dir = Path()

    def _release(self, mirror: str, suite: str, keyring: Path, opts: BuildOptions, progress: Progress) -> Source:
        progress.stage(f"release: {mirror} {suite}")
        raw = fetch.fetch_url(f"{mirror}/dists/{suite}/InRelease")
        text = verify_clearsigned(raw, keyring, f"InRelease of {suite}").decode("utf-8", "replace")
        rel = parse_release(text)
        check_valid_until(rel, datetime.now(UTC), opts.allow_expired_release)
        return Source(suite, mirror, rel, text)

    def plan(self, recipe: Recipe, opts: BuildOptions, progress: Progress) -> Plan:
        self.cache_dir = opts.cache_dir
        mirror = (opts.mirror or recipe.mirror or host_debian_mirror()).rstrip("/")
        keyring = Path(recipe.keyring or DEFAULT_KEYRINGS[recipe.family])
        entries = source_entries(recipe, mirror)
        # Each Release is verified on its own (its own signature, its own Valid-Until).
        with ThreadPoolExecutor(max_workers=len(entries)) as pool:
            srcs = list(pool.map(lambda e: self._release(e[0], e[1], keyring, opts, progress), entries))
        # The resolution is a pure function of the signed Releases and the recipe: memoize it.
        texts = "\n".join(f"{s.mirror} {s.suite}\n{s.text}" for s in srcs)
        # Only what the resolution reads is keyed (not customize steps or the hostname).
        what = json.dumps([recipe.family, recipe.architecture, recipe.components, recipe.variant, recipe.packages])
        memo_key = hashlib.sha256(f"{MEMO_FORMAT}\n{what}\n{texts}".encode()).hexdigest()
        (essential, self.selected, origins, self.base_names, digests), reused = memo.memoized(
            opts.cache_dir / "plans" / memo_key, MEMO_FORMAT, lambda: self._resolve(recipe, srcs, opts, progress))
        if reused:
            progress.stage(f"resolve: reusing the resolution for these Releases ({len(self.selected)} packages)")
        arts = [
            Artifact(p.name, p.version, p.architecture, f"{srcs[o].mirror}/{p.filename}", p.sha256, p.size,
                     p.name in essential)
            for p, o in zip(self.selected, origins, strict=True)
        ]
        base = None if self.base_names is None else [a for a in arts if a.name in self.base_names]
        first = srcs[0].release
        snaps = [SourceSnapshot(s.suite, s.mirror, s.release.date_text, int(s.release.date.timestamp()),
                                hashlib.sha256(s.text.encode()).hexdigest()) for s in srcs]
        return Plan(recipe, mirror, first.date_text, int(first.date.timestamp()), arts, snaps, digests, base)

    def _resolve(self, recipe: Recipe, srcs: list[Source], opts: BuildOptions, progress: Progress
                 ) -> tuple[set[str], list[Package], list[int], set[str] | None, tuple[str, ...]]:
        """Fetch + verify the indices of every source and resolve: (essential closure, full selection,
        the source of each selected package, the names of the set without extra packages, index hashes)."""
        jobs: list[tuple[int, str, str]] = []  # (source, component, architecture)
        digests: list[str] = []
        for i, src in enumerate(srcs):
            rel = src.release
            for comp in recipe.components:
                if not _component_ok(rel, comp):
                    raise RecipeError(f"{recipe.source}: key 'components': {comp!r} is not in {src.suite}")
                for arch in index_arches(rel, comp, recipe.architecture):
                    jobs.append((i, comp, arch))
                    digests += [rel.files[n].sha256 for _, n in index_candidates(src.mirror, src.suite, rel, comp,
                                                                                    arch)]

        def one(job: tuple[int, str, str]) -> list[Package] | MirrorInconsistent:
            src = srcs[job[0]]
            try:
                return fetch_index(src.mirror, src.suite, src.release, job[1], job[2], opts.cache_dir)
            except MirrorInconsistent as exc:
                if job[2] != "all":
                    raise
                return exc

        # Downloads and lzma decompression of the indices overlap (both release the GIL).
        packages: list[Package] = []
        origin: dict[tuple[str, str, str], int] = {}
        with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
            results = dict(zip(jobs, pool.map(one, jobs), strict=True))
        for (i, comp, _arch), result in results.items():
            if isinstance(result, MirrorInconsistent):
                # The Release says (No-Support-for-Architecture-all: Packages) that the per-architecture index
                # carries the Architecture: all packages too: use them, if they really are there.
                per_arch = results[(i, comp, recipe.architecture)]
                if isinstance(per_arch, MirrorInconsistent) or not any(p.architecture == "all" for p in per_arch):
                    raise result
                progress.warn(f"{srcs[i].mirror}: dists/{srcs[i].suite}/{comp}/binary-all/Packages cannot be "
                              f"verified (probably mid-sync); using the Architecture: all packages of "
                              f"binary-{recipe.architecture}")
                continue
            packages += result
            for p in result:
                origin.setdefault((p.name, p.version, p.sha256), i)
        progress.stage(f"resolve: {len(packages)} packages in {len(srcs)} source(s), variant {recipe.variant}")
        # Like apt with equal pins: the highest version of a name wins across all sources.
        universe = Universe(packages, recipe.architecture)
        suites = "+".join(s.suite for s in srcs)
        where = f"{suites} {'/'.join(recipe.components)} {recipe.architecture}"
        # The essential closure is what gets tar-extracted first so dpkg can run in the chroot.
        essential = {p.name for p in resolve(universe, initial_set(universe, "essential", ()), where)}
        selected = resolve(universe, initial_set(universe, recipe.variant, recipe.packages), where)
        base: set[str] | None = None
        if recipe.packages:  # the set a cached base tree would hold
            base_set = resolve(universe, initial_set(universe, recipe.variant, ()), where)
            chosen = {(p.name, p.version) for p in selected}
            if all((p.name, p.version) in chosen for p in base_set):
                base = {p.name for p in base_set}
        else:
            base = {p.name for p in selected}
        origins = [origin[(p.name, p.version, p.sha256)] for p in selected]
        return essential, selected, origins, base, tuple(sorted(set(digests)))

    def install(self, plan: Plan, files: dict[str, Path], rootfs: Path, progress: Progress) -> None:
        r = plan.recipe
        essential = {a.name for a in plan.packages if a.essential}
        dpkg_install.install(rootfs, self.selected, essential, files, self.cache_dir, r.architecture, r.exclude_paths,
                             plan.source_date_epoch, progress)

    def install_more(self, plan: Plan, files: dict[str, Path], rootfs: Path, installed: set[str],
                     progress: Progress) -> None:
        """Install the packages of the plan that a copied base tree (holding `installed`) lacks."""
        have = [p for p in self.selected if p.name in installed]
        extra = [p for p in self.selected if p.name not in installed]
        dpkg_install.install_more(rootfs, extra, have, files, self.cache_dir, plan.recipe.architecture,
                                  plan.recipe.exclude_paths, plan.source_date_epoch, progress)

    def package_epoch(self, plan: Plan, files: dict[str, Path]) -> int:
        return max((ar_mtime(files[a.name]) for a in plan.packages), default=plan.snapshot_epoch)

    def configure(self, plan: Plan, rootfs: Path, progress: Progress) -> None:
        r = plan.recipe
        progress.stage("configure: hostname, /dev, apt sources, customize, cleanup")
        configure.write_identity(rootfs, r.hostname)
        configure.write_apt_sources(rootfs, r, [(s.mirror, s.suite) for s in plan.sources] or
                                    [(plan.mirror, r.suite)])
        if r.customize:
            env = {"SOURCE_DATE_EPOCH": str(plan.source_date_epoch)}
            with chroot.mounted(rootfs):
                configure.customize(rootfs, r, env)
        configure.write_dev(rootfs)
        configure.cleanup(rootfs)
