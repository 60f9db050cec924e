"""`apten_late_summary_sensor` end to end: the sandbox on loopback, real runs, a real DuckDB file.

The warehouse is materialized once per module with every late summary held back; each test copies
that file, starts its own sandbox (own request log and released summaries) and drives the sensor
tick by tick with `build_sensor_context`, executing the runs it requests with `dg.materialize`.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from apten_assets.defs.apten.assets import (
    CALL_EVENTS_KEY,
    CALL_SUMMARIES_KEY,
    CALL_TRANSCRIPT_TURNS_KEY,
    CALLS_KEY,
    LEADS_KEY,
    build_assets,
)
from apten_assets.defs.apten.resources import AptenApiResource, AptenWarehouse
from apten_assets.defs.apten.sensors import LATE_SUMMARY_SENSOR_NAME, build_late_summary_sensor
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.late_summaries import SensorCursor
from apten_assets.lib.tables import CALL_EVENTS, CALL_SUMMARIES, CALL_TRANSCRIPT_TURNS, CALLS
from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from apten_assets.warehouse import open_store
from apten_assets.warehouse.duckdb import connect, ensure_schema
from tests.conftest import WAREHOUSE_BACKENDS
from tests.postgres import PostgresServer
from tests.warehouse.helpers import query

# Calls of yesterday and today (anchor None = now), so none is past the 72 h give-up window;
# late summaries are due in 30 days, i.e. only when a test releases them.
LATE_SPEC = DatasetSpec(
    seed=23,
    n_leads=14,
    calls_per_lead=4,
    days=2,
    anchor=None,
    share_late_summaries=0.4,
    share_never_summaries=0.1,
    late_summary_delay_seconds=30 * 86400,
)
REFRESH_KEYS = {CALLS_KEY, CALL_SUMMARIES_KEY, CALL_TRANSCRIPT_TURNS_KEY}
TABLES = (CALLS, CALL_SUMMARIES, CALL_TRANSCRIPT_TURNS, CALL_EVENTS)


@dataclass
class Env:
    """One test's warehouse, sandbox and settings, with helpers to tick and run. `path` is the
    DuckDB file (None on PostgreSQL)."""

    url: str
    path: Path | None
    sandbox: SandboxServer
    settings: AptenSettings
    instance: dg.DagsterInstance

    @property
    def resources(self) -> dict[str, object]:
        return {"apten": AptenApiResource(), "warehouse": AptenWarehouse(url=self.url)}

    def tick(
        self, cursor: str | None, settings: AptenSettings | None = None, budget: float | None = None
    ) -> dg.SensorResult:
        kwargs = {} if budget is None else {"check_budget_seconds": budget}
        sensor = build_late_summary_sensor(settings or self.settings, **kwargs)
        context = dg.build_sensor_context(
            cursor=cursor, resources={"warehouse": AptenWarehouse(url=self.url)}
        )
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        return result

    def execute(
        self, request: dg.RunRequest, settings: AptenSettings | None = None
    ) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            build_assets(settings or self.settings),
            selection=list(request.asset_selection or []),
            partition_key=request.partition_key,
            run_config=request.run_config,
            resources=self.resources,
            instance=self.instance,
            tags=request.tags,
        )
        assert result.success
        return result

    def lookups(self) -> list[str]:
        """Call ids of `GET /calls/{id}` requests the sandbox served, in order."""
        return [
            r.path.rsplit("/", 1)[-1]
            for r in self.sandbox.state.request_log
            if r.path.startswith("/v1/calls/")
        ]


def _settings(url: str, base_url: str, **overrides: object) -> AptenSettings:
    values: dict[str, object] = {
        "base_url": base_url,
        "warehouse_url": url,
        "start_date": datetime.now(UTC).date() - timedelta(days=3),
        "max_rps": 200.0,
        "max_concurrency": 8,
        "summary_recheck_minutes": 0.0,
    }
    values.update(overrides)
    return AptenSettings(**values)  # type: ignore[arg-type]


def _env_vars(monkeypatch: pytest.MonkeyPatch, settings: AptenSettings) -> None:
    monkeypatch.setenv("APTEN_BASE_URL", settings.base_url)
    assert settings.warehouse_url is not None
    monkeypatch.setenv("APTEN_WAREHOUSE_URL", settings.warehouse_url)
    monkeypatch.setenv("APTEN_MAX_RPS", str(settings.max_rps))
    monkeypatch.setenv("APTEN_MAX_CONCURRENCY", str(settings.max_concurrency))
    monkeypatch.delenv("APTEN_API_KEY", raising=False)


@pytest.fixture(scope="module")
def late_dataset() -> SandboxDataset:
    return SandboxDataset(LATE_SPEC)


@pytest.fixture(scope="module", params=WAREHOUSE_BACKENDS)
def base_warehouse(
    request: pytest.FixtureRequest, late_dataset: SandboxDataset, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Every partition of the sandbox materialized while all late summaries are held back; its URL
    (each test gets a copy: the DuckDB file copied, the PostgreSQL database as a template)."""
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database("late_base")
    else:
        url = f"duckdb:///{tmp_path_factory.mktemp('late_base') / 'warehouse.duckdb'}"
    with SandboxServer(late_dataset) as sandbox, pytest.MonkeyPatch.context() as monkeypatch:
        settings = _settings(url, sandbox.base_url)
        _env_vars(monkeypatch, settings)
        assets = build_assets(settings)
        resources = {"apten": AptenApiResource(), "warehouse": AptenWarehouse(url=url)}
        instance = dg.DagsterInstance.ephemeral()
        assert dg.materialize(assets, selection=[LEADS_KEY], resources=resources, instance=instance).success
        for day in _days(late_dataset):
            result = dg.materialize(
                assets,
                selection=[CALL_EVENTS_KEY, *REFRESH_KEYS],
                partition_key=day.isoformat(),
                resources=resources,
                instance=instance,
            )
            assert result.success
    return url


@pytest.fixture
def env(
    request: pytest.FixtureRequest,
    base_warehouse: str,
    late_dataset: SandboxDataset,
    tmp_path: Path,
    monkeypatch,
) -> Iterator[Env]:
    path: Path | None = None
    if base_warehouse.startswith("duckdb:///"):
        path = tmp_path / "warehouse.duckdb"
        shutil.copy(base_warehouse.removeprefix("duckdb:///"), path)
        url = f"duckdb:///{path}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        database = f"late_{next(_copies)}"
        url = server.create_database(database, template="late_base")
    with SandboxServer(late_dataset) as sandbox:
        settings = _settings(url, sandbox.base_url)
        _env_vars(monkeypatch, settings)
        yield Env(url, path, sandbox, settings, dg.DagsterInstance.ephemeral())
    if path is None:
        server.drop_database(database)


_copies = itertools.count()


def duckdb_only(env: Env) -> Path:
    """The DuckDB file of `env`; the test is skipped on PostgreSQL (no file lock there)."""
    if env.path is None:
        pytest.skip("DuckDB's file lock; PostgreSQL readers never wait for writers")
    return env.path


def _days(dataset: SandboxDataset) -> list[date]:
    return sorted({_event_day(event) for event in dataset.call_events()} | {dataset.anchor.date()})


def _event_day(event: dict) -> date:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).astimezone(UTC).date()


def _late_calls_by_day(dataset: SandboxDataset) -> dict[date, list[str]]:
    """Late-summary lead calls (ground truth), by the UTC day of their CALL event."""
    day_of = {event["id"]: _event_day(event) for event in dataset.call_events()}
    by_day: dict[date, list[str]] = {}
    for call_id in sorted(dataset.late_summary_call_ids):
        if call_id in day_of:
            by_day.setdefault(day_of[call_id], []).append(call_id)
    return by_day


def _snapshot(url: str) -> dict[str, dict[tuple, tuple]]:
    """Every row of the call tables as primary key -> (whole row incl. `_loaded_at`)."""
    with open_store(url, read_only=True) as store:
        tables = {}
        for spec in TABLES:
            columns = ", ".join(f'"{c}"' for c in spec.column_names)
            width = len(spec.primary_key)
            rows = query(store, f"SELECT {columns} FROM {spec.qualified_name}")
            tables[spec.name] = {tuple(row[:width]): tuple(row) for row in rows}
        return tables


def _query(url: str, sql: str, params: list | None = None) -> list[tuple]:
    with open_store(url, read_only=True) as store:
        return query(store, sql, params or [])


def _status(url: str) -> dict[str, str]:
    return dict(_query(url, f"SELECT call_id, summary_status FROM {CALLS.qualified_name}"))


def _requested(result: dg.SensorResult) -> dict[str, list[str]]:
    """partition key -> call ids named in the run config, for every run request."""
    named: dict[str, list[str]] = {}
    for request in result.run_requests or []:
        assert request.partition_key is not None
        assert set(request.asset_selection or []) == REFRESH_KEYS
        named.setdefault(request.partition_key, []).extend(
            request.run_config["ops"]["calls"]["config"]["call_ids"]
        )
    return named


# --------------------------------------------------------------------------- arrivals


def test_held_back_summaries_are_refreshed_for_exactly_the_days_and_calls_that_arrived(
    env: Env, late_dataset: SandboxDataset
) -> None:
    pending_before = {c for c, s in _status(env.url).items() if s == "pending"}
    late_by_day = _late_calls_by_day(late_dataset)
    # Webchat calls are known only from webhooks, so only lead calls are stored here.
    assert {c for ids in late_by_day.values() for c in ids} <= pending_before

    first = env.tick(None)
    assert not first.run_requests
    assert first.skip_reason is not None and "0 arrived" in first.skip_reason.skip_message
    # Backoff off (recheck 0): every pending call was asked once, and only those.
    assert sorted(env.lookups()) == sorted(pending_before)

    released = sorted(call_ids[0] for call_ids in late_by_day.values())
    assert env.sandbox.state.release_summaries(released) == released
    before = _snapshot(env.url)
    second = env.tick(first.cursor)

    expected = {day.isoformat(): [call_ids[0]] for day, call_ids in late_by_day.items()}
    assert _requested(second) == expected
    for request in second.run_requests:
        assert request.run_key.startswith(f"late-summary:{request.partition_key}:")
        assert request.tags["apten/trigger"] == "late_summary"

    results = [env.execute(request) for request in second.run_requests]
    after = _snapshot(env.url)

    status = _status(env.url)
    assert all(status[call_id] == "ready" for call_id in released)
    summaries = dict(
        _query(env.url, f"SELECT call_id, summary_first_seen_at FROM {CALL_SUMMARIES.qualified_name}")
    )
    expected_with_summary = set(late_dataset.ready_summary_call_ids) | set(released)
    assert set(summaries) == expected_with_summary & set(status)
    latencies = dict(
        _query(
            env.url,
            f"SELECT call_id, summary_latency_seconds FROM {CALL_SUMMARIES.qualified_name} "
            "WHERE call_id IN (SELECT unnest(?))",
            [released],
        )
    )
    assert all(latencies[call_id] is not None and latencies[call_id] > 0 for call_id in released)

    # Only the released calls' rows changed; every other row is identical, `_loaded_at` included.
    for table, rows in after.items():
        changed = {
            key for key in rows.keys() | before[table].keys() if rows.get(key) != before[table].get(key)
        }
        assert {key[0] for key in changed} <= set(released), table
    assert {key[0] for key, row in after["calls"].items() if row != before["calls"][key]} == set(released)
    assert set(after["call_summaries"]) - set(before["call_summaries"]) == {(c,) for c in released}

    # The latency distribution is on the call_summaries materialization.
    for result in results:
        (materialization,) = [
            m for m in result.asset_materializations_for_node("calls") if m.asset_key == CALL_SUMMARIES_KEY
        ]
        assert {
            "summary_latency_seconds_p50",
            "summary_latency_seconds_p95",
            "summary_latency_seconds_max",
        } <= set(materialization.metadata)

    third = env.tick(second.cursor)
    assert not third.run_requests
    assert "0 arrived" in third.skip_reason.skip_message
    # A reset cursor finds nothing to redo either: the warehouse says what is pending.
    assert not env.tick(None).run_requests


def test_a_second_late_summary_on_the_same_day_triggers_again(env: Env, late_dataset: SandboxDataset) -> None:
    day, call_ids = max(_late_calls_by_day(late_dataset).items(), key=lambda item: len(item[1]))
    assert len(call_ids) >= 2, "the dataset needs two late calls on one day"
    first_call, second_call = call_ids[:2]

    cursor = env.tick(None).cursor
    env.sandbox.state.release_summaries([first_call])
    first = env.tick(cursor)
    assert _requested(first) == {day.isoformat(): [first_call]}
    for request in first.run_requests:
        env.execute(request)

    env.sandbox.state.release_summaries([second_call])
    second = env.tick(first.cursor)
    assert _requested(second) == {day.isoformat(): [second_call]}
    assert {r.run_key for r in second.run_requests}.isdisjoint({r.run_key for r in first.run_requests})
    for request in second.run_requests:
        env.execute(request)
    assert _status(env.url)[second_call] == "ready"
    assert not env.tick(second.cursor).run_requests


def test_a_repeated_tick_before_the_run_never_duplicates_it(env: Env, late_dataset: SandboxDataset) -> None:
    day, call_ids = next(iter(_late_calls_by_day(late_dataset).items()))
    env.sandbox.state.release_summaries(call_ids)
    first = env.tick(None)
    assert _requested(first) == {day.isoformat(): call_ids}

    # The run has not happened yet. With the cursor, the calls await their run: nothing is asked.
    asked = len(env.lookups())
    again = env.tick(first.cursor)
    assert not again.run_requests
    assert not set(env.lookups()[asked:]) & set(call_ids)
    # With the cursor lost, the same request comes back under the same run key, which Dagster
    # launches only once.
    reset = env.tick(None)
    assert [(r.partition_key, r.run_key) for r in reset.run_requests] == [
        (r.partition_key, r.run_key) for r in first.run_requests
    ]


# --------------------------------------------------------------------------- give up


def test_calls_past_the_give_up_window_are_marked_missing_through_a_run(
    env: Env, late_dataset: SandboxDataset
) -> None:
    # A 36 s window: every stored call ended longer ago than that.
    impatient = _settings(env.url, env.sandbox.base_url, summary_give_up_hours=0.01)
    pending = {c for c, s in _status(env.url).items() if s == "pending"}
    ended = {
        call_id: created if seconds is None or created is None else created + timedelta(seconds=seconds)
        for call_id, created, seconds in _query(
            env.url,
            f"SELECT call_id, created_at, duration_seconds FROM {CALLS.qualified_name} "
            "WHERE summary_status = 'pending'",
        )
    }
    before = _snapshot(env.url)

    result = env.tick(None, settings=impatient)
    named = {call_id for ids in _requested(result).values() for call_id in ids}
    past = {
        c for c in pending if ended[c] is not None and datetime.now(UTC) - ended[c] > timedelta(minutes=1)
    }
    assert past and past <= named <= pending
    # Given-up calls are not asked by the sensor; the run fetches them once.
    assert not set(env.lookups()) & named
    assert all(
        r.tags["apten/late_summary_given_up"] == str(len(_requested_ids(r))) for r in result.run_requests
    )

    for request in result.run_requests:
        env.execute(request, settings=impatient)
    status = _status(env.url)
    assert {status[c] for c in named} == {"missing"}
    after = _snapshot(env.url)
    changed = {key[0] for key, row in after["calls"].items() if row != before["calls"].get(key)}
    assert changed == named

    asked = len(env.lookups())
    later = env.tick(result.cursor, settings=impatient)
    assert not later.run_requests
    assert not set(env.lookups()[asked:]) & named


def _requested_ids(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"]["calls"]["config"]["call_ids"]


# --------------------------------------------------------------------------- a busy warehouse

HOLD_WRITE_LOCK = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("BEGIN TRANSACTION")
con.execute("UPDATE apten.calls SET fetch_attempts = fetch_attempts")
print("locked", flush=True)
sys.stdin.read()
"""


def test_tick_skips_cleanly_while_another_process_writes(env: Env) -> None:
    cursor = env.tick(None).cursor
    asked = len(env.lookups())
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(duckdb_only(env))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with ThreadPoolExecutor(1) as pool:
            # A hang guard, not a timing assertion: the tick must come back, not wait for the lock.
            result = pool.submit(env.tick, cursor).result(timeout=50)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not result.run_requests
    assert result.skip_reason is not None
    assert result.skip_reason.skip_message.startswith("warehouse busy:")
    assert result.cursor == cursor
    assert len(env.lookups()) == asked


def test_tick_reads_while_this_process_writes_through_the_warehouse(env: Env) -> None:
    writer = connect(duckdb_only(env))
    try:
        writer.execute("BEGIN TRANSACTION")
        writer.execute(f"UPDATE {CALLS.qualified_name} SET fetch_attempts = fetch_attempts")
        result = env.tick(None)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.skip_reason is not None
    assert result.skip_reason.skip_message.startswith("nothing to refresh:")
    assert env.lookups()


def test_tick_skips_cleanly_while_another_duckdb_handle_in_this_process_holds_the_file(env: Env) -> None:
    foreign = duckdb.connect(str(duckdb_only(env)))
    try:
        result = env.tick(None)
    finally:
        foreign.close()
    assert not result.run_requests
    assert result.skip_reason.skip_message.startswith("warehouse busy:")
    assert not env.lookups()


def test_tick_without_a_warehouse_skips(tmp_path: Path, sandbox: SandboxServer, monkeypatch) -> None:
    settings = _settings(f"duckdb:///{tmp_path / 'none' / 'warehouse.duckdb'}", sandbox.base_url)
    _env_vars(monkeypatch, settings)
    sensor = build_late_summary_sensor(settings)
    context = dg.build_sensor_context(
        resources={"warehouse": AptenWarehouse(url=str(settings.warehouse_url))}
    )
    result = sensor(context)
    assert not result.run_requests
    assert "does not exist yet" in result.skip_reason.skip_message


# --------------------------------------------------------------------------- scale

BULK = 50_000


def _bulk_body(call_id: str, created: datetime, summary: str | None) -> dict:
    return {
        "id": call_id,
        "createdAt": created.isoformat().replace("+00:00", "Z"),
        "updatedAt": created.isoformat().replace("+00:00", "Z"),
        "durationSeconds": 60,
        "callStatus": "COMPLETE",
        "summary": summary,
        "transcript": [],
    }


def test_a_tick_over_50000_pending_calls_stays_bounded_and_carries_the_rest(
    tmp_path: Path, sandbox: SandboxServer, monkeypatch
) -> None:
    path = tmp_path / "warehouse.duckdb"
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    fetched = datetime.now(UTC) - timedelta(minutes=30)
    con = connect(path)
    try:
        ensure_schema(con)
        con.execute(
            f"INSERT INTO {CALLS.qualified_name} (call_id, created_at, duration_seconds, summary_status, "
            "first_fetched_at, last_fetched_at, fetch_attempts, _loaded_at) "
            "SELECT 'bulk-' || lpad(i::VARCHAR, 5, '0'), ?, 60, 'pending', ?, ?, 1, ? FROM range(?) AS t(i)",
            [created, fetched, fetched, fetched, BULK],
        )
    finally:
        con.close()
    ids = [f"bulk-{i:05d}" for i in range(BULK)]
    sandbox.state.call_overrides.update({call_id: _bulk_body(call_id, created, None) for call_id in ids})
    # 100 requests/s for a 2 s budget: at most 200 look-ups per tick.
    settings = _settings(f"duckdb:///{path}", sandbox.base_url, max_rps=100.0)
    _env_vars(monkeypatch, settings)
    env = Env(f"duckdb:///{path}", path, sandbox, settings, dg.DagsterInstance.ephemeral())

    first = env.tick(None, budget=2.0)
    first_asked = env.lookups()
    assert len(first_asked) == 200
    assert not first.run_requests
    assert "49,800 carried to the next tick" in first.skip_reason.skip_message
    assert len(first.cursor) < 4_000

    arrived = [call_id for call_id in ids if call_id not in set(first_asked)][:3]
    for call_id in arrived:
        sandbox.state.call_overrides[call_id] = _bulk_body(call_id, created, "Arrived late.")
    sandbox.state.clear_request_log()
    second = env.tick(first.cursor, budget=2.0)
    second_asked = env.lookups()
    assert len(second_asked) == 200
    # The cursor carries the rest over: the second tick asks about 200 other calls.
    assert not set(second_asked) & set(first_asked)
    assert set(arrived) <= set(second_asked)
    assert sorted(i for ids_ in _requested(second).values() for i in ids_) == sorted(arrived)
    assert SensorCursor.parse(second.cursor).resume_after == max(second_asked)
    assert len(second.cursor) < 4_000

    # A lost cursor loses no pending call: the warehouse still lists all 50,000.
    sandbox.state.clear_request_log()
    reset = env.tick(None, budget=2.0)
    assert len(env.lookups()) == 200
    assert reset.skip_reason is not None and reset.skip_reason.skip_message.startswith(
        "nothing to refresh: 50,000 pending"
    )


def test_sensor_is_registered_with_the_refresh_assets_as_target() -> None:
    from apten_assets.defs.apten import build_definitions

    defs = build_definitions(AptenSettings())
    sensor = defs.resolve_sensor_def(LATE_SUMMARY_SENSOR_NAME)
    assert sensor.minimum_interval_seconds == 30
