"""Schedules: what they request, and that the job they launch runs over a range of days."""

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from apten_assets.defs.apten import build_definitions
from apten_assets.defs.apten.schedules import lookback_range
from apten_assets.lib.config import AptenSettings
from apten_assets.sandbox.data import DatasetSpec
from apten_assets.sandbox.server import SandboxServer


def _defs(monkeypatch: pytest.MonkeyPatch, base_url: str, db: Path) -> dg.Definitions:
    monkeypatch.setenv("APTEN_BASE_URL", base_url)
    monkeypatch.setenv("APTEN_DUCKDB_PATH", str(db))
    monkeypatch.setenv("APTEN_MAX_RPS", "1000")
    monkeypatch.setenv("APTEN_START_DATE", (datetime.now(UTC).date() - timedelta(days=10)).isoformat())
    return build_definitions(AptenSettings.from_env())


AUTOMATION = [
    "apten_intraday_schedule",
    "apten_daily_lookback_schedule",
    "apten_late_summary_sensor",
    "apten_webhook_sensor",
]


def _default_statuses(defs: dg.Definitions) -> dict[str, str]:
    statuses = {s.name: s.default_status.value for s in defs.schedules}
    statuses.update({s.name: s.default_status.value for s in defs.sensors})
    return statuses


def test_schedules_and_sensors_start_stopped_unless_asked() -> None:
    defs = build_definitions(AptenSettings.from_env({}))
    assert _default_statuses(defs) == dict.fromkeys(AUTOMATION, "STOPPED")


def test_automation_default_running_starts_every_schedule_and_sensor() -> None:
    defs = build_definitions(AptenSettings.from_env({"APTEN_AUTOMATION_DEFAULT": " Running "}))
    assert _default_statuses(defs) == dict.fromkeys(AUTOMATION, "RUNNING")


def test_lookback_range_is_clipped_to_the_first_partition() -> None:
    assert lookback_range(date(2026, 11, 25), 3, date(2026, 1, 1)) == ("2026-11-22", "2026-11-25")
    assert lookback_range(date(2026, 11, 25), 3, date(2026, 11, 24)) == ("2026-11-24", "2026-11-25")


def test_intraday_schedule_requests_todays_partition(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    defs = _defs(monkeypatch, "http://127.0.0.1:9/v1", tmp_path / "a.duckdb")
    schedule = defs.resolve_schedule_def("apten_intraday_schedule")
    at = datetime.now(UTC).replace(minute=15, second=0, microsecond=0)
    with dg.build_schedule_context(
        scheduled_execution_time=at, repository_def=defs.get_repository_def()
    ) as context:
        request = schedule.evaluate_tick(context).run_requests[0]
    assert request.partition_key == at.date().isoformat()
    assert request.run_key == f"intraday:{at.isoformat()}"


def test_lookback_schedule_requests_one_run_over_recent_days(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defs = _defs(monkeypatch, "http://127.0.0.1:9/v1", tmp_path / "a.duckdb")
    schedule = defs.resolve_schedule_def("apten_daily_lookback_schedule")
    today = datetime.now(UTC).replace(hour=2, minute=30, second=0, microsecond=0)
    with dg.build_schedule_context(scheduled_execution_time=today) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.tags["dagster/asset_partition_range_start"] == str(today.date() - timedelta(days=3))
    assert request.tags["dagster/asset_partition_range_end"] == str(today.date())


def test_pipeline_job_runs_a_range_of_days_with_leads_in_one_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = DatasetSpec(seed=11, n_leads=12, calls_per_lead=3, days=3)
    with SandboxServer(spec) as sb:
        db = tmp_path / "a.duckdb"
        defs = _defs(monkeypatch, sb.base_url, db)
        today = datetime.now(UTC).date()
        start, end = lookback_range(today, 2, today - timedelta(days=10))
        job = defs.resolve_job_def("apten_pipeline_job")
        result = job.execute_in_process(
            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert result.success
        expected_calls = {event["id"] for event in sb.state.dataset.call_events()}
    with duckdb.connect(str(db), read_only=True) as con:
        (leads,) = con.execute("SELECT count(*) FROM apten.leads").fetchone()
        stored = {row[0] for row in con.execute("SELECT call_id FROM apten.calls").fetchall()}
    assert leads == 12
    assert stored == expected_calls
