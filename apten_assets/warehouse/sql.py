"""`SqlStore`: the read queries DuckDB and PostgreSQL share, written once in the SQL both speak.

A backend subclass supplies the session (`_fetch`), table names (`_ref`) and the few expressions
the two dialects spell differently (`_seconds`, `_json_string`, `_json_text`). Parameters are
`?` placeholders; a backend whose driver wants another style rewrites them in `_fetch`. The writes
(staging, upserts, turn derivation) are each backend's own: they are where the engines differ.
A backend without these SQL features implements `Store` directly instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from apten_assets.lib.models import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, MAX_DURATION_SECONDS
from apten_assets.lib.tables import (
    CALL_EVENTS,
    CALL_SUMMARIES,
    CALL_TRANSCRIPT_TURNS,
    CALL_TRANSFERS,
    CALLS,
    ERASED_LEADS,
    LEAD_DATA,
    LEADS,
    REJECTED_RECORDS,
    SUMMARY_STATUSES,
    WEBHOOK_DELIVERIES,
    LeadData,
    TableSpec,
)
from apten_assets.warehouse.store import (
    PREVIEW_ROWS,
    SAMPLE_SIZE,
    CallEventFacts,
    CallTransferRecord,
    ColumnPage,
    DaySummary,
    Erasure,
    Finding,
    PendingCall,
    Preview,
    Store,
    TransferDelivery,
)

BROKEN_TURNS_COLUMNS = ("call_id", "turns", "distinct_indexes", "first_index", "last_index")
# Rows stored before the models bounded these values may still hold them; the read queries leave
# such values out rather than overflow on them.
_USABLE_DURATION = f"c.duration_seconds >= 0 AND c.duration_seconds <= {MAX_DURATION_SECONDS!r}"


def quote(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)


class SqlStore(Store):
    """The shared queries. Subclasses implement the writes and the hooks below."""

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run one statement with `?` parameters and return all its rows."""
        raise NotImplementedError

    def _ref(self, spec: TableSpec) -> str:
        """The fully qualified, quoted name of a contract table."""
        raise NotImplementedError

    def _in_list(self, expr: str) -> str:
        """`expr` is one of the values of the next `?` parameter (a list of strings)."""
        raise NotImplementedError

    def _seconds(self, expr: str) -> str:
        """An interval of `expr` (DOUBLE) seconds, to add to a timestamp."""
        raise NotImplementedError

    def _json_string(self, column: str, key: str) -> str:
        """The text of top-level field `key` of JSON `column` (NULL when absent)."""
        raise NotImplementedError

    def _json_text(self, column: str, key: str) -> str:
        """Top-level field `key` of JSON `column`, serialized as JSON text."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the two rules

    def _call_sources(self) -> str:
        """FROM-clause of every known call (`c` calls, `e` its CALL event, `w` its first webhook)
        with `call_id`; `_CALL_AT` over it is `CALL_TIME_RULE`."""
        return (
            f"(SELECT call_id FROM {self._ref(CALLS)} UNION SELECT call_id FROM {self._ref(CALL_EVENTS)} "
            f"UNION SELECT call_id FROM {self._ref(WEBHOOK_DELIVERIES)} WHERE call_id IS NOT NULL) AS k "
            f"LEFT JOIN {self._ref(CALLS)} AS c ON c.call_id = k.call_id "
            f"LEFT JOIN {self._ref(CALL_EVENTS)} AS e ON e.call_id = k.call_id "
            f"LEFT JOIN (SELECT call_id, min(event_timestamp) AS first_webhook_at FROM "
            f"{self._ref(WEBHOOK_DELIVERIES)} WHERE call_id IS NOT NULL GROUP BY call_id) AS w "
            "ON w.call_id = k.call_id"
        )

    _CALL_AT = "COALESCE(e.occurred_at, c.created_at, w.first_webhook_at)"

    def _call_times(self) -> str:
        """`(call_id, call_at)` of every known call: `CALL_TIME_RULE`, written only here."""
        return f"SELECT k.call_id, {self._CALL_AT} AS call_at FROM {self._call_sources()}"

    def _readable(self, expr: str) -> str:
        """`expr` (a timestamp) when it lies in the models' range, else NULL."""
        return f"CASE WHEN {expr} >= ? AND {expr} < ? THEN {expr} END"

    _READABLE_PARAMS = (EARLIEST_TIMESTAMP, LATEST_TIMESTAMP)

    def _call_end(self, calls_where: str) -> str:
        """`(call_id, ended_at)` of the calls matching `calls_where` (over `c`): `CALL_END_RULE`,
        written only here. The turns are read only for calls without a usable duration. Takes
        the `_READABLE_PARAMS` twice, before any parameter of `calls_where`."""
        calls = self._ref(CALLS)
        turns = self._ref(CALL_TRANSCRIPT_TURNS)
        start = self._readable("c.created_at")
        return (
            f"SELECT c.call_id, COALESCE(CASE WHEN {_USABLE_DURATION} THEN "
            f"({start}) + {self._seconds('c.duration_seconds')} END, "
            "t.last_turn_end) AS ended_at "
            f"FROM {calls} AS c LEFT JOIN "
            f"(SELECT call_id, max({self._readable('end_time')}) AS last_turn_end "
            f"FROM {turns} WHERE call_id IN (SELECT c.call_id FROM {calls} AS c WHERE ({calls_where}) "
            f"AND NOT COALESCE({_USABLE_DURATION}, false)) GROUP BY call_id) AS t ON t.call_id = c.call_id "
            f"WHERE {calls_where}"
        )

    def _calls_in_window(self) -> str:
        """`call_id IN (...)` of the calls whose `CALL_TIME_RULE` falls in [?, ?)."""
        times = self._call_times()
        return f"call_id IN (SELECT call_id FROM ({times}) AS ct WHERE call_at >= ? AND call_at < ?)"

    # ------------------------------------------------------------------ erasure on request

    def erase_leads(self, lead_ids: Sequence[str]) -> Erasure:
        leads = sorted(set(lead_ids))
        removed = dict.fromkeys((target.spec.name for target in LEAD_DATA), 0)
        if not leads:
            return Erasure(removed, frozenset())
        with self.transaction():
            calls: set[str] = set()
            for target in LEAD_DATA:
                for lead_column in target.lead_columns:
                    for call_column in target.call_columns:
                        call, lead = quote(call_column), quote(lead_column)
                        rows = self._fetch(
                            f"SELECT DISTINCT {call} FROM {self._ref(target.spec)} "
                            f"WHERE {self._in_list(lead)} AND {call} IS NOT NULL",
                            [leads],
                        )
                        calls.update(call_id for (call_id,) in rows)
            call_ids = sorted(calls)
            for target in LEAD_DATA:
                where, params = self._lead_data_match(target, leads, call_ids)
                if not where:
                    continue
                # RETURNING: the one row count DuckDB and PostgreSQL both hand back the same way.
                deleted = self._fetch(
                    f"DELETE FROM {self._ref(target.spec)} WHERE {where} RETURNING 1", params
                )
                removed[target.spec.name] = len(deleted)
        return Erasure(removed, frozenset(call_ids))

    def _lead_data_match(
        self, target: LeadData, leads: Sequence[str], call_ids: Sequence[str]
    ) -> tuple[str, list[Any]]:
        """The WHERE clause (and its parameters) of `target`'s rows that hold these leads' data."""
        conditions: list[str] = []
        params: list[Any] = []
        matched = [(c, leads) for c in target.lead_columns] + [(c, call_ids) for c in target.call_columns]
        for column, ids in matched:
            if ids:
                conditions.append(self._in_list(quote(column)))
                params.append(list(ids))
        for column in target.text_columns:
            for value in [*leads, *call_ids]:
                conditions.append(f"strpos(CAST({quote(column)} AS VARCHAR), ?) > 0")
                params.append(value)
        return " OR ".join(conditions), params

    def erased_lead_keys(self) -> set[tuple[str, str]]:
        return set(self._fetch(f"SELECT key_scheme, lead_key FROM {self._ref(ERASED_LEADS)}"))

    # ------------------------------------------------------------------ choosing what to fetch

    def leads_active_since(self, start: datetime) -> list[str]:
        # A CALL event at or after `start` moves its lead's lastActivityAt to at least `start`; a
        # lead without lastActivityAt cannot be ruled out, so it is asked too.
        rows = self._fetch(
            f"SELECT lead_id FROM {self._ref(LEADS)} "
            "WHERE last_activity_at IS NULL OR last_activity_at >= ? OR updated_at >= ? ORDER BY lead_id",
            [start, start],
        )
        return [lead_id for (lead_id,) in rows]

    def calls_needing_fetch(
        self, start: datetime, end: datetime, now: datetime, *, recheck_after: timedelta = timedelta(0)
    ) -> list[str]:
        rows = self._fetch(
            f"""
            SELECT e.call_id
            FROM {self._ref(CALL_EVENTS)} AS e
            LEFT JOIN {self._ref(CALLS)} AS c ON c.call_id = e.call_id
            WHERE e.occurred_at >= ? AND e.occurred_at < ?
              AND (
                c.call_id IS NULL
                OR c.last_fetched_at IS NULL
                OR e.updated_at > c.last_fetched_at
                OR ((c.summary_status = 'pending' OR c.call_status = 'IN_PROGRESS')
                    AND c.last_fetched_at <= ?)
              )
            ORDER BY e.occurred_at, e.call_id
            """,
            [start, end, now - recheck_after],
        )
        return [call_id for (call_id,) in rows]

    def webhook_calls_needing_fetch(self, start: datetime, end: datetime) -> list[str]:
        rows = self._fetch(
            f"""
            SELECT DISTINCT w.call_id FROM {self._ref(WEBHOOK_DELIVERIES)} AS w
            LEFT JOIN {self._ref(CALLS)} AS c ON c.call_id = w.call_id
            WHERE w.call_id IS NOT NULL AND w.event_timestamp >= ? AND w.event_timestamp < ?
              AND (c.call_id IS NULL OR c.summary_status = 'pending' OR c.call_status = 'IN_PROGRESS')
            ORDER BY 1
            """,
            [start, end],
        )
        return [call_id for (call_id,) in rows]

    def calls_in_window(self, start: datetime, end: datetime) -> list[str]:
        rows = self._fetch(
            f"SELECT call_id FROM {self._ref(CALL_EVENTS)} WHERE occurred_at >= ? AND occurred_at < ? "
            f"UNION SELECT call_id FROM {self._ref(WEBHOOK_DELIVERIES)} "
            "WHERE call_id IS NOT NULL AND event_timestamp >= ? AND event_timestamp < ? ORDER BY 1",
            [start, end, start, end],
        )
        return [call_id for (call_id,) in rows]

    def call_event_facts(self, call_ids: Sequence[str]) -> dict[str, CallEventFacts]:
        if not call_ids:
            return {}
        rows = self._fetch(
            "SELECT call_id, lead_id, occurred_at, direction, call_status, duration_seconds "
            f"FROM {self._ref(CALL_EVENTS)} WHERE {self._in_list('call_id')}",
            [list(call_ids)],
        )
        return {row[0]: CallEventFacts(*row[1:]) for row in rows}

    def pending_calls(self) -> list[PendingCall]:
        pending = "c.summary_status = 'pending'"
        bounds = list(self._READABLE_PARAMS)
        rows = self._fetch(
            f"""
            SELECT c.call_id, CAST(({self._readable("ct.call_at")}) AT TIME ZONE 'UTC' AS DATE),
                   {self._readable("c.last_fetched_at")}, {self._readable("c.created_at")},
                   {self._readable("ce.ended_at")}, COALESCE(c.fetch_attempts, 0)
            FROM {self._ref(CALLS)} AS c
            LEFT JOIN ({self._call_times()}) AS ct ON ct.call_id = c.call_id
            LEFT JOIN ({self._call_end(pending)}) AS ce ON ce.call_id = c.call_id
            WHERE {pending}
            ORDER BY c.last_fetched_at NULLS FIRST, c.call_id
            """,
            bounds * 6,
        )
        return [PendingCall(*row) for row in rows]

    # ------------------------------------------------------------------ transfers

    def transfer_calls_in_window(
        self, start: datetime, end: datetime, event_names: Sequence[str]
    ) -> list[str]:
        rows = self._fetch(
            f"""
            SELECT k.call_id FROM {self._call_sources()}
            WHERE {self._CALL_AT} >= ? AND {self._CALL_AT} < ?
              AND (c.is_transfer
                   OR k.call_id IN (SELECT call_id FROM {self._ref(WEBHOOK_DELIVERIES)}
                                    WHERE event IN ({_sql_list(event_names)}))
                   OR k.call_id IN (SELECT call_id FROM {self._ref(CALL_TRANSFERS)}))
            ORDER BY k.call_id
            """,
            [start, end],
        )
        return [call_id for (call_id,) in rows]

    def transfer_deliveries(
        self, call_ids: Sequence[str], event_names: Sequence[str]
    ) -> dict[str, list[TransferDelivery]]:
        deliveries: dict[str, list[TransferDelivery]] = {}
        if not call_ids:
            return deliveries
        for call_id, key, event, timestamp, received_at, data in self._fetch(
            "SELECT call_id, delivery_key, event, event_timestamp, received_at, "
            f"{self._json_text('raw', 'data')} FROM {self._ref(WEBHOOK_DELIVERIES)} "
            f"WHERE {self._in_list('call_id')} AND event IN ({_sql_list(event_names)})",
            [list(call_ids)],
        ):
            parsed = json.loads(data) if data else {}
            deliveries.setdefault(call_id, []).append(
                TransferDelivery(
                    key, event, timestamp, received_at, parsed if isinstance(parsed, dict) else {}
                )
            )
        return deliveries

    def call_transfer_records(self, call_ids: Sequence[str]) -> dict[str, CallTransferRecord]:
        if not call_ids:
            return {}
        rows = self._fetch(
            f"SELECT call_id, lead_id, session_id, is_transfer, {self._json_string('raw', 'transferType')}, "
            "transfer_number, fallback_transfer_number, transfer_status, transfer_connected_seconds "
            f"FROM {self._ref(CALLS)} WHERE {self._in_list('call_id')}",
            [list(call_ids)],
        )
        return {row[0]: CallTransferRecord(*row) for row in rows}

    # ------------------------------------------------------------------ quarantine

    def resolve_quarantined(
        self, source: str, record_ids: Iterable[str], *, now: datetime | None = None
    ) -> int:
        ids = sorted(set(record_ids))
        if not ids:
            return 0
        keys = self._fetch(
            f"SELECT source, record_key FROM {self._ref(REJECTED_RECORDS)} "
            f"WHERE source = ? AND resolved_at IS NULL AND {self._in_list('record_id')}",
            [source, ids],
        )
        if not keys:
            return 0
        when = now or datetime.now(UTC)
        return self.overwrite_columns(
            REJECTED_RECORDS, ["resolved_at"], [(*key, when) for key in keys], now=when
        )

    def unresolved_quarantine(self, source: str) -> Finding:
        table = self._ref(REJECTED_RECORDS)
        unresolved = f"FROM {table} WHERE source = ? AND resolved_at IS NULL"
        ((count, seen),) = self._fetch(
            f"SELECT count(*), COALESCE(sum(times_seen), 0) {unresolved}", [source]
        )
        ((resolved,),) = self._fetch(
            f"SELECT count(*) FROM {table} WHERE source = ? AND resolved_at IS NOT NULL", [source]
        )
        sample = self._fetch(
            f"SELECT record_id, record_key, reason, times_seen, first_seen_at, last_seen_at {unresolved} "
            f"ORDER BY last_seen_at DESC, record_key LIMIT {SAMPLE_SIZE}",
            [source],
        )
        return Finding(
            passed=count == 0,
            metadata={
                "source": source,
                "unresolved": int(count),
                "unresolved_times_seen": int(seen),
                "resolved": int(resolved),
                "sample_unresolved": [
                    {
                        "record_id": record_id,
                        "record_key": key,
                        "reason": reason[:300],
                        "times_seen": int(times),
                        "first_seen_at": first.isoformat() if first else None,
                        "last_seen_at": last.isoformat() if last else None,
                    }
                    for record_id, key, reason, times, first, last in sample
                ],
            },
        )

    # ------------------------------------------------------------------ quality rules

    def _count(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._fetch(sql, params)[0][0])

    def duplicate_keys(self, spec: TableSpec) -> int:
        key = ", ".join(quote(name) for name in spec.primary_key)
        return self._count(
            f"SELECT count(*) FROM (SELECT {key} FROM {self._ref(spec)} "
            f"GROUP BY {key} HAVING count(*) > 1) AS d"
        )

    def unique_primary_key(self, spec: TableSpec) -> Finding:
        key = ", ".join(quote(name) for name in spec.primary_key)
        table = self._ref(spec)
        duplicated = f"SELECT {key}, count(*) AS n FROM {table} GROUP BY {key} HAVING count(*) > 1"
        ((keys, rows),) = self._fetch(f"SELECT count(*), COALESCE(sum(n), 0) FROM ({duplicated}) AS d")
        sample = self._fetch(f"{duplicated} ORDER BY n DESC, {key} LIMIT {SAMPLE_SIZE}")
        return Finding(
            passed=keys == 0,
            metadata={
                "row_count": self.row_count(spec),
                "primary_key": ", ".join(spec.primary_key),
                "duplicated_keys": int(keys),
                "rows_with_duplicated_keys": int(rows),
                "sample_duplicated_keys": [
                    {**dict(zip(spec.primary_key, row[:-1], strict=True)), "rows": row[-1]} for row in sample
                ],
            },
        )

    def turns_contiguous(self) -> Finding:
        per_call = (
            "SELECT call_id, count(*) AS turns, count(DISTINCT turn_index) AS distinct_indexes, "
            "min(turn_index) AS first_index, max(turn_index) AS last_index "
            f"FROM {self._ref(CALL_TRANSCRIPT_TURNS)} GROUP BY call_id"
        )
        broken = (
            f"SELECT * FROM ({per_call}) AS p "
            "WHERE first_index <> 0 OR last_index <> turns - 1 OR distinct_indexes <> turns"
        )
        sample = self._fetch(f"{broken} ORDER BY call_id LIMIT {SAMPLE_SIZE}")
        bad = self._count(f"SELECT count(*) FROM ({broken}) AS b")
        return Finding(
            passed=bad == 0,
            metadata={
                "calls_with_turns": self._count(f"SELECT count(*) FROM ({per_call}) AS p"),
                "calls_with_broken_turn_indexes": bad,
                "sample_broken_calls": [
                    dict(
                        zip(
                            BROKEN_TURNS_COLUMNS, [int(v) if i else v for i, v in enumerate(row)], strict=True
                        )
                    )
                    for row in sample
                ],
            },
        )

    def children_have_stored_call(self, spec: TableSpec) -> Finding:
        orphans = (
            f"FROM {self._ref(spec)} AS t WHERE NOT EXISTS "
            f"(SELECT 1 FROM {self._ref(CALLS)} AS c WHERE c.call_id = t.call_id)"
        )
        ((rows, calls),) = self._fetch(f"SELECT count(*), count(DISTINCT t.call_id) {orphans}")
        sample = self._fetch(f"SELECT DISTINCT t.call_id {orphans} ORDER BY 1 LIMIT {SAMPLE_SIZE}")
        return Finding(
            passed=rows == 0,
            metadata={
                "row_count": self.row_count(spec),
                "orphan_rows": int(rows),
                "orphan_call_ids": int(calls),
                "sample_orphan_call_ids": [call_id for (call_id,) in sample],
            },
        )

    def summary_coverage(self, give_up_after: timedelta, now: datetime | None = None) -> Finding:
        cutoff = (now or datetime.now(UTC)) - give_up_after
        settled = (
            "SELECT c.call_id, c.summary_status, "
            "COALESCE(ce.ended_at, c.created_at, e.occurred_at) AS ended_at "
            f"FROM {self._ref(CALLS)} AS c LEFT JOIN {self._ref(CALL_EVENTS)} AS e ON e.call_id = c.call_id "
            f"LEFT JOIN ({self._call_end('true')}) AS ce ON ce.call_id = c.call_id"
        )
        bounds = list(self._READABLE_PARAMS) * 2
        due = f"FROM ({settled}) AS s WHERE ended_at < ? AND summary_status IS DISTINCT FROM 'not_found'"
        ((total, ready, missing, pending),) = self._fetch(
            "SELECT count(*), count(*) FILTER (WHERE summary_status = 'ready'), "
            "count(*) FILTER (WHERE summary_status = 'missing'), "
            f"count(*) FILTER (WHERE summary_status = 'pending') {due}",
            [*bounds, cutoff],
        )
        sample = self._fetch(
            f"SELECT call_id {due} AND summary_status = 'pending' "
            f"ORDER BY ended_at, call_id LIMIT {SAMPLE_SIZE}",
            [*bounds, cutoff],
        )
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

    def summary_status_allowed(self) -> Finding:
        calls = self._ref(CALLS)
        by_status = self._fetch(
            f"SELECT summary_status, count(*) FROM {calls} GROUP BY 1 ORDER BY 1 NULLS FIRST"
        )
        not_allowed = f"summary_status IS NULL OR summary_status NOT IN ({_sql_list(SUMMARY_STATUSES)})"
        sample = self._fetch(
            f"SELECT call_id FROM {calls} WHERE {not_allowed} ORDER BY call_id LIMIT {SAMPLE_SIZE}"
        )
        bad = sum(int(n) for status, n in by_status if status not in SUMMARY_STATUSES)
        return Finding(
            passed=bad == 0,
            metadata={
                "allowed_values": " | ".join(SUMMARY_STATUSES),
                "calls_by_status": {"NULL" if status is None else status: int(n) for status, n in by_status},
                "calls_with_status_not_allowed": bad,
                "sample_call_ids": [call_id for (call_id,) in sample],
            },
        )

    # ------------------------------------------------------------------ metadata

    def read_column_page(
        self, spec: TableSpec, columns: Sequence[str], *, after: Any | None, limit: int
    ) -> ColumnPage:
        # In key order, the next page after the last key of this one.
        key = [quote(name) for name in spec.primary_key]
        selected = self._page_columns(spec, columns)
        where, params = "", []
        if after is not None:
            where = f"WHERE ({', '.join(key)}) > ({', '.join('?' for _ in key)})"
            params = list(after)
        rows = self._fetch(
            f"SELECT {', '.join(selected)} FROM {self._ref(spec)} {where} "
            f"ORDER BY {', '.join(key)} LIMIT {int(limit)}",
            params,
        )
        return ColumnPage(rows, tuple(rows[-1][: len(key)]) if len(rows) >= limit else None)

    def _page_columns(self, spec: TableSpec, columns: Sequence[str]) -> list[str]:
        """What a page of `read_column_page` selects: the key, then `columns` (JSON as text)."""
        return [quote(name) for name in spec.primary_key] + [
            f"CAST({quote(name)} AS VARCHAR)" if spec.column(name).type == "JSON" else quote(name)
            for name in columns
        ]

    def row_count(self, spec: TableSpec) -> int:
        return self._count(f"SELECT count(*) FROM {self._ref(spec)}")

    def _preview(self, columns: str, rest: str, params: Sequence[Any] = ()) -> Preview:
        """`SELECT {columns} {rest}` (FROM ... ORDER BY, no LIMIT): its first rows.

        The LIMIT lets the engine keep only these rows while it scans: sorting the full result
        first (all transcript turns with their content) was once a run's peak memory.
        """
        rows = self._fetch(f"SELECT {columns} {rest} LIMIT {PREVIEW_ROWS}", params)
        return Preview(tuple(name.strip().split(".")[-1] for name in columns.split(",")), rows)

    def leads_metadata(self) -> dict[str, Any]:
        return {
            "dagster/row_count": self.row_count(LEADS),
            "preview": self._preview(
                "lead_id, first_name, last_name, updated_at, is_deleted",
                f"FROM {self._ref(LEADS)} ORDER BY updated_at DESC NULLS LAST, lead_id",
            ),
        }

    def call_events_metadata(self, start: datetime, end: datetime) -> dict[str, Any]:
        table = self._ref(CALL_EVENTS)
        window = "occurred_at >= ? AND occurred_at < ?"
        return {
            "dagster/row_count": self.row_count(CALL_EVENTS),
            "dagster/partition_row_count": self._count(
                f"SELECT count(*) FROM {table} WHERE {window}", [start, end]
            ),
            "preview": self._preview(
                "call_id, lead_id, occurred_at, direction, call_status, duration_seconds",
                f"FROM {table} WHERE {window} ORDER BY occurred_at DESC, call_id",
                [start, end],
            ),
        }

    def calls_metadata(self, start: datetime, end: datetime, now: datetime) -> dict[str, Any]:
        calls = self._ref(CALLS)
        in_window = f"FROM {calls} AS c WHERE c.{self._calls_in_window()}"
        window = [start, end]
        by_status = {
            status: int(n)
            for status, n in self._fetch(f"SELECT c.summary_status, count(*) {in_window} GROUP BY 1", window)
        }
        ((oldest_pending,),) = self._fetch(
            f"SELECT min(c.created_at) {in_window} AND c.summary_status = 'pending'", window
        )
        meta: dict[str, Any] = {
            "dagster/row_count": self.row_count(CALLS),
            "dagster/partition_row_count": sum(by_status.values()),
            "calls_ready": by_status.get("ready", 0),
            "calls_pending_summary": by_status.get("pending", 0),
            "calls_missing_summary": by_status.get("missing", 0),
            "calls_not_found": by_status.get("not_found", 0),
            "preview": self._preview(
                "c.call_id, c.lead_id, c.session_id, c.call_status, c.summary_status, c.turn_count",
                f"{in_window} ORDER BY c.created_at DESC NULLS LAST, c.call_id",
                window,
            ),
        }
        if oldest_pending is not None:
            meta["oldest_pending_age_minutes"] = round((now - oldest_pending).total_seconds() / 60, 1)
        return meta

    def summaries_metadata(self, start: datetime, end: datetime) -> dict[str, Any]:
        in_window = f"FROM {self._ref(CALL_SUMMARIES)} AS s WHERE s.{self._calls_in_window()}"
        window = [start, end]
        ((count, p50, p95, worst),) = self._fetch(
            "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY summary_latency_seconds), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY summary_latency_seconds), "
            f"max(summary_latency_seconds) {in_window}",
            window,
        )
        meta: dict[str, Any] = {
            "dagster/row_count": self.row_count(CALL_SUMMARIES),
            "dagster/partition_row_count": int(count),
        }
        for name, value in (("p50", p50), ("p95", p95), ("max", worst)):
            if value is not None:
                meta[f"summary_latency_seconds_{name}"] = round(float(value), 1)
        meta["preview"] = self._preview(
            "s.call_id, s.summary_first_seen_at, s.summary_latency_seconds, s.summary",
            f"{in_window} ORDER BY s.summary_first_seen_at DESC, s.call_id",
            window,
        )
        return meta

    def turns_metadata(self, start: datetime, end: datetime) -> dict[str, Any]:
        in_window = f"FROM {self._ref(CALL_TRANSCRIPT_TURNS)} AS t WHERE t.{self._calls_in_window()}"
        window = [start, end]
        ((count, calls_with_turns),) = self._fetch(
            f"SELECT count(*), count(DISTINCT t.call_id) {in_window}", window
        )
        return {
            "dagster/row_count": self.row_count(CALL_TRANSCRIPT_TURNS),
            "dagster/partition_row_count": int(count),
            "calls_with_turns": int(calls_with_turns),
            "preview": self._preview(
                "t.call_id, t.turn_index, t.role, t.content",
                f"{in_window} ORDER BY t.call_id, t.turn_index",
                window,
            ),
        }

    def webhook_deliveries_metadata(self) -> dict[str, Any]:
        return {
            "dagster/row_count": self.row_count(WEBHOOK_DELIVERIES),
            "preview": self._preview(
                "event, event_timestamp, call_id, lead_id, session_id, received_at",
                f"FROM {self._ref(WEBHOOK_DELIVERIES)} ORDER BY received_at DESC, delivery_key",
            ),
        }

    def transfers_metadata(self, start: datetime, end: datetime, outcomes: Sequence[str]) -> dict[str, Any]:
        in_window = f"FROM {self._ref(CALL_TRANSFERS)} AS t WHERE t.{self._calls_in_window()}"
        window = [start, end]
        by_outcome = dict(self._fetch(f"SELECT t.outcome, count(*) {in_window} GROUP BY 1", window))
        by_source = dict(self._fetch(f"SELECT t.source, count(*) {in_window} GROUP BY 1", window))
        return {
            "dagster/row_count": self.row_count(CALL_TRANSFERS),
            "dagster/partition_row_count": int(sum(by_outcome.values())),
            **{f"attempts_{outcome}": int(by_outcome.get(outcome, 0)) for outcome in outcomes},
            "attempts_from_webhooks": int(by_source.get("webhook", 0)),
            "attempts_from_api_only": int(by_source.get("api", 0)),
            "preview": self._preview(
                "t.call_id, t.attempt, t.transfer_type, t.target_number, t.outcome, t.source",
                f"{in_window} ORDER BY t.call_id, t.attempt",
                window,
            ),
        }

    def day_summaries(self, first_day: date) -> list[DaySummary]:
        rows = self._fetch(
            f"""
            WITH days AS (
              SELECT CAST(ct.call_at AT TIME ZONE 'UTC' AS DATE) AS day, c.*
              FROM {self._ref(CALLS)} AS c JOIN ({self._call_times()}) AS ct ON ct.call_id = c.call_id
            )
            SELECT
              d.day,
              count(*),
              count(*) FILTER (WHERE d.summary_status = 'ready'),
              count(*) FILTER (WHERE d.summary_status = 'pending'),
              count(*) FILTER (WHERE d.summary_status = 'missing'),
              count(*) FILTER (WHERE d.summary_status = 'not_found'),
              count(*) FILTER (WHERE d.session_id IS NOT NULL),
              COALESCE(sum(t.turns), 0),
              COALESCE(sum(x.attempts), 0)
            FROM days AS d
            LEFT JOIN (SELECT call_id, count(*) AS turns
                       FROM {self._ref(CALL_TRANSCRIPT_TURNS)} GROUP BY 1) AS t
              ON t.call_id = d.call_id
            LEFT JOIN (SELECT call_id, count(*) AS attempts FROM {self._ref(CALL_TRANSFERS)} GROUP BY 1) AS x
              ON x.call_id = d.call_id
            WHERE d.day >= ?
            GROUP BY 1 ORDER BY 1
            """,
            [first_day],
        )
        return [DaySummary(row[0], *(int(value) for value in row[1:])) for row in rows]
