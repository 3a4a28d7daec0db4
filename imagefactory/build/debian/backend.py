"""The Debian/Ubuntu backend: InRelease -> Packages -> resolver -> dpkg.

Everything read from the mirror is verified before use: InRelease by gpgv
against the recipe's keyring (and Valid-Until), each Packages index by the
SHA256 and size in the signed Release (fetched by-hash when offered), each
.deb by the SHA256 and size in the verified Packages index.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from imagefactory.build import chroot, configure, fetch
from imagefactory.build.debian import install as dpkg_install
from imagefactory.build.debian.packages import Package, load_index
from imagefactory.build.debian.release import Release, check_valid_until, parse_release
from imagefactory.build.debian.resolve import Universe, initial_set, resolve
from imagefactory.build.plan import Artifact, BuildOptions, Plan
from imagefactory.build.recipe import Recipe
from imagefactory.build.sources import host_debian_mirror
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


MEMO_FORMAT = 2  # bump when the memoized records change shape


def _load_memo(path: Path):
    """A memoized resolution, or None if absent or unreadable (it is then recomputed)."""
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except Exception:  # missing, truncated, or written by another version of the records
        return None


def _save_memo(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("wb") as f:
        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


class DebianBackend:
    """Debian-family guests (Debian, Ubuntu)."""

    def __init__(self) -> None:
        self.selected: list[Package] = []
        self.cache_dir = Path()

    def plan(self, recipe: Recipe, opts: BuildOptions, progress: Progress) -> Plan:
        self.cache_dir = opts.cache_dir
        mirror = (opts.mirror or recipe.mirror or host_debian_mirror()).rstrip("/")
        keyring = Path(recipe.keyring or DEFAULT_KEYRINGS[recipe.family])
        progress.stage(f"release: {mirror} {recipe.suite}")
        raw = fetch.fetch_url(f"{mirror}/dists/{recipe.suite}/InRelease")
        text = verify_clearsigned(raw, keyring, f"InRelease of {recipe.suite}").decode("utf-8", "replace")
        rel = parse_release(text)
        check_valid_until(rel, datetime.now(UTC), opts.allow_expired_release)
        # The resolution is a pure function of the signed Release and the recipe: memoize it.
        memo_key = hashlib.sha256(f"{MEMO_FORMAT}\n{recipe.digest}\n{text}".encode()).hexdigest()
        memo = opts.cache_dir / "plans" / memo_key
        cached = _load_memo(memo)
        if cached is not None:
            essential, self.selected = cached
            progress.stage(f"resolve: reusing the resolution for this Release ({len(self.selected)} packages)")
        else:
            essential, self.selected = self._resolve(recipe, rel, mirror, opts, progress)
            _save_memo(memo, (essential, self.selected))
        arts = [
            Artifact(p.name, p.version, p.architecture, f"{mirror}/{p.filename}", p.sha256, p.size,
                     p.name in essential)
            for p in self.selected
        ]
        return Plan(recipe, mirror, rel.date_text, int(rel.date.timestamp()), arts)

    def _resolve(self, recipe: Recipe, rel: Release, mirror: str, opts: BuildOptions,
                 progress: Progress) -> tuple[set[str], list[Package]]:
        """Fetch + verify the indices and resolve: (essential closure, full selection)."""
        jobs = []
        for comp in recipe.components:
            if rel.components and comp not in rel.components:
                raise RecipeError(f"{recipe.source}: key 'components': {comp!r} is not in {recipe.suite}")
            jobs += [(comp, a) for a in index_arches(rel, comp, recipe.architecture)]

        def one(job: tuple[str, str]) -> list[Package] | MirrorInconsistent:
            try:
                return fetch_index(mirror, recipe.suite, rel, *job, opts.cache_dir)
            except MirrorInconsistent as exc:
                if job[1] != "all":
                    raise
                return exc

        # Downloads and lzma decompression of the indices overlap (both release the GIL).
        packages: list[Package] = []
        with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
            results = dict(zip(jobs, pool.map(one, jobs), strict=True))
        for (comp, _arch), result in results.items():
            if not isinstance(result, MirrorInconsistent):
                packages += result
                continue
            # The Release says (No-Support-for-Architecture-all: Packages) that the per-architecture index
            # carries the Architecture: all packages too: use them, if they really are there.
            per_arch = results[(comp, recipe.architecture)]
            if isinstance(per_arch, MirrorInconsistent) or not any(p.architecture == "all" for p in per_arch):
                raise result
            progress.warn(f"{mirror}: dists/{recipe.suite}/{comp}/binary-all/Packages cannot be verified "
                          f"(probably mid-sync); using the Architecture: all packages of binary-{recipe.architecture}")
        progress.stage(f"resolve: {len(packages)} packages in the index, variant {recipe.variant}")
        universe = Universe(packages, recipe.architecture)
        where = f"{recipe.suite} {'/'.join(recipe.components)} {recipe.architecture}"
        # The essential closure is what gets tar-extracted first so dpkg can run in the chroot.
        essential = {p.name for p in resolve(universe, initial_set(universe, "essential", ()), where)}
        return essential, resolve(universe, initial_set(universe, recipe.variant, recipe.packages), where)

    def install(self, plan: Plan, files: dict[str, Path], rootfs: Path, progress: Progress) -> None:
        r = plan.recipe
        essential = {a.name for a in plan.packages if a.essential}
        dpkg_install.install(rootfs, self.selected, essential, files, self.cache_dir, r.architecture, r.exclude_paths,
                             plan.snapshot_epoch, progress)

    def configure(self, plan: Plan, rootfs: Path, progress: Progress) -> None:
        r = plan.recipe
        progress.stage("configure: hostname, /dev, apt sources, customize, cleanup")
        configure.write_identity(rootfs, r.hostname)
        configure.write_apt_sources(rootfs, r, plan.mirror)
        if r.customize:
            env = {"SOURCE_DATE_EPOCH": str(plan.snapshot_epoch)}
            with chroot.mounted(rootfs):
                configure.customize(rootfs, r, env)
        configure.write_dev(rootfs)
        configure.cleanup(rootfs)
