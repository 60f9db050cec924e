"""A real receiver on a loopback port, run by uvicorn in a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from apten_assets.lib.serving import ThreadedServer
from apten_assets.webhooks import Inbox, create_app
from apten_assets.webhooks.receiver import ROUTE

SECRET = "whsec-test-0f9e8d7c6b5a"


class ReceiverThread(ThreadedServer):
    """The receiver on 127.0.0.1:<free port> until the `with` block ends."""

    def __init__(self, app: Starlette) -> None:
        # log_level info: the receiver's records reach the root logger, where caplog sees them.
        super().__init__(app, lifespan="on", log_level="info")

    @property
    def url(self) -> str:
        return f"{self.origin}{ROUTE}"


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
