"""Schedules: keep today fresh during the day, and sweep recent days again for late changes."""

from datetime import UTC, date, datetime, timedelta

import dagster as dg

from apten_assets.defs.apten.assets import (
    CALL_EVENTS_KEY,
    CALL_SUMMARIES_KEY,
    CALL_TRANSCRIPT_TURNS_KEY,
    CALLS_KEY,
    LEADS_KEY,
    WEBHOOK_DELIVERIES_KEY,
)
from apten_assets.defs.apten.automation import schedule_status
from apten_assets.defs.apten.webhooks import CALL_TRANSFERS_KEY
from apten_assets.lib.config import AptenSettings

INTRADAY_CRON = "*/15 * * * *"  # every 15 minutes, UTC
LOOKBACK_CRON = "30 2 * * *"  # 02:30 UTC every day
LOOKBACK_DAYS = 3  # days before today swept again (events updated late, calls finished late)

PIPELINE_ASSETS = dg.AssetSelection.assets(
    LEADS_KEY,
    CALL_EVENTS_KEY,
    WEBHOOK_DELIVERIES_KEY,
    CALLS_KEY,
    CALL_SUMMARIES_KEY,
    CALL_TRANSCRIPT_TURNS_KEY,
    CALL_TRANSFERS_KEY,
)


def lookback_range(today: date, days: int, first_partition: date) -> tuple[str, str]:
    """Partition keys [today - days, today], clipped to the first partition."""
    start = max(today - timedelta(days=days), first_partition)
    return start.isoformat(), today.isoformat()


def build_schedules(settings: AptenSettings) -> tuple[list, list[dg.ScheduleDefinition]]:
    job = dg.define_asset_job(
        "apten_pipeline_job",
        selection=PIPELINE_ASSETS,
        description=(
            "leads and webhook deliveries, then the chosen days' call_events, calls, call_summaries, "
            "call_transcript_turns and call_transfers."
        ),
    )

    @dg.schedule(
        name="apten_intraday_schedule",
        cron_schedule=INTRADAY_CRON,
        execution_timezone="UTC",
        job=job,
        default_status=schedule_status(settings),
        description=(
            f"Every 15 minutes (`{INTRADAY_CRON}`, UTC): new and changed leads and webhook deliveries, "
            "then today's CALL events, calls and transfers, so today's tables trail Apten by minutes."
        ),
    )
    def intraday(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        scheduled = context.scheduled_execution_time or datetime.now(UTC)
        today = scheduled.astimezone(UTC).date().isoformat()
        return dg.RunRequest(run_key=f"intraday:{scheduled.isoformat()}", partition_key=today)

    @dg.schedule(
        name="apten_daily_lookback_schedule",
        cron_schedule=LOOKBACK_CRON,
        execution_timezone="UTC",
        job=job,
        default_status=schedule_status(settings),
        description=(
            f"Daily at 02:30 UTC (`{LOOKBACK_CRON}`): one run over the last {LOOKBACK_DAYS} days and today, "
            "picking up events updated after they happened and calls that were not final yet."
        ),
    )
    def daily_lookback(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        scheduled = context.scheduled_execution_time or datetime.now(UTC)
        start, end = lookback_range(scheduled.astimezone(UTC).date(), LOOKBACK_DAYS, settings.start_date)
        return dg.RunRequest(
            run_key=f"lookback:{start}:{end}",
            tags={
                "dagster/asset_partition_range_start": start,
                "dagster/asset_partition_range_end": end,
            },
        )

    return [job], [intraday, daily_lookback]
