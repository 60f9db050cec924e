"""`uv run --group bench python -m bench [--smoke]`: run every scenario, print the goal table and
write bench/RESULTS.md (the smoke run writes bench/.work/RESULTS.smoke.md unless told otherwise)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import pstats
import shutil
import time
from dataclasses import replace
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

from bench import pii_cost, report, scenarios
from bench.runner import ROOT
from bench.sandbox_proc import SandboxProcess
from bench.scenarios import FULL, SMOKE, Bench, Profile, Results

BENCH_DIR = ROOT / "bench"
WORK_DIR = BENCH_DIR / ".work"
NOTES = BENCH_DIR / "notes.md"


def _load() -> float:
    return os.getloadavg()[0]


def _profile_ours(bench: Bench, results: Results) -> str:
    """One extra run of ours under cProfile (main thread: fetch loop, transform, write)."""
    profile = bench.profile
    spec = scenarios.dataset_spec(profile, profile.head_to_head_leads)
    path = bench.workdir / "ours.profile"
    bench.say("[profile] one run of ours under cProfile")
    with SandboxProcess(spec) as sandbox:
        bench.run("ours", sandbox, "profile.ours", extra={"profile_path": str(path)})
    out = StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("cumulative").print_stats(r"apten_assets|duckdb|pyarrow|httpx|json", 30)
    text = out.getvalue()
    start = text.find("   ncalls")
    return text[start:] if start >= 0 else text


STEPS = {
    "1": scenarios.rate_limit,
    "5": scenarios.sensor,
    "2,3": scenarios.head_to_head,
    "4": scenarios.scale,
    # The calls step's transform-and-write at scenario 4's largest size, replayed without HTTP into
    # DuckDB (full and redacted: issue 15) and PostgreSQL (full: issue 12), in its own process.
    "pii": pii_cost.scale_cost,
    # Compares against the in-process, loop and dlt runs of 2 and 3, so those run with it.
    "6": scenarios.launch,
}
# Bound by Apten's rate limit, not by the CPU: scenario 6's webhook rounds, which wait on the
# sensor's interval, run in the background beside them; the steps after wait for the rounds to end.
WAITING = ("1", "5")
TITLES = {
    "1": "1: enrichment against the rate limit",
    "5": "5: late-summary sensor tick (warehouse set-up included)",
    "2,3": "2, 3: ours vs the loop vs dlt",
    "4": "4: scale",
    "pii": "4, write path: transform-and-write replayed at the largest size (no HTTP): DuckDB full and "
    "redacted, PostgreSQL full",
    "6": "6: as users launch it",
}


def _waiting_phase(wanted: set[str]) -> bool:
    """Whether scenario 6's webhook rounds go to the background beside the waiting scenarios."""
    return "6" in wanted and any(name in wanted for name in WAITING)


def run_bench(
    profile: Profile,
    out: Path,
    *,
    with_profile: bool | None = None,
    say=print,
    only: set[str] | None = None,
) -> Results:
    """Every scenario of `profile` (or those in `only`); writes `out` and returns the results."""
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    workdir = WORK_DIR / profile.name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    results = Results(profile)
    results.extras["load_before"] = _load()
    # The commit the run measured (the page may be written again later: `--render`).
    results.extras["commit"] = report.git_commit()
    bench = Bench(profile, workdir, say)
    wanted = set(STEPS) if only is None else only | ({"2,3"} if "6" in only else set())
    try:
        if _waiting_phase(wanted):
            bench.start_webhooks()
        for name, step in STEPS.items():
            if name not in wanted:
                continue
            if name not in WAITING and bench.webhooks is not None and not bench.webhooks.done():
                with bench.timed("the webhook rounds' end, waited for before the CPU-bound steps", 0):
                    bench.webhooks.exception()
            with bench.timed(TITLES[name], 0):
                step(bench, results)
        failed = [g for g in report.goals(results) if g.met is False and g.profiled]
        if with_profile or (with_profile is None and failed and profile.name == "full"):
            with bench.timed("cProfile of one run of ours (a goal of 2-4 on DuckDB not met)", 0):
                results.extras["profile"] = _profile_ours(bench, results)
    finally:
        bench.close()
    results.extras["steps"] = bench.steps
    results.extras["only"] = sorted(only) if only else None
    results.extras["load_after"] = _load()
    results.extras["started_at"] = started_at.strftime("%Y-%m-%d %H:%M")
    results.extras["total_seconds"] = time.perf_counter() - started
    _write_page(results, out)
    # The figures are kept, so the page can be written again with newer notes (`--render`).
    try:
        (workdir / RESULTS_FILE).write_bytes(pickle.dumps(results))
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        say(f"note: the figures could not be kept for --render: {exc}")
    return results


RESULTS_FILE = "results.pickle"


def _write_page(results: Results, out: Path) -> None:
    notes = NOTES.read_text() if NOTES.exists() and results.profile.name == "full" else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.render(results, notes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run each (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the results page")
    parser.add_argument("--profile", action="store_true", help="always add a cProfile of one run of ours")
    parser.add_argument(
        "--only",
        choices=sorted(STEPS),
        action="append",
        help="run only this scenario (repeatable); 6 brings 2,3 along",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="write the page again from the last run's figures (bench/.work/<profile>/results.pickle) "
        "with the current bench/notes.md; runs nothing",
    )
    args = parser.parse_args(argv)
    profile = SMOKE if args.smoke else FULL
    if args.render:
        out = args.out or (WORK_DIR / "RESULTS.smoke.md" if args.smoke else BENCH_DIR / "RESULTS.md")
        saved = WORK_DIR / profile.name / RESULTS_FILE
        results = pickle.loads(saved.read_bytes())
        written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
        results.extras["rewritten"] = f"{written} (UTC) with the notes at {report.git_commit()}"
        _write_page(results, out)
        print(f"wrote {out} from {saved} (the run of {results.extras['started_at']} UTC)")
        return 0
    if importlib.util.find_spec("dlt") is None:
        if not args.smoke:
            parser.error("dlt is missing: run with `uv run --group bench python -m bench`")
        print("note: dlt is not installed (no `--group bench`); the smoke run leaves it out")
        profile = replace(profile, dlt_runs=0)
    out = args.out or (WORK_DIR / "RESULTS.smoke.md" if args.smoke else BENCH_DIR / "RESULTS.md")
    load = _load()
    if load > 1.0:
        print(f"note: load average is {load:.2f}; other work on this machine will show in the figures")
    only = set(args.only) if args.only else None
    results = run_bench(profile, out, with_profile=True if args.profile else None, only=only)
    print()
    print(report.summary_table(results))
    print(f"\nwrote {out} in {results.extras['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
