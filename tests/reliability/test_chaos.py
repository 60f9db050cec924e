"""Chaos backfill: the issue's fault mix on every request, and the tables end exactly as a
fault-free run of the same data leaves them (no call lost, none duplicated, no stale turn), on
every warehouse backend."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import FULL
from tools.reliability.drills import ChaosReport, chaos_drill
from tools.reliability.harness import Warehouses, describe_diffs, drill_spec

SPEC = drill_spec(600, 10, 7) if FULL else drill_spec(40, 8, 3)


@pytest.fixture(scope="module")
def report(warehouses: Warehouses) -> ChaosReport:
    return chaos_drill(SPEC, warehouses.workdir, fault_seed=31, warehouses=warehouses)


def test_every_kind_of_fault_was_injected(report: ChaosReport) -> None:
    for kind in ("429", "5xx", "drop", "truncate"):
        assert report.faults[kind] > 0, report.faults
    if FULL:
        assert report.faults["slow"] > 0 and report.calls >= 5000


def test_backfill_under_faults_equals_the_fault_free_run(report: ChaosReport) -> None:
    assert report.runs[-1].success, report.runs[-1].error
    assert report.equal, describe_diffs(report.diffs)


def test_no_row_lost_or_duplicated(report: ChaosReport) -> None:
    assert sum(d.lost for d in report.diffs.values()) == 0
    assert sum(d.duplicates for d in report.diffs.values()) == 0
    assert report.diffs["calls"].actual_rows == report.calls
