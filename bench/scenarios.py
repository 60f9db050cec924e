"""The scenarios of issue #5, each a function over a running sandbox process.

Every contender run is its own subprocess (peak RSS per contender) against a sandbox in another
process; each run gets a fresh DuckDB file. Runs of different contenders are interleaved, so a
slow minute on the machine hits all of them alike.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

from apten_assets.sandbox.app import FaultConfig
from apten_assets.sandbox.data import DatasetSpec
from bench import launch as launching
from bench.runner import ROOT, run_contender
from bench.sandbox_proc import SandboxInfo, SandboxProcess
from bench.stats import Figure

NO_LIMIT_RPS = 1_000_000.0


@dataclass(frozen=True)
class Profile:
    """Sizes and repetitions of one benchmark run (`FULL`, or `SMOKE` for the test suite)."""

    name: str
    calls_per_lead: int
    turns_per_call: int
    # 2 + 3: the hand-written loop and dlt (one dataset; scenario 6 loads it too).
    head_to_head_leads: int
    # 1: enrichment against the rate limit (its goals are a rate and a fraction, not a size).
    rate_leads: int
    rate_latency_ms: float
    rate_limit_rps: float
    rate_runs: int
    ours_runs: int
    loop_runs: int
    dlt_runs: int
    # 4: scale, leads per size (the head-to-head size is reused, not run again).
    scale_leads: tuple[int, ...]
    scale_runs: tuple[int, ...]
    # 5: the late-summary sensor.
    sensor_pending: int
    sensor_runs: int
    # 6: the head-to-head load launched as users launch it, and again at this latency (0: not run).
    launch_latency_ms: float
    launch_cli_runs: int
    # dlt at `launch_latency_ms` (0: its lower bound from the stages of its run at latency 0).
    dlt_latency_runs: int
    # Webhook rounds through the daemon (one call each: one sensor-requested targeted run each).
    webhook_rounds: int
    max_concurrency: int = 8
    # 3 and 4 on PostgreSQL (a throwaway server the bench starts): runs of ours and dlt on
    # `pg_head_to_head_leads` leads (None: the head-to-head data itself), and the scale sizes
    # (leads) ours also runs there.
    pg_ours_runs: int = 1
    pg_dlt_runs: int = 1
    pg_scale_leads: tuple[int, ...] = ()
    pg_head_to_head_leads: int | None = None

    @property
    def pg_leads(self) -> int:
        return self.pg_head_to_head_leads or self.head_to_head_leads


# ~40 turns per call on average: COMPLETE calls get 50, voicemails 1-2, the rest none.
# Sizes and repeats are chosen against the 15-minute limit: bench/notes.md, "Run length" and
# "Run length (session 4)".
FULL = Profile(
    name="full",
    calls_per_lead=25,
    turns_per_call=50,
    head_to_head_leads=400,
    # 5,000 calls: ~105 s at the limit, with the webhook rounds beside it. Its goals are a rate, a
    # fraction and a count of 429s, but the calls step's fixed costs (choosing the targets, the last
    # batch's write) weigh in the fraction: at 3,000 calls it measured 0.913-0.943 (bench/notes.md).
    rate_leads=200,
    rate_latency_ms=50.0,
    rate_limit_rps=50.0,
    rate_runs=3,
    ours_runs=2,
    # Three loop runs (~12 s each): their median CPU time is the machine's factor for "DuckDB no
    # worse" and their median wall time the calls step's bound, and one run swung both by 30%.
    loop_runs=3,
    dlt_runs=1,
    scale_leads=(40, 400, 4000),
    scale_runs=(1, 2, 1),
    sensor_pending=50_000,
    sensor_runs=1,
    launch_latency_ms=50.0,
    launch_cli_runs=1,
    dlt_latency_runs=0,
    webhook_rounds=4,
    pg_ours_runs=1,
    pg_dlt_runs=1,
    # PostgreSQL at 100,000 calls is the write-path replay (bench/pii_cost.py), not a run over HTTP.
    # PostgreSQL over HTTP at 4,000 calls: dlt's postgres destination takes 7-10 s per 1,000 calls,
    # and the 100,000-call goals of issue 12 are the write path's (the replay).
    pg_head_to_head_leads=160,
    pg_scale_leads=(160,),
)
SMOKE = Profile(
    name="smoke",
    calls_per_lead=5,
    turns_per_call=6,
    head_to_head_leads=8,
    rate_leads=8,
    rate_latency_ms=5.0,
    rate_limit_rps=50.0,
    rate_runs=1,
    ours_runs=1,
    loop_runs=1,
    dlt_runs=1,
    scale_leads=(4, 8),
    scale_runs=(1, 1),
    sensor_pending=300,
    sensor_runs=1,
    launch_latency_ms=5.0,
    launch_cli_runs=1,
    dlt_latency_runs=1,
    webhook_rounds=1,
    pg_scale_leads=(8,),
)


def data_day() -> date:
    """All generated calls fall on yesterday (UTC): one complete, closed daily partition."""
    return datetime.now(UTC).date() - timedelta(days=1)


def dataset_spec(profile: Profile, n_leads: int) -> DatasetSpec:
    anchor = datetime.combine(data_day(), dtime(23, 0), tzinfo=UTC)
    return DatasetSpec(
        seed=7,
        n_leads=n_leads,
        calls_per_lead=profile.calls_per_lead,
        days=1,
        anchor=anchor,
        turns_per_call=profile.turns_per_call,
    )


@dataclass
class Step:
    """One timed step of the run: seconds from the run's start to its own, and its wall time."""

    label: str
    level: int
    start: float
    seconds: float = 0.0


def contender_params(base_url: str, run_dir: Path, max_rps: float, max_concurrency: int) -> dict[str, Any]:
    """A contender's parameters for one load of the data day into a fresh file under `run_dir`."""
    return {
        "base_url": base_url,
        "db_path": str(run_dir / "warehouse.duckdb"),
        "work_dir": str(run_dir / "contender"),
        "partition": data_day().isoformat(),
        "max_rps": max_rps,
        "max_concurrency": max_concurrency,
    }


@dataclass
class Bench:
    """Shared state of one benchmark run: where files go, how to report progress, raw results,
    the PostgreSQL server its runs share, and the webhook rounds when they run in the background."""

    profile: Profile
    workdir: Path
    say: Callable[[str], None] = print
    raw: dict[str, Any] = field(default_factory=dict)
    webhooks: Future[WebhookRounds] | None = None
    # How long each scenario (level 0) and its larger parts (level 1) took, in the order they started.
    steps: list[Step] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    _postgres: PostgresWarehouses | None = None
    _pool: ThreadPoolExecutor | None = None

    def step(self, label: str, level: int = 1) -> Step:
        """A new entry in `steps`, started now; the caller sets its `seconds` when it ends."""
        entry = Step(label, level, time.perf_counter() - self.started)
        self.steps.append(entry)
        return entry

    @contextlib.contextmanager
    def timed(self, label: str, level: int = 1) -> Iterator[None]:
        """The block's wall time as a step."""
        entry = self.step(label, level)
        try:
            yield
        finally:
            entry.seconds = time.perf_counter() - self.started - entry.start

    def postgres(self) -> PostgresWarehouses:
        """The throwaway PostgreSQL server, started on first use and kept until `close()`."""
        if self._postgres is None:
            self._postgres = PostgresWarehouses().__enter__()
        return self._postgres

    def start_webhooks(self) -> None:
        """The webhook rounds through the daemon, in the background: they wait on the sensor's
        interval, not on the CPU, so they run beside the rate-limited scenarios."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhooks")
        entry = self.step("6: webhook rounds through the daemon, in the background beside 1 and 5", 0)

        def rounds() -> WebhookRounds:
            out = webhook_rounds(self, background=True)
            entry.seconds = out.seconds
            return out

        self.webhooks = self._pool.submit(rounds)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._postgres is not None:
            self._postgres.__exit__(None, None, None)
            self._postgres = None

    def run(
        self,
        contender: str,
        sandbox: SandboxProcess,
        label: str,
        *,
        max_rps: float = NO_LIMIT_RPS,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One run of `contender` on a fresh DuckDB file (or the empty PostgreSQL database
        `extra["warehouse_url"]` names); adds the sandbox's request counts."""
        run_dir = self.workdir / label
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        params = {
            **contender_params(sandbox.base_url, run_dir, max_rps, self.profile.max_concurrency),
            **(extra or {}),
        }
        sandbox.reset_counts()
        result = run_contender(contender, params, run_dir, label)
        counts = sandbox.counts()
        result["sandbox"] = {
            **asdict(counts),
            "by_status": {str(status): n for status, n in counts.by_status.items()},
            "per_second": counts.per_second,
            "total": counts.total,
        }
        # The warehouse files are the bulk of the disk use; the figures are in `result`.
        for path in run_dir.glob("warehouse.duckdb*"):
            path.unlink()
        shutil.rmtree(run_dir / "contender", ignore_errors=True)
        self.raw.setdefault("runs", {})[label] = result
        self.say(
            f"  {label}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_bytes'] / 2**20:,.0f} MiB, "
            f"{counts.total:,} requests ({counts.too_many_requests} x 429), rows {result['rows']}"
        )
        return result


# --------------------------------------------------------------------------- results


@dataclass
class ContenderFigures:
    """One contender's runs on one dataset."""

    name: str
    runs: list[dict[str, Any]]

    def figure(self, pick: Callable[[dict[str, Any]], float]) -> Figure:
        return Figure.of([pick(run) for run in self.runs])

    @property
    def seconds(self) -> Figure:
        return self.figure(lambda r: r["seconds"])

    @property
    def cpu_seconds(self) -> Figure:
        return self.figure(lambda r: r["cpu_seconds"])

    @property
    def peak_rss(self) -> Figure:
        return self.figure(lambda r: r["peak_rss_bytes"])

    @property
    def rss_before_load(self) -> Figure:
        return self.figure(lambda r: r["rss_before_load_bytes"])

    @property
    def requests(self) -> Figure:
        return self.figure(lambda r: r["sandbox"]["total"])

    @property
    def rows(self) -> dict[str, int]:
        """Rows loaded (identical in every run, or the first run's with a mismatch flagged)."""
        return self.runs[0]["rows"]

    @property
    def rows_consistent(self) -> bool:
        return all(run["rows"] == self.runs[0]["rows"] for run in self.runs)


@dataclass
class RateLimitResult:
    dataset: SandboxInfo
    latency_ms: float
    limit_rps: float
    ours: ContenderFigures

    def calls(self, run: dict[str, Any]) -> int:
        return int(run["metadata"]["apten/calls"]["fetched"])

    @property
    def calls_per_second(self) -> Figure:
        """Over the calls step (the enrichment itself)."""
        return self.ours.figure(lambda r: self.calls(r) / r["metadata"]["apten/calls"]["seconds_total"])

    @property
    def fraction_of_limit(self) -> Figure:
        return Figure.of([v / self.limit_rps for v in self.calls_per_second.values])

    @property
    def load_calls_per_second(self) -> Figure:
        """Over the whole load, leads and events pages included."""
        return self.ours.figure(lambda r: self.calls(r) / r["seconds"])

    @property
    def load_fraction_of_limit(self) -> Figure:
        return Figure.of([v / self.limit_rps for v in self.load_calls_per_second.values])

    @property
    def request_rate_fraction(self) -> Figure:
        return self.ours.figure(lambda r: r["sandbox"]["per_second"] / self.limit_rps)

    @property
    def too_many_requests(self) -> Figure:
        return self.ours.figure(lambda r: r["sandbox"]["by_status"].get("429", 0))

    @property
    def requests_per_call(self) -> Figure:
        return self.ours.figure(lambda r: r["sandbox"]["total"] / self.calls(r))

    @property
    def slowdowns(self) -> Figure:
        return self.ours.figure(lambda r: sum(m.get("api_rate_slowdowns", 0) for m in r["metadata"].values()))

    @property
    def limiter_wait(self) -> Figure:
        return self.ours.figure(
            lambda r: sum(m.get("api_rate_limiter_wait_seconds", 0.0) for m in r["metadata"].values())
        )


@dataclass
class HeadToHeadResult:
    dataset: SandboxInfo
    ours: ContenderFigures
    loop: ContenderFigures
    dlt: ContenderFigures | None
    # The same data into PostgreSQL.
    ours_pg: ContenderFigures | None = None
    dlt_pg: ContenderFigures | None = None
    # Their dataset, when not `dataset` (`Profile.pg_head_to_head_leads`).
    dataset_pg: SandboxInfo | None = None

    @property
    def same_rows(self) -> bool:
        contenders = [c for c in (self.ours, self.loop, self.dlt) if c is not None]
        keys = ("calls", "summaries", "turns", "call_events", "leads")
        return all(c.rows_consistent for c in contenders) and all(
            all(c.rows[k] == self.ours.rows[k] for k in keys) for c in contenders
        )


@dataclass
class ScalePoint:
    dataset: SandboxInfo
    ours: ContenderFigures

    @property
    def calls(self) -> int:
        return int(self.ours.runs[0]["metadata"]["apten/calls"]["fetched"])

    @property
    def turns(self) -> int:
        return int(self.ours.rows["turns"])

    def seconds_of(self, name: str) -> Figure | None:
        """A timing the calls step reports in its metadata (`seconds_<name>`), when it does."""
        key = f"seconds_{name}"
        if any(key not in run["metadata"]["apten/calls"] for run in self.ours.runs):
            return None
        return self.ours.figure(lambda r: r["metadata"]["apten/calls"][key])


@dataclass
class SensorResult:
    pending: int
    bound: int
    runs: list[dict[str, Any]]
    note: str = ""

    @property
    def seconds(self) -> Figure:
        return Figure.of([r["seconds"] for r in self.runs])

    @property
    def requests(self) -> Figure:
        return Figure.of([r["sandbox"]["total"] for r in self.runs])


@dataclass
class LaunchResult:
    """Scenario 6: the head-to-head load as users launch it. Each run is a dict with `seconds`,
    `cpu_seconds` and `peak_rss_bytes` of the launched process tree."""

    dataset: SandboxInfo
    cli: ContenderFigures
    daemon: ContenderFigures
    latency_ms: float = 0.0
    cli_latency: ContenderFigures | None = None
    dlt_latency: ContenderFigures | None = None
    requests_latency: int = 0
    webhook: dict[str, Any] | None = None
    webhook_error: str | None = None
    # True: the rounds ran in the background beside scenarios 1 and 5.
    webhook_background: bool = False


@dataclass
class Results:
    profile: Profile
    rate_limit: RateLimitResult | None = None
    head_to_head: HeadToHeadResult | None = None
    scale: list[ScalePoint] = field(default_factory=list)
    scale_pg: list[ScalePoint] = field(default_factory=list)
    sensor: SensorResult | None = None
    sensor_skipped: str | None = None
    launch: LaunchResult | None = None
    extras: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- scenarios


def rate_limit(bench: Bench, results: Results) -> None:
    """Scenario 1. Its runs wait on the rate limit, not on the CPU, so they run at the same time,
    each against its own sandbox process with its own limit (a few per cent of a core each). The
    scheduling jitter two cores shared by several processes add is part of what the client's
    rate limiter must absorb without a 429."""
    profile = bench.profile
    spec = dataset_spec(profile, profile.rate_leads)
    limited = FaultConfig(latency_ms=profile.rate_latency_ms, rate_limit_rps=profile.rate_limit_rps)
    bench.say(
        f"[1] enrichment against the rate limit: {profile.rate_latency_ms:g} ms latency, "
        f"{profile.rate_limit_rps:g} req/s limit, APTEN_MAX_RPS={profile.rate_limit_rps:g}, "
        f"{profile.rate_runs} runs side by side on {spec.n_leads * spec.calls_per_lead:,} calls"
    )
    with contextlib.ExitStack() as stack:
        sandboxes = [stack.enter_context(SandboxProcess(spec, limited)) for _ in range(profile.rate_runs)]
        with ThreadPoolExecutor(max_workers=len(sandboxes)) as pool:
            futures = [
                pool.submit(
                    bench.run, "ours", sandbox, f"rate_limit.ours.{i}", max_rps=profile.rate_limit_rps
                )
                for i, sandbox in enumerate(sandboxes)
            ]
            runs = [future.result() for future in futures]
        assert sandboxes[0].info is not None
        results.rate_limit = RateLimitResult(
            sandboxes[0].info, profile.rate_latency_ms, profile.rate_limit_rps, ContenderFigures("ours", runs)
        )


def head_to_head(bench: Bench, results: Results) -> None:
    """Scenarios 2 and 3 (and scale's middle point): latency 0, no rate limit, one dataset."""
    profile = bench.profile
    spec = dataset_spec(profile, profile.head_to_head_leads)
    bench.say(
        f"[2, 3] ours vs the hand-written loop vs dlt on {spec.n_leads * spec.calls_per_lead:,} calls: "
        "latency 0, no rate limit"
    )
    with SandboxProcess(spec) as sandbox:
        assert sandbox.info is not None
        bench.say(f"  dataset: {sandbox.info.description}")
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "loop": [], "dlt_rest_api": []}
        wanted = {"ours": profile.ours_runs, "loop": profile.loop_runs, "dlt_rest_api": profile.dlt_runs}
        with bench.timed("2, 3: ours, the loop and dlt on DuckDB"):
            for i in range(max(wanted.values())):
                for name, n in wanted.items():
                    if i < n:
                        runs[name].append(bench.run(name, sandbox, f"head_to_head.{name}.{i}"))
        results.head_to_head = HeadToHeadResult(
            sandbox.info,
            ContenderFigures("ours", runs["ours"]),
            ContenderFigures("loop", runs["loop"]),
            ContenderFigures("dlt", runs["dlt_rest_api"]) if runs["dlt_rest_api"] else None,
        )
        pg_wanted = {"ours": profile.pg_ours_runs, "dlt_rest_api": profile.pg_dlt_runs}
        if not any(pg_wanted.values()):
            return
        pg_calls = profile.pg_leads * profile.calls_per_lead
        bench.say(f"[3] on PostgreSQL: ours vs dlt's postgres destination on {pg_calls:,} calls")
        pg_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in pg_wanted}
        with contextlib.ExitStack() as stack:
            pg_sandbox = sandbox
            if profile.pg_leads != profile.head_to_head_leads:
                pg_sandbox = stack.enter_context(SandboxProcess(dataset_spec(profile, profile.pg_leads)))
                results.head_to_head.dataset_pg = pg_sandbox.info
            with bench.timed("3: ours and dlt on PostgreSQL (the server's start included)"):
                for i in range(max(pg_wanted.values())):
                    for name, n in pg_wanted.items():
                        if i < n:
                            label = f"head_to_head.{name}_pg.{i}"
                            pg_runs[name].append(bench.postgres().run(bench, name, pg_sandbox, label))
            hh = results.head_to_head
            hh.ours_pg = ContenderFigures("ours", pg_runs["ours"]) if pg_runs["ours"] else None
            hh.dlt_pg = ContenderFigures("dlt", pg_runs["dlt_rest_api"]) if pg_runs["dlt_rest_api"] else None


def scale(bench: Bench, results: Results) -> None:
    """Scenario 4: the real materialization at growing sizes (latency 0, no rate limit), on DuckDB
    and, at `pg_scale_leads`, on PostgreSQL once (against the same sandbox process: the dataset is
    built once per size). The head-to-head size reuses the runs of scenarios 2 and 3."""
    profile = bench.profile
    shared = results.head_to_head
    runs_of = dict(zip(profile.scale_leads, profile.scale_runs, strict=True))
    for n_leads in sorted(set(profile.scale_leads) | set(profile.pg_scale_leads)):
        calls = n_leads * profile.calls_per_lead
        duck_runs, pg = runs_of.get(n_leads, 0), n_leads in profile.pg_scale_leads
        if shared is not None and n_leads == profile.head_to_head_leads and duck_runs:
            bench.say(f"[4] scale, {calls:,} calls on DuckDB: the head-to-head runs of ours")
            results.scale.append(ScalePoint(shared.dataset, shared.ours))
            duck_runs = 0
        if shared is not None and n_leads == profile.pg_leads and pg and shared.ours_pg is not None:
            bench.say(f"[4] scale, {calls:,} calls on PostgreSQL: the head-to-head run of ours")
            results.scale_pg.append(ScalePoint(shared.dataset_pg or shared.dataset, shared.ours_pg))
            pg = False
        if not duck_runs and not pg:
            continue
        backends = ["DuckDB"] * bool(duck_runs) + ["PostgreSQL"] * pg
        bench.say(f"[4] scale, {calls:,} calls on {' and '.join(backends)}")
        build = bench.step(f"4: the sandbox's {calls:,}-call dataset")
        with SandboxProcess(dataset_spec(profile, n_leads)) as sandbox:
            assert sandbox.info is not None
            build.seconds = time.perf_counter() - bench.started - build.start
            if duck_runs:
                with bench.timed(f"4: {calls:,} calls on DuckDB, {duck_runs} run(s)"):
                    runs = [bench.run("ours", sandbox, f"scale.{calls}.ours.{i}") for i in range(duck_runs)]
                results.scale.append(ScalePoint(sandbox.info, ContenderFigures("ours", runs)))
            if pg:
                with bench.timed(f"4: {calls:,} calls on PostgreSQL"):
                    run = bench.postgres().run(bench, "ours", sandbox, f"scale.{calls}.ours_pg.0")
                results.scale_pg.append(ScalePoint(sandbox.info, ContenderFigures("ours", [run])))
    results.scale.sort(key=lambda point: point.calls)
    results.scale_pg.sort(key=lambda point: point.calls)


class PostgresWarehouses:
    """A throwaway PostgreSQL server (pgserver, as the tests use) for the bench's PostgreSQL runs:
    each run gets an empty database of its own, dropped after it (the figures are in the result)."""

    def __enter__(self) -> PostgresWarehouses:
        from tests.postgres import PostgresServer

        self._server = PostgresServer().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(None, None, None)

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        """An empty database named after `label`, dropped on exit; gives its URL."""
        name = "bench_" + "".join(c if c.isalnum() else "_" for c in label)
        url = self._server.create_database(name)
        try:
            yield url
        finally:
            self._server.drop_database(name)

    def run(self, bench: Bench, contender: str, sandbox: SandboxProcess, label: str) -> dict[str, Any]:
        with self.database(label) as url:
            return bench.run(contender, sandbox, label, extra={"warehouse_url": url})


def sensor(bench: Bench, results: Results) -> None:
    """Scenario 5: one tick of the late-summary sensor over a warehouse with many pending calls."""
    try:
        from apten_assets.lib import late_summaries  # noqa: F401
    except ImportError:
        results.sensor_skipped = "the late-summary sensor is not in this tree yet"
        bench.say(f"[5] skipped: {results.sensor_skipped}")
        return
    from bench.contenders.sensor_tick import sensor_spec

    profile = bench.profile
    spec = sensor_spec(profile.sensor_pending, data_day())
    bench.say(f"[5] late-summary sensor tick with {profile.sensor_pending:,} pending calls")
    limited = FaultConfig(latency_ms=profile.rate_latency_ms, rate_limit_rps=profile.rate_limit_rps)
    with SandboxProcess(spec, limited) as sandbox:
        runs = []
        for i in range(profile.sensor_runs):
            sandbox.set_faults(limited)
            extra = {"pending": profile.sensor_pending}
            runs.append(
                bench.run("sensor_tick", sandbox, f"sensor.{i}", max_rps=profile.rate_limit_rps, extra=extra)
            )
    results.sensor = SensorResult(profile.sensor_pending, int(runs[0]["bound"]), runs)


CALL_ASSETS = "apten/call_events,apten/calls,apten/call_summaries,apten/call_transcript_turns"
WEBHOOK_TIMEOUT_SECONDS = 600


def _launched(
    bench: Bench,
    sandbox: SandboxProcess,
    label: str,
    how: Callable[[Path, dict[str, str]], dict[str, Any]],
) -> dict[str, Any]:
    """One launched load on a fresh DuckDB file: `how(run_dir, apten_env)` starts it and returns
    its figures; adds the rows loaded and the sandbox's request counts."""
    profile = bench.profile
    run_dir = bench.workdir / label
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    db_path = run_dir / "warehouse.duckdb"
    env = {
        "APTEN_BASE_URL": sandbox.base_url,
        "APTEN_DUCKDB_PATH": str(db_path),
        "APTEN_START_DATE": data_day().isoformat(),
        "APTEN_MAX_RPS": str(NO_LIMIT_RPS),
        "APTEN_MAX_CONCURRENCY": str(profile.max_concurrency),
        "APTEN_WEBHOOK_INBOX": str(run_dir / "inbox"),
    }
    sandbox.reset_counts()
    result = how(run_dir, env)
    counts = sandbox.counts()
    result["rows"] = launching.warehouse_rows(f"duckdb:///{db_path}")
    result["sandbox"] = {"total": counts.total, "by_endpoint": counts.by_endpoint}
    for path in run_dir.glob("warehouse.duckdb*"):
        path.unlink()
    bench.raw.setdefault("runs", {})[label] = result
    bench.say(
        f"  {label}: {result['seconds']:.1f} s, CPU {result['cpu_seconds']:.1f} s, peak RSS "
        f"{result['peak_rss_bytes'] / 2**20:,.0f} MiB, {counts.total:,} requests, rows {result['rows']}"
    )
    return result


def _cli(day: str) -> Callable[[Path, dict[str, str]], dict[str, Any]]:
    """`dagster asset materialize` of leads and the day's call assets: one run, as a user types it."""

    def how(run_dir: Path, env: dict[str, str]) -> dict[str, Any]:
        home = launching.project_dagster_home(run_dir / "dagster_home")
        command = launching.dagster_cli(
            *("asset", "materialize", "-m", "apten_assets.definitions"),
            *("--select", f"apten/leads,{CALL_ASSETS}", "--partition", day),
        )
        result = launching.measure(command, launching.process_env(env, home), run_dir / "cli.log")
        return {**result, "profile": launching.run_profile(home)}

    return how


def _daemon(day: str) -> Callable[[Path, dict[str, str]], dict[str, Any]]:
    """The intraday schedule's run (the pipeline job for `day`) submitted to a running daemon."""

    def how(run_dir: Path, env: dict[str, str]) -> dict[str, Any]:
        with launching.Daemon(
            run_dir / "dagster_home", env, run_dir / "daemon.log", webhook_sensor=False
        ) as d:
            return d.launch(day, run_dir / "job_launch.log")

    return how


def _webhooks_through_daemon(bench: Bench, results_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """`python -m bench.webhook_latency --daemon`: webhook sent -> calls row, through the daemon."""
    out = results_dir / "webhook_latency.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        *("-m", "bench.webhook_latency", "--daemon"),
        *("--rounds", str(bench.profile.webhook_rounds), "--calls-per-round", "1", "--json", str(out)),
    ]
    env = launching.process_env({})
    log_path = results_dir / "webhook_latency.log"
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=WEBHOOK_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            return (
                None,
                f"bench/webhook_latency.py --daemon did not finish within {WEBHOOK_TIMEOUT_SECONDS} s",
            )
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        return None, f"bench/webhook_latency.py --daemon exited with {proc.returncode}:\n{tail}"
    return json.loads(out.read_text()), None


@dataclass(frozen=True)
class WebhookRounds:
    """The webhook benchmark's figures (or why there are none), how long it took, and whether it ran
    in the background beside the rate-limited scenarios."""

    figures: dict[str, Any] | None
    error: str | None
    seconds: float
    background: bool


def webhook_rounds(bench: Bench, *, background: bool = False) -> WebhookRounds:
    bench.say(f"  webhooks through the daemon: {bench.profile.webhook_rounds} rounds of one call")
    started = time.perf_counter()
    figures, error = _webhooks_through_daemon(bench, bench.workdir)
    seconds = time.perf_counter() - started
    bench.say(f"  webhook rounds done in {seconds:.0f} s" + (f": {error}" if error else ""))
    return WebhookRounds(figures, error, seconds, background)


def launch(bench: Bench, results: Results) -> None:
    """Scenario 6: the head-to-head load launched the ways users launch it: the CLI (one
    `dagster asset materialize` run of leads and the day's call assets), and the intraday
    schedule's run submitted to `dagster-daemon` (request to success); then the CLI and the dlt
    script again at `launch_latency_ms`; then webhooks through the daemon. The in-process figures,
    and the loop and dlt as plain scripts at latency 0, are the runs of scenarios 2 and 3."""
    profile = bench.profile
    spec = dataset_spec(profile, profile.head_to_head_leads)
    day = data_day().isoformat()
    bench.say(
        f"[6] as users launch it: {spec.n_leads * spec.calls_per_lead:,} calls through the CLI and the daemon"
    )
    with SandboxProcess(spec) as sandbox:
        assert sandbox.info is not None
        with bench.timed("6: CLI runs at latency 0"):
            runs = range(profile.launch_cli_runs)
            cli = [_launched(bench, sandbox, f"launch.cli.{i}", _cli(day)) for i in runs]
        with bench.timed("6: daemon-launched run (daemon start included)"):
            daemon = [_launched(bench, sandbox, "launch.daemon.0", _daemon(day))]
        out = LaunchResult(sandbox.info, ContenderFigures("cli", cli), ContenderFigures("daemon", daemon))
        if profile.launch_latency_ms:
            out.latency_ms = profile.launch_latency_ms
            sandbox.set_faults(FaultConfig(latency_ms=profile.launch_latency_ms))
            bench.say(f"  the same at {profile.launch_latency_ms:g} ms latency")
            with bench.timed(f"6: CLI run at {profile.launch_latency_ms:g} ms"):
                run = _launched(bench, sandbox, "launch.cli_latency.0", _cli(day))
            out.cli_latency = ContenderFigures("cli", [run])
            out.requests_latency = run["sandbox"]["total"]
            if profile.dlt_runs and profile.dlt_latency_runs:
                with bench.timed(f"6: dlt script at {profile.launch_latency_ms:g} ms"):
                    dlt = bench.run("dlt_rest_api", sandbox, "launch.dlt_latency.0")
                figures = {
                    "seconds": dlt["process_seconds"],
                    "cpu_seconds": dlt["process_cpu_seconds"],
                    "peak_rss_bytes": dlt["process_peak_rss_bytes"],
                }
                out.dlt_latency = ContenderFigures("dlt", [{**dlt, **figures}])
    if bench.webhooks is None:
        with bench.timed("6: webhook rounds through the daemon"):
            rounds = webhook_rounds(bench)
    else:
        rounds = bench.webhooks.result()
    out.webhook, out.webhook_error, out.webhook_background = rounds.figures, rounds.error, rounds.background
    results.launch = out
