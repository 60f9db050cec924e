"""Webhook-to-row latency: sandbox sends a signed webhook -> receiver -> inbox -> apten_webhook_sensor
-> targeted run -> the delivery's `apten.webhook_deliveries` row and its call's `apten.calls` row.

    uv run python -m bench.webhook_latency [--rounds 20] [--calls-per-round 5]

Everything runs in this process over loopback: the sandbox API and the receiver on uvicorn threads,
the sensor ticked right after each round's sends, and its runs executed in process. The figures
exclude what a deployment adds on top: the wait for the next sensor tick (up to
`SENSOR_INTERVAL_SECONDS`) and the run launcher starting a run process.
"""

from __future__ import annotations

import argparse
import contextlib
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls-per-round", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

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
