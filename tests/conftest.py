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
