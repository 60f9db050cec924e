"""The cost of APTEN_TRANSCRIPT_MODE=redacted at scenario 4's largest size (issue 15, item 7).

What is timed: the calls step's transform-and-write (`_write_call_batch`: redaction in `redacted`
mode, parsing, row building, the upsert into DuckDB) for as many calls as scenario 4's largest
point fetches (100,000 calls, ~4M turns, in the full run), in process and without HTTP, once
into a DuckDB file per mode. Batches of `CALL_BATCH_SIZE` calls go to the two files in turn
(full then redacted, then redacted then full, ...), so a busy moment on the machine hits both
modes alike, and each batch gives one ratio.

The bodies are the sandbox's: one batch's worth is generated (the sandbox takes ~0.3 ms a call,
so 100,000 would cost more time than the measurement) and replayed under new call ids until the
count is reached. The sandbox draws turn texts from a few dozen lines, so the table's contents are
as repetitive either way. With `share_pii_turns` > 0, that share of the lead's turns (and every
summary) say a sentence of the PII corpus (tests/pii/corpus.py) with its numbers made unique per
occurrence (`unique_variant`), so nothing is measured on a repeated phone number.

`uv run --frozen python -m bench.pii_cost [calls] [share_pii_turns]` prints the figures; the full
bench runs `scale_cost` after scenario 4 and reports the goal row.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apten_assets.lib.client import AptenClient, CallFetch
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.erasure import ErasedLeads
from apten_assets.lib.pii import PiiPolicy, TranscriptMode, luhn_valid
from apten_assets.lib.sync import CALL_BATCH_SIZE, CallTargets, StepReport, _write_call_batch
from apten_assets.sandbox.data import SandboxDataset
from apten_assets.warehouse import Store, WarehouseURL, open_store
from bench.scenarios import FULL, Bench, Profile, Results, dataset_spec
from bench.stats import Figure
from tests.pii.corpus import MUST_REDACT, MUST_SURVIVE

GOAL_OVERHEAD = 0.15
# The PII-dense case: this share of the lead's turns, and every summary, hold a corpus sentence.
DENSE_SHARE = 0.05
MODES = (TranscriptMode.FULL, TranscriptMode.REDACTED)
PII_LINES = tuple(case.text for case in MUST_REDACT) + MUST_SURVIVE
# A number as people write it: digits with the separators between them.
_NUMBER = re.compile(r"[0-9](?:[0-9 ().\-/]*[0-9])?")


@dataclass
class PiiCost:
    """Transform-and-write seconds per batch, in each mode, over the same calls."""

    calls: int
    turns: int
    share_pii_turns: float
    full: list[float] = field(default_factory=list)
    redacted: list[float] = field(default_factory=list)
    # The same in CPU seconds of the process (DuckDB's threads included): waiting for a core on a
    # busy machine does not count.
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"full": [], "redacted": []})
    # CPU seconds of `PiiPolicy.call_body` alone over the same bodies (not part of the above).
    redaction_cpu_seconds: float = 0.0
    # Rows written per table in each mode (they must agree).
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    # The machine's 1-minute load average when the writes began and ended.
    load: tuple[float, float] = (0.0, 0.0)

    @property
    def overhead(self) -> float:
        """Redacted over full, summed over all batches, minus one."""
        return sum(self.redacted) / sum(self.full) - 1.0

    @property
    def cpu_overhead(self) -> float:
        return sum(self.cpu["redacted"]) / sum(self.cpu["full"]) - 1.0

    @property
    def batch_overheads(self) -> Figure:
        return Figure.of([r / f - 1.0 for f, r in zip(self.full, self.redacted, strict=True)])


def unique_variant(line: str, k: int) -> str:
    """`line` with its numbers changed by `k` (0-9999) and keeping their shape: the last four
    digits of every number of 7+ digits become `k`; a number of 13-19 digits keeps its Luhn
    verdict (a card stays a card, a look-alike stays one); an e-mail gets `k` in its local part."""
    stamp = f"{k % 10_000:04d}"

    def number(match: re.Match[str]) -> str:
        text = match.group()
        positions = [i for i, char in enumerate(text) if char.isdigit()]
        if len(positions) < 7:
            return text
        chars = list(text)
        is_card_length = 13 <= len(positions) <= 19
        # A card keeps its last digit free for the checksum.
        targets = positions[-5:-1] if is_card_length else positions[-4:]
        for position, digit in zip(targets, stamp, strict=True):
            chars[position] = digit
        if is_card_length:
            was_valid = luhn_valid("".join(text[i] for i in positions))
            for check in "0123456789":
                chars[positions[-1]] = check
                if luhn_valid("".join(chars[i] for i in positions)) == was_valid:
                    break
        return "".join(chars)

    return _NUMBER.sub(number, line.replace("@", f"{stamp}@"))


def _pool(profile: Profile, calls: int, share: float) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """Up to one batch's worth of sandbox call bodies (lead calls and web chats, as the sandbox
    mixes them), and the PII lines they may hold."""
    leads = max(1, -(-min(calls, CALL_BATCH_SIZE) // profile.calls_per_lead))
    spec = dataset_spec(profile, leads)
    if share:
        spec = replace(spec, pii_lines=PII_LINES, share_pii_turns=share)
    dataset = SandboxDataset(spec)
    now = datetime.now(UTC)
    bodies = [
        dataset.call_json(call_id, now) for call_id in (*dataset.lead_call_ids, *dataset.webchat_call_ids)
    ]
    return [body for body in bodies if body is not None], frozenset(spec.pii_lines)


def _replay(pool: list[dict[str, Any]], pii_lines: frozenset[str], calls: int) -> Iterator[list[CallFetch]]:
    """Batches of `pool` under new call ids until `calls` are given; PII lines made unique."""
    given = 0
    replica = 0
    stamp = 0
    while given < calls:
        batch = []
        for body in pool[: min(len(pool), calls - given)]:
            copy = {**body, "id": f"{body['id']}.{replica}"}
            if pii_lines:
                summary = copy.get("summary")
                if isinstance(summary, str):
                    copy["summary"], stamp = unique_variant(summary, stamp), stamp + 1
                turns = []
                for turn in copy["transcript"]:
                    if turn["content"] in pii_lines:
                        turn = {**turn, "content": unique_variant(turn["content"], stamp)}
                        stamp += 1
                    turns.append(turn)
                copy["transcript"] = turns
            batch.append(CallFetch(copy["id"], True, copy))
        given += len(batch)
        replica += 1
        yield batch


def _opener(path: Path) -> Callable[[], AbstractContextManager[Store]]:
    """Opens the DuckDB file at `path` as the calls step's warehouse resource does."""

    @contextmanager
    def open_warehouse() -> Iterator[Store]:
        with open_store(WarehouseURL.for_duckdb_file(path)) as store:
            store.ensure_schema()
            yield store

    return open_warehouse


def measure(profile: Profile, calls: int, share: float = 0.0, say: Callable[[str], None] = print) -> PiiCost:
    """`calls` calls through the calls step's transform-and-write in both modes (module doc)."""
    pool, pii_lines = _pool(profile, calls, share)
    cost = PiiCost(calls=0, turns=0, share_pii_turns=share)
    log = logging.getLogger("bench.pii_cost")
    now = datetime.now(UTC)
    redacting = PiiPolicy(TranscriptMode.REDACTED)
    settings = AptenSettings.from_env({"APTEN_API_KEY": "bench", "APTEN_BASE_URL": "http://127.0.0.1:9"})
    with tempfile.TemporaryDirectory() as folder, AptenClient(settings) as client:
        reports = {mode: _reports() for mode in MODES}
        warehouses = {mode: _opener(Path(folder) / f"{mode.value}.duckdb") for mode in MODES}
        # One-off costs (first imports, schema creation, the phone metadata) are paid before the
        # clock runs: a small batch into a throwaway file per mode.
        warm_up = [
            CallFetch(f"{body['id']}.warm", True, {**body, "id": f"{body['id']}.warm"}) for body in pool[:200]
        ]
        for mode in MODES:
            _write_call_batch(
                _opener(Path(folder) / f"warm-{mode.value}.duckdb"), warm_up, now,
                CallTargets([f.call_id for f in warm_up], {}), ErasedLeads(), timedelta(hours=240),
                PiiPolicy(mode), _reports(), log, client,
            )  # fmt: skip
        load_before = os.getloadavg()[0]
        for index, batch in enumerate(_replay(pool, pii_lines, calls)):
            targets = CallTargets([fetch.call_id for fetch in batch], {})
            for mode in MODES if index % 2 == 0 else MODES[::-1]:
                started, cpu = time.perf_counter(), time.process_time()
                _write_call_batch(
                    warehouses[mode], batch, now, targets, ErasedLeads(), timedelta(hours=240),
                    PiiPolicy(mode), reports[mode], log, client,
                )  # fmt: skip
                getattr(cost, mode.value).append(time.perf_counter() - started)
                cost.cpu[mode.value].append(time.process_time() - cpu)
            cpu = time.process_time()
            for fetch in batch:
                redacting.call_body(fetch.body)
            cost.redaction_cpu_seconds += time.process_time() - cpu
            cost.calls += len(batch)
    cost.load = (load_before, os.getloadavg()[0])
    cost.rows = {
        mode.value: {name: r.counts["rows_inserted"] for name, r in reports[mode].items()} for mode in MODES
    }
    cost.turns = cost.rows["full"]["call_transcript_turns"]
    say(
        f"  {cost.calls:,} calls, {cost.turns:,} turns: full {sum(cost.full):.1f} s, redacted "
        f"{sum(cost.redacted):.1f} s ({cost.overhead:+.1%}; per batch {cost.batch_overheads.show(3)}); "
        f"CPU {sum(cost.cpu['full']):.1f} s vs {sum(cost.cpu['redacted']):.1f} s ({cost.cpu_overhead:+.1%}); "
        f"redaction alone {cost.redaction_cpu_seconds:.2f} s CPU; "
        f"load {cost.load[0]:.1f} -> {cost.load[1]:.1f}"
    )
    return cost


@dataclass(frozen=True)
class RedactionOnly:
    """CPU seconds of `PiiPolicy.call_body` (redacted) alone over `calls` bodies."""

    calls: int
    share_pii_turns: float
    cpu_seconds: float


def redaction_only(profile: Profile, calls: int, share: float) -> RedactionOnly:
    """The redaction alone over PII-dense bodies (unique numbers), to set against a write."""
    pool, pii_lines = _pool(profile, calls, share)
    policy = PiiPolicy(TranscriptMode.REDACTED)
    policy.call_body(pool[0])
    seconds = 0.0
    given = 0
    for batch in _replay(pool, pii_lines, calls):
        cpu = time.process_time()
        for fetch in batch:
            policy.call_body(fetch.body)
        seconds += time.process_time() - cpu
        given += len(batch)
    return RedactionOnly(given, share, seconds)


def _reports() -> dict[str, StepReport]:
    return {name: StepReport() for name in ("calls", "call_summaries", "call_transcript_turns")}


def scale_cost(bench: Bench, results: Results) -> None:
    """After scenario 4: redacted vs full at its largest size, stored in `results.extras`."""
    profile = bench.profile
    calls = profile.scale_leads[-1] * profile.calls_per_lead
    bench.say(f"[4] APTEN_TRANSCRIPT_MODE=redacted vs full, transform + write of {calls:,} calls")
    results.extras["pii_cost"] = measure(profile, calls, say=bench.say)
    dense = redaction_only(profile, min(calls, CALL_BATCH_SIZE), DENSE_SHARE)
    results.extras["pii_dense"] = dense
    bench.say(
        f"  PII-dense text ({DENSE_SHARE:.0%} of lead turns and every summary): redaction alone "
        f"{dense.cpu_seconds / dense.calls * 1e6:.0f} us CPU per call"
    )


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else FULL.scale_leads[-1] * FULL.calls_per_lead
    share = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    print(f"{calls:,} calls, share of lead turns with PII {share:.0%}")
    cost = measure(FULL, calls, share)
    dense = redaction_only(FULL, min(calls, CALL_BATCH_SIZE), DENSE_SHARE)
    per_call_full = sum(cost.cpu["full"]) / cost.calls
    per_call_dense = dense.cpu_seconds / dense.calls
    print(
        f"  PII-dense ({DENSE_SHARE:.0%} of lead turns, every summary, unique numbers): redaction alone "
        f"{per_call_dense * 1e6:.0f} us CPU per call, {per_call_dense / per_call_full:.1%} of full's "
        "CPU per call"
    )


if __name__ == "__main__":
    main()
