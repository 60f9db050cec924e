"""Serve an ASGI app with uvicorn in a background thread on a loopback port.

Used by the sandbox, the main job's webhook receiver, tests and benchmarks. The socket is bound
before the thread starts, so `port` is known at once and never races another process.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Any, Literal

import uvicorn

START_TIMEOUT_SECONDS = 10.0
GRACEFUL_STOP_SECONDS = 3.0


class ThreadedServer:
    """`app` on http://127.0.0.1:<port> until `stop()` (or the end of a `with` block).

    `port=0` picks a free port. uvicorn's log records go to the host's loggers unchanged
    (`log_config=None`), without an access log.
    """

    def __init__(
        self,
        app: Any,
        *,
        port: int = 0,
        lifespan: Literal["on", "off", "auto"] = "off",
        log_level: str = "warning",
    ) -> None:
        self.app = app
        self._requested_port = port
        self._lifespan = lifespan
        self._log_level = log_level
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the server is not running; call start() or use it as a context manager")
        return self._socket.getsockname()[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        """Serve; raises RuntimeError if the app fails to start (e.g. a refused lifespan startup)."""
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        config = uvicorn.Config(
            self.app,
            log_config=None,
            log_level=self._log_level,
            access_log=False,
            lifespan=self._lifespan,
            timeout_graceful_shutdown=GRACEFUL_STOP_SECONDS,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=self._serve, args=(server, sock), name="uvicorn-thread", daemon=True)
        self._socket, self._server, self._thread = sock, server, thread
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start; see the log above")
            time.sleep(0.005)
        return self

    @staticmethod
    def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
        # uvicorn reports a failed startup with SystemExit; start() sees the thread end instead.
        with contextlib.suppress(SystemExit):
            server.run(sockets=[sock])

    def stop(self) -> None:
        """Stop serving and wait for the thread; requests still in flight are cut short."""
        server, thread, sock = self._server, self._thread, self._socket
        if server is None or thread is None or sock is None:
            return
        server.should_exit = True
        thread.join(GRACEFUL_STOP_SECONDS + 2)
        if thread.is_alive():
            server.force_exit = True
            thread.join()
        sock.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
