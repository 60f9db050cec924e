"""Webhooks in Dagster: the inbox as `apten/webhook_deliveries`, transfers as `apten/call_transfers`,
and `apten_webhook_sensor`, which turns new call deliveries into targeted runs of the calls op.

    receiver -> inbox dir -> apten/webhook_deliveries -> apten/calls (targeted) -> apten/call_transfers
"""

import time

import dagster as dg
from pydantic import Field

from apten_assets.defs.apten.assets import (
    CALL_SUMMARIES_KEY,
    CALL_TRANSCRIPT_TURNS_KEY,
    CALLS_KEY,
    GROUP,
    WEBHOOK_DELIVERIES_KEY,
    WRITE_POOL,
    warehouse_kinds,
)
from apten_assets.defs.apten.automation import sensor_status
from apten_assets.defs.apten.metadata import figures, run_metadata, table_definition_metadata, window_label
from apten_assets.defs.apten.partitions import daily_partitions, partition_window
from apten_assets.defs.apten.pii import pii_for_run
from apten_assets.defs.apten.resources import AptenWarehouse
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.sync import StepReport
from apten_assets.lib.tables import CALL_TRANSFERS, WEBHOOK_DELIVERIES
from apten_assets.lib.transfers import OUTCOMES, refresh_call_transfers
from apten_assets.lib.webhook_events import (
    InboxScanCursor,
    load_webhook_deliveries,
    report_bad_inbox_files,
    scan_inbox,
)
from apten_assets.webhooks.inbox import Inbox

CALL_TRANSFERS_KEY = dg.AssetKey(["apten", "call_transfers"])
WEBHOOK_SENSOR_NAME = "apten_webhook_sensor"
SENSOR_INTERVAL_SECONDS = 15
MAX_DELIVERIES_PER_TICK = 5000
MAX_CALLS_PER_RUN = 1000
# Deliveries that name no call (SMS, tags, webchat messages) are loaded at most this often on
# their own; any call run loads them too.
OTHER_EVENTS_LOAD_EVERY_SECONDS = 300
WEBHOOK_RUN_ASSETS = [
    WEBHOOK_DELIVERIES_KEY,
    CALLS_KEY,
    CALL_SUMMARIES_KEY,
    CALL_TRANSCRIPT_TURNS_KEY,
    CALL_TRANSFERS_KEY,
]


class CallTransfersRunConfig(dg.Config):
    """Which calls one run of `apten/call_transfers` recomputes besides the partition's own."""

    call_ids: list[str] = Field(
        default_factory=list,
        description="Also recompute these calls, wherever their day falls (the webhook sensor sets this).",
    )


def build_webhook_assets(settings: AptenSettings) -> list[dg.AssetsDefinition]:
    inbox = Inbox(settings.webhook_inbox)
    kinds = warehouse_kinds(settings)

    @dg.asset(
        key=WEBHOOK_DELIVERIES_KEY,
        group_name=GROUP,
        kinds=kinds,
        pool=WRITE_POOL,
        description=(
            "Every distinct webhook delivery Apten sent, loaded from the receiver's inbox "
            "(APTEN_WEBHOOK_INBOX) after a cursor kept in the warehouse; upserted by `delivery_key`, "
            "unknown event names included."
        ),
        metadata=table_definition_metadata(WEBHOOK_DELIVERIES),
    )
    def webhook_deliveries(
        context: dg.AssetExecutionContext, warehouse: AptenWarehouse
    ) -> dg.MaterializeResult:
        pii, pii_meta = pii_for_run(context, warehouse)
        load = load_webhook_deliveries(inbox, warehouse.get_store, context.log, pii=pii)
        with warehouse.get_store() as store:
            meta = figures(store.webhook_deliveries_metadata())
        total = meta.pop("dagster/row_count")
        context.log.info(
            f"webhook_deliveries: {load.report.counts['new']:,} new of {load.report.counts['read']:,} read; "
            f"table holds {total:,}"
        )
        return dg.MaterializeResult(
            metadata=run_metadata(
                load.report,
                row_count=total,
                extra={
                    "by_event": dg.MetadataValue.json(dict(sorted(load.by_event.items()))),
                    "unknown_event_names": dg.MetadataValue.json(load.unknown_events),
                    "inbox_cursor": load.cursor or "",
                    "unreadable_inbox_file_names": dg.MetadataValue.json(
                        [f.name for f in load.bad_files[:100]]
                    ),
                    **meta,
                    **pii_meta,
                },
            )
        )

    @dg.multi_asset(
        name="call_transfers",
        specs=[
            dg.AssetSpec(
                CALL_TRANSFERS_KEY,
                deps=[CALLS_KEY, WEBHOOK_DELIVERIES_KEY],
                group_name=GROUP,
                kinds=kinds,
                description=(
                    "One row per transfer attempt: type, target, fallback number, outcome (connected, "
                    "missed, fallback_triggered) and timestamps, from the transfer webhooks and the call "
                    "record. Daily by the call's day; a call's rows are recomputed as a whole."
                ),
                metadata=table_definition_metadata(CALL_TRANSFERS),
            )
        ],
        partitions_def=daily_partitions(settings),
        backfill_policy=dg.BackfillPolicy.single_run(),
        pool=WRITE_POOL,
    )
    def call_transfers(
        context: dg.AssetExecutionContext, config: CallTransfersRunConfig, warehouse: AptenWarehouse
    ) -> dg.MaterializeResult:
        start, end = partition_window(context)
        with warehouse.get_store() as store:
            refresh = refresh_call_transfers(store, start, end, call_ids=config.call_ids)
            meta = figures(store.transfers_metadata(start, end, OUTCOMES))
        report = StepReport()
        report.counts["calls_recomputed"] = refresh.calls
        report.counts["attempts_derived"] = refresh.attempts
        report.add_replace("", refresh.counts)
        context.log.info(
            f"call_transfers {window_label(start, end)}: {refresh.calls:,} calls recomputed, "
            f"{refresh.counts.parents_replaced:,} changed"
        )
        return dg.MaterializeResult(
            metadata=run_metadata(
                report,
                row_count=meta.pop("dagster/row_count"),
                partition_row_count=meta.pop("dagster/partition_row_count"),
                extra={**meta, "window": window_label(start, end), "targeted_call_ids": len(config.call_ids)},
            )
        )

    return [webhook_deliveries, call_transfers]


def build_webhook_sensor(settings: AptenSettings) -> dg.SensorDefinition:
    inbox = Inbox(settings.webhook_inbox)
    partitions = daily_partitions(settings)

    @dg.sensor(
        name=WEBHOOK_SENSOR_NAME,
        target=WEBHOOK_RUN_ASSETS,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=sensor_status(settings),
        description=(
            "Watches the webhook inbox. New call deliveries (call.completed, transfers) become one run per "
            "day of the calls: webhook_deliveries, then calls/summaries/turns for exactly those call ids, "
            "then call_transfers. Other deliveries are loaded at most every 5 minutes."
        ),
    )
    def apten_webhook_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = InboxScanCursor.parse(context.cursor)
        scan = scan_inbox(inbox, cursor, max_deliveries=MAX_DELIVERIES_PER_TICK)
        report_bad_inbox_files(scan.bad_files, context.log, WEBHOOK_SENSOR_NAME)
        next_cursor = scan.cursor
        run_requests: list[dg.RunRequest] = []
        now = time.time()
        for day, call_ids in scan.calls_by_day.items():
            key = day.isoformat()
            if not partitions.has_partition_key(key):
                context.log.warning(
                    f"{len(call_ids)} webhook call(s) fall on {key}, outside the partitions "
                    f"({settings.start_date} to today); the polling schedules cover them if they move"
                )
                continue
            for index in range(0, len(call_ids), MAX_CALLS_PER_RUN):
                chunk = call_ids[index : index + MAX_CALLS_PER_RUN]
                run_requests.append(
                    dg.RunRequest(
                        run_key=f"webhook:{key}:{index // MAX_CALLS_PER_RUN}:{scan.watermark}",
                        partition_key=key,
                        asset_selection=WEBHOOK_RUN_ASSETS,
                        run_config={
                            "ops": {
                                "calls": {"config": {"call_ids": chunk}},
                                "call_transfers": {"config": {"call_ids": chunk}},
                            }
                        },
                        tags={"apten/trigger": "webhook", "apten/webhook_calls": str(len(chunk))},
                    )
                )
        if run_requests:
            next_cursor.unloaded_other = 0
            next_cursor.last_load_requested = now
        elif next_cursor.unloaded_other and now - next_cursor.last_load_requested >= (
            OTHER_EVENTS_LOAD_EVERY_SECONDS
        ):
            run_requests.append(
                dg.RunRequest(
                    run_key=f"webhook:deliveries:{next_cursor.inbox}",
                    asset_selection=[WEBHOOK_DELIVERIES_KEY],
                    tags={"apten/trigger": "webhook"},
                )
            )
            next_cursor.unloaded_other = 0
            next_cursor.last_load_requested = now
        calls = sum(len(ids) for ids in scan.calls_by_day.values())
        context.log.info(
            f"{scan.new_deliveries} new deliveries ({scan.new_call_deliveries} about calls) -> {calls} calls "
            f"in {len(run_requests)} runs{'; more waiting' if scan.more_waiting else ''}"
            f"{f'; {len(scan.bad_files)} unreadable inbox files skipped' if scan.bad_files else ''}"
        )
        return dg.SensorResult(
            run_requests=run_requests,
            cursor=next_cursor.to_json(),
            skip_reason=None if run_requests else "no new call deliveries in the inbox",
        )

    return apten_webhook_sensor
