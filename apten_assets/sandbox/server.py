"""Run the sandbox app with uvicorn in a background thread on a loopback port."""

from __future__ import annotations

import logging

from apten_assets.lib.serving import ThreadedServer
from apten_assets.sandbox.app import FaultConfig, InjectedConnectionDrop, SandboxState, create_app
from apten_assets.sandbox.data import DatasetSpec, SandboxDataset


class _HideInjectedDrops(logging.Filter):
    """Dropped connections are on purpose; uvicorn would log each as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        return not (exc_info and isinstance(exc_info[1], InjectedConnectionDrop))


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _HideInjectedDrops) for existing in logger.filters):
        logger.addFilter(_HideInjectedDrops())


class SandboxServer(ThreadedServer):
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
        super().__init__(create_app(self.state), port=port)

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def start(self) -> SandboxServer:
        _install_log_filter()
        super().start()
        return self

    def __enter__(self) -> SandboxServer:
        return self.start()
