"""End to end: assets and checks materialized through Dagster against the sandbox on loopback,
into a real warehouse (a DuckDB file, a PostgreSQL database), compared row by row with the
sandbox's ground truth."""

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from apten_assets.defs.apten import build_definitions
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.tables import (
    CALL_EVENTS,
    CALL_SUMMARIES,
    CALL_TRANSCRIPT_TURNS,
    CALLS,
    LEADS,
    TableSpec,
)
from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from apten_assets.warehouse import WarehouseNotReady, open_store
from tests.warehouse.helpers import query

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Relative to now (anchor=None) so summary timing agrees with the wall clock the pipeline uses.
SPEC = DatasetSpec(
    seed=3,
    n_leads=16,
    calls_per_lead=3,
    days=3,
    share_deleted_leads=0.15,
    share_missing_calls=0.08,
    share_late_summaries=0.2,
    share_never_summaries=0.08,
)
# Far beyond the dataset's three days, so no call turns `missing` while a test runs past midnight.
GIVE_UP_HOURS = "240"
# An interval of n seconds, per backend, for the test's own overdue query.
SECONDS = {
    "duckdb": "to_microseconds(CAST(round({} * 1e6) AS BIGINT))",
    "postgresql": "make_interval(secs => {})",
}
TABLES = (LEADS, CALL_EVENTS, CALLS, CALL_SUMMARIES, CALL_TRANSCRIPT_TURNS)
CALL_ASSETS = dg.AssetSelection.assets(
    ["apten", "call_events"],
    ["apten", "calls"],
    ["apten", "call_summaries"],
    ["apten", "call_transcript_turns"],
)
LEADS_ASSET = dg.AssetSelection.assets(["apten", "leads"])


def _json(text: str | None) -> Any:
    """A stored JSON value as Python (PostgreSQL's jsonb keeps neither key order nor spacing)."""
    return None if text is None else json.loads(text)


def _ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _query(url: str, sql: str, params: list[Any] | None = None) -> list[tuple]:
    with open_store(url, read_only=True) as store:
        return query(store, sql, params or [])


def _execute(url: str, *statements: str) -> None:
    with open_store(url) as store:
        for sql in statements:
            query(store, sql)


def _backend(url: str) -> str:
    with open_store(url) as store:
        return store.backend


def _snapshot_columns(spec: TableSpec) -> list[str]:
    return [name for name in spec.column_names if name not in spec.bookkeeping | set(spec.primary_key)]


def _snapshot(db: Path, spec: TableSpec) -> dict[tuple, tuple]:
    """Every row by primary key, all columns but the fetch bookkeeping (`_loaded_at` included)."""
    columns = _snapshot_columns(spec)
    key = list(spec.primary_key)
    rows = _query(db, f"SELECT {', '.join(key + columns)} FROM {spec.qualified_name}")
    snapshot = {row[: len(key)]: row[len(key) :] for row in rows}
    assert len(snapshot) == len(rows), f"{spec.qualified_name} has duplicate keys"
    return snapshot


@dataclass
class Pipeline:
    """A sandbox, a warehouse and the code location built from APTEN_* pointing at both."""

    sb: SandboxServer
    db: str
    defs: dg.Definitions
    env: dict[str, str]
    days: list[str]

    def run(
        self,
        selection: dg.AssetSelection,
        *,
        partition: str | None = None,
        partition_range: tuple[str, str] | None = None,
        run_config: dict[str, Any] | None = None,
        raise_on_error: bool = True,
    ) -> dg.ExecuteInProcessResult:
        tags = {}
        if partition_range is not None:
            tags = {
                "dagster/asset_partition_range_start": partition_range[0],
                "dagster/asset_partition_range_end": partition_range[1],
            }
        return dg.materialize(
            [*self.defs.assets, *self.defs.asset_checks],
            selection=selection,
            resources=self.defs.resources,
            partition_key=partition,
            tags=tags,
            run_config=run_config,
            raise_on_error=raise_on_error,
        )

    def backfill(self) -> dg.ExecuteInProcessResult:
        """Leads, then every day's call tables in one single-run backfill."""
        self.run(LEADS_ASSET)
        return self.run(CALL_ASSETS, partition_range=(self.days[0], self.days[-1]))


def _settings_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> dg.Definitions:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return build_definitions(AptenSettings.from_env())


def dataset_with_every_kind() -> SandboxDataset:
    """SPEC's dataset as of now, under the first seed from SPEC's whose data include every kind the
    tests need: a 404, a late summary, one that never comes, and a soft-deleted lead. The draws
    depend on the anchor's time of day (now): one fixed seed lacked a 404 at 21:57-22:57 UTC, and
    the next one a deleted lead at 21:57:20-22:02:13 UTC (every second of a day simulated)."""
    for seed in range(SPEC.seed, SPEC.seed + 50):
        dataset = SandboxDataset(dataclasses.replace(SPEC, seed=seed))
        kinds = (
            dataset.missing_call_ids,
            dataset.late_summary_call_ids,
            dataset.never_summary_call_ids,
            dataset.deleted_lead_ids,
        )
        if all(kinds):
            return dataset
    raise AssertionError("no seed gives every kind of call: SPEC's shares are too small")


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch, warehouse_url: str) -> Iterator[Pipeline]:
    with SandboxServer(dataset_with_every_kind()) as sb:
        first_day = sb.state.dataset.anchor.date() - timedelta(days=SPEC.days - 1)
        days = [(first_day + timedelta(days=n)).isoformat() for n in range(SPEC.days)]
        db = warehouse_url
        env = {
            "APTEN_BASE_URL": sb.base_url,
            "APTEN_WAREHOUSE_URL": warehouse_url,
            "APTEN_MAX_RPS": "500",
            "APTEN_START_DATE": days[0],
            "APTEN_SUMMARY_GIVE_UP_HOURS": GIVE_UP_HOURS,
        }
        monkeypatch.delenv("APTEN_API_KEY", raising=False)
        yield Pipeline(sb, db, _settings_env(monkeypatch, env), env, days)


def _materialization_metadata(result: dg.ExecuteInProcessResult, table: str) -> dict[str, Any]:
    """Metadata of the table's first materialization in the run (a range repeats it per day)."""
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey(["apten", table]):
            return {name: value.value for name, value in event.materialization.metadata.items()}
    raise AssertionError(f"apten/{table} was not materialized")


def _check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        f"{evaluation.asset_key.path[-1]}:{evaluation.check_name}": evaluation
        for evaluation in result.get_asset_check_evaluations()
    }


def _check_metadata(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {name: value.value for name, value in evaluation.metadata.items()}


# --------------------------------------------------------------------------- ground truth


def _assert_matches_ground_truth(pipeline: Pipeline, skip_call_ids: frozenset[str] = frozenset()) -> None:
    """Every table equals what the sandbox serves now, except the calls named in `skip_call_ids`."""
    state, db = pipeline.sb.state, pipeline.db
    dataset = state.dataset

    leads = {lead["id"]: lead for lead in dataset.leads}
    stored_leads = {
        row[0]: (*row[1:-1], _json(row[-1]))
        for row in _query(
            db,
            "SELECT lead_id, first_name, last_name, phone, email, customer_profile, external_lead_id, "
            "updated_at, last_activity_at, is_deleted, deleted_at, raw FROM apten.leads",
        )
    }
    assert stored_leads == {
        lead_id: (
            lead["firstName"],
            lead["lastName"],
            lead["phone"],
            lead.get("email"),
            lead["customerProfile"],
            lead.get("externalLeadId"),
            _ts(lead["updatedAt"]),
            _ts(lead["lastActivityAt"]),
            lead["deleted"],
            _ts(lead["deletedAt"]),
            lead,
        )
        for lead_id, lead in leads.items()
    }

    window_start = datetime.fromisoformat(pipeline.days[0]).replace(tzinfo=UTC)
    events = {
        event["id"]: event
        for event in dataset.call_events()
        if _ts(event["timestamp"]) >= window_start and event["id"] not in skip_call_ids
    }
    stored_events = {
        row[0]: (*row[1:-1], _json(row[-1]))
        for row in _query(
            db,
            "SELECT call_id, lead_id, org_id, occurred_at, updated_at, direction, duration_seconds, "
            "call_status, is_transfer, data FROM apten.call_events",
        )
    }
    assert stored_events == {
        call_id: (
            event["roomId"],
            event["orgId"],
            _ts(event["timestamp"]),
            _ts(event["updatedAt"]),
            event["data"]["direction"],
            event["data"]["durationSeconds"],
            event["data"]["callStatus"],
            event["data"]["isTransfer"],
            event["data"],
        )
        for call_id, event in events.items()
    }

    bodies = {call_id: state.call_json(call_id) for call_id in events}
    assert set(dataset.missing_call_ids) & set(bodies)
    stored_calls = {
        row[0]: (*row[1:-1], _json(row[-1]))
        for row in _query(
            db,
            "SELECT call_id, lead_id, direction, call_status, duration_seconds, created_at, updated_at, "
            "turn_count, summary_status, raw FROM apten.calls",
        )
    }
    expected_calls = {}
    for call_id, body in bodies.items():
        if body is None:
            # A 404 keeps what the call's CALL event says; Apten never sent the rest.
            event = events[call_id]
            expected_calls[call_id] = (
                event["roomId"],
                event["data"]["direction"],
                event["data"]["callStatus"],
                event["data"]["durationSeconds"],
                _ts(event["timestamp"]),
                None,
                None,
                "not_found",
                None,
            )
            continue
        expected_calls[call_id] = (
            body["leadId"],
            body["direction"],
            body["callStatus"],
            body["durationSeconds"],
            _ts(body["createdAt"]),
            _ts(body["updatedAt"]),
            len(body["transcript"]) or None,  # an empty transcript stores no count (not stored yet)
            "ready" if "summary" in body else "pending",
            body,
        )
    assert stored_calls == expected_calls

    found = {call_id: body for call_id, body in bodies.items() if body is not None}
    stored_summaries = dict(_query(db, "SELECT call_id, summary FROM apten.call_summaries"))
    assert stored_summaries == {
        call_id: body["summary"] for call_id, body in found.items() if "summary" in body
    }
    stored_turns = _query(
        db,
        "SELECT call_id, turn_index, role, content, start_time, end_time FROM apten.call_transcript_turns "
        "ORDER BY call_id, turn_index",
    )
    expected_turns = sorted(
        (call_id, index, turn["role"], turn["content"], _ts(turn["startTime"]), _ts(turn["endTime"]))
        for call_id, body in found.items()
        for index, turn in enumerate(body["transcript"])
    )
    assert stored_turns == expected_turns


# --------------------------------------------------------------------------- tests


def test_multi_day_backfill_matches_the_sandbox_exactly_and_checks_pass(pipeline: Pipeline) -> None:
    dataset = pipeline.sb.state.dataset
    assert dataset.missing_call_ids and dataset.late_summary_call_ids and dataset.never_summary_call_ids

    result = pipeline.backfill()

    assert result.success
    materialized = {
        (e.asset_key.to_user_string(), e.partition) for e in result.get_asset_materialization_events()
    }
    for table in ("call_events", "calls", "call_summaries", "call_transcript_turns"):
        assert {(f"apten/{table}", day) for day in pipeline.days} <= materialized
    _assert_matches_ground_truth(pipeline)
    checks = _check_results(result)
    assert {
        "call_events:unique_primary_key",
        "calls:unique_primary_key",
        "calls:summary_status_allowed",
        "call_summaries:summary_coverage_after_give_up",
        "call_transcript_turns:turn_indexes_contiguous",
        "call_transcript_turns:turns_belong_to_stored_calls",
        "call_summaries:summaries_belong_to_stored_calls",
    } <= set(checks)
    assert all(evaluation.passed for evaluation in checks.values()), {
        name: _check_metadata(e) for name, e in checks.items() if not e.passed
    }
    calls_meta = _materialization_metadata(result, "calls")
    assert calls_meta["not_found"] == len(set(dataset.missing_call_ids))
    assert calls_meta["skipped"] == 0


def test_soft_deleted_leads_stay_flagged_with_their_calls(pipeline: Pipeline) -> None:
    deleted = set(pipeline.sb.state.dataset.deleted_lead_ids)
    assert deleted

    pipeline.backfill()

    rows = _query(pipeline.db, "SELECT lead_id, deleted_at FROM apten.leads WHERE is_deleted")
    assert {lead_id for lead_id, _ in rows} == deleted
    assert all(deleted_at is not None for _, deleted_at in rows)
    calls_of_deleted = {
        call_id
        for (call_id,) in _query(
            pipeline.db,
            "SELECT c.call_id FROM apten.calls AS c JOIN apten.call_events AS e USING (call_id) "
            "WHERE e.lead_id IN (SELECT unnest(?::VARCHAR[]))",
            [sorted(deleted)],
        )
    }
    expected = {
        e["id"]
        for lead_id in deleted
        for e in pipeline.sb.state.dataset.events(lead_id)
        if e["type"] == "CALL"
    }
    assert calls_of_deleted == expected and expected


def test_second_run_changes_nothing(pipeline: Pipeline) -> None:
    pipeline.backfill()
    before = {spec.name: _snapshot(pipeline.db, spec) for spec in TABLES}
    attempts_before = dict(_query(pipeline.db, "SELECT call_id, fetch_attempts FROM apten.calls"))

    leads_again = pipeline.run(LEADS_ASSET)
    calls_again = pipeline.backfill()

    assert {spec.name: _snapshot(pipeline.db, spec) for spec in TABLES} == before
    for result, table in ((leads_again, "leads"), (calls_again, "call_events"), (calls_again, "calls")):
        meta = _materialization_metadata(result, table)
        assert (meta["inserted"], meta["updated"]) == (0, 0), table
    turns_meta = _materialization_metadata(calls_again, "call_transcript_turns")
    assert turns_meta["calls_replaced"] == 0
    # Only calls that are not final (pending a summary, in progress) were asked again.
    attempts_after = dict(_query(pipeline.db, "SELECT call_id, fetch_attempts FROM apten.calls"))
    refetched = {call_id for call_id in attempts_after if attempts_after[call_id] != attempts_before[call_id]}
    not_final = {
        call_id
        for (call_id,) in _query(
            pipeline.db,
            "SELECT call_id FROM apten.calls WHERE summary_status = 'pending' OR call_status = 'IN_PROGRESS'",
        )
    }
    assert refetched == not_final


def test_late_summary_moves_call_from_pending_to_ready_without_touching_others(pipeline: Pipeline) -> None:
    state = pipeline.sb.state
    pipeline.backfill()
    pending = dict(_query(pipeline.db, "SELECT call_id, summary_status FROM apten.calls"))
    late = next(
        call_id for call_id in state.dataset.late_summary_call_ids if pending.get(call_id) == "pending"
    )
    (day,) = _query(
        pipeline.db, "SELECT CAST(occurred_at AS DATE) FROM apten.call_events WHERE call_id = ?", [late]
    )[0]
    before = {spec.name: _snapshot(pipeline.db, spec) for spec in TABLES}

    assert state.release_summaries([late]) == [late]
    result = pipeline.run(CALL_ASSETS, partition=day.isoformat())

    assert result.success
    after = {spec.name: _snapshot(pipeline.db, spec) for spec in TABLES}
    status, loaded_at = (_snapshot_columns(CALLS).index(name) for name in ("summary_status", "_loaded_at"))
    assert before["calls"][(late,)][status] == "pending"
    assert after["calls"][(late,)][status] == "ready"
    assert after["calls"][(late,)][loaded_at] > before["calls"][(late,)][loaded_at]
    summary = state.call_json(late)["summary"]
    assert after["call_summaries"][(late,)][:2] == (state.call_json(late)["leadId"], summary)
    latency = _snapshot_columns(CALL_SUMMARIES).index("summary_latency_seconds")
    assert after["call_summaries"][(late,)][latency] > 0
    # Nothing else moved: every other row, `_loaded_at` included, is as it was.
    for spec in TABLES:
        unchanged_before = {k: v for k, v in before[spec.name].items() if k[0] != late or spec is LEADS}
        unchanged_after = {k: v for k, v in after[spec.name].items() if k[0] != late or spec is LEADS}
        assert unchanged_after == unchanged_before, spec.name
    late_turns = {k: v for k, v in after["call_transcript_turns"].items() if k[0] == late}
    assert late_turns == {k: v for k, v in before["call_transcript_turns"].items() if k[0] == late}
    _assert_matches_ground_truth(pipeline)


def test_unknown_event_types_and_malformed_records_are_counted_not_fatal(pipeline: Pipeline) -> None:
    state = pipeline.sb.state
    call_ids = [e["id"] for e in state.dataset.call_events() if state.call_json(e["id"]) is not None]
    malformed_call, unknown_type_event, malformed_event = call_ids[0], call_ids[1], call_ids[2]
    state.call_overrides[malformed_call] = {**state.call_json(malformed_call), "id": 12345}
    events = {e["id"]: e for e in state.dataset.call_events()}
    state.event_overrides[unknown_type_event] = {**events[unknown_type_event], "type": "CALL_RECORDING_READY"}
    state.event_overrides[malformed_event] = {
        k: v for k, v in events[malformed_event].items() if k != "timestamp"
    }

    result = pipeline.backfill()

    assert result.success
    events_meta = _materialization_metadata(result, "call_events")
    assert events_meta["ignored_type_CALL_RECORDING_READY"] == 1
    assert events_meta["ignored_non_call_events"] == 1
    assert events_meta["skipped"] == 1
    assert events_meta["skipped_records"][0]["id"] == malformed_event
    assert "timestamp" in events_meta["skipped_records"][0]["reason"]
    calls_meta = _materialization_metadata(result, "calls")
    assert calls_meta["skipped"] == 1
    assert calls_meta["skipped_records"] == [
        {"id": malformed_call, "reason": calls_meta["skipped_records"][0]["reason"]}
    ]
    assert calls_meta["skipped_reasons"] == {"malformed call": 1}
    # The malformed call is not stored (and is asked for again next run); everything else is.
    stored_call_ids = {call_id for (call_id,) in _query(pipeline.db, "SELECT call_id FROM apten.calls")}
    assert malformed_call not in stored_call_ids
    del state.call_overrides[malformed_call]
    pipeline.run(CALL_ASSETS, partition_range=(pipeline.days[0], pipeline.days[-1]))
    _assert_matches_ground_truth(pipeline, skip_call_ids=frozenset({unknown_type_event, malformed_event}))


def test_two_runs_started_at_once_both_succeed(pipeline: Pipeline, tmp_path: Path) -> None:
    """Two `dagster asset materialize` processes write the same warehouse at the same time: one a
    range over every day, one today's partition. Each waits out the other's write lock."""
    pipeline.run(LEADS_ASSET)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APTEN_", "DAGSTER_"))} | pipeline.env
    command = [
        str(BIN / "dagster"),
        *("asset", "materialize", "-m", "apten_assets.definitions"),
        *("--select", "apten/call_events,apten/calls,apten/call_summaries,apten/call_transcript_turns"),
    ]
    launches = {
        "range": ["--partition-range", f"{pipeline.days[0]}...{pipeline.days[-1]}"],
        "today": ["--partition", pipeline.days[-1]],
    }
    processes = {}
    for name, partition_args in launches.items():
        home = tmp_path / f"dagster_home_{name}"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        # Output to a file, not a pipe: a full pipe would stall a run that may hold the lock.
        log = (tmp_path / f"{name}.log").open("w")
        processes[name] = (
            subprocess.Popen(
                [*command, *partition_args],
                cwd=ROOT,
                env=env | {"DAGSTER_HOME": str(home)},
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            log,
        )
    for name, (process, log) in processes.items():
        process.wait(timeout=300)
        log.close()
        output = (tmp_path / f"{name}.log").read_text()
        assert process.returncode == 0, output[-4000:]
        assert "RUN_SUCCESS" in output, output[-4000:]
    _assert_matches_ground_truth(pipeline)


def test_blocking_duplicate_key_check_stops_downstream_calls(pipeline: Pipeline) -> None:
    if _backend(pipeline.db) == "postgresql":
        pytest.skip("PostgreSQL's primary keys refuse the duplicate (tests/warehouse/test_quality.py)")
    pipeline.backfill()
    (call_id,) = _query(pipeline.db, "SELECT min(call_id) FROM apten.call_events")[0]
    _execute(
        pipeline.db,
        f"INSERT INTO apten.call_events SELECT * FROM apten.call_events WHERE call_id = '{call_id}'",
    )

    result = pipeline.run(CALL_ASSETS, partition=pipeline.days[-1], raise_on_error=False)

    assert not result.success
    checks = _check_results(result)
    assert not checks["call_events:unique_primary_key"].passed
    assert _check_metadata(checks["call_events:unique_primary_key"])["sample_duplicated_keys"] == [
        {"call_id": call_id, "rows": 2}
    ]
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"apten/call_events"}
    assert "apten/calls" not in {e.asset_key.to_user_string() for e in result.get_asset_check_evaluations()}


def test_checks_fail_on_bad_data_with_counts_and_ids(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline.backfill()
    db = pipeline.db
    (dup_call,) = _query(db, "SELECT min(call_id) FROM apten.calls WHERE summary_status = 'ready'")[0]
    (gap_call,) = _query(db, "SELECT min(call_id) FROM apten.call_transcript_turns WHERE turn_index = 2")[0]
    (null_call,) = _query(db, "SELECT max(call_id) FROM apten.calls WHERE summary_status = 'ready'")[0]
    (pending,) = _query(db, "SELECT count(*) FROM apten.calls WHERE summary_status = 'pending'")[0]
    assert pending
    # PostgreSQL's primary keys refuse a duplicate row; DuckDB's tables declare none.
    keys_enforced = _backend(db) == "postgresql"
    duplicate = f"INSERT INTO apten.calls SELECT * FROM apten.calls WHERE call_id = '{dup_call}'"
    _execute(
        db,
        *([] if keys_enforced else [duplicate]),
        f"DELETE FROM apten.call_transcript_turns WHERE call_id = '{gap_call}' AND turn_index = 1",
        "INSERT INTO apten.call_summaries (call_id, summary, _loaded_at) VALUES ('ghost-call', 'x', now())",
        "INSERT INTO apten.call_transcript_turns (call_id, turn_index, role, _loaded_at) "
        "VALUES ('ghost-call', 0, 'user', now())",
        f"UPDATE apten.calls SET summary_status = NULL WHERE call_id = '{null_call}'",
    )
    # A give-up window (36 s) shorter than almost every call's age: the calls still pending that
    # ended before it are overdue. A call may end during the test, so the check's count lies
    # between the overdue counts taken just before and just after it.
    defs = _settings_env(monkeypatch, {"APTEN_SUMMARY_GIVE_UP_HOURS": "0.01"})
    overdue = (
        "SELECT count(*) FROM apten.calls AS c LEFT JOIN apten.call_events AS e USING (call_id) "
        "WHERE c.summary_status = 'pending' AND COALESCE(c.created_at + "
        f"{SECONDS[_backend(db)].format('c.duration_seconds')}, c.created_at, e.occurred_at) "
        "< now() - INTERVAL '36 seconds'"
    )
    ((overdue_before,),) = _query(db, overdue)

    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.all_asset_checks(),
        resources=defs.resources,
        raise_on_error=False,
    )

    checks = _check_results(result)
    failed = {name for name, evaluation in checks.items() if not evaluation.passed}
    assert failed == {
        *([] if keys_enforced else ["calls:unique_primary_key"]),
        "calls:summary_status_allowed",
        "call_transcript_turns:turn_indexes_contiguous",
        "call_transcript_turns:turns_belong_to_stored_calls",
        "call_summaries:summaries_belong_to_stored_calls",
        "call_summaries:summary_coverage_after_give_up",
    }
    meta = {name: _check_metadata(checks[name]) for name in failed}
    if not keys_enforced:
        assert not result.success  # the blocking unique-key check of calls fails its step
        assert meta["calls:unique_primary_key"]["duplicated_keys"] == 1
        assert meta["calls:unique_primary_key"]["sample_duplicated_keys"] == [
            {"call_id": dup_call, "rows": 2}
        ]
    assert meta["calls:summary_status_allowed"]["calls_with_status_not_allowed"] == 1
    assert meta["calls:summary_status_allowed"]["sample_call_ids"] == [null_call]
    broken = meta["call_transcript_turns:turn_indexes_contiguous"]
    assert broken["calls_with_broken_turn_indexes"] == 1
    assert broken["sample_broken_calls"][0]["call_id"] == gap_call
    for name in (
        "call_transcript_turns:turns_belong_to_stored_calls",
        "call_summaries:summaries_belong_to_stored_calls",
    ):
        assert meta[name]["orphan_rows"] == 1
        assert meta[name]["sample_orphan_call_ids"] == ["ghost-call"]
    coverage = checks["call_summaries:summary_coverage_after_give_up"]
    assert coverage.severity == dg.AssetCheckSeverity.WARN
    ((overdue_after,),) = _query(db, overdue)
    still_pending = meta["call_summaries:summary_coverage_after_give_up"]["calls_still_pending"]
    assert 0 < overdue_before <= still_pending <= overdue_after <= pending
    assert 0 < meta["call_summaries:summary_coverage_after_give_up"]["summary_coverage_ratio"] < 1
    assert checks["call_events:unique_primary_key"].passed and checks["leads:unique_primary_key"].passed


def test_checks_pass_on_a_warehouse_with_no_tables_yet(pipeline: Pipeline) -> None:
    with pytest.raises(WarehouseNotReady):
        _query(pipeline.db, "SELECT count(*) FROM apten.calls")

    result = pipeline.run(dg.AssetSelection.all_asset_checks())

    assert result.success
    checks = _check_results(result)
    assert len(checks) >= 10 and all(evaluation.passed for evaluation in checks.values())
    assert (
        _check_metadata(checks["call_summaries:summary_coverage_after_give_up"])["calls_past_give_up_window"]
        == 0
    )


def test_partition_day_is_utc_date_of_event(pipeline: Pipeline) -> None:
    pipeline.run(LEADS_ASSET)
    day = pipeline.days[1]

    pipeline.run(CALL_ASSETS, partition=day)

    stored = {call_id for (call_id,) in _query(pipeline.db, "SELECT call_id FROM apten.calls")}
    expected = {e["id"] for e in pipeline.sb.state.dataset.call_events() if e["timestamp"].startswith(day)}
    assert stored == expected and expected
