"""`apten_late_summary_sensor`: asks Apten again about calls stored without a summary, and refreshes
exactly the calls whose summary has arrived (or that waited past APTEN_SUMMARY_GIVE_UP_HOURS).

Reading is read-only and short; the sensor writes the warehouse only to quarantine a stored row
it cannot plan (`apten.rejected_records`, source `apten_late_summary_sensor`), rather than fail
every tick on it. The runs it requests do:
the calls op fetches the named calls and sets `summary_status` (`ready`, or `missing` past the
give-up window), `summary_first_seen_at` and `summary_latency_seconds`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from apten_assets.defs.apten.assets import CALL_SUMMARIES_KEY, CALL_TRANSCRIPT_TURNS_KEY, CALLS_KEY
from apten_assets.defs.apten.automation import sensor_status
from apten_assets.defs.apten.partitions import daily_partitions
from apten_assets.defs.apten.resources import AptenWarehouse
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.late_summaries import (
    CHECK_BUDGET_SECONDS,
    CheckResults,
    SensorCursor,
    advance,
    check_calls,
    checks_per_tick,
    format_age,
    plan_tick,
    refresh_requests,
    tick_client,
)
from apten_assets.lib.tables import rejected_row
from apten_assets.warehouse import PendingCall, WarehouseBusy, WarehouseNotReady

LATE_SUMMARY_SENSOR_NAME = "apten_late_summary_sensor"
SENSOR_INTERVAL_SECONDS = 30
# Waiting longer for the warehouse (DuckDB's file lock) would only push the tick towards
# Dagster's 60 s timeout; a busy warehouse is simply tried again on the next tick.
READ_TIMEOUT_SECONDS = 3.0
# Look-ups stop starting this long after the budget, leaving room for those in flight (TICK_RETRY).
DEADLINE_SLACK_SECONDS = 5.0
REFRESH_ASSETS = [CALLS_KEY, CALL_SUMMARIES_KEY, CALL_TRANSCRIPT_TURNS_KEY]


def build_late_summary_sensor(
    settings: AptenSettings, *, check_budget_seconds: float = CHECK_BUDGET_SECONDS
) -> dg.SensorDefinition:
    partitions = daily_partitions(settings)
    recheck = timedelta(minutes=settings.summary_recheck_minutes)
    give_up_after = timedelta(hours=settings.summary_give_up_hours)

    @dg.sensor(
        name=LATE_SUMMARY_SENSOR_NAME,
        target=REFRESH_ASSETS,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=sensor_status(settings),
        description=(
            "Finds calls stored with summary_status = 'pending', asks Apten again for those due a recheck "
            "(APTEN_SUMMARY_RECHECK_MINUTES, backing off for older calls; a bounded batch per tick), and "
            "requests runs of calls, call_summaries and call_transcript_turns per day for exactly the calls "
            "whose summary arrived. Calls pending past APTEN_SUMMARY_GIVE_UP_HOURS are refreshed once so "
            "the run marks them 'missing'."
        ),
    )
    def apten_late_summary_sensor(
        context: dg.SensorEvaluationContext, warehouse: AptenWarehouse
    ) -> dg.SensorResult:
        started = time.monotonic()
        now = datetime.now(UTC)
        cursor = SensorCursor.parse(context.cursor)
        pending, problem = _read_pending(warehouse)
        if problem is not None:
            context.log.info(problem)
            return dg.SensorResult(skip_reason=problem, cursor=context.cursor)

        pending, outside = _in_partitions(partitions, pending)
        if outside:
            context.log.warning(
                f"{outside:,} pending call(s) have no day within the partitions "
                f"({settings.start_date} to today); the sensor cannot request runs for them"
            )
        cursor.prune(pending, now, recheck)

        client_settings = AptenSettings.from_env()
        plan = plan_tick(
            pending,
            cursor,
            now,
            recheck=recheck,
            give_up_after=give_up_after,
            max_checks=checks_per_tick(client_settings.max_rps, check_budget_seconds),
        )
        if plan.unusable:
            _quarantine_unusable(warehouse, plan.unusable, now, context.log)
        results = CheckResults()
        if plan.to_check:
            deadline = started + check_budget_seconds + DEADLINE_SLACK_SECONDS
            with tick_client(client_settings, deadline) as client:
                results = check_calls(client, [call.call_id for call in plan.to_check], deadline)
        advance(cursor, plan, results, now)

        by_id = {call.call_id: call for call in plan.to_check}
        requests = refresh_requests(
            [by_id[call_id] for call_id in results.arrived],
            [by_id[call_id] for call_id in results.gone],
            plan.to_give_up,
            cursor,
            now,
        )
        still_pending = plan.pending - len(results.changed) - len(plan.to_give_up)
        summary = (
            f"{plan.pending:,} pending; {len(results.asked):,} checked ({plan.due:,} due, "
            f"{plan.due - len(results.asked):,} carried to the next tick), {len(results.arrived):,} arrived, "
            f"{len(results.gone):,} now 404, {len(plan.to_give_up):,} given up, {len(results.failed):,} "
            f"look-ups failed, {plan.awaiting_run:,} awaiting a requested run; {still_pending:,} still "
            f"pending, oldest {format_age(plan.oldest_pending_age)}"
        )
        context.log.info(summary)
        for call_id, error in list(results.failed.items())[:5]:
            context.log.warning(f"call {call_id}: look-up failed, asked again next tick: {error}")
        next_cursor = cursor.serialize()
        if not requests:
            return dg.SensorResult(skip_reason=f"nothing to refresh: {summary}", cursor=next_cursor)
        for request in requests:
            context.log.info(
                f"requesting {request.run_key}: {len(request.call_ids)} call(s) on {request.partition_date} "
                f"({request.arrived} arrived, {request.gone} now 404, {request.given_up} given up)"
            )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=request.run_key,
                    partition_key=request.partition_date.isoformat(),
                    asset_selection=REFRESH_ASSETS,
                    run_config={"ops": {"calls": {"config": {"call_ids": list(request.call_ids)}}}},
                    tags={
                        "apten/trigger": "late_summary",
                        "apten/late_summary_arrived": str(request.arrived),
                        "apten/late_summary_given_up": str(request.given_up),
                    },
                )
                for request in requests
            ],
            cursor=next_cursor,
        )

    return apten_late_summary_sensor


def _read_pending(warehouse: AptenWarehouse) -> tuple[list[PendingCall], str | None]:
    """The pending calls, or why they cannot be read this tick (never raises for a busy warehouse)."""
    try:
        with warehouse.read_only(timeout_seconds=READ_TIMEOUT_SECONDS) as store:
            return store.pending_calls(), None
    except WarehouseBusy as exc:
        # Another process writes, or another DuckDB handle in this process holds the file. A writer
        # that opened it through the store in this process shares its instance instead.
        return [], f"warehouse busy: {exc}"
    except WarehouseNotReady as exc:
        return [], f"no calls stored yet; nothing is pending ({exc})"


def _quarantine_unusable(
    warehouse: AptenWarehouse, unusable: list[tuple[PendingCall, str]], now: datetime, log: Any
) -> None:
    """Record the stored rows this tick could not plan in `apten.rejected_records` (source: this
    sensor) and go on. Best effort: a busy warehouse leaves it to a later tick, never fails this one."""
    for call, reason in unusable[:5]:
        log.warning(f"pending call {call.call_id}: cannot be planned ({reason}); quarantined, tick goes on")
    source = LATE_SUMMARY_SENSOR_NAME
    rows = [rejected_row(source, call.call_id, reason, repr(call), now) for call, reason in unusable]
    try:
        with warehouse.get_store(timeout_seconds=READ_TIMEOUT_SECONDS) as store:
            store.quarantine(rows, now=now)
    except WarehouseBusy as exc:
        log.info(f"could not record {len(rows)} unusable pending call(s) this tick: {exc}")


def _in_partitions(
    partitions: dg.DailyPartitionsDefinition, pending: list[PendingCall]
) -> tuple[list[PendingCall], int]:
    """The calls whose day is a partition (a run can refresh them), and how many are not."""
    days = {call.partition_date for call in pending if call.partition_date is not None}
    valid = {day for day in days if partitions.has_partition_key(day.isoformat())}
    kept = [call for call in pending if call.partition_date in valid]
    return kept, len(pending) - len(kept)
