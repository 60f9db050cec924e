"""The calls step's write, replayed without HTTP: N sandbox call bodies through `Call.from_json`,
`call_rows` and the batch write of `sync._write_call_batch` (`upsert_calls` + the summaries'
`upsert` in one transaction), on DuckDB and on a throwaway PostgreSQL, back to back.

    uv run --frozen python -m bench.write_replay --calls 25000 --rounds 2

Each round writes every batch twice: a first load into empty tables, then the same bodies again
(an unchanged re-run). Only the store calls are timed (`write_s`); per statement, the store's
session calls are summed under their first words (`--statements`). The machine may be loaded:
compare rounds, which alternate the backends.
"""

from __future__ import annotations

import argparse
import re
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

from apten_assets.lib.models import Call
from apten_assets.lib.sync import CALL_BATCH_SIZE
from apten_assets.lib.tables import CALL_SUMMARIES, call_rows
from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.warehouse import duckdb as duckdb_module
from apten_assets.warehouse import postgres as postgres_module
from apten_assets.warehouse.duckdb import DuckDBStore
from apten_assets.warehouse.postgres import PostgresStore
from apten_assets.warehouse.url import WarehouseURL

_WORDS = re.compile(r"[A-Za-z_]+")


class Timer:
    """Seconds per label, from wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: Callable[..., str]) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label(*args, **kwargs)] += time.perf_counter() - started

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def _statement(sql: str) -> str:
    sql = re.sub(r"_[0-9a-f]{12}", "", sql)
    words = _WORDS.findall(sql[:200])
    head = " ".join(words[:3])
    if "MERGE INTO" in sql[:40]:
        return f"MERGE {sql.split()[2]}"
    if head.startswith("INSERT INTO") or head.startswith("WITH i AS"):
        target = re.search(r"INSERT INTO (\S+)", sql)
        return f"INSERT {target.group(1) if target else ''}"
    return head


class Batches:
    """The call rows and summary rows of each batch of `CALL_BATCH_SIZE`, as `_write_call_batch`
    builds them; built when asked (untimed), so N calls' bodies are never all in memory."""

    def __init__(self, calls: int, seed: int) -> None:
        anchor = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), dtime(23, 0), tzinfo=UTC)
        spec = DatasetSpec(
            seed=seed,
            n_leads=max(1, calls // 25),
            calls_per_lead=25,
            days=1,
            anchor=anchor,
            turns_per_call=50,
        )
        self.data = SandboxDataset(spec)
        self.now = anchor + timedelta(hours=2)
        ids = sorted(
            set(self.data.lead_call_ids + self.data.webchat_call_ids) - set(self.data.missing_call_ids)
        )
        self.ids = [ids[i : i + CALL_BATCH_SIZE] for i in range(0, min(calls, len(ids)), CALL_BATCH_SIZE)]
        self.ids[-1] = self.ids[-1][: calls - CALL_BATCH_SIZE * (len(self.ids) - 1)]

    def __iter__(self) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        for ids in self.ids:
            calls_rows, summaries = [], []
            for call_id in ids:
                rows = call_rows(Call.from_json(self.data.call_json(call_id, self.now)), self.now)
                calls_rows.append(rows.call)
                if rows.summary is not None:
                    summaries.append(rows.summary)
            yield calls_rows, summaries


@contextmanager
def _store(backend: str, folder: Path, server: Any) -> Iterator[Any]:
    if backend == "duckdb":
        store = DuckDBStore.open(folder / f"replay_{time.monotonic_ns()}.duckdb")
    else:
        name = f"replay_{time.monotonic_ns()}"
        store = PostgresStore.open(WarehouseURL.parse(server.create_database(name)))
    try:
        store.ensure_schema()
        yield store
    finally:
        store.close()
        if backend == "postgresql":
            server.drop_database(name)


def _replay(backend: str, batches: Batches, folder: Path, server: Any, statements: bool) -> dict[str, Any]:
    timer = Timer()
    if statements:
        if backend == "postgresql":
            timer.wrap(PostgresStore, "_execute", lambda self, sql, *a, **k: _statement(sql))
            timer.wrap(PostgresStore, "_ingest", lambda *a, **k: "adbc_ingest (staging)")
            timer.wrap(PostgresStore, "_append", lambda *a, **k: "adbc_ingest (turns)")
            timer.wrap(postgres_module, "transcript_items", lambda *a, **k: "transcript_items (in a thread)")
            timer.wrap(postgres_module, "to_arrow", lambda *a, **k: "to_arrow")
        else:
            timer.wrap(duckdb_module, "_run", lambda con, sql, *a, **k: _statement(sql))
            timer.wrap(duckdb_module, "to_arrow", lambda *a, **k: "to_arrow")
    result: dict[str, Any] = {"backend": backend}
    try:
        with _store(backend, folder, server) as store:
            for phase in ("first", "rerun"):
                seconds = 0.0
                turns = 0
                for calls_rows, summaries in batches:
                    now = datetime.now(UTC)
                    started = time.perf_counter()
                    with store.transaction():
                        _, replaced = store.upsert_calls(calls_rows, now=now)
                        store.upsert(CALL_SUMMARIES, summaries, now=now)
                    seconds += time.perf_counter() - started
                    turns += replaced.inserted
                result[f"{phase}_s"] = round(seconds, 2)
                result[f"{phase}_turns"] = turns
            if backend == "postgresql":
                ((size,),) = store.test_query("SELECT pg_total_relation_size('apten.calls')")
                result["calls_mib"] = round(size / 2**20, 1)
    finally:
        timer.restore()
    result["statements"] = {k: round(v, 2) for k, v in sorted(timer.seconds.items(), key=lambda kv: -kv[1])}
    return result


class ExistingServer:
    """A running PostgreSQL (`--pg-url`, a superuser's URL): databases made and dropped on it."""

    def __init__(self, url: str) -> None:
        import adbc_driver_postgresql.dbapi as pg

        self.url = WarehouseURL.parse(url)
        self._admin = pg.connect(self.url.libpq_uri(), autocommit=True)

    def __enter__(self) -> ExistingServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._admin.close()

    def _admin_sql(self, sql: str) -> None:
        with self._admin.cursor() as cursor:
            cursor.execute(sql)

    def create_database(self, name: str) -> str:
        self._admin_sql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        url = self.url
        return WarehouseURL(
            backend=url.backend, host=url.host, port=url.port, user=url.user, database=name
        ).libpq_uri()

    def drop_database(self, name: str) -> None:
        self._admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=25_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--backends", default="duckdb,postgresql")
    parser.add_argument("--statements", action="store_true", help="time the store's statements")
    parser.add_argument("--pg-url", help="a running server (superuser URL) instead of a pgserver one")
    args = parser.parse_args()
    from tests.postgres import PostgresServer

    started = time.perf_counter()
    batches = Batches(args.calls, seed=7)
    n_calls = sum(len(ids) for ids in batches.ids)
    print(
        f"{n_calls} calls in {len(batches.ids)} batches, built in {time.perf_counter() - started:.1f}s",
        flush=True,
    )
    backends = args.backends.split(",")
    server_cm = ExistingServer(args.pg_url) if args.pg_url else PostgresServer()
    with tempfile.TemporaryDirectory(prefix="replay-") as folder, server_cm as server:
        totals: dict[str, list[float]] = defaultdict(list)
        for round_ in range(args.rounds):
            for backend in backends if round_ % 2 == 0 else list(reversed(backends)):
                result = _replay(backend, batches, Path(folder), server, args.statements)
                totals[backend].append(result["first_s"] + result["rerun_s"])
                print(f"round {round_ + 1}: {result}", flush=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {peak:.0f} MiB")
        if len(backends) == 2 and all(totals.values()):
            a, b = (min(totals[name]) for name in backends)
            print(f"best first+rerun: {backends[0]} {a:.2f}s, {backends[1]} {b:.2f}s, ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
