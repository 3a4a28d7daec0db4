"""OpenPGP verification with gpgv against one explicit keyring (as apt does).

The single place that runs gpgv: archive InRelease files, Fedora's
repomd.xml.asc, and our own published repositories all go through here.
gpgv's machine-readable status lines decide, never its exit code alone;
for clearsigned files only the bytes gpgv says were signed are returned.
"""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
from pathlib import Path

from imagefactory.core.errors import EnvironmentProblem, VerificationError


def dearmor(key: bytes) -> bytes:
    """Binary form of an ASCII-armored key file (gpgv only reads binary keyrings)."""
    if not key.lstrip().startswith(b"-----BEGIN"):
        return key
    lines = key.decode("ascii", errors="replace").strip().splitlines()
    body, in_body = [], False
    for line in lines[1:]:
        if line.startswith("-----END"):
            break
        if in_body:
            if not line.startswith("="):  # the CRC24 line is not part of the data
                body.append(line.strip())
        elif not line.strip():
            in_body = True
    try:
        return base64.b64decode("".join(body))
    except ValueError:
        raise VerificationError("keyring: malformed ASCII-armored key") from None


def _reason(status: str, keyring: Path) -> str:
    if "NO_PUBKEY" in status:
        return f"signed by a key not in {keyring}"
    if "BADSIG" in status:
        return "BAD signature (the file was altered)"
    if "NODATA" in status:
        return "no signature found (not signed at all)"
    if "EXPKEYSIG" in status or "REVKEYSIG" in status:
        return "signed by an expired or revoked key"
    return "no valid signature"


def _gpgv(keyring: Path, files: dict[str, bytes], args: list[str], what: str) -> dict[str, bytes]:
    """Run gpgv in a scratch dir holding files; return the scratch dir's files afterwards."""
    if not keyring.is_file():
        raise VerificationError(f"{what}: keyring {keyring} not found")
    with tempfile.TemporaryDirectory(prefix="imagefactory-gpgv.") as tmp:
        d = Path(tmp)
        ring = d / "keyring.gpg"
        ring.write_bytes(dearmor(keyring.read_bytes()))
        for name, data in files.items():
            (d / name).write_bytes(data)
        try:
            proc = subprocess.run(
                ["gpgv", "--homedir", tmp, "--status-fd", "1", "--keyring", str(ring), *args],
                cwd=tmp, capture_output=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "GNUPGHOME": tmp},
            )
        except FileNotFoundError:
            raise EnvironmentProblem("gpgv not found: install gpgv (scripts/setup does)") from None
        status = proc.stdout.decode(errors="replace")
        if proc.returncode != 0 or "[GNUPG:] VALIDSIG" not in status:
            raise VerificationError(f"{what}: {_reason(status, keyring)}")
        return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


def verify_clearsigned(data: bytes, keyring: Path, what: str) -> bytes:
    """Verify a clearsigned document; return exactly the signed text."""
    return _gpgv(keyring, {"signed": data}, ["--output", "content", "signed"], what)["content"]


def verify_detached(data: bytes, signature: bytes, keyring: Path, what: str) -> None:
    """Verify a detached signature over data."""
    _gpgv(keyring, {"data": data, "data.sig": signature}, ["data.sig", "data"], what)
