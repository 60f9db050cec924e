"""The warehouse tables (CONTRACT.md §3) as `TableSpec`s, and the builders that turn models into rows.

A row is a plain dict keyed by column name. JSON columns hold Python values (dicts, lists, ...);
the warehouse serialises them. `_loaded_at` is never set by a builder: the warehouse stamps it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from apten_assets.lib.models import (
    MAX_ID_LENGTH,
    Call,
    Event,
    Lead,
    repair_text,
    transcript_object_count,
)

SCHEMA = "apten"
LOADED_AT = "_loaded_at"
SUMMARY_STATUSES = ("ready", "pending", "missing", "not_found")
TRANSFER_OUTCOMES = ("started", "connected", "missed", "fallback_triggered")
TRANSFER_SOURCES = ("webhook", "api")
# A quarantined payload is stored up to this many UTF-8 bytes; `payload_bytes` keeps the full size.
QUARANTINE_PAYLOAD_BYTES = 64 * 1024


class Merge(Enum):
    """How an upsert combines a new value with the stored one for an existing row."""

    REPLACE = "replace"  # the new value, NULL included
    COALESCE = "coalesce"  # late-arriving: the new value unless it is NULL, then the stored one
    KEEP_FIRST = "keep_first"  # the stored value unless it is NULL (first-seen timestamps)
    ADD = "add"  # stored + new, NULL counting as 0 (counters such as fetch_attempts)


@dataclass(frozen=True)
class Column:
    """One column: DuckDB type, one-line description, and how upserts merge it.

    `bookkeeping` columns are written on every upsert but a change in them alone does not count
    as an update and does not move `_loaded_at`. `pii` columns may carry personal data (what they
    hold depends on APTEN_TRANSCRIPT_MODE / APTEN_LEAD_PII); the column schema tags them `pii`.
    """

    name: str
    type: str
    description: str
    merge: Merge = Merge.REPLACE
    bookkeeping: bool = False
    allowed_values: tuple[str, ...] | None = None
    pii: bool = False


@dataclass(frozen=True)
class TableSpec:
    """One contract table: `apten.<name>`, its primary key and ordered columns (`_loaded_at` last)."""

    name: str
    description: str
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...]
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        names = self.column_names
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate column names")
        if names[-1] != LOADED_AT:
            raise ValueError(f"{self.name}: {LOADED_AT} must be the last column")
        missing = set(self.primary_key) - set(names)
        if missing:
            raise ValueError(f"{self.name}: primary key columns {sorted(missing)} are not columns")

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def data_columns(self) -> tuple[Column, ...]:
        """Every column a row may carry: all but `_loaded_at`."""
        return tuple(column for column in self.columns if column.name != LOADED_AT)

    @property
    def bookkeeping(self) -> frozenset[str]:
        return frozenset(column.name for column in self.columns if column.bookkeeping)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.qualified_name} has no column {name!r}")


_LOADED_AT_COLUMN = Column(
    LOADED_AT, "TIMESTAMPTZ", "When this row was last written with changed content (UTC)."
)
_LATE = Merge.COALESCE


LEADS = TableSpec(
    name="leads",
    description="One row per Apten lead (room), soft-deleted leads included, from GET /leads.",
    primary_key=("lead_id",),
    columns=(
        Column("lead_id", "VARCHAR", "Apten lead id (also called the room id); opaque string."),
        Column(
            "first_name", "VARCHAR", "Lead first name (firstName); NULL unless APTEN_LEAD_PII=full.", pii=True
        ),
        Column(
            "last_name", "VARCHAR", "Lead last name (lastName); NULL unless APTEN_LEAD_PII=full.", pii=True
        ),
        Column(
            "phone", "VARCHAR", "Phone number, E.164 (HMAC-SHA256 hex when APTEN_LEAD_PII=hashed).", pii=True
        ),
        Column(
            "email",
            "VARCHAR",
            "Email address, when Apten has one (HMAC-SHA256 hex when APTEN_LEAD_PII=hashed).",
            _LATE,
            pii=True,
        ),
        Column("customer_profile", "VARCHAR", "Name of the Apten customer profile (customerProfile)."),
        Column("external_lead_id", "VARCHAR", "CRM id of the lead (externalLeadId), when linked.", _LATE),
        Column("created_at", "TIMESTAMPTZ", "When the lead was created (createdAt, UTC)."),
        Column("updated_at", "TIMESTAMPTZ", "When the lead last changed (updatedAt, UTC); the sync cursor."),
        Column(
            "last_activity_at", "TIMESTAMPTZ", "Last interaction with the lead (lastActivityAt, UTC).", _LATE
        ),
        Column("has_replied", "BOOLEAN", "The lead has replied (hasReplied)."),
        Column("is_hot", "BOOLEAN", "Apten marked the lead hot (isHot)."),
        Column("is_qualified", "BOOLEAN", "Apten marked the lead qualified (isQualified)."),
        Column("is_unsubscribed", "BOOLEAN", "The lead unsubscribed (isUnsubscribed)."),
        Column("is_ai_on", "BOOLEAN", "The AI assistant is on for this lead (isAiOn)."),
        Column("tags", "JSON", "Tags as sent: array of {id, name, condition}."),
        Column(
            "additional_info",
            "JSON",
            "Context variables Apten stores for the lead (additionalInfo).",
            pii=True,
        ),
        Column("summary", "VARCHAR", "AI summary of the conversation with the lead.", _LATE, pii=True),
        Column("is_deleted", "BOOLEAN", "Soft-deleted in Apten (deleted); the row is kept."),
        Column("deleted_at", "TIMESTAMPTZ", "When the lead was soft-deleted (deletedAt, UTC)."),
        Column("raw", "JSON", "The lead object as Apten sent it, after the PII modes.", pii=True),
        _LOADED_AT_COLUMN,
    ),
)

CALL_EVENTS = TableSpec(
    name="call_events",
    description="One row per CALL event from GET /leads/{leadId}/events; the event id is the call id.",
    primary_key=("call_id",),
    columns=(
        Column("call_id", "VARCHAR", "Event id of the CALL event, which is the call id."),
        Column("lead_id", "VARCHAR", "Lead (room) the event belongs to (roomId)."),
        Column("org_id", "VARCHAR", "Apten organisation id (orgId)."),
        Column("occurred_at", "TIMESTAMPTZ", "When the call happened (event timestamp, UTC); partition key."),
        Column("updated_at", "TIMESTAMPTZ", "When Apten last changed the event (updatedAt, UTC)."),
        Column("direction", "VARCHAR", "INBOUND or OUTBOUND (data.direction; name unconfirmed).", _LATE),
        Column("duration_seconds", "DOUBLE", "Call length in seconds (data.durationSeconds).", _LATE),
        Column("call_status", "VARCHAR", "Call status, e.g. COMPLETE (data.callStatus; open string).", _LATE),
        Column(
            "is_transfer", "BOOLEAN", "Transferred to a human (data.isTransfer; name unconfirmed).", _LATE
        ),
        Column("data", "JSON", "The event's data object exactly as sent."),
        _LOADED_AT_COLUMN,
    ),
)

CALLS = TableSpec(
    name="calls",
    description="One row per call, enriched from GET /calls/{callId}, with fetch bookkeeping.",
    primary_key=("call_id",),
    columns=(
        Column("call_id", "VARCHAR", "Apten call id."),
        Column("lead_id", "VARCHAR", "Lead (room) of the call; NULL for webchat calls.", _LATE),
        Column("session_id", "VARCHAR", "Webchat session id, for webchat voice calls.", _LATE),
        Column("direction", "VARCHAR", "INBOUND or OUTBOUND.", _LATE),
        Column(
            "call_status", "VARCHAR", "Current or final status, e.g. COMPLETE, NO_ANSWER, IN_PROGRESS.", _LATE
        ),
        Column("duration_seconds", "DOUBLE", "Call length in seconds (durationSeconds).", _LATE),
        Column("created_at", "TIMESTAMPTZ", "When the call started (createdAt, UTC).", _LATE),
        Column("updated_at", "TIMESTAMPTZ", "When Apten last changed the call (updatedAt, UTC).", _LATE),
        Column("ended_by", "VARCHAR", "Who ended the call, e.g. LEAD (endedBy; open string).", _LATE),
        Column("is_transfer", "BOOLEAN", "Transferred to a human agent (isTransfer).", _LATE),
        Column("is_mid_call_transfer", "BOOLEAN", "A transfer happened mid-call (name unconfirmed).", _LATE),
        Column("is_voicemail", "BOOLEAN", "The call left a voicemail (name unconfirmed).", _LATE),
        Column(
            "transfer_number",
            "VARCHAR",
            "E.164 number transferred to (transferNumber/transferTo).",
            _LATE,
            pii=True,
        ),
        Column(
            "fallback_transfer_number",
            "VARCHAR",
            "Fallback number when the transfer failed.",
            _LATE,
            pii=True,
        ),
        Column("transfer_status", "VARCHAR", "Outcome of the latest transfer attempt, if any.", _LATE),
        Column("answered_by", "VARCHAR", "Answered-by / machine detection value (name unconfirmed).", _LATE),
        Column("transfer_connected_seconds", "DOUBLE", "Seconds connected to the transfer recipient.", _LATE),
        Column("lead_never_spoke", "BOOLEAN", "The lead never spoke on an AI-initiated call.", _LATE),
        Column("turn_count", "INTEGER", "Number of transcript turns stored for the call.", _LATE),
        Column(
            "summary_status",
            "VARCHAR",
            "ready | pending | missing (gave up waiting) | not_found (GET /calls answered 404).",
            allowed_values=SUMMARY_STATUSES,
        ),
        Column(
            "first_fetched_at",
            "TIMESTAMPTZ",
            "First GET /calls/{id} of this call (UTC).",
            Merge.KEEP_FIRST,
            True,
        ),
        Column("last_fetched_at", "TIMESTAMPTZ", "Latest GET /calls/{id} of this call (UTC).", _LATE, True),
        Column("fetch_attempts", "INTEGER", "How many times the call was fetched.", Merge.ADD, True),
        Column(
            "raw",
            "JSON",
            "The call body as Apten sent it, after the PII modes (NULL if never found).",
            _LATE,
            pii=True,
        ),
        _LOADED_AT_COLUMN,
    ),
)

CALL_SUMMARIES = TableSpec(
    name="call_summaries",
    description="One row per call that has an AI summary.",
    primary_key=("call_id",),
    columns=(
        Column("call_id", "VARCHAR", "Apten call id."),
        Column("lead_id", "VARCHAR", "Lead (room) of the call; NULL for webchat calls.", _LATE),
        Column(
            "summary",
            "VARCHAR",
            "AI summary of the call (redacted, or [REMOVED], per APTEN_TRANSCRIPT_MODE).",
            _LATE,
            pii=True,
        ),
        Column(
            "summary_first_seen_at", "TIMESTAMPTZ", "When the summary was first seen (UTC).", Merge.KEEP_FIRST
        ),
        Column(
            "summary_latency_seconds",
            "DOUBLE",
            "Seconds from the end of the call to the summary first being seen.",
            Merge.KEEP_FIRST,
        ),
        _LOADED_AT_COLUMN,
    ),
)

CALL_TRANSCRIPT_TURNS = TableSpec(
    name="call_transcript_turns",
    description="One row per transcript turn of a call; a call's turns are replaced as a whole.",
    primary_key=("call_id", "turn_index"),
    columns=(
        Column("call_id", "VARCHAR", "Apten call id."),
        Column("turn_index", "INTEGER", "0-based position of the turn in the API's transcript array."),
        Column("role", "VARCHAR", "Speaker as sent, e.g. assistant or user (open string)."),
        Column(
            "content",
            "VARCHAR",
            "What was said (redacted per APTEN_TRANSCRIPT_MODE); NULL without content or when it is off.",
            pii=True,
        ),
        Column("start_time", "TIMESTAMPTZ", "When the turn started (startTime, UTC)."),
        Column("end_time", "TIMESTAMPTZ", "When the turn ended (endTime, UTC)."),
        _LOADED_AT_COLUMN,
    ),
)

WEBHOOK_DELIVERIES = TableSpec(
    name="webhook_deliveries",
    description="One row per distinct webhook delivery received from Apten.",
    primary_key=("delivery_key",),
    columns=(
        Column("delivery_key", "VARCHAR", "Dedupe key of the delivery (the envelope has no event id)."),
        Column("event", "VARCHAR", "Webhook event name as sent, e.g. call.completed (open string)."),
        Column("event_timestamp", "TIMESTAMPTZ", "The envelope timestamp (UTC)."),
        Column(
            "received_at",
            "TIMESTAMPTZ",
            "When the receiver first accepted the delivery (UTC).",
            Merge.KEEP_FIRST,
        ),
        Column("call_id", "VARCHAR", "data.callId, for call events."),
        Column("lead_id", "VARCHAR", "data.leadId, for lead-webhook events."),
        Column("session_id", "VARCHAR", "data.sessionId, for webchat events."),
        Column("raw", "JSON", "The delivery body as received, after the PII modes.", pii=True),
        _LOADED_AT_COLUMN,
    ),
)

CALL_TRANSFERS = TableSpec(
    name="call_transfers",
    description=(
        "One row per transfer attempt of a call, derived from its transfer webhooks and the call "
        "record; a call's rows are recomputed and replaced as a whole."
    ),
    primary_key=("call_id", "attempt"),
    columns=(
        Column("call_id", "VARCHAR", "Apten call id."),
        Column(
            "attempt",
            "INTEGER",
            "1-based number of the attempt: order of call.transferred / webchat.call.transferred.",
        ),
        Column("lead_id", "VARCHAR", "Lead (room) of the call; NULL for webchat calls."),
        Column("session_id", "VARCHAR", "Webchat session id, for webchat calls."),
        Column("transfer_type", "VARCHAR", "WARM or COLD (transferType; open string)."),
        Column("target_number", "VARCHAR", "Number transferred to (transferTo / transferNumber).", pii=True),
        Column("fallback_number", "VARCHAR", "Fallback number after a missed warm transfer.", pii=True),
        Column("fallback_attempted", "BOOLEAN", "A fallback was attempted (fallbackAttempted)."),
        Column(
            "outcome",
            "VARCHAR",
            "connected | missed | fallback_triggered (missed, fallback sent) | started (no outcome known).",
            allowed_values=TRANSFER_OUTCOMES,
        ),
        Column("started_at", "TIMESTAMPTZ", "Transfer start: call.transferred timestamp (UTC)."),
        Column("connected_at", "TIMESTAMPTZ", "call.transfer.connected timestamp (UTC)."),
        Column("missed_at", "TIMESTAMPTZ", "agentMissedTransfer timestamp (UTC)."),
        Column("fallback_triggered_at", "TIMESTAMPTZ", "transferFallbackTriggered timestamp (UTC)."),
        Column(
            "source",
            "VARCHAR",
            "webhook (seen in transfer webhooks) or api (only the call record).",
            allowed_values=TRANSFER_SOURCES,
        ),
        Column("delivery_keys", "JSON", "Webhook deliveries the attempt was built from, in event order."),
        _LOADED_AT_COLUMN,
    ),
)

REJECTED_RECORDS = TableSpec(
    name="rejected_records",
    description=(
        "Quarantine: one row per record a step or sensor could not store at all, by (source, "
        "record_key); written by every op, resolved when a later fetch stores the record."
    ),
    primary_key=("source", "record_key"),
    columns=(
        Column(
            "source",
            "VARCHAR",
            "What rejected it: leads, call_events, calls, webhook_deliveries or a sensor's name.",
        ),
        Column("record_id", "VARCHAR", "The record's id as far as it could be read; NULL without one."),
        Column("reason", "VARCHAR", "Error class and message (the API key never appears)."),
        Column(
            "payload",
            "VARCHAR",
            f"The record as received (after the PII modes), cut at {QUARANTINE_PAYLOAD_BYTES:,} UTF-8 bytes.",
            pii=True,
        ),
        Column(
            "payload_bytes",
            "BIGINT",
            "Full size of the payload before the cut (bytes as received, or UTF-8).",
        ),
        Column("first_seen_at", "TIMESTAMPTZ", "When it was first rejected (UTC).", Merge.KEEP_FIRST),
        Column("last_seen_at", "TIMESTAMPTZ", "When it was last rejected (UTC).", bookkeeping=True),
        Column("times_seen", "INTEGER", "How many times it was rejected.", Merge.ADD, True),
        Column(
            "resolved_at",
            "TIMESTAMPTZ",
            "When a later fetch stored the record fine (UTC); NULL while it is still rejected.",
        ),
        Column(
            "record_key",
            "VARCHAR",
            "Key within the source: `record_id`, or `sha256:<hex>` of the full payload when the "
            "record has no id (one row per distinct payload).",
        ),
        _LOADED_AT_COLUMN,
    ),
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        LEADS,
        CALL_EVENTS,
        CALLS,
        CALL_SUMMARIES,
        CALL_TRANSCRIPT_TURNS,
        WEBHOOK_DELIVERIES,
        CALL_TRANSFERS,
        REJECTED_RECORDS,
    )
}

# Written by `apten_erase_leads`, read by every sync: not a pipeline asset, so not in TABLES.
ERASED_LEADS = TableSpec(
    name="erased_leads",
    description=(
        "Leads erased on request: the syncs drop their records while Apten still returns them. "
        "Holds a hash of each lead id, never the id itself."
    ),
    primary_key=("lead_key",),
    columns=(
        Column("lead_key", "VARCHAR", "Hex SHA-256 of the lead id (HMAC with APTEN_PII_SALT when set)."),
        Column("key_scheme", "VARCHAR", "sha256, or hmac-sha256/<fingerprint of the salt> (never the salt)."),
        Column("erased_at", "TIMESTAMPTZ", "When the lead was first erased (UTC).", Merge.KEEP_FIRST),
        _LOADED_AT_COLUMN,
    ),
)

# Every table a backend creates in schema `apten` (besides its own `_sync_state`).
STORED_TABLES: tuple[TableSpec, ...] = (*TABLES.values(), ERASED_LEADS)


@dataclass(frozen=True)
class LeadData:
    """How one table holds a lead's data, so erasure finds all of it: rows whose `lead_columns`
    hold an erased lead id, rows whose `call_columns` hold the id of one of its calls (calls are
    found through every table that has both), and rows whose `text_columns` mention either id
    anywhere (for free-form payloads such as quarantined records)."""

    spec: TableSpec
    lead_columns: tuple[str, ...] = ()
    call_columns: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ()


# One line per table holding lead data: a new table is erased once it is listed here.
# `rejected_records` is matched by `record_id` (a lead id, or a call/event id of the lead) and by
# its `payload` text (a quarantined record of the lead's, whatever its source).
LEAD_DATA: tuple[LeadData, ...] = (
    LeadData(LEADS, lead_columns=("lead_id",)),
    LeadData(CALL_EVENTS, lead_columns=("lead_id",), call_columns=("call_id",)),
    LeadData(CALLS, lead_columns=("lead_id",), call_columns=("call_id",)),
    LeadData(CALL_SUMMARIES, lead_columns=("lead_id",), call_columns=("call_id",)),
    LeadData(CALL_TRANSCRIPT_TURNS, call_columns=("call_id",)),
    LeadData(CALL_TRANSFERS, lead_columns=("lead_id",), call_columns=("call_id",)),
    LeadData(WEBHOOK_DELIVERIES, lead_columns=("lead_id",), call_columns=("call_id",)),
    LeadData(
        REJECTED_RECORDS, lead_columns=("record_id",), call_columns=("record_id",), text_columns=("payload",)
    ),
)


def payload_text(payload: Any) -> str:
    """A rejected record as text: bytes decoded (invalid UTF-8 replaced), JSON values serialised,
    lone surrogates and NUL characters replaced (`models.repair_text`), so that every payload is
    storable on every backend."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", errors="replace")
    elif payload is None:
        payload = ""
    elif not isinstance(payload, str):
        try:
            payload = json.dumps(payload, ensure_ascii=False, default=str)
        except (ValueError, RecursionError):
            payload = repr(payload)
    return repair_text(payload)[0]


def rejected_row(
    source: str, record_id: str | None, reason: str, payload: Any, seen_at: datetime
) -> dict[str, Any]:
    """Row for `apten.rejected_records`: one more sighting of a rejected record."""
    text = payload_text(payload)
    encoded = text.encode("utf-8")
    # Bytes as received keep their own size; anything else is measured as the stored text.
    size = len(payload) if isinstance(payload, bytes) else len(encoded)
    if record_id is not None:
        record_id = repair_text(record_id)[0]
    # Keyed by the id itself, or by a hash when there is none or it is too long to index.
    if record_id is None:
        record_key = "sha256:" + hashlib.sha256(encoded).hexdigest()
    elif len(record_id) > MAX_ID_LENGTH:
        record_key = "sha256:" + hashlib.sha256(record_id.encode("utf-8")).hexdigest()
    else:
        record_key = record_id
    return {
        "source": source,
        "record_key": record_key,
        "record_id": record_id,
        "reason": payload_text(reason),
        "payload": encoded[:QUARANTINE_PAYLOAD_BYTES].decode("utf-8", errors="ignore"),
        "payload_bytes": size,
        "first_seen_at": seen_at,
        "last_seen_at": seen_at,
        "times_seen": 1,
        "resolved_at": None,
    }


def lead_row(lead: Lead) -> dict[str, Any]:
    """Row for `apten.leads`."""
    return {
        "lead_id": lead.id,
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "phone": lead.phone,
        "email": lead.email,
        "customer_profile": lead.customer_profile,
        "external_lead_id": lead.external_lead_id,
        "created_at": lead.created_at,
        "updated_at": lead.updated_at,
        "last_activity_at": lead.last_activity_at,
        "has_replied": lead.has_replied,
        "is_hot": lead.is_hot,
        "is_qualified": lead.is_qualified,
        "is_unsubscribed": lead.is_unsubscribed,
        "is_ai_on": lead.is_ai_on,
        "tags": lead.tags,
        "additional_info": lead.additional_info,
        "summary": lead.summary,
        "is_deleted": lead.is_deleted,
        "deleted_at": lead.deleted_at,
        "raw": lead.raw,
    }


def call_event_row(event: Event) -> dict[str, Any]:
    """Row for `apten.call_events`; only CALL events belong there."""
    if event.call is None:
        raise ValueError(f"event {event.id!r} is a {event.type} event, not a CALL event")
    return {
        "call_id": event.id,
        "lead_id": event.lead_id,
        "org_id": event.org_id,
        "occurred_at": event.timestamp,
        "updated_at": event.updated_at,
        "direction": event.call.direction,
        "duration_seconds": event.call.duration_seconds,
        "call_status": event.call.call_status,
        "is_transfer": event.call.is_transfer,
        "data": event.data,
    }


@dataclass(frozen=True)
class CallRows:
    """What one fetched call writes besides its turns (the warehouse derives those from `raw`):
    its `calls` row and its `call_summaries` row, if any."""

    call: dict[str, Any]
    summary: dict[str, Any] | None


def call_rows(
    call: Call,
    fetched_at: datetime,
    *,
    summary_status: str | None = None,
    transfer_status: str | None = None,
) -> CallRows:
    """Rows for one successful `GET /calls/{id}` made at `fetched_at`.

    `summary_status` defaults to `ready` with a summary and `pending` without; pass `missing` once
    the give-up window has passed. `transfer_status` overrides the call's own (webhook-derived).
    The fetch counts as one attempt; the warehouse merge adds it to the stored count.
    """
    status = summary_status or ("ready" if call.summary is not None else "pending")
    if status not in SUMMARY_STATUSES:
        raise ValueError(f"summary_status must be one of {SUMMARY_STATUSES}, got {status!r}")
    row = {
        "call_id": call.id,
        "lead_id": call.lead_id,
        "session_id": call.session_id,
        "direction": call.direction,
        "call_status": call.call_status,
        "duration_seconds": call.duration_seconds,
        "created_at": call.created_at,
        "updated_at": call.updated_at,
        "ended_by": call.ended_by,
        "is_transfer": call.is_transfer,
        "is_mid_call_transfer": call.is_mid_call_transfer,
        "is_voicemail": call.is_voicemail,
        "transfer_number": call.transfer_number,
        "fallback_transfer_number": call.fallback_transfer_number,
        "transfer_status": transfer_status if transfer_status is not None else call.transfer_status,
        "answered_by": call.answered_by,
        "transfer_connected_seconds": call.transfer_connected_seconds,
        "lead_never_spoke": call.lead_never_spoke,
        # An empty transcript is "not stored yet": NULL keeps the count already stored.
        "turn_count": transcript_object_count(call.raw) or None,
        "summary_status": status,
        "first_fetched_at": fetched_at,
        "last_fetched_at": fetched_at,
        "fetch_attempts": 1,
        "raw": call.raw,
    }
    summary = None
    if call.summary is not None:
        ended_at = call.ended_at
        summary = {
            "call_id": call.id,
            "lead_id": call.lead_id,
            "summary": call.summary,
            "summary_first_seen_at": fetched_at,
            "summary_latency_seconds": (fetched_at - ended_at).total_seconds() if ended_at else None,
        }
    return CallRows(call=row, summary=summary)


def not_found_call_row(
    call_id: str,
    fetched_at: datetime,
    *,
    lead_id: str | None = None,
    created_at: datetime | None = None,
    direction: str | None = None,
    call_status: str | None = None,
    duration_seconds: float | None = None,
) -> dict[str, Any]:
    """`calls` row for a call whose `GET /calls/{id}` answered 404.

    The other values come from the call's CALL event (its time is when the call started); they
    are late-arriving columns, so they never clear what is stored, and a later API answer
    replaces them.
    """
    return {
        "call_id": call_id,
        "lead_id": lead_id,
        "direction": direction,
        "call_status": call_status,
        "duration_seconds": duration_seconds,
        "created_at": created_at,
        "summary_status": "not_found",
        "first_fetched_at": fetched_at,
        "last_fetched_at": fetched_at,
        "fetch_attempts": 1,
    }
