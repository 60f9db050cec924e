"""The calls step's write path replayed without HTTP at scenario 4's largest size (issues 12,
13 and 15): DuckDB in full and in redacted mode, and PostgreSQL in full mode.

What is timed: the calls step's transform-and-write (`_write_call_batch`: redaction in
`redacted` mode, parsing, row building, the upsert) for as many calls as scenario 4's largest
point fetches (100,000 calls, ~4M turns, in the full run), without HTTP, into an empty warehouse
per target. Batches of `CALL_BATCH_SIZE` calls go to every target in turn, the order rotating
per batch (a, b, c, then b, c, a, ...), so a busy moment on the machine hits all targets alike,
and each batch gives one ratio. Per target: wall and process CPU seconds, and the store's own
time writing the call tables (`upsert_calls` and the summaries' upsert, wrapped in this process
as `bench/contenders/ours.py` wraps them).

The bodies are the sandbox's: one batch's worth is generated (the sandbox takes ~0.3 ms a call,
so 100,000 would cost more time than the measurement) and replayed under new call ids until the
count is reached. The sandbox draws turn texts from a few dozen lines, so the table's contents are
as repetitive either way. With `share_pii_turns` > 0, that share of the lead's turns (and every
summary) say a sentence of the PII corpus (tests/pii/corpus.py) with its numbers made unique per
occurrence (`unique_variant`), so nothing is measured on a repeated phone number.

The full bench runs `scale_cost` after scenario 4: the replay in a process of its own
(`bench/contenders/write_path.py`, so its peak RSS is measured alone), on the bench's throwaway
PostgreSQL server. `uv run --frozen python -m bench.pii_cost [calls] [share_pii_turns]` replays
the two DuckDB targets in this process and prints the figures.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apten_assets.lib.client import AptenClient, CallFetch, decode_json
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.erasure import ErasedLeads
from apten_assets.lib.pii import PiiPolicy, TranscriptMode, luhn_valid
from apten_assets.lib.sync import CALL_BATCH_SIZE, CallTargets, StepReport, _write_call_batch
from apten_assets.sandbox.data import SandboxDataset
from apten_assets.warehouse import Store, WarehouseURL, open_store
from bench.contenders._harness import StepTimer
from bench.runner import run_contender
from bench.scenarios import FULL, Bench, Profile, Results, dataset_spec
from bench.stats import Figure
from tests.pii.corpus import MUST_REDACT, MUST_SURVIVE

GOAL_OVERHEAD = 0.15
# The PII-dense case: this share of the lead's turns, and every summary, hold a corpus sentence.
DENSE_SHARE = 0.05
PII_LINES = tuple(case.text for case in MUST_REDACT) + MUST_SURVIVE
# A number as people write it: digits with the separators between them.
_NUMBER = re.compile(r"[0-9](?:[0-9 ().\-/]*[0-9])?")
# The replay's targets, by name.
DUCKDB_FULL = "DuckDB, full"
DUCKDB_REDACTED = "DuckDB, redacted"
POSTGRES_FULL = "PostgreSQL, full"


@dataclass(frozen=True)
class Target:
    """Where one copy of the replay goes: an empty warehouse (`url`), the transcript mode, and a
    throwaway warehouse of the same backend for the untimed warm-up batch (`warm_url`)."""

    name: str
    mode: str
    url: str
    warm_url: str

    @property
    def backend(self) -> str:
        return WarehouseURL.parse(self.url).backend


@dataclass
class TargetCost:
    """One target's figures, per batch."""

    name: str
    mode: str
    backend: str
    wall: list[float] = field(default_factory=list)
    # CPU seconds of the replay's process (all threads, DuckDB's included; a PostgreSQL server's
    # work is in its own processes): waiting for a core on a busy machine does not count.
    cpu: list[float] = field(default_factory=list)
    # Inside the store's `upsert_calls` and the summaries' upsert.
    store_write: list[float] = field(default_factory=list)
    # Rows written per table (every target writes the same).
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float:
        return sum(self.wall)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu)

    @property
    def store_write_seconds(self) -> float:
        return sum(self.store_write)

    @property
    def turns(self) -> int:
        return self.rows.get("call_transcript_turns", 0)


@dataclass
class WritePath:
    """The replay's figures: every target's, over the same calls."""

    calls: int
    share_pii_turns: float
    targets: list[TargetCost] = field(default_factory=list)
    # CPU seconds of `PiiPolicy.call_body` alone over the same bodies (not part of the above).
    redaction_cpu_seconds: float = 0.0
    # The machine's 1-minute load average when the writes began and ended.
    load: tuple[float, float] = (0.0, 0.0)
    # Peak RSS of the replay's process (the bench's process sampler), when it ran in its own.
    peak_rss_bytes: int | None = None

    def target(self, name: str) -> TargetCost | None:
        return next((target for target in self.targets if target.name == name), None)

    @property
    def full(self) -> TargetCost:
        found = self.target(DUCKDB_FULL)
        assert found is not None, "every replay writes DuckDB in full mode"
        return found

    @property
    def redacted(self) -> TargetCost | None:
        return self.target(DUCKDB_REDACTED)

    @property
    def postgres(self) -> TargetCost | None:
        return self.target(POSTGRES_FULL)

    @property
    def turns(self) -> int:
        return self.full.turns

    @property
    def rows_agree(self) -> bool:
        return all(target.rows == self.full.rows for target in self.targets)

    def _redacted(self) -> TargetCost:
        assert self.redacted is not None, "no redacted target in this replay"
        return self.redacted

    @property
    def overhead(self) -> float:
        """Redacted over full (DuckDB), wall time summed over all batches, minus one."""
        return self._redacted().wall_seconds / self.full.wall_seconds - 1.0

    @property
    def cpu_overhead(self) -> float:
        return self._redacted().cpu_seconds / self.full.cpu_seconds - 1.0

    @property
    def batch_overheads(self) -> Figure:
        pairs = zip(self.full.wall, self._redacted().wall, strict=True)
        return Figure.of([redacted / full - 1.0 for full, redacted in pairs])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WritePath:
        return cls(
            calls=data["calls"],
            share_pii_turns=data["share_pii_turns"],
            targets=[TargetCost(**target) for target in data["targets"]],
            redaction_cpu_seconds=data["redaction_cpu_seconds"],
            load=tuple(data["load"]),
            peak_rss_bytes=data.get("peak_rss_bytes"),
        )


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
    """Batches of `pool` under new call ids until `calls` are given; PII lines made unique. Each
    carries what the client's decoder reports for its body as the sandbox sends it
    (`CallFetch.honest`: new ids and numbers add nothing it looks for)."""
    depth = AptenSettings.max_json_depth
    honest = [decode_json(json.dumps(body, ensure_ascii=False).encode(), depth).honest for body in pool]
    given = 0
    replica = 0
    stamp = 0
    while given < calls:
        batch = []
        for index, body in enumerate(pool[: min(len(pool), calls - given)]):
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
            batch.append(CallFetch(copy["id"], True, copy, honest=honest[index]))
        given += len(batch)
        replica += 1
        yield batch


def _opener(url: str) -> Callable[[], AbstractContextManager[Store]]:
    """Opens the warehouse at `url` as the calls step's warehouse resource does."""

    @contextmanager
    def open_warehouse() -> Iterator[Store]:
        with open_store(url) as store:
            store.ensure_schema()
            yield store

    return open_warehouse


def _store_classes(targets: list[Target]) -> list[type]:
    """The store classes the targets write through (imported only when a target uses them)."""
    classes: list[type] = []
    backends = {target.backend for target in targets}
    if "duckdb" in backends:
        from apten_assets.warehouse.duckdb import DuckDBStore

        classes.append(DuckDBStore)
    if "postgresql" in backends:
        from apten_assets.warehouse.postgres import PostgresStore

        classes.append(PostgresStore)
    return classes


def replay(
    profile: Profile,
    calls: int,
    targets: list[Target],
    share: float = 0.0,
    say: Callable[[str], None] = print,
) -> WritePath:
    """`calls` calls through the calls step's transform-and-write into every target (module doc)."""
    pool, pii_lines = _pool(profile, calls, share)
    cost = WritePath(calls=0, share_pii_turns=share)
    costs = {target.name: TargetCost(target.name, target.mode, target.backend) for target in targets}
    log = logging.getLogger("bench.pii_cost")
    now = datetime.now(UTC)
    redacting = PiiPolicy(TranscriptMode.REDACTED)
    policies = {target.name: PiiPolicy(TranscriptMode(target.mode)) for target in targets}
    reports = {target.name: _reports() for target in targets}
    warehouses = {target.name: _opener(target.url) for target in targets}
    settings = AptenSettings.from_env({"APTEN_API_KEY": "bench", "APTEN_BASE_URL": "http://127.0.0.1:9"})
    # The store's time writing the call tables, under the name of the target being written.
    writing: list[str | None] = [None]
    timer = StepTimer()
    for store_class in _store_classes(targets):
        timer.wrap_call_table_writes(store_class, lambda: writing[0])
    try:
        with AptenClient(settings) as client:
            # One-off costs (first imports, schema creation, the phone metadata, the first
            # connection) are paid before the clock runs: a small batch into each target's
            # throwaway warehouse.
            warm_up = [
                CallFetch(f"{body['id']}.warm", True, {**body, "id": f"{body['id']}.warm"})
                for body in pool[:200]
            ]
            for target in targets:
                _write_call_batch(
                    _opener(target.warm_url), warm_up, now, CallTargets([f.call_id for f in warm_up], {}),
                    ErasedLeads(), timedelta(hours=240), policies[target.name], _reports(), log, client,
                )  # fmt: skip
            load_before = os.getloadavg()[0]
            for index, batch in enumerate(_replay(pool, pii_lines, calls)):
                call_targets = CallTargets([fetch.call_id for fetch in batch], {})
                turn = index % len(targets)
                for target in targets[turn:] + targets[:turn]:
                    writing[0] = target.name
                    written = timer.seconds.get(target.name, 0.0)
                    started, cpu = time.perf_counter(), time.process_time()
                    _write_call_batch(
                        warehouses[target.name], batch, now, call_targets, ErasedLeads(),
                        timedelta(hours=240), policies[target.name], reports[target.name], log, client,
                    )  # fmt: skip
                    costs[target.name].wall.append(time.perf_counter() - started)
                    costs[target.name].cpu.append(time.process_time() - cpu)
                    costs[target.name].store_write.append(timer.seconds.get(target.name, 0.0) - written)
                    writing[0] = None
                cpu = time.process_time()
                for fetch in batch:
                    redacting.call_body(fetch.body)
                cost.redaction_cpu_seconds += time.process_time() - cpu
                cost.calls += len(batch)
    finally:
        timer.restore()
    cost.load = (load_before, os.getloadavg()[0])
    for target in targets:
        costs[target.name].rows = _rows_written(reports[target.name])
    cost.targets = [costs[target.name] for target in targets]
    say(f"  {cost.calls:,} calls, {cost.turns:,} turns, load {cost.load[0]:.1f} -> {cost.load[1]:.1f}")
    for target in cost.targets:
        say(
            f"  {target.name}: wall {target.wall_seconds:.1f} s, CPU {target.cpu_seconds:.1f} s, "
            f"store write {target.store_write_seconds:.1f} s, rows {target.rows}"
        )
    if cost.redacted is not None:
        say(
            f"  redacted over full: wall {cost.overhead:+.1%} (per batch {cost.batch_overheads.show(3)}), "
            f"CPU {cost.cpu_overhead:+.1%}; redaction alone {cost.redaction_cpu_seconds:.2f} s CPU"
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


def _rows_written(reports: dict[str, StepReport]) -> dict[str, int]:
    """Rows each call table got: upserted calls and summaries (inserted or updated), turns inserted."""
    upserted = {name: reports[name].counts for name in ("calls", "call_summaries")}
    return {
        **{name: counts["inserted"] + counts["updated"] for name, counts in upserted.items()},
        "call_transcript_turns": reports["call_transcript_turns"].counts["rows_inserted"],
    }


def duckdb_targets(folder: Path) -> list[Target]:
    """DuckDB in full and in redacted mode: files under `folder`."""
    return [
        Target(name, mode.value, f"duckdb:///{folder / f'{mode.value}.duckdb'}",
               f"duckdb:///{folder / f'warm-{mode.value}.duckdb'}")
        for name, mode in ((DUCKDB_FULL, TranscriptMode.FULL), (DUCKDB_REDACTED, TranscriptMode.REDACTED))
    ]  # fmt: skip


def scale_cost(bench: Bench, results: Results) -> None:
    """After scenario 4: the replay at its largest size in a process of its own (DuckDB full and
    redacted, PostgreSQL full on the bench's server), stored in `results.extras["write_path"]`;
    then the redaction alone on PII-dense text, in the bench's process."""
    profile = bench.profile
    calls = profile.scale_leads[-1] * profile.calls_per_lead
    bench.say(
        f"[4] the write path replayed: {calls:,} calls into DuckDB (full, redacted) and PostgreSQL (full)"
    )
    run_dir = bench.workdir / "write_path"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with bench.timed("4, write path: the replay's process (bodies, warm-up, three targets)"):
        postgres = bench.postgres()
        with postgres.database("write_path_warm") as warm, postgres.database("write_path") as url:
            targets = [*duckdb_targets(run_dir), Target(POSTGRES_FULL, TranscriptMode.FULL.value, url, warm)]
            params = {
                "calls": calls,
                "share_pii_turns": 0.0,
                "calls_per_lead": profile.calls_per_lead,
                "turns_per_call": profile.turns_per_call,
                "targets": [asdict(target) for target in targets],
            }
            result = run_contender("write_path", params, run_dir, "write_path")
    for path in run_dir.glob("*.duckdb*"):
        path.unlink()
    bench.raw.setdefault("runs", {})["write_path"] = result
    cost = WritePath.from_json(result["write_path"])
    # The whole process, sampled from outside: the bodies, the three stores' sessions and all.
    cost.peak_rss_bytes = result["process_peak_rss_bytes"]
    results.extras["write_path"] = cost
    for line in result["lines"]:
        bench.say(line)
    bench.say(f"  peak RSS of the replay's process {cost.peak_rss_bytes / 2**20:,.0f} MiB")
    with bench.timed("4, PII: the redaction alone on PII-dense text"):
        dense = redaction_only(profile, min(calls, CALL_BATCH_SIZE), DENSE_SHARE)
    results.extras["pii_dense"] = dense
    bench.say(
        f"  PII-dense text ({DENSE_SHARE:.0%} of lead turns and every summary): redaction alone "
        f"{dense.cpu_seconds / dense.calls * 1e6:.0f} us CPU per call"
    )


def profile_for(calls_per_lead: int, turns_per_call: int) -> Profile:
    """The data shape of the replay's bodies (the only parts of a profile it uses)."""
    return replace(FULL, calls_per_lead=calls_per_lead, turns_per_call=turns_per_call)


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else FULL.scale_leads[-1] * FULL.calls_per_lead
    share = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    print(f"{calls:,} calls, share of lead turns with PII {share:.0%}")
    with tempfile.TemporaryDirectory() as folder:
        cost = replay(FULL, calls, duckdb_targets(Path(folder)), share)
    dense = redaction_only(FULL, min(calls, CALL_BATCH_SIZE), DENSE_SHARE)
    per_call_full = cost.full.cpu_seconds / cost.calls
    per_call_dense = dense.cpu_seconds / dense.calls
    print(
        f"  PII-dense ({DENSE_SHARE:.0%} of lead turns, every summary, unique numbers): redaction alone "
        f"{per_call_dense * 1e6:.0f} us CPU per call, {per_call_dense / per_call_full:.1%} of full's "
        "CPU per call"
    )


if __name__ == "__main__":
    main()
