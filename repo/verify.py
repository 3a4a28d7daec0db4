"""Re-check a published state the way each client would, and report every problem.

apt: InRelease and Release.gpg signatures, every index against Release, every
pool file against Packages. rpm: repomd.xml.asc, repodata and package checksums.
images: SHA256SUMS.gpg, every listed file, simplestreams items, signed .sjson.
"""

from __future__ import annotations

import hashlib
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from imagefactory.core.errors import VerificationError
from imagefactory.core.hashing import sha256_file
from repo import apt, rpmmd, streams
from repo.sign import verify_clearsigned, verify_detached


def _check_file(state: Path, rel: str, digest: str, size: int | None, what: str) -> list[str]:
    path = state / rel
    if not path.is_file():
        return [f"{what}: {rel} is missing"]
    actual, actual_size = sha256_file(path)
    if actual != digest or (size is not None and actual_size != size):
        return [f"{what}: {rel} does not match its checksum/size"]
    return []


def _signed(fn, keyring: Path, *files: Path) -> tuple[bytes | None, list[str]]:
    """Run a signature check; a missing signature or signed file is a problem, named, like a bad one."""
    missing = [p for p in files if not p.is_file()]
    if missing:
        return None, [f"{p.name} is missing" for p in missing]
    try:
        return fn(keyring, *files), []
    except VerificationError as exc:
        return None, [str(exc)]


def verify_apt(state: Path, keyring: Path) -> list[str]:
    problems: list[str] = []
    for dist in sorted((state / "dists").iterdir()) if (state / "dists").is_dir() else []:
        release_path = dist / "Release"
        where = f"dists/{dist.name}"
        inrelease, errs = _signed(verify_clearsigned, keyring, dist / "InRelease")
        problems += [f"apt: {where}/{e}" if e.endswith(" is missing") else f"apt: {e}" for e in errs]
        detached, errs = _signed(_verify_detached_text, keyring, dist / "Release.gpg", release_path)
        problems += [f"apt: {where}/{e}" if e.endswith(" is missing") else f"apt: {e}" for e in errs]
        signed = inrelease if inrelease is not None else detached  # check the rest against what is signed
        if signed is None:
            continue
        if inrelease is not None and release_path.is_file() and release_path.read_bytes() != inrelease:
            problems.append(f"apt: {dist.name}/Release differs from the text signed in InRelease")
        fields, sums = apt.parse_release(signed.decode())
        problems += stale_release(dist.name, fields, time.time())
        for rel, (digest, size) in sums.items():
            file_problems = _check_file(dist, rel, digest, size, "apt")
            problems += file_problems
            byhash = dist / rel.rsplit("/", 1)[0] / "by-hash" / "SHA256" / digest
            if not byhash.is_file() or hashlib.sha256(byhash.read_bytes()).hexdigest() != digest:
                problems.append(f"apt: by-hash copy of {rel} is missing or wrong")
            if rel.endswith("/Packages") and not file_problems:
                problems += _verify_packages(state, (dist / rel).read_text())
    return problems


def stale_release(suite: str, fields: dict[str, str], now: float) -> list[str]:
    """Freshness: apt refuses a Release whose Valid-Until has passed."""
    until = apt.expires_at(fields)
    if until is not None and until < now:
        return [f"apt: dists/{suite}/Release expired at {fields['Valid-Until']}; run `imagefactory repo resign`"]
    return []


def _verify_detached_text(keyring: Path, signature: Path, data: Path) -> bytes:
    verify_detached(keyring, signature, data)
    return data.read_bytes()


def _verify_packages(state: Path, text: str) -> list[str]:
    problems = []
    for stanza in apt.parse_packages(text):
        if "filename" not in stanza or "sha256" not in stanza:
            problems.append(f"apt: a Packages stanza lacks Filename/SHA256 ({stanza.get('package', '?')})")
            continue
        problems += _check_file(state, stanza["filename"], stanza["sha256"], int(stanza.get("size", -1)), "apt")
    return problems


def verify_rpm(state: Path, keyring: Path) -> list[str]:
    tree = state / rpmmd.RPM_DIR
    if not (tree / "repodata" / "repomd.xml").is_file():
        return []
    _, errs = _signed(verify_detached, keyring, tree / "repodata" / "repomd.xml.asc", tree / "repodata" / "repomd.xml")
    errs = [f"{rpmmd.RPM_DIR}/repodata/{e}" if e.endswith(" is missing") else e for e in errs]
    try:
        return [f"rpm: {e}" for e in errs] + rpmmd.verify_tree(tree)
    except (ET.ParseError, AttributeError, ValueError, OSError, EOFError) as exc:
        return [f"rpm: {e}" for e in errs] + [f"rpm: repodata is unreadable ({exc})"]


def verify_images(state: Path, keyring: Path) -> list[str]:
    """SHA256SUMS and its signature, every file it lists, the signed simplestreams, images.json.

    A missing file is one problem among the others: the rest is still checked."""
    problems: list[str] = []
    sums_path = state / "SHA256SUMS"
    sums: dict[str, str] = {}
    if not sums_path.is_file():
        problems.append("images: SHA256SUMS is missing")
    else:
        _, errs = _signed(verify_detached, keyring, state / "SHA256SUMS.gpg", sums_path)
        problems += [f"images: {e}" for e in errs]
        try:
            sums = streams.parse_sha256sums(sums_path.read_text())
        except ValueError as exc:
            problems.append(f"images: {exc}")
    for rel, digest in sums.items():
        problems += _check_file(state, rel, digest, None, "images")
    for name in ("index.sjson", "images.sjson"):
        _, errs = _signed(verify_clearsigned, keyring, state / "streams" / "v1" / name)
        problems += [f"images: streams/v1/{e}" if e.endswith(" is missing") else f"images: {e}" for e in errs]
    try:
        products = json.loads((state / streams.IMAGES_PATH).read_text())["products"]
    except (OSError, ValueError, KeyError) as exc:
        return problems + [f"images: {streams.IMAGES_PATH} is unreadable ({exc})"]
    for product in products.values():
        for version in product["versions"].values():
            for item in version["items"].values():
                if sums and sums.get(item["path"]) != item["sha256"]:
                    problems.append(f"images: {item['path']} in images.json disagrees with SHA256SUMS")
                problems += _check_file(state, item["path"], item["sha256"], item["size"], "images")
    return problems


def verify_state(state: Path, keyring: Path) -> list[str]:
    """Every problem a client of this state would hit (empty list: all good)."""
    return verify_apt(state, keyring) + verify_rpm(state, keyring) + verify_images(state, keyring)
