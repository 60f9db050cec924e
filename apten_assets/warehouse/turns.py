"""Transcript turns out of calls' raw JSON: the turn rules of `store.py`, written once, in DuckDB SQL.

Every backend derives its turns with this one query on DuckDB: the DuckDB store inside its own
warehouse (`transcript_items_sql` over the batch it staged), any other backend in an in-memory
DuckDB over the batch's Arrow (`transcript_items`), and then bulk-loads the rows. So a hostile
transcript gives the same rows on every backend, and the turns of a batch never become Python
objects.

The rules: position in the array is `turn_index`; items that are not objects are skipped; a field
of the wrong JSON type or an unparseable timestamp is NULL; a timestamp without a zone is read as
UTC (the session time zone); a timestamp outside the models' range is NULL (stored values are
readable back). One row per transcript item, objects or not (`is_object`), so that a call with a
non-empty transcript is known even when none of its items is a turn. Each item is parsed twice,
for the types and for the strings of all its fields at once.
"""

from __future__ import annotations

import os
import threading

import duckdb
import pyarrow as pa

from apten_assets.lib.models import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP

_TRANSCRIPT_ITEMS_SQL = """
WITH items AS (
  SELECT call_id, first_write, unnest(items) AS t, generate_subscripts(items, 1) - 1 AS turn_index
  FROM (SELECT call_id, first_write, json_extract(raw, '$.transcript[*]') AS items FROM {calls})
),
typed AS (
  SELECT
    call_id,
    first_write,
    turn_index,
    json_type(t, ['$', '$.role', '$.content', '$.startTime', '$.endTime']) AS types,
    json_extract_string(t, ['$.role', '$.content', '$.startTime', '$.endTime']) AS texts
  FROM items
)
SELECT
  call_id,
  first_write,
  CAST(turn_index AS INTEGER) AS turn_index,
  types[1] = 'OBJECT' AS is_object,
  CASE WHEN types[2] = 'VARCHAR' THEN texts[1] END AS role,
  CASE WHEN types[3] = 'VARCHAR' THEN texts[2] END AS content,
  {start_time} AS start_time,
  {end_time} AS end_time
FROM typed
"""


def _turn_time(index: int) -> str:
    # The models' range: year 1 or 10000 would be stored, and then fail every read that returns
    # it to Python.
    value = f"TRY_CAST(trim(texts[{index}]) AS TIMESTAMPTZ)"
    return (
        f"CASE WHEN types[{index + 1}] = 'VARCHAR' AND {value} >= '{EARLIEST_TIMESTAMP.isoformat()}' "
        f"AND {value} < '{LATEST_TIMESTAMP.isoformat()}' THEN {value} END"
    )


def transcript_items_sql(calls: str) -> str:
    """A DuckDB query of the transcript items (`call_id`, `first_write`, `turn_index`, `is_object`,
    `role`, `content`, `start_time`, `end_time`) of the relation `calls`, which has `call_id`,
    `first_write` (passed through) and `raw` (JSON text). The session's time zone must be UTC."""
    return _TRANSCRIPT_ITEMS_SQL.format(calls=calls, start_time=_turn_time(3), end_time=_turn_time(4))


# This process's in-memory DuckDB for `transcript_items`, and the process it was made in (a forked
# child makes its own: DuckDB's threads do not survive a fork).
_database: tuple[int, duckdb.DuckDBPyConnection] | None = None
_database_lock = threading.Lock()


def _session() -> duckdb.DuckDBPyConnection:
    """A new session (UTC) on this process's in-memory DuckDB, which is made once: starting a
    database took 17 ms, a session on it 0.3 ms, and a PostgreSQL write derives turns per piece
    of ~1,000 calls (bench/notes.md)."""
    global _database
    with _database_lock:
        if _database is None or _database[0] != os.getpid():
            database = duckdb.connect()
            database.execute("SET GLOBAL TimeZone = 'UTC'")
            _database = (os.getpid(), database)
        return _database[1].cursor()


def transcript_items(calls: pa.Table) -> pa.Table:
    """`transcript_items_sql` over `calls` (Arrow: `call_id`, `first_write`, `raw`), run in an
    in-memory DuckDB (any thread may call it); the items as Arrow."""
    con = _session()
    try:
        con.register("calls", calls)
        return con.sql(transcript_items_sql("calls")).to_arrow_table()
    except (duckdb.ConversionException, duckdb.InvalidInputException, duckdb.OutOfRangeException) as exc:
        # JSON the warehouse took but DuckDB cannot read: the caller's bad row, as in `upsert`.
        raise ValueError(f"a transcript cannot be read: {type(exc).__name__}: {exc}") from exc
    finally:
        con.close()
