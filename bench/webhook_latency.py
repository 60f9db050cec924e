"""Webhook-to-row latency: sandbox sends a signed webhook -> receiver -> inbox -> apten_webhook_sensor
-> targeted run -> the delivery's `apten.webhook_deliveries` row and its call's `apten.calls` row.

    uv run python -m bench.webhook_latency [--rounds 20] [--calls-per-round 5]
    uv run python -m bench.webhook_latency --daemon [--rounds 6] [--calls-per-round 1] [--json out.json]

The sandbox API and the receiver run on uvicorn threads in this process. By default the sensor is
ticked right after each round's sends and its runs execute in this process, which leaves out what
a deployment adds: the wait for the next sensor tick (up to `SENSOR_INTERVAL_SECONDS`) and the run
launcher starting a run process. With `--daemon`, `dagster-daemon` runs the sensor on its own
schedule and launches the runs (the project's `dagster_home/dagster.yaml` and `workspace.yaml`,
default run launcher), as in a deployment: each figure is then the whole way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import dagster as dg

from apten_assets.defs.apten import build_definitions
from apten_assets.defs.apten.webhooks import SENSOR_INTERVAL_SECONDS, WEBHOOK_SENSOR_NAME
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.serving import ThreadedServer
from apten_assets.sandbox.data import DatasetSpec
from apten_assets.sandbox.server import SandboxServer
from apten_assets.sandbox.webhook_sender import WebhookEmitter, WebhookSender, encode
from apten_assets.warehouse.duckdb import connect
from apten_assets.webhooks import create_app, delivery_key
from apten_assets.webhooks.receiver import ROUTE

SECRET = "bench-webhook-secret"


def _receiver(inbox: str) -> ThreadedServer:
    """The receiver app on uvicorn, in a thread, on a free loopback port."""
    return ThreadedServer(create_app(SECRET, inbox), lifespan="on")


def _visible(database: str, keys: list[str], call_ids: list[str]) -> tuple[list[str], list[str]]:
    """Which of these deliveries and calls have their rows in the warehouse now."""
    con = connect(database, read_only=True)
    try:
        stored_keys = con.execute(
            "SELECT delivery_key FROM apten.webhook_deliveries WHERE delivery_key IN (SELECT unnest(?))",
            [keys],
        ).fetchall()
        stored_calls = con.execute(
            "SELECT call_id FROM apten.calls "
            "WHERE call_id IN (SELECT unnest(?)) AND last_fetched_at IS NOT NULL",
            [call_ids],
        ).fetchall()
    finally:
        con.close()
    return [key for (key,) in stored_keys], [call_id for (call_id,) in stored_calls]


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"n={len(values)}"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:8.1f} ms   p95 {cuts[94] * 1000:8.1f} ms   max {max(values) * 1000:8.1f} ms"


def _seconds(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {"n": len(values), "p50": cuts[49], "p95": cuts[94], "max": max(values)}


def _called_back(run_config: dict) -> set[str]:
    """The call ids a webhook sensor run names (its calls op config)."""
    return set(run_config.get("ops", {}).get("calls", {}).get("config", {}).get("call_ids", []))


def daemon_main(args: argparse.Namespace) -> None:
    """The whole way, as deployed: the daemon ticks the sensor and launches each run in a process."""
    from bench.launch import Daemon

    workdir = Path(tempfile.mkdtemp(prefix="apten-webhook-daemon-"))
    spec = DatasetSpec(seed=args.seed, n_leads=200, calls_per_lead=3, days=2)
    with SandboxServer(spec) as sandbox, _receiver(str(workdir / "inbox")) as receiver:
        dataset = sandbox.state.dataset
        env = {
            "APTEN_BASE_URL": sandbox.base_url,
            "APTEN_DUCKDB_PATH": str(workdir / "apten.duckdb"),
            "APTEN_WEBHOOK_INBOX": str(workdir / "inbox"),
            "APTEN_START_DATE": (dataset.anchor.date() - timedelta(days=spec.days)).isoformat(),
            "APTEN_MAX_RPS": "1000",
        }
        emitter = WebhookEmitter(dataset, receiver.origin + ROUTE, SECRET, seed=args.seed)
        candidates = [c for c in [*dataset.lead_call_ids, *dataset.webchat_call_ids] if emitter.lifecycle(c)]
        random.Random(args.seed).shuffle(candidates)
        print(f"sandbox: {dataset.describe()}")
        print(f"{args.rounds} rounds x {args.calls_per_round} calls through dagster-daemon")
        to_call_row: list[float] = []
        to_request: list[float] = []
        request_to_success: list[float] = []
        queued: list[float] = []
        seen: set[str] = set()
        with (
            Daemon(workdir / "dagster_home", env, workdir / "daemon.log", webhook_sensor=True) as daemon,
            WebhookSender(receiver.origin + ROUTE, SECRET) as sender,
        ):
            seen = {r.dagster_run.run_id for r in daemon.runs()}
            for round_index in range(args.rounds):
                chosen = candidates[
                    round_index * args.calls_per_round : (round_index + 1) * args.calls_per_round
                ]
                sent_at = time.time()
                for envelope in emitter.envelopes(chosen):
                    sender.post(encode(envelope)).raise_for_status()
                waiting = set(chosen)
                deadline = time.monotonic() + 120
                while waiting:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"round {round_index}: no run for {sorted(waiting)} within 120 s")
                    new = [r for r in daemon.runs() if r.dagster_run.run_id not in seen]
                    if not new:
                        time.sleep(0.1)
                        continue
                    for run in daemon.wait([r.dagster_run.run_id for r in new]):
                        seen.add(run["run_id"])
                        record = next(r for r in new if r.dagster_run.run_id == run["run_id"])
                        covered = _called_back(record.dagster_run.run_config) & waiting
                        to_request.append(run["requested_at"] - sent_at)
                        request_to_success.append(run["seconds"])
                        queued.append(run["queued_seconds"])
                        to_call_row += [run["ended_at"] - sent_at] * len(covered)
                        waiting -= covered
                _, stored = _visible(env["APTEN_DUCKDB_PATH"], [], list(chosen))
                if set(stored) != set(chosen):
                    raise SystemExit(f"round {round_index}: calls rows missing after the runs")
                print(
                    f"round {round_index + 1:>2}: {len(chosen)} call(s), row after {to_call_row[-1]:.1f} s "
                    f"(run requested after {to_request[-1]:.1f} s, "
                    f"request -> success {request_to_success[-1]:.1f} s)"
                )
        emitter.close()
    figures = {
        "send_to_calls_row": _seconds(to_call_row),
        "send_to_run_request": _seconds(to_request),
        "run_request_to_success": _seconds(request_to_success),
        "run_queued": _seconds(queued),
        "calls_per_run": args.calls_per_round,
        "sensor_interval_seconds": SENSOR_INTERVAL_SECONDS,
    }
    print()
    print(
        f"webhook latency through dagster-daemon ({len(to_call_row)} calls, {len(request_to_success)} runs)"
    )
    print(f"  send -> run requested by the sensor     {_quantiles(to_request)}")
    print(f"  run request -> run success              {_quantiles(request_to_success)}")
    print(f"  ... of which queued until launched      {_quantiles(queued)}")
    print(f"  send -> calls row                       {_quantiles(to_call_row)}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures))
    with contextlib.suppress(OSError):
        for path in sorted(workdir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
        workdir.rmdir()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls-per-round", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--daemon", action="store_true", help="through dagster-daemon, as deployed")
    parser.add_argument("--json", default=None, help="--daemon: also write the figures to this file")
    args = parser.parse_args(argv)
    if args.daemon:
        daemon_main(args)
        return

    workdir = Path(tempfile.mkdtemp(prefix="apten-webhook-latency-"))
    spec = DatasetSpec(seed=args.seed, n_leads=200, calls_per_lead=3, days=2)
    with SandboxServer(spec) as sandbox, _receiver(str(workdir / "inbox")) as receiver:
        os.environ.update(
            APTEN_BASE_URL=sandbox.base_url,
            APTEN_DUCKDB_PATH=str(workdir / "apten.duckdb"),
            APTEN_WEBHOOK_INBOX=str(workdir / "inbox"),
            APTEN_START_DATE=(sandbox.state.dataset.anchor.date() - timedelta(days=spec.days)).isoformat(),
            APTEN_MAX_RPS="1000",
        )
        settings = AptenSettings.from_env()
        defs = build_definitions(settings)
        sensor = defs.resolve_sensor_def(WEBHOOK_SENSOR_NAME)
        job = defs.resolve_implicit_global_asset_job_def()
        instance = dg.DagsterInstance.ephemeral()
        emitter = WebhookEmitter(sandbox.state.dataset, receiver.origin + ROUTE, SECRET, seed=args.seed)
        dataset = sandbox.state.dataset
        candidates = [c for c in [*dataset.lead_call_ids, *dataset.webchat_call_ids] if emitter.lifecycle(c)]
        random.Random(args.seed).shuffle(candidates)
        print(f"sandbox: {dataset.describe()}")
        print(f"{args.rounds} rounds x {args.calls_per_round} calls, all webhooks of each call per round")

        to_inbox: list[float] = []
        to_delivery_row: list[float] = []
        to_call_row: list[float] = []
        ticks: list[float] = []
        runs: list[float] = []
        cursor = None
        with WebhookSender(receiver.origin + ROUTE, SECRET) as sender:
            for round_index in range(args.rounds):
                chosen = candidates[
                    round_index * args.calls_per_round : (round_index + 1) * args.calls_per_round
                ]
                if not chosen:
                    break
                sent_at: dict[str, tuple[float, str]] = {}
                for envelope in emitter.envelopes(chosen):
                    started = time.perf_counter()
                    response = sender.post(encode(envelope))
                    response.raise_for_status()
                    to_inbox.append(time.perf_counter() - started)
                    sent_at[delivery_key(envelope)] = (started, envelope["data"]["callId"])
                tick_started = time.perf_counter()
                result = sensor(dg.build_sensor_context(cursor=cursor, definitions=defs))
                ticks.append(time.perf_counter() - tick_started)
                cursor = result.cursor
                pending_keys = dict(sent_at)
                pending_calls = {
                    call_id: min(t for t, c in sent_at.values() if c == call_id) for call_id in chosen
                }
                for request in result.run_requests or []:
                    run_started = time.perf_counter()
                    job.execute_in_process(
                        instance=instance,
                        partition_key=request.partition_key,
                        run_config=request.run_config,
                        asset_selection=list(request.asset_selection),
                        tags=request.tags,
                    )
                    runs.append(time.perf_counter() - run_started)
                    keys, calls = _visible(settings.duckdb_path, list(pending_keys), list(pending_calls))
                    visible = time.perf_counter()
                    to_delivery_row += [visible - pending_keys.pop(key)[0] for key in keys]
                    to_call_row += [visible - pending_calls.pop(call_id) for call_id in calls]
                if pending_keys or pending_calls:
                    raise SystemExit(
                        f"round {round_index}: rows missing after the runs "
                        f"({len(pending_keys)} deliveries, {len(pending_calls)} calls)"
                    )
                first_sent = min(started for started, _ in sent_at.values())
                print(
                    f"round {round_index + 1:>2}: {len(sent_at)} webhooks, {len(chosen)} calls, "
                    f"{len(result.run_requests or [])} run(s), all rows after {visible - first_sent:.2f} s"
                )
        emitter.close()

    print()
    print(f"webhook latency ({len(to_delivery_row)} webhooks, {len(runs)} runs)")
    print(f"  send -> stored in inbox (HTTP 200)           {_quantiles(to_inbox)}")
    print(f"  sensor tick                                  {_quantiles(ticks)}")
    print(f"  targeted run (deliveries, calls, transfers)  {_quantiles(runs)}")
    print(f"  send -> webhook_deliveries row               {_quantiles(to_delivery_row)}")
    print(f"  send -> calls row                            {_quantiles(to_call_row)}")
    print(
        f"  not included: the wait for the next sensor tick (up to {SENSOR_INTERVAL_SECONDS} s) and the "
        "run launcher starting a run process"
    )
    with contextlib.suppress(OSError):
        for path in sorted(workdir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        workdir.rmdir()


if __name__ == "__main__":
    main()
