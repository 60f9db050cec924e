"""The benchmark at tiny sizes, so it cannot rot: every scenario runs end to end and the contenders
load the same rows. Figures are written to a page, never asserted (timing asserts make tests flaky).

The full run (`uv run --group bench python -m bench`) stays out of the test suite.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

from bench.__main__ import run_bench
from bench.pii_cost import DUCKDB_FULL, DUCKDB_REDACTED, POSTGRES_FULL
from bench.report import dlt_bound_at_latency
from bench.scenarios import SMOKE, Results


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Results, Path]:
    profile = SMOKE if importlib.util.find_spec("dlt") else replace(SMOKE, dlt_runs=0, pg_dlt_runs=0)
    out = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    return run_bench(profile, out, say=lambda line: None), out


def test_every_contender_loads_the_rows_the_sandbox_serves(smoke: tuple[Results, Path]) -> None:
    results, _ = smoke
    hh = results.head_to_head
    assert hh is not None
    contenders = [hh.ours, hh.loop] + ([hh.dlt] if hh.dlt is not None else [])
    for contender in contenders:
        assert contender.rows["call_events"] == hh.dataset.lead_call_ids
        assert contender.rows["calls"] == hh.dataset.found_lead_calls
        assert contender.rows["turns"] > contender.rows["calls"]
    assert hh.same_rows


def test_postgres_runs_load_the_same_rows_and_report_the_write_path(smoke: tuple[Results, Path]) -> None:
    results, out = smoke
    hh = results.head_to_head
    assert hh is not None and hh.ours_pg is not None
    assert hh.ours_pg.rows == hh.ours.rows
    if hh.dlt is not None:
        assert hh.dlt_pg is not None and hh.dlt_pg.rows == hh.dlt.rows
    [point] = results.scale_pg
    assert point.calls == SMOKE.pg_scale_leads[0] * SMOKE.calls_per_lead
    assert point.seconds_of("write") is not None
    page = out.read_text()
    assert "## 3 and 4 on PostgreSQL" in page and "PostgreSQL write path within 1.5x" in page


def test_rate_limited_run_counts_every_request_at_the_sandbox(smoke: tuple[Results, Path]) -> None:
    results, _ = smoke
    rl = results.rate_limit
    assert rl is not None
    run = rl.ours.runs[0]
    by_endpoint = run["sandbox"]["by_endpoint"]
    leads = run["rows"]["leads"]
    # One leads page, one events page per lead, one GET per call: nothing fetched twice.
    assert by_endpoint == {"leads": 1, "events": leads, "calls": rl.dataset.lead_call_ids}
    assert rl.calls(run) == rl.dataset.lead_call_ids


def test_scale_points_report_where_the_calls_step_spends_its_time(smoke: tuple[Results, Path]) -> None:
    results, _ = smoke
    assert [point.calls for point in results.scale] == [n * SMOKE.calls_per_lead for n in SMOKE.scale_leads]
    for point in results.scale:
        assert point.ours.rows["calls"] > 0
        assert point.seconds_of("waiting_for_api") is not None
        assert point.seconds_of("transform_write") is not None


def test_sensor_tick_stays_within_its_bound(smoke: tuple[Results, Path]) -> None:
    results, _ = smoke
    sensor = results.sensor
    assert sensor is not None
    run = sensor.runs[0]
    assert run["rows"]["pending_seeded"] > 0
    assert 0 < run["asked"] <= sensor.bound
    assert run["calls_named_in_runs"] > 0


def test_launched_runs_load_what_the_in_process_run_loads(smoke: tuple[Results, Path]) -> None:
    results, _ = smoke
    launch, hh = results.launch, results.head_to_head
    assert launch is not None and hh is not None
    runs = [*launch.cli.runs, *launch.daemon.runs, *(launch.cli_latency.runs if launch.cli_latency else [])]
    for run in runs:
        assert run["rows"] == hh.ours.rows
        assert run["cpu_seconds"] > 0 and run["peak_rss_bytes"] > 0
    # The daemon's run is timed from its request: it was queued, then launched in a process.
    assert launch.daemon.runs[0]["seconds"] >= launch.daemon.runs[0]["queued_seconds"] > 0
    assert launch.webhook is not None, launch.webhook_error
    assert launch.webhook["send_to_calls_row"]["n"] == SMOKE.webhook_rounds


def test_webhook_rounds_run_beside_the_rate_limited_scenarios(smoke: tuple[Results, Path]) -> None:
    results, _ = smoke
    launch = results.launch
    assert launch is not None and launch.webhook_background
    rounds, *others = [step for step in results.extras["steps"] if step.level == 0]
    # Started first; scenarios 1 and 5 ran beside them, every later step after their end.
    assert rounds.label.startswith("6: webhook rounds") and rounds.seconds > 0
    beside = [step for step in others if step.label.startswith(("1:", "5:"))]
    after = [step for step in others if not step.label.startswith(("1:", "5:", "the webhook rounds"))]
    assert len(beside) == 2 and after
    assert all(step.start < rounds.start + rounds.seconds for step in beside[:1])
    assert all(step.start >= rounds.start + rounds.seconds for step in after)


def test_dlt_reports_its_stages_for_the_bound_at_latency(smoke: tuple[Results, Path]) -> None:
    results, _ = smoke
    hh = results.head_to_head
    assert hh is not None
    if hh.dlt is None:
        pytest.skip("dlt is not installed (no `--group bench`)")
    stages = hh.dlt.runs[0]["stages"]
    assert set(stages) == {"extract", "normalize", "load"} and all(v > 0 for v in stages.values())
    bound = dlt_bound_at_latency(results)
    assert bound is not None and bound > stages["normalize"] + stages["load"]


def test_results_page_has_every_section(smoke: tuple[Results, Path]) -> None:
    _, out = smoke
    text = out.read_text()
    for heading in (
        "## Machine",
        "## Goals",
        "## Run length",
        "## 1.",
        "## 2 and 3.",
        "## 4. Scale",
        "## 5.",
        "## 6.",
    ):
        assert heading in text
    assert "| 1-6 | whole run <= 15 min" in text


def test_write_path_replay_writes_the_same_rows_into_every_target(smoke: tuple[Results, Path]) -> None:
    results, out = smoke
    replay = results.extras["write_path"]
    assert replay.calls == SMOKE.scale_leads[-1] * SMOKE.calls_per_lead
    names = [(target.name, target.backend, target.mode) for target in replay.targets]
    assert names == [
        (DUCKDB_FULL, "duckdb", "full"),
        (DUCKDB_REDACTED, "duckdb", "redacted"),
        (POSTGRES_FULL, "postgresql", "full"),
    ]
    # Every call the replay gives is new, so each is a `calls` row; every target wrote the same.
    assert replay.full.rows["calls"] == replay.calls and replay.turns > replay.calls
    assert replay.rows_agree
    for target in replay.targets:
        assert target.rows == replay.full.rows
        assert len(target.wall) == len(target.cpu) == len(target.store_write) >= 1
        assert 0 < target.store_write_seconds < target.wall_seconds
    # Its own process, sampled from outside.
    assert replay.peak_rss_bytes is not None and replay.peak_rss_bytes > 50 * 2**20
    assert results.extras["pii_dense"].calls == replay.calls
    page = out.read_text()
    assert "## 4, write path" in page and "redacted <= 15% over full at 4M turns" in page
    assert "| write-path replay (no HTTP) |" in page


def test_cli_runs_report_their_steps_and_request_times(smoke: tuple[Results, Path]) -> None:
    results, out = smoke
    launch = results.launch
    assert launch is not None and launch.cli_latency is not None
    profile = launch.cli_latency.runs[0]["profile"]
    steps = profile["steps"]
    # Three ops and five check ops, each timed from the run's own event log.
    assert {"apten__leads", "apten__call_events", "calls"} <= set(steps)
    assert sum(1 for key in steps if key.startswith("check_")) == 5
    assert sum(steps.values()) < launch.cli_latency.runs[0]["seconds"]
    # Every request waited at least the sandbox's latency.
    requests = profile["calls"]["api_requests_sent"]
    assert requests > 0
    assert profile["calls"]["api_exchange_seconds"] >= requests * SMOKE.launch_latency_ms / 1000
    assert "Where a CLI run's wall time goes" in out.read_text()


def test_the_page_is_written_again_from_the_kept_figures(smoke: tuple[Results, Path], tmp_path: Path) -> None:
    from bench.__main__ import RESULTS_FILE, WORK_DIR, main

    results, out = smoke
    assert (WORK_DIR / "smoke" / RESULTS_FILE).exists()
    again = tmp_path / "again.md"
    assert main(["--smoke", "--render", "--out", str(again)]) == 0
    rewritten = again.read_text().splitlines()
    said = [line for line in rewritten if line.startswith("- Page written again from the run's figures: ")]
    assert len(said) == 1
    # The run's own commit and every figure stay as the run left them.
    assert [line for line in rewritten if line not in said] == out.read_text().splitlines()
    assert f"- Commit: {results.extras['commit']}" in rewritten
