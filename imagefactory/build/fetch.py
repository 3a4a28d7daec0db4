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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from imagefactory.build.plan import Artifact
from imagefactory.core.errors import FetchError, ImageFactoryError, VerificationError
from imagefactory.core.progress import Progress

CHUNK = 1 << 20
ATTEMPTS = 2  # every request is retried once (a dropped connection, a stall, a 5xx), then it fails
CONNECT_TIMEOUT = 15.0  # seconds for a mirror to accept the connection
READ_TIMEOUT = 30.0  # seconds of silence from a mirror (before the headers or mid-body) that count as a stall
MAX_REDIRECTS = 5
TIMEOUT_HELP = (
    f"Network: a mirror gets {CONNECT_TIMEOUT:g} s to accept a connection and may stay silent for at most "
    f"{READ_TIMEOUT:g} s (before answering or mid-download); a failed or stalled request is retried once, then "
    "the command stops with exit 4 naming the URL. Override with $IMAGEFACTORY_CONNECT_TIMEOUT and "
    "$IMAGEFACTORY_READ_TIMEOUT (seconds)."
)
_local = threading.local()


def timeouts() -> tuple[float, float]:
    """(connect, read) timeouts in seconds: the defaults above unless the environment overrides them."""
    out = []
    for name, default in (("CONNECT", CONNECT_TIMEOUT), ("READ", READ_TIMEOUT)):
        raw = os.environ.get(f"IMAGEFACTORY_{name}_TIMEOUT", "")
        try:
            value = float(raw) if raw else default
        except ValueError:
            value = -1.0
        if not 0 < value <= 3600:
            raise ImageFactoryError(f"$IMAGEFACTORY_{name}_TIMEOUT must be seconds between 0 and 3600, not {raw!r}")
        out.append(value)
    return out[0], out[1]


def cache_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "sha256" / sha256[:2] / sha256


class MissingFile(FetchError):
    """The server says the file is not there (HTTP 404/410, or no such local file)."""


class _Transient(Exception):
    """A network failure worth one more try; the message says what happened."""


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
            self.conns[key] = cls(netloc, timeout=timeouts()[0])
        return self.conns[key]

    def drop(self, scheme: str, netloc: str) -> None:
        conn = self.conns.pop((scheme, netloc), None)
        if conn:
            conn.close()

    def drop_all(self) -> None:
        for key in list(self.conns):
            self.drop(*key)


def _pool() -> _Connections:
    pool = getattr(_local, "pool", None)
    if pool is None or pool.pid != os.getpid():  # a forked worker must not share the parent's sockets
        pool = _local.pool = _Connections()
    return pool


def _why(exc: BaseException, read_timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"stalled (no data for {read_timeout:g} s)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError):
        return "connection dropped by the server"
    return str(exc) or type(exc).__name__


def _connect(conn: http.client.HTTPConnection, netloc: str) -> None:
    connect, read = timeouts()
    try:
        conn.connect()
    except TimeoutError:
        raise _Transient(f"no connection to {netloc} within {connect:g} s") from None
    except OSError as exc:
        raise _Transient(f"cannot reach {netloc}: {exc.strerror or exc}") from None
    assert conn.sock is not None
    conn.sock.settimeout(read)


def _open(url: str, redirects: int = 0):
    """A readable response for http(s):// and file:// URLs (one attempt).

    Raises FetchError for answers that will not change (404, bad scheme) and
    _Transient for those that might (timeouts, drops, 5xx)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        try:
            return open(urllib.request.url2pathname(parts.path), "rb")
        except FileNotFoundError:
            raise MissingFile(f"{url}: no such file") from None
        except OSError as exc:
            raise FetchError(f"cannot read {url}: {exc.strerror}") from None
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme in {url}")
    pool = _pool()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    read_timeout = timeouts()[1]
    for reused in (True, False):  # a kept-alive connection may have been closed by the server meanwhile
        conn = pool.get(parts.scheme, parts.netloc)
        reused = reused and conn.sock is not None
        try:
            if conn.sock is None:
                _connect(conn, parts.netloc)
            conn.request("GET", path, headers={"User-Agent": "imagefactory"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            pool.drop(parts.scheme, parts.netloc)
            if reused and not isinstance(exc, TimeoutError):
                continue
            raise _Transient(_why(exc, read_timeout)) from None
        except _Transient:
            pool.drop(parts.scheme, parts.netloc)
            raise
        break
    if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
        _drain(resp, pool, parts)
        if redirects >= MAX_REDIRECTS:
            raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")
        return _open(urllib.parse.urljoin(url, resp.getheader("Location")), redirects + 1)
    if resp.status != 200:
        _drain(resp, pool, parts)
        if resp.status >= 500:
            raise _Transient(f"HTTP {resp.status} {resp.reason}")
        raise (MissingFile if resp.status in (404, 410) else FetchError)(f"{url}: HTTP {resp.status} {resp.reason}")
    return resp


def _drain(resp: http.client.HTTPResponse, pool: _Connections, parts: urllib.parse.SplitResult) -> None:
    """Read a response we do not want, so the connection can be reused (or drop it)."""
    try:
        resp.read(1 << 16)
    except (OSError, http.client.HTTPException):
        pool.drop(parts.scheme, parts.netloc)
    if not resp.isclosed():
        pool.drop(parts.scheme, parts.netloc)


def stream(url: str, consume: Callable[[bytes], None], restart: Callable[[], None],
           length: Callable[[int], None] | None = None) -> None:
    """Feed the body of url to consume(), chunk by chunk, retrying once.

    restart() is called before a second attempt so the consumer can discard
    what it got; length(), if given, receives the Content-Length when known.
    Errors raised by consume() (a size or hash check, a full disk) pass
    through untouched; network failures end as one FetchError naming the URL
    after ATTEMPTS tries."""
    parts = urllib.parse.urlsplit(url)
    for attempt in range(1, ATTEMPTS + 1):
        if attempt > 1:
            restart()
        try:
            _read_body(url, consume, length)
            return
        except _Transient as exc:
            if parts.scheme in ("http", "https"):
                _pool().drop(parts.scheme, parts.netloc)
            if attempt == ATTEMPTS:
                raise FetchError(f"{url}: {exc} (tried {ATTEMPTS} times)") from None


def _read_body(url: str, consume: Callable[[bytes], None], length: Callable[[int], None] | None) -> None:
    read_timeout = timeouts()[1]
    resp = _open(url)
    got = 0
    complete = False
    if length is not None and isinstance(resp, http.client.HTTPResponse) and resp.length:
        length(resp.length)
    try:
        while True:
            try:
                chunk = resp.read1(CHUNK)  # what has arrived: a stall then counts the bytes before it
            except (OSError, http.client.HTTPException) as exc:
                if not isinstance(resp, http.client.HTTPResponse):
                    raise FetchError(f"cannot read {url}: {exc}") from None
                raise _Transient(f"{_why(exc, read_timeout)} after {got} bytes") from None
            if not chunk:
                break
            got += len(chunk)
            consume(chunk)
        remaining = getattr(resp, "length", None)
        if isinstance(resp, http.client.HTTPResponse) and remaining:  # EOF before Content-Length
            raise _Transient(f"connection dropped after {got} of {got + remaining} bytes")
        complete = True
    finally:
        resp.close()  # a fully read HTTP response leaves its connection ready for the next request
        if not complete and isinstance(resp, http.client.HTTPResponse):
            _pool().drop_all()  # unread bytes would be taken for the next answer


def fetch_url(url: str, limit: int = 64 << 20) -> bytes:
    """Fetch a small unverified file (InRelease, repomd.xml): it is verified by signature next."""
    data = bytearray()

    def consume(chunk: bytes) -> None:
        data.extend(chunk)
        if len(data) > limit:
            raise FetchError(f"{url}: larger than {limit} bytes")

    stream(url, consume, data.clear)
    return bytes(data)


class _VerifyingSink:
    """Writes a download to a file while hashing it; refuses more bytes than the signed size."""

    def __init__(self, out: BinaryIO, url: str, size: int | None) -> None:
        self.out, self.url, self.size = out, url, size
        self.restart()

    def restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.digest = hashlib.sha256()
        self.got = 0

    def consume(self, chunk: bytes) -> None:
        self.got += len(chunk)
        if self.size is not None and self.got > self.size:
            raise VerificationError(f"{self.url}: larger than the {self.size} bytes the signed index says")
        self.digest.update(chunk)
        self.out.write(chunk)


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
        with os.fdopen(fd, "wb") as out:
            sink = _VerifyingSink(out, url, size)
            stream(url, sink.consume, sink.restart)
        got, digest = sink.got, sink.digest.hexdigest()
        if size is not None and got != size:
            raise VerificationError(f"{url}: size {got} does not match the signed index ({size}); not cached")
        if digest != sha256:
            raise VerificationError(f"{url}: SHA256 {digest} does not match the signed index ({sha256}); not cached")
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
