"""Daily UTC partitions on the CALL event `timestamp`, from APTEN_START_DATE to today."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from apten_assets.lib.config import AptenSettings


def daily_partitions(settings: AptenSettings) -> dg.DailyPartitionsDefinition:
    # end_offset=1 makes today's (still open) day a partition, so intraday runs can fill it.
    return dg.DailyPartitionsDefinition(
        start_date=settings.start_date.isoformat(), timezone="UTC", end_offset=1
    )


def partition_window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    """The UTC [start, end) the run covers: one day, or a range for a single-run backfill."""
    window = context.partition_time_window
    return window.start.astimezone(UTC), window.end.astimezone(UTC)
