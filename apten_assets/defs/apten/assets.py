"""The pipeline's assets: leads -> call_events -> calls -> {call_summaries, call_transcript_turns}.

Each asset is a short recipe: open the client, run one step of `apten_assets.lib.sync`, turn its
report into metadata. All fetching, parsing and writing lives in plain, testable code.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from apten_assets.defs.apten.metadata import preview, run_metadata, table_definition_metadata, window_label
from apten_assets.defs.apten.partitions import daily_partitions, partition_window
from apten_assets.defs.apten.pii import pii_for_run
from apten_assets.defs.apten.resources import AptenApiResource, AptenWarehouse
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.sync import enrich_calls, sync_call_events, sync_leads
from apten_assets.lib.tables import CALL_EVENTS, CALL_SUMMARIES, CALL_TRANSCRIPT_TURNS, CALLS, LEADS

GROUP = "apten"
API_POOL = "apten_api"
LEADS_KEY = dg.AssetKey(["apten", "leads"])
CALL_EVENTS_KEY = dg.AssetKey(["apten", "call_events"])
CALLS_KEY = dg.AssetKey(["apten", "calls"])
CALL_SUMMARIES_KEY = dg.AssetKey(["apten", "call_summaries"])
CALL_TRANSCRIPT_TURNS_KEY = dg.AssetKey(["apten", "call_transcript_turns"])
WEBHOOK_DELIVERIES_KEY = dg.AssetKey(["apten", "webhook_deliveries"])

# A call's partition is the UTC day of its CALL event, or of the call itself for calls known
# only from webhooks (webchat).
CALL_TIME_SQL = "COALESCE(e.occurred_at, c.created_at, c.first_fetched_at)"
CALLS_IN_WINDOW_SQL = (
    f"FROM {CALLS.qualified_name} AS c LEFT JOIN {CALL_EVENTS.qualified_name} AS e USING (call_id) "
    f"WHERE {CALL_TIME_SQL} >= ? AND {CALL_TIME_SQL} < ?"
)


class CallsRunConfig(dg.Config):
    """Which calls one run of `apten/calls` fetches."""

    call_ids: list[str] = Field(
        default_factory=list,
        description="Fetch exactly these call ids (the late-summary and webhook sensors set this).",
    )
    refresh_all: bool = Field(
        default=False,
        description="Fetch every call of the partitions again, final ones included.",
    )


def build_assets(settings: AptenSettings) -> list[dg.AssetsDefinition]:
    partitions = daily_partitions(settings)
    give_up_after = timedelta(hours=settings.summary_give_up_hours)
    freshness = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2), warn_window=timedelta(hours=1))

    @dg.asset(
        key=LEADS_KEY,
        group_name=GROUP,
        kinds={"python", "duckdb"},
        pool=API_POOL,
        description=(
            "Every Apten lead, loaded incrementally on `updatedAt` (GET /leads?updatedSince=) from a "
            "watermark kept in the warehouse. Soft-deleted leads stay with `is_deleted = true`."
        ),
        metadata=table_definition_metadata(LEADS),
        freshness_policy=freshness,
    )
    def leads(
        context: dg.AssetExecutionContext, apten: AptenApiResource, duckdb: AptenWarehouse
    ) -> dg.MaterializeResult:
        pii, pii_meta = pii_for_run(context, duckdb)
        with apten.get_client() as client:
            report = sync_leads(client, duckdb.get_connection, context.log, pii=pii)
            api_stats = client.stats.as_metadata()
        with duckdb.get_connection() as con:
            (total,) = con.execute(f"SELECT count(*) FROM {LEADS.qualified_name}").fetchone()
            sample = preview(
                con,
                f"SELECT lead_id, first_name, last_name, updated_at, is_deleted FROM {LEADS.qualified_name} "
                "ORDER BY updated_at DESC NULLS LAST, lead_id",
            )
        context.log.info(f"leads: {report.counts['fetched']:,} fetched; table holds {total:,} leads")
        return dg.MaterializeResult(
            metadata=run_metadata(
                report, row_count=total, api_stats=api_stats, extra={"preview": sample, **pii_meta}
            )
        )

    @dg.asset(
        key=CALL_EVENTS_KEY,
        deps=[LEADS_KEY],
        group_name=GROUP,
        kinds={"python", "duckdb"},
        pool=API_POOL,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        description=(
            "CALL events (GET /leads/{id}/events?types=CALL) by the UTC day of their `timestamp`: "
            "one row per call, keyed by the event id (= the call id). Other event types are counted, "
            "never stored here."
        ),
        metadata=table_definition_metadata(CALL_EVENTS),
        freshness_policy=freshness,
    )
    def call_events(
        context: dg.AssetExecutionContext, apten: AptenApiResource, duckdb: AptenWarehouse
    ) -> dg.MaterializeResult:
        start, end = partition_window(context)
        pii, pii_meta = pii_for_run(context, duckdb)
        with apten.get_client() as client:
            report = sync_call_events(client, duckdb.get_connection, start, end, context.log, pii=pii)
            api_stats = client.stats.as_metadata()
        table = CALL_EVENTS.qualified_name
        with duckdb.get_connection() as con:
            (total,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()
            (in_window,) = con.execute(
                f"SELECT count(*) FROM {table} WHERE occurred_at >= ? AND occurred_at < ?", [start, end]
            ).fetchone()
            sample = preview(
                con,
                "SELECT call_id, lead_id, occurred_at, direction, call_status, duration_seconds "
                f"FROM {table} WHERE occurred_at >= ? AND occurred_at < ? ORDER BY occurred_at DESC, call_id",
                [start, end],
            )
        context.log.info(f"call_events {window_label(start, end)}: {in_window:,} CALL events stored")
        return dg.MaterializeResult(
            metadata=run_metadata(
                report,
                row_count=total,
                partition_row_count=in_window,
                api_stats=api_stats,
                extra={"preview": sample, "window": window_label(start, end), **pii_meta},
            )
        )

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                CALLS_KEY,
                deps=[CALL_EVENTS_KEY, WEBHOOK_DELIVERIES_KEY],
                group_name=GROUP,
                kinds={"python", "duckdb"},
                description=(
                    "Calls enriched with GET /calls/{callId}: status, transfer metadata, transcript size "
                    "and `summary_status` (ready | pending | missing | not_found). Only calls that are "
                    "not final are fetched again; run config can name calls or refresh all."
                ),
                metadata=table_definition_metadata(CALLS),
                freshness_policy=freshness,
            ),
            dg.AssetSpec(
                CALL_SUMMARIES_KEY,
                deps=[CALLS_KEY],
                group_name=GROUP,
                kinds={"python", "duckdb"},
                description=(
                    "One row per call with an AI summary, with when it was first seen and how late it "
                    "arrived after the call ended."
                ),
                metadata=table_definition_metadata(CALL_SUMMARIES),
            ),
            dg.AssetSpec(
                CALL_TRANSCRIPT_TURNS_KEY,
                deps=[CALLS_KEY],
                group_name=GROUP,
                kinds={"python", "duckdb"},
                description="One row per transcript turn; a call's turns are replaced as a whole.",
                metadata=table_definition_metadata(CALL_TRANSCRIPT_TURNS),
            ),
        ],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=API_POOL,
        # One op writes the three tables together, so a call, its summary and its turns commit in
        # the same transaction and never disagree.
        can_subset=False,
    )
    def calls(
        context: dg.AssetExecutionContext,
        config: CallsRunConfig,
        apten: AptenApiResource,
        duckdb: AptenWarehouse,
    ):
        start, end = partition_window(context)
        pii, pii_meta = pii_for_run(context, duckdb)
        with apten.get_client() as client:
            reports = enrich_calls(
                client,
                duckdb.get_connection,
                start,
                end,
                context.log,
                give_up_after=give_up_after,
                pii=pii,
                call_ids=config.call_ids or None,
                refresh_all=config.refresh_all,
            )
            api_stats = client.stats.as_metadata()
        window = [start, end]
        with duckdb.get_connection() as con:
            calls_meta = _calls_metadata(con, window)
            summaries_meta = _summaries_metadata(con, window)
            turns_meta = _turns_metadata(con, window)
        context.log.info(
            f"calls {window_label(start, end)}: {calls_meta['dagster/partition_row_count']:,} calls, "
            f"{calls_meta['calls_pending_summary']:,} still pending a summary"
        )
        yield dg.MaterializeResult(
            asset_key=CALLS_KEY,
            metadata=run_metadata(
                reports["calls"],
                row_count=calls_meta.pop("dagster/row_count"),
                partition_row_count=calls_meta.pop("dagster/partition_row_count"),
                api_stats=api_stats,
                extra={
                    **calls_meta,
                    "window": window_label(start, end),
                    "targeted_call_ids": len(config.call_ids),
                    **pii_meta,
                },
            ),
        )
        yield dg.MaterializeResult(
            asset_key=CALL_SUMMARIES_KEY,
            metadata=run_metadata(
                reports["call_summaries"],
                row_count=summaries_meta.pop("dagster/row_count"),
                partition_row_count=summaries_meta.pop("dagster/partition_row_count"),
                extra=summaries_meta,
            ),
        )
        yield dg.MaterializeResult(
            asset_key=CALL_TRANSCRIPT_TURNS_KEY,
            metadata=run_metadata(
                reports["call_transcript_turns"],
                row_count=turns_meta.pop("dagster/row_count"),
                partition_row_count=turns_meta.pop("dagster/partition_row_count"),
                extra=turns_meta,
            ),
        )

    return [leads, call_events, calls]


def _calls_metadata(con, window: list[datetime]) -> dict:
    (total,) = con.execute(f"SELECT count(*) FROM {CALLS.qualified_name}").fetchone()
    by_status = dict(
        con.execute(f"SELECT c.summary_status, count(*) {CALLS_IN_WINDOW_SQL} GROUP BY 1", window).fetchall()
    )
    oldest_pending = con.execute(
        f"SELECT min(c.created_at) {CALLS_IN_WINDOW_SQL} AND c.summary_status = 'pending'", window
    ).fetchone()[0]
    meta = {
        "dagster/row_count": total,
        "dagster/partition_row_count": sum(by_status.values()),
        "calls_ready": by_status.get("ready", 0),
        "calls_pending_summary": by_status.get("pending", 0),
        "calls_missing_summary": by_status.get("missing", 0),
        "calls_not_found": by_status.get("not_found", 0),
        "preview": preview(
            con,
            f"SELECT c.call_id, c.lead_id, c.session_id, c.call_status, c.summary_status, c.turn_count "
            f"{CALLS_IN_WINDOW_SQL} ORDER BY c.created_at DESC NULLS LAST, c.call_id",
            window,
        ),
    }
    if oldest_pending is not None:
        age = datetime.now(UTC) - oldest_pending
        meta["oldest_pending_age_minutes"] = round(age.total_seconds() / 60, 1)
    return meta


def _summaries_metadata(con, window: list[datetime]) -> dict:
    table = CALL_SUMMARIES.qualified_name
    in_window = f"FROM {table} AS s WHERE s.call_id IN (SELECT c.call_id {CALLS_IN_WINDOW_SQL})"
    (total,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    count, p50, p95, worst = con.execute(
        "SELECT count(*), quantile_cont(summary_latency_seconds, 0.5), "
        f"quantile_cont(summary_latency_seconds, 0.95), max(summary_latency_seconds) {in_window}",
        window,
    ).fetchone()
    meta = {"dagster/row_count": total, "dagster/partition_row_count": count}
    for name, value in (("p50", p50), ("p95", p95), ("max", worst)):
        if value is not None:
            meta[f"summary_latency_seconds_{name}"] = round(float(value), 1)
    meta["preview"] = preview(
        con,
        f"SELECT s.call_id, s.summary_first_seen_at, s.summary_latency_seconds, s.summary {in_window} "
        "ORDER BY s.summary_first_seen_at DESC, s.call_id",
        window,
    )
    return meta


def _turns_metadata(con, window: list[datetime]) -> dict:
    table = CALL_TRANSCRIPT_TURNS.qualified_name
    in_window = f"FROM {table} AS t WHERE t.call_id IN (SELECT c.call_id {CALLS_IN_WINDOW_SQL})"
    (total,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    count, calls_with_turns = con.execute(
        f"SELECT count(*), count(DISTINCT t.call_id) {in_window}", window
    ).fetchone()
    return {
        "dagster/row_count": total,
        "dagster/partition_row_count": count,
        "calls_with_turns": calls_with_turns,
        "preview": preview(
            con,
            f"SELECT t.call_id, t.turn_index, t.role, t.content {in_window} ORDER BY t.call_id, t.turn_index",
            window,
        ),
    }
