"""Shared pieces of the reliability drills (GitHub issue #6): datasets, environments, runs, snapshots.

Everything here drives the real pipeline: the bundled sandbox over loopback HTTP, the Dagster job
`apten_pipeline_job` and a real warehouse: a DuckDB file, or a database on a PostgreSQL server
(`Warehouses` makes a fresh one per run of a drill). Runs go either in this process (`run_pipeline`) or in
a separate process (`start_runner`, which is `python -m tools.reliability.runner`), the way the
Dagster daemon launches each run in a process of its own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from apten_assets.lib.tables import TABLES
from apten_assets.sandbox.app import FaultConfig
from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.warehouse import DUCKDB, WarehouseURL, open_store
from tests.warehouse.helpers import query

REPO_ROOT = Path(__file__).resolve().parents[2]
# A fixed "now" for the sandbox: the same spec serves byte-identical data in every run.
ANCHOR = datetime(2026, 5, 14, 15, 30, tzinfo=UTC)
# Late summaries must not start appearing half-way through a long drill (the sandbox clock runs),
# or two runs of the same spec would legitimately differ.
NEVER_WITHIN_A_DRILL = 10_000_000.0

# Fetch bookkeeping: legitimately different between two correct runs of the same data.
BOOKKEEPING_COLUMNS: dict[str, frozenset[str]] = {
    "calls": frozenset({"first_fetched_at", "last_fetched_at", "fetch_attempts"}),
    "call_summaries": frozenset({"summary_first_seen_at", "summary_latency_seconds"}),
    "webhook_deliveries": frozenset({"received_at"}),
    # When and how often a record was rejected differs between two correct runs; what was
    # rejected, why and whether it is resolved does not.
    "rejected_records": frozenset({"first_seen_at", "last_seen_at", "times_seen", "resolved_at"}),
}
IGNORED_EVERYWHERE = frozenset({"_loaded_at"})

CALL_ASSETS = ("apten/calls", "apten/call_summaries", "apten/call_transcript_turns")


def drill_spec(n_leads: int, calls_per_lead: int, days: int, seed: int = 11) -> DatasetSpec:
    return DatasetSpec(
        seed=seed,
        n_leads=n_leads,
        calls_per_lead=calls_per_lead,
        days=days,
        anchor=ANCHOR,
        late_summary_delay_seconds=NEVER_WITHIN_A_DRILL,
    )


def partition_range(dataset: SandboxDataset) -> tuple[str, str]:
    """First and last daily partition key holding the dataset's calls."""
    first = datetime.fromtimestamp(dataset.window_start_ms / 1000, UTC).date()
    return first.isoformat(), dataset.anchor.date().isoformat()


def chaos_faults(seed: int, read_timeout_seconds: float) -> FaultConfig:
    """The issue's mix: 10% 429 (half with Retry-After), 5% 500/503, 2% dropped connections,
    1% truncated JSON, 1% answers slower than the client's read timeout."""
    return FaultConfig(
        p_429=0.10,
        retry_after_share=0.5,
        p_5xx=0.05,
        p_drop=0.02,
        p_truncate=0.01,
        p_slow=0.01,
        slow_seconds=read_timeout_seconds + 1.0,
        seed=seed,
    )


@dataclass(frozen=True)
class Warehouses:
    """Where a drill keeps its warehouses: DuckDB files in `workdir`, or, given `new_database`
    (a name -> the URL of a new, empty PostgreSQL database), databases on that server."""

    workdir: Path
    new_database: Callable[[str], str] | None = None
    # (the URL of a database nobody is connected to, a name) -> the URL of a new copy of it.
    copy_database: Callable[[str, str], str] | None = None

    @property
    def backend(self) -> str:
        return DUCKDB if self.new_database is None else "postgresql"

    def new(self, name: str) -> str:
        """The URL of a fresh, empty warehouse called `name`."""
        if self.new_database is None:
            return f"duckdb:///{self.workdir / f'{name}.duckdb'}"
        return self.new_database(name)

    def copy(self, url: str, name: str) -> str:
        """The URL of a new warehouse called `name` holding what `url` holds now (every session on
        `url` closed), so a test can read one run's tables after the next run changed them."""
        if self.new_database is None:
            path = self.workdir / f"{name}.duckdb"
            shutil.copyfile(WarehouseURL.parse(url).path, path)
            return f"duckdb:///{path}"
        if self.copy_database is None:
            raise ValueError("these PostgreSQL warehouses cannot be copied (no copy_database)")
        return self.copy_database(url, name)

    def inbox(self, name: str) -> Path:
        """A webhook inbox folder of its own for the warehouse called `name`."""
        return self.workdir / f"{name}_webhook_inbox"


def _warehouse_url(warehouse: Path | str) -> WarehouseURL:
    """A warehouse URL, or a DuckDB file's path, as a URL."""
    text = str(warehouse)
    return WarehouseURL.parse(text) if "://" in text else WarehouseURL.for_duckdb_file(text)


def pipeline_env(
    base_url: str,
    warehouse: Path | str,
    start_date: str,
    *,
    api_key: str | None = None,
    read_timeout_seconds: float = 2.0,
    retry_base_seconds: float = 0.02,
    max_concurrency: int = 8,
    dagster_home: Path | str | None = None,
    inbox: Path | str | None = None,
) -> dict[str, str]:
    """The APTEN_* variables of one drill (merged over a copy of this process's environment).

    `warehouse` is a DuckDB file's path or a warehouse URL; each drill gets its own (empty)
    webhook `inbox`, never the working directory's data/webhooks/ (by default next to a DuckDB
    file; a PostgreSQL warehouse needs one named)."""
    url = _warehouse_url(warehouse)
    if inbox is None:
        if url.backend != DUCKDB:
            raise ValueError("a drill on a PostgreSQL warehouse needs its own webhook inbox folder")
        inbox = str(Path(url.path).with_suffix("")) + "_webhook_inbox"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APTEN_")}
    env.update(
        APTEN_BASE_URL=base_url,
        APTEN_START_DATE=start_date,
        APTEN_WEBHOOK_INBOX=str(inbox),
        APTEN_MAX_RPS="2000",
        APTEN_MAX_CONCURRENCY=str(max_concurrency),
        APTEN_INTERNAL_READ_TIMEOUT_SECONDS=str(read_timeout_seconds),
        APTEN_INTERNAL_RETRY_BASE_SECONDS=str(retry_base_seconds),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    )
    if url.backend == DUCKDB:
        env["APTEN_DUCKDB_PATH"] = url.path
    else:
        env["APTEN_WAREHOUSE_URL"] = str(warehouse)
    if api_key is not None:
        env["APTEN_API_KEY"] = api_key
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    return env


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Run a block with exactly `env`'s APTEN_* and DAGSTER_HOME variables set in os.environ."""
    names = {k for k in (*os.environ, *env) if k.startswith("APTEN_") or k == "DAGSTER_HOME"}
    saved = {k: os.environ.get(k) for k in names}
    try:
        for k in names:
            os.environ.pop(k, None)
        os.environ.update({k: v for k, v in env.items() if k in names})
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- runs


@dataclass
class RunOutcome:
    """One Dagster run: did it succeed, and the message of the first failed step if not."""

    run_id: str
    success: bool
    kind: str
    error: str | None = None
    step_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _metadata_value(value: Any) -> Any:
    inner = getattr(value, "value", value)
    if isinstance(inner, int | float | str | bool) or inner is None:
        return inner
    if isinstance(inner, list | dict):
        return inner
    return str(inner)


def run_pipeline(
    kind: str,
    *,
    partition_range_keys: tuple[str, str] | None = None,
    partition_key: str | None = None,
    call_ids: Sequence[str] = (),
    instance: Any = None,
) -> RunOutcome:
    """Run `apten_pipeline_job` (or part of it) in this process, with os.environ as the settings.

    kinds: `leads` (apten/leads), `events_and_calls` (call_events and the calls op over a range
    or one partition), `pipeline` (the whole job: what the schedules launch), `calls` (only the
    calls op, with `call_ids` run config: what the late-summary sensor requests).
    """
    import dagster as dg

    from apten_assets.defs.apten import build_definitions
    from apten_assets.lib.config import AptenSettings

    defs = build_definitions(AptenSettings.from_env())
    job = defs.resolve_job_def("apten_pipeline_job")
    selections = {
        "leads": ["apten/leads"],
        "events_and_calls": ["apten/call_events", *CALL_ASSETS],
        "pipeline": None,
        "calls": list(CALL_ASSETS),
    }
    keys = selections[kind]
    asset_selection = None if keys is None else [dg.AssetKey(k.split("/")) for k in keys]
    tags: dict[str, str] = {"apten/drill": kind}
    if partition_range_keys is not None:
        tags["dagster/asset_partition_range_start"] = partition_range_keys[0]
        tags["dagster/asset_partition_range_end"] = partition_range_keys[1]
    run_config: dict[str, Any] = {}
    if call_ids:
        run_config = {"ops": {"calls": {"config": {"call_ids": list(call_ids), "refresh_all": False}}}}
    if kind == "leads":
        partition_key = None
        tags = {"apten/drill": kind}
    instance = instance if instance is not None else dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(
        instance=instance,
        asset_selection=asset_selection,
        partition_key=partition_key,
        tags=tags,
        run_config=run_config,
        raise_on_error=False,
    )
    error = None
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure or e.is_failure]
        messages = []
        for event in failures:
            data = event.event_specific_data
            err = getattr(data, "error", None)
            if err is not None:
                messages.append(err.to_string())
        error = "\n".join(messages) or "run failed"
    metadata: dict[str, dict[str, Any]] = {}
    for event in result.all_events:
        if event.is_step_materialization:
            mat = event.step_materialization_data.materialization
            name = "/".join(mat.asset_key.path)
            metadata[name] = {k: _metadata_value(v) for k, v in mat.metadata.items()}
    warnings = [
        entry.user_message for entry in instance.all_logs(result.run_id) if entry.level >= logging.WARNING
    ]
    return RunOutcome(result.run_id, result.success, kind, error, metadata, warnings)


def runner_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "tools.reliability.runner", *args]


def start_runner(
    args: Sequence[str], env: Mapping[str, str], log_path: Path, *, niceness: int = 0
) -> subprocess.Popen:
    """`python -m tools.reliability.runner ARGS` in its own session (so a kill takes the group).

    A positive `niceness` lowers its CPU priority, so a watcher reacts before a short write ends.
    """
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed by `finish`
    # `nice` execs the command, so the pid stays the runner's own.
    prefix = ["nice", "-n", str(niceness)] if niceness else []
    return subprocess.Popen(
        [*prefix, *runner_command(args)],
        cwd=REPO_ROOT,
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 900.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the runner and anything it started, as a dead machine or OOM killer would."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def open_files(pid: int) -> list[str]:
    """Paths the process has open right now (from /proc), empty if it is gone."""
    fd_dir = Path(f"/proc/{pid}/fd")
    paths = []
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return paths
    for entry in entries:
        try:
            paths.append(os.readlink(entry))
        except OSError:
            continue
    return paths


def read_outcomes(log_path: Path) -> list[dict[str, Any]]:
    """The JSON lines the runner printed, one per finished run."""
    outcomes = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith('{"drill_run"'):
            outcomes.append(json.loads(line)["drill_run"])
    return outcomes


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class TableSnapshot:
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def by_key(self) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        idx = [self.columns.index(k) for k in self.key_columns]
        return {tuple(row[i] for i in idx): row for row in self.rows}


def snapshot(warehouse: Path | str) -> dict[str, TableSnapshot]:
    """Every contract table (and the sync cursors) without fetch bookkeeping, in key order.

    `warehouse` is a DuckDB file's path or a warehouse URL; read through a read-only store."""
    with open_store(_warehouse_url(warehouse), read_only=True) as store:
        tables: dict[str, TableSnapshot] = {}
        for name, spec in TABLES.items():
            skip = IGNORED_EVERYWHERE | BOOKKEEPING_COLUMNS.get(name, frozenset())
            columns = tuple(c for c in spec.column_names if c not in skip)
            select = ", ".join(f'"{c}"' for c in columns)
            order = ", ".join(f'"{c}"' for c in spec.primary_key)
            rows = query(store, f"SELECT {select} FROM {spec.qualified_name} ORDER BY {order}")
            tables[name] = TableSnapshot(columns, spec.primary_key, tuple(rows))
        cursors = query(store, "SELECT name, value FROM apten._sync_state ORDER BY name")
        tables["_sync_state"] = TableSnapshot(("name", "value"), ("name",), tuple(cursors))
        return tables


def duplicate_key_counts(warehouse: Path | str) -> dict[str, int]:
    with open_store(_warehouse_url(warehouse), read_only=True) as store:
        return {name: store.duplicate_keys(spec) for name, spec in TABLES.items()}


@dataclass
class TableDiff:
    expected_rows: int
    actual_rows: int
    lost: int
    extra: int
    duplicates: int
    changed: int
    examples: list[str]

    @property
    def equal(self) -> bool:
        return not (self.lost or self.extra or self.duplicates or self.changed)


def compare(expected: dict[str, TableSnapshot], actual: dict[str, TableSnapshot]) -> dict[str, TableDiff]:
    """Per table: rows lost, rows extra, duplicate keys and rows whose content differs."""
    diffs = {}
    for name, want in expected.items():
        got = actual[name]
        want_rows, got_rows = want.by_key(), got.by_key()
        lost = [k for k in want_rows if k not in got_rows]
        extra = [k for k in got_rows if k not in want_rows]
        changed = [k for k in want_rows if k in got_rows and want_rows[k] != got_rows[k]]
        duplicates = len(got.rows) - len(got_rows)
        examples = [f"lost {k}" for k in lost[:3]] + [f"extra {k}" for k in extra[:3]]
        for k in changed[:3]:
            diff_cols = [c for c, a, b in zip(want.columns, want_rows[k], got_rows[k], strict=True) if a != b]
            examples.append(f"changed {k}: {diff_cols}")
        diffs[name] = TableDiff(
            len(want.rows), len(got.rows), len(lost), len(extra), duplicates, len(changed), examples
        )
    return diffs


def describe_diffs(diffs: dict[str, TableDiff]) -> str:
    lines = []
    for name, d in diffs.items():
        state = "equal" if d.equal else "DIFFERENT"
        lines.append(
            f"{name}: {state} ({d.actual_rows}/{d.expected_rows} rows, lost {d.lost}, extra {d.extra}, "
            f"duplicates {d.duplicates}, changed {d.changed}) {'; '.join(d.examples)}"
        )
    return "\n".join(lines)


def ground_truth_counts(dataset: SandboxDataset) -> dict[str, int]:
    """What a complete load of the dataset's lead calls must hold."""
    lead_calls = set(dataset.lead_call_ids)
    missing = set(dataset.missing_call_ids)
    return {
        "leads": len(dataset.leads),
        "call_events": len(lead_calls),
        "calls": len(lead_calls),
        "calls_not_found": len(missing & lead_calls),
    }


def wait_for(predicate: Any, timeout: float, interval: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def today() -> date:
    return datetime.now(UTC).date()


def days_between(first: str, last: str) -> list[str]:
    a, b = date.fromisoformat(first), date.fromisoformat(last)
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]
