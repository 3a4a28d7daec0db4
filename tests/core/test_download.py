"""Ground floor: one verified download for build, repo pull and kernel sources; one memo."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from imagefactory.core.download import PARTIAL, clear_partial, download, fetch_bytes
from imagefactory.core.errors import FetchError, VerificationError
from tests.support.debarchive import serve

DATA = os.urandom(3 << 20)  # several chunks
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture()
def site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "blob").write_bytes(DATA)
    with serve(root) as url:
        yield url.rstrip("/")


def test_http_and_file_downloads_are_verified(site, tmp_path):
    seen = []
    target = tmp_path / "out" / "blob"
    assert download(f"{site}/blob", target, sha256=SHA, size=len(DATA),
                    progress=lambda done, total: seen.append((done, total))) == SHA
    assert target.read_bytes() == DATA and oct(target.stat().st_mode & 0o777) == "0o644"
    assert seen[-1] == (len(DATA), len(DATA)) and len(seen) >= 3
    again = tmp_path / "again"
    assert download((tmp_path / "site/blob").as_uri(), again) == SHA  # unverified: the caller checks
    assert fetch_bytes(f"{site}/blob", limit=len(DATA)) == DATA
    with pytest.raises(FetchError, match="larger than"):
        fetch_bytes(f"{site}/blob", limit=10)


@pytest.mark.parametrize(("sha", "size", "message"), [
    ("0" * 64, None, "sha256 .* does not match the recipe"),
    (SHA, len(DATA) - 1, "larger than the"),
    (SHA, len(DATA) + 1, "size .* does not match the recipe"),
])
def test_a_mismatch_writes_nothing(site, tmp_path, sha, size, message):
    target = tmp_path / "out" / "blob"
    with pytest.raises(VerificationError, match=message):
        download(f"{site}/blob", target, sha256=sha, size=size, trusted="the recipe")
    assert list((tmp_path / "out").iterdir()) == []  # neither the target nor a staging file


def test_http_errors_are_fetch_errors(site, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404"):
        download(f"{site}/missing", tmp_path / "x")
    with pytest.raises(FetchError, match="unsupported URL scheme"):
        download("ftp://127.0.0.1/x", tmp_path / "x")
    assert not list(tmp_path.glob("*x*"))


def test_clear_partial_keeps_a_live_download(tmp_path):
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "ab").mkdir()
    stale = tmp_path / "ab" / f".blob{PARTIAL}{dead}-x1"
    live = tmp_path / "ab" / f".blob{PARTIAL}{os.getpid()}-x2"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    assert clear_partial(tmp_path, levels=1) == 1
    assert not stale.exists() and live.exists()
