"""The main job on a fresh machine: `uv run python -m apten_assets.demo`.

Starts the bundled Apten sandbox and the webhook receiver on loopback (no API key needed); the
sandbox sends its calls' signed webhooks (with redeliveries and forged copies) to the receiver.
Then one Dagster run materializes `apten/leads`, `apten/webhook_deliveries` and the last few days
of call partitions into the DuckDB file (default `data/apten.duckdb`) and ends with a short table
per day. Runs are recorded in a persistent Dagster instance (`DAGSTER_HOME`, default
`dagster_home/`), so `dagster dev` shows them afterwards.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from contextlib import ExitStack
from dataclasses import astuple
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from apten_assets.defs.apten.metadata import markdown_table
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.serving import ThreadedServer
from apten_assets.sandbox.data import DatasetSpec
from apten_assets.sandbox.server import SandboxServer
from apten_assets.sandbox.webhook_sender import WebhookEmitter
from apten_assets.warehouse import open_store
from apten_assets.webhooks import create_app
from apten_assets.webhooks.receiver import ROUTE


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=3, help="days before today to load (plus today)")
    parser.add_argument("--leads", type=int, default=150, help="sandbox leads")
    parser.add_argument("--calls-per-lead", type=int, default=4, help="sandbox calls per lead")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def _instance() -> dg.DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=args.days)
    spec = DatasetSpec(
        seed=args.seed, n_leads=args.leads, calls_per_lead=args.calls_per_lead, days=args.days + 1
    )
    started = time.monotonic()
    with ExitStack() as running:
        sandbox = running.enter_context(SandboxServer(spec))
        print(f"Apten sandbox on {sandbox.base_url}: {sandbox.state.dataset.describe()}", flush=True)
        os.environ["APTEN_BASE_URL"] = sandbox.base_url
        os.environ.setdefault("APTEN_MAX_RPS", "100")
        os.environ.setdefault("APTEN_START_DATE", first_day.isoformat())
        os.environ.setdefault("APTEN_WEBHOOK_SECRET", secrets.token_hex(16))
        settings = AptenSettings.from_env()
        assert settings.webhook_secret is not None
        receiver = running.enter_context(
            ThreadedServer(create_app(settings.webhook_secret, settings.webhook_inbox), lifespan="on")
        )
        with WebhookEmitter(
            sandbox.state.dataset, receiver.origin + ROUTE, settings.webhook_secret
        ) as emitter:
            report = emitter.emit()
        print(f"Webhooks to {receiver.origin}{ROUTE}: {report.summary()}", flush=True)
        # Imported here: the code location reads the environment set just above.
        from apten_assets.defs.apten import build_definitions

        defs = build_definitions(settings)
        job = defs.resolve_job_def("apten_pipeline_job")
        result = job.execute_in_process(
            instance=_instance(),
            tags={
                "dagster/asset_partition_range_start": max(first_day, settings.start_date).isoformat(),
                "dagster/asset_partition_range_end": today.isoformat(),
            },
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            raise_on_error=False,
        )
    if not result.success:
        print("The run failed; see the Dagster log above.", file=sys.stderr)
        return 1
    with open_store(settings.warehouse, read_only=True) as store:
        summary = [astuple(day) for day in store.day_summaries(first_day)]
    columns = [
        "day",
        "calls",
        "summary ready",
        "pending",
        "missing",
        "not found",
        "webchat",
        "turns",
        "transfers",
    ]
    print()
    print(markdown_table(columns, summary))
    print(
        f"\nDone in {time.monotonic() - started:.1f}s: {sum(r[1] for r in summary):,} calls in "
        f"{settings.warehouse}.\nExplore the runs and lineage with "
        f"`DAGSTER_HOME={os.environ['DAGSTER_HOME']} uv run dagster dev`."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
