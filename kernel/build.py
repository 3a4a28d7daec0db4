"""Build kernel packages from a recipe, cached by everything that decides the result.

Steps: unpack source, apply patches (dry run first), configure (base target,
merge_config.sh with the recipe's fragments, olddefconfig), check that every
requested option stuck, `make bindeb-pkg` / `binrpm-pkg`, then write a
manifest. All tool output goes to one log file in the build directory; a
failure names its step and keeps the log. The cache key hashes the source
tarball, the patches, the merged config request, LOCALVERSION and the formats,
so a repeated build with the same inputs only copies the cached packages.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagefactory.core.atomic import staged_path, write_text
from imagefactory.core.errors import EnvironmentProblem, ImageFactoryError, RecipeError
from imagefactory.core.hashing import sha256_file
from imagefactory.core.progress import Progress
from kernel.config import parse_config, render_fragment, unmet_options
from kernel.debsource import ArchiveAccess
from kernel.patching import apply_patch
from kernel.patchstats import parse_patch, read_patch
from kernel.recipe import KernelRecipe
from kernel.source import USR_SRC, resolve_patch, resolve_source

DEFAULT_CACHE = Path(os.environ.get("IMAGEFACTORY_KERNEL_CACHE", "/var/cache/imagefactory/kernel"))
MANIFEST = "kernel-manifest.json"
MANIFEST_SCHEMA = "imagefactory-kernel-manifest/1"
# dh_listpackages (debhelper): 6.12's bindeb-pkg runs dpkg-buildpackage, which checks Build-Depends.
TOOLS = {"common": ["make", "gcc", "flex", "bison", "bc", "patch", "tar", "perl"],
         "deb": ["dpkg-deb", "dh_listpackages"], "rpm": ["rpmbuild"]}


class KernelBuildError(ImageFactoryError):
    """A build step failed; the message names the step and the kept log."""


@dataclass(frozen=True)
class BuildInputs:
    """Everything resolved and hashed before building; `key` names the cache entry."""

    recipe: KernelRecipe
    tarball: Path
    tarball_sha256: str
    patches: list[tuple[str, Path, str]]  # (name, path, sha256)
    fragment: str  # canonical merged config request
    key: str
    origin: dict = field(default_factory=dict)  # archive provenance of a [source] suite fetch


def cache_key(tarball_sha256: str, patch_hashes: list[str], fragment: str, base: str, localversion: str,
              formats: list[str]) -> str:
    """Pure: the same inputs give the same key; any change gives another."""
    material = json.dumps(
        {"source": tarball_sha256, "patches": patch_hashes, "config": fragment, "base": base,
         "localversion": localversion, "formats": sorted(formats)},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def _base_identity(recipe: KernelRecipe) -> str:
    """A base config file enters the key by content, a make target by name."""
    path = Path(recipe.config_base)
    return f"file:{sha256_file(path)[0]}" if path.is_absolute() else recipe.config_base


def resolve_inputs(recipe: KernelRecipe, cache_root: Path, usr_src: Path = USR_SRC, access: ArchiveAccess | None = None,
                   progress: Progress | None = None) -> BuildInputs:
    downloads = cache_root / "downloads"
    src = resolve_source(recipe.source, downloads, usr_src, access, progress)
    patches = [(p.name, *resolve_patch(p, downloads)) for p in recipe.patches]
    fragment = render_fragment(recipe.config_request)
    key = cache_key(src.sha256, [p[2] for p in patches], fragment, _base_identity(recipe), recipe.localversion,
                    recipe.formats)
    return BuildInputs(recipe, src.tarball, src.sha256, patches, fragment, key, src.origin)


def check_tools(formats: list[str]) -> None:
    needed = TOOLS["common"] + [t for f in formats for t in TOOLS[f]]
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        raise EnvironmentProblem(f"kernel build needs {', '.join(missing)} (scripts/setup installs them)")


@dataclass
class BuildResult:
    manifest: dict
    manifest_path: Path
    packages: list[Path]
    cached: bool


def _cached_manifest(build_dir: Path) -> dict | None:
    """The manifest of a finished build whose packages are all still intact."""
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
        for pkg in manifest["packages"]:
            path = build_dir / pkg["file"]
            if path.stat().st_size != pkg["size"] or sha256_file(path)[0] != pkg["sha256"]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _Steps:
    """Runs named steps with output to the log; turns a failure into KernelBuildError."""

    def __init__(self, log_path: Path, progress: Progress) -> None:
        self.log_path = log_path
        self.log = open(log_path, "w", buffering=1)
        self.progress = progress

    def fail(self, step: str, detail: str) -> KernelBuildError:
        self.log.write(f"\n*** step '{step}' failed: {detail}\n")
        return KernelBuildError(f"kernel build failed at step '{step}': {detail}; log kept: {self.log_path}")

    def run(self, step: str, argv: list[str], cwd: Path, env: dict | None = None) -> None:
        self.progress.stage(f"kernel: {step}")
        self.log.write(f"\n=== {step}: {' '.join(argv)}\n")
        self.log.flush()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        last = time.monotonic()
        while proc.poll() is None:
            time.sleep(1)
            if time.monotonic() - last >= 20:
                last = time.monotonic()
                done = (f"{_count_compiled(self.log_path)} objects compiled so far" if argv[0] == "make"
                        else "still running")
                self.progress.stage(f"kernel: {step}: {done}")
        if proc.returncode != 0:
            raise self.fail(step, f"{argv[0]} exited {proc.returncode} ({_last_error(self.log_path)})")

    def close(self) -> None:
        self.log.close()


def _count_compiled(log: Path) -> int:
    with open(log, "rb") as handle:
        return sum(1 for line in handle if line.startswith(b"  CC "))


def _last_error(log: Path) -> str:
    """The last line that says error, to put the cause in the one-line message."""
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if "error" in line.lower() and not line.startswith("===") and not re.match(r"make(\[\d+\])?: \*\*\*", line):
            return line.strip()[:200]
    return lines[-1].strip()[:200] if lines else "no output"


def _make_env(build_dir: Path) -> dict:
    env = dict(os.environ, LC_ALL="C", KBUILD_BUILD_USER="imagefactory", KBUILD_BUILD_HOST="imagefactory",
               DEBEMAIL="imagefactory@localhost", DEBFULLNAME="imagefactory", HOME=str(build_dir))
    return env


def _unpack(steps: _Steps, inputs: BuildInputs, build_dir: Path) -> Path:
    src_parent = build_dir / "src"
    if src_parent.exists():
        shutil.rmtree(src_parent)  # a failed earlier attempt: start from pristine source
    src_parent.mkdir()
    steps.run("unpack source", ["tar", "-xf", str(inputs.tarball), "--no-same-owner", "-C", str(src_parent)], build_dir)
    tops = [p for p in src_parent.iterdir() if p.is_dir()]
    if len(tops) != 1 or not (tops[0] / "Makefile").is_file():
        raise steps.fail("unpack source", f"{inputs.tarball} does not hold one kernel source directory")
    return tops[0]


def _configure(steps: _Steps, inputs: BuildInputs, tree: Path, env: dict) -> dict:
    recipe = inputs.recipe
    if Path(recipe.config_base).is_absolute():
        shutil.copyfile(recipe.config_base, tree / ".config")
        steps.run("config: base file", ["make", "olddefconfig"], tree, env)
    else:
        steps.run(f"config: make {recipe.config_base}", ["make", recipe.config_base], tree, env)
    (tree / "imagefactory.config").write_text(inputs.fragment)
    steps.run("config: merge fragments", ["scripts/kconfig/merge_config.sh", "-m", ".config", "imagefactory.config"],
              tree, env)
    steps.run("config: make olddefconfig", ["make", "olddefconfig"], tree, env)
    final = parse_config((tree / ".config").read_text(), ".config")
    problems = unmet_options(recipe.config_request, final)
    if problems:
        steps.fail("config check", "; ".join(problems))
        raise RecipeError(
            f"kernel config options did not stick (missing dependencies?): {'; '.join(problems)}; "
            f"log kept: {steps.log_path}"
        )
    return final


def _package_files(build_dir: Path, formats: list[str]) -> list[Path]:
    files = sorted((build_dir / "src").glob("*.deb")) if "deb" in formats else []
    if "rpm" in formats:
        files += sorted((build_dir / "rpmbuild" / "RPMS").rglob("*.rpm"))
    return files


def build(inputs: BuildInputs, out_dir: Path, cache_root: Path = DEFAULT_CACHE, jobs: int | None = None,
          progress: Progress | None = None) -> BuildResult:
    """Build (or reuse) the packages for inputs and copy them plus the manifest into out_dir."""
    progress = progress or Progress()
    recipe = inputs.recipe
    build_dir = cache_root / inputs.key
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{inputs.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = _cached_manifest(build_dir)
        cached = manifest is not None
        if manifest is not None:
            progress.stage(f"kernel: {recipe.name} is up to date (cache {build_dir})")
        else:
            check_tools(recipe.formats)
            manifest = _build(inputs, build_dir, jobs or os.cpu_count() or 1, progress)
        packages = _publish(build_dir, manifest, out_dir)
    return BuildResult(manifest, out_dir / MANIFEST, packages, cached)


def _prepare_tree(steps: _Steps, inputs: BuildInputs, build_dir: Path, env: dict) -> Path:
    """Unpack the source, apply the patches, configure and check the config; the ready tree."""
    tree = _unpack(steps, inputs, build_dir)
    for name, path, _sha in inputs.patches:
        steps.progress.stage(f"kernel: patch {name}")
        try:
            apply_patch(tree, name, path, steps.log)
        except RecipeError as exc:
            steps.fail(f"patch {name}", str(exc))
            raise RecipeError(f"{exc}; log kept: {steps.log_path}") from None
    _configure(steps, inputs, tree, env)
    return tree


@dataclass(frozen=True)
class ConfigureResult:
    """What `kernel build --configure-only` proved: the patches apply and every requested option stuck."""

    recipe: str
    kernel_version: str
    patches: list[str]
    options_checked: int
    config: Path  # the final .config, kept
    log: Path


def configure_only(inputs: BuildInputs, cache_root: Path = DEFAULT_CACHE,
                   progress: Progress | None = None) -> ConfigureResult:
    """Unpack, patch and configure without compiling (a CI-sized proof of a recipe); the tree is removed after."""
    progress = progress or Progress()
    check_tools([])
    work = cache_root / f"{inputs.key}-configure"
    work.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{inputs.key}-configure.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        steps = _Steps(work / "configure.log", progress)
        try:
            tree = _prepare_tree(steps, inputs, work, _make_env(work))
            version = subprocess.run(["make", "-s", "kernelversion"], cwd=tree, capture_output=True, text=True,
                                     env=_make_env(work)).stdout.strip()
            shutil.copyfile(tree / ".config", work / "final.config")
        finally:
            steps.close()
            shutil.rmtree(work / "src", ignore_errors=True)
    return ConfigureResult(inputs.recipe.name, version, [name for name, _p, _s in inputs.patches],
                           len(inputs.recipe.config_request), work / "final.config", work / "configure.log")


def _build(inputs: BuildInputs, build_dir: Path, jobs: int, progress: Progress) -> dict:
    recipe = inputs.recipe
    (build_dir / MANIFEST).unlink(missing_ok=True)
    steps = _Steps(build_dir / "build.log", progress)
    progress.stage(f"kernel: building {recipe.name} in {build_dir} (log: {steps.log_path})")
    try:
        env = _make_env(build_dir)
        tree = _prepare_tree(steps, inputs, build_dir, env)
        # One package target per make run: two in one `make -j` race on the shared build (objtool).
        for fmt in recipe.formats:
            target = {"deb": "bindeb-pkg", "rpm": "binrpm-pkg"}[fmt]
            argv = ["make", f"-j{jobs}", target]
            if fmt == "rpm":
                argv.append(f'RPMOPTS=--define "_topdir {build_dir / "rpmbuild"}"')
            steps.run(f"make {target}", argv, tree, env)
        release = (tree / "include/config/kernel.release").read_text().strip()
        files = _package_files(build_dir, recipe.formats)
        if not any(re.match(r"linux-image-|kernel-\d", f.name) for f in files):
            raise steps.fail("collect packages", "the build produced no kernel image package")
        manifest = _manifest(inputs, tree, release, files, build_dir)
    finally:
        steps.close()
    write_text(build_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _manifest(inputs: BuildInputs, tree: Path, release: str, files: list[Path], build_dir: Path) -> dict:
    recipe = inputs.recipe
    return {
        "schema": MANIFEST_SCHEMA,
        "recipe": recipe.name,
        "kernel_release": release,
        "cache_key": inputs.key,
        "source": {"tarball": inputs.tarball.name, "sha256": inputs.tarball_sha256,
                   "debian_package": recipe.source.debian_package,
                   **({"archive": inputs.origin} if inputs.origin else {})},
        "patches": [
            {"name": name, "sha256": sha,
             **{k: v for k, v in parse_patch(read_patch(path), name).to_dict().items() if k != "name"}}
            for name, path, sha in inputs.patches
        ],
        "config": {
            "base": recipe.config_base if not Path(recipe.config_base).is_absolute() else Path(recipe.config_base).name,
            "fragments": [{"name": f.name, "sha256": sha256_file(f)[0]} for f in recipe.fragments],
            "request_sha256": hashlib.sha256(inputs.fragment.encode()).hexdigest(),
            "final_sha256": sha256_file(tree / ".config")[0],
        },
        "localversion": recipe.localversion,
        "formats": recipe.formats,
        "packages": [
            {"file": str(f.relative_to(build_dir)), "name": f.name, "sha256": sha256_file(f)[0],
             "size": f.stat().st_size}
            for f in files
        ],
    }


def _publish(build_dir: Path, manifest: dict, out_dir: Path) -> list[Path]:
    """Copy packages (if not already identical there) and the manifest into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for pkg in manifest["packages"]:
        target = out_dir / pkg["name"]
        if not (target.is_file() and target.stat().st_size == pkg["size"] and sha256_file(target)[0] == pkg["sha256"]):
            with staged_path(target) as stage:
                shutil.copyfile(build_dir / pkg["file"], stage)
        copied.append(target)
    public = {**manifest, "packages": [{k: v for k, v in p.items() if k != "file"} for p in manifest["packages"]]}
    write_text(out_dir / MANIFEST, json.dumps(public, indent=2) + "\n")
    return copied
