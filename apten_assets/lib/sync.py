"""The ingestion recipes: Apten JSON -> models -> rows -> warehouse, one function per step.

Plain Python (no Dagster): the assets call these with a client, a way to open a short write
connection, and a logger. HTTP results are gathered in bounded batches and each batch is
written in one transaction, so the warehouse (DuckDB: its one writer lock) is never held
across HTTP calls and a
run killed at any point leaves the last committed batch (a re-run picks up the rest).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from apten_assets.lib.client import (
    AptenAuthError,
    AptenClient,
    AptenError,
    AptenHTTPError,
    AptenUnusableBody,
    CallFetch,
)
from apten_assets.lib.erasure import ErasedLeads, lead_id_of
from apten_assets.lib.models import (
    Call,
    Event,
    Lead,
    MalformedRecord,
    parse_timestamp,
    repair_text,
)
from apten_assets.lib.pii import PiiPolicy
from apten_assets.lib.tables import (
    CALL_EVENTS,
    CALL_SUMMARIES,
    LEADS,
    call_event_row,
    call_rows,
    lead_row,
    not_found_call_row,
    rejected_row,
)
from apten_assets.warehouse import CallEventFacts, ReplaceCounts, Store, UpsertCounts

# A short write session on the warehouse (`AptenWarehouse.get_store` in Dagster).
OpenWarehouse = Callable[[], AbstractContextManager[Store]]
T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LEADS_CURSOR = "leads.updated_since"
# Apten's cursors are inclusive and writes may land late; re-reading a few minutes is cheap
# because every write is an upsert.
CURSOR_OVERLAP = timedelta(minutes=5)
# A watermark never moves past the run's own clock plus this much (clocks disagree by seconds, not
# minutes): a record dated later (a lead "updated" in 2099) is stored, but taking its time as the
# watermark would make every later fetch skip every real change.
WATERMARK_SKEW = timedelta(minutes=5)
# Answers that mean "this item is and stays unusable": retrying gets the same. The item is
# quarantined and the step goes on; every other failure (5xx, timeouts, dropped connections after
# their retries) fails the step with IncompleteFetch, so a partition is never done with holes.
PERSISTENT_STATUSES = frozenset({400, 404, 410, 422})
# What a write raises for rows the warehouse cannot take (the store turns its engine's value
# errors into ValueError); anything else (a lock, I/O) is not one record's fault and propagates.
UNSTORABLE = (ValueError, OverflowError, RecursionError)
SOURCE_LEADS = "leads"
SOURCE_CALL_EVENTS = "call_events"
SOURCE_CALLS = "calls"
MAX_SKIPS_IN_METADATA = 20
PROGRESS_EVERY_SECONDS = 10.0
# Calls fetched before each write. A batch with fewer `calls` rows than DuckDB's row group
# (warehouse.ROW_GROUP_SIZE, 2,048) goes through the WAL at commit and is written again by the
# checkpoint when the connection closes; from one full row group on, DuckDB writes the batch's
# rows into the file as it inserts them and the commit is nearly free. 4,000 leaves room for
# calls skipped as malformed, and took the write time of 40,000 calls from 10.5 s to 7.9 s; the
# memory a batch holds (its parsed bodies and their rows) grows with it (~+80 MiB over 2,000).
CALL_BATCH_SIZE = 4000
# Calls fetched ahead while a batch is written. Without read-ahead the fan-out stopped two rounds
# after the write began, so every batch write was time the API sat idle (at 50 ms latency the
# calls step of 10,000 calls took 73 s against a 62.5 s bound). Half a batch bounds the extra
# memory (~40 KiB per parsed call, ~80 MiB) and covers a batch write at the fetch rates measured.
READ_AHEAD_CALLS = CALL_BATCH_SIZE // 2


class IncompleteFetch(AptenError):
    """Some records could not be fetched even after retries (or Apten broke the protocol for them).

    Raised at the end of a step, after everything else was written, so the partition is not marked
    materialized with records missing: a re-run fetches exactly what is still missing.
    """


def _incomplete(step: str, what: str, failures: list[tuple[str, str]], total: int) -> IncompleteFetch:
    shown = failures[:MAX_SKIPS_IN_METADATA]
    ids = ", ".join(repr(record_id) for record_id, _ in shown)
    more = f" and {len(failures) - len(shown)} more" if len(failures) > len(shown) else ""
    return IncompleteFetch(
        f"{step}: {len(failures)} of {total} {what} could not be fetched ({ids}{more}); everything else "
        f"was stored. Failing so that a re-run fetches them. First error: {failures[0][1]}"
    )


@dataclass
class SkippedRecord:
    record_id: str | None
    reason: str


def is_persistent(exc: AptenError) -> bool:
    """The item is gone or refused for good (`PERSISTENT_STATUSES`), or its body is over a limit
    (too large, nested too deep: the same every time): quarantine it, do not fail."""
    if isinstance(exc, AptenUnusableBody):
        return True
    return isinstance(exc, AptenHTTPError) and exc.status in PERSISTENT_STATUSES


def describe_error(exc: BaseException, redact: Callable[[str], str] = str) -> str:
    """`reason` text of a rejected record: the error class and message, the key redacted."""
    return redact(f"{type(exc).__name__}: {exc}")


@dataclass
class StepReport:
    """What one step fetched, wrote, skipped and quarantined; the assets turn it into metadata.

    A quarantined record is also a skip (counted and logged with its id); its `rejected_records`
    row waits in `to_quarantine` until the step's next write (`write_quarantine`).
    """

    counts: Counter[str] = field(default_factory=Counter)
    skipped: list[SkippedRecord] = field(default_factory=list)
    skip_reasons: Counter[str] = field(default_factory=Counter)
    quarantined_ids: list[str | None] = field(default_factory=list)
    to_quarantine: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, record_id: str | None, reason: str, log: logging.Logger | Any) -> None:
        self.skipped.append(SkippedRecord(record_id, reason))
        self.skip_reasons[reason.split(":")[0]] += 1
        self.counts["skipped"] += 1
        log.warning(f"skipped record {record_id!r}: {reason}")

    def reject(
        self,
        source: str,
        record_id: str | None,
        reason: str,
        payload: Any,
        log: logging.Logger | Any,
        *,
        now: datetime | None = None,
    ) -> None:
        """Skip the record and queue it for `apten.rejected_records` under `source`."""
        self.skip(record_id, reason, log)
        self.counts["quarantined"] += 1
        self.quarantined_ids.append(record_id)
        self.to_quarantine.append(rejected_row(source, record_id, reason, payload, now or datetime.now(UTC)))

    def write_quarantine(self, open_warehouse: OpenWarehouse) -> None:
        """Write the queued rejected records (one upsert; they are always storable)."""
        if self.to_quarantine:
            with open_warehouse() as store:
                store.quarantine(self.to_quarantine)
            self.to_quarantine = []

    def add_upsert(self, prefix: str, counts: UpsertCounts) -> None:
        self.counts[f"{prefix}inserted"] += counts.inserted
        self.counts[f"{prefix}updated"] += counts.updated
        self.counts[f"{prefix}unchanged"] += counts.unchanged
        self.counts[f"{prefix}duplicates_dropped"] += counts.duplicates

    def add_replace(self, prefix: str, counts: ReplaceCounts) -> None:
        self.counts[f"{prefix}calls_replaced"] += counts.parents_replaced
        self.counts[f"{prefix}calls_unchanged"] += counts.parents_unchanged
        self.counts[f"{prefix}rows_deleted"] += counts.deleted
        self.counts[f"{prefix}rows_inserted"] += counts.inserted

    def skip_erased(self) -> None:
        """A record of an erased lead, dropped (`apten_erase_leads`); counted, never logged by id."""
        self.counts["skipped_erased"] += 1

    def skipped_preview(self) -> list[dict[str, str | None]]:
        return [{"id": s.record_id, "reason": s.reason} for s in self.skipped[:MAX_SKIPS_IN_METADATA]]


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def write_isolating(
    items: list[T], write: Callable[[list[T]], None], reject: Callable[[T, BaseException], None]
) -> None:
    """`write(items)`; when the warehouse refuses it (`UNSTORABLE`), split it in halves and write
    each, down to the single items it refuses, which go to `reject`. Each `write` must be one
    transaction, so a refused part leaves nothing behind. One bad record among n costs about
    2 log2(n) extra writes; honest batches cost nothing extra."""
    if not items:
        return
    try:
        write(items)
        return
    except UNSTORABLE as exc:
        if len(items) == 1:
            reject(items[0], exc)
            return
    middle = len(items) // 2
    write_isolating(items[:middle], write, reject)
    write_isolating(items[middle:], write, reject)


def decoded(raw: Any, report: StepReport, record: str, log: logging.Logger | Any) -> Any:
    """`raw` with lone UTF-16 surrogates, U+0000 and non-finite numbers replaced
    (models.repair_text), counted as field warnings."""
    raw, repaired = repair_text(raw)
    if repaired:
        report.counts["field_warnings"] += repaired
        report.counts["text_repaired"] += repaired
        log.warning(
            f"{record}: {repaired} value(s) no warehouse stores (a lone surrogate or U+0000 in text, "
            "stored with U+FFFD; a NaN or an infinite number, stored as null)"
        )
    return raw


def _record_id(raw: Any, key: str = "id") -> str | None:
    value = raw.get(key) if isinstance(raw, dict) else None
    return repair_text(value)[0] if isinstance(value, str) else None


# --------------------------------------------------------------------------- leads


def sync_leads(
    client: AptenClient,
    open_warehouse: OpenWarehouse,
    log: logging.Logger | Any,
    *,
    pii: PiiPolicy,
    batch_size: int = 5000,
    now: datetime | None = None,
) -> StepReport:
    """Incremental `GET /leads?updatedSince=` from the stored watermark (all leads the first time).

    The watermark is written in the same transaction as each batch of leads, so a run that dies
    resumes from its last committed batch; soft-deleted leads are kept with `is_deleted = true`.
    It never passes `now` (the run's clock) plus `WATERMARK_SKEW`: a lead dated later is stored
    but does not move it, and a stored watermark past that bound (written before the bound
    existed) is dropped, so the leads are read from the start once. Each lead goes through `pii`
    before it becomes a row; erased leads are dropped before that; a lead that cannot be read or
    stored is quarantined.
    """
    report = StepReport()
    ceiling = (now or datetime.now(UTC)) + WATERMARK_SKEW
    with open_warehouse() as store:
        stored = store.get_sync_state(LEADS_CURSOR)
        erased = ErasedLeads.load(store, pii.salt)
    watermark = parse_timestamp(stored)[0] if stored else None
    if watermark is not None and watermark > ceiling:
        log.warning(
            f"leads: the stored watermark {watermark.isoformat()} is in the future; reading every lead again"
        )
        report.counts["future_watermark_reset"] += 1
        watermark = None
    since = watermark - CURSOR_OVERLAP if watermark is not None else EPOCH
    log.info(f"leads: fetching leads updated since {since.isoformat()}")

    def reject(source_raw: Any, lead_id: str | None, exc: BaseException) -> None:
        report.reject(SOURCE_LEADS, lead_id, describe_error(exc, client.redact), source_raw, log)

    def flush(rows: list[dict[str, Any]], batch_watermark: datetime | None) -> None:
        def write(part: list[dict[str, Any]], cursor: bool = False) -> None:
            with open_warehouse() as store, store.transaction():
                report.add_upsert("", store.upsert(LEADS, part))
                store.resolve_quarantined(SOURCE_LEADS, [row["lead_id"] for row in part])
                if cursor and batch_watermark is not None:
                    store.set_sync_state(LEADS_CURSOR, batch_watermark.isoformat())

        try:
            # One transaction with the watermark: the common case.
            write(rows, cursor=True)
        except UNSTORABLE:
            write_isolating(rows, write, lambda row, exc: reject(row["raw"], row["lead_id"], exc))
            if batch_watermark is not None:
                with open_warehouse() as store:
                    store.set_sync_state(LEADS_CURSOR, batch_watermark.isoformat())
        report.write_quarantine(open_warehouse)
        log.info(f"leads: {report.counts['fetched']:,} fetched, {report.counts['inserted']:,} new so far")

    rows: list[dict[str, Any]] = []
    for raw in client.iter_leads(updated_since=since):
        report.counts["fetched"] += 1
        if lead_id_of(raw, "id") in erased:
            report.skip_erased()
            continue
        try:
            raw = pii.record(decoded(raw, report, f"lead {_record_id(raw)!r}", log))
            lead = Lead.from_json(raw)
        except MalformedRecord as exc:
            report.reject(SOURCE_LEADS, exc.record_id, f"malformed lead: {exc.reason}", raw, log)
            continue
        except UNSTORABLE as exc:
            reject(raw, _record_id(raw), exc)
            continue
        for warning in lead.warnings:
            report.counts["field_warnings"] += 1
            log.debug(f"lead {lead.id}: {warning}")
        rows.append(lead_row(lead))
        report.counts["deleted_leads"] += lead.is_deleted
        if lead.updated_at is not None and lead.updated_at > ceiling:
            report.counts["future_dated"] += 1
            log.warning(
                f"lead {lead.id}: updatedAt {lead.updated_at.isoformat()} is in the future; stored, "
                "but the watermark does not move to it"
            )
        elif lead.updated_at is not None and (watermark is None or lead.updated_at > watermark):
            watermark = lead.updated_at
        if len(rows) >= batch_size:
            flush(rows, watermark)
            rows = []
    flush(rows, watermark)
    return report


# --------------------------------------------------------------------------- call events


def sync_call_events(
    client: AptenClient,
    open_warehouse: OpenWarehouse,
    start: datetime,
    end: datetime,
    log: logging.Logger | Any,
    *,
    pii: PiiPolicy,
    batch_size: int = 20000,
) -> StepReport:
    """CALL events with `timestamp` in [start, end), following Apten's recipe.

    For every lead active since `start`: `GET /leads/{id}/events?since=start&types=CALL`,
    concurrently within the client's rate limit. Only events whose `type` is CALL are stored;
    anything else the API returns is counted by type, never mistaken for a call.
    """
    report = StepReport()
    with open_warehouse() as store:
        lead_ids = store.leads_active_since(start)
        erased = ErasedLeads.load(store, pii.salt)
    report.counts["leads_scanned"] = len(lead_ids)
    log.info(f"call_events: scanning {len(lead_ids):,} leads active since {start.isoformat()}")

    def fetch(lead_id: str) -> tuple[str, list[dict[str, Any]], AptenError | None]:
        try:
            return lead_id, list(client.iter_lead_events(lead_id, since=start, types=["CALL"])), None
        except AptenAuthError:
            raise
        except AptenError as exc:
            return lead_id, [], exc

    rows: list[dict[str, Any]] = []
    payloads: dict[str, Any] = {}
    leads_read: list[str] = []
    ignored_types: Counter[str] = Counter()

    def reject(row: dict[str, Any], exc: BaseException) -> None:
        call_id = row["call_id"]
        report.reject(
            SOURCE_CALL_EVENTS, call_id, describe_error(exc, client.redact), payloads.get(call_id), log
        )

    def write(part: list[dict[str, Any]]) -> None:
        with open_warehouse() as store, store.transaction():
            report.add_upsert("", store.upsert(CALL_EVENTS, part))
            store.resolve_quarantined(SOURCE_CALL_EVENTS, [row["call_id"] for row in part])

    def flush() -> None:
        write_isolating(rows, write, reject)
        if leads_read:
            with open_warehouse() as store:
                # A lead whose events were read fine is no longer gone.
                store.resolve_quarantined(SOURCE_CALL_EVENTS, leads_read)
        report.write_quarantine(open_warehouse)
        rows.clear()
        payloads.clear()
        leads_read.clear()

    unfetched: list[tuple[str, str]] = []
    for done, (lead_id, events, error) in enumerate(client.map_concurrent(fetch, lead_ids), start=1):
        if error is not None and lead_id in erased:
            report.skip_erased()
        elif error is not None and is_persistent(error):
            # The lead is gone (404) or its events are refused for good: nothing to wait for.
            report.counts["leads_gone"] += 1
            report.reject(
                SOURCE_CALL_EVENTS, lead_id, f"lead events refused: {describe_error(error)}", None, log
            )
        elif error is not None:
            report.skip(lead_id, f"lead events not fetched: {error}", log)
            unfetched.append((lead_id, str(error)))
        else:
            leads_read.append(lead_id)
        for raw in events:
            report.counts["fetched"] += 1
            if lead_id in erased or lead_id_of(raw, "roomId") in erased:
                report.skip_erased()
                continue
            try:
                raw = pii.record(decoded(raw, report, f"event {_record_id(raw)!r}", log))
                event = Event.from_json(raw)
            except MalformedRecord as exc:
                report.reject(SOURCE_CALL_EVENTS, exc.record_id, f"malformed event: {exc.reason}", raw, log)
                continue
            except UNSTORABLE as exc:
                report.reject(
                    SOURCE_CALL_EVENTS, _record_id(raw), describe_error(exc, client.redact), raw, log
                )
                continue
            if not event.is_call:
                ignored_types[event.type] += 1
                continue
            if not start <= event.timestamp < end:
                report.counts["outside_partitions"] += 1
                continue
            for warning in event.warnings:
                report.counts["field_warnings"] += 1
                log.debug(f"event {event.id}: {warning}")
            if event.lead_id is None:
                event = _with_lead(event, lead_id)
            rows.append(call_event_row(event))
            payloads[event.id] = raw
        if len(rows) >= batch_size:
            flush()
        if done % 500 == 0:
            log.info(
                f"call_events: {done:,}/{len(lead_ids):,} leads scanned, {report.counts['fetched']:,} events"
            )
    flush()
    for event_type, n in ignored_types.items():
        report.counts[f"ignored_type_{event_type}"] = n
    report.counts["ignored_non_call_events"] = sum(ignored_types.values())
    if unfetched:
        raise _incomplete("call_events", "leads' events", unfetched, len(lead_ids))
    return report


def _with_lead(event: Event, lead_id: str) -> Event:
    return replace(event, lead_id=lead_id)


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class CallTargets:
    """The calls one enrichment run fetches, and what their CALL events say (a 404 keeps it)."""

    call_ids: list[str]
    events: dict[str, CallEventFacts]


def choose_call_targets(
    store: Store,
    start: datetime,
    end: datetime,
    now: datetime,
    *,
    call_ids: Sequence[str] | None = None,
    refresh_all: bool = False,
) -> CallTargets:
    """Which calls to fetch: the named ones; or every call of the window (`refresh_all`); or the
    window's calls that are not final yet (never fetched, pending a summary, in progress, or
    whose event changed since the last fetch), plus webhook-only calls of the window."""
    if call_ids:
        chosen = list(dict.fromkeys(call_ids))
    elif refresh_all:
        chosen = store.calls_in_window(start, end)
    else:
        chosen = list(
            dict.fromkeys(
                store.calls_needing_fetch(start, end, now) + store.webhook_calls_needing_fetch(start, end)
            )
        )
    events: dict[str, CallEventFacts] = {}
    for batch in chunks(chosen, 10000):
        events.update(store.call_event_facts(batch))
    return CallTargets(chosen, events)


def summary_status_for(call: Call, now: datetime, give_up_after: timedelta) -> str:
    """`ready` with a summary; `missing` once the call ended longer than the give-up window ago
    without one; `pending` otherwise."""
    if call.summary is not None:
        return "ready"
    ended = call.ended_at or call.created_at
    if ended is not None and now - ended > give_up_after:
        return "missing"
    return "pending"


def enrich_calls(
    client: AptenClient,
    open_warehouse: OpenWarehouse,
    start: datetime,
    end: datetime,
    log: logging.Logger | Any,
    *,
    give_up_after: timedelta,
    pii: PiiPolicy,
    call_ids: Sequence[str] | None = None,
    refresh_all: bool = False,
    batch_size: int = CALL_BATCH_SIZE,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, StepReport]:
    """`GET /calls/{id}` for the chosen calls; writes `calls`, `call_summaries` and
    `call_transcript_turns` for each batch in one transaction.

    A call's turns are replaced as a whole; an empty transcript ("not stored yet") never wipes
    turns already stored. Each body goes through `pii` before it becomes rows (turns included:
    the warehouse derives them from the transformed `raw`). A 404 keeps the row as `not_found`,
    with what its CALL event says (start, direction, status, duration) where nothing better is
    stored. Returns one report per table, keyed by table name.
    """
    reports = {name: StepReport() for name in ("calls", "call_summaries", "call_transcript_turns")}
    calls_report = reports["calls"]
    with open_warehouse() as store:
        targets = choose_call_targets(store, start, end, now(), call_ids=call_ids, refresh_all=refresh_all)
        erased = ErasedLeads.load(store, pii.salt)
    total = len(targets.call_ids)
    calls_report.counts["targeted"] = total
    log.info(f"calls: fetching {total:,} calls from {start.date()} to {end.date()} (exclusive)")

    def progress() -> None:
        counts = calls_report.counts
        log.info(
            f"calls: {counts['fetched']:,}/{total:,} fetched ({counts['summary_ready']:,} with summary, "
            f"{counts['summary_pending']:,} pending, {counts['not_found']:,} not found)"
        )

    # The fan-out keeps fetching while a full batch is written (up to READ_AHEAD_CALLS answers
    # wait meanwhile); the batch's fetch time is when its last answer came in.
    def fetch_one(call_id: str) -> tuple[CallFetch, AptenError | None]:
        try:
            return client.get_call(call_id), None
        except AptenAuthError:
            raise
        except AptenError as exc:
            return CallFetch(call_id=call_id, found=False, body=None), exc

    def write(fetches: list[CallFetch]) -> None:
        _write_call_batch(
            open_warehouse, fetches, now(), targets, erased, give_up_after, pii, reports, log, client
        )

    fetches: list[CallFetch] = []
    unfetched: list[tuple[str, str]] = []
    last_progress = time.monotonic()
    for fetch, error in client.map_concurrent(fetch_one, targets.call_ids, read_ahead=READ_AHEAD_CALLS):
        if error is not None and is_persistent(error):
            calls_report.counts["refused"] += 1
            calls_report.reject(
                SOURCE_CALLS, fetch.call_id, f"call refused: {describe_error(error)}", None, log
            )
            continue
        if error is not None:
            # One call Apten keeps failing on must not cost the rest of the batch.
            calls_report.skip(fetch.call_id, f"call not fetched: {error}", log)
            unfetched.append((fetch.call_id, str(error)))
            continue
        fetches.append(fetch)
        if len(fetches) >= batch_size:
            write(fetches)
            fetches = []
        if time.monotonic() - last_progress >= PROGRESS_EVERY_SECONDS:
            progress()
            last_progress = time.monotonic()
    write(fetches)
    progress()
    if unfetched:
        raise _incomplete("calls", "calls", unfetched, total)
    return reports


def _write_call_batch(
    open_warehouse: OpenWarehouse,
    fetches: list[CallFetch],
    fetched_at: datetime,
    targets: CallTargets,
    erased: ErasedLeads,
    give_up_after: timedelta,
    pii: PiiPolicy,
    reports: dict[str, StepReport],
    log: logging.Logger | Any,
    client: AptenClient,
) -> None:
    """Rows of a batch of fetches, written in one transaction; a call the warehouse refuses is
    found by halving the batch (`write_isolating`) and quarantined, the others are written."""
    calls_report = reports["calls"]
    # (call row, summary row or None, payload) per call.
    items: list[tuple[dict[str, Any], dict[str, Any] | None, Any]] = []
    for fetch in fetches:
        calls_report.counts["fetched"] += 1
        event = targets.events.get(fetch.call_id, CallEventFacts())
        if event.lead_id in erased or lead_id_of(fetch.body, "leadId") in erased:
            calls_report.skip_erased()
            continue
        if not fetch.found:
            calls_report.counts["not_found"] += 1
            row = not_found_call_row(
                fetch.call_id,
                fetched_at,
                lead_id=event.lead_id,
                created_at=event.occurred_at,
                direction=event.direction,
                call_status=event.call_status,
                duration_seconds=event.duration_seconds,
            )
            items.append((row, None, None))
            continue
        body: Any = fetch.body
        try:
            if not fetch.honest:  # the client saw nothing to repair in the body's bytes
                body = decoded(body, calls_report, f"call {fetch.call_id!r}", log)
            body = pii.call_body(body)
            call = Call.from_json(body)
        except MalformedRecord as exc:
            calls_report.reject(SOURCE_CALLS, fetch.call_id, f"malformed call: {exc.reason}", body, log)
            continue
        except UNSTORABLE as exc:
            calls_report.reject(SOURCE_CALLS, fetch.call_id, describe_error(exc, client.redact), body, log)
            continue
        if call.id != fetch.call_id:
            calls_report.reject(
                SOURCE_CALLS, fetch.call_id, f"malformed call: body has id {call.id!r}", body, log
            )
            continue
        for warning in call.warnings:
            calls_report.counts["field_warnings"] += 1
            log.debug(f"call {call.id}: {warning}")
        status = summary_status_for(call, fetched_at, give_up_after)
        rows = call_rows(call, fetched_at, summary_status=status)
        items.append((rows.call, rows.summary, body))

    def write(part: list[tuple[dict[str, Any], dict[str, Any] | None, Any]]) -> None:
        with open_warehouse() as store, store.transaction():
            calls, turns = store.upsert_calls([call for call, _, _ in part], now=fetched_at)
            summaries = store.upsert(
                CALL_SUMMARIES, [summary for _, summary, _ in part if summary is not None], now=fetched_at
            )
            store.resolve_quarantined(SOURCE_CALLS, [call["call_id"] for call, _, _ in part], now=fetched_at)
        reports["calls"].add_upsert("", calls)
        reports["call_summaries"].add_upsert("", summaries)
        reports["call_transcript_turns"].add_replace("", turns)
        for call, _, _ in part:
            if call["summary_status"] != "not_found":
                calls_report.counts[f"summary_{call['summary_status']}"] += 1

    def reject(item: tuple[dict[str, Any], dict[str, Any] | None, Any], exc: BaseException) -> None:
        call, _, body = item
        calls_report.reject(SOURCE_CALLS, call["call_id"], describe_error(exc, client.redact), body, log)

    write_isolating(items, write, reject)
    calls_report.write_quarantine(open_warehouse)
