"""A tiny loopback HTTP server whose every answer the test scripts.

For behaviour the sandbox cannot be made to produce (a repeating nextToken, an HTML body, a
redirect to another host, a dropped connection). It is real HTTP on 127.0.0.x, not a mock, and it
records what it saw (monotonic arrival time, path, query, headers) so tests measure at the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Seen:
    t: float
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    json: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    body: bytes | None = None  # sent as is (set content-encoding in `headers` for a compressed one)
    trickle: float = 0.0  # seconds between single bytes of the body (with `trickle_headers`, of it all)
    trickle_headers: bool = False
    endless: bytes | None = None  # a chunked body repeating these bytes until the client hangs up


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (read timeout) leaves a broken pipe behind; that is expected."""


class ScriptedServer:
    """`respond(seen) -> Reply` decides each answer; use as a context manager."""

    def __init__(self, respond: Callable[[Seen], Reply], host: str = "127.0.0.1") -> None:
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen(
                    t=time.monotonic(),
                    method="GET",
                    path=parts.path,
                    query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                )
                with lock:
                    server.requests.append(seen)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = respond(seen)
                    if reply.delay:
                        time.sleep(reply.delay)
                finally:
                    with lock:
                        server.in_flight -= 1
                if reply.drop:
                    self.close_connection = True
                    return
                if reply.body is not None:
                    payload, ctype = reply.body, "application/json"
                elif reply.text is not None:
                    payload = reply.text.encode()
                    ctype = "text/html; charset=utf-8"
                elif reply.json is not None:
                    payload = json.dumps(reply.json).encode()
                    ctype = "application/json"
                else:
                    payload, ctype = b"", "application/json"
                head = [f"HTTP/1.1 {reply.status} Scripted", f"content-type: {ctype}"]
                if reply.endless is None:
                    head.append(f"content-length: {len(payload)}")
                else:
                    head.append("transfer-encoding: chunked")
                head += [f"{name}: {value}" for name, value in reply.headers.items()]
                head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode()
                try:
                    if reply.endless is not None:
                        self.wfile.write(head_bytes)
                        chunk = f"{len(reply.endless):x}\r\n".encode() + reply.endless + b"\r\n"
                        while True:
                            self.wfile.write(chunk)
                    elif reply.trickle:
                        if not reply.trickle_headers:
                            self.wfile.write(head_bytes)
                            head_bytes = b""
                        data = head_bytes + payload
                        for i in range(len(data)):
                            self.wfile.write(data[i : i + 1])
                            self.wfile.flush()
                            time.sleep(reply.trickle)
                    else:
                        self.wfile.write(head_bytes + payload)
                except OSError:
                    self.close_connection = True  # the client hung up: expected for these replies

        self._httpd = _QuietServer((host, 0), Handler)
        self.host = host
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def paged(pages: list[tuple[list[Any], str | None]], items_key: str) -> Callable[[Seen], Reply]:
    """Serve `pages` in order: page 0 without a token, page i for the token page i-1 returned."""
    by_token: dict[str | None, tuple[list[Any], str | None]] = {}
    previous: str | None = None
    for items, token in pages:
        by_token.setdefault(previous, (items, token))
        previous = token

    def respond(seen: Seen) -> Reply:
        items, token = by_token[seen.query.get("nextToken")]
        return Reply(json={items_key: items, "nextToken": token})

    return respond


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    """Most timestamps inside any half-open window [t, t + window) starting at a timestamp."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(ordered):
        while j < len(ordered) and ordered[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best
