"""`python -m apten_assets.sandbox`: serve a generated Apten dataset on loopback until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
import time
from datetime import datetime
from types import FrameType

from apten_assets.sandbox.app import FaultConfig
from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.sandbox.server import SandboxServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m apten_assets.sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--api-key", default=None, help="require this x-api-key (default: accept any)")
    data = parser.add_argument_group("data")
    data.add_argument("--seed", type=int, default=7)
    data.add_argument("--leads", type=int, default=200)
    data.add_argument("--calls-per-lead", type=int, default=5)
    data.add_argument(
        "--days", type=int, default=7, help="calls spread over this many UTC days, today included"
    )
    data.add_argument(
        "--anchor", type=datetime.fromisoformat, default=None, help="ISO 8601 'now' (default: now)"
    )
    data.add_argument("--turns-per-call", type=int, default=8)
    data.add_argument("--late-summary-delay-seconds", type=float, default=900.0)
    faults = parser.add_argument_group("faults")
    faults.add_argument("--latency-ms", type=float, default=0.0)
    faults.add_argument("--rate-limit-rps", type=float, default=0.0, help="0 turns the rate limit off")
    faults.add_argument("--p-429", type=float, default=0.0)
    faults.add_argument("--p-5xx", type=float, default=0.0)
    faults.add_argument("--p-drop", type=float, default=0.0)
    faults.add_argument("--p-truncate", type=float, default=0.0)
    faults.add_argument("--p-slow", type=float, default=0.0)
    faults.add_argument("--slow-seconds", type=float, default=5.0)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[DatasetSpec, FaultConfig]:
    spec = DatasetSpec(
        seed=args.seed,
        n_leads=args.leads,
        calls_per_lead=args.calls_per_lead,
        days=args.days,
        anchor=args.anchor,
        turns_per_call=args.turns_per_call,
        late_summary_delay_seconds=args.late_summary_delay_seconds,
    )
    faults = FaultConfig(
        latency_ms=args.latency_ms,
        rate_limit_rps=args.rate_limit_rps or None,
        p_429=args.p_429,
        p_5xx=args.p_5xx,
        p_drop=args.p_drop,
        p_truncate=args.p_truncate,
        p_slow=args.p_slow,
        slow_seconds=args.slow_seconds,
    )
    return spec, faults


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # `kill` should end as cleanly as Ctrl-C, with the closing summary.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    spec, faults = build(args)
    print(f"building the dataset ({spec.n_leads} leads x {spec.calls_per_lead} calls) ...", flush=True)
    started = time.perf_counter()
    dataset = SandboxDataset(spec)
    print(f"built in {time.perf_counter() - started:.1f}s: {dataset.describe()}", flush=True)
    with SandboxServer(dataset, api_key=args.api_key, faults=faults, port=args.port) as sb:
        print(f"Apten sandbox serving at {sb.base_url}  (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    print(f"stopped after serving {len(sb.state.request_log)} requests", flush=True)


if __name__ == "__main__":
    main()
