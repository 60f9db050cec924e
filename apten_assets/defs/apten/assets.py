"""The pipeline's assets: leads -> call_events -> calls -> {call_summaries, call_transcript_turns}.

Each asset is a short recipe: open the client, run one step of `apten_assets.lib.sync`, turn its
report into metadata. All fetching, parsing and writing lives in plain, testable code.
"""

from datetime import UTC, datetime, timedelta

import dagster as dg
from pydantic import Field

from apten_assets.defs.apten.metadata import figures, run_metadata, table_definition_metadata, window_label
from apten_assets.defs.apten.partitions import daily_partitions, partition_window
from apten_assets.defs.apten.pii import pii_for_run
from apten_assets.defs.apten.resources import AptenApiResource, AptenWarehouse
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.sync import enrich_calls, sync_call_events, sync_leads
from apten_assets.lib.tables import CALL_EVENTS, CALL_SUMMARIES, CALL_TRANSCRIPT_TURNS, CALLS, LEADS
from apten_assets.warehouse import DUCKDB, POSTGRES

GROUP = "apten"

API_POOL = "apten_api"
# Ops that only write the warehouse; one at a time on DuckDB (its single writer), see DESIGN.md.
WRITE_POOL = "warehouse_write"
LEADS_KEY = dg.AssetKey(["apten", "leads"])
CALL_EVENTS_KEY = dg.AssetKey(["apten", "call_events"])
CALLS_KEY = dg.AssetKey(["apten", "calls"])
CALL_SUMMARIES_KEY = dg.AssetKey(["apten", "call_summaries"])
CALL_TRANSCRIPT_TURNS_KEY = dg.AssetKey(["apten", "call_transcript_turns"])
WEBHOOK_DELIVERIES_KEY = dg.AssetKey(["apten", "webhook_deliveries"])


def warehouse_kinds(settings: AptenSettings) -> set[str]:
    """The kinds the UI shows for a table asset: Python, and the warehouse it is written to."""
    return {"python", "postgres" if settings.warehouse.backend == POSTGRES else DUCKDB}


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
    kinds = warehouse_kinds(settings)
    give_up_after = timedelta(hours=settings.summary_give_up_hours)
    freshness = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2), warn_window=timedelta(hours=1))

    @dg.asset(
        key=LEADS_KEY,
        group_name=GROUP,
        kinds=kinds,
        pool=API_POOL,
        description=(
            "Every Apten lead, loaded incrementally on `updatedAt` (GET /leads?updatedSince=) from a "
            "watermark kept in the warehouse. Soft-deleted leads stay with `is_deleted = true`."
        ),
        metadata=table_definition_metadata(LEADS),
        freshness_policy=freshness,
    )
    def leads(
        context: dg.AssetExecutionContext, apten: AptenApiResource, warehouse: AptenWarehouse
    ) -> dg.MaterializeResult:
        pii, pii_meta = pii_for_run(context, warehouse)
        with apten.get_client() as client:
            report = sync_leads(client, warehouse.get_store, context.log, pii=pii)
            api_stats = client.stats.as_metadata()
        with warehouse.get_store() as store:
            meta = figures(store.leads_metadata())
        total = meta.pop("dagster/row_count")
        context.log.info(f"leads: {report.counts['fetched']:,} fetched; table holds {total:,} leads")
        return dg.MaterializeResult(
            metadata=run_metadata(report, row_count=total, api_stats=api_stats, extra={**meta, **pii_meta})
        )

    @dg.asset(
        key=CALL_EVENTS_KEY,
        deps=[LEADS_KEY],
        group_name=GROUP,
        kinds=kinds,
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
        context: dg.AssetExecutionContext, apten: AptenApiResource, warehouse: AptenWarehouse
    ) -> dg.MaterializeResult:
        start, end = partition_window(context)
        pii, pii_meta = pii_for_run(context, warehouse)
        with apten.get_client() as client:
            report = sync_call_events(client, warehouse.get_store, start, end, context.log, pii=pii)
            api_stats = client.stats.as_metadata()
        with warehouse.get_store() as store:
            meta = figures(store.call_events_metadata(start, end))
        total, in_window = meta.pop("dagster/row_count"), meta.pop("dagster/partition_row_count")
        context.log.info(f"call_events {window_label(start, end)}: {in_window:,} CALL events stored")
        return dg.MaterializeResult(
            metadata=run_metadata(
                report,
                row_count=total,
                partition_row_count=in_window,
                api_stats=api_stats,
                extra={**meta, "window": window_label(start, end), **pii_meta},
            )
        )

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                CALLS_KEY,
                deps=[CALL_EVENTS_KEY, WEBHOOK_DELIVERIES_KEY],
                group_name=GROUP,
                kinds=kinds,
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
                kinds=kinds,
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
                kinds=kinds,
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
        warehouse: AptenWarehouse,
    ):
        start, end = partition_window(context)
        pii, pii_meta = pii_for_run(context, warehouse)
        with apten.get_client() as client:
            reports = enrich_calls(
                client,
                warehouse.get_store,
                start,
                end,
                context.log,
                give_up_after=give_up_after,
                pii=pii,
                call_ids=config.call_ids or None,
                refresh_all=config.refresh_all,
            )
            api_stats = client.stats.as_metadata()
        with warehouse.get_store() as store:
            calls_meta = figures(store.calls_metadata(start, end, datetime.now(UTC)))
            summaries_meta = figures(store.summaries_metadata(start, end))
            turns_meta = figures(store.turns_metadata(start, end))
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
