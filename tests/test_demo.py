"""The README's main-job command runs end to end on the bundled sandbox."""

import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

from apten_assets.demo import _day_summary
from apten_assets.warehouse import WarehouseURL, open_store
from apten_assets.warehouse.duckdb import connect

ROOT = Path(__file__).resolve().parents[1]


def test_main_job_loads_recent_days_and_prints_a_table_per_day(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APTEN_")}
    env.update(DAGSTER_HOME=str(tmp_path / "dagster_home"))
    command = [
        sys.executable,
        "-m",
        "apten_assets.demo",
        "--leads",
        "30",
        "--calls-per-lead",
        "3",
        "--days",
        "2",
    ]
    # Twice, as the README's path does (the main job, then `--ui`): each run's sandbox is a new dataset,
    # and the second must not trip over the first's leads and deliveries in the default data/ folder.
    for _ in range(2):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table_rows = [line for line in result.stdout.splitlines() if line.startswith("| 20")]
    assert len(table_rows) == 3, result.stdout  # two days back and today
    con = connect(tmp_path / "data" / "apten.duckdb", read_only=True)
    try:
        (calls,) = con.execute("SELECT count(*) FROM apten.calls").fetchone()
        (deliveries,) = con.execute("SELECT count(*) FROM apten.webhook_deliveries").fetchone()
        (leads,) = con.execute("SELECT count(*) FROM apten.leads").fetchone()
    finally:
        con.close()
    assert calls == sum(int(row.split("|")[2]) for row in table_rows)
    assert calls >= 90  # every lead call of the window, plus webchat calls seen through webhooks
    assert deliveries > 0
    assert leads == 30  # this run's sandbox only, none left from the first
    assert "Done in" in result.stdout
    # The emitter's forged copies are refused by design: one line says so, no warning per copy.
    assert re.search(r"^\d+ forged deliveries refused, as intended\.$", result.stdout, re.M), result.stdout
    assert "signature does not match" not in result.stdout + result.stderr
    # The closing hint repeats this dataset for the UI path.
    assert "uv run python -m apten_assets.demo --leads 30 --calls-per-lead 3 --days 2 --ui" in result.stdout


def test_a_loaded_day_without_calls_gets_a_row_of_zeros(tmp_path: Path) -> None:
    # Just after midnight UTC, today may have no call yet; the table still shows every day loaded.
    url = WarehouseURL.parse(f"duckdb:///{tmp_path / 'apten.duckdb'}")
    with open_store(url) as store:
        store.ensure_schema()
    days = [date(2026, 11, 29), date(2026, 11, 30), date(2026, 12, 1)]
    assert _day_summary(url, days[0], days) == [(day, 0, 0, 0, 0, 0, 0, 0, 0) for day in days]
