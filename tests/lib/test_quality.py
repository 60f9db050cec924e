"""Data-quality rules on a real DuckDB file: the edge cases the asset checks rely on."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from apten_assets.lib import quality
from apten_assets.lib.tables import CALL_SUMMARIES, CALL_TRANSCRIPT_TURNS, LEADS
from apten_assets.lib.warehouse import connect, ensure_schema

NOW = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(tmp_path / "quality.duckdb")
    ensure_schema(connection)
    yield connection
    connection.close()


def _turns(con: duckdb.DuckDBPyConnection, call_id: str, indexes: list[int]) -> None:
    for index in indexes:
        con.execute(
            "INSERT INTO apten.call_transcript_turns (call_id, turn_index, _loaded_at) VALUES (?, ?, now())",
            [call_id, index],
        )


def _call(con: duckdb.DuckDBPyConnection, call_id: str, status: str | None, ended_hours_ago: float) -> None:
    con.execute(
        "INSERT INTO apten.calls (call_id, summary_status, created_at, duration_seconds, _loaded_at) "
        "VALUES (?, ?, ?, 60, now())",
        [call_id, status, NOW - timedelta(hours=ended_hours_ago, seconds=60)],
    )


def test_every_rule_passes_on_empty_tables(con: duckdb.DuckDBPyConnection) -> None:
    findings = [
        quality.unique_primary_key(con, LEADS),
        quality.turns_contiguous(con),
        quality.children_have_stored_call(con, CALL_SUMMARIES),
        quality.summary_coverage(con, timedelta(hours=72), NOW),
        quality.summary_status_allowed(con),
    ]
    assert all(finding.passed for finding in findings)


def test_turn_indexes_must_start_at_zero_without_gaps_or_repeats(con: duckdb.DuckDBPyConnection) -> None:
    _turns(con, "ok", [0, 1, 2])
    _turns(con, "starts_at_one", [1, 2])
    _turns(con, "gap", [0, 2])
    _turns(con, "repeat", [0, 0, 1])

    finding = quality.turns_contiguous(con)

    assert not finding.passed
    assert finding.metadata["calls_with_turns"] == 4
    assert [call["call_id"] for call in finding.metadata["sample_broken_calls"]] == [
        "gap",
        "repeat",
        "starts_at_one",
    ]


def test_composite_key_duplicates_are_reported_by_key(con: duckdb.DuckDBPyConnection) -> None:
    _turns(con, "c1", [0, 1, 1, 1])

    finding = quality.unique_primary_key(con, CALL_TRANSCRIPT_TURNS)

    assert not finding.passed
    assert finding.metadata["duplicated_keys"] == 1
    assert finding.metadata["rows_with_duplicated_keys"] == 3
    assert finding.metadata["sample_duplicated_keys"] == [{"call_id": "c1", "turn_index": 1, "rows": 3}]


def test_coverage_counts_only_calls_past_the_window_and_leaves_out_not_found(
    con: duckdb.DuckDBPyConnection,
) -> None:
    _call(con, "old_ready", "ready", 100)
    _call(con, "old_missing", "missing", 100)
    _call(con, "old_pending", "pending", 100)
    _call(con, "old_not_found", "not_found", 100)
    _call(con, "recent_pending", "pending", 1)

    finding = quality.summary_coverage(con, timedelta(hours=72), NOW)

    assert not finding.passed
    assert finding.metadata["calls_past_give_up_window"] == 3
    assert finding.metadata["calls_still_pending"] == 1
    assert finding.metadata["sample_still_pending_call_ids"] == ["old_pending"]
    assert finding.metadata["summary_coverage_ratio"] == pytest.approx(1 / 3, abs=1e-4)


def test_coverage_passes_when_old_calls_are_settled(con: duckdb.DuckDBPyConnection) -> None:
    _call(con, "old_ready", "ready", 100)
    _call(con, "old_missing", "missing", 100)
    _call(con, "recent_pending", "pending", 1)

    finding = quality.summary_coverage(con, timedelta(hours=72), NOW)

    assert finding.passed
    assert finding.metadata["summary_coverage_ratio"] == 0.5


def test_null_summary_status_is_not_allowed(con: duckdb.DuckDBPyConnection) -> None:
    _call(con, "fine", "ready", 1)
    _call(con, "unset", None, 1)

    finding = quality.summary_status_allowed(con)

    assert not finding.passed
    assert finding.metadata["calls_by_status"] == {"NULL": 1, "ready": 1}
    assert finding.metadata["sample_call_ids"] == ["unset"]
