"""The README's UI path, headless: `python -m apten_assets.demo --ui` loads the sandbox, keeps it up and
starts `dg dev` (webserver and daemon) on the same warehouse. With schedules and sensors on, the
daemon's ticks and the runs they request must leave the tables agreeing with that sandbox."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest
from dagster._core.scheduler.instigation import TickStatus

from apten_assets.warehouse.duckdb import connect

ROOT = Path(__file__).resolve().parents[1]
SENSORS = ("apten_late_summary_sensor", "apten_webhook_sensor")
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, condition, timeout: float, log: Path) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; demo output ends:\n{log.read_text()[-4000:]}")


def _ui_up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _sensor_runs(instance: dg.DagsterInstance, sensor: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": sensor})))


def _finished_ticks(instance: dg.DagsterInstance) -> dict[str, int]:
    finished = [TickStatus.SUCCESS, TickStatus.SKIPPED, TickStatus.FAILURE]
    return {
        state.instigator_name: len(
            instance.get_ticks(state.instigator_origin_id, state.selector_id, statuses=finished)
        )
        for state in instance.all_instigator_state()
        if state.instigator_name in SENSORS
    }


def _failures(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    kinds = {dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.STEP_FAILURE}
    return [str(record.dagster_event.message) for record in instance.all_logs(run_id, of_type=kinds)]


def _tables(db: Path) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    con = connect(db, read_only=True, timeout_seconds=60)
    try:
        statuses = dict(con.execute("SELECT call_id, summary_status FROM apten.calls").fetchall())
        summaries = dict(con.execute("SELECT call_id, summary FROM apten.call_summaries").fetchall())
        turns = dict(
            con.execute("SELECT call_id, count(*) FROM apten.call_transcript_turns GROUP BY 1").fetchall()
        )
    finally:
        con.close()
    return statuses, summaries, turns


# A real webserver, daemon and run processes: minutes on an idle machine, far more on a loaded one.
@pytest.mark.timeout(1800)
def test_ui_path_with_automation_on_keeps_the_tables_agreeing_with_the_sandbox(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    db = tmp_path / "apten.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APTEN_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        APTEN_DUCKDB_PATH=str(db),
        APTEN_WEBHOOK_INBOX=str(tmp_path / "webhooks"),
        # The deployment switch: every schedule and sensor ticks from the start, no clicks needed.
        APTEN_AUTOMATION_DEFAULT="running",
        APTEN_SUMMARY_RECHECK_MINUTES="0",
    )
    port = _free_port()
    log = tmp_path / "demo.log"
    command = [sys.executable, "-m", "apten_assets.demo", "--ui", "--ui-port", str(port)]
    # A day back too: in the first minutes of a UTC day (to 00:01:33) a today-only dataset has no
    # ended call yet, so no webhook is sent and the webhook sensor never asks for a run.
    command += ["--leads", "20", "--calls-per-lead", "2", "--days", "1", "--late-summary-delay-seconds", "20"]
    with log.open("w") as out:
        demo = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A test started in the background inherits an ignored SIGINT, and so would dg dev; a
            # terminal's Ctrl-C must be able to reach it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        _wait_for("the Dagster UI", lambda: _ui_up(port), 300, log)
        text = log.read_text()
        match = re.search(r"Apten sandbox on (\S+):", text)
        assert match, text[-3000:]
        base_url = match.group(1)
        demo_ready = sum(int(line.split("|")[3]) for line in text.splitlines() if line.startswith("| 20"))

        instance = dg.DagsterInstance.from_config(str(home))

        polls: list[tuple[int, ...]] = []

        def settled() -> bool:
            """Both sensors ticked twice since the load, the webhook sensor asked for runs, no run is
            queued or running, and nothing changed since the last look."""
            ticks = _finished_ticks(instance)
            runs = instance.get_runs()
            polls.append((len(runs), *ticks.values()))
            return (
                all(ticks.get(name, 0) >= 2 for name in SENSORS)
                and bool(_sensor_runs(instance, "apten_webhook_sensor"))
                and not instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT))
                and len(polls) > 1
                and polls[-1] == polls[-2]
            )

        # The late summaries (20 s after the load) are in the sandbox long before this settles.
        _wait_for("the sensors' runs to finish", settled, 900, log)

        statuses, _, _ = _tables(db)
        with httpx.Client(base_url=base_url, timeout=10) as client:
            truth = {call_id: client.get(f"/calls/{call_id}") for call_id in statuses}
    finally:
        # Ctrl-C in the terminal reaches the demo and every `dg dev` process alike. dg dev gives its
        # webserver and daemon up to a minute each; past that the whole group is killed, so no
        # process outlives the test.
        os.killpg(demo.pid, signal.SIGINT)
        try:
            demo.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()

    failed = {
        run.run_id: _failures(instance, run.run_id)
        for run in instance.get_runs()
        if run.status != dg.DagsterRunStatus.SUCCESS
    }
    assert failed == {}

    statuses, summaries, turns = _tables(db)
    assert set(statuses) == set(truth)
    for call_id, answer in truth.items():
        if answer.status_code == 404:
            assert statuses[call_id] == "not_found", call_id
            assert call_id not in summaries and call_id not in turns, call_id
            continue
        assert answer.status_code == 200, (call_id, answer.status_code)
        body = answer.json()
        if body.get("summary"):
            assert statuses[call_id] == "ready", call_id
            assert summaries[call_id] == body["summary"], call_id
        else:
            assert statuses[call_id] in ("pending", "missing"), call_id
            assert call_id not in summaries, call_id
        assert turns.get(call_id, 0) == len(body.get("transcript") or []), call_id
    assert sum(1 for status in statuses.values() if status == "ready") >= demo_ready
