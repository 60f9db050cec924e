"""Run the sandbox app with uvicorn in a background thread on a loopback port."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn

from apten_assets.sandbox.app import FaultConfig, InjectedConnectionDrop, SandboxState, create_app
from apten_assets.sandbox.data import DatasetSpec, SandboxDataset

START_TIMEOUT_SECONDS = 10.0
GRACEFUL_STOP_SECONDS = 3.0


class _HideInjectedDrops(logging.Filter):
    """Dropped connections are on purpose; uvicorn would log each as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        return not (exc_info and isinstance(exc_info[1], InjectedConnectionDrop))


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _HideInjectedDrops) for existing in logger.filters):
        logger.addFilter(_HideInjectedDrops())


class SandboxServer:
    """The sandbox on `http://127.0.0.1:<port>/v1`, as a context manager (or `start()`/`stop()`).

    `port=0` picks a free port. The listening socket is bound before the thread starts, so
    `base_url` is valid as soon as `start()` returns.
    """

    def __init__(
        self,
        spec_or_dataset: DatasetSpec | SandboxDataset,
        api_key: str | None = None,
        faults: FaultConfig | None = None,
        port: int = 0,
    ) -> None:
        dataset = (
            spec_or_dataset
            if isinstance(spec_or_dataset, SandboxDataset)
            else SandboxDataset(spec_or_dataset)
        )
        self.state = SandboxState(dataset, api_key=api_key, faults=faults)
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the sandbox is not running; call start() or use it as a context manager")
        return self._socket.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> SandboxServer:
        if self._thread is not None:
            raise RuntimeError("the sandbox is already running")
        _install_log_filter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        config = uvicorn.Config(
            create_app(self.state),
            log_config=None,  # leave the host process's logging configuration alone
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_STOP_SECONDS,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="apten-sandbox", daemon=True
        )
        self._socket, self._server, self._thread = sock, server, thread
        thread.start()
        self._wait_until_started()
        return self

    def _wait_until_started(self) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sandbox server did not start; see the uvicorn log above")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop serving and wait for the thread; requests still sleeping are cut short."""
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

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
