"""Where a CLI run's launch overhead goes: `python -m bench.launch_profile`.

Scenario 6 reports the launch overhead as one difference (a `dagster asset materialize` run
minus the same load in process). This splits that difference on a small load, where the load
itself is short and the overhead is most of the run, with every piece timed as its own process
(imports are what a fresh process pays; nothing is warm except the bytecode cache):

- the interpreter alone (`python -c pass`);
- the `dagster` CLI's own imports (`import dagster._cli`, what `dagster --version` pays);
- the code location's imports on top (`apten_assets.definitions`);
- the whole CLI run, and, from a cProfile of one more CLI run, the time inside SQLite (Dagster's
  run and event storage: connect, execute, commit, close) and in creating the run;
- the same load in process (`dagster.materialize`, load only), as scenarios 2-3 time it.

The sandbox runs in its own process at latency 0 with no rate limit. Runs are interleaved and
each figure is the median of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from apten_assets.sandbox.app import FaultConfig
from bench import launch as launching
from bench.runner import ROOT, run_contender
from bench.sandbox_proc import SandboxProcess
from bench.scenarios import CALL_ASSETS, FULL, NO_LIMIT_RPS, contender_params, data_day, dataset_spec

# Functions of sqlite3.Connection / Cursor whose own time is SQLite's work (and its fsyncs).
SQLITE_CALLS = ("commit", "close", "execute", "executemany", "connect")


def _wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(command, cwd=ROOT, env=env, check=True, **quiet)
    return time.perf_counter() - started


_STEP_DONE = re.compile(r' - (\S+) - STEP_SUCCESS - Finished execution of step "[^"]+" in ([0-9.]+)(ms|s)\.')


def _check_step_seconds(log: Path) -> float:
    """Time of the run's asset-check steps (`check_*`), from the run's own STEP_SUCCESS lines: the
    in-process load of scenarios 2-3 runs no checks, so they are part of the difference."""
    total = 0.0
    for match in _STEP_DONE.finditer(log.read_text(errors="replace")):
        step, value, unit = match.groups()
        if step.startswith("check_"):
            total += float(value) / (1000.0 if unit == "ms" else 1.0)
    return total


def _sqlite_seconds(stats: pstats.Stats) -> float:
    """Own time of the sqlite3 module's connection and cursor methods."""
    total = 0.0
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~" and any(f"'{call}' of 'sqlite3." in name for call in SQLITE_CALLS):
            total += tottime
    return total


def _cumulative(stats: pstats.Stats, suffix: str) -> float:
    for (filename, line, name), (_, _, _, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if f"{filename}:{line}({name})".endswith(suffix):
            return cumtime
    return 0.0


def profile_launch(leads: int, repeat: int, work: Path) -> dict[str, Any]:
    spec = dataset_spec(FULL, leads)
    python = sys.executable
    names = ("interpreter", "dagster_cli_import", "with_code_location", "cli_run", "checks", "in_process")
    figures: dict[str, list[float]] = {k: [] for k in names}
    with SandboxProcess(spec, FaultConfig()) as sandbox:
        env_base = {
            "APTEN_BASE_URL": sandbox.base_url,
            "APTEN_START_DATE": data_day().isoformat(),
            "APTEN_MAX_RPS": str(NO_LIMIT_RPS),
            "APTEN_MAX_CONCURRENCY": str(FULL.max_concurrency),
        }
        plain = launching.process_env({})

        def cli_command() -> list[str]:
            return launching.dagster_cli(
                *("asset", "materialize", "-m", "apten_assets.definitions"),
                *("--select", f"apten/leads,{CALL_ASSETS}", "--partition", data_day().isoformat()),
            )

        def cli_env(run_dir: Path) -> dict[str, str]:
            home = launching.project_dagster_home(run_dir / "dagster_home")
            env = {
                **env_base,
                "APTEN_DUCKDB_PATH": str(run_dir / "warehouse.duckdb"),
                "APTEN_WEBHOOK_INBOX": str(run_dir / "inbox"),
            }
            return launching.process_env(env, home)

        for i in range(repeat):
            figures["interpreter"].append(_wall([python, "-c", "pass"], plain))
            figures["dagster_cli_import"].append(_wall([python, "-c", "import dagster._cli"], plain))
            figures["with_code_location"].append(
                _wall([python, "-W", "ignore", "-c", "import dagster._cli, apten_assets.definitions"], plain)
            )
            run_dir = work / f"cli.{i}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            measured = launching.measure(cli_command(), cli_env(run_dir), run_dir / "cli.log")
            figures["cli_run"].append(measured["seconds"])
            figures["checks"].append(_check_step_seconds(run_dir / "cli.log"))
            ours_dir = work / f"in_process.{i}"
            shutil.rmtree(ours_dir, ignore_errors=True)
            params = contender_params(sandbox.base_url, ours_dir, NO_LIMIT_RPS, FULL.max_concurrency)
            figures["in_process"].append(run_contender("ours", params, ours_dir, "ours")["seconds"])

        run_dir = work / "cli.profiled"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        prof = run_dir / "cli.prof"
        command = [python, "-m", "cProfile", "-o", str(prof), *cli_command()]
        profiled_seconds = launching.measure(command, cli_env(run_dir), run_dir / "cli.log")["seconds"]
        stats = pstats.Stats(str(prof))
    medians = {k: statistics.median(v) for k, v in figures.items()}
    return {
        "leads": leads,
        "calls": leads * spec.calls_per_lead,
        "repeat": repeat,
        "medians": medians,
        "runs": figures,
        "profiled": {
            "seconds": profiled_seconds,
            "sqlite_seconds": _sqlite_seconds(stats),
            "create_run_seconds": _cumulative(stats, "run_domain.py:86(create_run)"),
            "execute_run_seconds": _cumulative(stats, "execution/api.py:168(execute_run)"),
        },
    }


def report(result: dict[str, Any]) -> str:
    m, p = result["medians"], result["profiled"]
    overhead = m["cli_run"] - m["in_process"]
    dagster_import = m["dagster_cli_import"] - m["interpreter"]
    ours_import = m["with_code_location"] - m["dagster_cli_import"]
    # The profiled run is slower than the others (cProfile's own cost), so its SQLite share is
    # applied to the median CLI run rather than taken as seconds.
    sqlite_share = p["sqlite_seconds"] / p["seconds"] if p["seconds"] else 0.0
    sqlite = sqlite_share * m["cli_run"]
    rest = overhead - m["interpreter"] - dagster_import - ours_import - sqlite - m["checks"]
    n = result["repeat"]
    rows = [
        ("interpreter start (`python -c pass`)", m["interpreter"]),
        ("Dagster's CLI imports (`import dagster._cli`)", dagster_import),
        ("the code location's imports (`apten_assets.definitions`)", ours_import),
        ("the 5 asset-check steps (not in the in-process load)", m["checks"]),
        ("Dagster's SQLite run and event storage (share of the profiled run)", sqlite),
        ("the rest: loading definitions, run set-up, run machinery, exit", rest),
    ]
    lines = [
        f"Launch overhead of one CLI run, {result['calls']:,} calls ({result['leads']} leads), latency 0, "
        f"median of {n}: CLI {m['cli_run']:.2f} s - in process {m['in_process']:.2f} s = "
        f"**{overhead:.2f} s**.",
        "",
        "| piece | seconds |",
        "|---|---|",
        *(f"| {label} | {seconds:.2f} |" for label, seconds in rows),
        "",
        f"Profiled CLI run (cProfile, so slower): {p['seconds']:.2f} s, of which SQLite "
        f"{p['sqlite_seconds']:.2f} s, creating the run {p['create_run_seconds']:.2f} s, executing it "
        f"{p['execute_run_seconds']:.2f} s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.launch_profile", description=__doc__)
    parser.add_argument("--leads", type=int, default=4, help="leads in the dataset (25 calls each)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and the profile in this folder")
    args = parser.parse_args(argv)
    if args.keep is not None:
        result = profile_launch(args.leads, args.repeat, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="launch_profile_") as tmp:
            result = profile_launch(args.leads, args.repeat, Path(tmp))
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
