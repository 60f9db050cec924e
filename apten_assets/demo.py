"""The main job on a fresh machine: `uv run python -m apten_assets.demo`.

Starts the bundled Apten sandbox and the webhook receiver on loopback (no API key needed); the
sandbox sends its calls' signed webhooks (with redeliveries and forged copies) to the receiver.
Then one Dagster run materializes `apten/leads`, `apten/webhook_deliveries` and the last few days
of call partitions into the DuckDB file (default `data/apten.duckdb`) and ends with a short table
per day. Runs are recorded in a persistent Dagster instance (`DAGSTER_HOME`, default
`dagster_home/`).

With `--ui` it then keeps that sandbox serving and starts the Dagster UI and daemon (`dg dev`)
pointed at it, on the same warehouse, so the UI shows what the demo loaded and anything it runs
(materializations, schedules, sensors) asks the very sandbox the data came from. Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import astuple
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

from apten_assets.defs.apten.metadata import markdown_table
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.serving import ThreadedServer
from apten_assets.sandbox.data import DatasetSpec
from apten_assets.sandbox.server import SandboxServer
from apten_assets.sandbox.webhook_sender import WebhookEmitter
from apten_assets.warehouse import DaySummary, WarehouseURL, open_store
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
    parser.add_argument(
        "--late-summary-delay-seconds",
        type=float,
        default=900.0,
        help="how long after the load a late summary appears in the sandbox",
    )
    parser.add_argument(
        "--ui", action="store_true", help="then keep the sandbox up and start the Dagster UI on it"
    )
    parser.add_argument("--ui-port", type=int, default=3000, help="the Dagster UI's port (with --ui)")
    return parser.parse_args(argv)


def _rerun_args(argv: list[str] | None) -> str:
    """The command line that repeats this run's dataset with `--ui`."""
    given = [arg for arg in (sys.argv[1:] if argv is None else argv) if arg != "--ui"]
    return " ".join(["uv run python -m apten_assets.demo", *given, "--ui"])


@contextmanager
def _forgeries_expected() -> Iterator[None]:
    """The emitter's forged copies are refused by design: one summary line, not one warning each."""
    receiver_log = logging.getLogger("apten_assets.webhooks.receiver")
    level = receiver_log.level
    receiver_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        receiver_log.setLevel(level)


def _start_clean(settings: AptenSettings) -> None:
    """Drop an earlier demo's warehouse file and inbox, when they are the default ones under data/.

    Each run's sandbox is a new dataset (its ids depend on the moment it is built), so an earlier
    run's leads and deliveries would only answer 404 to this one. Paths set in the environment are
    left alone: they may hold data that is not the demo's.
    """
    defaults = AptenSettings.from_env({})
    if "APTEN_DUCKDB_PATH" not in os.environ and "APTEN_WAREHOUSE_URL" not in os.environ:
        for leftover in (defaults.duckdb_file, Path(f"{defaults.duckdb_path}.wal")):
            leftover.unlink(missing_ok=True)
    if "APTEN_WEBHOOK_INBOX" not in os.environ:
        shutil.rmtree(defaults.webhook_inbox, ignore_errors=True)


def _instance() -> dg.DagsterInstance:
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path("dagster_home").resolve())))
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=args.days)
    spec = DatasetSpec(
        seed=args.seed,
        n_leads=args.leads,
        calls_per_lead=args.calls_per_lead,
        days=args.days + 1,
        late_summary_delay_seconds=args.late_summary_delay_seconds,
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
        _start_clean(settings)
        receiver = running.enter_context(
            ThreadedServer(create_app(settings.webhook_secret, settings.webhook_inbox), lifespan="on")
        )
        with (
            _forgeries_expected(),
            WebhookEmitter(
                sandbox.state.dataset, receiver.origin + ROUTE, settings.webhook_secret
            ) as emitter,
        ):
            report = emitter.emit()
        print(f"Webhooks to {receiver.origin}{ROUTE}: {report.summary()}", flush=True)
        refused = report.by_status.get(401, 0)
        if refused == report.forged:
            print(f"{refused} forged deliveries refused, as intended.", flush=True)
        else:
            print(
                f"WARNING: {report.forged} forged deliveries sent but {refused} refused (HTTP 401); "
                "the receiver's signature check is not doing its job.",
                file=sys.stderr,
                flush=True,
            )
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
        loaded = _days(max(first_day, settings.start_date), today)
        summary = _day_summary(settings.warehouse, first_day, loaded)
        print()
        print(markdown_table(SUMMARY_COLUMNS, summary))
        print(
            f"\nDone in {time.monotonic() - started:.1f}s: {sum(r[1] for r in summary):,} calls in "
            f"{settings.warehouse}."
        )
        if not args.ui:
            print(
                "Browse it in the Dagster UI, on this same sandbox data (loads again, then keeps the "
                f"sandbox up): `{_rerun_args(argv)}`"
            )
            return 0
        return _serve_ui(args.ui_port, settings.automation_running)


SUMMARY_COLUMNS = [
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


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _day_summary(warehouse: WarehouseURL, first_day: date, loaded: list[date]) -> list[tuple]:
    """A row per day with calls from `first_day` on, and one of zeros for each day the run
    loaded that has none (today, just after midnight UTC)."""
    with open_store(warehouse, read_only=True) as store:
        days = {day.day: day for day in store.day_summaries(first_day)}
    for day in loaded:
        days.setdefault(day, DaySummary(day, 0, 0, 0, 0, 0, 0, 0, 0))
    return [astuple(days[day]) for day in sorted(days)]


def _serve_ui(port: int, automation_running: bool) -> int:
    """`dg dev` on the demo's sandbox and warehouse, until Ctrl-C (or SIGTERM)."""
    # The UI needs no webhook secret: the receiver lives in this process and the sensor reads the inbox.
    env = {k: v for k, v in os.environ.items() if k != "APTEN_WEBHOOK_SECRET"}
    dg_cli = Path(sys.executable).with_name("dg")
    command = [str(dg_cli), "dev", "-m", "apten_assets.definitions", "--port", str(port)]
    automation = (
        "Schedules and sensors are on (APTEN_AUTOMATION_DEFAULT=running)."
        if automation_running
        else "Schedules and sensors stay stopped until you start them under Automation."
    )
    shown = " ".join(f"{name}={env[name]}" for name in ("APTEN_BASE_URL", "APTEN_START_DATE", "DAGSTER_HOME"))
    print(
        f"\nDagster UI on http://127.0.0.1:{port} with the demo's sandbox and warehouse; Ctrl-C stops both."
        f"\nOther commands on this data, while it runs: {shown} APTEN_MAX_RPS={env['APTEN_MAX_RPS']} "
        f"uv run dg ...\n{automation}",
        flush=True,
    )
    ui = subprocess.Popen(command, env=env)
    # Ctrl-C in a terminal reaches `dg dev` as well, which then stops its webserver and daemon; this
    # process only waits for that. A SIGTERM sent to this process alone is passed on as a Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: ui.send_signal(signal.SIGINT))
    return ui.wait()


if __name__ == "__main__":
    raise SystemExit(main())
