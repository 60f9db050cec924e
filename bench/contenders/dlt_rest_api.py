"""dlt, the strongest open-source peer: a declarative `rest_api` source for the same endpoints.

leads -> call_events (per lead) -> calls (per event), `nextToken` cursor paginator, merge on the
primary keys, child resources parallelized with as many extract workers as our concurrency.
dlt nests each call's `transcript` into its own child table (`calls__transcript`). Into a DuckDB
file, or with `warehouse_url` into PostgreSQL through dlt's `postgres` destination (psycopg2).
"""

from __future__ import annotations

import os
from typing import Any

import dlt
from dlt.sources.rest_api import rest_api_source

from apten_assets.warehouse import WarehouseURL, open_store

# The runner starts this process with RUNTIME__DLTHUB_TELEMETRY=false: dlt never phones home.
from bench.contenders._harness import run
from tests.warehouse.helpers import query


def _destination(params: dict[str, Any]) -> Any:
    if not params.get("warehouse_url"):
        return dlt.destinations.duckdb(params["db_path"])
    url = WarehouseURL.parse(params["warehouse_url"])
    # dlt insists on a host and a password; the bench's server listens on a Unix socket without
    # one, which libpq takes from `?host=` (it wins over the placeholder host).
    credentials = (
        f"postgresql://{url.user}:unused@localhost:{url.port or 5432}/{url.database}?host={url.host}"
        if url.is_socket
        else url.libpq_uri()
    )
    return dlt.destinations.postgres(credentials=credentials)


def load(params: dict[str, Any], state: None) -> dict[str, Any]:
    os.environ["EXTRACT__WORKERS"] = str(params.get("max_concurrency", 8))
    since = f"{params['partition']}T00:00:00.000Z"
    source = rest_api_source(
        {
            "client": {
                "base_url": params["base_url"] + "/",
                "paginator": {"type": "cursor", "cursor_path": "nextToken", "cursor_param": "nextToken"},
            },
            "resource_defaults": {"write_disposition": "merge"},
            "resources": [
                {
                    "name": "leads",
                    "primary_key": "id",
                    "endpoint": {
                        "path": "leads",
                        "data_selector": "leads",
                        "params": {"updatedSince": "1970-01-01T00:00:00.000Z", "limit": 1000},
                    },
                },
                {
                    "name": "call_events",
                    "primary_key": "id",
                    "parallelized": True,
                    "endpoint": {
                        "path": "leads/{resources.leads.id}/events",
                        "data_selector": "events",
                        "params": {"since": since, "types": "CALL", "limit": 1000},
                    },
                },
                {
                    "name": "calls",
                    "primary_key": "id",
                    "parallelized": True,
                    "endpoint": {
                        "path": "calls/{resources.call_events.id}",
                        "data_selector": "$",
                        "paginator": "single_page",
                        "response_actions": [{"status_code": 404, "action": "ignore"}],
                    },
                },
            ],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="apten_bench",
        destination=_destination(params),
        dataset_name="apten",
        pipelines_dir=params["work_dir"],
        progress="log" if params.get("progress") else None,
    )
    pipeline.run(source)
    # The run's own trace: its stages are sequential, so the load at another latency costs at least
    # these normalize and load times on top of its extract (scenario 6 uses that as a bound).
    stages = {
        step.step: (step.finished_at - step.started_at).total_seconds()
        for step in pipeline.last_trace.steps
        if step.step in ("extract", "normalize", "load") and step.started_at and step.finished_at
    }
    counts = {
        "leads": "SELECT count(*) FROM apten.leads",
        "call_events": "SELECT count(*) FROM apten.call_events",
        "calls": "SELECT count(*) FROM apten.calls",
        "summaries": "SELECT count(*) FROM apten.calls WHERE summary IS NOT NULL",
        "turns": "SELECT count(*) FROM apten.calls__transcript",
    }
    with open_store(params.get("warehouse_url") or f"duckdb:///{params['db_path']}", read_only=True) as store:
        rows = {name: query(store, sql)[0][0] for name, sql in counts.items()}
    return {"rows": rows, "stages": stages}


if __name__ == "__main__":
    run(load)
