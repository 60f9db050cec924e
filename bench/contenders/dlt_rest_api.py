"""dlt, the strongest open-source peer: a declarative `rest_api` source for the same endpoints.

leads -> call_events (per lead) -> calls (per event), `nextToken` cursor paginator, merge on the
primary keys, child resources parallelized with as many extract workers as our concurrency.
dlt nests each call's `transcript` into its own child table (`calls__transcript`).
"""

from __future__ import annotations

import os
from typing import Any

import dlt
import duckdb
from dlt.sources.rest_api import rest_api_source

# The runner starts this process with RUNTIME__DLTHUB_TELEMETRY=false: dlt never phones home.
from bench.contenders._harness import run


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
        destination=dlt.destinations.duckdb(params["db_path"]),
        dataset_name="apten",
        pipelines_dir=params["work_dir"],
        progress="log" if params.get("progress") else None,
    )
    pipeline.run(source)
    with duckdb.connect(params["db_path"], read_only=True) as con:
        rows = {
            "leads": con.execute("SELECT count(*) FROM apten.leads").fetchone()[0],
            "call_events": con.execute("SELECT count(*) FROM apten.call_events").fetchone()[0],
            "calls": con.execute("SELECT count(*) FROM apten.calls").fetchone()[0],
            "summaries": con.execute("SELECT count(*) FROM apten.calls WHERE summary IS NOT NULL").fetchone()[
                0
            ],
            "turns": con.execute("SELECT count(*) FROM apten.calls__transcript").fetchone()[0],
        }
    return {"rows": rows}


if __name__ == "__main__":
    run(load)
