"""A real receiver on a loopback port, run by uvicorn in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from apten_assets.webhooks import Inbox, create_app
from apten_assets.webhooks.receiver import ROUTE

SECRET = "whsec-test-0f9e8d7c6b5a"


class ReceiverThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> until the `with` block ends."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        # log_config=None: uvicorn's records propagate to the root logger, where caplog sees them.
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        # uvicorn reports a failed startup with SystemExit; callers check `started` instead.
        with contextlib.suppress(SystemExit):
            self.server.run(sockets=[self.sock])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ROUTE}"

    def start(self) -> bool:
        """True once serving; False when startup failed (the thread has ended)."""
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.server.started

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> ReceiverThread:
        if not self.start():
            self.stop()
            raise RuntimeError("receiver did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def inbox_dir(tmp_path: Path) -> Path:
    return tmp_path / "inbox"


@pytest.fixture
def inbox(inbox_dir: Path) -> Inbox:
    return Inbox(inbox_dir)


@pytest.fixture
def receiver(inbox_dir: Path) -> Iterator[ReceiverThread]:
    with ReceiverThread(create_app(SECRET, inbox_dir)) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        yield client
