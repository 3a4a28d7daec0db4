"""`imagefactory publish`, `imagefactory repo init|verify|list` and `imagefactory pull`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from imagefactory.build.fetch import TIMEOUT_HELP
from imagefactory.core.errors import ImageFactoryError, VerificationError
from imagefactory.core.progress import Progress
from repo.layout import Config, Repo
from repo.publish import init_repo, remove, resign, update_config
from repo.publish import publish as do_publish
from repo.pull import pull as do_pull
from repo.verify import verify_state

REPO_PATH = click.Path(file_okay=False, path_type=Path)


def _emit(data: dict, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=1, sort_keys=True) if as_json else text)


@click.command()
@click.option("--repo", "repo_path", required=True, type=REPO_PATH, envvar="IMAGEFACTORY_REPO",
              help="Repository directory (created by `imagefactory repo init`).")
@click.option("--replace", is_flag=True, help="Overwrite a version already published with different content.")
@click.option("--version", "version", help="Image version (default: from the manifest's snapshot time).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def publish(repo_path: Path, replace: bool, version: str | None, as_json: bool, quiet: bool,
            artifacts: tuple[Path, ...]) -> None:
    """Publish images (<name>.tar.zst + manifest), .deb/.rpm packages and JSON manifests.

    Everything is checked first (manifest hashes, package headers, version
    conflicts, the signing key); then a complete new signed state is written
    beside the old one and switched in with one rename. A kernel-manifest.json
    lying beside given packages is published with them and must agree with
    their hashes.

    \b
    imagefactory publish --repo /srv/repo out/debian-sid.tar.zst
    imagefactory publish --repo /srv/repo kernel/*.deb kernel/*.rpm
    """
    summary = do_publish(Repo(repo_path), list(artifacts), replace=replace, version=version,
                         progress=Progress(quiet=quiet or as_json))
    changed = len(summary["added"]) + len(summary["replaced"])
    text = (f"published state {summary['serial']}: {len(summary['added'])} added, "
            f"{len(summary['replaced'])} replaced, {len(summary['unchanged'])} unchanged"
            if changed else f"nothing to publish: all {len(summary['unchanged'])} artifact(s) already there")
    _emit(summary, as_json, text)


@click.group()
def repo() -> None:
    """Create, check and list a published repository."""


@repo.command("init")
@click.argument("path", type=REPO_PATH)
@click.option("--key", "key_id", help="Sign with this key from your gpg keyring (id or fingerprint).")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Sign with an exported, passphrase-less secret key file (stays outside the repository).")
@click.option("--suite", default="stable", show_default=True, help="APT suite name.")
@click.option("--component", default="main", show_default=True, help="APT component.")
@click.option("--arch", "arches", multiple=True, default=("amd64",), show_default=True,
              help="APT architectures always indexed (repeatable).")
@click.option("--grace", default=3600, show_default=True, help="Seconds a superseded state stays reachable.")
@click.option("--keep", default=2, show_default=True, help="Always keep this many newest states.")
@click.option("--valid-days", default=7.0, show_default=True, type=click.FloatRange(min=0),
              help="Release Valid-Until = now + this (0: none); renew with `repo resign`.")
@click.option("--keep-versions", default=0, show_default=True, type=click.IntRange(min=0),
              help="Keep the newest N versions per image and per package (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def init(path: Path, key_id: str | None, key_file: Path | None, suite: str, component: str, arches: tuple[str, ...],
         grace: int, keep: int, valid_days: float, keep_versions: int, as_json: bool) -> None:
    """Create a repository at PATH with an empty signed first state."""
    if bool(key_id) == bool(key_file):
        raise click.UsageError("give exactly one of --key KEYID or --key-file FILE")
    config = Config(key_id=key_id, key_file=str(key_file.resolve()) if key_file else None, fingerprint="",
                    suite=suite, component=component, architectures=tuple(arches), grace_seconds=grace,
                    keep_states=keep, valid_seconds=round(valid_days * 86400), keep_versions=keep_versions)
    result = init_repo(path, config)
    _emit(result, as_json, f"initialised {path} (key {result['fingerprint']}); serve {path / 'current'}")


@repo.command("configure")
@click.argument("path", type=REPO_PATH)
@click.option("--valid-days", type=click.FloatRange(min=0), help="Release Valid-Until = signing time + this (0: none).")
@click.option("--keep-versions", type=click.IntRange(min=0), help="Newest versions kept per image/package (0: all).")
@click.option("--grace", type=click.IntRange(min=0), help="Seconds a superseded state stays reachable.")
@click.option("--keep", type=click.IntRange(min=1), help="Always keep this many newest states.")
def configure(path: Path, valid_days: float | None, keep_versions: int | None, grace: int | None,
              keep: int | None) -> None:
    """Change the lifecycle settings; they apply from the next publish, resign or remove."""
    changes = {"valid_seconds": None if valid_days is None else round(valid_days * 86400),
               "keep_versions": keep_versions, "grace_seconds": grace, "keep_states": keep}
    config = update_config(Repo(path), {k: v for k, v in changes.items() if v is not None})
    click.echo(f"{path}: Valid-Until +{config.valid_seconds / 86400:g} days, keep {config.keep_versions or 'all'} "
               f"version(s), {config.keep_states} state(s), grace {config.grace_seconds} s")


@repo.command("resign")
@click.argument("path", type=REPO_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def resign_cmd(path: Path, as_json: bool) -> None:
    """Re-sign every index with a fresh Date and Valid-Until (same content, new state).

    Run it from cron well inside the validity period (e.g. daily with --valid-days 7).
    """
    result = resign(Repo(path))
    _emit(result, as_json, f"state {result['serial']}: re-signed, valid until {result['valid_until']}")


@repo.command("remove")
@click.argument("path", type=REPO_PATH)
@click.argument("ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def remove_cmd(path: Path, ids: tuple[str, ...], as_json: bool) -> None:
    """Remove packages or image versions (ids as `repo list` prints them, e.g. debian-sid@20261130_000000).

    The new state no longer lists or holds them; superseded states keep their files until the
    grace period has passed, so downloads already under way finish.
    """
    result = remove(Repo(path), list(ids))
    _emit(result, as_json, f"state {result['serial']}: removed {', '.join(result['removed'])}")


def _state_dir(path: Path) -> tuple[Path, Repo | None]:
    """The state to read: <repo>/current for a repository, else the directory itself (a mirror copy)."""
    repo_obj = Repo(path)
    current = repo_obj.current()
    if current is not None:
        return current, repo_obj
    if (path / "SHA256SUMS").is_file():
        return path, None
    raise ImageFactoryError(f"{path} is neither an imagefactory repository nor a published state")


@repo.command("verify")
@click.argument("path", type=REPO_PATH)
@click.option("--keyring", type=click.Path(dir_okay=False, path_type=Path),
              help="Public key to trust (default: the one recorded by `repo init`).")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def verify(path: Path, keyring: Path | None, as_json: bool) -> None:
    """Re-check every signature, hash and size in the current state."""
    state, repo_obj = _state_dir(path)
    if keyring is None:
        if repo_obj is None or not repo_obj.keyring.is_file():
            raise ImageFactoryError(f"{path} has no recorded key; pass --keyring")
        keyring = repo_obj.keyring
    problems = verify_state(state, keyring)
    if as_json:
        click.echo(json.dumps({"state": str(state), "ok": not problems, "problems": problems}, indent=1))
    else:
        for problem in problems:
            click.echo(f"FAIL {problem}")
    if problems:
        raise VerificationError(f"{len(problems)} problem(s) in {state}; first: {problems[0]}")
    if not as_json:
        click.echo(f"OK {state}: all signatures, hashes and sizes match")


@repo.command("list")
@click.argument("path", type=REPO_PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the published artifacts as JSON.")
def list_(path: Path, as_json: bool) -> None:
    """List published packages and images."""
    state_dir, repo_obj = _state_dir(path)
    state = (repo_obj or Repo(path)).read_state(state_dir)
    rows = ([{"kind": "deb", "id": k, "file": v["filename"], "sha256": v["sha256"], "size": v["size"]}
             for k, v in sorted(state["debs"].items())]
            + [{"kind": "rpm", "id": k, "file": v["filename"], "sha256": v["sha256"], "size": v["size"]}
               for k, v in sorted(state["rpms"].items())]
            + [{"kind": "image", "id": k, "file": v["path"], "sha256": v["sha256"], "size": v["size"]}
               for k, v in sorted(state["images"].items())]
            + [{"kind": "manifest", "id": k, "file": v["path"], "sha256": v["sha256"], "size": v["size"]}
               for k, v in sorted(state["extras"].items())])
    if as_json:
        click.echo(json.dumps({"serial": state["serial"], "artifacts": rows}, indent=1))
        return
    click.echo(f"state {state['serial']}: {len(rows)} artifact(s)")
    for row in rows:
        click.echo(f"{row['kind']:8} {row['id']:50} {row['size']:>12}  {row['sha256'][:16]}")


@click.command(epilog=TIMEOUT_HELP)
@click.argument("url")
@click.argument("name")
@click.option("-o", "--output", "out_dir", required=True, type=REPO_PATH, help="Directory to write into.")
@click.option("--keyring", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The repository's public key (key.gpg or key.asc, obtained out of band).")
@click.option("--version", help="Image version (default: the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def pull(url: str, name: str, out_dir: Path, keyring: Path, version: str | None, as_json: bool,
         quiet: bool) -> None:
    """Download image NAME from the repository at URL and verify it before writing.

    URL is the served state, e.g. http://host/ when the web root is
    <repo>/current. Nothing is written unless the signature on SHA256SUMS and
    every hash check out.
    """
    result = do_pull(url, name, out_dir, keyring, version, Progress(quiet=quiet or as_json))
    _emit(result, as_json, f"{result['image']} ({name} {result['version']}) verified")
