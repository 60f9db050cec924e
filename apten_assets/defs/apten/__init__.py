"""Dagster objects for the Apten source: assets, checks, schedules, sensors, resources."""

from __future__ import annotations

import dagster as dg

from apten_assets.defs.apten.assets import build_assets
from apten_assets.defs.apten.checks import build_checks
from apten_assets.defs.apten.erasure import build_erasure_job
from apten_assets.defs.apten.resources import AptenApiResource, AptenWarehouse
from apten_assets.defs.apten.schedules import build_schedules
from apten_assets.defs.apten.sensors import build_late_summary_sensor
from apten_assets.defs.apten.webhooks import build_webhook_assets, build_webhook_sensor
from apten_assets.lib.config import AptenSettings


def build_definitions(settings: AptenSettings) -> dg.Definitions:
    jobs, schedules = build_schedules(settings)
    return dg.Definitions(
        assets=[*build_assets(settings), *build_webhook_assets(settings)],
        asset_checks=build_checks(settings),
        jobs=[*jobs, build_erasure_job()],
        schedules=schedules,
        sensors=[build_webhook_sensor(settings), build_late_summary_sensor(settings)],
        # Every run (UI, CLI, schedules, sensors) executes its steps in the run's own process: a
        # process per step re-imports Dagster and this code location, ~4 s each on 2 cores, which
        # was most of a run's time (docs/DESIGN.md, "Launching runs"). Pools still hold in process.
        executor=dg.in_process_executor,
        resources={
            "apten": AptenApiResource(),
            "warehouse": AptenWarehouse(),
        },
    )
