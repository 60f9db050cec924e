"""Concurrency: an intraday schedule run, a multi-day backfill and sensor-requested runs at once,
each in its own process on one DuckDB file and one Dagster instance; all succeed, no lock error
escapes, and the totals are exactly those of a single fault-free run."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import FULL
from tools.reliability.drills import ConcurrencyReport, concurrency_drill
from tools.reliability.harness import describe_diffs, drill_spec

SPEC = drill_spec(300, 10, 5) if FULL else drill_spec(30, 6, 3)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ConcurrencyReport:
    return concurrency_drill(SPEC, tmp_path_factory.mktemp("concurrency"), sensor_runs=3)


def test_every_run_succeeds(report: ConcurrencyReport) -> None:
    assert set(report.processes) == {"backfill", "intraday", "sensor_0", "sensor_1", "sensor_2"}
    assert all(code == 0 for code in report.processes.values()), report.outcomes
    assert all(o["success"] for runs in report.outcomes.values() for o in runs)


def test_no_duckdb_lock_error_escapes(report: ConcurrencyReport) -> None:
    assert report.lock_messages == 0


def test_totals_are_exact(report: ConcurrencyReport) -> None:
    assert report.equal, describe_diffs(report.diffs)
