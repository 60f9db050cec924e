"""Data-quality rules over the warehouse tables, as plain queries (the asset checks call these).

Each rule returns a `Finding`: whether the data passes, the counts behind the verdict and a few
offending ids, so whoever reads the result can go straight to the bad rows. Rules assume the
schema exists (`ensure_schema`); empty tables pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from apten_assets.lib.tables import (
    CALL_EVENTS,
    CALL_TRANSCRIPT_TURNS,
    CALLS,
    SUMMARY_STATUSES,
    TableSpec,
)

SAMPLE_SIZE = 10
BROKEN_TURNS_COLUMNS = ("call_id", "turns", "distinct_indexes", "first_index", "last_index")


@dataclass(frozen=True)
class Finding:
    """The verdict of one rule. `metadata` holds counts (ints/floats) and samples (lists of ids)."""

    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> int:
    return int(con.execute(sql, params).fetchone()[0])


def unique_primary_key(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> Finding:
    """No primary-key value occurs twice (the tables declare no PK constraint; writers keep it)."""
    key = ", ".join(_quote(name) for name in spec.primary_key)
    table = spec.qualified_name
    duplicated = f"SELECT {key}, count(*) AS n FROM {table} GROUP BY {key} HAVING count(*) > 1"
    keys, rows = con.execute(f"SELECT count(*), COALESCE(sum(n), 0) FROM ({duplicated})").fetchone()
    sample = con.execute(f"{duplicated} ORDER BY n DESC, {key} LIMIT {SAMPLE_SIZE}").fetchall()
    return Finding(
        passed=keys == 0,
        metadata={
            "row_count": _count(con, f"SELECT count(*) FROM {table}"),
            "primary_key": ", ".join(spec.primary_key),
            "duplicated_keys": int(keys),
            "rows_with_duplicated_keys": int(rows),
            "sample_duplicated_keys": [
                {**dict(zip(spec.primary_key, row[:-1], strict=True)), "rows": row[-1]} for row in sample
            ],
        },
    )


def turns_contiguous(con: duckdb.DuckDBPyConnection) -> Finding:
    """Each call's `turn_index` values are exactly 0, 1, ..., n-1: no gap, no repeat, no offset."""
    per_call = (
        "SELECT call_id, count(*) AS turns, count(DISTINCT turn_index) AS distinct_indexes, "
        "min(turn_index) AS first_index, max(turn_index) AS last_index "
        f"FROM {CALL_TRANSCRIPT_TURNS.qualified_name} GROUP BY call_id"
    )
    broken = (
        f"SELECT * FROM ({per_call}) "
        "WHERE first_index <> 0 OR last_index <> turns - 1 OR distinct_indexes <> turns"
    )
    sample = con.execute(f"{broken} ORDER BY call_id LIMIT {SAMPLE_SIZE}").fetchall()
    bad = _count(con, f"SELECT count(*) FROM ({broken})")
    return Finding(
        passed=bad == 0,
        metadata={
            "calls_with_turns": _count(con, f"SELECT count(*) FROM ({per_call})"),
            "calls_with_broken_turn_indexes": bad,
            "sample_broken_calls": [dict(zip(BROKEN_TURNS_COLUMNS, row, strict=True)) for row in sample],
        },
    )


def children_have_stored_call(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> Finding:
    """Every row of `spec` (summaries, turns) belongs to a call in `apten.calls`."""
    orphans = (
        f"FROM {spec.qualified_name} AS t WHERE NOT EXISTS "
        f"(SELECT 1 FROM {CALLS.qualified_name} AS c WHERE c.call_id = t.call_id)"
    )
    rows, calls = con.execute(f"SELECT count(*), count(DISTINCT t.call_id) {orphans}").fetchone()
    sample = con.execute(f"SELECT DISTINCT t.call_id {orphans} ORDER BY 1 LIMIT {SAMPLE_SIZE}").fetchall()
    return Finding(
        passed=rows == 0,
        metadata={
            "row_count": _count(con, f"SELECT count(*) FROM {spec.qualified_name}"),
            "orphan_rows": int(rows),
            "orphan_call_ids": int(calls),
            "sample_orphan_call_ids": [call_id for (call_id,) in sample],
        },
    )


def summary_coverage(
    con: duckdb.DuckDBPyConnection, give_up_after: timedelta, now: datetime | None = None
) -> Finding:
    """Calls that ended longer than `give_up_after` ago are settled: `ready` or `missing`, never
    still `pending` (that would mean nobody asked Apten again). Reports the share with a summary.

    A call ends at `created_at + duration_seconds`, else `created_at`, else its CALL event time;
    `not_found` calls have nothing to summarise and are left out.
    """
    cutoff = (now or datetime.now(UTC)) - give_up_after
    settled = (
        "SELECT c.call_id, c.summary_status, COALESCE("
        "c.created_at + to_microseconds(CAST(round(c.duration_seconds * 1e6) AS BIGINT)), "
        "c.created_at, e.occurred_at) AS ended_at "
        f"FROM {CALLS.qualified_name} AS c LEFT JOIN {CALL_EVENTS.qualified_name} AS e USING (call_id)"
    )
    due = f"FROM ({settled}) WHERE ended_at < ?::TIMESTAMPTZ AND summary_status IS DISTINCT FROM 'not_found'"
    total, ready, missing, pending = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE summary_status = 'ready'), "
        "count(*) FILTER (WHERE summary_status = 'missing'), "
        f"count(*) FILTER (WHERE summary_status = 'pending') {due}",
        [cutoff],
    ).fetchone()
    sample = con.execute(
        f"SELECT call_id {due} AND summary_status = 'pending' ORDER BY ended_at, call_id LIMIT {SAMPLE_SIZE}",
        [cutoff],
    ).fetchall()
    metadata: dict[str, Any] = {
        "give_up_hours": round(give_up_after.total_seconds() / 3600, 2),
        "calls_past_give_up_window": int(total),
        "calls_with_summary": int(ready),
        "calls_missing_summary": int(missing),
        "calls_still_pending": int(pending),
        "sample_still_pending_call_ids": [call_id for (call_id,) in sample],
    }
    if total:
        metadata["summary_coverage_ratio"] = round(ready / total, 4)
    return Finding(passed=pending == 0, metadata=metadata)


def summary_status_allowed(con: duckdb.DuckDBPyConnection) -> Finding:
    """`calls.summary_status` is one of ready | pending | missing | not_found (NULL is not)."""
    by_status = con.execute(
        f"SELECT summary_status, count(*) FROM {CALLS.qualified_name} GROUP BY 1 ORDER BY 1 NULLS FIRST"
    ).fetchall()
    not_allowed = "summary_status IS NULL OR summary_status NOT IN (SELECT unnest(?::VARCHAR[]))"
    sample = con.execute(
        f"SELECT call_id FROM {CALLS.qualified_name} WHERE {not_allowed} "
        f"ORDER BY call_id LIMIT {SAMPLE_SIZE}",
        [list(SUMMARY_STATUSES)],
    ).fetchall()
    bad = sum(n for status, n in by_status if status not in SUMMARY_STATUSES)
    return Finding(
        passed=bad == 0,
        metadata={
            "allowed_values": " | ".join(SUMMARY_STATUSES),
            "calls_by_status": {"NULL" if status is None else status: n for status, n in by_status},
            "calls_with_status_not_allowed": bad,
            "sample_call_ids": [call_id for (call_id,) in sample],
        },
    )
