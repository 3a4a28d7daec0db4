"""Publish artifacts: validate everything, then write one new signed state and switch to it.

Order matters for "bad input leaves the repository unchanged": all inputs are
read and checked, the key is unlocked and conflicts are decided before the
first byte of the new state is written; any later failure discards the
staging directory and `current` still points at the old state.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagefactory.core.errors import ImageFactoryError
from imagefactory.core.hashing import sha256_file
from imagefactory.core.progress import Progress
from repo import apt, images, lifecycle, rpmmd, streams
from repo.artifacts import Deb, Extra, Image, Rpm, read_any, with_kernel_manifests
from repo.layout import STATE_FILE, Config, Repo, copy_in, put, retained
from repo.sign import Signer, SigningKeyError

SECTIONS = {Deb: "debs", Rpm: "rpms", Image: "images", Extra: "extras"}
GENERATED = ("dists", f"{rpmmd.RPM_DIR}/repodata", "streams", "SHA256SUMS", "SHA256SUMS.gpg", "key.gpg", "key.asc")


class ConflictError(ImageFactoryError):
    """The same version is already published with different content."""


@dataclass
class Plan:
    add: list = field(default_factory=list)
    replace: list = field(default_factory=list)
    unchanged: list = field(default_factory=list)


def plan_changes(state: dict, artifacts: list, replace: bool) -> Plan:
    """Decide per artifact: new, replacing, or already there (pure; raises on conflicts)."""
    plan = Plan()
    seen: dict[tuple[str, str], str] = {}  # (section, key) -> sha256
    for art in artifacts:
        section = SECTIONS[type(art)]
        ident = (section, art.key)
        if ident in seen:
            if seen[ident] != art.sha256:
                raise ConflictError(f"{art.path}: {art.key} is given twice with different content")
            continue
        seen[ident] = art.sha256
        old = state[section].get(art.key)
        if old is None:
            plan.add.append(art)
        elif old["source_sha256"] == art.sha256:
            plan.unchanged.append(art)
        elif replace:
            plan.replace.append(art)
        else:
            raise ConflictError(f"{art.key} is already published with different content "
                                f"(sha256 {old['source_sha256'][:12]}… vs {art.sha256[:12]}…); "
                                "pass --replace to overwrite it")
    return plan


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _add(stage: Path, config: Config, art, state: dict) -> None:
    """Copy one artifact into the staging state and record it."""
    if isinstance(art, Deb):
        rel = apt.pool_path(config.component, art.package, art.version, art.architecture)
        md5 = _md5(copy_in(stage, rel, art.path))
        state["debs"][art.key] = {"package": art.package, "version": art.version,
                                  "architecture": art.architecture, "filename": rel, "size": art.size,
                                  "sha256": art.sha256, "md5": md5, "source_sha256": art.sha256,
                                  "control": art.control}
    elif isinstance(art, Rpm):
        rel = f"{rpmmd.RPM_DIR}/Packages/{art.name}-{art.version}-{art.release}.{art.arch}.rpm"
        copy_in(stage, rel, art.path)  # signed (and hashed again) by _sign_rpms
        state["rpms"][art.key] = {"name": art.name, "epoch": art.epoch, "version": art.version,
                                  "release": art.release, "arch": art.arch, "filename": rel, "size": art.size,
                                  "sha256": art.sha256, "source_sha256": art.sha256}
    elif isinstance(art, Image):
        old = state["images"].get(art.key)
        base = streams.image_dir(art.name, art.version)
        rel, mrel = f"{base}/{art.name}.tar.zst", f"{base}/{art.name}.manifest.json"
        copy_in(stage, rel, art.path)
        copy_in(stage, mrel, art.manifest_path)
        published = []
        for rec, source in art.formats:
            dest = images.destination(art.name, base, rec)
            if dest is not None:
                copy_in(stage, dest, source)
            published.append({k: v for k, v in rec.items() if k != "file"} | {"path": dest or "", "file": rec["file"]})
        state["images"][art.key] = {"name": art.name, "version": art.version, "path": rel, "sha256": art.sha256,
                                    "size": art.size, "manifest_path": mrel,
                                    "manifest_sha256": art.manifest_sha256, "manifest_size": art.manifest_size,
                                    "manifest": art.manifest, "source_sha256": art.sha256,
                                    "artifacts": [a for a in published if a["path"]]}
        if old is not None:  # --replace: files of the old build that the new one lacks
            images.remove_unreferenced(stage, images.files_of("images", old), state)
    else:
        rel = f"manifests/{art.name}"
        copy_in(stage, rel, art.path)
        state["extras"][art.key] = {"path": rel, "sha256": art.sha256, "size": art.size,
                                    "source_sha256": art.sha256}


def _sign_rpms(stage: Path, signer: Signer, state: dict, keys: list[str]) -> None:
    """The published copies carry the repository's signature; record their new hashes."""
    records = [state["rpms"][k] for k in keys]
    signer.sign_rpms([stage / r["filename"] for r in records])
    for record in records:
        record["sha256"], record["size"] = sha256_file(stage / record["filename"])


def _remove_generated(stage: Path) -> None:
    """Drop the cloned indexes: they are regenerated, and old by-hash files carried explicitly."""
    for rel in GENERATED:
        path = stage / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _write_apt(stage: Path, config: Config, signer: Signer, state: dict, now: float) -> list[str]:
    entries = [apt.PackageEntry(d["control"], d["filename"], d["size"], d["md5"], d["sha256"], d["architecture"])
               for d in state["debs"].values()]
    arches = sorted(set(config.architectures) | {e.architecture for e in entries} - {"all"})
    dist = f"dists/{config.suite}"
    files, byhash = [], []
    for arch in arches:
        text = apt.packages_text(entries, arch).encode()
        sub = f"{config.component}/binary-{arch}"
        for name, data in (("Packages", text), ("Packages.xz", lzma.compress(text, preset=6))):
            index = apt.IndexFile(f"{sub}/{name}", data)
            files.append(index)
            put(stage, f"{dist}/{index.path}", data)
            byhash.append(f"{dist}/{sub}/by-hash/SHA256/{index.sha256}")
            put(stage, byhash[-1], data)
    release = apt.release_text(origin=config.origin, label=config.label, suite=config.suite,
                               codename=config.suite, architectures=arches, components=[config.component],
                               files=files, date=now, description="imagefactory kernel packages",
                               valid_seconds=config.valid_seconds).encode()
    put(stage, f"{dist}/Release", release)
    put(stage, f"{dist}/Release.gpg", signer.detach_sign(release))
    put(stage, f"{dist}/InRelease", signer.clearsign(release))
    return byhash


def _write_rpm(stage: Path, signer: Signer, state: dict, serial: int) -> list[str]:
    if not state["rpms"]:
        return []
    tree = stage / rpmmd.RPM_DIR
    rpmmd.createrepo(tree, serial)
    repomd = (tree / "repodata" / "repomd.xml").read_bytes()
    put(tree, "repodata/repomd.xml.asc", signer.detach_sign(repomd))
    return [f"{rpmmd.RPM_DIR}/{e['href']}" for e in rpmmd.repomd_data(repomd).values()]


def _write_streams(stage: Path, signer: Signer, state: dict, now: float) -> None:
    records = [streams.ImageRecord(i["name"], i["version"], i["path"], i["sha256"], i["size"], i["manifest_path"],
                                   i["manifest_sha256"], i["manifest_size"], i["manifest"],
                                   tuple(i.get("artifacts", ())))
               for i in state["images"].values()]
    sums = _write_lxc_and_oci(stage, signer, state)
    images = streams.images_json(records, now)
    images_bytes = streams.dumps(images)
    put(stage, streams.IMAGES_PATH, images_bytes)
    put(stage, "streams/v1/index.json", streams.dumps(streams.index_json(images, streams.IMAGES_PATH, now)))
    put(stage, streams.SIGNED_IMAGES_PATH, signer.clearsign(images_bytes))
    signed_index = streams.dumps(streams.index_json(images, streams.SIGNED_IMAGES_PATH, now))
    put(stage, "streams/v1/index.sjson", signer.clearsign(signed_index))
    sums |= {i["path"]: i["sha256"] for i in state["images"].values()}
    sums |= {a["path"]: a["sha256"] for i in state["images"].values() for a in i.get("artifacts", ())}
    sums |= {i["manifest_path"]: i["manifest_sha256"] for i in state["images"].values()}
    sums |= {e["path"]: e["sha256"] for e in state["extras"].values()}
    for name in ("index.json", "images.json", "index.sjson", "images.sjson"):
        sums[f"streams/v1/{name}"] = hashlib.sha256((stage / "streams/v1" / name).read_bytes()).hexdigest()
    text = streams.sha256sums_text(sums).encode()
    put(stage, "SHA256SUMS", text)
    put(stage, "SHA256SUMS.gpg", signer.detach_sign(text))


def _sign_lxc(stage: Path, signer: Signer, state: dict, keys: list[str]) -> None:
    """Detached .asc signatures beside the LXC files of newly added images (LXC <= 4 templates check them)."""
    for key in keys:
        record = state["images"][key]
        arts = record.get("artifacts", [])
        for art in [a for a in arts if a["format"] == "lxc" and a["role"] in ("metadata", "rootfs")]:
            sig = put(stage, art["path"] + ".asc", signer.detach_sign((stage / art["path"]).read_bytes()))
            digest, size = sha256_file(sig)
            arts.append({"format": "lxc", "role": "signature", "path": art["path"] + ".asc", "sha256": digest,
                         "size": size})


def _write_lxc_and_oci(stage: Path, signer: Signer, state: dict) -> dict[str, str]:
    """meta/1.0/index-system (+ .asc) and one OCI layout per image; returns their sha256 for SHA256SUMS."""
    sums: dict[str, str] = {}
    stale = [stage / images.LXC_INDEX, stage / (images.LXC_INDEX + ".asc")]
    stale += [*stage.glob("oci/*/index.json"), *stage.glob("oci/*/oci-layout")]
    for path in stale:
        path.unlink(missing_ok=True)
    for directory in (stage / "oci").glob("*"):
        if directory.is_dir() and not any(directory.rglob("*")):
            shutil.rmtree(directory)
    index = images.lxc_index(state["images"])
    if index:
        put(stage, images.LXC_INDEX, index)
        put(stage, images.LXC_INDEX + ".asc", signer.detach_sign(index))
    for name, doc in images.oci_indexes(state["images"]).items():
        put(stage, f"oci/{name}/oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put(stage, f"oci/{name}/index.json", json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    for rel in [images.LXC_INDEX, images.LXC_INDEX + ".asc",
                *(f"oci/{n}/{f}" for n in images.oci_indexes(state["images"]) for f in ("oci-layout", "index.json"))]:
        if (stage / rel).is_file():
            sums[rel] = sha256_file(stage / rel)[0]
    return sums


def _carry_old_indexes(repo: Repo, stage: Path, serial: int, now: float, config: Config) -> None:
    """Keep content-addressed indexes of still-retained states reachable (by-hash, repodata)."""
    times = repo.published_times() | {serial: now}
    for old in sorted(retained(times, config.keep_states, config.grace_seconds, now) - {serial}):
        directory = repo.state_dir(old)
        for rel in repo.read_state(directory).get("indexes", []):
            target, source = stage / rel, directory / rel
            if not target.exists() and source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(source, target)


def write_state(repo: Repo, config: Config, signer: Signer, state: dict, changes: list, progress: Progress,
                *, remove: tuple[tuple[str, str], ...] = (), now: float | None = None) -> tuple[int, list[str]]:
    """Build, sign and switch to a new state holding `state` plus `changes`, minus `remove` and what
    retention drops; return (serial, keys dropped). `now` dates the indexes (Release Date/Valid-Until)."""
    with repo.new_state() as (serial, stage):
        now = time.time() if now is None else now
        for n, art in enumerate(changes, 1):
            _add(stage, config, art, state)
            progress.count("copied", n, len(changes))
        _sign_rpms(stage, signer, state, [a.key for a in changes if isinstance(a, Rpm)])
        _sign_lxc(stage, signer, state, [a.key for a in changes if isinstance(a, Image)])
        dropped = lifecycle.drop(stage, state, list(remove) + lifecycle.expired(state, config.keep_versions))
        progress.stage("writing and signing indexes")
        _remove_generated(stage)
        indexes = _write_apt(stage, config, signer, state, now)
        indexes += _write_rpm(stage, signer, state, serial)
        _write_streams(stage, signer, state, now)
        put(stage, "key.gpg", signer.public_key())
        put(stage, "key.asc", signer.public_key(armor=True))
        _carry_old_indexes(repo, stage, serial, now, config)
        state |= {"serial": serial, "published_at": now, "indexes": indexes}
        put(stage, STATE_FILE, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())
    return serial, dropped


def open_signer(config: Config) -> Signer:
    return Signer(key_id=config.key_id, key_file=Path(config.key_file) if config.key_file else None)


def check_key(signer: Signer, config: Config) -> None:
    if config.fingerprint and signer.fingerprint != config.fingerprint:
        raise SigningKeyError(f"the configured key is {signer.fingerprint}, but the repository was initialised "
                              f"with {config.fingerprint}; clients would reject the new signatures")


def publish(repo: Repo, paths: list[Path], *, replace: bool = False, version: str | None = None,
            progress: Progress | None = None) -> dict:
    """Publish artifacts into repo; returns a summary for humans and --json."""
    progress = progress or Progress(quiet=True)
    config = repo.config()
    progress.stage(f"checking {len(paths)} artifact(s)")
    artifacts = with_kernel_manifests([read_any(p, version) for p in paths])
    with open_signer(config) as signer, repo.lock():
        check_key(signer, config)
        state = repo.read_state(repo.current())
        plan = plan_changes(state, artifacts, replace)
        summary = {"repo": str(repo.root), "added": [a.key for a in plan.add],
                   "replaced": [a.key for a in plan.replace], "unchanged": [a.key for a in plan.unchanged]}
        if not plan.add and not plan.replace:
            return summary | {"serial": state["serial"], "pruned": []}
        serial, dropped = write_state(repo, config, signer, state, plan.add + plan.replace, progress)
        pruned = repo.prune(config.keep_states, config.grace_seconds)
    return summary | {"serial": serial, "pruned": pruned, "retired": dropped}


def resign(repo: Repo, *, now: float | None = None, progress: Progress | None = None) -> dict:
    """A new state with the same content and fresh signatures, Date and Valid-Until."""
    config = repo.config()
    with open_signer(config) as signer, repo.lock():
        check_key(signer, config)
        state = repo.read_state(repo.current())
        serial, dropped = write_state(repo, config, signer, state, [], progress or Progress(quiet=True), now=now)
        pruned = repo.prune(config.keep_states, config.grace_seconds)
    return {"repo": str(repo.root), "serial": serial, "retired": dropped, "pruned": pruned,
            "valid_until": apt.valid_until(time.time() if now is None else now, config.valid_seconds)}


def remove(repo: Repo, keys: list[str], progress: Progress | None = None) -> dict:
    """A new state without the given packages/image versions (ids as `repo list` prints them).

    Their files vanish from the new state only: superseded states keep them for the grace period."""
    config = repo.config()
    with open_signer(config) as signer, repo.lock():
        check_key(signer, config)
        state = repo.read_state(repo.current())
        targets = lifecycle.resolve(state, keys)
        serial, dropped = write_state(repo, config, signer, state, [], progress or Progress(quiet=True),
                                      remove=tuple(targets))
        pruned = repo.prune(config.keep_states, config.grace_seconds)
    return {"repo": str(repo.root), "serial": serial, "removed": dropped, "pruned": pruned}


def update_config(repo: Repo, changes: dict) -> Config:
    """Change settings in the repository's config.json (under the lock, atomically)."""
    config = repo.config()
    with repo.lock():
        for key, value in changes.items():
            setattr(config, key, value)
        put(repo.meta, "config.json", (json.dumps(config.to_json(), indent=1) + "\n").encode())
    return config


def init_repo(root: Path, config: Config, progress: Progress | None = None) -> dict:
    """Create the repository with an empty, signed first state (clients can point at it at once)."""
    repo = Repo(root)
    if repo.is_initialised():
        raise ImageFactoryError(f"{root} is already an imagefactory repository")
    if root.exists() and any(root.iterdir()):
        raise ImageFactoryError(f"{root} exists and is not empty; give a new or empty directory")
    existed = root.exists()
    with open_signer(config) as signer:
        config.fingerprint = signer.fingerprint
        keyring = signer.public_key()
        root.mkdir(parents=True, exist_ok=True)
        try:
            with repo.lock():
                put(repo.meta, "keyring.gpg", keyring)
                put(repo.meta, "config.json", (json.dumps(config.to_json(), indent=1) + "\n").encode())
                serial, _ = write_state(repo, config, signer, repo.read_state(None), [],
                                        progress or Progress(quiet=True))
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            if existed:
                root.mkdir()
            raise
    return {"repo": str(root), "fingerprint": config.fingerprint, "serial": serial}

