"""The drills themselves, at any scale: chaos backfill, crash safety, concurrent runs.

Each returns a report with the figures RELIABILITY.md publishes; the tests run them small, and
`python -m tools.reliability` runs them at full size. Every drill runs on DuckDB files by default,
or on PostgreSQL databases given `Warehouses(workdir, new_database)`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from apten_assets.defs.apten import build_definitions
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.tables import TABLES
from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from apten_assets.warehouse import DUCKDB, Store, WarehouseURL, open_store
from tests.warehouse.helpers import query
from tools.reliability.harness import (
    REPO_ROOT,
    RunOutcome,
    TableDiff,
    TableSnapshot,
    Warehouses,
    chaos_faults,
    compare,
    environment,
    finish,
    kill_group,
    open_files,
    partition_range,
    pipeline_env,
    read_outcomes,
    run_pipeline,
    snapshot,
    start_runner,
    wait_for,
)


def fault_free_snapshot(
    dataset: SandboxDataset,
    workdir: Path,
    kinds: tuple[str, ...] = ("leads", "events_and_calls"),
    *,
    warehouses: Warehouses | None = None,
) -> dict[str, TableSnapshot]:
    """Leads, then every partition in one run (or the whole job: `kinds=("pipeline",)`), against a
    sandbox without faults."""
    warehouses = warehouses or Warehouses(workdir)
    first, last = partition_range(dataset)
    name = f"fault_free_{'_'.join(kinds)}"
    db = warehouses.new(name)
    with SandboxServer(dataset) as sandbox:
        env = pipeline_env(sandbox.base_url, db, first, inbox=workdir / f"{name}_webhook_inbox")
        with environment(env):
            for kind in kinds:
                outcome = run_pipeline(kind, partition_range_keys=(first, last))
                if not outcome.success:
                    raise RuntimeError(f"the fault-free {kind} run failed: {outcome.error}")
    return snapshot(db)


def _all_equal(diffs: dict[str, TableDiff]) -> bool:
    return all(d.equal for d in diffs.values())


# --------------------------------------------------------------------------- chaos


@dataclass
class ChaosReport:
    spec: DatasetSpec
    calls: int
    requests: int
    faults: Counter[str]
    statuses: Counter[int]
    runs: list[RunOutcome]
    diffs: dict[str, TableDiff]
    seconds: float

    @property
    def equal(self) -> bool:
        return _all_equal(self.diffs)

    @property
    def runs_failed(self) -> int:
        return sum(not r.success for r in self.runs)


def chaos_drill(
    spec: DatasetSpec,
    workdir: Path,
    *,
    fault_seed: int = 2024,
    read_timeout_seconds: float = 1.0,
    max_attempts_per_run: int = 3,
    expected: dict[str, TableSnapshot] | None = None,
    warehouses: Warehouses | None = None,
) -> ChaosReport:
    """A multi-day backfill through the issue's fault mix, compared with a fault-free run.

    A run that still fails (a request that failed on every retry) is run again as it is, the way
    Dagster's run retries would; the report counts those.
    """
    warehouses = warehouses or Warehouses(workdir)
    dataset = SandboxDataset(spec)
    expected = expected or fault_free_snapshot(dataset, workdir, warehouses=warehouses)
    first, last = partition_range(dataset)
    db = warehouses.new("chaos")
    runs: list[RunOutcome] = []
    started = time.monotonic()
    faults = chaos_faults(fault_seed, read_timeout_seconds)
    with SandboxServer(dataset, faults=faults) as sandbox:
        env = pipeline_env(
            sandbox.base_url,
            db,
            first,
            read_timeout_seconds=read_timeout_seconds,
            inbox=workdir / "chaos_webhook_inbox",
        )
        with environment(env):
            for kind in ("leads", "events_and_calls"):
                for _ in range(max_attempts_per_run):
                    outcome = run_pipeline(kind, partition_range_keys=(first, last))
                    runs.append(outcome)
                    if outcome.success:
                        break
        log = sandbox.state.request_log
    return ChaosReport(
        spec=spec,
        calls=len(dataset.lead_call_ids),
        requests=len(log),
        faults=Counter(r.fault or "none" for r in log),
        statuses=Counter(r.status for r in log),
        runs=runs,
        diffs=compare(expected, snapshot(db)),
        seconds=time.monotonic() - started,
    )


# --------------------------------------------------------------------------- crash


@dataclass(frozen=True)
class KillPoint:
    """When to SIGKILL the run process: once `requests` requests reached the sandbox, or as the
    `write`-th warehouse write of `write_phase` starts ("leads", "call_events" or "calls": the step
    whose requests came last). A write is seen as DuckDB opening its write-ahead log, or as the
    run's PostgreSQL session holding a transaction that has written (`backend_xid` set)."""

    label: str
    requests: int | None = None
    write_phase: str | None = None
    write: int = 1


def phase_of(path: str) -> str:
    for part, name in (("/calls/", "calls"), ("/events", "call_events"), ("/leads", "leads")):
        if part in path:
            return name
    return "start"


@dataclass
class Kill:
    """What one SIGKILL hit, and the state of the warehouse right after it.

    `warehouse_open`: the run had the warehouse open (DuckDB: the file; PostgreSQL: a session).
    `kept_committed_state` (PostgreSQL only, where another session can read while the run is
    stopped): the tables after the kill equal what was committed while the run stood stopped
    inside its write, so nothing of the killed transaction remained."""

    point: KillPoint
    killed: bool
    requests_before_kill: int
    last_path: str
    in_write: bool
    warehouse_open: bool
    wal_bytes_after_kill: int
    opened_cleanly: bool
    duplicates_after_kill: int
    kept_committed_state: bool | None = None

    @property
    def phase(self) -> str:
        return phase_of(self.last_path)


@dataclass
class CrashSequence:
    """Runs killed one after another on the same warehouse, then one plain re-run."""

    kills: list[Kill]
    rerun_success: bool
    diffs: dict[str, TableDiff]
    attempts: int = 1

    @property
    def equal(self) -> bool:
        return _all_equal(self.diffs)


class _WriteWatch:
    """Whether a run process has the warehouse open, and is inside a write, right now."""

    def __init__(self, url: str) -> None:
        self.url = WarehouseURL.parse(url)
        self.wal = f"{self.url.path}.wal" if self.url.backend == DUCKDB else ""
        self._store: Store | None = None
        # A look at /proc costs microseconds; a query on the server, a round trip.
        self.interval = 0.0001 if self.url.backend == DUCKDB else 0.002

    def __enter__(self) -> _WriteWatch:
        if self.url.backend != DUCKDB:
            # A session of our own on the run's database (not read-only: the schema may not exist yet).
            self._store = open_store(self.url)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._store is not None:
            self._store.close()

    def _sessions(self) -> list[tuple]:
        """(transaction has written) for every other session on the run's database."""
        assert self._store is not None
        return query(
            self._store,
            "SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )

    def is_open(self, pid: int) -> bool:
        if self._store is None:
            return self.url.path in open_files(pid)
        return bool(self._sessions())

    def writing(self, pid: int) -> bool:
        # DuckDB opens its write-ahead log at a connection's first write; a PostgreSQL transaction
        # gets its id at its first write (staging into a temp table included).
        if self._store is None:
            return self.wal in open_files(pid)
        return any(written for (written,) in self._sessions())

    def sessions_gone(self, timeout: float = 60.0) -> bool:
        """After a kill: wait until the server has ended the killed run's session (and rolled back
        its transaction). Always true for DuckDB, which has no server."""
        return self._store is None or wait_for(lambda: not self._sessions(), timeout, interval=0.01)


def _stop_at_write(
    proc: subprocess.Popen, sandbox: SandboxServer, watch: _WriteWatch, point: KillPoint, deadline: float
) -> bool:
    """Watch the run process; SIGSTOP it as the chosen write starts. When the write ended before
    the stop landed, let the run go on and stop it inside the next write of the phase. False if
    the process ended first."""
    seen, was_writing = 0, False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        writing = watch.writing(proc.pid)
        if writing and not was_writing:
            log = sandbox.state.request_log
            if phase_of(log[-1].path if log else "") == point.write_phase:
                seen += 1
                if seen >= point.write:
                    os.killpg(proc.pid, signal.SIGSTOP)
                    if watch.writing(proc.pid):
                        return True
                    os.killpg(proc.pid, signal.SIGCONT)
                    writing = False
        was_writing = writing
        time.sleep(watch.interval)
    return False


def _stop_at_request(proc: subprocess.Popen, sandbox: SandboxServer, n: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if len(sandbox.state.request_log) >= n:
            os.killpg(proc.pid, signal.SIGSTOP)
            return True
        time.sleep(0.0001)
    return False


def crash_sequences(n_sequences: int, seed: int, requests_per_run: int) -> list[list[KillPoint]]:
    """Every write phase at least once, the rest at random request counts or random writes."""
    rng = random.Random(seed)
    fixed = [
        [KillPoint("inside the leads write", write_phase="leads")],
        [KillPoint("inside the call_events write", write_phase="call_events")],
        [KillPoint("inside the first calls batch write", write_phase="calls")],
        [KillPoint("inside the second calls batch write", write_phase="calls", write=2)],
    ]
    sequences = fixed[:n_sequences]
    while len(sequences) < n_sequences:
        kills = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                kills.append(KillPoint("at a random request", requests=rng.randint(1, requests_per_run)))
            else:
                phase = rng.choice(["leads", "call_events", "calls"])
                kills.append(KillPoint(f"inside a random {phase} write", write_phase=phase))
        sequences.append(kills)
    return sequences


def crash_drill(
    spec: DatasetSpec,
    workdir: Path,
    sequences: list[list[KillPoint]],
    *,
    expected: dict[str, TableSnapshot] | None = None,
    attempts: int = 3,
    warehouses: Warehouses | None = None,
) -> list[CrashSequence]:
    """For each sequence, on a fresh warehouse: run processes (leads, then every partition in one
    run) SIGKILLed at each point in turn, each kill followed by a check that the warehouse opens
    cleanly (a DuckDB file replays its WAL; PostgreSQL has rolled the killed transaction back);
    then one plain re-run, compared with the fault-free tables.

    A write lasts milliseconds; when the watcher misses one (the run ended first), the sequence
    starts again on a fresh warehouse, up to `attempts` times.
    """
    warehouses = warehouses or Warehouses(workdir)
    dataset = SandboxDataset(spec)
    expected = expected or fault_free_snapshot(dataset, workdir, warehouses=warehouses)
    home = workdir / "dagster_home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    results = []
    for n, points in enumerate(sequences):
        for attempt in range(1, attempts + 1):
            name = f"crash_{n}_{attempt}"
            result = _crash_sequence(dataset, workdir, warehouses.new(name), home, name, points, expected)
            result.attempts = attempt
            if all(k.killed for k in result.kills):
                break
        results.append(result)
    return results


def _crash_sequence(
    dataset: SandboxDataset,
    workdir: Path,
    db: str,
    home: Path,
    name: str,
    points: list[KillPoint],
    expected: dict[str, TableSnapshot],
) -> CrashSequence:
    first, last = partition_range(dataset)
    args = ["leads", "events_and_calls", "--range", f"{first}...{last}"]
    kills = []
    with SandboxServer(dataset) as sandbox, _WriteWatch(db) as watch:
        env = pipeline_env(sandbox.base_url, db, first, dagster_home=home, inbox=workdir / f"{name}_inbox")
        for k, point in enumerate(points):
            sandbox.state.clear_request_log()
            proc = start_runner(args, env, workdir / f"{name}_{k}.log", niceness=10)
            deadline = time.monotonic() + 600
            if point.write_phase is not None:
                stopped = _stop_at_write(proc, sandbox, watch, point, deadline)
            else:
                stopped = _stop_at_request(proc, sandbox, point.requests or 1, deadline)
            in_write = stopped and watch.writing(proc.pid)
            warehouse_open = stopped and watch.is_open(proc.pid)
            request_log = sandbox.state.request_log
            # What another session sees as committed while the run stands stopped in its write.
            committed = snapshot(db) if in_write and watch.url.backend != DUCKDB else None
            kill_group(proc)
            finish(proc)
            gone = watch.sessions_gone()
            wal_bytes = Path(watch.wal).stat().st_size if watch.wal and Path(watch.wal).exists() else 0
            opened, duplicates = _opens_cleanly(db)
            kept = None
            if committed is not None:
                kept = all(d.equal for d in compare(committed, snapshot(db)).values())
            kills.append(
                Kill(
                    point=point,
                    killed=stopped,
                    requests_before_kill=len(request_log),
                    last_path=request_log[-1].path if request_log else "",
                    in_write=in_write,
                    warehouse_open=warehouse_open,
                    wal_bytes_after_kill=wal_bytes,
                    opened_cleanly=opened and gone,
                    duplicates_after_kill=duplicates,
                    kept_committed_state=kept,
                )
            )
            if not stopped:
                break
        rerun_log = workdir / f"{name}_rerun.log"
        code = finish(start_runner(args, env, rerun_log))
    outcomes = read_outcomes(rerun_log)
    return CrashSequence(
        kills=kills,
        rerun_success=code == 0 and len(outcomes) == 2 and all(o["success"] for o in outcomes),
        diffs=compare(expected, snapshot(db)),
    )


def _opens_cleanly(db: str) -> tuple[bool, int]:
    """Open read-write (DuckDB replays its WAL), create what is missing, read every table's keys;
    (ok, duplicate keys found). A warehouse the run never created opens cleanly by definition."""
    url = WarehouseURL.parse(db)
    if url.backend == DUCKDB and not Path(url.path).exists():
        return True, 0
    try:
        with open_store(url) as store:
            store.ensure_schema()
            return True, sum(store.duplicate_keys(spec) for spec in TABLES.values())
    except Exception:
        return False, 0


# --------------------------------------------------------------------------- concurrency


@dataclass(frozen=True)
class PoolOverlap:
    """Two steps of one pool that ran at once: each named `run id prefix:step key`."""

    first: str
    later: str
    start_gap: float  # seconds between their starts


@dataclass
class ConcurrencyReport:
    processes: dict[str, int]  # name -> exit code
    outcomes: dict[str, list[dict]]
    lock_messages: int
    diffs: dict[str, TableDiff]
    seconds: float
    # Per pool, each pair of its steps (from any runs) that were running at once.
    pool_overlaps: dict[str, list[PoolOverlap]]
    pool_steps: dict[str, int]

    @property
    def equal(self) -> bool:
        return _all_equal(self.diffs)


def _pool_overlaps(
    instance: dg.DagsterInstance, pools: dict[str, str]
) -> tuple[dict[str, list[PoolOverlap]], dict[str, int]]:
    """From every run's event log: for each pool, the steps of that pool that ran (STEP_START to
    STEP_SUCCESS or STEP_FAILURE), and each pair of them that overlapped in time."""
    intervals: dict[str, list[tuple[float, float, str]]] = {pool: [] for pool in set(pools.values())}
    for run in instance.get_runs():
        started: dict[str, float] = {}
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None or event.step_key not in pools:
                continue
            if event.event_type_value == "STEP_START":
                started[event.step_key] = record.timestamp
            elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key in started:
                name = f"{run.run_id[:8]}:{event.step_key}"
                intervals[pools[event.step_key]].append((started.pop(event.step_key), record.timestamp, name))
    overlaps = {}
    for pool, spans in intervals.items():
        spans.sort()
        overlaps[pool] = [
            PoolOverlap(name, later_name, later - first)
            for i, (first, end, name) in enumerate(spans)
            for later, _, later_name in spans[i + 1 :]
            if later < end
        ]
    return overlaps, {pool: len(spans) for pool, spans in intervals.items()}


# DuckDB's file lock; PostgreSQL's deadlocks, serialization failures and key collisions.
LOCK_ERROR_MARKERS = (
    "WarehouseBusy",
    "Could not set lock",
    "Conflicting lock",
    "deadlock detected",
    "could not serialize access",
    "duplicate key value",
)


def concurrency_drill(
    spec: DatasetSpec,
    workdir: Path,
    *,
    sensor_runs: int = 3,
    calls_per_sensor_run: int = 5,
    expected: dict[str, TableSnapshot] | None = None,
    warehouses: Warehouses | None = None,
) -> ConcurrencyReport:
    """An intraday schedule run, a multi-day backfill and sensor-requested runs, each in its own
    process as the daemon launches them, on one warehouse and one Dagster instance."""
    warehouses = warehouses or Warehouses(workdir)
    dataset = SandboxDataset(spec)
    # The schedule and backfill runs are the whole job (webhook deliveries and transfers too).
    expected = expected or fault_free_snapshot(dataset, workdir, kinds=("pipeline",), warehouses=warehouses)
    first, last = partition_range(dataset)
    home = workdir / "dagster_home_concurrent"
    home.mkdir(exist_ok=True)
    # The project's instance settings: the pools are what keep these runs apart.
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    db = warehouses.new("concurrent")
    started = time.monotonic()
    with SandboxServer(dataset) as sandbox:
        env = pipeline_env(
            sandbox.base_url, db, first, dagster_home=home, inbox=workdir / "concurrent_webhook_inbox"
        )
        # The first day is already loaded, as it would be on a running deployment; the sensor
        # asks again for calls stored there.
        with environment(env):
            instance = dg.DagsterInstance.get()
            defs = build_definitions(AptenSettings.from_env())
            pools = {a.node_def.name: pool for a in defs.assets for pool in a.node_def.pools}
            for kind in ("leads", "events_and_calls"):
                outcome = run_pipeline(kind, partition_key=first, instance=instance)
                if not outcome.success:
                    raise RuntimeError(f"loading the first day failed: {outcome.error}")
        with open_store(db, read_only=True) as store:
            stored = [row[0] for row in query(store, "SELECT call_id FROM apten.calls ORDER BY 1")]
        launches = {
            "backfill": ["pipeline", "--range", f"{first}...{last}"],
            "intraday": ["pipeline", "--partition", last],
        }
        for i in range(sensor_runs):
            ids = stored[i * calls_per_sensor_run : (i + 1) * calls_per_sensor_run]
            launches[f"sensor_{i}"] = ["calls", "--partition", first, "--call-ids", ",".join(ids)]
        procs = {name: start_runner(a, env, workdir / f"{name}.log") for name, a in launches.items()}
        codes = {name: finish(proc) for name, proc in procs.items()}
    outcomes = {name: read_outcomes(workdir / f"{name}.log") for name in launches}
    text = "\n".join((workdir / f"{name}.log").read_text(errors="replace") for name in launches)
    overlaps, steps = _pool_overlaps(instance, pools)
    return ConcurrencyReport(
        processes=codes,
        outcomes=outcomes,
        lock_messages=sum(text.count(marker) for marker in LOCK_ERROR_MARKERS),
        diffs=compare(expected, snapshot(db)),
        seconds=time.monotonic() - started,
        pool_overlaps=overlaps,
        pool_steps=steps,
    )
