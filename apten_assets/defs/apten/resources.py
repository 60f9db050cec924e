"""Resources: the Apten API client and the warehouse store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import Field

from apten_assets.lib.client import AptenClient
from apten_assets.lib.config import AptenSettings
from apten_assets.warehouse import Store, WarehouseURL, open_store


class AptenApiResource(dg.ConfigurableResource):
    """Apten's public API. Settings (and the key) come from the APTEN_* environment variables
    at run time, so the key is never part of resource config shown in the UI."""

    @contextmanager
    def get_client(self) -> Iterator[AptenClient]:
        client = AptenClient(AptenSettings.from_env())
        try:
            yield client
        finally:
            client.close()


class AptenWarehouse(dg.ConfigurableResource):
    """The warehouse (DuckDB file or PostgreSQL database) with the `apten` schema in place.

    Sessions are opened per write batch and closed at once, so other runs and the sensors wait
    on DuckDB's file lock only briefly (`lock_timeout_seconds`, then `WarehouseBusy`).
    """

    url: str | None = Field(
        default=None,
        description=(
            "Warehouse URL; empty reads APTEN_WAREHOUSE_URL at run time, so a database password "
            "never becomes resource config shown in the UI."
        ),
    )
    lock_timeout_seconds: float = 120.0

    @property
    def location(self) -> WarehouseURL:
        """Where the tables live; `str()` of it hides the password."""
        if self.url:
            return WarehouseURL.parse(self.url)
        return AptenSettings.from_env().warehouse

    @contextmanager
    def get_store(self, timeout_seconds: float | None = None) -> Iterator[Store]:
        """A write session, with the schema created or migrated first (`timeout_seconds`: how long
        to wait for the warehouse, the resource's lock timeout by default)."""
        timeout = self.lock_timeout_seconds if timeout_seconds is None else timeout_seconds
        with open_store(self.location, timeout_seconds=timeout) as store:
            store.ensure_schema()
            yield store

    @contextmanager
    def read_only(self, timeout_seconds: float = 5.0) -> Iterator[Store]:
        """A read-only session (the sensors); `WarehouseNotReady` before anything was stored."""
        with open_store(self.location, read_only=True, timeout_seconds=timeout_seconds) as store:
            yield store
