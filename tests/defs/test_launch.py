"""Runs launched the way users launch them (the CLI here; the UI, schedules and sensors go through
the same Definitions) execute every step, asset checks included, in the run's own process: a
process per step re-imports Dagster and the code location, which was most of a run's time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from apten_assets.sandbox.server import SandboxServer
from apten_assets.warehouse.duckdb import connect
from tests.conftest import SANDBOX_ANCHOR

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SELECTION = "apten/leads,apten/call_events,apten/calls,apten/call_summaries,apten/call_transcript_turns"


def test_cli_run_executes_every_step_in_the_run_process(sandbox: SandboxServer, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The project's instance settings (pools included), as `dagster dev` and the daemon use them.
    (home / "dagster.yaml").write_text((ROOT / "dagster_home" / "dagster.yaml").read_text())
    db = tmp_path / "apten.duckdb"
    day = SANDBOX_ANCHOR.date().isoformat()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APTEN_", "DAGSTER_"))} | {
        "DAGSTER_HOME": str(home),
        "APTEN_BASE_URL": sandbox.base_url,
        "APTEN_DUCKDB_PATH": str(db),
        "APTEN_START_DATE": day,
        "APTEN_WEBHOOK_INBOX": str(tmp_path / "inbox"),
    }
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "apten_assets.definitions"]
    result = subprocess.run(
        [*command, "--select", SELECTION, "--partition", day],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        records = instance.all_logs(run.run_id)
    events = [r.dagster_event for r in records if r.dagster_event is not None]
    step_pids = {e.step_key: e.pid for e in events if e.event_type_value == "STEP_START"}
    assert {"apten__leads", "apten__call_events", "calls", "check_calls"} <= set(step_pids)
    # One process for the whole run; the multiprocess executor gives each step its own.
    assert len(set(step_pids.values())) == 1, step_pids

    con = connect(db, read_only=True)
    try:
        events = con.execute("SELECT count(*) FROM apten.call_events").fetchone()[0]
        unenriched = con.execute(
            "SELECT count(*) FROM apten.call_events AS e LEFT JOIN apten.calls AS c USING (call_id) "
            "WHERE c.call_id IS NULL"
        ).fetchone()[0]
    finally:
        con.close()
    assert events > 0
    assert unenriched == 0
