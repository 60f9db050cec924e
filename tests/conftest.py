"""Shared fixtures: the bundled Apten sandbox on a loopback port, and a fresh warehouse per test
on every backend (a DuckDB file; a database on a throwaway PostgreSQL server the session starts)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from apten_assets.warehouse import Store, WarehouseURL, open_store
from tests.postgres import PostgresServer

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
    monkeypatch.delenv("APTEN_WAREHOUSE_URL", raising=False)


# Every backend the store suite and the end-to-end suites run against.
WAREHOUSE_BACKENDS = ["duckdb", "postgres"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole session (started on first use, ~4 s)."""
    with PostgresServer() as server:
        yield server


_database_numbers = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """An empty database of its own on the session's server, dropped after the test."""
    name = f"apten_test_{next(_database_numbers)}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


def _warehouse_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"duckdb:///{tmp_path / 'warehouse' / 'apten.duckdb'}"


@pytest.fixture(params=WAREHOUSE_BACKENDS)
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty warehouse for one test, also set as APTEN_WAREHOUSE_URL."""
    url = _warehouse_url(request.param, request, tmp_path)
    monkeypatch.setenv("APTEN_WAREHOUSE_URL", url)
    return url


def is_postgres(url: str) -> bool:
    return WarehouseURL.parse(url).backend == "postgresql"


@pytest.fixture
def store(warehouse_url: str) -> Iterator[Store]:
    """A write session on `warehouse_url` with the schema in place."""
    with open_store(warehouse_url) as session:
        session.ensure_schema()
        yield session
