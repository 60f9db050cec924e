"""Shared fixtures: the bundled Apten sandbox on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.sandbox.server import SandboxServer

# A fixed "now" keeps data, partitions and summary timing identical on every run.
SANDBOX_ANCHOR = datetime(2026, 5, 14, 15, 30, tzinfo=UTC)
# Small but with every category present (pinned by tests/sandbox/test_data.py).
SMALL_SPEC = DatasetSpec(
    seed=7, n_leads=30, calls_per_lead=4, days=3, anchor=SANDBOX_ANCHOR, share_deleted_leads=0.1
)


@pytest.fixture(scope="session")
def sandbox_dataset() -> SandboxDataset:
    """Built once per session; datasets are read-only, so servers can share one."""
    return SandboxDataset(SMALL_SPEC)


@pytest.fixture
def sandbox(sandbox_dataset: SandboxDataset) -> Iterator[SandboxServer]:
    """A fresh server (own faults, request log and released summaries) with no API key."""
    with SandboxServer(sandbox_dataset) as server:
        yield server


@pytest.fixture(autouse=True)
def _apten_files_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test starts with its warehouse and webhook inbox in a fresh temporary folder, so a
    developer's `data/` (or another test's files) never leaks in; tests may set their own."""
    folder = tmp_path_factory.mktemp("apten")
    monkeypatch.setenv("APTEN_DUCKDB_PATH", str(folder / "apten.duckdb"))
    monkeypatch.setenv("APTEN_WEBHOOK_INBOX", str(folder / "webhooks"))
    monkeypatch.delenv("APTEN_API_KEY", raising=False)
