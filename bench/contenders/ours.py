"""Ours: the real assets (leads -> call_events -> calls) materialized by Dagster into a fresh file
(or, given `warehouse_url`, into an empty PostgreSQL database).

`dg.materialize` runs in this process with an ephemeral instance, as a single-process run would.
Where the calls step spends its time is measured by wrapping a few functions of
`apten_assets.lib.sync` and the store's write methods in this process (the library itself is
unchanged).
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from apten_assets.defs.apten import assets as assets_module
from apten_assets.defs.apten.resources import AptenApiResource, AptenWarehouse
from apten_assets.lib import sync
from apten_assets.lib.config import AptenSettings
from apten_assets.warehouse.duckdb import DuckDBStore
from apten_assets.warehouse.postgres import PostgresStore
from bench.contenders._harness import StepTimer, run
from bench.launch import warehouse_rows


class CallsStepTimer(StepTimer):
    """The calls step's time outside its batch writes is time spent waiting for answers from the
    concurrent fetches."""

    def calls_step(self) -> dict[str, float]:
        total = self.seconds.get("enrich_calls", 0.0)
        batches = self.seconds.get("write_call_batch", 0.0)
        sql = self.seconds.get("call_tables_write", 0.0)
        return {
            "seconds_total": total,
            "seconds_waiting_for_api": total - batches,
            "seconds_transform_write": batches,
            "seconds_transform": batches - sql,
            "seconds_write": sql,
        }


def _configure(params: dict[str, Any]) -> None:
    os.environ.update(
        APTEN_BASE_URL=params["base_url"],
        APTEN_DUCKDB_PATH=params["db_path"],
        APTEN_START_DATE=params["partition"],
        APTEN_MAX_RPS=str(params.get("max_rps", 1_000_000)),
        APTEN_MAX_CONCURRENCY=str(params.get("max_concurrency", 8)),
    )
    os.environ.pop("APTEN_API_KEY", None)
    os.environ.pop("APTEN_WAREHOUSE_URL", None)
    if params.get("warehouse_url"):
        os.environ["APTEN_WAREHOUSE_URL"] = params["warehouse_url"]


def _numbers(materialization: Any) -> dict[str, float]:
    values: dict[str, float] = {}
    for name, entry in materialization.metadata.items():
        value = getattr(entry, "value", entry)
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[name] = value
    return values


def setup(params: dict[str, Any]) -> dict[str, Any]:
    """The definitions and instance a deployment already has before a run starts."""
    _configure(params)
    timer = CallsStepTimer()
    timer.wrap(assets_module, "enrich_calls", "enrich_calls")
    timer.wrap(sync, "_write_call_batch", "write_call_batch")
    store_class = PostgresStore if params.get("warehouse_url") else DuckDBStore
    timer.wrap_call_table_writes(store_class, lambda: "call_tables_write")
    # The ingestion assets and resources exactly as `build_definitions` wires them; checks,
    # schedules and sensors are left out because they take no part in a load.
    settings = AptenSettings.from_env()
    by_name = {key.path[-1]: a for a in assets_module.build_assets(settings) for key in a.keys}
    resources = {
        "apten": AptenApiResource(),
        "warehouse": AptenWarehouse(url=params.get("warehouse_url") or f"duckdb:///{settings.duckdb_path}"),
    }
    instance = dg.DagsterInstance.ephemeral()
    return {"assets": by_name, "resources": resources, "instance": instance, "timer": timer}


def load(params: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    by_name, resources, instance = state["assets"], state["resources"], state["instance"]
    leads = dg.materialize([by_name["leads"]], resources=resources, instance=instance)
    partitioned = dg.materialize(
        [by_name["call_events"], by_name["calls"]],
        partition_key=params["partition"],
        resources=resources,
        instance=instance,
    )
    assert leads.success and partitioned.success
    metadata: dict[str, dict[str, float]] = {}
    for result in (leads, partitioned):
        for materialization in result.get_asset_materialization_events():
            event = materialization.event_specific_data.materialization
            metadata["/".join(event.asset_key.path)] = _numbers(event)
    metadata["apten/calls"].update(state["timer"].calls_step())
    rows = warehouse_rows(params.get("warehouse_url") or f"duckdb:///{params['db_path']}")
    return {"rows": rows, "metadata": metadata}


if __name__ == "__main__":
    run(load, setup)
