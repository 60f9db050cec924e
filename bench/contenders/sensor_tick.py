"""One tick of `apten_late_summary_sensor` over a warehouse holding many pending calls.

Setup (not timed) stores every lead call of the sandbox dataset as `pending`, last fetched hours
ago so each is due a recheck, through the same models, row builders and upserts a run uses (no
HTTP). The tick is then evaluated as the Dagster daemon would, with a fresh cursor.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import Any

import dagster as dg

from apten_assets.defs.apten import sensors as sensors_module
from apten_assets.defs.apten.assets import build_assets
from apten_assets.defs.apten.resources import AptenApiResource, AptenWarehouse
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.late_summaries import checks_per_tick
from apten_assets.lib.models import Call, Event
from apten_assets.lib.tables import CALL_EVENTS, CALLS, call_event_row, call_rows
from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.warehouse.duckdb import connect, ensure_schema, transaction, upsert
from bench.contenders._harness import run

CALLS_PER_LEAD = 25
LAST_FETCHED_AGO = timedelta(hours=4)


def sensor_spec(pending: int, day: date) -> DatasetSpec:
    """`pending` lead calls on `day`; most summaries arrive late, a tenth are there at the first tick."""
    return DatasetSpec(
        seed=11,
        n_leads=max(1, pending // CALLS_PER_LEAD),
        n_calls=pending,
        days=1,
        anchor=datetime.combine(day, dtime(23, 0), tzinfo=UTC),
        turns_per_call=2,
        share_late_summaries=0.8,
        share_never_summaries=0.1,
    )


def _seed(db_path: str, dataset: SandboxDataset) -> int:
    """Store the dataset's CALL events and calls, every call `pending`; returns how many calls."""
    fetched_at = datetime.now(UTC) - LAST_FETCHED_AGO
    served_at = dataset.anchor
    events = [call_event_row(Event.from_json(raw)) for raw in dataset.call_events()]
    calls = []
    for call_id in dataset.lead_call_ids:
        body = dataset.call_json(call_id, served_at, None)
        if body is None:
            continue
        calls.append(call_rows(Call.from_json(body), fetched_at, summary_status="pending").call)
    con = connect(db_path)
    try:
        ensure_schema(con)
        with transaction(con):
            upsert(con, CALL_EVENTS, events, now=fetched_at)
            upsert(con, CALLS, calls, now=fetched_at)
    finally:
        con.close()
    return len(calls)


def setup(params: dict[str, Any]) -> dict[str, Any]:
    day = date.fromisoformat(params["partition"])
    os.environ.update(
        APTEN_BASE_URL=params["base_url"],
        APTEN_DUCKDB_PATH=params["db_path"],
        APTEN_START_DATE=params["partition"],
        APTEN_MAX_RPS=str(params["max_rps"]),
        APTEN_MAX_CONCURRENCY=str(params["max_concurrency"]),
    )
    os.environ.pop("APTEN_API_KEY", None)
    seeded = _seed(params["db_path"], SandboxDataset(sensor_spec(params["pending"], day)))
    settings = AptenSettings.from_env()
    sensor = sensors_module.build_late_summary_sensor(settings)
    resources = {
        "apten": AptenApiResource(),
        "warehouse": AptenWarehouse(url=f"duckdb:///{params['db_path']}"),
    }
    # The sensor among the assets it targets, as the daemon sees it in the code location.
    defs = dg.Definitions(assets=build_assets(settings), sensors=[sensor], resources=resources)
    instance = dg.DagsterInstance.ephemeral()
    return {"sensor": sensor, "defs": defs, "instance": instance, "settings": settings, "seeded": seeded}


def load(params: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    # Time spent asking Apten, measured around the sensor's own call (nothing else changes).
    api = {"seconds": 0.0, "asked": 0}
    check_calls = sensors_module.check_calls

    def timed_check_calls(client: Any, call_ids: Any, deadline: float) -> Any:
        started = time.perf_counter()
        results = check_calls(client, call_ids, deadline)
        api["seconds"] += time.perf_counter() - started
        api["asked"] += len(results.asked) + len(results.failed)
        return results

    sensors_module.check_calls = timed_check_calls
    context = dg.build_sensor_context(
        instance=state["instance"],
        definitions=state["defs"],
        resources={"warehouse": AptenWarehouse(url=f"duckdb:///{params['db_path']}")},
    )
    started = time.perf_counter()
    result = state["sensor"].evaluate_tick(context)
    tick_seconds = time.perf_counter() - started
    run_requests = result.run_requests or []
    named = sum(len(request.run_config["ops"]["calls"]["config"]["call_ids"]) for request in run_requests)
    return {
        "rows": {"pending_seeded": state["seeded"]},
        "tick_seconds": tick_seconds,
        "api_seconds": api["seconds"],
        "asked": api["asked"],
        "bound": checks_per_tick(state["settings"].max_rps),
        "run_requests": len(run_requests),
        "calls_named_in_runs": named,
        "skip_reason": result.skip_message,
    }


if __name__ == "__main__":
    run(load, setup)
