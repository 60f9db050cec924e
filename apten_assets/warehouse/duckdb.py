"""The DuckDB backend: connect (waiting out another process's lock), DDL, staged upserts, turns.

Writes stage rows through Arrow into a temp table (never row-by-row INSERTs), then change the
target tables inside one explicit transaction with MERGE, so a process killed mid-write leaves the
last committed state. Inside `with store.transaction():` several writes share the caller's
transaction, e.g. a batch's calls, summaries and turns commit together. The read queries are
`SqlStore`'s; `connect` is public for tests and tools that read the file directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from apten_assets.lib.tables import (
    CALL_TRANSCRIPT_TURNS,
    CALLS,
    LOADED_AT,
    SCHEMA,
    STORED_TABLES,
    Column,
    Merge,
    TableSpec,
)
from apten_assets.warehouse.arrow import to_arrow
from apten_assets.warehouse.sql import SqlStore
from apten_assets.warehouse.store import (
    ReplaceCounts,
    Rows,
    UpsertCounts,
    WarehouseBusy,
    WarehouseNotReady,
)
from apten_assets.warehouse.turns import transcript_items_sql

DEFAULT_LOCK_TIMEOUT_SECONDS = 30.0
CATALOG = "apten_warehouse"
MEMORY_LIMIT = "512MB"
# Rows per row group for data this process writes (DuckDB's default is 122,880). A `calls` row
# carries ~10 KB of raw JSON, so a default row group holds ~1 GB of it, and DuckDB rewrites a whole
# row group's column when a checkpoint meets any change in it: a late summary updating a few calls'
# `raw` rewrote up to 1 GB, and appending batch after batch made each checkpoint merge the small
# row groups of earlier batches again (1, 2, 4, 8 ... batches' worth: the write time per call grew
# with the table). At 2,048 rows a batch of calls fills its own row groups, merges stop there,
# and an update rewrites ~20 MB at most. Smaller tables lose a little compression (a few percent).
ROW_GROUP_SIZE = 2048
SYNC_STATE_TABLE = "_sync_state"


def _run(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | dict[str, Any] | None = None
) -> list[tuple]:
    """Execute and drain the result: DuckDB refuses other work while a result is unfinished."""
    return con.execute(sql, params).fetchall()


def _register(con: duckdb.DuckDBPyConnection, name: str, data: pa.Table) -> None:
    # A caller's half-read result (`con.execute(...).fetchone()`) would make register() refuse.
    con.complete()
    con.register(name, data)


def _is_busy(exc: duckdb.Error) -> bool:
    """Another process holds the file lock, or another DuckDB instance in this process has the file."""
    if isinstance(exc, duckdb.IOException):
        return "lock" in str(exc).lower()
    return isinstance(exc, duckdb.Error) and "already attached" in str(exc).lower()


class _AttachedReadOnly(duckdb.Error):
    """The file is attached read-only in this process and a writer asked for it."""


def _open(database: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    # All connections to one file in this process share one named in-memory instance (DuckDB
    # closes it, and releases the file lock, when the last connection closes) with the file
    # attached as CATALOG; a file named apten.duckdb would otherwise be catalog `apten`, and
    # `apten.leads` would be ambiguous between that catalog and the `apten` schema.
    instance = ":memory:apten_" + hashlib.sha1(database.encode()).hexdigest()[:16]
    con = duckdb.connect(instance)
    try:
        _attach(con, database, read_only)
        _run(con, "SET TimeZone = 'UTC'")
        # Spill next to the file, as a plain duckdb.connect(path) would, not into the working directory.
        _run(con, f"SET temp_directory = '{_sql_text(database)}.tmp'")
        # DuckDB's default (80% of RAM) lets its buffer pool grow with the file; bulk writes and
        # checks spill to temp_directory past this instead.
        _run(con, f"SET memory_limit = '{MEMORY_LIMIT}'")
    except BaseException:
        con.close()
        raise
    return con


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _attach(con: duckdb.DuckDBPyConnection, database: str, read_only: bool) -> None:
    """Attach the file as CATALOG (unless this instance has it already) and make it the default."""
    attached = "SELECT readonly FROM duckdb_databases() WHERE database_name = ?"
    if not _run(con, attached, [CATALOG]):
        mode = " (READ_ONLY)" if read_only else f" (ROW_GROUP_SIZE {ROW_GROUP_SIZE})"
        _run(con, f"ATTACH IF NOT EXISTS '{_sql_text(database)}' AS {CATALOG}{mode}")
    ((attached_read_only,),) = _run(con, attached, [CATALOG])
    if attached_read_only and not read_only:
        raise _AttachedReadOnly("the file is open read-only in this process; a writer must wait (lock)")
    _run(con, f"USE {CATALOG}")


def connect(
    path: str | Path,
    read_only: bool = False,
    *,
    timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file (creating its directory), waiting while another process holds it.

    DuckDB lets one process write a file at a time. Instead of failing at once, this retries with
    backoff for up to `timeout_seconds`, then raises `WarehouseBusy`. The file is the default
    catalog, named `apten_warehouse` whatever the file name, so `apten.<table>` always means the
    `apten` schema. Connections to one file in one process share a database instance (a cursor
    from `con.cursor()` must run `USE apten_warehouse` itself); `read_only` is honoured unless the
    file is already open for writing in this process. The session time zone is UTC.
    """
    database = str(path)
    if database == ":memory:":
        con = duckdb.connect(database)
        _run(con, "SET TimeZone = 'UTC'")
        return con
    file = Path(database).resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_seconds
    delay = 0.05
    while True:
        try:
            return _open(str(file), read_only)
        except duckdb.Error as exc:
            if not (_is_busy(exc) or isinstance(exc, _AttachedReadOnly)):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WarehouseBusy(
                    f"DuckDB file {file} is locked by another process or connection ({exc}); gave up "
                    f"after {timeout_seconds:g}s. Let the other run or `dagster dev` writer finish, "
                    "then retry."
                ) from exc
            time.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
            delay = min(delay * 2, 1.0)


# Connections inside a `transaction()` block. A failed nested BEGIN would abort DuckDB's open
# transaction, so nesting is tracked here instead of probed.
_open_transactions: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT (ROLLBACK on error). Inside an open transaction it joins it instead.

    Group several writes with this rather than a raw BEGIN: DuckDB aborts a transaction that sees
    a second BEGIN, so the warehouse functions must know whether one is open.
    """
    if con in _open_transactions:
        # The caller's transaction: the caller commits or rolls back.
        yield con
        return
    _run(con, "BEGIN TRANSACTION")
    _open_transactions.add(con)
    try:
        yield con
    except BaseException:
        _open_transactions.discard(con)
        _run(con, "ROLLBACK")
        raise
    _open_transactions.discard(con)
    _run(con, "COMMIT")


def _bare(temp_name: str) -> str:
    return temp_name.rsplit(".", 1)[-1]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _column_type_ddl(column: Column) -> str:
    # JSON columns hold whole documents (a call's `raw` is ~10 KB): ZSTD writes them several times
    # faster than the FSST DuckDB picks by itself, and smaller. DuckDB keeps the choice per column
    # in the table's DDL; tables created before it keep choosing for themselves.
    return f"{column.type} USING COMPRESSION ZSTD" if column.type == "JSON" else column.type


def _column_ddl(column: Column, primary_key: Sequence[str]) -> str:
    ddl = f"{_quote(column.name)} {_column_type_ddl(column)}"
    if column.name in primary_key:
        ddl += " NOT NULL"
    if column.allowed_values:
        allowed = ", ".join("'" + value.replace("'", "''") + "'" for value in column.allowed_values)
        ddl += f" CHECK ({_quote(column.name)} IN ({allowed}))"
    return ddl


def table_ref(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> str:
    """`"catalog".schema.name` for SQL on `con`.

    A file named `apten.duckdb` (the default path) is attached as catalog `apten`, which makes a
    bare `apten.leads` ambiguous between catalog and schema; naming the catalog avoids that.
    """
    (catalog,) = _run(con, "SELECT current_database()")[0]
    return f"{_quote(catalog)}.{_quote(schema)}.{_quote(name)}"


def spec_ref(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> str:
    """`table_ref` for a contract table."""
    return table_ref(con, spec.schema, spec.name)


def create_table_sql(spec: TableSpec, ref: str | None = None) -> str:
    """The CREATE TABLE IF NOT EXISTS statement for one spec (`ref` names the table in full).

    The primary key is not declared as a constraint: DuckDB maintains it as an ART index, which
    made rewriting millions of transcript turns several times slower. `upsert`, `replace_children`
    and `upsert_calls` are the only writers and keep keys unique; `duplicate_keys`
    checks it (the blocking asset checks use it).
    """
    columns = ",\n  ".join(_column_ddl(column, spec.primary_key) for column in spec.columns)
    return f"CREATE TABLE IF NOT EXISTS {ref or spec.qualified_name} (\n  {columns}\n)"


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create schema `apten`, every contract table and `apten._sync_state` if missing; idempotent.

    Columns added to a spec after a table was created are added to the table (as nullable columns).
    Every write connection calls it, so a schema already complete is recognised in one query.
    """
    if _schema_is_complete(con):
        return
    with transaction(con):
        (catalog,) = _run(con, "SELECT current_database()")[0]
        _run(con, f"CREATE SCHEMA IF NOT EXISTS {_quote(catalog)}.{SCHEMA}")
        for spec in STORED_TABLES:
            ref = spec_ref(con, spec)
            _run(con, create_table_sql(spec, ref))
            existing = {
                name
                for (name,) in con.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_catalog = ? AND table_schema = ? AND table_name = ?",
                    [catalog, spec.schema, spec.name],
                ).fetchall()
            }
            for column in spec.columns:
                if column.name not in existing:
                    _run(
                        con,
                        f"ALTER TABLE {ref} ADD COLUMN {_quote(column.name)} {_column_type_ddl(column)}",
                    )
        _run(
            con,
            f"CREATE TABLE IF NOT EXISTS {table_ref(con, SCHEMA, SYNC_STATE_TABLE)} "
            "(name VARCHAR PRIMARY KEY, value VARCHAR, updated_at TIMESTAMPTZ)",
        )


def _schema_is_complete(con: duckdb.DuckDBPyConnection) -> bool:
    expected = {spec.name: set(spec.column_names) for spec in STORED_TABLES}
    expected[SYNC_STATE_TABLE] = {"name", "value", "updated_at"}
    found: dict[str, set[str]] = {}
    for table, column in _run(
        con,
        "SELECT table_name, column_name FROM duckdb_columns() "
        "WHERE database_name = current_database() AND schema_name = ?",
        [SCHEMA],
    ):
        found.setdefault(table, set()).add(column)
    return all(columns <= found.get(table, set()) for table, columns in expected.items())


def get_sync_state(con: duckdb.DuckDBPyConnection, name: str) -> str | None:
    """The stored value of cursor `name` (e.g. the leads updatedAt watermark), or None."""
    rows = _run(con, f"SELECT value FROM {table_ref(con, SCHEMA, SYNC_STATE_TABLE)} WHERE name = ?", [name])
    return rows[0][0] if rows else None


def set_sync_state(
    con: duckdb.DuckDBPyConnection, name: str, value: str, *, now: datetime | None = None
) -> None:
    """Store cursor `name`; joins the caller's transaction when there is one."""
    with transaction(con):
        _run(
            con,
            f"INSERT INTO {table_ref(con, SCHEMA, SYNC_STATE_TABLE)} (name, value, updated_at) "
            "VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [name, value, now or datetime.now(UTC)],
        )


# Rows per Arrow record batch handed to DuckDB: it scans a registered Arrow table one record batch
# per task, so a batch of thousands of calls in one record batch (or one temp table) is cast,
# parsed and read on one thread while the other cores idle.
ARROW_CHUNK_ROWS = 256


def _chunked(data: pa.Table) -> pa.Table:
    return pa.Table.from_batches(data.to_batches(max_chunksize=ARROW_CHUNK_ROWS), schema=data.schema)


class _Staging:
    """A temp table holding one batch, deduplicated on the primary key (the last row wins)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, spec: TableSpec, rows: Rows) -> None:
        self.con = con
        self.spec = spec
        suffix = uuid.uuid4().hex[:12]
        self.table = f"temp.main.__stage_{spec.name}_{suffix}"
        self._view = f"__arrow_{spec.name}_{suffix}"
        self._temps: list[str] = [self.table]
        self.duplicates = 0
        try:
            self._load(rows)
        except BaseException:
            self.drop()
            raise
        self.rows = self.rows_in - self.duplicates

    def _load(self, rows: Rows) -> None:
        con, spec = self.con, self.spec
        data = to_arrow(spec, rows)
        self.rows_in = data.num_rows
        # The rows as given, in order (`__ord` is the row's position); the upsert's merged rows
        # join back to them through `__ord` in the staging table.
        self.data = data = data.append_column("__ord", pa.array(np.arange(data.num_rows, dtype=np.int64)))
        casts = ", ".join(
            f"CAST({_quote(column.name)} AS {column.type}) AS {_quote(column.name)}"
            for column in spec.data_columns
        )
        _register(con, self._view, _chunked(data))
        try:
            _run(con, f"CREATE TEMP TABLE {_bare(self.table)} AS SELECT {casts}, __ord FROM {self._view}")
        finally:
            con.unregister(self._view)
        key = ", ".join(_quote(name) for name in spec.primary_key)
        null_key = " OR ".join(f"{_quote(name)} IS NULL" for name in spec.primary_key)
        (null_keys,) = con.execute(f"SELECT count(*) FROM {self.table} WHERE {null_key}").fetchall()[0]
        if null_keys:
            raise ValueError(f"{null_keys} rows for {spec.qualified_name} have a NULL primary key ({key})")
        (distinct,) = con.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT {key} FROM {self.table})"
        ).fetchall()[0]
        self.duplicates = self.rows_in - distinct
        if self.duplicates:
            deduped = self.temp_name("dedup")
            _run(
                con,
                f"CREATE TEMP TABLE {_bare(deduped)} AS SELECT * FROM {self.table} "
                f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY __ord DESC) = 1",
            )
            _run(con, f"DROP TABLE {self.table}")
            self._temps.remove(self.table)
            self.table = deduped

    def temp_name(self, label: str) -> str:
        name = f"temp.main.__{label}_{self.spec.name}_{uuid.uuid4().hex[:12]}"
        self._temps.append(name)
        return name

    def drop(self) -> None:
        names, self._temps = self._temps, []
        for name in names:
            _drop_temp(self.con, name)


def _merged(column: Column, merge: Merge, old: str | None = None) -> str:
    """The merged value of `column`: new `s.<column>` with stored `t.<column>` (or `old`)."""
    new, old = f"s.{_quote(column.name)}", old or f"t.{_quote(column.name)}"
    if merge is Merge.COALESCE:
        return f"COALESCE({new}, {old})"
    if merge is Merge.KEEP_FIRST:
        return f"COALESCE({old}, {new})"
    if merge is Merge.ADD:
        return f"COALESCE({old}, 0) + COALESCE({new}, 0)"
    return new


# Called inside an upsert's transaction, after its writes, with the merged rows (a relation with
# every data column, `__new` and `__changed`) and the staging (the rows as given: `data`, and
# deduplicated with their `__ord` in `table`).
_AfterUpsert = Callable[[str, "_Staging"], None]


def upsert(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    rows: Rows,
    *,
    keep_existing_when_null: Iterable[str] = (),
    now: datetime | None = None,
) -> UpsertCounts:
    """Insert new rows and update changed ones by primary key, in one transaction.

    `rows` are dicts (JSON columns as Python values), an Arrow table or a DataFrame (JSON columns
    as text). Rows sharing a key are deduplicated, the last one winning. An existing row counts as
    updated, and gets `_loaded_at = now`, only when a non-key, non-bookkeeping value differs after
    merging; otherwise it keeps its `_loaded_at`. Late-arriving columns (the spec's, plus
    `keep_existing_when_null`) keep the stored value when the new one is NULL.
    """
    return _upsert(con, spec, rows, keep_existing_when_null, now or datetime.now(UTC), None)


def _upsert(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    rows: Rows,
    keep_existing_when_null: Iterable[str],
    now: datetime,
    after: _AfterUpsert | None,
) -> UpsertCounts:
    late = set(keep_existing_when_null)
    unknown = late - set(spec.column_names)
    if unknown:
        raise ValueError(f"{spec.qualified_name} has no columns {sorted(unknown)}")
    stage = _Staging(con, spec, rows)
    try:
        if stage.rows == 0:
            return UpsertCounts(duplicates=stage.duplicates)
        key = spec.primary_key
        join = " AND ".join(f"t.{_quote(name)} = s.{_quote(name)}" for name in key)
        merged: list[str] = []
        merged_new: list[str] = []
        content_diff: list[str] = []
        bookkeeping_diff: list[str] = []
        for column in spec.data_columns:
            name = _quote(column.name)
            if column.name in key:
                merged.append(f"s.{name} AS {name}")
                merged_new.append(f"s.{name} AS {name}")
                continue
            merge = Merge.COALESCE if column.name in late and column.merge is Merge.REPLACE else column.merge
            expr = _merged(column, merge)
            merged.append(f"{expr} AS {name}")
            merged_new.append(f"{_merged(column, merge, old='NULL')} AS {name}")
            (bookkeeping_diff if column.bookkeeping else content_diff).append(
                f"({expr}) IS DISTINCT FROM t.{name}"
            )
        exists = f"t.{_quote(key[0])} IS NOT NULL"
        changed = " OR ".join(content_diff) or "false"
        bookkeeping_changed = " OR ".join(bookkeeping_diff) or "false"
        non_key = [c.name for c in spec.data_columns if c.name not in key]
        assignments = ", ".join(f"{_quote(name)} = u.{_quote(name)}" for name in non_key)
        match = " AND ".join(f"t.{_quote(name)} = u.{_quote(name)}" for name in key)
        target = spec_ref(con, spec)
        column_list = ", ".join(_quote(c.name) for c in spec.data_columns)
        with transaction(con):
            # Which keys are stored already reads only the target's key columns. A batch of new
            # rows only (every first load) is then inserted as it is: no join with the stored
            # rows, no copy of the batch into a merge table.
            semi_join = f"{target} AS t SEMI JOIN {stage.table} AS s ON {join}"
            ((stored,),) = _run(con, f"SELECT count(*) FROM {semi_join}")
            if not stored:
                flags = "true AS __new, false AS __changed"
                classified = f"(SELECT {', '.join(merged_new)}, {flags} FROM {stage.table} AS s)"
                inserted, updated = stage.rows, 0
                _run(
                    con,
                    f"INSERT INTO {target} ({column_list}, {LOADED_AT}) "
                    f"SELECT {column_list}, ?::TIMESTAMPTZ FROM {classified}",
                    [now],
                )
            else:
                classified = stage.temp_name("merge")
                _run(
                    con,
                    f"CREATE TEMP TABLE {_bare(classified)} AS SELECT {', '.join(merged)}, "
                    f"NOT ({exists}) AS __new, ({exists} AND ({changed})) AS __changed, "
                    f"({exists} AND ({bookkeeping_changed})) AS __bookkeeping_changed "
                    f"FROM {stage.table} AS s LEFT JOIN {target} AS t ON {join}",
                )
                ((inserted, updated),) = _run(
                    con,
                    "SELECT count(*) FILTER (WHERE __new), count(*) FILTER (WHERE __changed) "
                    f"FROM {classified}",
                )
                update = (
                    f"WHEN MATCHED AND (u.__changed OR u.__bookkeeping_changed) THEN UPDATE SET "
                    f"{assignments}, {LOADED_AT} = CASE WHEN u.__changed THEN $now ELSE t.{LOADED_AT} END "
                    if assignments
                    else ""
                )
                values = ", ".join(f"u.{_quote(c.name)}" for c in spec.data_columns)
                _run(
                    con,
                    f"MERGE INTO {target} AS t USING (SELECT * FROM {classified} "
                    "WHERE __new OR __changed OR __bookkeeping_changed) AS u "
                    f"ON {match} {update}"
                    f"WHEN NOT MATCHED THEN INSERT ({column_list}, {LOADED_AT}) VALUES ({values}, $now)",
                    {"now": now},
                )
            if after is not None:
                after(classified, stage)
        return UpsertCounts(
            inserted=inserted,
            updated=updated,
            unchanged=stage.rows - inserted - updated,
            duplicates=stage.duplicates,
        )
    finally:
        stage.drop()


def replace_children(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    parent_key: str,
    parent_ids: Iterable[str],
    rows: Rows,
    *,
    now: datetime | None = None,
) -> ReplaceCounts:
    """Make the child rows of each parent in `parent_ids` exactly `rows`, in one transaction.

    A parent whose stored children already equal its new ones (every column but `_loaded_at`) is
    left alone, so its rows keep `_loaded_at`; any other parent has all its rows deleted and the
    new ones inserted. A parent listed with no rows ends with none. Every row's parent must be listed.
    """
    now = now or datetime.now(UTC)
    if parent_key not in spec.column_names:
        raise ValueError(f"{spec.qualified_name} has no column {parent_key!r}")
    parents = pa.table({"parent_id": pa.array(sorted(set(parent_ids)), type=pa.string())})
    if parents.num_rows == 0:
        return ReplaceCounts()
    stage = _Staging(con, spec, rows)
    parent = _quote(parent_key)
    try:
        parents_view = f"__parents_{uuid.uuid4().hex[:12]}"
        parents_table = stage.temp_name("parents")
        _register(con, parents_view, parents)
        try:
            _run(con, f"CREATE TEMP TABLE {_bare(parents_table)} AS SELECT parent_id FROM {parents_view}")
        finally:
            con.unregister(parents_view)
        listed = f"(SELECT parent_id FROM {parents_table})"
        orphan_sql = f"SELECT count(*) FROM {stage.table} WHERE {parent} NOT IN {listed}"
        (orphans,) = con.execute(orphan_sql).fetchall()[0]
        if orphans:
            raise ValueError(f"{orphans} rows for {spec.qualified_name} belong to parents not in parent_ids")
        columns = ", ".join(_quote(c.name) for c in spec.data_columns)
        target = spec_ref(con, spec)
        stored = f"SELECT {columns} FROM {target} WHERE {parent} IN {listed}"
        staged = f"SELECT {columns} FROM {stage.table}"
        changed = stage.temp_name("changed")
        with transaction(con):
            _run(
                con,
                f"CREATE TEMP TABLE {_bare(changed)} AS SELECT DISTINCT {parent} AS parent_id FROM "
                f"(({staged} EXCEPT {stored}) UNION ALL ({stored} EXCEPT {staged}))",
            )
            (replaced,) = con.execute(f"SELECT count(*) FROM {changed}").fetchall()[0]
            deleted = inserted = 0
            if replaced:
                (deleted,) = con.execute(
                    f"DELETE FROM {target} WHERE {parent} IN (SELECT parent_id FROM {changed})"
                ).fetchall()[0]
                (inserted,) = con.execute(
                    f"INSERT INTO {target} ({columns}, {LOADED_AT}) "
                    f"SELECT {columns}, ?::TIMESTAMPTZ FROM {stage.table} "
                    f"WHERE {parent} IN (SELECT parent_id FROM {changed})",
                    [now],
                ).fetchall()[0]
        return ReplaceCounts(
            parents=parents.num_rows,
            parents_replaced=replaced,
            parents_unchanged=parents.num_rows - replaced,
            deleted=deleted,
            inserted=inserted,
            duplicates=stage.duplicates,
        )
    finally:
        stage.drop()


def upsert_calls(
    con: duckdb.DuckDBPyConnection, rows: Rows, *, now: datetime | None = None
) -> tuple[UpsertCounts, ReplaceCounts]:
    """`upsert(CALLS, rows)` and, in the same transaction, the transcript turns of those calls.

    Only a call whose row this write inserted or changed, and whose row here carries `raw` (a 404
    does not), can have a new transcript; its turns are read out of that raw JSON inside DuckDB,
    so millions of turns never become Python objects. A call new to the table has no stored turns:
    its turns are inserted without comparing or deleting. A call stored before whose turns come
    out identical keeps its rows and `_loaded_at`; any other has all its turns replaced. A call
    whose transcript is empty or absent ("not stored yet") keeps the turns already stored.
    """
    now = now or datetime.now(UTC)
    turns = ReplaceCounts()

    def write_turns(merged: str, stage: _Staging) -> None:
        nonlocal turns
        turns = _replace_turns_of_upserted_calls(con, merged, stage, now)

    return _upsert(con, CALLS, rows, (), now, write_turns), turns


def _replace_turns_of_upserted_calls(
    con: duckdb.DuckDBPyConnection, merged: str, stage: _Staging, written_at: datetime
) -> ReplaceCounts:
    candidates = _run(
        con,
        f"SELECT s.__ord, m.__new FROM {stage.table} AS s JOIN {merged} AS m ON m.call_id = s.call_id "
        "WHERE (m.__new OR m.__changed) AND s.raw IS NOT NULL ORDER BY s.__ord",
    )
    if not candidates:
        return ReplaceCounts()
    positions, first_writes = zip(*candidates, strict=True)
    calls = stage.data.select(["call_id", "raw"]).take(pa.array(positions, type=pa.int64()))
    calls = calls.append_column("first_write", pa.array(first_writes, type=pa.bool_()))
    turns = spec_ref(con, CALL_TRANSCRIPT_TURNS)
    tag = uuid.uuid4().hex[:12]
    view, items, revised = (f"__turns_{name}_{tag}" for name in ("calls", "items", "revised"))
    columns = ", ".join(_quote(c.name) for c in CALL_TRANSCRIPT_TURNS.data_columns)
    try:
        _register(con, view, _chunked(calls))
        try:
            _run(
                con,
                f"CREATE TEMP TABLE {items} AS {transcript_items_sql(view)}",
            )
        finally:
            con.unregister(view)
        ((parents, stored_before),) = _run(
            con,
            "SELECT count(DISTINCT call_id), count(DISTINCT call_id) FILTER (WHERE NOT first_write) "
            f"FROM {items}",
        )
        deleted = changed = inserted = 0
        to_write = "first_write"
        if stored_before:
            # Only calls stored before this write can have turns to compare with and delete.
            staged_turns = f"SELECT {columns} FROM {items} WHERE is_object AND NOT first_write"
            before = f"call_id IN (SELECT call_id FROM {items} WHERE NOT first_write)"
            stored_turns = f"SELECT {columns} FROM {turns} WHERE {before}"
            _run(
                con,
                f"CREATE TEMP TABLE {revised} AS SELECT DISTINCT call_id FROM "
                f"(({staged_turns} EXCEPT {stored_turns}) UNION ALL ({stored_turns} EXCEPT {staged_turns}))",
            )
            ((changed,),) = _run(con, f"SELECT count(*) FROM {revised}")
            if changed:
                ((deleted,),) = _run(
                    con, f"DELETE FROM {turns} WHERE call_id IN (SELECT call_id FROM {revised})"
                )
                to_write = f"(first_write OR call_id IN (SELECT call_id FROM {revised}))"
        replaced = parents - stored_before + changed
        if replaced:
            ((inserted,),) = _run(
                con,
                f"INSERT INTO {turns} ({columns}, {LOADED_AT}) "
                f"SELECT {columns}, ?::TIMESTAMPTZ FROM {items} WHERE is_object AND {to_write}",
                [written_at],
            )
    finally:
        for table in (items, revised):
            _drop_temp(con, table)
    return ReplaceCounts(
        parents=parents,
        parents_replaced=replaced,
        parents_unchanged=parents - replaced,
        deleted=deleted,
        inserted=inserted,
    )


def _drop_temp(con: duckdb.DuckDBPyConnection, table: str) -> None:
    # When the caller's transaction failed, its ROLLBACK discards the table, and the original
    # error must surface rather than this one.
    with contextlib.suppress(duckdb.TransactionException):
        _run(con, f"DROP TABLE IF EXISTS {table}")


def overwrite_columns(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    columns: Sequence[str],
    rows: Sequence[tuple],
    *,
    now: datetime | None = None,
) -> int:
    """Set `columns` of existing rows to exactly the given values (NULL included, no merge rule),
    by primary key; `rows` are `(primary key..., columns...)` tuples, JSON values as Python values
    (serialised as `upsert` does). Returns how many rows were written; they get `_loaded_at = now`."""
    if not rows:
        return 0
    names = [*spec.primary_key, *columns]
    data = to_arrow(spec, [dict(zip(names, row, strict=True)) for row in rows]).select(names)
    view = f"__overwrite_{uuid.uuid4().hex[:12]}"
    match = " AND ".join(f"t.{_quote(name)} = u.{_quote(name)}" for name in spec.primary_key)
    casts = {name: "::JSON" if spec.column(name).type == "JSON" else "" for name in columns}
    assignments = ", ".join(f"{_quote(name)} = u.{_quote(name)}{casts[name]}" for name in columns)
    _register(con, view, data)
    try:
        with transaction(con):
            ((written,),) = _run(
                con,
                f"UPDATE {spec_ref(con, spec)} AS t SET {assignments}, {LOADED_AT} = ?::TIMESTAMPTZ "
                f"FROM {view} AS u WHERE {match}",
                [now or datetime.now(UTC)],
            )
    finally:
        con.unregister(view)
    return written


def delete_sync_state(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Forget cursor `name` (the next sync starts from the beginning)."""
    _run(con, f"DELETE FROM {table_ref(con, SCHEMA, SYNC_STATE_TABLE)} WHERE name = ?", [name])


def rewrite_file(con: duckdb.DuckDBPyConnection) -> Path | None:
    """Copy the attached file into a fresh one (`COPY FROM DATABASE`, DuckDB's documented way to
    compact a file) and move it over the old one; returns the path, None for an in-memory database.

    Deleted rows stay readable in the freed blocks of a DuckDB file (a CHECKPOINT or VACUUM does not
    clear them) until DuckDB reuses the blocks; a copy holds only live rows. The copy is made under
    this session's file lock and moved into place before the lock is let go, so no other process
    writes to the old file in between; one waiting for the lock then opens the new file. The caller
    detaches the old file next (see `DuckDBStore.discard_deleted_data`).
    """
    if con in _open_transactions:
        raise RuntimeError("rewrite_file cannot run inside a transaction")
    ((location,),) = _run(con, "SELECT path FROM duckdb_databases() WHERE database_name = ?", [CATALOG])
    if not location:
        return None
    path = Path(location)
    _run(con, f"CHECKPOINT {CATALOG}")
    if Path(f"{path}.wal").exists():
        raise RuntimeError(f"{path}.wal is still there after a checkpoint; the file was not rewritten")
    fresh = path.with_name(f"{path.name}.rewrite-{uuid.uuid4().hex[:12]}")
    copy = f"{CATALOG}_rewrite"
    try:
        _run(con, f"ATTACH '{_sql_text(str(fresh))}' AS {copy} (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        try:
            _run(con, f"COPY FROM DATABASE {CATALOG} TO {copy}")
        finally:
            _run(con, f"DETACH {copy}")
        with fresh.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(fresh, path)
    except BaseException:
        for leftover in (fresh, Path(f"{fresh}.wal")):
            leftover.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


# What DuckDB raises for a value it cannot take (a CHECK, a cast, JSON it cannot parse, a number
# out of range); anything else (the lock, I/O) is not the rows' fault.
_BAD_VALUE_ERRORS = (
    duckdb.ConstraintException,
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.OutOfRangeException,
)


@contextmanager
def _refusing_bad_values() -> Iterator[None]:
    """A value DuckDB refuses is the caller's bad row (ValueError), as on every backend."""
    try:
        yield
    except _BAD_VALUE_ERRORS as exc:
        raise ValueError(f"a value the warehouse cannot store: {type(exc).__name__}: {exc}") from exc


class DuckDBStore(SqlStore):
    """A session on one DuckDB file (see `connect` for the locking and catalog rules)."""

    backend = "duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._catalog: str | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        read_only: bool = False,
        timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    ) -> DuckDBStore:
        """A session on the file at `path`; a read-only one on a file not created yet raises
        `WarehouseNotReady` (a read-only open cannot create it)."""
        if read_only and str(path) != ":memory:" and not Path(path).exists():
            raise WarehouseNotReady(f"the DuckDB file {path} does not exist yet; nothing is stored")
        return cls(connect(path, read_only, timeout_seconds=timeout_seconds))

    def close(self) -> None:
        self.con.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with transaction(self.con):
            yield

    # ---------------------------------------------------------------- SqlStore hooks

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        try:
            return _run(self.con, sql, list(params))
        except duckdb.CatalogException as exc:
            raise WarehouseNotReady(f"the warehouse has no apten tables yet ({exc})") from exc

    def _ref(self, spec: TableSpec) -> str:
        if self._catalog is None:
            ((self._catalog,),) = _run(self.con, "SELECT current_database()")
        return f"{_quote(self._catalog)}.{_quote(spec.schema)}.{_quote(spec.name)}"

    def _in_list(self, expr: str) -> str:
        # A hash semi-join on the unnested list: `= ANY(list)` compares every row with every id.
        return f"{expr} IN (SELECT unnest(?))"

    def _seconds(self, expr: str) -> str:
        return f"to_microseconds(CAST(round({expr} * 1e6) AS BIGINT))"

    def _json_string(self, column: str, key: str) -> str:
        return f"({column} ->> '$.{key}')"

    def _json_text(self, column: str, key: str) -> str:
        return f"CAST({column} -> '$.{key}' AS VARCHAR)"

    # ---------------------------------------------------------------- Store

    def ensure_schema(self) -> None:
        ensure_schema(self.con)

    def column_types(self) -> dict[str, dict[str, str]]:
        types: dict[str, dict[str, str]] = {}
        for table, column, data_type in _run(
            self.con,
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = ?",
            [SCHEMA],
        ):
            types.setdefault(table, {})[column] = data_type
        return types

    def upsert(
        self,
        spec: TableSpec,
        rows: Rows,
        *,
        keep_existing_when_null: Iterable[str] = (),
        now: datetime | None = None,
    ) -> UpsertCounts:
        with _refusing_bad_values():
            return upsert(self.con, spec, rows, keep_existing_when_null=keep_existing_when_null, now=now)

    def upsert_calls(self, rows: Rows, *, now: datetime | None = None) -> tuple[UpsertCounts, ReplaceCounts]:
        with _refusing_bad_values():
            return upsert_calls(self.con, rows, now=now)

    def replace_children(
        self,
        spec: TableSpec,
        parent_key: str,
        parent_ids: Iterable[str],
        rows: Rows,
        *,
        now: datetime | None = None,
    ) -> ReplaceCounts:
        with _refusing_bad_values():
            return replace_children(self.con, spec, parent_key, parent_ids, rows, now=now)

    def get_sync_state(self, name: str) -> str | None:
        return get_sync_state(self.con, name)

    def set_sync_state(self, name: str, value: str, *, now: datetime | None = None) -> None:
        set_sync_state(self.con, name, value, now=now)

    def delete_sync_state(self, name: str) -> None:
        delete_sync_state(self.con, name)

    def overwrite_columns(
        self,
        spec: TableSpec,
        columns: Sequence[str],
        rows: Sequence[tuple],
        *,
        now: datetime | None = None,
    ) -> int:
        with _refusing_bad_values():
            return overwrite_columns(self.con, spec, columns, rows, now=now)

    def discard_deleted_data(self) -> None:
        path = rewrite_file(self.con)
        if path is None:
            return
        # This instance still has the old, now unlinked, file attached: let it go, and take the new
        # one under the same name (waiting for its lock like any other session would).
        _run(self.con, "USE memory")
        _run(self.con, f"DETACH {CATALOG}")
        self._catalog = None
        self.con.close()
        self.con = connect(path)
