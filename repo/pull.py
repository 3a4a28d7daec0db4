"""Fetch one image from a published repository over HTTP(S) or file:, verified end to end.

Trust comes only from the key the user names: SHA256SUMS must carry a good
signature by it, and every byte written must hash to what SHA256SUMS says.
Downloads go to hidden staging files that are renamed only after all checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from imagefactory.build import fetch as http
from imagefactory.core.atomic import staging_name
from imagefactory.core.errors import ImageFactoryError, VerificationError
from imagefactory.core.manifest import ImageFiles
from imagefactory.core.progress import Progress
from repo import streams
from repo.sign import verify_detached


def fetch(url: str, target: Path, progress: Progress | None = None) -> str:
    """Stream url into target; return its sha256.

    Uses the build's HTTP client: the same deliberate timeouts and one retry
    (fetch.TIMEOUT_HELP), and a stalled or unreachable server ends as exit 4
    naming the URL."""
    label = target.name.split(".partial")[0].lstrip(".")
    with target.open("wb") as out:
        digest = hashlib.sha256()
        done = total = 0

        def consume(chunk: bytes) -> None:
            nonlocal done
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress and total:
                progress.count(label, done >> 20, total >> 20, " MiB")

        def restart() -> None:
            nonlocal digest, done
            out.seek(0)
            out.truncate()
            digest, done = hashlib.sha256(), 0

        def length(n: int) -> None:
            nonlocal total
            total = n

        http.stream(url, consume, restart, length)
    return digest.hexdigest()


def signed_sums(base: str, keyring: Path, attempts: int = 3) -> dict[str, str]:
    """SHA256SUMS verified against its detached signature.

    The two files are separate requests, so a publish switching states between
    them yields a mismatched pair: fetch the pair again before calling it bad.
    """
    with tempfile.TemporaryDirectory(prefix="if-pull-") as tmp:
        sums_file, sig_file = Path(tmp) / "SHA256SUMS", Path(tmp) / "SHA256SUMS.gpg"
        for attempt in range(attempts):
            fetch(base + "SHA256SUMS", sums_file)
            fetch(base + "SHA256SUMS.gpg", sig_file)
            try:
                verify_detached(keyring, sig_file, sums_file)
                break
            except VerificationError as exc:
                if attempt == attempts - 1:
                    raise VerificationError(f"{base}SHA256SUMS: {exc}; refusing to download") from None
                time.sleep(0.5)
        try:
            return streams.parse_sha256sums(sums_file.read_text())
        except ValueError as exc:
            raise VerificationError(f"{base}SHA256SUMS: {exc}") from None


def pull(url: str, name: str, out_dir: Path, keyring: Path, version: str | None = None,
         progress: Progress | None = None) -> dict:
    """Download image `name` (newest version unless given) and its manifest into out_dir."""
    progress = progress or Progress(quiet=True)
    base = url.rstrip("/") + "/"
    if not keyring.is_file():
        raise ImageFactoryError(f"keyring {keyring} does not exist")
    sums = signed_sums(base, keyring)
    version = version or streams.latest_version(sums, name)
    directory = streams.image_dir(name, version or "")
    files = ImageFiles.named(Path(directory), name)
    image_rel, manifest_rel = str(files.image), str(files.manifest)
    if version is None or image_rel not in sums or manifest_rel not in sums:
        known = sorted({"@".join(p.split("/")[1:3]) for p in sums if p.startswith("images/")})
        raise ImageFactoryError(f"no image {name}{'@' + version if version else ''} at {base} "
                                f"(available: {', '.join(known) or 'none'})")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / files.image.name, out_dir / files.manifest.name]
    stages = [staging_name(t) for t in targets]
    try:
        progress.stage(f"downloading {name} {version}")
        for rel, stage in zip((image_rel, manifest_rel), stages, strict=True):
            if fetch(base + rel, stage, progress) != sums[rel]:
                raise VerificationError(f"{base}{rel} does not match the signed SHA256SUMS; "
                                        "refusing it (nothing written)")
        manifest = json.loads(stages[1].read_text())
        if manifest.get("image", {}).get("sha256") != sums[image_rel]:
            raise VerificationError(f"{base}{manifest_rel} describes a different image; refusing it")
        for stage, target in zip(stages, targets, strict=True):
            os.replace(stage, target)
    except BaseException:
        for stage in stages:
            with contextlib.suppress(FileNotFoundError):
                stage.unlink()
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    return {"name": name, "version": version, "image": str(targets[0]), "manifest": str(targets[1]),
            "sha256": sums[image_rel]}
