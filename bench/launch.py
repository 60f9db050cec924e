"""Processes as users start them: the `dagster` CLI, `dagster-daemon`, plain scripts, measured from
outside over their whole process tree (wall time, CPU time, peak RSS), imports and start-up included.

`measure(command, ...)` runs one command to completion; `Daemon` keeps a `dagster-daemon` with the
project's instance settings (`dagster_home/dagster.yaml`: pools, run queue) and the project's
`workspace.yaml`, the way the README's UI and schedule paths run it, and times runs from their
request (the run's creation) to their success.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from bench.runner import PYCACHE, ROOT, TreeSampler

BIN = Path(sys.executable).parent
# Every daemon-launched run here goes through this job: what the schedules launch.
PIPELINE_JOB = "apten_pipeline_job"
WEBHOOK_SENSOR = "apten_webhook_sensor"


def process_env(base: Mapping[str, str], dagster_home: Path | None = None) -> dict[str, str]:
    """This environment with `base` over it, as a user's shell would have it (no stray APTEN_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APTEN_", "DAGSTER_"))}
    env.update(base)
    env.update(RUNTIME__DLTHUB_TELEMETRY="false", PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=str(PYCACHE))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    return env


def project_dagster_home(path: Path) -> Path:
    """A fresh instance folder with the project's `dagster.yaml` (pools, run queue, retries) and
    its storage created, as a user's DAGSTER_HOME is after the first run (creating the SQLite
    storage took ~4 s of the first CLI run). This process creates the storage once, in a template
    folder of its own, and copies it (its SQLite files hold no path)."""
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(_template_home(), path)
    return path


@functools.cache
def _template_home() -> Path:
    import dagster as dg

    path = Path(tempfile.mkdtemp(prefix="apten-bench-dagster-home-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(path)) as instance:
        instance.get_runs(limit=1)
    return path


def measure(command: Sequence[str], env: Mapping[str, str], log_path: Path) -> dict[str, Any]:
    """Run `command` from the project root to completion: wall time, CPU time and peak RSS of its
    whole process tree. Raises with the log's tail when it fails."""
    with log_path.open("w") as log:
        started = time.perf_counter()
        proc = psutil.Popen(list(command), cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
        with TreeSampler(proc) as sampler:
            returncode = proc.wait()
        seconds = time.perf_counter() - started
    if returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"{' '.join(command[:4])} exited with {returncode}; log {log_path}:\n{tail}")
    return {"seconds": seconds, "cpu_seconds": sampler.cpu_seconds, "peak_rss_bytes": sampler.peak_rss}


def run_profile(home: Path) -> dict[str, Any]:
    """Where the one run on the instance at `home` spent its time, from its own event log: each
    step's wall time, and the calls step's requests and their exchange time (`api_exchange_seconds`:
    send -> whole answer read, summed over requests)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs(limit=1)
        steps = {
            stat.step_key: stat.end_time - stat.start_time
            for stat in instance.get_run_step_stats(run.run_id)
            if stat.start_time is not None and stat.end_time is not None
        }
        event = instance.get_latest_materialization_event(dg.AssetKey(["apten", "calls"]))
        metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
        names = ("api_requests_sent", "api_exchange_seconds")
        calls = {name: metadata[name].value for name in names if name in metadata}
    return {"steps": steps, "calls": calls}


def warehouse_rows(url: str) -> dict[str, int]:
    """Rows a load left in our warehouse (a warehouse URL), in the terms every contender reports."""
    from apten_assets.lib.tables import CALL_EVENTS, CALL_SUMMARIES, CALL_TRANSCRIPT_TURNS, LEADS
    from apten_assets.warehouse import open_store
    from tests.warehouse.helpers import query

    with open_store(url, read_only=True) as store:
        ((calls,),) = query(store, "SELECT count(*) FROM apten.calls WHERE summary_status <> 'not_found'")
        return {
            "leads": store.row_count(LEADS),
            "call_events": store.row_count(CALL_EVENTS),
            "calls": calls,
            "summaries": store.row_count(CALL_SUMMARIES),
            "turns": store.row_count(CALL_TRANSCRIPT_TURNS),
        }


def dagster_cli(*args: str) -> list[str]:
    return [str(BIN / "dagster"), *args]


class Daemon:
    """`dagster-daemon run -w workspace.yaml` on its own instance folder, with the webhook sensor
    on or off and nothing else starting runs; `launch` submits a run the way a schedule tick or
    the UI does (to the run queue) and waits for it."""

    def __init__(self, home: Path, env: Mapping[str, str], log_path: Path, *, webhook_sensor: bool) -> None:
        self.home = project_dagster_home(home)
        self.env = process_env({**env, "APTEN_AUTOMATION_DEFAULT": "stopped"}, self.home)
        self.log_path = log_path
        self.webhook_sensor = webhook_sensor
        self.proc: psutil.Popen | None = None
        self._log: Any = None
        self._instance: Any = None

    def _instigators(self) -> None:
        """Set before the daemon starts, so no tick happens in between. Every schedule and sensor
        is stopped by default (`APTEN_AUTOMATION_DEFAULT=stopped`, set in `env`) and the instance
        is new, so only the webhook sensor, when wanted, needs a command (a process that loads the
        code location: ~4 s each)."""
        if self.webhook_sensor:
            subprocess.run(
                dagster_cli("sensor", "start", WEBHOOK_SENSOR, "-w", "workspace.yaml"),
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
                timeout=300,
            )

    def __enter__(self) -> Daemon:
        import dagster as dg

        self._instigators()
        self._log = self.log_path.open("w")
        self.proc = psutil.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._instance = dg.DagsterInstance.from_config(str(self.home))
        deadline = time.monotonic() + 300
        while not self._instance.get_daemon_heartbeats():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"dagster-daemon did not start; log {self.log_path}")
            time.sleep(0.2)
        return self

    def runs(self) -> list[Any]:
        return list(self._instance.get_run_records())

    def wait(self, run_ids: Sequence[str], timeout: float = 900.0) -> list[dict[str, Any]]:
        """Wait for these runs to end; request -> success of each (raises on a failed run)."""
        import dagster as dg

        deadline = time.monotonic() + timeout
        ended = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
        while True:
            records = self._instance.get_run_records(filters=dg.RunsFilter(run_ids=list(run_ids)))
            if len(records) == len(run_ids) and all(r.dagster_run.status in ended for r in records):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs {list(run_ids)} did not end within {timeout:.0f} s")
            time.sleep(0.05)
        out = []
        for record in records:
            if record.dagster_run.status != dg.DagsterRunStatus.SUCCESS:
                raise RuntimeError(f"run {record.dagster_run.run_id} ended {record.dagster_run.status}")
            requested = record.create_timestamp.timestamp()
            out.append(
                {
                    "run_id": record.dagster_run.run_id,
                    "requested_at": requested,
                    "started_at": record.start_time,
                    "ended_at": record.end_time,
                    "seconds": record.end_time - requested,
                    "queued_seconds": record.start_time - requested,
                    "tags": dict(record.dagster_run.tags),
                }
            )
        return out

    def launch(self, partition: str, log_path: Path) -> dict[str, Any]:
        """Submit the pipeline job for `partition` to the run queue (as a schedule tick or the UI
        does) and wait for it; request -> success, with CPU and peak RSS of the daemon's tree
        (the run worker it starts included) over that time."""
        assert self.proc is not None
        before = {r.dagster_run.run_id for r in self.runs()}
        tags = '{"dagster/partition": "' + partition + '"}'
        with TreeSampler(self.proc) as sampler, log_path.open("w") as log:
            subprocess.run(
                dagster_cli("job", "launch", "-w", "workspace.yaml", "-j", PIPELINE_JOB, "--tags", tags),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=600,
            )
            cpu_before = dict(sampler.cpu)
            (run_id,) = [r.dagster_run.run_id for r in self.runs() if r.dagster_run.run_id not in before]
            (run,) = self.wait([run_id])
            time.sleep(2 * sampler.interval)
        # CPU of the daemon's tree from the request on: processes that were there before count
        # only what they used since; the run worker counts whole.
        run["cpu_seconds"] = sum(cpu - cpu_before.get(pid, 0.0) for pid, cpu in sampler.cpu.items())
        run["peak_rss_bytes"] = sampler.peak_rss
        return run

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            children = self.proc.children(recursive=True)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except psutil.TimeoutExpired:
                self.proc.kill()
            for child in children:
                if child.is_running():
                    child.kill()
            self.proc = None
        if self._instance is not None:
            self._instance.dispose()
        if self._log is not None:
            self._log.close()
