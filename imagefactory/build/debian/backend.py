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
from imagefactory.core.errors import RecipeError, VerificationError
from imagefactory.core.gpgv import verify_clearsigned
from imagefactory.core.progress import Progress

DEFAULT_KEYRINGS = {
    "debian": "/usr/share/keyrings/debian-archive-keyring.gpg",
    "ubuntu": "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
}


def index_names(rel: Release, component: str, arch: str) -> list[str]:
    """Packages indices to read for one component: the arch's, plus binary-all when split out."""
    arches = [arch] + (["all"] if rel.arch_all_separate else [])
    names = []
    for a in arches:
        base = f"{component}/binary-{a}/Packages"
        for ext in (".xz", ".gz", ""):
            if base + ext in rel.files:
                names.append(base + ext)
                break
        else:
            if a == arch:
                raise VerificationError(f"Release lists no {base} index (component or architecture missing?)")
    return names


def index_url(mirror: str, suite: str, rel: Release, name: str) -> str:
    f = rel.files[name]
    if rel.by_hash:
        return f"{mirror}/dists/{suite}/{name.rsplit('/', 1)[0]}/by-hash/SHA256/{f.sha256}"
    return f"{mirror}/dists/{suite}/{name}"


MEMO_FORMAT = 2  # bump when the memoized records change shape


def _fetch_index(url: str, sha256: str, size: int, cache_dir: Path, name: str) -> list[Package]:
    """Download (verified) and parse one Packages index."""
    return load_index(fetch.cached_fetch(url, sha256, size, cache_dir), name)


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
        packages: list[Package] = []
        names = []
        for comp in recipe.components:
            if rel.components and comp not in rel.components:
                raise RecipeError(f"{recipe.source}: key 'components': {comp!r} is not in {recipe.suite}")
            names += index_names(rel, comp, recipe.architecture)

        # Downloads and lzma decompression of the indices overlap (both release the GIL).
        jobs = [(index_url(mirror, recipe.suite, rel, n), rel.files[n].sha256, rel.files[n].size,
                 opts.cache_dir, n) for n in names]
        with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
            for result in pool.map(_fetch_index, *zip(*jobs, strict=True)):
                packages += result
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
