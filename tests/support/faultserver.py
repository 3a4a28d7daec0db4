"""A local HTTP server that misbehaves on purpose, per path.

It serves a directory on 127.0.0.1 (a free port) like a mirror would, except
for the paths given a fault:

- ``delay``: wait ``seconds`` before answering (headers and body);
- ``stall``: send the headers and the first ``after`` bytes, then nothing
  until the client gives up (or the server closes);
- ``drop``: close the connection after ``after`` bytes of the body
  (0: before any answer at all);
- ``404`` / ``500``: answer with that status;
- ``wrong``: serve other bytes of the same length (every byte flipped).

Faults match a request path by fnmatch pattern (``*/binary-all/*``) and may
be limited to the first ``times`` requests, so "fails once, then works"
(what a retry should survive) is expressible. ``hits`` counts requests per
path, so tests can check that a client retried exactly once.
"""

from __future__ import annotations

import fnmatch
import http.server
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

KINDS = ("delay", "stall", "drop", "404", "500", "wrong")


@dataclass
class Fault:
    kind: str
    seconds: float = 0.0  # delay
    after: int = 0  # stall, drop: body bytes sent first
    times: int | None = None  # None: every request; n: only the first n matching requests


class FaultServer:
    """Use as a context manager; ``url`` is the base URL, ``fault()`` adds a rule."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rules: list[tuple[str, Fault]] = []
        self.hits: Counter[str] = Counter()
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def fault(self, pattern: str, kind: str, seconds: float = 0.0, after: int = 0,
              times: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(KINDS)})")
        with self._lock:
            self.rules.append((pattern, Fault(kind, seconds, after, times)))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.hits.clear()

    def _match(self, path: str) -> Fault | None:
        with self._lock:
            self.hits[path] += 1
            for pattern, rule in self.rules:
                if fnmatch.fnmatchcase(path, pattern):
                    if rule.times is not None:
                        if rule.times <= 0:
                            continue
                        rule.times -= 1
                    return rule
        return None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real mirrors

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                rule = owner._match(path)
                if rule and rule.kind == "delay" and owner.closing.wait(rule.seconds):
                    return
                if rule and rule.kind in ("404", "500"):
                    self._status(int(rule.kind))
                    return
                if rule and rule.kind == "drop" and rule.after == 0:
                    self.close_connection = True
                    return
                file = (owner.root / path.lstrip("/")).resolve()
                if not file.is_relative_to(owner.root.resolve()) or not file.is_file():
                    self._status(404)
                    return
                body = file.read_bytes()
                if rule and rule.kind == "wrong":
                    body = bytes(b ^ 0xFF for b in body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if rule and rule.kind in ("stall", "drop"):
                    self.wfile.write(body[: rule.after])
                    self.wfile.flush()
                    if rule.kind == "stall":
                        owner.closing.wait()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _status(self, code: int) -> None:
                text = f"{code}\n".encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()  # release stalled and delayed handlers
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
