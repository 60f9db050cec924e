"""Transfers as data: one `apten.call_transfers` row per transfer attempt of a call.

An attempt is assembled from the transfer webhooks of its call and from the call record:

* attempts are numbered by the order of `call.transferred` / `webchat.call.transferred`, by
  event timestamp (deliveries arrive out of order, and the inbox has already dropped
  duplicates);
* `call.transfer.connected`, `agentMissedTransfer` and `transferFallbackTriggered` attach to
  the latest attempt started at or before them, or to attempt 1 when none started earlier
  (an outcome whose start was never delivered still makes attempt 1);
* a call with `isTransfer` true and no transfer webhooks has one attempt, `source = 'api'`, built
  from the call record's transferNumber / fallbackTransferNumber / transfer status;
* the call record fills what the webhooks of the latest attempt left open (Apten guarantees
  no delivery, so the record is the backstop).

Rows are derived from everything stored for a call and replace that call's rows as a whole, so
recomputing is idempotent whatever order the deliveries came in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from apten_assets.lib.sync import chunks
from apten_assets.lib.tables import CALL_TRANSFERS, TRANSFER_OUTCOMES
from apten_assets.lib.webhook_events import (
    TRANSFER_CONNECTED_EVENT,
    TRANSFER_EVENTS,
    TRANSFER_FALLBACK_EVENT,
    TRANSFER_MISSED_EVENT,
    TRANSFER_STARTED_EVENTS,
)
from apten_assets.warehouse import CallTransferRecord, ReplaceCounts, Store, TransferDelivery

OUTCOMES = TRANSFER_OUTCOMES
# At equal timestamps (webhooks have whole seconds) a start comes before its outcome, and a
# fallback dispatch before the miss Apten calls terminal.
_EVENT_RANK = {
    **dict.fromkeys(TRANSFER_STARTED_EVENTS, 0),
    TRANSFER_FALLBACK_EVENT: 1,
    TRANSFER_MISSED_EVENT: 2,
    TRANSFER_CONNECTED_EVENT: 3,
}


def _delivery_order(delivery: TransferDelivery) -> tuple:
    when = delivery.event_timestamp or delivery.received_at
    return (
        when is None,
        when,
        _EVENT_RANK.get(delivery.event, 9),
        delivery.received_at,
        delivery.delivery_key,
    )


@dataclass
class _Attempt:
    started_at: datetime | None = None
    transfer_type: str | None = None
    target_number: str | None = None
    fallback_number: str | None = None
    fallback_attempted: bool | None = None
    connected_at: datetime | None = None
    missed_at: datetime | None = None
    fallback_triggered_at: datetime | None = None
    delivery_keys: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if self.connected_at is not None:
            return "connected"
        if self.fallback_triggered_at is not None:
            return "fallback_triggered"
        if self.missed_at is not None:
            return "missed"
        return "started"


def _text(data: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _first(current: datetime | None, when: datetime | None) -> datetime | None:
    if current is None:
        return when
    return current if when is None else min(current, when)


def _outcome_from_record(record: CallTransferRecord) -> str:
    """The call record's view of how its (latest) transfer ended."""
    status = (record.transfer_status or "").strip().lower()
    if status:
        if "connect" in status or status in ("answered", "completed", "success"):
            return "connected"
        if "fallback" in status:
            return "fallback_triggered"
        if "miss" in status or status in ("no_answer", "failed", "busy"):
            return "missed"
    if record.transfer_connected_seconds is not None:
        return "connected"
    if record.fallback_transfer_number is not None:
        return "fallback_triggered"
    return "started"


def _attach(attempt: _Attempt, delivery: TransferDelivery) -> None:
    data, when = delivery.data, delivery.event_timestamp
    attempt.delivery_keys.append(delivery.delivery_key)
    if delivery.event == TRANSFER_CONNECTED_EVENT:
        attempt.connected_at = _first(attempt.connected_at, when)
        attempt.target_number = attempt.target_number or _text(data, "transferNumber")
    elif delivery.event == TRANSFER_MISSED_EVENT:
        attempt.missed_at = _first(attempt.missed_at, when)
        attempt.target_number = attempt.target_number or _text(data, "transferNumber")
        attempt.fallback_number = attempt.fallback_number or _text(data, "fallbackTransferNumber")
        if isinstance(data.get("fallbackAttempted"), bool):
            attempt.fallback_attempted = bool(attempt.fallback_attempted) or data["fallbackAttempted"]
    elif delivery.event == TRANSFER_FALLBACK_EVENT:
        attempt.fallback_triggered_at = _first(attempt.fallback_triggered_at, when)
        attempt.target_number = attempt.target_number or _text(data, "originalTransferNumber")
        attempt.fallback_number = _text(data, "fallbackTransferNumber") or attempt.fallback_number
        attempt.fallback_attempted = True


def transfer_attempt_rows(
    call_id: str, deliveries: Iterable[TransferDelivery], record: CallTransferRecord | None = None
) -> list[dict[str, Any]]:
    """The `apten.call_transfers` rows of one call (possibly none), attempt 1 first."""
    ordered = sorted((d for d in deliveries if d.event in TRANSFER_EVENTS), key=_delivery_order)
    starts = [d for d in ordered if d.event in TRANSFER_STARTED_EVENTS]
    attempts = [
        _Attempt(
            started_at=d.event_timestamp,
            transfer_type=_text(d.data, "transferType"),
            target_number=_text(d.data, "transferTo", "transferNumber"),
            delivery_keys=[d.delivery_key],
        )
        for d in starts
    ]
    for delivery in ordered:
        if delivery.event in TRANSFER_STARTED_EVENTS:
            continue
        if not attempts:
            attempts.append(_Attempt())
        when = delivery.event_timestamp
        target = attempts[0]
        for attempt in attempts:
            if attempt.started_at is not None and when is not None and attempt.started_at <= when:
                target = attempt
        _attach(target, delivery)
    source = "webhook"
    if not attempts and record is not None and record.is_transfer:
        attempts.append(_Attempt())
        source = "api"
    if not attempts:
        return []
    if record is not None:
        latest = attempts[-1]
        latest.transfer_type = latest.transfer_type or record.transfer_type
        latest.target_number = latest.target_number or record.transfer_number
        latest.fallback_number = latest.fallback_number or record.fallback_transfer_number
    lead_id = record.lead_id if record else None
    session_id = record.session_id if record else None
    for delivery in ordered:
        lead_id = lead_id or _text(delivery.data, "leadId")
        session_id = session_id or _text(delivery.data, "sessionId")
    rows = []
    for number, attempt in enumerate(attempts, start=1):
        outcome = attempt.outcome
        if outcome == "started" and record is not None and number == len(attempts):
            outcome = _outcome_from_record(record)
        rows.append(
            {
                "call_id": call_id,
                "attempt": number,
                "lead_id": lead_id,
                "session_id": session_id,
                "transfer_type": attempt.transfer_type,
                "target_number": attempt.target_number,
                "fallback_number": attempt.fallback_number,
                "fallback_attempted": attempt.fallback_attempted,
                "outcome": outcome,
                "started_at": attempt.started_at,
                "connected_at": attempt.connected_at,
                "missed_at": attempt.missed_at,
                "fallback_triggered_at": attempt.fallback_triggered_at,
                "source": source,
                "delivery_keys": attempt.delivery_keys,
            }
        )
    return rows


# --------------------------------------------------------------------------- warehouse


@dataclass
class TransferRefresh:
    """What one refresh of `apten.call_transfers` did."""

    calls: int = 0
    attempts: int = 0
    counts: ReplaceCounts = field(default_factory=ReplaceCounts)


def refresh_call_transfers(
    store: Store,
    start: datetime,
    end: datetime,
    *,
    call_ids: Sequence[str] = (),
    batch_size: int = 5000,
) -> TransferRefresh:
    """Recompute the transfer attempts of the window's calls (plus `call_ids`) and replace each
    call's rows as a whole; a call whose rows come out the same keeps them untouched."""
    chosen = sorted(set(store.transfer_calls_in_window(start, end, TRANSFER_EVENTS)) | set(call_ids))
    refresh = TransferRefresh(calls=len(chosen))
    for batch in chunks(chosen, batch_size):
        deliveries = store.transfer_deliveries(batch, TRANSFER_EVENTS)
        records = store.call_transfer_records(batch)
        rows = [
            row
            for call_id in batch
            for row in transfer_attempt_rows(call_id, deliveries.get(call_id, ()), records.get(call_id))
        ]
        refresh.attempts += len(rows)
        with store.transaction():
            refresh.counts += store.replace_children(CALL_TRANSFERS, "call_id", batch, rows)
    return refresh
