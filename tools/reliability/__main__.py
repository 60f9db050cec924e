"""Full reliability drills: `uv run python -m tools.reliability [--quick] [--postgres] [--out FILE]`.

Runs the chaos backfill (at least 5,000 calls through the issue's fault mix), the crash drill
(run processes SIGKILLed at request counts and inside DuckDB writes, then re-run) and the
concurrency drill (schedule, backfill and sensor runs in separate processes), prints progress, and
ends with the figures as Markdown (the tables in RELIABILITY.md). Exits 1 if any drill lost,
duplicated or changed a row. `--postgres` runs them on databases of a throwaway PostgreSQL server
(pgserver, a dev dependency) instead of DuckDB files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from apten_assets.sandbox.data import SandboxDataset
from tools.reliability.drills import (
    Kill,
    chaos_drill,
    concurrency_drill,
    crash_drill,
    crash_sequences,
    fault_free_snapshot,
)
from tools.reliability.harness import Warehouses, drill_spec


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized drills (a minute or two)")
    parser.add_argument("--out", type=Path, help="also write the Markdown figures to this file")
    parser.add_argument("--skip", nargs="*", default=[], choices=["chaos", "crash", "concurrency"])
    parser.add_argument("--postgres", action="store_true", help="warehouses on a throwaway PostgreSQL")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="apten-reliability-"))
    if not args.postgres:
        return _drills(args, work, Warehouses)
    from tests.postgres import PostgresServer

    with PostgresServer() as server:
        _say("PostgreSQL: a throwaway server, one database per warehouse")

        def on_server(folder: Path) -> Warehouses:
            return Warehouses(folder, lambda name: server.create_database(f"{folder.name}_{name}"))

        return _drills(args, work, on_server)


def _drills(args: argparse.Namespace, work: Path, warehouses_in: Callable[[Path], Warehouses]) -> int:
    if args.quick:
        chaos_spec, crash_spec, conc_spec = drill_spec(40, 8, 3), drill_spec(30, 6, 3), drill_spec(30, 6, 3)
        n_sequences = 3
    else:
        chaos_spec = drill_spec(600, 10, 7)  # 6,000 lead calls over 7 days
        crash_spec = drill_spec(300, 10, 5)  # 3,000 calls: two calls batches of 2,000 and 1,000
        conc_spec = drill_spec(300, 10, 5)
        n_sequences = 8
    _say(f"work directory {work}")
    lines: list[str] = []
    ok = True

    if "chaos" not in args.skip:
        dataset = SandboxDataset(chaos_spec)
        _say(f"chaos: {dataset.describe()}")
        _say("chaos: fault-free run")
        (work / "chaos").mkdir()
        chaos = warehouses_in(work / "chaos")
        expected = fault_free_snapshot(dataset, work / "chaos", warehouses=chaos)
        _say("chaos: backfill under faults")
        report = chaos_drill(chaos_spec, work / "chaos", expected=expected, warehouses=chaos)
        ok &= report.equal
        faults = report.faults
        lines += [
            "### Chaos backfill",
            "",
            f"Dataset: {report.calls:,} lead calls over {chaos_spec.days} days ({chaos_spec.n_leads} leads), "
            f"one backfill run over every partition; {report.requests:,} HTTP requests in "
            f"{report.seconds:.0f} s.",
            "",
            "| fault injected | requests |",
            "|---|---|",
            f"| 429 Too Many Requests (half with Retry-After) | {faults['429']:,} |",
            f"| 500 / 503 | {faults['5xx']:,} ({report.statuses[500]:,} / {report.statuses[503]:,}) |",
            f"| dropped connection | {faults['drop']:,} |",
            f"| truncated JSON body | {faults['truncate']:,} |",
            f"| slower than the read timeout | {faults['slow']:,} |",
            f"| none (normal answer) | {faults['none']:,} |",
            "",
            f"Runs: {len(report.runs)} ({report.runs_failed} failed and were re-run as they were).",
            "",
            *_diff_table(report.diffs),
        ]
        _say(f"chaos: {'EQUAL' if report.equal else 'DIFFERENT'} after {report.seconds:.0f} s")
        _flush(lines, args.out)

    if "crash" not in args.skip:
        dataset = SandboxDataset(crash_spec)
        _say(f"crash: {dataset.describe()}")
        (work / "crash").mkdir()
        crash = warehouses_in(work / "crash")
        expected = fault_free_snapshot(dataset, work / "crash", warehouses=crash)
        per_run = 1 + len(dataset.leads) + len(dataset.lead_call_ids)
        sequences = crash_sequences(n_sequences, seed=6, requests_per_run=per_run)
        results = crash_drill(crash_spec, work / "crash", sequences, expected=expected, warehouses=crash)
        kills = [k for r in results for k in r.kills]
        ok &= all(r.equal and r.rerun_success for r in results) and all(k.opened_cleanly for k in kills)
        ok &= all(k.kept_committed_state is not False for k in kills)
        by_phase = Counter((k.phase, k.in_write) for k in kills if k.killed)
        lines += [
            "",
            "### Crash safety",
            "",
            f"Dataset: {len(dataset.lead_call_ids):,} lead calls over {crash_spec.days} days. "
            f"{len(results)} sequences, {len(kills)} SIGKILLs ({sum(k.killed for k in kills)} landed "
            "while the run was alive), each followed by opening the warehouse; then one plain re-run.",
            "",
            "| # | kills (where they landed) | attempts | file opened cleanly | duplicate keys after kill | "
            "re-run | tables equal to fault-free |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(results, 1):
            where = "; ".join(_kill_label(k) for k in r.kills)
            lines.append(
                f"| {i} | {where} | {r.attempts} | {all(k.opened_cleanly for k in r.kills)} | "
                f"{sum(k.duplicates_after_kill for k in r.kills)} | "
                f"{'success' if r.rerun_success else 'FAILED'} | {r.equal} |"
            )
        lines += ["", "Kills by step and whether a warehouse write was under way:", ""]
        lines += [
            f"- {phase}, {'inside a write' if w else 'between writes'}: {n}"
            for (phase, w), n in sorted(by_phase.items())
        ]
        _say(f"crash: {sum(r.equal for r in results)}/{len(results)} sequences equal")
        _flush(lines, args.out)

    if "concurrency" not in args.skip:
        dataset = SandboxDataset(conc_spec)
        _say(f"concurrency: {dataset.describe()}")
        (work / "concurrency").mkdir()
        report = concurrency_drill(
            conc_spec, work / "concurrency", sensor_runs=4, warehouses=warehouses_in(work / "concurrency")
        )
        ok &= report.equal and all(code == 0 for code in report.processes.values())
        lines += [
            "",
            "### Concurrent runs",
            "",
            "| process | runs | exit code |",
            "|---|---|---|",
            *(
                f"| {name} | {_runs(report.outcomes[name])} | {code} |"
                for name, code in report.processes.items()
            ),
            "",
            f"Lock errors in the runs' output: {report.lock_messages}.",
            "",
            *_diff_table(report.diffs),
        ]
        _say(f"concurrency: {'EQUAL' if report.equal else 'DIFFERENT'} in {report.seconds:.0f} s")

    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.out:
        args.out.write_text(text)
    _say("all drills passed" if ok else "SOME DRILL FAILED")
    return 0 if ok else 1


def _kill_label(k: Kill) -> str:
    if not k.killed:
        return f"{k.point.label}: missed (the run ended first, after {k.requests_before_kill} requests)"
    wal = f", WAL {k.wal_bytes_after_kill:,} B left" if k.wal_bytes_after_kill else ""
    where = "inside a warehouse write" if k.in_write else "no write under way"
    if k.kept_committed_state is not None:
        where += ", last committed state kept" if k.kept_committed_state else ", COMMITTED STATE CHANGED"
    return f"{k.point.label}: {k.requests_before_kill} requests, {k.phase} step, {where}{wal}"


def _flush(lines: list[str], out: Path | None) -> None:
    """Figures so far, so a long drill leaves its finished sections behind even if stopped."""
    if out is not None:
        out.write_text("\n".join(lines) + "\n")


def _diff_table(diffs: dict) -> list[str]:
    rows = [
        "| table | rows (fault-free) | rows | lost | duplicates | extra | changed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in diffs.items():
        counts = f"{d.lost} | {d.duplicates} | {d.extra} | {d.changed}"
        rows.append(f"| {name} | {d.expected_rows:,} | {d.actual_rows:,} | {counts} |")
    return rows


def _runs(outcomes: list[dict]) -> str:
    return ", ".join(f"{o['kind']} {'ok' if o['success'] else 'FAILED'}" for o in outcomes)


if __name__ == "__main__":
    sys.exit(main())
