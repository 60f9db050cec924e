"""The store's data-quality rules on every backend: the edge cases the asset checks rely on."""

from datetime import UTC, datetime, timedelta

import pytest

from apten_assets.lib.tables import CALL_SUMMARIES, CALL_TRANSCRIPT_TURNS, LEADS
from apten_assets.warehouse import Store
from tests.warehouse.helpers import query

# PostgreSQL declares the primary keys, but for the turns' (a hash index on call_id instead);
# DuckDB declares none (its ART index made rewrites slow). Writers keep those keys unique.
KEYS_ARE_CONSTRAINTS = {"duckdb": False, "postgresql": True}
NOW = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)


def _turns(store: Store, call_id: str, indexes: list[int]) -> None:
    for index in indexes:
        query(
            store,
            "INSERT INTO apten.call_transcript_turns (call_id, turn_index, _loaded_at) VALUES (?, ?, now())",
            [call_id, index],
        )


def _call(store: Store, call_id: str, status: str | None, ended_hours_ago: float) -> None:
    query(
        store,
        "INSERT INTO apten.calls (call_id, summary_status, created_at, duration_seconds, _loaded_at) "
        "VALUES (?, ?, ?, 60, now())",
        [call_id, status, NOW - timedelta(hours=ended_hours_ago, seconds=60)],
    )


def test_every_rule_passes_on_empty_tables(store: Store) -> None:
    findings = [
        store.unique_primary_key(LEADS),
        store.turns_contiguous(),
        store.children_have_stored_call(CALL_SUMMARIES),
        store.summary_coverage(timedelta(hours=72), NOW),
        store.summary_status_allowed(),
    ]
    assert all(finding.passed for finding in findings)


def test_turn_indexes_must_start_at_zero_without_gaps_or_repeats(store: Store) -> None:
    _turns(store, "ok", [0, 1, 2])
    _turns(store, "starts_at_one", [1, 2])
    _turns(store, "gap", [0, 2])
    _turns(store, "repeat", [0, 0, 1])
    broken = ["gap", "repeat", "starts_at_one"]

    finding = store.turns_contiguous()

    assert not finding.passed
    assert finding.metadata["calls_with_turns"] == len(broken) + 1
    assert [call["call_id"] for call in finding.metadata["sample_broken_calls"]] == broken


def test_a_backend_with_key_constraints_refuses_a_duplicate_key(store: Store) -> None:
    if not KEYS_ARE_CONSTRAINTS[store.backend]:
        pytest.skip("DuckDB declares no key constraint (the writers and unique_primary_key keep keys unique)")
    insert = "INSERT INTO apten.call_summaries (call_id, summary, _loaded_at) VALUES (?, ?, now())"
    query(store, insert, ["c1", "first"])
    with pytest.raises(Exception, match="duplicate key"):
        query(store, insert, ["c1", "second"])
    assert store.unique_primary_key(CALL_SUMMARIES).passed


def test_composite_key_duplicates_are_reported_by_key(store: Store) -> None:
    # The turns' key is a constraint on no backend: a stray duplicate is the check's to find.
    _turns(store, "c1", [0, 1, 1, 1])

    finding = store.unique_primary_key(CALL_TRANSCRIPT_TURNS)

    assert not finding.passed
    assert finding.metadata["duplicated_keys"] == 1
    assert finding.metadata["rows_with_duplicated_keys"] == 3
    assert finding.metadata["sample_duplicated_keys"] == [{"call_id": "c1", "turn_index": 1, "rows": 3}]


def test_coverage_counts_only_calls_past_the_window_and_leaves_out_not_found(
    store: Store,
) -> None:
    _call(store, "old_ready", "ready", 100)
    _call(store, "old_missing", "missing", 100)
    _call(store, "old_pending", "pending", 100)
    _call(store, "old_not_found", "not_found", 100)
    _call(store, "recent_pending", "pending", 1)

    finding = store.summary_coverage(timedelta(hours=72), NOW)

    assert not finding.passed
    assert finding.metadata["calls_past_give_up_window"] == 3
    assert finding.metadata["calls_still_pending"] == 1
    assert finding.metadata["sample_still_pending_call_ids"] == ["old_pending"]
    assert finding.metadata["summary_coverage_ratio"] == pytest.approx(1 / 3, abs=1e-4)


def test_coverage_passes_when_old_calls_are_settled(store: Store) -> None:
    _call(store, "old_ready", "ready", 100)
    _call(store, "old_missing", "missing", 100)
    _call(store, "recent_pending", "pending", 1)

    finding = store.summary_coverage(timedelta(hours=72), NOW)

    assert finding.passed
    assert finding.metadata["summary_coverage_ratio"] == 0.5


def test_null_summary_status_is_not_allowed(store: Store) -> None:
    _call(store, "fine", "ready", 1)
    _call(store, "unset", None, 1)

    finding = store.summary_status_allowed()

    assert not finding.passed
    assert finding.metadata["calls_by_status"] == {"NULL": 1, "ready": 1}
    assert finding.metadata["sample_call_ids"] == ["unset"]
