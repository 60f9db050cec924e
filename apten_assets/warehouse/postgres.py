"""The PostgreSQL backend: one ADBC connection, DDL, Arrow staging, MERGE upserts, turns bulk-loaded.

Tables live in schema `apten` with the contract's names; JSON columns are `jsonb`, timestamps
`timestamptz`. Unlike DuckDB, the primary keys are real constraints: the keys index the joins
every upsert makes, and they stop a stray writer from adding a duplicate. The turns are the
exception (`_HASHED_BY`): a hash index on `call_id` finds a call's turns, and their writers keep
(call_id, turn_index) unique, as on DuckDB.

Writes stage rows through Arrow (`adbc_ingest` into a temp table: binary COPY), then change the
target tables inside one transaction; rows known to be new (a first load's calls and their
turns) go straight into their table by binary COPY. Several processes may write at once; each
write first takes a transaction-scoped advisory lock on its table (calls and their turns share
one), so two writers of one table queue for the few seconds of a batch instead of racing on the
same keys, while writers of different tables, and every reader, go on. Merged values are
therefore computed against rows nobody else is changing, and the counts are exact.

PostgreSQL's `text` and `jsonb` cannot hold U+0000. Records from Apten reach the store with it
already replaced (`models.repair_text`, counted per run, the same on every backend); for any other
row the store replaces it with U+FFFD too, in every string and in strings (and keys) inside JSON,
before staging, and logs a warning with the count per table: a NUL is never a control character
Apten means, and refusing the row would lose the rest of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import adbc_driver_manager
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from adbc_driver_postgresql import dbapi

from apten_assets.lib.models import repair_text
from apten_assets.lib.tables import (
    CALL_TRANSCRIPT_TURNS,
    CALLS,
    LEAD_DATA,
    LOADED_AT,
    SCHEMA,
    STORED_TABLES,
    Column,
    Merge,
    TableSpec,
)
from apten_assets.warehouse.arrow import ARROW_TYPES, to_arrow
from apten_assets.warehouse.sql import SqlStore, quote
from apten_assets.warehouse.store import (
    ColumnPage,
    ReplaceCounts,
    Rows,
    UpsertCounts,
    WarehouseBusy,
    WarehouseNotReady,
)
from apten_assets.warehouse.turns import transcript_items
from apten_assets.warehouse.url import WarehouseURL

log = logging.getLogger(__name__)

SYNC_STATE_TABLE = "_sync_state"
_PG_TYPES = {
    "VARCHAR": "text",
    "JSON": "jsonb",
    "TIMESTAMPTZ": "timestamptz",
    "BOOLEAN": "boolean",
    "INTEGER": "integer",
    "BIGINT": "bigint",
    "DOUBLE": "double precision",
}
# SQLSTATE classes and codes that mean "this row's value cannot be stored": the caller's bad row.
# Class 54 is a value past one of PostgreSQL's own limits (a key too long to index, a row or
# jsonb too large, nesting too deep to parse) where DuckDB may take it: a bad row too, so the
# batch is halved down to it rather than the whole step failing on every run.
_BAD_VALUE_STATES = ("22", "23514", "23502", "54")
_NOT_READY_STATES = ("42P01", "3F000")
# The Arrow types staged (`ARROW_TYPES`, plus `__ord`) as PostgreSQL columns.
_ARROW_PG_TYPES = {
    pa.string(): "text",
    pa.bool_(): "boolean",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.float64(): "double precision",
    pa.timestamp("us", tz="UTC"): "timestamptz",
}
# Children written with an upsert (a call's turns): called with the rows the upsert inserts or
# changes ((key, whether it is new)), the staged Arrow and the temp list before the rows are
# written; returns what writes the children after them, in the same transaction.
_Children = Callable[[list[tuple[str, bool]], pa.Table, list[str]], Callable[[], None]]
# Temp relations (`_temp`) whose names start so are views.
_VIEW_PREFIX = "__view_"
# Tables keyed by their writers, not by a constraint: their rows are found through a hash index on
# the one column named here. A call's turns are written and replaced as a whole, under the calls'
# lock, and looked up by `call_id` only; the primary key's btree on (call_id, turn_index) was most
# of the cost of loading them (bench/notes.md, "The turns' index"), as DuckDB's ART index was.
# The blocking `unique_primary_key` check verifies the key, as it does on DuckDB.
_HASHED_BY = {CALL_TRANSCRIPT_TURNS.name: "call_id"}
# Rows per 8 KB block to size `read_column_page`'s pages by before the table is analyzed: about a
# turn's (~170 bytes with its header).
_ROWS_PER_BLOCK = 45
_QMARK = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?")
_NUL = "\x00"
_JSONB_VERSION = pa.scalar(b"\x01", type=pa.binary())
_JSON_NUL = "\\u0000"


def _numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...` (quoted strings and names left alone)."""
    counter = iter(range(1, 10_000))
    return _QMARK.sub(lambda m: f"${next(counter)}" if m.group(0) == "?" else m.group(0), sql)


def _sqlstate(exc: BaseException) -> str:
    return getattr(exc, "sqlstate", None) or ""


def _raise_translated(exc: adbc_driver_manager.Error) -> NoReturn:
    """A failed statement as the store's errors: no tables yet, or the caller's bad value (which
    the caller isolates); anything else as it is."""
    state = _sqlstate(exc)
    if state in _NOT_READY_STATES:
        raise WarehouseNotReady(f"the warehouse has no apten tables yet ({exc})") from exc
    if state.startswith(_BAD_VALUE_STATES):
        raise ValueError(f"a value cannot be stored: {exc}") from exc
    raise exc


def _table_lock_id(spec: TableSpec) -> int:
    # Turns are written only together with their calls (or by replace_children, which takes the
    # calls lock too), so one lock guards both tables.
    name = CALLS.name if spec.name == CALL_TRANSCRIPT_TURNS.name else spec.name
    return zlib.crc32(f"apten.{spec.schema}.{name}".encode())


def _without_nul(spec: TableSpec, data: pa.Table) -> tuple[pa.Table, int]:
    """`data` with U+0000 replaced by U+FFFD in strings and JSON text (`models.repair_text`: keys
    that become equal are all kept); how many values changed."""
    removed = 0
    for index, column in enumerate(spec.data_columns):
        if column.type not in ("VARCHAR", "JSON"):
            continue
        values = data.column(index)
        needle = _JSON_NUL if column.type == "JSON" else _NUL
        hits = pc.match_substring(values, needle)
        if not pc.any(hits).as_py():
            continue
        if column.type == "VARCHAR":
            removed += pc.sum(hits).as_py()
            data = data.set_column(index, column.name, pc.replace_substring(values, _NUL, "\ufffd"))
            continue
        # `\u0000` in JSON text may also be an escaped backslash before "u0000": parse to know.
        cleaned = []
        for text, hit in zip(values.to_pylist(), hits.to_pylist(), strict=True):
            if hit:
                value, changed = repair_text(json.loads(text))
                if changed:
                    removed += 1
                    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            cleaned.append(text)
        data = data.set_column(index, column.name, pa.array(cleaned, type=pa.string()))
    return data, removed


def _keys_unique(data: pa.Table, key: Sequence[str]) -> bool:
    """Whether no two rows of `data` share a primary key (NULL keys are refused before this)."""
    if data.num_rows < 2:
        return True
    if len(key) == 1:
        return pc.count_distinct(data.column(key[0])).as_py() == data.num_rows
    return data.group_by(list(key)).aggregate([]).num_rows == data.num_rows


def _calls_to_read(data: pa.Table, candidates: Sequence[tuple[str, bool]]) -> pa.Table:
    """The `calls` of `turns.transcript_items` for a staged batch (`data`, with `__ord`): the row
    that wins for each `call_id` (the last) among `candidates` (call id, whether it is new), when
    it has `raw` (a 404 has none, and keeps its stored turns)."""
    if not _keys_unique(data, ("call_id",)):
        # `__ord` is the row's position in `data`.
        data = data.take(data.group_by("call_id").aggregate([("__ord", "max")]).column("__ord_max"))
    written = pa.array([call_id for call_id, _ in candidates], type=pa.string())
    new = pa.array([call_id for call_id, first in candidates if first], type=pa.string())
    ids = data.column("call_id")
    keep = pc.and_(pc.is_in(ids, value_set=written), pc.is_valid(data.column("raw")))
    calls = data.select(["call_id", "raw"]).append_column("first_write", pc.is_in(ids, value_set=new))
    return calls.filter(keep)


def _staging_data(spec: TableSpec, rows: Rows) -> pa.Table:
    """Rows as the Arrow a write stages: typed, U+0000 replaced (`_without_nul`), and numbered
    (`__ord`, the row's position, by which the last of duplicate keys wins). No session needed:
    a pipelined write prepares its next piece with this in another thread."""
    data = to_arrow(spec, rows)
    try:
        data = data.cast(pa.schema([pa.field(c.name, ARROW_TYPES[c.type]) for c in spec.data_columns]))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{spec.qualified_name}: a value does not fit its column: {exc}") from exc
    data, removed = _without_nul(spec, data)
    if removed:
        log.warning(
            "%s: replaced U+0000 with U+FFFD in %d values (PostgreSQL text and jsonb cannot hold it)",
            spec.qualified_name,
            removed,
        )
    return data.append_column("__ord", pa.array(np.arange(data.num_rows, dtype=np.int64)))


# Calls per piece of `upsert_calls`' pipeline. Nothing overlaps the preparation of the first
# piece, so the pieces start small and double up to `PIECE_CALLS`, which keeps each piece's
# statements cheap beside its rows (measured: 500 to 2,000 calls per piece write alike; a first
# piece of 100 against 250, 100,000 calls: 31.9 / 34.2 s against 33.1 / 37.3 s). Two pieces are
# prepared ahead, in two threads.
FIRST_PIECE_CALLS = 100
PIECE_CALLS = 1000
PIECES_AHEAD = 2


@dataclass(frozen=True)
class _PreparedCalls:
    """A piece of `upsert_calls`, ready to write: its staging data, the transcript items
    (`turns.transcript_items`) of the calls in `derived` (the ones not stored before), and whether
    none of its calls is stored (known: the session looked)."""

    data: pa.Table
    items: pa.Table | None
    derived: pa.Array
    none_stored: bool = False


def _call_pieces(rows: Rows) -> list[list[dict[str, Any]]] | None:
    """`rows` in pieces (`FIRST_PIECE_CALLS`, doubling up to `PIECE_CALLS`), or None where pieces
    would not add up to one upsert: rows not given as a list of dicts, none, or a key missing or
    repeated (the last row of a key must win)."""
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        return None
    ids = [row.get("call_id") for row in rows]
    if not all(isinstance(call_id, str) for call_id in ids) or len(set(ids)) != len(ids):
        return None
    pieces, start, size = [], 0, FIRST_PIECE_CALLS
    while start < len(rows):
        pieces.append(rows[start : start + size])
        start, size = start + size, min(size * 2, PIECE_CALLS)
    return pieces


def _prepare_calls(rows: Rows, stored: pa.Array | None) -> _PreparedCalls:
    """A piece's staging data and, when the ids `stored` are known, the transcript items of its
    calls not among them (with `raw`): those are new, so the upsert will write their turns. In a
    thread: no session."""
    data = _staging_data(CALLS, rows)
    none = pa.array([], type=pa.string())
    if stored is None:
        return _PreparedCalls(data, None, none)
    new = pc.invert(pc.is_in(data.column("call_id"), value_set=stored))
    none_stored = pc.all(new).as_py()
    calls = data.filter(pc.and_(new, pc.is_valid(data.column("raw")))).select(["call_id", "raw"])
    if not calls.num_rows:
        return _PreparedCalls(data, None, none, none_stored)
    # Whether each is written for the first time is the upsert's to say (`_upsert_prepared_calls`).
    calls = calls.append_column("first_write", pa.repeat(pa.scalar(True), calls.num_rows))
    return _PreparedCalls(
        data, transcript_items(calls), calls.column("call_id").combine_chunks(), none_stored
    )


def _hash_index(table: str) -> str:
    """The name of a `_HASHED_BY` table's hash index."""
    return f"{table}_{_HASHED_BY[table]}_hash"


def _column_ddl(column: Column) -> str:
    ddl = f"{quote(column.name)} {_PG_TYPES[column.type]}"
    if column.allowed_values:
        allowed = ", ".join("'" + value.replace("'", "''") + "'" for value in column.allowed_values)
        ddl += f" CHECK ({quote(column.name)} IN ({allowed}))"
    return ddl


def _merged(column: Column, merge: Merge, new: str, old: str) -> str:
    """The merged value of `column` from the new value `new` and the stored one `old`.

    For a new row (`old` NULL) that is `new` itself, but for `Merge.ADD` where `new` is NULL (0):
    `_new_rows_as_given` says when a batch of new rows can go in without this expression."""
    if merge is Merge.COALESCE:
        return f"COALESCE({new}, {old})"
    if merge is Merge.KEEP_FIRST:
        return f"COALESCE({old}, {new})"
    if merge is Merge.ADD:
        return f"COALESCE({old}, 0) + COALESCE({new}, 0)"
    return new


def _new_rows_as_given(spec: TableSpec, data: pa.Table) -> bool:
    """Whether `data`, inserted as new rows, is stored as it is: `_merged(..., old="NULL")` is the
    new value in every column (no NULL where `Merge.ADD` would make it 0)."""
    return all(data.column(c.name).null_count == 0 for c in spec.data_columns if c.merge is Merge.ADD)


def _copy_data(spec: TableSpec, data: pa.Table, loaded_at: datetime) -> pa.Table:
    """`data` (`_staging_data`) as rows of `spec`'s table for a binary COPY: every column, and
    `_loaded_at`. A `jsonb` field in binary COPY is a version byte (1) and the JSON text, which
    the server parses as it would the text cast."""
    columns, names = [], []
    for column in spec.data_columns:
        values = data.column(column.name)
        if column.type == "JSON":
            values = pc.binary_join_element_wise(_JSONB_VERSION, values.cast(pa.binary()), b"")
        columns.append(values)
        names.append(column.name)
    columns.append(pa.repeat(pa.scalar(loaded_at, type=ARROW_TYPES["TIMESTAMPTZ"]), data.num_rows))
    names.append(LOADED_AT)
    return pa.table(columns, names=names)


class PostgresStore(SqlStore):
    """A session on one PostgreSQL database: one ADBC connection, each statement committed at once
    outside `transaction()`."""

    backend = "postgresql"

    def __init__(self, con: Any, *, read_only: bool = False) -> None:
        self.con = con
        self.read_only = read_only
        self._cursor = con.cursor()
        self._depth = 0
        self._locked: set[int] = set()

    @classmethod
    def open(
        cls, url: WarehouseURL, *, read_only: bool = False, timeout_seconds: float = 30.0
    ) -> PostgresStore:
        """Connect (giving up after `timeout_seconds` with `WarehouseBusy`); a read-only session on a
        database without the `apten` tables raises `WarehouseNotReady`."""
        try:
            con = dbapi.connect(url.libpq_uri(connect_timeout=timeout_seconds), autocommit=False)
        except adbc_driver_manager.Error as exc:
            message = str(exc)
            if url.password:
                message = message.replace(url.password, "***")
            raise WarehouseBusy(
                f"could not connect to the PostgreSQL warehouse {url} within {timeout_seconds:g}s: "
                f"{message.strip()}"
            ) from None
        store = cls(con, read_only=read_only)
        try:
            store._execute("SET TimeZone = 'UTC'")
            if read_only:
                store._execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                ((calls,),) = store._fetch("SELECT to_regclass(?)", [f"{SCHEMA}.{CALLS.name}"])
                if calls is None:
                    raise WarehouseNotReady(f"the PostgreSQL warehouse {url} has no apten tables yet")
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        try:
            self._cursor.close()
        finally:
            self.con.close()

    # ---------------------------------------------------------------- the session

    def _execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        """Run one statement; outside `transaction()` it is committed at once (autocommit).

        The driver runs with autocommit off: in autocommit mode it wraps every statement with
        parameters in a transaction of its own, which would commit a `transaction()` block early."""
        cursor = self._cursor
        try:
            cursor.execute(_numbered(sql), list(params) if params else None)
            rows = cursor.fetchall() if cursor.description else []
        except adbc_driver_manager.Error as exc:
            if not self._depth:
                self._rollback()
            _raise_translated(exc)
        if not self._depth:
            self.con.commit()
        return rows

    def _rollback(self) -> None:
        # After a lost connection the rollback fails too; the original error must surface.
        with contextlib.suppress(adbc_driver_manager.Error):
            self.con.rollback()

    def test_query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Any statement with `?` parameters; its rows (none for a statement without a result).
        For tests and tools that read the tables directly."""
        return self._execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._locked.clear()
            self._rollback()
            raise
        self._depth = 0
        self._locked.clear()
        self.con.commit()

    def _lock(self, spec: TableSpec) -> None:
        """Queue behind other writers of this table until this transaction ends."""
        lock = _table_lock_id(spec)
        if lock not in self._locked:
            self._execute("SELECT pg_advisory_xact_lock(?)", [lock])
            self._locked.add(lock)

    # ---------------------------------------------------------------- SqlStore hooks

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._execute(sql, params)

    def _ref(self, spec: TableSpec) -> str:
        return f"{quote(spec.schema)}.{quote(spec.name)}"

    def _in_list(self, expr: str) -> str:
        return f"{expr} = ANY(?)"

    def _seconds(self, expr: str) -> str:
        return f"make_interval(secs => {expr})"

    def _json_string(self, column: str, key: str) -> str:
        return f"({column} ->> '{key}')"

    def _json_text(self, column: str, key: str) -> str:
        return f"CAST({column} -> '{key}' AS text)"

    # ---------------------------------------------------------------- schema

    def ensure_schema(self) -> None:
        if self._schema_is_complete():
            return
        with self.transaction():
            # Two processes creating the schema at once would collide in the catalog.
            self._execute("SELECT pg_advisory_xact_lock(?)", [zlib.crc32(b"apten.schema")])
            self._execute(f"CREATE SCHEMA IF NOT EXISTS {quote(SCHEMA)}")
            for spec in STORED_TABLES:
                columns = ", ".join(_column_ddl(column) for column in spec.columns)
                if spec.name in _HASHED_BY:
                    self._execute(f"CREATE TABLE IF NOT EXISTS {self._ref(spec)} ({columns})")
                    # A table created keyed, before the index: its key's btree goes.
                    key = quote(f"{spec.name}_pkey")
                    self._execute(f"ALTER TABLE {self._ref(spec)} DROP CONSTRAINT IF EXISTS {key}")
                    self._execute(
                        f"CREATE INDEX IF NOT EXISTS {quote(_hash_index(spec.name))} ON {self._ref(spec)} "
                        f"USING hash ({quote(_HASHED_BY[spec.name])})"
                    )
                else:
                    key = ", ".join(quote(name) for name in spec.primary_key)
                    self._execute(
                        f"CREATE TABLE IF NOT EXISTS {self._ref(spec)} ({columns}, PRIMARY KEY ({key}))"
                    )
                existing = {
                    name
                    for (name,) in self._execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = ? AND table_name = ?",
                        [spec.schema, spec.name],
                    )
                }
                for column in spec.columns:
                    if column.name not in existing:
                        self._execute(f"ALTER TABLE {self._ref(spec)} ADD COLUMN {_column_ddl(column)}")
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {quote(SCHEMA)}.{quote(SYNC_STATE_TABLE)} "
                "(name text PRIMARY KEY, value text, updated_at timestamptz)"
            )
            # Changes how new values are stored only: existing rows stay as they are (readable
            # either way), with no table rewrite and no long lock.
            self._execute(f"ALTER TABLE {self._ref(CALLS)} ALTER COLUMN raw {self._raw_storage()[0]}")
            # Turns were once derived in SQL here, with this function for old servers.
            self._execute(f"DROP FUNCTION IF EXISTS {quote(SCHEMA)}._try_timestamptz(text)")

    def _raw_storage(self) -> tuple[str, str, str]:
        """How `calls.raw` is stored: (the ALTER COLUMN clause, pg_attribute's attstorage and
        attcompression for it). pglz, the default, compressing each ~10 KB `raw` was most of the
        time a batch spent writing `calls`; lz4 compresses about as well in a fraction of the time,
        and where the server is built without lz4 the values are stored uncompressed (docs/DESIGN.md
        has the disk cost)."""
        ((lz4,),) = self._execute(
            "SELECT COALESCE('lz4' = ANY(enumvals), false) FROM pg_settings "
            "WHERE name = 'default_toast_compression'"
        )
        return ("SET COMPRESSION lz4", "x", "l") if lz4 else ("SET STORAGE EXTERNAL", "e", "")

    def _schema_is_complete(self) -> bool:
        expected = {spec.name: set(spec.column_names) for spec in STORED_TABLES}
        expected[SYNC_STATE_TABLE] = {"name", "value", "updated_at"}
        found: dict[str, set[str]] = {}
        for table, column in self._execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = ?",
            [SCHEMA],
        ):
            found.setdefault(table, set()).add(column)
        if not all(columns <= found.get(table, set()) for table, columns in expected.items()):
            return False
        for name in _HASHED_BY:
            ((keyed, hashed),) = self._execute(
                "SELECT COALESCE(bool_or(x.indisprimary), false), COALESCE(bool_or(i.relname = ?), false) "
                "FROM pg_index AS x JOIN pg_class AS i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = CAST(? AS regclass)",
                [_hash_index(name), f"{SCHEMA}.{name}"],
            )
            if keyed or not hashed:
                return False
        _, storage, compression = self._raw_storage()
        return bool(
            self._execute(
                "SELECT 1 FROM pg_attribute WHERE attrelid = CAST(? AS regclass) AND attname = 'raw' "
                "AND attstorage = ? AND attcompression = ?",
                [f"{SCHEMA}.{CALLS.name}", storage, compression],
            )
        )

    def column_types(self) -> dict[str, dict[str, str]]:
        types: dict[str, dict[str, str]] = {}
        for table, column, data_type in self._execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ?",
            [SCHEMA],
        ):
            types.setdefault(table, {})[column] = data_type
        return types

    # ---------------------------------------------------------------- staging

    def _temp(self, label: str) -> str:
        return f"__{label}_{uuid.uuid4().hex[:12]}"

    def _drop(self, tables: list[str]) -> None:
        # Called on success only, still inside the write's transaction: after a failure the
        # ROLLBACK discards them, and the original error must surface rather than a failed DROP.
        # Newest first: a staging view depends on the table it reads.
        for table in reversed(tables):
            kind = "VIEW" if table.startswith(_VIEW_PREFIX) else "TABLE"
            self._execute(f"DROP {kind} IF EXISTS pg_temp.{quote(table)}")

    def _create_temp(self, name: str, select: str, params: Sequence[Any] | None = None) -> None:
        """`CREATE TEMP TABLE name AS select`, its jsonb and text values stored uncompressed: a temp
        table lives for one write, and compressing every `raw` into it (pglz, the only method some
        builds have) cost as much as the rest of the staging."""
        self._execute(f"CREATE TEMP TABLE {quote(name)} AS {select} WITH NO DATA", params)
        storage = ", ".join(
            f"ALTER COLUMN {quote(column)} SET STORAGE EXTERNAL"
            for (column,) in self._execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = CAST(? AS regclass) AND attnum > 0 "
                "AND NOT attisdropped AND atttypid IN (CAST('jsonb' AS regtype), CAST('text' AS regtype))",
                [f"pg_temp.{quote(name)}"],
            )
        )
        if storage:
            self._execute(f"ALTER TABLE pg_temp.{quote(name)} {storage}")
        self._execute(f"INSERT INTO pg_temp.{quote(name)} {select}", params)

    def _ingest(self, name: str, data: pa.Table) -> None:
        """`data` into a new temp table (binary COPY), its text stored uncompressed (see `_create_temp`)."""
        columns = []
        for field_ in data.schema:
            kind = _ARROW_PG_TYPES.get(field_.type)
            if kind is None:
                raise ValueError(f"cannot stage a column of type {field_.type} ({field_.name})")
            columns.append(f"{quote(field_.name)} {kind}")
        self._execute(f"CREATE TEMP TABLE {quote(name)} ({', '.join(columns)})")
        external = ", ".join(
            f"ALTER COLUMN {quote(field_.name)} SET STORAGE EXTERNAL"
            for field_ in data.schema
            if field_.type == pa.string()
        )
        if external:
            self._execute(f"ALTER TABLE pg_temp.{quote(name)} {external}")
        self._cursor.adbc_ingest(name, data, mode="append", temporary=True)

    def _append(self, spec: TableSpec, data: pa.Table) -> None:
        """Rows (every column, `_loaded_at` included) into a contract table as they are (binary
        COPY)."""
        try:
            self._cursor.adbc_ingest(spec.name, data, mode="append", db_schema_name=spec.schema)
        except adbc_driver_manager.Error as exc:
            _raise_translated(exc)

    def _stage(self, spec: TableSpec, data: pa.Table, temps: list[str]) -> tuple[str, pa.Table, int, int]:
        """Rows (`_staging_data`) into a typed temp table deduplicated on the key (the last row wins).

        Returns (table, the rows as given with `__ord`, rows given, duplicates dropped)."""
        raw = self._temp(f"raw_{spec.name}")
        temps.append(raw)
        self._ingest(raw, data)
        key = ", ".join(quote(name) for name in spec.primary_key)
        null_key = " OR ".join(f"{quote(name)} IS NULL" for name in spec.primary_key)
        ((null_keys,),) = self._execute(f"SELECT count(*) FROM pg_temp.{quote(raw)} WHERE {null_key}")
        if null_keys:
            raise ValueError(f"{null_keys} rows for {spec.qualified_name} have a NULL primary key ({key})")
        casts = ", ".join(
            f"CAST({quote(c.name)} AS jsonb) AS {quote(c.name)}" if c.type == "JSON" else quote(c.name)
            for c in spec.data_columns
        )
        if _keys_unique(data, spec.primary_key):
            # The usual batch: nothing to deduplicate, so no sort of every row by key, and no copy:
            # a view, which PostgreSQL inlines into each statement, so a JSON value is parsed
            # only by a statement that reads it (new and changed rows, not unchanged ones).
            staged = self._temp(f"{_VIEW_PREFIX[2:]}stage_{spec.name}")
            temps.append(staged)
            self._execute(
                f"CREATE TEMP VIEW {quote(staged)} AS SELECT {casts}, __ord FROM pg_temp.{quote(raw)}"
            )
            return f"pg_temp.{quote(staged)}", data, data.num_rows, 0
        staged = self._temp(f"stage_{spec.name}")
        temps.append(staged)
        self._create_temp(
            staged,
            f"SELECT DISTINCT ON ({key}) {casts}, __ord FROM pg_temp.{quote(raw)} ORDER BY {key}, __ord DESC",
        )
        ((distinct,),) = self._execute(f"SELECT count(*) FROM pg_temp.{quote(staged)}")
        return f"pg_temp.{quote(staged)}", data, data.num_rows, data.num_rows - int(distinct)

    # ---------------------------------------------------------------- writes

    def upsert(
        self,
        spec: TableSpec,
        rows: Rows,
        *,
        keep_existing_when_null: Iterable[str] = (),
        now: datetime | None = None,
    ) -> UpsertCounts:
        return self._upsert(
            spec, _staging_data(spec, rows), keep_existing_when_null, now or datetime.now(UTC), None
        )

    def upsert_calls(self, rows: Rows, *, now: datetime | None = None) -> tuple[UpsertCounts, ReplaceCounts]:
        """`upsert(CALLS, rows)` and the turns of the calls it inserts or changes, in one
        transaction, written in pieces (`_call_pieces`) as a pipeline.

        Most of a write here is the server's work (COPY, parsing `raw` into jsonb, the turns'
        COPY), in another process, while this one waits; most of the rest is this process's
        (rows to Arrow, the turns out of `raw`). So while the session writes one piece, a thread
        prepares the next one, and both cores work. The turns of a call not stored before are
        derived with its piece (such a call is always new, so the work is never wasted); those of
        a stored call only once the upsert finds it changed. Each piece is upserted as a whole
        batch would be: its keys are unique across pieces, so the counts add up to the batch's.
        A piece of calls none of which is stored (every first load) goes straight into `calls`
        by binary COPY (`_insert_new_calls`). Rows that are not a list, or that repeat a key, go
        in as one piece.
        """
        now = now or datetime.now(UTC)
        pieces = _call_pieces(rows)
        counts, turns = UpsertCounts(), ReplaceCounts()
        with (
            self.transaction(),
            ThreadPoolExecutor(max_workers=PIECES_AHEAD, thread_name_prefix="apten-prepare") as prepare,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="apten-turns") as derive,
        ):
            if pieces is None:
                stored: pa.Array | None = None
                pieces = [rows]
            else:
                # Under the lock (writers of calls queue on it), which calls are stored stays
                # true until this transaction ends. As Arrow once: every piece looks them up.
                self._lock(CALLS)
                ids = [row["call_id"] for piece in pieces for row in piece]
                stored = pa.array(list(self._stored_call_ids(ids)), type=pa.string())
            ahead = deque(prepare.submit(_prepare_calls, piece, stored) for piece in pieces[:PIECES_AHEAD])
            for index in range(len(pieces)):
                piece = ahead.popleft().result()
                if index + PIECES_AHEAD < len(pieces):
                    ahead.append(prepare.submit(_prepare_calls, pieces[index + PIECES_AHEAD], stored))
                piece_counts, piece_turns = self._upsert_prepared_calls(piece, now, derive)
                counts, turns = counts + piece_counts, turns + piece_turns
        return counts, turns

    def _stored_call_ids(self, call_ids: list[str]) -> set[str]:
        """Which of `call_ids` are in `calls` now."""
        return {
            call_id
            for (call_id,) in self._execute(
                f"SELECT call_id FROM {self._ref(CALLS)} WHERE call_id = ANY(CAST(? AS text[]))", [call_ids]
            )
        }

    def _upsert_prepared_calls(
        self, prepared: _PreparedCalls, now: datetime, derive: ThreadPoolExecutor
    ) -> tuple[UpsertCounts, ReplaceCounts]:
        turns = ReplaceCounts()

        def turns_of(
            candidates: list[tuple[str, bool]], data: pa.Table, temps: list[str]
        ) -> Callable[[], None]:
            # The calls this upsert inserts or changes are known before it writes them; those
            # whose turns the piece did not bring are read by DuckDB in a thread while PostgreSQL
            # writes the calls (both release the GIL).
            calls = _calls_to_read(data, candidates)
            parts: list[pa.Table] = []
            if prepared.items is not None:
                items = prepared.items
                ready = items.filter(pc.is_in(items.column("call_id"), value_set=calls.column("call_id")))
                new = calls.filter(calls.column("first_write")).column("call_id")
                first = pc.is_in(ready.column("call_id"), value_set=new)
                parts.append(
                    ready.set_column(ready.schema.get_field_index("first_write"), "first_write", first)
                )
            missing = calls.filter(pc.invert(pc.is_in(calls.column("call_id"), value_set=prepared.derived)))
            derived = derive.submit(transcript_items, missing) if missing.num_rows else None

            def write() -> None:
                nonlocal turns
                if derived is not None:
                    parts.append(derived.result())
                if parts:
                    turns = self._write_turns(pa.concat_tables(parts), now, temps)

            return write

        data = prepared.data
        if prepared.none_stored and _new_rows_as_given(CALLS, data):
            return self._insert_new_calls(data, now, turns_of), turns
        return self._upsert(CALLS, data, (), now, turns_of), turns

    def _insert_new_calls(self, data: pa.Table, now: datetime, children: _Children) -> UpsertCounts:
        """Calls none of which is stored (`data`: `_staging_data`, keys unique and not NULL), and
        their turns: the rows by binary COPY straight into `calls`, as `_merge` would insert them
        (`_new_rows_as_given`), without the staging table and the `INSERT ... SELECT` that parses
        the staged text again. The caller looked under the calls lock, which every writer of
        calls takes; a row stored by hand in between fails the batch on the primary key, and the
        next run upserts it."""
        temps: list[str] = []
        with self.transaction():
            new = [(call_id, True) for call_id in data.column("call_id").to_pylist()]
            write_children = children(new, data, temps)
            self._append(CALLS, _copy_data(CALLS, data, now))
            write_children()
            self._drop(temps)
        return UpsertCounts(inserted=data.num_rows)

    def _upsert(
        self,
        spec: TableSpec,
        data: pa.Table,
        keep_existing_when_null: Iterable[str],
        now: datetime,
        children: _Children | None,
    ) -> UpsertCounts:
        """`data` (`_staging_data`) upserted into `spec`'s table."""
        late = set(keep_existing_when_null)
        unknown = late - set(spec.column_names)
        if unknown:
            raise ValueError(f"{spec.qualified_name} has no columns {sorted(unknown)}")
        temps: list[str] = []
        inserted = updated = 0
        with self.transaction():
            staged, data, given, duplicates = self._stage(spec, data, temps)
            if given > duplicates:
                self._lock(spec)
                inserted, updated = self._merge(spec, staged, late, now, temps, children, data)
            self._drop(temps)
        return UpsertCounts(
            inserted=inserted,
            updated=updated,
            unchanged=given - duplicates - inserted - updated,
            duplicates=duplicates,
        )

    def _merge(
        self,
        spec: TableSpec,
        staged: str,
        late: set[str],
        now: datetime,
        temps: list[str],
        children: _Children | None,
        data: pa.Table,
    ) -> tuple[int, int]:
        key = spec.primary_key
        join = " AND ".join(f"t.{quote(name)} = s.{quote(name)}" for name in key)
        target = self._ref(spec)
        columns = ", ".join(quote(c.name) for c in spec.data_columns)
        merges = {
            c.name: Merge.COALESCE if c.name in late and c.merge is Merge.REPLACE else c.merge
            for c in spec.data_columns
        }
        ((stored,),) = self._execute(
            f"SELECT count(*) FROM {target} AS t WHERE EXISTS (SELECT 1 FROM {staged} AS s WHERE {join})"
        )
        if not stored:
            # Every row is new (every first load): inserted as it is, no join with stored rows.
            values = ", ".join(
                f"s.{quote(c.name)}"
                if c.name in key
                else _merged(c, merges[c.name], f"s.{quote(c.name)}", "NULL")
                for c in spec.data_columns
            )
            write_children = None
            if children is not None:
                new_rows = self._execute(f"SELECT {quote(key[0])}, true FROM {staged}")
                write_children = children(new_rows, data, temps)
            ((inserted,),) = self._execute(
                f"WITH i AS (INSERT INTO {target} ({columns}, {LOADED_AT}) "
                f"SELECT {values}, CAST(? AS timestamptz) FROM {staged} AS s RETURNING 1) "
                "SELECT count(*) FROM i",
                [now],
            )
            if write_children is not None:
                write_children()
            return int(inserted), 0
        # Classify each staged row against the stored one. A JSON value (a call's ~10 KB `raw`) is
        # not copied here: only whether it differs, so the MERGE below reads the new value of the
        # rows where it does, and keeps the stored one (its TOAST pointer: no rewrite) elsewhere.
        selected: list[str] = []
        # Per kind of change (content, bookkeeping): the scalar comparisons, computed in the inner
        # query below, and the JSON columns' flags, computed there once and read in the outer one.
        scalar_diff: dict[bool, list[str]] = {False: [], True: []}
        json_diff: dict[bool, list[str]] = {False: [], True: []}
        exists = f"t.{quote(key[0])} IS NOT NULL"
        for column in spec.data_columns:
            name = quote(column.name)
            if column.name in key:
                selected.append(f"s.{name} AS {name}")
                continue
            expr = _merged(column, merges[column.name], f"s.{name}", f"t.{name}")
            differs = f"({expr}) IS DISTINCT FROM t.{name}"
            if column.type == "JSON":
                flag = quote(f"__differs_{column.name}")
                # A new row's value is not compared: it is inserted whatever it is.
                selected.append(f"CASE WHEN {exists} THEN {differs} ELSE true END AS {flag}")
                json_diff[column.bookkeeping].append(f"c.{flag}")
                continue
            selected.append(f"{expr} AS {name}")
            scalar_diff[column.bookkeeping].append(differs)

        def any_of(conditions: list[str]) -> str:
            return " OR ".join(conditions) or "false"

        changed = any_of(["c.__content_differs", *json_diff[False]])
        bookkeeping_changed = any_of(["c.__bookkeeping_differs", *json_diff[True]])
        classified = self._temp(f"merge_{spec.name}")
        temps.append(classified)
        # OFFSET 0: each comparison is computed once, in the inner query, not again per use.
        self._create_temp(
            classified,
            f"SELECT c.*, NOT c.__exists AS __new, (c.__exists AND ({changed})) AS __changed, "
            f"(c.__exists AND ({bookkeeping_changed})) AS __bookkeeping_changed FROM ("
            f"SELECT {', '.join(selected)}, {exists} AS __exists, "
            f"({any_of(scalar_diff[False])}) AS __content_differs, "
            f"({any_of(scalar_diff[True])}) AS __bookkeeping_differs "
            f"FROM {staged} AS s LEFT JOIN {target} AS t ON {join} OFFSET 0) AS c",
        )
        ref = f"pg_temp.{quote(classified)}"
        ((inserted, updated, touched),) = self._execute(
            "SELECT count(*) FILTER (WHERE __new), count(*) FILTER (WHERE __changed), "
            f"count(*) FILTER (WHERE __new OR __changed OR __bookkeeping_changed) FROM {ref}"
        )
        write_children = None
        if children is not None:
            written = self._execute(f"SELECT {quote(key[0])}, __new FROM {ref} WHERE __new OR __changed")
            write_children = children(written, data, temps)
        if touched:
            non_key = [c for c in spec.data_columns if c.name not in key]
            json_columns = [c for c in non_key if c.type == "JSON"]

            def staged_json(column: Column) -> str:
                return f"u.{quote('__staged_' + column.name)}"

            values = ", ".join(
                _merged(c, merges[c.name], staged_json(c), "NULL")
                if c.type == "JSON"
                else f"u.{quote(c.name)}"
                for c in spec.data_columns
            )
            match = " AND ".join(f"t.{quote(name)} = u.{quote(name)}" for name in key)
            update = ""
            if non_key:
                assignments = ", ".join(
                    f"{quote(c.name)} = CASE WHEN u.{quote('__differs_' + c.name)} "
                    f"THEN {_merged(c, merges[c.name], staged_json(c), f't.{quote(c.name)}')} "
                    f"ELSE t.{quote(c.name)} END"
                    if c.type == "JSON"
                    else f"{quote(c.name)} = u.{quote(c.name)}"
                    for c in non_key
                )
                update = (
                    f"WHEN MATCHED THEN UPDATE SET {assignments}, "
                    f"{LOADED_AT} = CASE WHEN u.__changed THEN CAST(? AS timestamptz) ELSE t.{LOADED_AT} END "
                )
            params = [now, now] if non_key else [now]
            touched_rows = "WHERE u.__new OR u.__changed OR u.__bookkeeping_changed"
            source = f"SELECT * FROM {ref} AS u {touched_rows}"
            if json_columns:
                # The staged JSON, read (and parsed) only where an assignment above takes it.
                s_join = " AND ".join(f"s.{quote(name)} = u.{quote(name)}" for name in key)
                staged_values = ", ".join(f"s.{quote(c.name)} AS {staged_json(c)[2:]}" for c in json_columns)
                source = f"SELECT u.*, {staged_values} FROM {ref} AS u JOIN {staged} AS s ON {s_join}"
                source += f" {touched_rows}"
            self._execute(
                f"MERGE INTO {target} AS t USING ({source}) AS u "
                f"ON {match} {update}"
                f"WHEN NOT MATCHED THEN INSERT ({columns}, {LOADED_AT}) "
                f"VALUES ({values}, CAST(? AS timestamptz))",
                params,
            )
        if write_children is not None:
            write_children()
        return int(inserted), int(updated)

    def replace_children(
        self,
        spec: TableSpec,
        parent_key: str,
        parent_ids: Iterable[str],
        rows: Rows,
        *,
        now: datetime | None = None,
    ) -> ReplaceCounts:
        now = now or datetime.now(UTC)
        if parent_key not in spec.column_names:
            raise ValueError(f"{spec.qualified_name} has no column {parent_key!r}")
        parents = sorted(set(parent_ids))
        if not parents:
            return ReplaceCounts()
        parent = quote(parent_key)
        temps: list[str] = []
        with self.transaction():
            staged, _, _, duplicates = self._stage(spec, _staging_data(spec, rows), temps)
            listed = "(SELECT unnest(CAST(? AS text[])))"
            ((orphans,),) = self._execute(
                f"SELECT count(*) FROM {staged} WHERE {parent} <> ALL(CAST(? AS text[]))", [parents]
            )
            if orphans:
                raise ValueError(
                    f"{orphans} rows for {spec.qualified_name} belong to parents not in parent_ids"
                )
            self._lock(spec)
            columns = ", ".join(quote(c.name) for c in spec.data_columns)
            target = self._ref(spec)
            stored = f"SELECT {columns} FROM {target} WHERE {parent} IN {listed}"
            staged_rows = f"SELECT {columns} FROM {staged}"
            changed = self._temp("changed")
            temps.append(changed)
            self._execute(
                f"CREATE TEMP TABLE {quote(changed)} AS SELECT DISTINCT {parent} AS parent_id FROM "
                f"(({staged_rows} EXCEPT {stored}) UNION ALL ({stored} EXCEPT {staged_rows})) AS d",
                [parents, parents],
            )
            changed_ref = f"pg_temp.{quote(changed)}"
            ((replaced,),) = self._execute(f"SELECT count(*) FROM {changed_ref}")
            deleted = inserted = 0
            if replaced:
                ((deleted,),) = self._execute(
                    f"WITH d AS (DELETE FROM {target} WHERE {parent} IN "
                    f"(SELECT parent_id FROM {changed_ref}) RETURNING 1) SELECT count(*) FROM d"
                )
                ((inserted,),) = self._execute(
                    f"WITH i AS (INSERT INTO {target} ({columns}, {LOADED_AT}) "
                    f"SELECT {columns}, CAST(? AS timestamptz) FROM {staged} "
                    f"WHERE {parent} IN (SELECT parent_id FROM {changed_ref}) RETURNING 1) "
                    "SELECT count(*) FROM i",
                    [now],
                )
            self._drop(temps)
        return ReplaceCounts(
            parents=len(parents),
            parents_replaced=int(replaced),
            parents_unchanged=len(parents) - int(replaced),
            deleted=int(deleted),
            inserted=int(inserted),
            duplicates=duplicates,
        )

    def _write_turns(self, items: pa.Table, written_at: datetime, temps: list[str]) -> ReplaceCounts:
        """The turns of the calls this upsert inserted or changed, from their transcript items
        (`_calls_to_read`, by `turns.transcript_items`). A new call's turns are bulk-loaded
        straight into the table; a stored call's turns are compared with the stored ones first,
        and replaced only when they differ. A call with an empty or absent transcript has no
        items, and is left alone."""
        columns = [c.name for c in CALL_TRANSCRIPT_TURNS.data_columns]
        first_write = items.column("first_write")
        parents = pc.count_distinct(items.column("call_id")).as_py()
        stored = items.filter(pc.invert(first_write))
        stored_parents = pc.count_distinct(stored.column("call_id")).as_py()
        loaded_at = pa.scalar(written_at, type=pa.timestamp("us", tz="UTC"))

        def with_loaded_at(rows: pa.Table) -> pa.Table:
            rows = rows.select(columns)
            return rows.append_column(LOADED_AT, pa.repeat(loaded_at, rows.num_rows))

        # New calls have no stored turns: their turns go in as they are (binary COPY). In any
        # order: the hash index takes a row wherever its call_id hashes to.
        new_turns = with_loaded_at(items.filter(pc.and_(first_write, items.column("is_object"))))
        if new_turns.num_rows:
            self._append(CALL_TRANSCRIPT_TURNS, new_turns)
        inserted, deleted, changed = new_turns.num_rows, 0, 0
        if stored_parents:
            staged_items = self._temp("turn_items")
            temps.append(staged_items)
            self._ingest(staged_items, stored.select([*columns, "is_object"]))
            items_ref = f"pg_temp.{quote(staged_items)}"
            turns = self._ref(CALL_TRANSCRIPT_TURNS)
            names = ", ".join(quote(name) for name in columns)
            staged_turns = f"SELECT {names} FROM {items_ref} WHERE is_object"
            stored_turns = f"SELECT {names} FROM {turns} WHERE call_id IN (SELECT call_id FROM {items_ref})"
            revised = self._temp("revised")
            temps.append(revised)
            revised_ref = f"pg_temp.{quote(revised)}"
            self._execute(
                f"CREATE TEMP TABLE {quote(revised)} AS SELECT DISTINCT call_id FROM (({staged_turns} "
                f"EXCEPT {stored_turns}) UNION ALL ({stored_turns} EXCEPT {staged_turns})) AS d"
            )
            ((changed,),) = self._execute(f"SELECT count(*) FROM {revised_ref}")
            if changed:
                ((deleted,),) = self._execute(
                    f"WITH d AS (DELETE FROM {turns} WHERE call_id IN (SELECT call_id FROM {revised_ref}) "
                    "RETURNING 1) SELECT count(*) FROM d"
                )
                ((rewritten,),) = self._execute(
                    f"WITH i AS (INSERT INTO {turns} ({names}, {LOADED_AT}) "
                    f"SELECT {names}, CAST(? AS timestamptz) FROM {items_ref} WHERE is_object "
                    f"AND call_id IN (SELECT call_id FROM {revised_ref}) RETURNING 1) SELECT count(*) FROM i",
                    [written_at],
                )
                inserted += rewritten
        replaced = parents - stored_parents + int(changed)
        return ReplaceCounts(
            parents=parents,
            parents_replaced=replaced,
            parents_unchanged=parents - replaced,
            deleted=int(deleted),
            inserted=int(inserted),
        )

    # ---------------------------------------------------------------- cursors

    def _sync_state_ref(self) -> str:
        return f"{quote(SCHEMA)}.{quote(SYNC_STATE_TABLE)}"

    def get_sync_state(self, name: str) -> str | None:
        rows = self._execute(f"SELECT value FROM {self._sync_state_ref()} WHERE name = ?", [name])
        return rows[0][0] if rows else None

    def set_sync_state(self, name: str, value: str, *, now: datetime | None = None) -> None:
        self._execute(
            f"INSERT INTO {self._sync_state_ref()} (name, value, updated_at) "
            "VALUES (?, ?, CAST(? AS timestamptz)) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [name, value, now or datetime.now(UTC)],
        )

    def discard_deleted_data(self) -> None:
        # VACUUM FULL writes each table anew and drops the old files, so deleted rows are gone
        # from the table files (the server's WAL and backups are the operator's retention policy).
        # It cannot run inside a transaction block, so the session leaves its own for the time.
        self.con.commit()
        self.con.adbc_connection.set_autocommit(True)
        try:
            for target in LEAD_DATA:
                self._cursor.execute(f"VACUUM FULL {self._ref(target.spec)}")
        finally:
            self.con.adbc_connection.set_autocommit(False)

    def delete_sync_state(self, name: str) -> None:
        self._execute(f"DELETE FROM {self._sync_state_ref()} WHERE name = ?", [name])

    def read_column_page(
        self, spec: TableSpec, columns: Sequence[str], *, after: Any | None, limit: int
    ) -> ColumnPage:
        """Key order where a key's index gives it. The tables keyed by their writers
        (`_HASHED_BY`) have none, so their pages are ranges of the table's blocks instead, each one
        TID range scan of about `limit` rows (a page in key order without the index sorted the
        whole table: 0.55-1.8 s per 20,000 of 4.2M turns, against 0.17 s by blocks). A row the
        caller rewrites may move to a later block and come again, so a rewrite must give the same
        value twice (the PII modes do); none is skipped, as its earlier version was on the page
        that rewrote it."""
        if spec.name not in _HASHED_BY:
            return super().read_column_page(spec, columns, after=after, limit=limit)
        start = int(after or 0)
        ((blocks, rows_per_block),) = self._execute(
            "SELECT pg_relation_size(c.oid) / CAST(current_setting('block_size') AS bigint), "
            "CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages END "
            "FROM pg_class AS c WHERE c.oid = CAST(? AS regclass)",
            [f"{spec.schema}.{spec.name}"],
        )
        if start >= blocks:
            return ColumnPage([], None)
        end = start + max(1, int(limit / (rows_per_block or _ROWS_PER_BLOCK)))
        rows = self._execute(
            f"SELECT {', '.join(self._page_columns(spec, columns))} FROM {self._ref(spec)} "
            "WHERE ctid >= CAST(? AS tid) AND ctid < CAST(? AS tid)",
            [f"({start},0)", f"({end},0)"],
        )
        return ColumnPage(rows, end)

    def overwrite_columns(
        self,
        spec: TableSpec,
        columns: Sequence[str],
        rows: Sequence[tuple],
        *,
        now: datetime | None = None,
    ) -> int:
        if not rows:
            return 0
        names = [*spec.primary_key, *columns]
        data = to_arrow(spec, [dict(zip(names, row, strict=True)) for row in rows])
        data, removed = _without_nul(spec, data)
        if removed:
            log.warning("%s: replaced U+0000 with U+FFFD in %d values", spec.qualified_name, removed)
        data = data.select(names)
        temp = self._temp(f"overwrite_{spec.name}")
        match = " AND ".join(f"t.{quote(name)} = u.{quote(name)}" for name in spec.primary_key)
        assignments = ", ".join(
            f"{quote(name)} = CAST(u.{quote(name)} AS jsonb)"
            if spec.column(name).type == "JSON"
            else f"{quote(name)} = u.{quote(name)}"
            for name in columns
        )
        with self.transaction():
            self._ingest(temp, data)
            # Its row count, so that the UPDATE looks each row up by index (a hash index finds
            # the turns' rows): unknown, the planner joined against the whole table instead.
            self._execute(f"ANALYZE pg_temp.{quote(temp)}")
            self._lock(spec)
            ((written,),) = self._execute(
                f"WITH w AS (UPDATE {self._ref(spec)} AS t SET {assignments}, "
                f"{LOADED_AT} = CAST(? AS timestamptz) FROM pg_temp.{quote(temp)} AS u "
                f"WHERE {match} RETURNING 1) SELECT count(*) FROM w",
                [now or datetime.now(UTC)],
            )
            self._drop([temp])
        return int(written)
