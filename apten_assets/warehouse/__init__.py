"""The warehouse: one `Store` interface (`store.py`), one module per backend, every query inside.

`open_store(url)` opens a session on the warehouse an `APTEN_WAREHOUSE_URL` names. Nothing
outside this package writes SQL or imports a database driver.
"""

from __future__ import annotations

from apten_assets.warehouse.store import (
    CALL_END_RULE,
    CALL_TIME_RULE,
    CallEventFacts,
    CallTransferRecord,
    DaySummary,
    Erasure,
    Finding,
    PendingCall,
    Preview,
    ReplaceCounts,
    Rows,
    Store,
    TransferDelivery,
    UpsertCounts,
    WarehouseBusy,
    WarehouseNotReady,
)
from apten_assets.warehouse.url import DUCKDB, POSTGRES, WarehouseURL, WarehouseURLError

DEFAULT_TIMEOUT_SECONDS = 30.0

__all__ = [
    "CALL_END_RULE",
    "CALL_TIME_RULE",
    "DUCKDB",
    "POSTGRES",
    "CallEventFacts",
    "CallTransferRecord",
    "ColumnPage",
    "DaySummary",
    "Erasure",
    "Finding",
    "PendingCall",
    "Preview",
    "ReplaceCounts",
    "Rows",
    "Store",
    "TransferDelivery",
    "UpsertCounts",
    "WarehouseBusy",
    "WarehouseNotReady",
    "WarehouseURL",
    "WarehouseURLError",
    "open_store",
]


def open_store(
    url: str | WarehouseURL, *, read_only: bool = False, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> Store:
    """A session on the warehouse at `url` (`duckdb:///...` or `postgresql://...`).

    `timeout_seconds` bounds the wait for the warehouse (DuckDB's file lock, PostgreSQL's
    connection); past it, `WarehouseBusy`. A read-only session never writes and, on a warehouse
    not created yet, raises `WarehouseNotReady`. Close the store, or use it as a context manager.
    """
    parsed = url if isinstance(url, WarehouseURL) else WarehouseURL.parse(url)
    if parsed.backend == DUCKDB:
        from apten_assets.warehouse.duckdb import DuckDBStore

        return DuckDBStore.open(parsed.path, read_only=read_only, timeout_seconds=timeout_seconds)
    if parsed.backend == POSTGRES:
        from apten_assets.warehouse.postgres import PostgresStore

        return PostgresStore.open(parsed, read_only=read_only, timeout_seconds=timeout_seconds)
    raise WarehouseURLError(f"no warehouse backend {parsed.backend!r}")
