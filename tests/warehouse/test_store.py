"""The store contract, run against every backend: schema, upserts, child replacement, turn
derivation, transactions, the queries that choose work. A new backend passes this file."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, date, datetime, timedelta

import pytest

from apten_assets.lib.models import Call, Event, Lead, parse_timestamp
from apten_assets.lib.tables import (
    CALL_EVENTS,
    CALL_SUMMARIES,
    CALL_TRANSCRIPT_TURNS,
    CALLS,
    LEADS,
    QUARANTINE_PAYLOAD_BYTES,
    REJECTED_RECORDS,
    STORED_TABLES,
    TABLES,
    call_event_row,
    call_rows,
    lead_row,
    not_found_call_row,
    rejected_row,
)
from apten_assets.warehouse import Store, UpsertCounts, open_store
from tests.warehouse.helpers import one, query

# CONTRACT.md §3, spelled out here so a rename in tables.py fails loudly.
CONTRACT_COLUMNS = {
    "leads": [
        "lead_id", "first_name", "last_name", "phone", "email", "customer_profile", "external_lead_id",
        "created_at", "updated_at", "last_activity_at", "has_replied", "is_hot", "is_qualified",
        "is_unsubscribed", "is_ai_on", "tags", "additional_info", "summary", "is_deleted", "deleted_at",
        "raw",
    ],
    "call_events": [
        "call_id", "lead_id", "org_id", "occurred_at", "updated_at", "direction", "duration_seconds",
        "call_status", "is_transfer", "data",
    ],
    "calls": [
        "call_id", "lead_id", "session_id", "direction", "call_status", "duration_seconds", "created_at",
        "updated_at", "ended_by", "is_transfer", "is_mid_call_transfer", "is_voicemail", "transfer_number",
        "fallback_transfer_number", "transfer_status", "answered_by", "transfer_connected_seconds",
        "lead_never_spoke", "turn_count", "summary_status", "first_fetched_at", "last_fetched_at",
        "fetch_attempts", "raw",
    ],
    "call_summaries": ["call_id", "lead_id", "summary", "summary_first_seen_at", "summary_latency_seconds"],
    "call_transcript_turns": ["call_id", "turn_index", "role", "content", "start_time", "end_time"],
    # The contract's columns, then `record_key`: record_id, or a payload digest when there is none.
    "rejected_records": [
        "source", "record_id", "reason", "payload", "payload_bytes", "first_seen_at", "last_seen_at",
        "times_seen", "resolved_at", "record_key",
    ],
}  # fmt: skip
CONTRACT_KEYS = {
    "leads": ("lead_id",),
    "call_events": ("call_id",),
    "calls": ("call_id",),
    "call_summaries": ("call_id",),
    "call_transcript_turns": ("call_id", "turn_index"),
    "webhook_deliveries": ("delivery_key",),
    "call_transfers": ("call_id", "attempt"),
    # The contract's (source, record_id), with NULL ids kept apart by payload (record_key).
    "rejected_records": ("source", "record_key"),
}

T0 = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)


def turn(role: str, content: str, start: str, end: str) -> dict:
    return {
        "role": role,
        "content": content,
        "startTime": f"2026-06-15T{start}.000Z",
        "endTime": f"2026-06-15T{end}.000Z",
    }


CALL_BODY = {
    "id": "call-1",
    "leadId": "room_abc",
    "direction": "OUTBOUND",
    "callStatus": "COMPLETE",
    "durationSeconds": 145,
    "createdAt": "2026-06-15T14:30:00.000Z",
    "updatedAt": "2026-06-15T14:32:25.000Z",
    "summary": "Customer inquired about pricing.",
    "transcript": [
        turn("assistant", "Hi", "14:30:01", "14:30:05"),
        turn("user", "Hello", "14:30:06", "14:30:10"),
        turn("assistant", "Bye", "14:30:11", "14:30:12"),
    ],
    "isTransfer": False,
    "endedBy": "LEAD",
}  # fmt: skip


def call_event(call_id: str, occurred: datetime, updated: datetime | None = None) -> dict:
    return {
        "id": call_id,
        "roomId": "room_abc",
        "orgId": "org_123",
        "type": "CALL",
        "timestamp": occurred.isoformat(),
        "updatedAt": (updated or occurred).isoformat(),
        "data": {
            "direction": "OUTBOUND",
            "durationSeconds": 30,
            "callStatus": "COMPLETE",
            "isTransfer": False,
        },
    }


def table(store: Store, name: str, order: str) -> list[tuple]:
    return query(store, f"SELECT * FROM apten.{name} ORDER BY {order}")


def loaded_at(store: Store, name: str, key: str) -> dict[str, datetime]:
    return dict(query(store, f"SELECT {key}, _loaded_at FROM apten.{name}"))


def child_turns(call_id: str, *contents: str) -> list[dict]:
    """Plain child rows for `replace_children` (what they hold does not matter to it)."""
    return [
        {"call_id": call_id, "turn_index": index, "role": "user", "content": content}
        for index, content in enumerate(contents)
    ]


def lead(lead_id: str, **changes: object) -> dict:
    body = {
        "id": lead_id,
        "firstName": "John",
        "lastName": "Doe",
        "phone": "+15555555555",
        "createdAt": "2026-05-01T12:00:00.000Z",
        "updatedAt": "2026-05-14T15:30:00.000Z",
        "tags": [{"id": "tag1", "name": "Tag 1", "condition": "Condition 1"}],
        "additionalInfo": {"key1": "välue"},
        "summary": "Summary.",
        "deleted": False,
        "deletedAt": None,
    }
    body.update(changes)
    return lead_row(Lead.from_json(body))


def test_every_contract_column_exists_with_its_contract_name(store: Store) -> None:
    for name, spec in TABLES.items():
        columns = [
            row[0]
            for row in query(
                store,
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'apten' AND table_name = ? ORDER BY ordinal_position",
                [name],
            )
        ]
        assert columns == list(spec.column_names)
        assert columns[-1] == "_loaded_at"
        assert spec.primary_key == CONTRACT_KEYS[name]
        if name in CONTRACT_COLUMNS:
            assert columns == [*CONTRACT_COLUMNS[name], "_loaded_at"]
        assert all(column.description for column in spec.columns)


JSON_TYPES = {"duckdb": "JSON", "postgresql": "jsonb"}
TIMESTAMPTZ_TYPES = {"duckdb": "TIMESTAMP WITH TIME ZONE", "postgresql": "timestamp with time zone"}


def test_json_and_timestamp_columns_have_json_and_timestamptz_types(store: Store) -> None:
    types = store.column_types()
    for table_name, column in (
        ("leads", "raw"),
        ("leads", "tags"),
        ("leads", "additional_info"),
        ("call_events", "data"),
        ("calls", "raw"),
    ):
        assert types[table_name][column] == JSON_TYPES[store.backend]
    for table_name, column in (
        ("leads", "created_at"),
        ("call_events", "occurred_at"),
        ("calls", "last_fetched_at"),
        ("calls", "_loaded_at"),
    ):
        assert types[table_name][column] == TIMESTAMPTZ_TYPES[store.backend]


def test_ensure_schema_is_idempotent_and_creates_every_table(store: Store) -> None:
    for _ in range(3):
        store.ensure_schema()
    assert set(store.column_types()) == {spec.name for spec in STORED_TABLES} | {"_sync_state"}


def test_upsert_counts_inserted_updated_unchanged_and_keeps_loaded_at_of_unchanged(
    store: Store,
) -> None:
    first = store.upsert(LEADS, [lead("a"), lead("b"), lead("c")], now=T0)
    assert first == UpsertCounts(inserted=3, updated=0, unchanged=0)

    later = T0 + timedelta(hours=1)
    second = store.upsert(LEADS, [lead("a"), lead("b", isHot=True), lead("d")], now=later)
    assert second == UpsertCounts(inserted=1, updated=1, unchanged=1)
    assert loaded_at(store, "leads", "lead_id") == {"a": T0, "b": later, "c": T0, "d": later}
    assert query(store, "SELECT is_hot FROM apten.leads WHERE lead_id = 'b'") == [(True,)]


def test_upsert_twice_leaves_an_identical_table(store: Store) -> None:
    rows = [lead(f"lead-{i}", summary=None if i % 3 else "s") for i in range(50)]
    store.upsert(LEADS, rows, now=T0)
    before = table(store, "leads", "lead_id")
    counts = store.upsert(LEADS, rows, now=T0 + timedelta(days=1))
    assert counts == UpsertCounts(inserted=0, updated=0, unchanged=50)
    assert table(store, "leads", "lead_id") == before


def test_json_columns_round_trip_unicode_and_nested_values(store: Store) -> None:
    store.upsert(LEADS, [lead("a", additionalInfo={"ключ": ["v", 1, None]}, weird=float("nan"))])
    info, raw = one(store, "SELECT additional_info, raw FROM apten.leads")
    assert json.loads(info) == {"ключ": ["v", 1, None]}
    assert json.loads(raw)["weird"] is None  # NaN is not JSON; stored as null
    assert one(store, "SELECT raw->>'firstName' FROM apten.leads") == ("John",)


def test_late_arriving_field_is_never_set_back_to_null(store: Store) -> None:
    body = {**CALL_BODY, "answeredBy": "human", "transferNumber": "+14153750579"}
    store.upsert(CALLS, [call_rows(Call.from_json(body), T0).call], now=T0)
    later = dict(CALL_BODY, callStatus="COMPLETE_LATER")  # the later body lacks the late fields
    counts = store.upsert(CALLS, [call_rows(Call.from_json(later), T0 + timedelta(minutes=5)).call])
    assert counts.updated == 1
    row = one(store, "SELECT answered_by, transfer_number, call_status FROM apten.calls")
    assert row == ("human", "+14153750579", "COMPLETE_LATER")


def test_keep_existing_when_null_protects_extra_columns(store: Store) -> None:
    store.upsert(LEADS, [lead("a", isHot=True)], now=T0)
    without_flag = lead("a", isHot=True) | {"is_hot": None}
    counts = store.upsert(
        LEADS, [without_flag], keep_existing_when_null=["is_hot"], now=T0 + timedelta(hours=1)
    )
    assert counts.unchanged == 1
    assert one(store, "SELECT is_hot, _loaded_at FROM apten.leads") == (True, T0)
    with pytest.raises(ValueError, match="no columns"):
        store.upsert(LEADS, [lead("a")], keep_existing_when_null=["nope"])


def test_staging_duplicates_are_deduped_last_one_wins(store: Store) -> None:
    rows = [
        lead("a", firstName="first"),
        lead("b"),
        lead("a", firstName="second"),
        lead("a", firstName="third"),
    ]
    counts = store.upsert(LEADS, rows, now=T0)
    assert counts == UpsertCounts(inserted=2, updated=0, unchanged=0, duplicates=2)
    assert table(store, "leads", "lead_id")[0][1] == "third"
    assert store.duplicate_keys(LEADS) == 0


def test_rows_without_a_primary_key_or_with_unknown_columns_are_refused(
    store: Store,
) -> None:
    with pytest.raises(ValueError, match="NULL primary key"):
        store.upsert(LEADS, [lead("a"), {"lead_id": None, "first_name": "x"}])
    with pytest.raises(ValueError, match="no columns"):
        store.upsert(LEADS, [{"lead_id": "a", "firstName": "camel"}])
    assert one(store, "SELECT count(*) FROM apten.leads") == (0,)


def test_call_fetch_bookkeeping_counts_attempts_without_counting_an_update(
    store: Store,
) -> None:
    call = Call.from_json({k: v for k, v in CALL_BODY.items() if k != "summary"})
    assert store.upsert(CALLS, [call_rows(call, T0).call], now=T0).inserted == 1
    later = T0 + timedelta(minutes=5)
    counts = store.upsert(CALLS, [call_rows(call, later).call], now=later)
    assert counts == UpsertCounts(unchanged=1)
    row = one(
        store,
        "SELECT summary_status, first_fetched_at, last_fetched_at, fetch_attempts, turn_count, _loaded_at "
        "FROM apten.calls",
    )
    assert row == ("pending", T0, later, 2, 3, T0)


def test_summary_arrival_and_not_found_keep_what_is_known(store: Store) -> None:
    pending = Call.from_json({k: v for k, v in CALL_BODY.items() if k != "summary"})
    store.upsert(CALLS, [call_rows(pending, T0).call], now=T0)
    ready_rows = call_rows(Call.from_json(CALL_BODY), T0 + timedelta(minutes=10))
    assert ready_rows.summary is not None
    assert ready_rows.summary["summary_latency_seconds"] == pytest.approx(
        (T0 + timedelta(minutes=10) - datetime(2026, 6, 15, 14, 32, 25, tzinfo=UTC)).total_seconds()
    )
    assert store.upsert(CALLS, [ready_rows.call]).updated == 1
    assert store.upsert(CALL_SUMMARIES, [ready_rows.summary]).inserted == 1
    # Seen again later: first-seen time and latency stay those of the first sighting.
    again = call_rows(Call.from_json(CALL_BODY), T0 + timedelta(hours=2))
    assert store.upsert(CALL_SUMMARIES, [again.summary]).unchanged == 1
    first_seen = one(store, "SELECT summary_first_seen_at FROM apten.call_summaries")
    assert first_seen == (T0 + timedelta(minutes=10),)

    store.upsert(CALLS, [not_found_call_row("call-1", T0 + timedelta(hours=3))])
    row = one(store, "SELECT summary_status, turn_count, call_status, raw->>'id' FROM apten.calls")
    assert row == ("not_found", 3, "COMPLETE", "call-1")


def test_summary_status_outside_the_contract_values_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="summary_status"):
        call_rows(Call.from_json(CALL_BODY), T0, summary_status="done")
    row = call_rows(Call.from_json(CALL_BODY), T0).call | {"summary_status": "done"}
    with pytest.raises(ValueError, match="summary_status"):
        store.upsert(CALLS, [row])


def test_replace_children_leaves_no_stale_turns(store: Store) -> None:
    counts = store.replace_children(
        CALL_TRANSCRIPT_TURNS,
        "call_id",
        ["call-1", "call-2"],
        child_turns("call-1", "Hi", "Hello", "Bye") + child_turns("call-2", "Hi", "Hello", "Bye"),
        now=T0,
    )
    assert (counts.parents_replaced, counts.inserted) == (2, 6)

    later = T0 + timedelta(hours=1)
    counts = store.replace_children(
        CALL_TRANSCRIPT_TURNS, "call_id", ["call-1"], child_turns("call-1", "Only this"), now=later
    )
    assert (counts.parents_replaced, counts.deleted, counts.inserted) == (1, 3, 1)
    rows = query(
        store,
        "SELECT call_id, turn_index, content FROM apten.call_transcript_turns ORDER BY call_id, turn_index",
    )
    assert rows == [
        ("call-1", 0, "Only this"),
        ("call-2", 0, "Hi"),
        ("call-2", 1, "Hello"),
        ("call-2", 2, "Bye"),
    ]

    counts = store.replace_children(CALL_TRANSCRIPT_TURNS, "call_id", ["call-1"], [])
    assert (counts.deleted, counts.inserted) == (1, 0)
    assert query(store, "SELECT DISTINCT call_id FROM apten.call_transcript_turns") == [("call-2",)]


def test_replace_children_skips_parents_whose_turns_are_identical(store: Store) -> None:
    turns = child_turns("call-1", "Hi", "Hello", "Bye")
    store.replace_children(CALL_TRANSCRIPT_TURNS, "call_id", ["call-1"], turns, now=T0)
    before = table(store, "call_transcript_turns", "turn_index")
    counts = store.replace_children(
        CALL_TRANSCRIPT_TURNS,
        "call_id",
        ["call-1", "never-had-turns"],
        turns,
        now=T0 + timedelta(1),
    )
    assert (counts.parents, counts.parents_replaced, counts.parents_unchanged) == (2, 0, 2)
    assert table(store, "call_transcript_turns", "turn_index") == before


def test_replace_children_refuses_rows_of_unlisted_parents(store: Store) -> None:
    with pytest.raises(ValueError, match="not in parent_ids"):
        store.replace_children(CALL_TRANSCRIPT_TURNS, "call_id", ["call-2"], child_turns("call-1", "Hi"))


def test_failed_transaction_leaves_the_previous_state(store: Store) -> None:
    store.upsert(LEADS, [lead("a")], now=T0)
    before = table(store, "leads", "lead_id")
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.upsert(LEADS, [lead("a", firstName="changed"), lead("b")])
        store.replace_children(CALL_TRANSCRIPT_TURNS, "call_id", ["call-1"], [])
        raise RuntimeError("boom")
    assert table(store, "leads", "lead_id") == before
    bad = call_rows(Call.from_json(CALL_BODY), T0).call | {"summary_status": "done"}
    with pytest.raises(ValueError, match="summary_status"), store.transaction():
        store.upsert(LEADS, [lead("c")])
        store.upsert(CALLS, [bad])
    assert table(store, "leads", "lead_id") == before
    assert store.upsert(LEADS, [lead("c")]).inserted == 1  # the connection is usable again


def test_sync_state_round_trips(store: Store) -> None:
    assert store.get_sync_state("leads.updated_since") is None
    store.set_sync_state("leads.updated_since", "2026-05-14T15:30:00.000Z")
    store.set_sync_state("leads.updated_since", "2026-05-15T00:00:00.000Z")
    assert store.get_sync_state("leads.updated_since") == "2026-05-15T00:00:00.000Z"


def test_calls_needing_fetch_picks_missing_pending_in_progress_and_changed_calls(
    store: Store,
) -> None:
    day = datetime(2026, 6, 15, tzinfo=UTC)
    events = {
        "missing-row": day + timedelta(hours=1),
        "ready": day + timedelta(hours=2),
        "pending": day + timedelta(hours=3),
        "in-progress": day + timedelta(hours=4),
        "changed-event": day + timedelta(hours=5),
        "not-found": day + timedelta(hours=6),
        "next-day": day + timedelta(days=1),
    }
    event_rows = [call_event_row(Event.from_json(call_event(call_id, at))) for call_id, at in events.items()]
    event_rows[4]["updated_at"] = day + timedelta(hours=20)
    store.upsert(CALL_EVENTS, event_rows)
    fetched = day + timedelta(hours=12)

    def fetched_call(call_id: str, **changes: object) -> dict:
        body = {**CALL_BODY, "id": call_id, **changes}
        return call_rows(Call.from_json(body), fetched).call

    store.upsert(
        CALLS,
        [
            fetched_call("ready"),
            fetched_call("pending", summary=None),
            fetched_call("in-progress", callStatus="IN_PROGRESS", transcript=[]),
            fetched_call("changed-event"),
            fetched_call("next-day", summary=None),
            not_found_call_row("not-found", fetched),
        ],
    )
    now = fetched + timedelta(minutes=10)
    assert store.calls_needing_fetch(day, day + timedelta(days=1), now) == [
        "missing-row",
        "pending",
        "in-progress",
        "changed-event",
    ]
    assert store.calls_needing_fetch(day, day + timedelta(days=1), now, recheck_after=timedelta(hours=1)) == [
        "missing-row",
        "changed-event",
    ]


def test_pending_calls_give_the_partition_and_fetch_history(store: Store) -> None:
    late_evening = datetime(2026, 6, 15, 23, 30, tzinfo=UTC)
    store.upsert(CALL_EVENTS, [call_event_row(Event.from_json(call_event("call-1", late_evening)))])
    body = {k: v for k, v in CALL_BODY.items() if k != "summary"}
    webchat = {**body, "id": "webchat-1", "sessionId": "s-1", "createdAt": "2026-06-16T08:00:00Z"}
    del webchat["leadId"]
    store.upsert(CALLS, [call_rows(Call.from_json(body), T0).call], now=T0)
    store.upsert(CALLS, [call_rows(Call.from_json(body), T0 + timedelta(minutes=5)).call])
    store.upsert(CALLS, [call_rows(Call.from_json(webchat), T0 + timedelta(minutes=1)).call])
    store.upsert(CALLS, [call_rows(Call.from_json({**CALL_BODY, "id": "done"}), T0).call])

    pending = store.pending_calls()
    assert [p.call_id for p in pending] == ["webchat-1", "call-1"]
    webchat_call, call = pending
    assert webchat_call.partition_date == date(2026, 6, 16)
    assert call.partition_date == date(2026, 6, 15)
    assert call.fetch_attempts == 2
    assert call.last_fetched_at == T0 + timedelta(minutes=5)
    assert call.created_at == datetime(2026, 6, 15, 14, 30, tzinfo=UTC)
    assert call.ended_at == datetime(2026, 6, 15, 14, 32, 25, tzinfo=UTC)


def test_upsert_of_many_transcript_turns_is_fast(store: Store) -> None:
    # The 4,000,000-row figure belongs to the benchmarks; this size keeps the suite quick.
    n = 200_000
    base = datetime(2026, 6, 15, tzinfo=UTC)
    rows = [
        {
            "call_id": f"call-{i // 50}",
            "turn_index": i % 50,
            "role": "assistant" if i % 2 else "user",
            "content": f"turn {i} of a long conversation",
            "start_time": base + timedelta(seconds=i),
            "end_time": base + timedelta(seconds=i + 1),
        }
        for i in range(n)
    ]
    started = time.perf_counter()
    counts = store.upsert(CALL_TRANSCRIPT_TURNS, rows)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = store.upsert(CALL_TRANSCRIPT_TURNS, rows)
    second = time.perf_counter() - started
    print(f"\nupsert {n:,} turn rows: {first:.2f}s new, {second:.2f}s unchanged")
    assert counts.inserted == n and again.unchanged == n


HOSTILE_TRANSCRIPTS = {
    "ordinary": [turn("assistant", "Hi", "14:30:01", "14:30:05")],
    "offset_and_naive": [
        {
            "role": "user",
            "content": "a",
            "startTime": "2026-06-15T16:30:01+02:00",
            "endTime": "2026-06-15T14:30:09",
        }
    ],
    "wrong_types": [{"role": 7, "content": ["x"], "startTime": 12, "endTime": None}],
    "unparseable_time": [
        {"role": "user", "content": "b", "startTime": "yesterday", "endTime": "2026-13-45T99:00Z"}
    ],
    "no_content": [{"role": "assistant", "startTime": "2026-06-15T14:30:01Z"}],
    "not_objects_keep_positions": ["hello", None, {"role": "user", "content": "c"}, 5, {"content": "d"}],
    "unknown_fields": [{"role": "SYSTEM", "content": "e", "confidence": 0.4, "words": [{"w": "e"}]}],
    # Shapes Apten writes, one an impossible date.
    "common_shapes": [
        {
            "role": "user",
            "content": "f",
            "startTime": "2026-02-30T10:00:00.000Z",
            "endTime": "2026-06-15 14:30:09.123456-01:00",
        }
    ],
}


def utc(hour: int, minute: int, second: int) -> datetime:
    return datetime(2026, 6, 15, hour, minute, second, tzinfo=UTC)


# What the turn rules make of HOSTILE_TRANSCRIPTS: position in the array is `turn_index`, items
# that are not objects are skipped, a wrong JSON type or an unparseable time is NULL, a time
# without a zone is UTC, unknown fields are ignored.
HOSTILE_TURNS = [
    ("call_common_shapes", 0, "user", "f", None, datetime(2026, 6, 15, 15, 30, 9, 123456, tzinfo=UTC)),
    ("call_no_content", 0, "assistant", None, utc(14, 30, 1), None),
    ("call_not_objects_keep_positions", 2, "user", "c", None, None),
    ("call_not_objects_keep_positions", 4, None, "d", None, None),
    ("call_offset_and_naive", 0, "user", "a", utc(14, 30, 1), utc(14, 30, 9)),
    ("call_ordinary", 0, "assistant", "Hi", utc(14, 30, 1), utc(14, 30, 5)),
    ("call_unknown_fields", 0, "SYSTEM", "e", None, None),
    ("call_unparseable_time", 0, "user", "b", None, None),
    ("call_wrong_types", 0, None, None, None, None),
]


def test_turns_derived_from_raw_follow_the_turn_rules_on_hostile_transcripts(store: Store) -> None:
    written = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    bodies = {
        f"call_{name}": {"id": f"call_{name}", "transcript": transcript}
        for name, transcript in HOSTILE_TRANSCRIPTS.items()
    }
    rows = [warehouse_call_row(body, written) for body in bodies.values()]

    calls, counts = store.upsert_calls(rows, now=written)

    expected = HOSTILE_TURNS
    stored = table(store, "call_transcript_turns", "call_id, turn_index")
    assert [row[:6] for row in stored] == expected
    assert calls.inserted == len(bodies)
    assert counts.parents_replaced == len(bodies)
    assert counts.inserted == len(expected)

    # The same transcripts read again for calls stored before: compared, found equal, kept.
    later = written + timedelta(minutes=5)
    again = [warehouse_call_row({**body, "summary": "late"}, later) for body in bodies.values()]
    calls, counts = store.upsert_calls(again, now=later)
    assert calls.updated == len(bodies)
    assert (counts.parents, counts.parents_replaced, counts.deleted) == (len(bodies), 0, 0)
    assert table(store, "call_transcript_turns", "call_id, turn_index") == stored


def test_turns_derived_from_raw_keep_rows_of_calls_whose_transcript_did_not_change(
    store: Store,
) -> None:
    first = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    body = {"id": "c1", "transcript": HOSTILE_TRANSCRIPTS["ordinary"]}
    store.upsert_calls([warehouse_call_row(body, first)], now=first)

    later = first + timedelta(minutes=5)
    with_summary = {**body, "summary": "arrived late"}
    _, unchanged = store.upsert_calls([warehouse_call_row(with_summary, later)], now=later)
    revised = {**with_summary, "transcript": []}
    _, empty = store.upsert_calls([warehouse_call_row(revised, later + timedelta(minutes=5))])

    assert (unchanged.parents, unchanged.parents_replaced) == (1, 0)
    assert (empty.parents, empty.deleted) == (0, 0)
    assert loaded_at(store, "call_transcript_turns", "call_id") == {"c1": first}


def _model_time(text: str) -> datetime | None:
    try:
        return parse_timestamp(text)[0]
    except ValueError:
        return None


@pytest.mark.parametrize(
    "text",
    [
        "2026-06-15T14:30:01.1234567Z",  # .NET writes seven digits: cut, never rounded up
        "2026-06-15T14:30:01.9999999+02:00",
        "2026-06-15T14:30:01.123456789",
        "2026-06-15T23:59:60Z",  # a leap second: unreadable to Python and DuckDB alike
        "2026-06-15T14:30:01.000Z",
    ],
)
def test_turn_times_are_read_as_the_models_read_timestamps(store: Store, text: str) -> None:
    written = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    body = {"id": "c1", "transcript": [{"role": "user", "content": "x", "startTime": text}]}
    store.upsert_calls([warehouse_call_row(body, written)], now=written)
    assert query(store, "SELECT start_time FROM apten.call_transcript_turns") == [(_model_time(text),)]


@pytest.mark.parametrize("transcript", [None, "see attachment", 5, True, {"role": "user", "content": "x"}])
def test_a_call_whose_transcript_is_not_a_list_is_stored_without_turns(
    store: Store, transcript: object
) -> None:
    # PostgreSQL once measured such a transcript as an array and refused the whole batch.
    written = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    rows = [
        warehouse_call_row({"id": "odd", "transcript": transcript}, written),
        warehouse_call_row({"id": "honest", "transcript": HOSTILE_TRANSCRIPTS["ordinary"]}, written),
    ]
    calls, counts = store.upsert_calls(rows, now=written)
    assert (calls.inserted, counts.parents, counts.inserted) == (2, 1, 1)
    assert query(store, "SELECT call_id, turn_count FROM apten.calls ORDER BY 1") == [
        ("honest", 1),
        ("odd", None),
    ]
    assert query(store, "SELECT call_id FROM apten.call_transcript_turns") == [("honest",)]


def warehouse_call_row(body: dict, fetched_at: datetime) -> dict:
    return call_rows(Call.from_json(body), fetched_at).call


def test_turns_derived_from_raw_replace_a_revised_transcript_without_stale_turns(
    store: Store,
) -> None:
    first = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    three = [turn("user", f"t{i}", "2026-06-15T14:30:01Z", "2026-06-15T14:30:02Z") for i in range(3)]
    body = {"id": "c1", "transcript": three}
    store.upsert_calls([warehouse_call_row(body, first)], now=first)

    later = first + timedelta(minutes=5)
    only = turn("assistant", "only", "2026-06-15T14:30:01Z", "2026-06-15T14:30:02Z")
    revised = {**body, "transcript": [only]}
    _, counts = store.upsert_calls([warehouse_call_row(revised, later)], now=later)

    stored = table(store, "call_transcript_turns", "turn_index")
    assert [(row[1], row[2], row[3]) for row in stored] == [(0, "assistant", "only")]
    assert (counts.parents_replaced, counts.deleted, counts.inserted) == (1, 3, 1)


def test_a_call_twice_in_one_batch_gets_the_turns_of_its_last_row(store: Store) -> None:
    # The last row of a key wins for the call, and so for its turns: c1's second transcript,
    # and none for c2, whose last row is a 404 (no raw) although an earlier one had turns.
    first = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    three = [turn("user", f"t{i}", "14:30:01", "14:30:02") for i in range(3)]
    only = turn("assistant", "only", "14:30:01", "14:30:02")
    batch = [
        warehouse_call_row({"id": "c1", "transcript": three}, first),
        warehouse_call_row({"id": "c2", "transcript": three}, first),
        warehouse_call_row({"id": "c1", "transcript": [only]}, first),
        not_found_call_row("c2", first),
    ]
    calls, counts = store.upsert_calls(batch, now=first)

    assert (calls.inserted, calls.duplicates) == (2, 2)
    assert (counts.parents, counts.inserted) == (1, 1)
    stored = table(store, "call_transcript_turns", "call_id, turn_index")
    assert [(row[0], row[1], row[3]) for row in stored] == [("c1", 0, "only")]


def test_one_batch_of_new_revised_unchanged_and_missing_calls_writes_each_its_own_way(
    store: Store,
) -> None:
    # New calls skip the comparison with stored turns; stored ones are compared; a 404 never
    # touches turns. Mixed in one batch, each call must still end as if written alone.
    first = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    two = [turn("user", f"t{i}", "2026-06-15T14:30:01Z", "2026-06-15T14:30:02Z") for i in range(2)]
    stored = {name: {"id": name, "transcript": two} for name in ("revised", "unchanged", "gone")}
    store.upsert_calls([warehouse_call_row(body, first) for body in stored.values()], now=first)

    later = first + timedelta(minutes=5)
    batch = [
        warehouse_call_row({"id": "new", "transcript": two + two}, later),
        warehouse_call_row({"id": "revised", "transcript": two[:1]}, later),
        warehouse_call_row({"id": "unchanged", "transcript": two, "summary": "late"}, later),
        not_found_call_row("gone", later),
    ]
    calls, counts = store.upsert_calls(batch, now=later)

    assert (calls.inserted, calls.updated, calls.unchanged) == (1, 3, 0)
    assert (counts.parents, counts.parents_replaced, counts.parents_unchanged) == (3, 2, 1)
    assert (counts.deleted, counts.inserted) == (2, 5)
    per_call = "SELECT call_id, count(*), max(_loaded_at) FROM {} GROUP BY 1 ORDER BY 1"
    turns = query(store, per_call.format("apten.call_transcript_turns"))
    assert turns == [("gone", 2, first), ("new", 4, later), ("revised", 1, later), ("unchanged", 2, first)]
    assert store.duplicate_keys(CALL_TRANSCRIPT_TURNS) == 0


def test_a_batch_larger_than_a_write_piece_ends_as_if_each_call_were_written_alone(
    store: Store,
) -> None:
    # PostgreSQL writes a batch in pieces (250 calls, then doubling) while it prepares the next
    # one; every kind of call recurs in every piece, and the counts and rows must still be the
    # batch's own.
    first = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    two = [turn("user", f"t{i}", "2026-06-15T14:30:01Z", "2026-06-15T14:30:02Z") for i in range(2)]
    kinds = ("new", "revised", "unchanged", "gone", "empty")
    per_kind = 300
    ids = {kind: [f"{kind}-{i:03d}" for i in range(per_kind)] for kind in kinds}
    stored = [call_id for kind in ("revised", "unchanged", "gone") for call_id in ids[kind]]
    store.upsert_calls([warehouse_call_row({"id": c, "transcript": two}, first) for c in stored], now=first)

    later = first + timedelta(minutes=5)
    row = {
        "new": lambda c: warehouse_call_row({"id": c, "transcript": two + two}, later),
        "revised": lambda c: warehouse_call_row({"id": c, "transcript": two[:1]}, later),
        "unchanged": lambda c: warehouse_call_row({"id": c, "transcript": two, "summary": "late"}, later),
        "gone": lambda c: not_found_call_row(c, later),
        "empty": lambda c: warehouse_call_row({"id": c, "transcript": []}, later),
    }
    # Interleaved, so that each piece holds every kind.
    batch = [row[kind](ids[kind][i]) for i in range(per_kind) for kind in kinds]
    calls, counts = store.upsert_calls(batch, now=later)

    assert (calls.inserted, calls.updated, calls.unchanged) == (2 * per_kind, 3 * per_kind, 0)
    # Parents: calls with a non-empty transcript among those inserted or changed.
    assert (counts.parents, counts.parents_replaced, counts.parents_unchanged) == (
        3 * per_kind,
        2 * per_kind,
        per_kind,
    )
    assert (counts.deleted, counts.inserted) == (2 * per_kind, 5 * per_kind)
    per_kind_sql = (
        "SELECT split_part(call_id, '-', 1), count(DISTINCT call_id), count(*), min(_loaded_at), "
        "max(_loaded_at) FROM apten.call_transcript_turns GROUP BY 1 ORDER BY 1"
    )
    assert query(store, per_kind_sql) == [
        ("gone", per_kind, 2 * per_kind, first, first),
        ("new", per_kind, 4 * per_kind, later, later),
        ("revised", per_kind, per_kind, later, later),
        ("unchanged", per_kind, 2 * per_kind, first, first),
    ]
    assert store.duplicate_keys(CALL_TRANSCRIPT_TURNS) == 0


def test_the_end_of_a_call_is_the_same_rule_in_the_store_and_the_model(store: Store) -> None:
    # CALL_END_RULE: created_at + duration, else the latest turn end (the model applies it before
    # storage for summary latency; the store for the sensor and the coverage check).
    no_duration = {k: v for k, v in CALL_BODY.items() if k not in ("summary", "durationSeconds")}
    bodies = [
        {**no_duration, "id": "by-turns"},
        {**CALL_BODY, "id": "by-duration", "summary": None},
        {**no_duration, "id": "unknown", "transcript": []},
    ]
    store.upsert_calls([warehouse_call_row(body, T0) for body in bodies], now=T0)
    ended = {call.call_id: call.ended_at for call in store.pending_calls()}
    assert ended == {body["id"]: Call.from_json(body).ended_at for body in bodies}
    assert ended["by-turns"] == datetime(2026, 6, 15, 14, 30, 12, tzinfo=UTC)
    assert ended["unknown"] is None


def rejected(store: Store) -> list[tuple]:
    return query(
        store,
        "SELECT source, record_key, record_id, reason, payload, payload_bytes, first_seen_at, last_seen_at, "
        "times_seen, resolved_at FROM apten.rejected_records ORDER BY source, record_key",
    )


def test_quarantine_keeps_one_row_per_record_and_counts_sightings(store: Store) -> None:
    later = T0 + timedelta(hours=1)
    store.quarantine([rejected_row("calls", "c-1", "ValueError: first", {"id": "c-1"}, T0)], now=T0)
    store.quarantine(
        [rejected_row("calls", "c-1", "ValueError: again", {"id": "c-1", "x": 1}, later)], now=later
    )
    # The same id under another source is another record.
    store.quarantine([rejected_row("leads", "c-1", "MalformedRecord", None, T0)], now=T0)

    rows = rejected(store)
    assert [(r[0], r[1], r[2]) for r in rows] == [("calls", "c-1", "c-1"), ("leads", "c-1", "c-1")]
    source, _, _, reason, payload, size, first, last, times, resolved = rows[0]
    assert (reason, json.loads(payload), size) == ("ValueError: again", {"id": "c-1", "x": 1}, len(payload))
    assert (first, last, times, resolved) == (T0, later, 2, None)
    assert store.duplicate_keys(REJECTED_RECORDS) == 0


# Incompressible, so PostgreSQL cannot squeeze it into a primary-key entry (about 2.7 KB at most).
LONG_ID = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(160))


def test_a_key_past_postgresql_index_limit_is_a_refused_row_and_the_session_goes_on(store: Store) -> None:
    # The models refuse such ids (MAX_ID_LENGTH); the store's answer to one that got here anyway.
    row = {"lead_id": LONG_ID, "first_name": "Long"}
    if store.backend == "postgresql":
        with pytest.raises(ValueError, match="a value cannot be stored"):
            store.upsert(LEADS, [row])
    else:
        store.upsert(LEADS, [row])
    store.upsert(LEADS, [{"lead_id": "short", "first_name": "Short"}])
    assert "short" in [lead_id for (lead_id,) in query(store, "SELECT lead_id FROM apten.leads")]


def test_a_record_id_too_long_to_index_is_quarantined_under_its_hash(store: Store) -> None:
    store.quarantine([rejected_row("leads", LONG_ID, "MalformedRecord: too long", None, T0)], now=T0)
    store.quarantine([rejected_row("leads", LONG_ID, "MalformedRecord: too long", None, T0)], now=T0)
    ((key, record_id, times),) = query(
        store, "SELECT record_key, record_id, times_seen FROM apten.rejected_records"
    )
    assert (key, record_id, times) == ("sha256:" + hashlib.sha256(LONG_ID.encode()).hexdigest(), LONG_ID, 2)


def test_records_without_an_id_are_one_row_per_distinct_payload(store: Store) -> None:
    rows = [
        rejected_row("leads", None, "MalformedRecord: 'id' is missing", {"firstName": "A"}, T0),
        rejected_row("leads", None, "MalformedRecord: 'id' is missing", {"firstName": "B"}, T0),
    ]
    store.quarantine(rows, now=T0)
    store.quarantine(rows[:1], now=T0 + timedelta(minutes=1))
    stored = rejected(store)
    assert sorted((r[2], r[4], r[8]) for r in stored) == [
        (None, '{"firstName": "A"}', 2),
        (None, '{"firstName": "B"}', 1),
    ]
    assert all(r[1].startswith("sha256:") for r in stored)


def test_payload_is_capped_and_its_full_size_kept(store: Store) -> None:
    big = {"id": "c-big", "text": "é" * 100_000}
    store.quarantine([rejected_row("calls", "c-big", "too big", big, T0)], now=T0)
    ((payload, size),) = query(store, "SELECT payload, payload_bytes FROM apten.rejected_records")
    full = json.dumps(big, ensure_ascii=False).encode()
    assert size == len(full) > QUARANTINE_PAYLOAD_BYTES
    assert len(payload.encode()) <= QUARANTINE_PAYLOAD_BYTES
    assert full.startswith(payload.encode())


def test_resolving_sets_resolved_at_once_and_a_new_rejection_clears_it(store: Store) -> None:
    store.quarantine([rejected_row("calls", f"c-{i}", "bad", None, T0) for i in range(3)], now=T0)
    resolved_at = T0 + timedelta(hours=1)
    assert store.resolve_quarantined("calls", ["c-0", "c-1", "unknown"], now=resolved_at) == 2
    assert store.resolve_quarantined("calls", ["c-0"], now=resolved_at + timedelta(hours=1)) == 0
    assert store.resolve_quarantined("leads", ["c-2"], now=resolved_at) == 0
    assert {r[1]: r[9] for r in rejected(store)} == {"c-0": resolved_at, "c-1": resolved_at, "c-2": None}

    finding = store.unresolved_quarantine("calls")
    assert not finding.passed
    assert (finding.metadata["unresolved"], finding.metadata["resolved"]) == (1, 2)
    assert [s["record_id"] for s in finding.metadata["sample_unresolved"]] == ["c-2"]
    assert store.unresolved_quarantine("leads").passed

    store.quarantine([rejected_row("calls", "c-0", "bad again", None, T0)], now=resolved_at)
    assert {r[1]: r[9] for r in rejected(store)}["c-0"] is None


def test_stored_values_out_of_range_never_break_the_read_queries(store: Store) -> None:
    # Rows written before the models bounded durations and timestamps: a duration of 1e300 s,
    # a start in year 9999, a turn ending in year 9999. Every read that returns them still works.
    body = {k: v for k, v in CALL_BODY.items() if k != "summary"}
    absurd = {**call_rows(Call.from_json(body), T0).call, "call_id": "absurd", "duration_seconds": 1e300}
    far = {**call_rows(Call.from_json(body), T0).call, "call_id": "far", "duration_seconds": 10.0}
    far["created_at"] = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    store.upsert(CALLS, [absurd, far], now=T0)
    store.upsert(
        CALL_TRANSCRIPT_TURNS,
        [{"call_id": "absurd", "turn_index": 0, "end_time": datetime(9999, 12, 31, 23, 59, tzinfo=UTC)}],
    )

    pending = {call.call_id: call for call in store.pending_calls()}
    assert set(pending) == {"absurd", "far"}
    assert pending["absurd"].ended_at is None
    assert pending["far"].created_at is None and pending["far"].ended_at is None
    assert store.summary_coverage(timedelta(hours=72)).metadata["calls_past_give_up_window"] >= 1


def test_nul_characters_are_replaced_on_postgres_and_kept_on_duckdb(store: Store) -> None:
    # PostgreSQL's text and jsonb cannot hold U+0000; its store replaces it with U+FFFD (and logs a
    # count), keeping keys apart that differ only by it. (Records from Apten never get here with
    # one: models.repair_text replaced it first, on every backend.)
    info = {"k\x00": "v\x00", "k": "plain", "k\ufffd": "honest"}
    store.upsert(LEADS, [lead("a", firstName="Jo\x00hn", additionalInfo=info)])
    first, stored = one(store, "SELECT first_name, additional_info FROM apten.leads")
    if store.backend == "postgresql":
        assert (first, json.loads(stored)) == (
            "Jo\ufffdhn",
            {"k\ufffd": "v\ufffd", "k": "plain", "k\ufffd\ufffd": "honest"},
        )
    else:
        assert (first, json.loads(stored)) == ("Jo\x00hn", info)


def test_postgres_stores_new_raw_values_uncompressed_or_lz4_and_keeps_the_stored_ones(
    postgres_url: str,
) -> None:
    # A warehouse from before: `calls.raw` with PostgreSQL's default, pglz. ensure_schema changes
    # how new values are stored (lz4, or uncompressed without lz4) and leaves stored ones readable.
    body = {"id": "old", "transcript": [turn("user", f"line {i}", "14:30:01", "14:30:02") for i in range(80)]}
    with open_store(postgres_url) as store:
        store.ensure_schema()
        store.test_query("ALTER TABLE apten.calls ALTER COLUMN raw SET STORAGE EXTENDED")
        store.test_query("ALTER TABLE apten.calls ALTER COLUMN raw SET COMPRESSION pglz")
        store.upsert_calls([warehouse_call_row(body, T0)], now=T0)

        store.ensure_schema()
        store.upsert_calls([warehouse_call_row({**body, "id": "new"}, T0)], now=T0)

        ((storage,),) = query(
            store,
            "SELECT CAST(attstorage AS text) FROM pg_attribute "
            "WHERE attrelid = CAST('apten.calls' AS regclass) AND attname = 'raw'",
        )
        methods = dict(query(store, "SELECT call_id, pg_column_compression(raw) FROM apten.calls"))
        assert methods["old"] == "pglz"
        assert (storage, methods["new"]) in (("e", None), ("x", "lz4"))
        stored = query(store, "SELECT CAST(raw AS text) FROM apten.calls ORDER BY call_id")
        assert [json.loads(raw)["transcript"] for (raw,) in stored] == [body["transcript"]] * 2


def test_postgres_turns_are_found_by_a_hash_index_and_an_older_keyed_table_is_migrated(
    postgres_url: str,
) -> None:
    # A warehouse from before: the turns keyed by (call_id, turn_index). ensure_schema swaps the
    # key's btree for the hash index on call_id, keeps the rows, and a changed call's turns are
    # still replaced as a whole through it.
    def body(call_id: str, lines: int) -> dict:
        return {
            "id": call_id,
            "transcript": [turn("user", f"line {i}", "14:30:01", "14:30:02") for i in range(lines)],
        }

    def indexes(store: Store) -> list[tuple]:
        return query(
            store,
            "SELECT CAST(i.relname AS text), x.indisprimary, CAST(a.amname AS text) FROM pg_index AS x "
            "JOIN pg_class AS i ON i.oid = x.indexrelid JOIN pg_am AS a ON a.oid = i.relam "
            "WHERE x.indrelid = CAST('apten.call_transcript_turns' AS regclass)",
        )

    with open_store(postgres_url) as store:
        store.ensure_schema()
        assert indexes(store) == [("call_transcript_turns_call_id_hash", False, "hash")]
        store.test_query("DROP INDEX apten.call_transcript_turns_call_id_hash")
        store.test_query("ALTER TABLE apten.call_transcript_turns ADD PRIMARY KEY (call_id, turn_index)")
        store.upsert_calls(
            [warehouse_call_row(body("a", 3), T0), warehouse_call_row(body("b", 2), T0)], now=T0
        )

        store.ensure_schema()
        assert indexes(store) == [("call_transcript_turns_call_id_hash", False, "hash")]
        _, turns = store.upsert_calls([warehouse_call_row(body("a", 4), T0 + timedelta(minutes=5))], now=T0)

        assert (turns.parents_replaced, turns.deleted, turns.inserted) == (1, 3, 4)
        rows = query(
            store,
            "SELECT call_id, count(*) FROM apten.call_transcript_turns GROUP BY call_id ORDER BY call_id",
        )
        assert rows == [("a", 4), ("b", 2)]
        assert store.unique_primary_key(CALL_TRANSCRIPT_TURNS).passed
        ((definition,),) = query(
            store, "SELECT pg_get_indexdef(CAST('apten.call_transcript_turns_call_id_hash' AS regclass))"
        )
        assert definition.endswith("USING hash (call_id)")


def test_pages_of_a_column_cover_every_row_and_a_rewrite_in_between_skips_none(store: Store) -> None:
    # How the PII modes rewrite stored text: page by page, each page's changed rows overwritten
    # before the next is read. On PostgreSQL the turns (no index in key order) page by blocks,
    # where a rewritten row may move on and come again; every row must be rewritten.
    lines = [f"turn number {i} of a call, long enough to fill a few blocks of the table" for i in range(12)]
    body = {"transcript": [turn("user", line, "14:30:01", "14:30:02") for line in lines]}
    store.upsert_calls([warehouse_call_row({**body, "id": f"c{i:03}"}, T0) for i in range(250)], now=T0)
    every = {(f"c{i:03}", k) for i in range(250) for k in range(12)}

    seen: list[tuple] = []
    after, pages = None, 0
    while True:
        page = store.read_column_page(CALL_TRANSCRIPT_TURNS, ["content"], after=after, limit=200)
        pages += 1
        seen += [row[:2] for row in page.rows]
        changed = [(*row[:2], row[2].upper()) for row in page.rows if row[2] != row[2].upper()]
        store.overwrite_columns(CALL_TRANSCRIPT_TURNS, ["content"], changed, now=T0)
        if page.after is None:
            break
        after = page.after

    assert set(seen) == every and pages >= len(every) // 200
    contents = query(store, "SELECT content FROM apten.call_transcript_turns")
    assert len(contents) == len(every) and all(content == content.upper() for (content,) in contents)
    untouched = store.read_column_page(CALL_SUMMARIES, ["summary"], after=None, limit=10)
    assert (untouched.rows, untouched.after) == ([], None)
