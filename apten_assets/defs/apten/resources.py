"""Resources: the Apten API client and the DuckDB warehouse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from apten_assets.lib.client import AptenClient
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.warehouse import connect, ensure_schema


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


class AptenWarehouse(DuckDBResource):
    """DuckDB with the `apten` schema in place. Connections are opened per write batch and
    closed at once, so other runs and the sensor wait on DuckDB's file lock only briefly.

    `warehouse.connect` attaches the file under a fixed catalog name: with the default
    `data/apten.duckdb`, DuckDB would otherwise call the catalog `apten` and `apten.leads` would
    be ambiguous between it and the `apten` schema."""

    lock_timeout_seconds: float = 120.0

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = connect(self.database, timeout_seconds=self.lock_timeout_seconds)
        try:
            ensure_schema(con)
            yield con
        finally:
            con.close()

    @contextmanager
    def read_only(self, timeout_seconds: float = 5.0) -> Iterator[duckdb.DuckDBPyConnection]:
        con = connect(self.database, read_only=True, timeout_seconds=timeout_seconds)
        try:
            yield con
        finally:
            con.close()
