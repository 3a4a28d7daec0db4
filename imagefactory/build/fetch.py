"""Downloads into a shared, content-addressed cache.

Every file is named by its SHA256 (`<cache>/sha256/ab/abcdef...`), so a cache
is shared by all recipes and builds, a second build downloads nothing, and a
file can only enter the cache after its size and hash matched the signed
metadata: downloads stream into a temporary file that is renamed into place
only when verified.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imagefactory.build.plan import Artifact
from imagefactory.core.errors import FetchError, VerificationError
from imagefactory.core.progress import Progress

CHUNK = 1 << 20
_local = threading.local()


def cache_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "sha256" / sha256[:2] / sha256


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
            self.conns[key] = cls(netloc, timeout=60)
        return self.conns[key]

    def drop(self, scheme: str, netloc: str) -> None:
        conn = self.conns.pop((scheme, netloc), None)
        if conn:
            conn.close()


def _open(url: str):
    """A readable response for http(s):// and file:// URLs; raises FetchError."""
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
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            resp.read()
            return _open(urllib.parse.urljoin(url, resp.getheader("Location")))
        if resp.status != 200:
            resp.read()
            raise FetchError(f"{url}: HTTP {resp.status} {resp.reason}")
        return resp
    raise AssertionError("unreachable")


def fetch_url(url: str, limit: int = 64 << 20) -> bytes:
    """Fetch a small unverified file (InRelease, repomd.xml): it is verified by signature next."""
    resp = _open(url)
    try:
        data = resp.read(limit + 1)
    finally:
        if hasattr(resp, "close") and not isinstance(resp, http.client.HTTPResponse):
            resp.close()
    if len(data) > limit:
        raise FetchError(f"{url}: larger than {limit} bytes")
    return data


def cached_fetch(url: str, sha256: str, size: int | None, cache_dir: Path) -> Path:
    """Return the cached file for sha256, downloading and verifying it if needed."""
    target = cache_path(cache_dir, sha256)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = cache_dir / "partial"
    tmpdir.mkdir(parents=True, exist_ok=True)
    fd, tmpname = tempfile.mkstemp(dir=tmpdir, prefix=sha256[:12] + ".")
    try:
        digest = hashlib.sha256()
        got = 0
        with os.fdopen(fd, "wb") as out:
            resp = _open(url)
            try:
                while chunk := resp.read(CHUNK):
                    got += len(chunk)
                    if size is not None and got > size:
                        raise VerificationError(f"{url}: larger than the {size} bytes the signed index says")
                    digest.update(chunk)
                    out.write(chunk)
            finally:
                if not isinstance(resp, http.client.HTTPResponse):
                    resp.close()
        if size is not None and got != size:
            raise VerificationError(f"{url}: size {got} does not match the signed index ({size}); not cached")
        if digest.hexdigest() != sha256:
            raise VerificationError(
                f"{url}: SHA256 {digest.hexdigest()} does not match the signed index ({sha256}); not cached"
            )
        os.chmod(tmpname, 0o644)
        os.replace(tmpname, target)
        return target
    finally:
        if os.path.exists(tmpname):
            os.unlink(tmpname)


def download_all(
    artifacts: Iterable[Artifact], cache_dir: Path, jobs: int, progress: Progress
) -> dict[str, Path]:
    """Fetch every artifact (in parallel) into the cache; name -> cached path."""
    items = list(artifacts)
    todo = [a for a in items if not cache_path(cache_dir, a.sha256).is_file()]
    total = sum(a.size for a in todo)
    progress.stage(
        f"download: {len(todo)} of {len(items)} packages ({total / 1e6:.1f} MB), {len(items) - len(todo)} cached"
    )
    done = 0
    lock = threading.Lock()

    def one(a: Artifact) -> None:
        nonlocal done
        cached_fetch(a.url, a.sha256, a.size, cache_dir)
        with lock:
            done += a.size
            progress.count("downloaded", done, total, " bytes")

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for f in [pool.submit(one, a) for a in sorted(todo, key=lambda a: -a.size)]:
                f.result()
    return {a.name: cache_path(cache_dir, a.sha256) for a in items}


def clear_partial(cache_dir: Path) -> None:
    """Remove leftovers of interrupted downloads (they never became cache entries)."""
    shutil.rmtree(cache_dir / "partial", ignore_errors=True)
