"""The DuckDB warehouse against real files: schema, upserts, child replacement, locks, queries."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from apten_assets.lib import warehouse
from apten_assets.lib.models import Call, Event, Lead
from apten_assets.lib.tables import (
    CALL_EVENTS,
    CALL_SUMMARIES,
    CALL_TRANSCRIPT_TURNS,
    CALLS,
    LEADS,
    TABLES,
    call_event_row,
    call_rows,
    lead_row,
    not_found_call_row,
    turn_rows,
)
from apten_assets.lib.warehouse import UpsertCounts, WarehouseBusy

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
}  # fmt: skip
CONTRACT_KEYS = {
    "leads": ("lead_id",),
    "call_events": ("call_id",),
    "calls": ("call_id",),
    "call_summaries": ("call_id",),
    "call_transcript_turns": ("call_id", "turn_index"),
    "webhook_deliveries": ("delivery_key",),
    "call_transfers": ("call_id", "attempt"),
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


@pytest.fixture
def con(tmp_path: Path):
    connection = warehouse.connect(tmp_path / "nested" / "dir" / "apten.duckdb")
    warehouse.ensure_schema(connection)
    yield connection
    connection.close()


def ref(con: duckdb.DuckDBPyConnection, name: str) -> str:
    return warehouse.table_ref(con, "apten", name)


def table(con: duckdb.DuckDBPyConnection, name: str, order: str) -> list[tuple]:
    return con.execute(f"SELECT * FROM {ref(con, name)} ORDER BY {order}").fetchall()


def loaded_at(con: duckdb.DuckDBPyConnection, name: str, key: str) -> dict[str, datetime]:
    return dict(con.execute(f"SELECT {key}, _loaded_at FROM {ref(con, name)}").fetchall())


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


def test_connect_creates_the_parent_directory_and_ensure_schema_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "apten.duckdb"
    con = warehouse.connect(path)
    for _ in range(3):
        warehouse.ensure_schema(con)
    assert path.exists()
    tables = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='apten'"
        ).fetchall()
    }
    assert tables == set(TABLES) | {"_sync_state"}
    con.close()


def test_default_file_name_does_not_make_the_apten_schema_ambiguous(tmp_path: Path) -> None:
    # A file named apten.duckdb would be catalog `apten`, clashing with schema `apten`.
    con = warehouse.connect(tmp_path / "data" / "apten.duckdb")
    warehouse.ensure_schema(con)
    warehouse.upsert(con, LEADS, [lead("a")])
    assert con.execute("SELECT lead_id FROM apten.leads").fetchall() == [("a",)]
    other = warehouse.connect(tmp_path / "data" / "apten.duckdb", read_only=True)
    assert other.execute("SELECT count(*) FROM apten.leads").fetchone() == (1,)
    other.close()
    con.close()


def test_closing_the_last_connection_releases_the_file_for_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "apten.duckdb"
    first, second = warehouse.connect(path), warehouse.connect(path)
    warehouse.ensure_schema(first)
    first.close()
    second.close()
    probe = f"import duckdb; duckdb.connect({str(path)!r}).close(); print('opened')"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "opened", result.stderr


def test_every_contract_column_exists_with_its_contract_name(con: duckdb.DuckDBPyConnection) -> None:
    for name, spec in TABLES.items():
        columns = [
            row[0]
            for row in con.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'apten' AND table_name = ? ORDER BY ordinal_position",
                [name],
            ).fetchall()
        ]
        assert columns == list(spec.column_names)
        assert columns[-1] == "_loaded_at"
        assert spec.primary_key == CONTRACT_KEYS[name]
        if name in CONTRACT_COLUMNS:
            assert columns == [*CONTRACT_COLUMNS[name], "_loaded_at"]
        assert all(column.description for column in spec.columns)


def test_json_and_timestamp_columns_have_duckdb_json_and_timestamptz_types(
    con: duckdb.DuckDBPyConnection,
) -> None:
    types = dict(
        con.execute(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'apten'"
        ).fetchall()
    )
    for column in ("leads.raw", "leads.tags", "leads.additional_info", "call_events.data", "calls.raw"):
        assert types[column] == "JSON"
    for column in (
        "leads.created_at",
        "call_events.occurred_at",
        "calls.last_fetched_at",
        "calls._loaded_at",
    ):
        assert types[column] == "TIMESTAMP WITH TIME ZONE"


def test_ensure_schema_adds_columns_missing_from_an_older_table(tmp_path: Path) -> None:
    con = warehouse.connect(tmp_path / "old.duckdb")
    con.execute("CREATE SCHEMA apten")
    con.execute("CREATE TABLE apten.leads (lead_id VARCHAR, first_name VARCHAR)")
    con.execute("INSERT INTO apten.leads VALUES ('room_abc', 'John')")
    warehouse.ensure_schema(con)
    columns = [
        name
        for (name,) in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'apten' AND table_name = 'leads'"
        ).fetchall()
    ]
    assert set(columns) == set(LEADS.column_names)
    assert con.execute(f"SELECT first_name FROM {ref(con, 'leads')}").fetchall() == [("John",)]
    con.close()


def test_upsert_counts_inserted_updated_unchanged_and_keeps_loaded_at_of_unchanged(
    con: duckdb.DuckDBPyConnection,
) -> None:
    first = warehouse.upsert(con, LEADS, [lead("a"), lead("b"), lead("c")], now=T0)
    assert first == UpsertCounts(inserted=3, updated=0, unchanged=0)

    later = T0 + timedelta(hours=1)
    second = warehouse.upsert(con, LEADS, [lead("a"), lead("b", isHot=True), lead("d")], now=later)
    assert second == UpsertCounts(inserted=1, updated=1, unchanged=1)
    assert loaded_at(con, "leads", "lead_id") == {"a": T0, "b": later, "c": T0, "d": later}
    assert con.execute(f"SELECT is_hot FROM {ref(con, 'leads')} WHERE lead_id = 'b'").fetchall() == [(True,)]


def test_upsert_twice_leaves_an_identical_table(con: duckdb.DuckDBPyConnection) -> None:
    rows = [lead(f"lead-{i}", summary=None if i % 3 else "s") for i in range(50)]
    warehouse.upsert(con, LEADS, rows, now=T0)
    before = table(con, "leads", "lead_id")
    counts = warehouse.upsert(con, LEADS, rows, now=T0 + timedelta(days=1))
    assert counts == UpsertCounts(inserted=0, updated=0, unchanged=50)
    assert table(con, "leads", "lead_id") == before


def test_json_columns_round_trip_unicode_and_nested_values(con: duckdb.DuckDBPyConnection) -> None:
    warehouse.upsert(con, LEADS, [lead("a", additionalInfo={"ключ": ["v", 1, None]}, weird=float("nan"))])
    info, raw = con.execute(f"SELECT additional_info, raw FROM {ref(con, 'leads')}").fetchone()
    assert json.loads(info) == {"ключ": ["v", 1, None]}
    assert json.loads(raw)["weird"] is None  # NaN is not JSON; stored as null
    assert con.execute(f"SELECT raw->>'$.firstName' FROM {ref(con, 'leads')}").fetchone() == ("John",)


def test_late_arriving_field_is_never_set_back_to_null(con: duckdb.DuckDBPyConnection) -> None:
    body = {**CALL_BODY, "answeredBy": "human", "transferNumber": "+14153750579"}
    warehouse.upsert(con, CALLS, [call_rows(Call.from_json(body), T0).call], now=T0)
    later = dict(CALL_BODY, callStatus="COMPLETE_LATER")  # the later body lacks the late fields
    counts = warehouse.upsert(con, CALLS, [call_rows(Call.from_json(later), T0 + timedelta(minutes=5)).call])
    assert counts.updated == 1
    row = con.execute(f"SELECT answered_by, transfer_number, call_status FROM {ref(con, 'calls')}").fetchone()
    assert row == ("human", "+14153750579", "COMPLETE_LATER")


def test_keep_existing_when_null_protects_extra_columns(con: duckdb.DuckDBPyConnection) -> None:
    warehouse.upsert(con, LEADS, [lead("a", isHot=True)], now=T0)
    without_flag = lead("a", isHot=True) | {"is_hot": None}
    counts = warehouse.upsert(
        con, LEADS, [without_flag], keep_existing_when_null=["is_hot"], now=T0 + timedelta(hours=1)
    )
    assert counts.unchanged == 1
    assert con.execute(f"SELECT is_hot, _loaded_at FROM {ref(con, 'leads')}").fetchone() == (True, T0)
    with pytest.raises(ValueError, match="no columns"):
        warehouse.upsert(con, LEADS, [lead("a")], keep_existing_when_null=["nope"])


def test_staging_duplicates_are_deduped_last_one_wins(con: duckdb.DuckDBPyConnection) -> None:
    rows = [
        lead("a", firstName="first"),
        lead("b"),
        lead("a", firstName="second"),
        lead("a", firstName="third"),
    ]
    counts = warehouse.upsert(con, LEADS, rows, now=T0)
    assert counts == UpsertCounts(inserted=2, updated=0, unchanged=0, duplicates=2)
    assert table(con, "leads", "lead_id")[0][1] == "third"
    assert warehouse.duplicate_keys(con, LEADS) == 0


def test_rows_without_a_primary_key_or_with_unknown_columns_are_refused(
    con: duckdb.DuckDBPyConnection,
) -> None:
    with pytest.raises(ValueError, match="NULL primary key"):
        warehouse.upsert(con, LEADS, [lead("a"), {"lead_id": None, "first_name": "x"}])
    with pytest.raises(ValueError, match="no columns"):
        warehouse.upsert(con, LEADS, [{"lead_id": "a", "firstName": "camel"}])
    assert con.execute(f"SELECT count(*) FROM {ref(con, 'leads')}").fetchone() == (0,)
    temp_tables = con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()
    assert temp_tables == (0,)


def test_call_fetch_bookkeeping_counts_attempts_without_counting_an_update(
    con: duckdb.DuckDBPyConnection,
) -> None:
    call = Call.from_json({k: v for k, v in CALL_BODY.items() if k != "summary"})
    assert warehouse.upsert(con, CALLS, [call_rows(call, T0).call], now=T0).inserted == 1
    later = T0 + timedelta(minutes=5)
    counts = warehouse.upsert(con, CALLS, [call_rows(call, later).call], now=later)
    assert counts == UpsertCounts(unchanged=1)
    row = con.execute(
        "SELECT summary_status, first_fetched_at, last_fetched_at, fetch_attempts, turn_count, _loaded_at "
        f"FROM {ref(con, 'calls')}"
    ).fetchone()
    assert row == ("pending", T0, later, 2, 3, T0)


def test_summary_arrival_and_not_found_keep_what_is_known(con: duckdb.DuckDBPyConnection) -> None:
    pending = Call.from_json({k: v for k, v in CALL_BODY.items() if k != "summary"})
    warehouse.upsert(con, CALLS, [call_rows(pending, T0).call], now=T0)
    ready_rows = call_rows(Call.from_json(CALL_BODY), T0 + timedelta(minutes=10))
    assert ready_rows.summary is not None
    assert ready_rows.summary["summary_latency_seconds"] == pytest.approx(
        (T0 + timedelta(minutes=10) - datetime(2026, 6, 15, 14, 32, 25, tzinfo=UTC)).total_seconds()
    )
    assert warehouse.upsert(con, CALLS, [ready_rows.call]).updated == 1
    assert warehouse.upsert(con, CALL_SUMMARIES, [ready_rows.summary]).inserted == 1
    # Seen again later: first-seen time and latency stay those of the first sighting.
    again = call_rows(Call.from_json(CALL_BODY), T0 + timedelta(hours=2))
    assert warehouse.upsert(con, CALL_SUMMARIES, [again.summary]).unchanged == 1
    first_seen = con.execute(f"SELECT summary_first_seen_at FROM {ref(con, 'call_summaries')}").fetchone()
    assert first_seen == (T0 + timedelta(minutes=10),)

    warehouse.upsert(con, CALLS, [not_found_call_row("call-1", T0 + timedelta(hours=3))])
    row = con.execute(
        f"SELECT summary_status, turn_count, call_status, raw->>'$.id' FROM {ref(con, 'calls')}"
    ).fetchone()
    assert row == ("not_found", 3, "COMPLETE", "call-1")


def test_summary_status_outside_the_contract_values_is_refused(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ValueError, match="summary_status"):
        call_rows(Call.from_json(CALL_BODY), T0, summary_status="done")
    row = call_rows(Call.from_json(CALL_BODY), T0).call | {"summary_status": "done"}
    with pytest.raises(duckdb.ConstraintException):
        warehouse.upsert(con, CALLS, [row])


def test_replace_children_leaves_no_stale_turns(con: duckdb.DuckDBPyConnection) -> None:
    first = Call.from_json(CALL_BODY)
    other = Call.from_json({**CALL_BODY, "id": "call-2"})
    counts = warehouse.replace_children(
        con,
        CALL_TRANSCRIPT_TURNS,
        "call_id",
        ["call-1", "call-2"],
        turn_rows(first) + turn_rows(other),
        now=T0,
    )
    assert (counts.parents_replaced, counts.inserted) == (2, 6)

    revised = Call.from_json({**CALL_BODY, "transcript": [{"role": "user", "content": "Only this"}]})
    later = T0 + timedelta(hours=1)
    counts = warehouse.replace_children(
        con, CALL_TRANSCRIPT_TURNS, "call_id", ["call-1"], turn_rows(revised), now=later
    )
    assert (counts.parents_replaced, counts.deleted, counts.inserted) == (1, 3, 1)
    rows = con.execute(
        f"SELECT call_id, turn_index, content FROM {ref(con, 'call_transcript_turns')} ORDER BY ALL"
    ).fetchall()
    assert rows == [
        ("call-1", 0, "Only this"),
        ("call-2", 0, "Hi"),
        ("call-2", 1, "Hello"),
        ("call-2", 2, "Bye"),
    ]

    emptied = Call.from_json({**CALL_BODY, "transcript": []})
    counts = warehouse.replace_children(con, CALL_TRANSCRIPT_TURNS, "call_id", ["call-1"], turn_rows(emptied))
    assert (counts.deleted, counts.inserted) == (1, 0)
    assert con.execute(f"SELECT DISTINCT call_id FROM {ref(con, 'call_transcript_turns')}").fetchall() == [
        ("call-2",)
    ]


def test_replace_children_skips_parents_whose_turns_are_identical(con: duckdb.DuckDBPyConnection) -> None:
    call = Call.from_json(CALL_BODY)
    warehouse.replace_children(con, CALL_TRANSCRIPT_TURNS, "call_id", ["call-1"], turn_rows(call), now=T0)
    before = table(con, "call_transcript_turns", "turn_index")
    counts = warehouse.replace_children(
        con,
        CALL_TRANSCRIPT_TURNS,
        "call_id",
        ["call-1", "never-had-turns"],
        turn_rows(call),
        now=T0 + timedelta(1),
    )
    assert (counts.parents, counts.parents_replaced, counts.parents_unchanged) == (2, 0, 2)
    assert table(con, "call_transcript_turns", "turn_index") == before


def test_replace_children_refuses_rows_of_unlisted_parents(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ValueError, match="not in parent_ids"):
        warehouse.replace_children(
            con, CALL_TRANSCRIPT_TURNS, "call_id", ["call-2"], turn_rows(Call.from_json(CALL_BODY))
        )


def test_failed_transaction_leaves_the_previous_state(con: duckdb.DuckDBPyConnection) -> None:
    warehouse.upsert(con, LEADS, [lead("a")], now=T0)
    before = table(con, "leads", "lead_id")
    with pytest.raises(RuntimeError, match="boom"), warehouse.transaction(con):
        warehouse.upsert(con, LEADS, [lead("a", firstName="changed"), lead("b")])
        warehouse.replace_children(con, CALL_TRANSCRIPT_TURNS, "call_id", ["call-1"], [])
        raise RuntimeError("boom")
    assert table(con, "leads", "lead_id") == before
    bad = call_rows(Call.from_json(CALL_BODY), T0).call | {"summary_status": "done"}
    with pytest.raises(duckdb.ConstraintException), warehouse.transaction(con):
        warehouse.upsert(con, LEADS, [lead("c")])
        warehouse.upsert(con, CALLS, [bad])
    assert table(con, "leads", "lead_id") == before
    assert warehouse.upsert(con, LEADS, [lead("c")]).inserted == 1  # the connection is usable again


def test_process_killed_mid_write_leaves_the_last_committed_state(tmp_path: Path) -> None:
    path = tmp_path / "apten.duckdb"
    con = warehouse.connect(path)
    warehouse.ensure_schema(con)
    warehouse.upsert(con, LEADS, [lead("a")], now=T0)
    before = table(con, "leads", "lead_id")
    con.close()
    script = textwrap.dedent(
        f"""
        import os
        from apten_assets.lib import warehouse
        from apten_assets.lib.tables import LEADS
        con = warehouse.connect({str(path)!r})
        with warehouse.transaction(con):
            warehouse.upsert(con, LEADS, [{{"lead_id": "a", "first_name": "half"}}, {{"lead_id": "b"}}])
            os._exit(9)  # killed before COMMIT
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == 9, result.stderr.decode()
    con = warehouse.connect(path)
    assert table(con, "leads", "lead_id") == before
    con.close()


def test_batches_written_one_connection_after_another_keep_small_row_groups(tmp_path: Path) -> None:
    # With DuckDB's default (122,880 rows), each checkpoint merged the small row groups of earlier
    # batches again, rewriting their raw JSON: write time per call grew with the table.
    path = tmp_path / "apten.duckdb"
    for batch in range(3):
        con = warehouse.connect(path)
        warehouse.ensure_schema(con)
        bodies = [{**CALL_BODY, "id": f"call-{batch}-{i}"} for i in range(1500)]
        warehouse.upsert(con, CALLS, [call_rows(Call.from_json(body), T0).call for body in bodies])
        con.close()  # the last connection checkpoints
    con = warehouse.connect(path, read_only=True)
    storage = f"pragma_storage_info('{warehouse.CATALOG}.apten.calls')"
    ((groups, largest, rows),) = con.execute(
        "SELECT count(*), max(n), sum(n) FROM (SELECT row_group_id, sum(count) AS n "
        f"FROM {storage} WHERE column_id = 0 AND segment_type <> 'VALIDITY' GROUP BY ALL)"
    ).fetchall()
    con.close()
    assert rows == 4500
    assert largest <= warehouse.ROW_GROUP_SIZE and groups >= 3


def test_json_documents_are_stored_with_zstd(tmp_path: Path) -> None:
    # FSST, which DuckDB picks by itself for long strings, made compressing calls.raw most of the
    # cost of each batch's checkpoint.
    path = tmp_path / "apten.duckdb"
    con = warehouse.connect(path)
    warehouse.ensure_schema(con)
    bodies = [{**CALL_BODY, "id": f"call-{i}"} for i in range(500)]
    warehouse.upsert(con, CALLS, [call_rows(Call.from_json(body), T0).call for body in bodies])
    con.execute("CHECKPOINT")
    storage = f"pragma_storage_info('{warehouse.CATALOG}.apten.calls')"
    methods = con.execute(
        f"SELECT DISTINCT compression FROM {storage} WHERE column_name = 'raw' AND segment_type <> 'VALIDITY'"
    ).fetchall()
    con.close()
    assert methods == [("ZSTD",)]


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        import sys, time, duckdb
        con = duckdb.connect({str(path)!r})
        print("locked", flush=True)
        time.sleep({seconds})
        con.close()
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_connect_to_a_file_locked_by_another_process_raises_warehouse_busy(tmp_path: Path) -> None:
    path = tmp_path / "apten.duckdb"
    holder = _hold_write_lock(path, 60)
    try:
        started = time.monotonic()
        with pytest.raises(WarehouseBusy, match="locked by another process") as caught:
            warehouse.connect(path, timeout_seconds=0.5)
        assert time.monotonic() - started < 5
        assert str(path) in str(caught.value)
        with pytest.raises(WarehouseBusy):
            warehouse.connect(path, read_only=True, timeout_seconds=0.2)
    finally:
        holder.kill()
        holder.wait()


def test_connect_waits_for_a_lock_that_is_released_in_time(tmp_path: Path) -> None:
    path = tmp_path / "apten.duckdb"
    holder = _hold_write_lock(path, 1.0)
    try:
        con = warehouse.connect(path, timeout_seconds=30)
        warehouse.ensure_schema(con)
        con.close()
    finally:
        holder.kill()
        holder.wait()


def test_sync_state_round_trips(con: duckdb.DuckDBPyConnection) -> None:
    assert warehouse.get_sync_state(con, "leads.updated_since") is None
    warehouse.set_sync_state(con, "leads.updated_since", "2026-05-14T15:30:00.000Z")
    warehouse.set_sync_state(con, "leads.updated_since", "2026-05-15T00:00:00.000Z")
    assert warehouse.get_sync_state(con, "leads.updated_since") == "2026-05-15T00:00:00.000Z"


def test_calls_needing_fetch_picks_missing_pending_in_progress_and_changed_calls(
    con: duckdb.DuckDBPyConnection,
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
    warehouse.upsert(con, CALL_EVENTS, event_rows)
    fetched = day + timedelta(hours=12)

    def fetched_call(call_id: str, **changes: object) -> dict:
        body = {**CALL_BODY, "id": call_id, **changes}
        return call_rows(Call.from_json(body), fetched).call

    warehouse.upsert(
        con,
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
    assert warehouse.calls_needing_fetch(con, day, day + timedelta(days=1), now) == [
        "missing-row",
        "pending",
        "in-progress",
        "changed-event",
    ]
    assert warehouse.calls_needing_fetch(
        con, day, day + timedelta(days=1), now, recheck_after=timedelta(hours=1)
    ) == [
        "missing-row",
        "changed-event",
    ]


def test_pending_calls_give_the_partition_and_fetch_history(con: duckdb.DuckDBPyConnection) -> None:
    late_evening = datetime(2026, 6, 15, 23, 30, tzinfo=UTC)
    warehouse.upsert(con, CALL_EVENTS, [call_event_row(Event.from_json(call_event("call-1", late_evening)))])
    body = {k: v for k, v in CALL_BODY.items() if k != "summary"}
    webchat = {**body, "id": "webchat-1", "sessionId": "s-1", "createdAt": "2026-06-16T08:00:00Z"}
    del webchat["leadId"]
    warehouse.upsert(con, CALLS, [call_rows(Call.from_json(body), T0).call], now=T0)
    warehouse.upsert(con, CALLS, [call_rows(Call.from_json(body), T0 + timedelta(minutes=5)).call])
    warehouse.upsert(con, CALLS, [call_rows(Call.from_json(webchat), T0 + timedelta(minutes=1)).call])
    warehouse.upsert(con, CALLS, [call_rows(Call.from_json({**CALL_BODY, "id": "done"}), T0).call])

    pending = warehouse.pending_calls(con)
    assert [p.call_id for p in pending] == ["webchat-1", "call-1"]
    webchat_call, call = pending
    assert webchat_call.partition_date == date(2026, 6, 16)
    assert call.partition_date == date(2026, 6, 15)
    assert call.fetch_attempts == 2
    assert call.last_fetched_at == T0 + timedelta(minutes=5)
    assert call.created_at == datetime(2026, 6, 15, 14, 30, tzinfo=UTC)
    assert call.ended_at == datetime(2026, 6, 15, 14, 32, 25, tzinfo=UTC)


def test_upsert_of_many_transcript_turns_is_fast(con: duckdb.DuckDBPyConnection) -> None:
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
    counts = warehouse.upsert(con, CALL_TRANSCRIPT_TURNS, rows)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = warehouse.upsert(con, CALL_TRANSCRIPT_TURNS, rows)
    second = time.perf_counter() - started
    print(f"\nupsert {n:,} turn rows: {first:.2f}s new, {second:.2f}s unchanged")
    assert counts.inserted == n and again.unchanged == n


HOSTILE_TRANSCRIPTS = {
    "ordinary": [turn("assistant", "Hi", "2026-06-15T14:30:01.000Z", "2026-06-15T14:30:05.000Z")],
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
}


def test_turns_read_in_duckdb_match_the_python_model_on_hostile_transcripts(
    con: duckdb.DuckDBPyConnection,
) -> None:
    written = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    bodies = {
        f"call_{name}": {"id": f"call_{name}", "transcript": transcript}
        for name, transcript in HOSTILE_TRANSCRIPTS.items()
    }
    rows = [warehouse_call_row(body, written) for body in bodies.values()]

    calls, counts = warehouse.upsert_calls(con, rows, now=written)

    expected = sorted(
        (r["call_id"], r["turn_index"], r["role"], r["content"], r["start_time"], r["end_time"])
        for body in bodies.values()
        for r in turn_rows(Call.from_json(body))
    )
    stored = table(con, "call_transcript_turns", "call_id, turn_index")
    assert [row[:6] for row in stored] == expected
    assert calls.inserted == len(bodies)
    assert counts.parents_replaced == len(bodies)
    assert counts.inserted == len(expected)

    # The same transcripts read again for calls stored before: compared, found equal, kept.
    later = written + timedelta(minutes=5)
    again = [warehouse_call_row({**body, "summary": "late"}, later) for body in bodies.values()]
    calls, counts = warehouse.upsert_calls(con, again, now=later)
    assert calls.updated == len(bodies)
    assert (counts.parents, counts.parents_replaced, counts.deleted) == (len(bodies), 0, 0)
    assert table(con, "call_transcript_turns", "call_id, turn_index") == stored


def test_turns_read_in_duckdb_keep_rows_of_calls_whose_transcript_did_not_change(
    con: duckdb.DuckDBPyConnection,
) -> None:
    first = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    body = {"id": "c1", "transcript": HOSTILE_TRANSCRIPTS["ordinary"]}
    warehouse.upsert_calls(con, [warehouse_call_row(body, first)], now=first)

    later = first + timedelta(minutes=5)
    with_summary = {**body, "summary": "arrived late"}
    _, unchanged = warehouse.upsert_calls(con, [warehouse_call_row(with_summary, later)], now=later)
    revised = {**with_summary, "transcript": []}
    _, empty = warehouse.upsert_calls(con, [warehouse_call_row(revised, later + timedelta(minutes=5))])

    assert (unchanged.parents, unchanged.parents_replaced) == (1, 0)
    assert (empty.parents, empty.deleted) == (0, 0)
    assert loaded_at(con, "call_transcript_turns", "call_id") == {"c1": first}


def warehouse_call_row(body: dict, fetched_at: datetime) -> dict:
    return call_rows(Call.from_json(body), fetched_at).call


def test_turns_read_in_duckdb_replace_a_revised_transcript_without_stale_turns(
    con: duckdb.DuckDBPyConnection,
) -> None:
    first = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    three = [turn("user", f"t{i}", "2026-06-15T14:30:01Z", "2026-06-15T14:30:02Z") for i in range(3)]
    body = {"id": "c1", "transcript": three}
    warehouse.upsert_calls(con, [warehouse_call_row(body, first)], now=first)

    later = first + timedelta(minutes=5)
    only = turn("assistant", "only", "2026-06-15T14:30:01Z", "2026-06-15T14:30:02Z")
    revised = {**body, "transcript": [only]}
    _, counts = warehouse.upsert_calls(con, [warehouse_call_row(revised, later)], now=later)

    stored = table(con, "call_transcript_turns", "turn_index")
    assert [(row[1], row[2], row[3]) for row in stored] == [(0, "assistant", "only")]
    assert (counts.parents_replaced, counts.deleted, counts.inserted) == (1, 3, 1)


def test_one_batch_of_new_revised_unchanged_and_missing_calls_writes_each_its_own_way(
    con: duckdb.DuckDBPyConnection,
) -> None:
    # New calls skip the comparison with stored turns; stored ones are compared; a 404 never
    # touches turns. Mixed in one batch, each call must still end as if written alone.
    first = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)
    two = [turn("user", f"t{i}", "2026-06-15T14:30:01Z", "2026-06-15T14:30:02Z") for i in range(2)]
    stored = {name: {"id": name, "transcript": two} for name in ("revised", "unchanged", "gone")}
    warehouse.upsert_calls(con, [warehouse_call_row(body, first) for body in stored.values()], now=first)

    later = first + timedelta(minutes=5)
    batch = [
        warehouse_call_row({"id": "new", "transcript": two + two}, later),
        warehouse_call_row({"id": "revised", "transcript": two[:1]}, later),
        warehouse_call_row({"id": "unchanged", "transcript": two, "summary": "late"}, later),
        not_found_call_row("gone", later),
    ]
    calls, counts = warehouse.upsert_calls(con, batch, now=later)

    assert (calls.inserted, calls.updated, calls.unchanged) == (1, 3, 0)
    assert (counts.parents, counts.parents_replaced, counts.parents_unchanged) == (3, 2, 1)
    assert (counts.deleted, counts.inserted) == (2, 5)
    per_call = "SELECT call_id, count(*), max(_loaded_at) FROM {} GROUP BY 1 ORDER BY 1"
    turns = con.execute(per_call.format(ref(con, "call_transcript_turns"))).fetchall()
    assert turns == [("gone", 2, first), ("new", 4, later), ("revised", 1, later), ("unchanged", 2, first)]
    assert warehouse.duplicate_keys(con, CALL_TRANSCRIPT_TURNS) == 0
