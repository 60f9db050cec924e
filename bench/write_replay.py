"""The calls step's write taken apart: where the store's time goes, on DuckDB and on PostgreSQL.

N sandbox call bodies (`bench.pii_cost`'s pool, replayed under new call ids) go through the
calls step's transform-and-write (`sync._write_call_batch`, full mode, batches of
`CALL_BATCH_SIZE`) into an empty DuckDB file and an empty database on a throwaway PostgreSQL, the
backends alternating by round. Each round writes every batch twice: a first load, then the same
bodies again (an unchanged re-run). Per phase: the wall time of the transform-and-write and the
store's own time writing the call tables (`write_s`); with `--statements`, the store's session
calls summed per phase under their first words.

    uv run --frozen python -m bench.write_replay --calls 25000 --rounds 2 --statements

The full bench's figures come from `bench.pii_cost`, which writes the same way with the targets
rotating per batch; this tool is for finding out why. The machine may be loaded: compare rounds.
"""

from __future__ import annotations

import argparse
import logging
import re
import resource
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apten_assets.lib.client import AptenClient, CallFetch
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.erasure import ErasedLeads
from apten_assets.lib.pii import PiiPolicy, TranscriptMode
from apten_assets.lib.sync import CallTargets, _write_call_batch
from apten_assets.warehouse import WarehouseURL, open_store
from apten_assets.warehouse import duckdb as duckdb_module
from apten_assets.warehouse import postgres as postgres_module
from apten_assets.warehouse.duckdb import DuckDBStore
from apten_assets.warehouse.postgres import PostgresStore
from bench.contenders._harness import StepTimer
from bench.pii_cost import _opener, _pool, _replay, _reports, _rows_written, profile_for

_WORDS = re.compile(r"[A-Za-z_]+")
WRITE = "write"


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


def _timer(backend: str, statements: bool) -> StepTimer:
    timer = StepTimer()
    timer.wrap_call_table_writes(PostgresStore if backend == "postgresql" else DuckDBStore, lambda: WRITE)
    if not statements:
        return timer
    if backend == "postgresql":
        timer.wrap(PostgresStore, "_execute", lambda self, sql, *a, **k: _statement(sql))
        timer.wrap(PostgresStore, "_ingest", "adbc_ingest (staging)")
        timer.wrap(PostgresStore, "_append", lambda self, spec, data: f"adbc_ingest ({spec.name})")
        timer.wrap(postgres_module, "transcript_items", "transcript_items (in a thread)")
        timer.wrap(postgres_module, "to_arrow", "to_arrow")
    else:
        timer.wrap(duckdb_module, "_run", lambda con, sql, *a, **k: _statement(sql))
        timer.wrap(duckdb_module, "to_arrow", "to_arrow")
    return timer


def _replay_into(
    url: str, backend: str, pool: list[dict[str, Any]], calls: int, client: AptenClient, statements: bool
) -> dict[str, Any]:
    log = logging.getLogger("bench.write_replay")
    policy = PiiPolicy(TranscriptMode.FULL)
    warehouse = _opener(url)
    now = datetime.now(UTC)

    def write(batch: list[CallFetch], reports: dict[str, Any]) -> None:
        targets = CallTargets([fetch.call_id for fetch in batch], {})
        _write_call_batch(
            warehouse, batch, now, targets, ErasedLeads(), timedelta(hours=240), policy, reports, log, client
        )

    # One-off costs (schema, first imports, the phone metadata) before the clock runs.
    warm_up = [
        CallFetch(f"{body['id']}.warm", True, {**body, "id": f"{body['id']}.warm"}) for body in pool[:200]
    ]
    write(warm_up, _reports())
    result: dict[str, Any] = {"backend": backend}
    timer = _timer(backend, statements)
    try:
        for phase in ("first", "rerun"):
            reports = _reports()
            before = dict(timer.seconds)
            wall, written = 0.0, timer.seconds.get(WRITE, 0.0)
            for batch in _replay(pool, frozenset(), calls):
                started = time.perf_counter()
                write(batch, reports)
                wall += time.perf_counter() - started
            result[f"{phase}_s"] = round(wall, 2)
            result[f"{phase}_write_s"] = round(timer.seconds.get(WRITE, 0.0) - written, 2)
            result[f"{phase}_rows"] = _rows_written(reports)
            if statements:
                spent = {k: v - before.get(k, 0.0) for k, v in timer.seconds.items() if k != WRITE}
                result[f"{phase}_statements"] = {
                    k: round(v, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v >= 0.005
                }
    finally:
        timer.restore()
    if backend == "postgresql":
        with open_store(url) as store:
            ((size,),) = store.test_query("SELECT pg_total_relation_size('apten.calls')")
        result["calls_mib"] = round(size / 2**20, 1)
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


def _round(
    backend: str, folder: Path, server: Any, pool: list[dict[str, Any]], calls: int, **kw: Any
) -> dict:
    name = f"replay_{time.monotonic_ns()}"
    if backend == "duckdb":
        return _replay_into(f"duckdb:///{folder / f'{name}.duckdb'}", backend, pool, calls, **kw)
    try:
        return _replay_into(server.create_database(name), backend, pool, calls, **kw)
    finally:
        server.drop_database(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=25_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--backends", default="duckdb,postgresql")
    parser.add_argument("--statements", action="store_true", help="time the store's statements")
    parser.add_argument("--pg-url", help="a running server (superuser URL) instead of a pgserver one")
    args = parser.parse_args()
    from tests.postgres import PostgresServer

    pool, _ = _pool(profile_for(25, 50), args.calls, 0.0)
    print(f"{args.calls:,} calls: a pool of {len(pool):,} sandbox bodies, replayed under new ids", flush=True)
    backends = args.backends.split(",")
    settings = AptenSettings.from_env({"APTEN_API_KEY": "bench", "APTEN_BASE_URL": "http://127.0.0.1:9"})
    server_cm = ExistingServer(args.pg_url) if args.pg_url else PostgresServer()
    with (
        tempfile.TemporaryDirectory(prefix="replay-") as folder,
        server_cm as server,
        AptenClient(settings) as client,
    ):
        totals: dict[str, list[float]] = defaultdict(list)
        for round_ in range(args.rounds):
            for backend in backends if round_ % 2 == 0 else list(reversed(backends)):
                kw = {"client": client, "statements": args.statements}
                result = _round(backend, Path(folder), server, pool, args.calls, **kw)
                totals[backend].append(result["first_s"] + result["rerun_s"])
                print(f"round {round_ + 1}: {result}", flush=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {peak:.0f} MiB")
        if len(backends) == 2 and all(totals.values()):
            a, b = (min(totals[name]) for name in backends)
            print(f"best first+rerun: {backends[0]} {a:.2f}s, {backends[1]} {b:.2f}s, ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
