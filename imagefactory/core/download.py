"""Verified downloads: a URL streamed into a staged file, hashed on the way, renamed into place
only when its size and SHA-256 match what a signed index or a recipe says.

http(s):// goes through one keep-alive connection per host and thread (a build fetches hundreds
of packages from one mirror); file:// reads a local path (tests, local mirrors). Nothing a
download writes is visible under its final name before it verified: a mismatch or an interrupt
leaves no file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from imagefactory.core.errors import FetchError, VerificationError

CHUNK = 1 << 20
PARTIAL = ".partial-"  # staging files: .<name>.partial-<pid>-<random>, beside the target
TIMEOUT = 60
_local = threading.local()


class _Connections:
    """One persistent HTTP connection per host and thread (keep-alive saves a
    round trip per package; apt does the same with pipelining)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.conns: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def get(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        if key not in self.conns:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            self.conns[key] = cls(netloc, timeout=TIMEOUT)
        return self.conns[key]

    def drop(self, scheme: str, netloc: str) -> None:
        conn = self.conns.pop((scheme, netloc), None)
        if conn:
            conn.close()


def open_url(url: str) -> BinaryIO | http.client.HTTPResponse:
    """A readable response for http(s):// and file:// URLs (redirects followed); raises FetchError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        try:
            return open(urllib.request.url2pathname(parts.path), "rb")
        except OSError as exc:
            raise FetchError(f"cannot read {url}: {exc.strerror}") from None
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme in {url}")
    pool = getattr(_local, "pool", None)
    if pool is None or pool.pid != os.getpid():  # a forked worker must not share the parent's sockets
        pool = _local.pool = _Connections()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    for attempt in (1, 2):  # a kept-alive connection may have been closed by the server
        conn = pool.get(parts.scheme, parts.netloc)
        try:
            conn.request("GET", path, headers={"User-Agent": "imagefactory"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            pool.drop(parts.scheme, parts.netloc)
            if attempt == 2:
                raise FetchError(f"cannot reach {parts.netloc}: {exc}") from None
            continue
        location = resp.getheader("Location")
        if resp.status in (301, 302, 303, 307, 308) and location:
            resp.read()
            return open_url(urllib.parse.urljoin(url, location))
        if resp.status != 200:
            resp.read()
            raise FetchError(f"{url}: HTTP {resp.status} {resp.reason}")
        return resp
    raise AssertionError("unreachable")


def _drop(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    pool = getattr(_local, "pool", None)
    if pool is not None:
        pool.drop(parts.scheme, parts.netloc)


def _release(resp: BinaryIO | http.client.HTTPResponse) -> None:
    """Close a file; an HTTP response is read to its end and stays with its kept-alive connection."""
    if not isinstance(resp, http.client.HTTPResponse):
        resp.close()


def fetch_bytes(url: str, limit: int = 64 << 20) -> bytes:
    """A small file that is verified by its signature next (InRelease, repomd.xml, SHA256SUMS)."""
    resp = open_url(url)
    try:
        data = resp.read(limit + 1)
    finally:
        _release(resp)
    if len(data) > limit:
        raise FetchError(f"{url}: larger than {limit} bytes")
    return data


def download(url: str, target: Path, *, sha256: str | None = None, size: int | None = None,
             trusted: str = "the signed index", mode: int = 0o644,
             progress: Callable[[int, int | None], None] | None = None) -> str:
    """Stream url to target through a staging file beside it; returns the content's SHA-256.

    With sha256 and/or size, a download that differs (or grows past size) raises VerificationError
    naming `trusted` (what vouched for it), and nothing is written. Without them the caller checks
    the returned digest itself before trusting the file. progress(done, total) is called per chunk.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, stage = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}{PARTIAL}{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream(url, out, sha256, size, trusted, progress)
        os.chmod(stage, mode)
        os.replace(stage, target)
        return actual
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stage)


def _stream(url: str, out: BinaryIO, sha256: str | None, size: int | None, trusted: str,
            progress: Callable[[int, int | None], None] | None) -> str:
    digest = hashlib.sha256()
    got = 0
    resp = open_url(url)
    try:
        total = size
        if total is None and isinstance(resp, http.client.HTTPResponse):
            total = int(resp.getheader("Content-Length") or 0) or None
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise FetchError(f"{url}: download broke off after {got} bytes ({exc})") from None
            if not chunk:
                break
            got += len(chunk)
            if size is not None and got > size:
                raise VerificationError(f"{url}: larger than the {size} bytes {trusted} says")
            digest.update(chunk)
            out.write(chunk)
            if progress:
                progress(got, total)
    except BaseException:
        if isinstance(resp, http.client.HTTPResponse):  # body left unread: the connection is spent
            _drop(url)
        raise
    finally:
        _release(resp)
    if size is not None and got != size:
        raise VerificationError(f"{url}: size {got} does not match {trusted} ({size}); nothing written")
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256.lower():
        raise VerificationError(f"{url}: sha256 {actual} does not match {trusted} ({sha256}); nothing written")
    return actual


def clear_partial(directory: Path, levels: int = 0) -> int:
    """Remove staging files that interrupted downloads left in directory (or `levels` below it)
    whose process is gone; a concurrent download's file is kept. Returns how many were removed."""
    removed = 0
    for path in directory.glob("*/" * levels + f".*{PARTIAL}*"):
        pid = path.name.rpartition(PARTIAL)[2].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}") and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed
