"""`uv run --frozen python -m bench.pii_cost [n_leads] [share_pii_turns]`: the cost of
APTEN_TRANSCRIPT_MODE=redacted on the calls step's transform-and-write path (scenario 4's
`_write_call_batch`), in process, without HTTP: the sandbox's call bodies are built in memory and
written batch by batch into a fresh DuckDB file, once per mode, alternating, best of three.

`share_pii_turns` of the lead's turns say a sentence of the PII corpus (tests/pii/corpus.py);
0 is the sandbox's own text, which holds no digit and no `@`.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apten_assets.lib.client import CallFetch
from apten_assets.lib.pii import PiiPolicy, TranscriptMode
from apten_assets.lib.sync import CALL_BATCH_SIZE, CallTargets, StepReport, _write_call_batch
from apten_assets.sandbox.data import SandboxDataset
from apten_assets.warehouse import WarehouseURL, open_store
from bench.scenarios import FULL, dataset_spec
from tests.pii.corpus import MUST_REDACT, MUST_SURVIVE


def _write_all(db: Path, fetches: list[CallFetch], pii: PiiPolicy) -> tuple[float, int]:
    @contextmanager
    def open_warehouse():
        with open_store(WarehouseURL.for_duckdb_file(db)) as store:
            store.ensure_schema()
            yield store

    reports = {name: StepReport() for name in ("calls", "call_summaries", "call_transcript_turns")}
    targets = CallTargets([f.call_id for f in fetches], {})
    log = logging.getLogger("bench.pii_cost")
    now = datetime.now(UTC)
    started = time.perf_counter()
    for i in range(0, len(fetches), CALL_BATCH_SIZE):
        batch = fetches[i : i + CALL_BATCH_SIZE]
        _write_call_batch(open_warehouse, batch, now, targets, timedelta(hours=240), pii, reports, log)
    return time.perf_counter() - started, reports["call_transcript_turns"].counts["rows_inserted"]


def main() -> None:
    n_leads = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    share = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    lines = tuple(case.text for case in MUST_REDACT) + MUST_SURVIVE
    spec = dataset_spec(FULL, n_leads)
    spec = type(spec)(**{**vars(spec), "pii_lines": lines if share else (), "share_pii_turns": share})
    dataset = SandboxDataset(spec)
    now = datetime.now(UTC)
    ids = [*dataset.lead_call_ids, *dataset.webchat_call_ids]
    fetches = [CallFetch(call_id, True, dataset.call_json(call_id, now)) for call_id in ids]
    fetches = [f for f in fetches if f.body is not None]
    # The redaction alone (CPU time, so other processes on the machine do not count).
    policy = PiiPolicy(TranscriptMode.REDACTED)
    cpu = time.process_time()
    for fetch in fetches:
        policy.call_body(fetch.body)
    redaction_cpu = time.process_time() - cpu
    times: dict[str, list[float]] = {"full": [], "redacted": []}
    turns = 0
    with tempfile.TemporaryDirectory() as folder:
        for run in range(3):
            for mode in ("full", "redacted"):
                db = Path(folder) / f"{mode}-{run}.duckdb"
                seconds, turns = _write_all(db, fetches, PiiPolicy(TranscriptMode(mode)))
                times[mode].append(seconds)
                print(f"run {run} {mode:8}: {seconds:6.2f} s for {turns:,} turns", flush=True)
                db.unlink()
    best = {mode: min(values) for mode, values in times.items()}
    print(
        f"{len(fetches):,} calls, {turns:,} turns, share of lead turns with PII {share:.0%}: "
        f"full {best['full']:.2f} s, redacted {best['redacted']:.2f} s "
        f"({best['redacted'] / best['full'] - 1:+.1%}); the redaction alone {redaction_cpu:.2f} s CPU "
        f"({redaction_cpu / best['full']:+.1%} of full)"
    )


if __name__ == "__main__":
    main()
