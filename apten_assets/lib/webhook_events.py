"""Webhook deliveries as rows: the event names Apten documents, loading the inbox into
`apten.webhook_deliveries`, and planning which calls new deliveries should refresh.

Plain Python (no Dagster). The receiver has already verified and stored every delivery in the
inbox (apten_assets.webhooks); this module only reads it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa

from apten_assets.lib.erasure import ErasedLeads
from apten_assets.lib.models import parse_timestamp
from apten_assets.lib.pii import PiiPolicy
from apten_assets.lib.sync import (
    UNSTORABLE,
    OpenWarehouse,
    StepReport,
    chunks,
    describe_error,
    write_isolating,
)
from apten_assets.lib.tables import WEBHOOK_DELIVERIES
from apten_assets.webhooks.inbox import BadInboxFile, Delivery, Inbox, is_unicode_text, parse_cursor

TRANSFER_STARTED_EVENTS = ("call.transferred", "webchat.call.transferred")
TRANSFER_CONNECTED_EVENT = "call.transfer.connected"
TRANSFER_MISSED_EVENT = "agentMissedTransfer"
TRANSFER_FALLBACK_EVENT = "transferFallbackTriggered"
TRANSFER_EVENTS = (
    *TRANSFER_STARTED_EVENTS,
    TRANSFER_CONNECTED_EVENT,
    TRANSFER_MISSED_EVENT,
    TRANSFER_FALLBACK_EVENT,
)
# Deliveries that name a call worth fetching again (apten-api.md §5.4, §5.5).
CALL_WEBHOOK_EVENTS = frozenset({"call.completed", *TRANSFER_EVENTS})
KNOWN_WEBHOOK_EVENTS = frozenset(
    {
        *CALL_WEBHOOK_EVENTS,
        "leadTagged",
        "notification",
        "message.received",
        "message.sent",
        "optOut",
        "webchat.session.started",
        "webchat.message.received",
        "webchat.message.sent",
    }
)

INBOX_CURSOR = "webhook_deliveries.inbox_cursor"
# An envelope timestamp outside these years is not a real Apten event time (and day arithmetic on
# year 1 or 9999 overflows): it is stored as NULL with a counted warning, the raw body kept.
EARLIEST_EVENT_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2200, 1, 1, tzinfo=UTC)


SOURCE_WEBHOOK_DELIVERIES = "webhook_deliveries"
# The skips of unreadable files, logged once by `report_bad_inbox_files` rather than per file.
_ALREADY_LOGGED = logging.getLogger(__name__ + ".already_logged")
_ALREADY_LOGGED.addHandler(logging.NullHandler())
_ALREADY_LOGGED.propagate = False


def report_bad_inbox_files(bad: list[BadInboxFile], log: logging.Logger | Any, where: str) -> None:
    """The one place an inbox file that cannot be read back is reported: logged here, counted by
    the caller; the loader also quarantines it (`quarantine_bad_inbox_files`)."""
    for item in bad[:5]:
        log.warning(f"{where}: skipped inbox file {item.name}: {item.reason}")
    if len(bad) > 5:
        log.warning(f"{where}: skipped {len(bad) - 5} more unreadable inbox files")


def quarantine_bad_inbox_files(inbox: Inbox, bad: list[BadInboxFile], report: StepReport) -> None:
    """Queue each unreadable inbox file for `apten.rejected_records` (source `webhook_deliveries`,
    its file name as the id, its bytes as the payload; the receiver applied the PII modes before
    writing it). Logged once by `report_bad_inbox_files`, not per file here."""
    for item in bad:
        try:
            payload: bytes | None = (inbox.path / item.name).read_bytes()
        except OSError:
            payload = None
        report.reject(
            SOURCE_WEBHOOK_DELIVERIES,
            item.name,
            f"unreadable inbox file: {item.reason}",
            payload,
            _ALREADY_LOGGED,
        )


# --------------------------------------------------------------------------- loading


@dataclass
class DeliveryLoad:
    """What one load of the inbox did, for the asset's metadata."""

    report: StepReport = field(default_factory=StepReport)
    by_event: Counter[str] = field(default_factory=Counter)
    cursor: str | None = None
    bad_files: list[BadInboxFile] = field(default_factory=list)

    @property
    def unknown_events(self) -> list[str]:
        return sorted(name for name in self.by_event if name not in KNOWN_WEBHOOK_EVENTS)


def _raw_json_text(delivery: Delivery, pii: PiiPolicy) -> str:
    """The body as stored text, byte for byte when DuckDB's JSON type accepts it and `pii` keeps
    it as it is.

    Python's parser (which the receiver used) also reads NaN/Infinity, non-UTF-8 encodings and
    lone surrogate escapes (`"\\ud83d"`); DuckDB reads none of them, so those rare bodies are
    stored re-serialised, a lone surrogate as U+FFFD. The inbox file keeps the exact bytes. The
    receiver applied its own PII modes already; applying the warehouse's here (idempotent) makes
    the table follow them even when the receiver runs with other settings.
    """
    envelope = pii.record(delivery.envelope)
    if envelope is not delivery.envelope:
        # NaN/Infinity (which Python's parser took) become null, as on the path below.
        envelope = json.loads(json.dumps(envelope, default=str), parse_constant=lambda _: None)
        return _without_lone_surrogates(json.dumps(envelope, ensure_ascii=False, separators=(",", ":")))
    try:
        text = delivery.raw.decode("utf-8")
        json.loads(text, parse_constant=_refuse_constant)
        if "\\u" not in text or is_unicode_text(json.dumps(delivery.envelope, ensure_ascii=False)):
            return text
    except ValueError:
        pass
    envelope = json.loads(delivery.raw, parse_constant=lambda _: None)
    return _without_lone_surrogates(json.dumps(envelope, ensure_ascii=False, separators=(",", ":")))


def _without_lone_surrogates(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def event_time(delivery: Delivery) -> datetime | None:
    """The envelope `timestamp` as aware UTC, or None when absent, unreadable or out of range."""
    if delivery.event_timestamp is None:
        return None
    try:
        when = parse_timestamp(delivery.event_timestamp)[0]
    except (ValueError, OverflowError):
        return None
    return when if EARLIEST_EVENT_TIME <= when < LATEST_EVENT_TIME else None


def _delivery_table(
    deliveries: list[Delivery], report: StepReport, log: logging.Logger | Any, pii: PiiPolicy
) -> pa.Table:
    columns: dict[str, list[Any]] = {
        name: [] for name in ("delivery_key", "event", "event_timestamp", "received_at")
    }
    columns |= {name: [] for name in ("call_id", "lead_id", "session_id", "raw")}
    for delivery in deliveries:
        timestamp = event_time(delivery)
        if timestamp is None:
            report.counts["unreadable_event_timestamp"] += 1
            log.warning(
                f"webhook {delivery.delivery_key}: timestamp {delivery.event_timestamp!r:.64} is not an ISO "
                f"8601 time from {EARLIEST_EVENT_TIME.year} to {LATEST_EVENT_TIME.year}; stored as NULL"
            )
        for name in ("callId", "leadId", "sessionId"):
            value = delivery.data.get(name)
            if isinstance(value, str) and not is_unicode_text(value):
                report.counts["unstorable_ids"] += 1
                log.warning(
                    f"webhook {delivery.delivery_key}: data.{name} is not valid Unicode; stored as NULL"
                )
        event = delivery.event
        if not is_unicode_text(event):
            report.counts["unstorable_event_names"] += 1
            log.warning(
                f"webhook {delivery.delivery_key}: event name is not valid Unicode; stored with U+FFFD"
            )
            event = _without_lone_surrogates(event)
        columns["delivery_key"].append(delivery.delivery_key)
        columns["event"].append(event)
        columns["event_timestamp"].append(timestamp)
        columns["received_at"].append(delivery.received_at)
        columns["call_id"].append(delivery.call_id)
        columns["lead_id"].append(delivery.lead_id)
        columns["session_id"].append(delivery.session_id)
        columns["raw"].append(_raw_json_text(delivery, pii))
    timestamp_type = pa.timestamp("us", tz="UTC")
    types = {"event_timestamp": timestamp_type, "received_at": timestamp_type}
    return pa.table(
        {name: pa.array(values, type=types.get(name, pa.string())) for name, values in columns.items()}
    )


def load_webhook_deliveries(
    inbox: Inbox,
    open_warehouse: OpenWarehouse,
    log: logging.Logger | Any,
    *,
    pii: PiiPolicy,
    batch_size: int = 5000,
) -> DeliveryLoad:
    """Upsert the inbox's deliveries after the stored cursor into `apten.webhook_deliveries`.

    Each batch and the cursor commit in one transaction. The inbox re-yields a few minutes before
    the cursor (a slow write may land late); those come back as `already_stored`. The cursor only
    moves forward, so two loads running at once cannot set it back. Deliveries about an erased
    lead (`data.leadId`) are dropped and their inbox files deleted: the receiver, which cannot see
    the warehouse, still stores them.
    """
    load = DeliveryLoad()
    report = load.report
    with open_warehouse() as store:
        stored_cursor = store.get_sync_state(INBOX_CURSOR)
        erased = ErasedLeads.load(store, pii.salt)
    load.cursor = stored_cursor
    log.info(f"webhook_deliveries: reading {inbox} after {stored_cursor or 'the beginning'}")
    deliveries = inbox.iter_deliveries(after=stored_cursor, on_bad_file=load.bad_files.append)
    for batch in chunks(deliveries, batch_size):
        kept = []
        for delivery in batch:
            if delivery.lead_id in erased:
                report.skip_erased()
                inbox.remove(delivery.delivery_key)
            else:
                kept.append(delivery)
        table = _delivery_table(kept, report, log, pii)
        _write_delivery_batch(open_warehouse, kept, table, batch[-1].cursor, load, log)
        report.write_quarantine(open_warehouse)
        report.counts["read"] += len(batch)
        load.by_event.update(table.column("event").to_pylist())
        log.info(f"webhook_deliveries: {report.counts['read']:,} read, {report.counts['new']:,} new so far")
    report.counts["unknown_event_deliveries"] = sum(
        n for name, n in load.by_event.items() if name not in KNOWN_WEBHOOK_EVENTS
    )
    report.counts["unreadable_inbox_files"] = len(load.bad_files)
    report_bad_inbox_files(load.bad_files, log, "webhook_deliveries")
    quarantine_bad_inbox_files(inbox, load.bad_files, report)
    report.write_quarantine(open_warehouse)
    return load


def _write_delivery_batch(
    open_warehouse: OpenWarehouse,
    batch: list[Delivery],
    table: pa.Table,
    batch_cursor: str,
    load: DeliveryLoad,
    log: Any,
) -> None:
    """Upsert one batch and move the cursor past it, in one transaction; a delivery the warehouse
    refuses is found by halving the batch (`write_isolating`) and quarantined, and the cursor still
    moves past it, so it never holds back the deliveries behind it."""
    report = load.report

    def write(rows: list[int], cursor: bool = False) -> None:
        part = table.take(pa.array(rows, type=pa.int64()))
        with open_warehouse() as store, store.transaction():
            counts = store.upsert(WEBHOOK_DELIVERIES, part)
            store.resolve_quarantined(SOURCE_WEBHOOK_DELIVERIES, part.column("delivery_key").to_pylist())
            if cursor:
                _advance_cursor(store, batch_cursor, load)
        report.counts["new"] += counts.inserted
        report.counts["already_stored"] += counts.updated + counts.unchanged

    def reject(row: int, exc: BaseException) -> None:
        delivery = batch[row]
        report.reject(
            SOURCE_WEBHOOK_DELIVERIES, delivery.delivery_key, describe_error(exc), delivery.raw, log
        )

    rows = list(range(len(batch)))
    try:
        write(rows, cursor=True)
    except UNSTORABLE:
        write_isolating(rows, write, reject)
        with open_warehouse() as store, store.transaction():
            _advance_cursor(store, batch_cursor, load)


def _advance_cursor(store: Any, batch_cursor: str, load: DeliveryLoad) -> None:
    """Move the inbox cursor to `batch_cursor`, never back (two loads may run at once)."""
    current = store.get_sync_state(INBOX_CURSOR)
    if current is None or batch_cursor > current:
        store.set_sync_state(INBOX_CURSOR, batch_cursor)
        load.cursor = batch_cursor


# --------------------------------------------------------------------------- planning (the sensor)


def call_day(delivery: Delivery) -> date:
    """The UTC day a delivery's call belongs to (its daily partition), from the webhook alone.

    A call's partition is the day it started. `call.completed` is sent when the call ends and
    carries `durationSeconds`, so the start is the timestamp minus the duration; the transfer
    events happen during the call, so their timestamp is the best estimate there is.
    """
    when = event_time(delivery) or delivery.received_at
    duration = delivery.data.get("durationSeconds")
    if delivery.event == "call.completed" and isinstance(duration, int | float) and 0 <= duration < 86_400:
        when -= timedelta(seconds=duration)
    return when.astimezone(UTC).date()


@dataclass
class InboxScanCursor:
    """Where the webhook sensor is in the inbox (stored as the sensor's JSON cursor).

    `inbox` is the cursor of the last delivery handled. `recent` keeps a short prefix of the keys
    handled within the inbox's re-read overlap, with their receipt time (epoch seconds), so the
    deliveries re-yielded by that overlap are recognised and never trigger a second run.
    """

    inbox: str | None = None
    recent: dict[str, float] = field(default_factory=dict)
    unloaded_other: int = 0
    last_load_requested: float = 0.0

    KEY_PREFIX = 20

    @classmethod
    def parse(cls, text: str | None) -> InboxScanCursor:
        """The stored cursor; an unreadable one counts as empty (deliveries are re-read, and
        re-reading is harmless) rather than failing every tick."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            if data.get("inbox") is not None:
                parse_cursor(data["inbox"])
            return cls(
                inbox=data.get("inbox"),
                recent={str(k): float(v) for k, v in (data.get("recent") or {}).items()},
                unloaded_other=int(data.get("unloaded_other") or 0),
                last_load_requested=float(data.get("last_load_requested") or 0.0),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def to_json(self) -> str:
        return json.dumps(
            {
                "inbox": self.inbox,
                "recent": self.recent,
                "unloaded_other": self.unloaded_other,
                "last_load_requested": self.last_load_requested,
            },
            separators=(",", ":"),
            sort_keys=True,
        )


@dataclass
class InboxScan:
    """New deliveries found by one sensor tick: the calls to refresh, grouped by partition day."""

    cursor: InboxScanCursor
    new_deliveries: int = 0
    new_call_deliveries: int = 0
    calls_by_day: dict[date, list[str]] = field(default_factory=dict)
    watermark: str | None = None  # cursor of the last new delivery: identifies this batch
    more_waiting: bool = False
    bad_files: list[BadInboxFile] = field(default_factory=list)


def scan_inbox(
    inbox: Inbox,
    cursor: InboxScanCursor,
    *,
    max_deliveries: int = 5000,
    overlap: timedelta = timedelta(minutes=5),
) -> InboxScan:
    """Deliveries not handled yet, at most `max_deliveries`, and the calls they name by day.

    A call named by several new deliveries goes to the earliest day they suggest. Stops early,
    with `more_waiting`, once `max_deliveries` new ones are found, so one tick stays bounded;
    the next tick goes on from there.
    """
    recent = dict(cursor.recent)
    day_of: dict[str, date] = {}
    scan = InboxScan(cursor=cursor)
    last_cursor = cursor.inbox
    deliveries: Iterator[Delivery] = inbox.iter_deliveries(
        after=cursor.inbox, overlap=overlap, on_bad_file=scan.bad_files.append
    )
    for delivery in deliveries:
        prefix = delivery.delivery_key[: InboxScanCursor.KEY_PREFIX]
        if prefix in recent:
            continue
        if scan.new_deliveries >= max_deliveries:
            scan.more_waiting = True
            break
        recent[prefix] = delivery.received_at.timestamp()
        scan.new_deliveries += 1
        scan.watermark = delivery.cursor
        if last_cursor is None or delivery.cursor > last_cursor:
            last_cursor = delivery.cursor
        if delivery.event in CALL_WEBHOOK_EVENTS and delivery.call_id:
            scan.new_call_deliveries += 1
            day = call_day(delivery)
            known = day_of.get(delivery.call_id)
            day_of[delivery.call_id] = day if known is None else min(known, day)
    by_day: dict[date, list[str]] = {}
    for call_id, day in sorted(day_of.items()):
        by_day.setdefault(day, []).append(call_id)
    scan.calls_by_day = dict(sorted(by_day.items()))
    if recent:
        # Keys received before the overlap window can never be re-yielded: forget them.
        horizon = max(recent.values()) - overlap.total_seconds()
        recent = {prefix: at for prefix, at in recent.items() if at >= horizon}
    other = scan.new_deliveries - scan.new_call_deliveries
    scan.cursor = InboxScanCursor(
        inbox=last_cursor,
        recent=recent,
        unloaded_other=cursor.unloaded_other + other,
        last_load_requested=cursor.last_load_requested,
    )
    return scan
