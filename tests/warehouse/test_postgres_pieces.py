"""PostgreSQL's pipelined `upsert_calls`: how a batch is cut into pieces, which calls the session
believes stored (looked up under the calls lock: pieces of new calls go straight in by COPY), and
what happens when that belief is wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest

from apten_assets.lib.models import Call
from apten_assets.lib.tables import CALL_TRANSCRIPT_TURNS, call_rows
from apten_assets.warehouse import open_store
from apten_assets.warehouse import postgres as postgres_store
from tests.warehouse.helpers import query

T0 = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)


def row(call_id: str, *contents: str, at: datetime = T0) -> dict:
    transcript = [
        {
            "role": "user",
            "content": text,
            "startTime": "2026-06-15T14:30:01Z",
            "endTime": "2026-06-15T14:30:02Z",
        }
        for text in contents
    ]
    return call_rows(Call.from_json({"id": call_id, "transcript": transcript}), at).call


def test_pieces_start_small_and_double_up_to_the_piece_size() -> None:
    rows = [{"call_id": f"c{i}"} for i in range(3000)]
    sizes = [len(piece) for piece in postgres_store._call_pieces(rows) or []]
    first, full = postgres_store.FIRST_PIECE_CALLS, postgres_store.PIECE_CALLS
    expected, left, size = [], 3000, first
    while left:
        expected.append(min(size, left))
        left, size = left - min(size, left), min(2 * size, full)
    assert sizes == expected
    assert sizes[0] == first and max(sizes) == full and sum(sizes) == 3000


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [{"call_id": "a"}, {"call_id": "b"}, {"call_id": "a"}],  # a later row of a key must win
        [{"call_id": None}],  # refused by the upsert, as one piece
        pa.table({"call_id": ["a", "b"]}),  # rows may come as Arrow or pandas too
        pd.DataFrame({"call_id": ["a", "b"]}),
    ],
)
def test_rows_that_pieces_would_not_add_up_for_go_in_as_one_piece(rows: object) -> None:
    assert postgres_store._call_pieces(rows) is None


@pytest.fixture
def pg_store(postgres_url: str):
    with open_store(postgres_url) as session:
        session.ensure_schema()
        yield session


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement the PostgreSQL store runs from here on, in order."""
    seen: list[str] = []
    execute = postgres_store.PostgresStore._execute

    def record(self, sql, params=None):
        seen.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(postgres_store.PostgresStore, "_execute", record)
    return seen


def test_the_session_looks_for_stored_calls_under_the_calls_lock(pg_store, statements: list[str]) -> None:
    # What the pipeline believes stored decides which pieces go straight into `calls` by COPY:
    # the look must come after the lock that every writer of calls takes, so it stays true.
    pg_store.upsert_calls([row(f"c{i}", "a") for i in range(3)], now=T0)

    lock = next(i for i, sql in enumerate(statements) if "pg_advisory_xact_lock" in sql)
    look = next(i for i, sql in enumerate(statements) if "= ANY(CAST(? AS text[]))" in sql)
    assert lock < look


def test_a_call_believed_new_but_stored_fails_the_batch_and_writes_nothing(
    pg_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a writer that bypasses the store (and its lock) can make the look wrong this way: the
    # batch fails on the primary key, nothing of it is written, and the next run upserts it.
    pg_store.upsert_calls([row(f"s{i}", "a", "b") for i in range(3)], now=T0)
    monkeypatch.setattr(postgres_store.PostgresStore, "_stored_call_ids", lambda self, ids: set())

    with pytest.raises(Exception, match="duplicate key"):
        pg_store.upsert_calls([row("n0", "x"), row("s1", "revised")], now=T0 + timedelta(minutes=5))

    assert query(pg_store, "SELECT call_id FROM apten.calls ORDER BY 1") == [("s0",), ("s1",), ("s2",)]
    assert query(pg_store, "SELECT count(*) FROM apten.call_transcript_turns") == [(6,)]
    monkeypatch.undo()
    calls, turns = pg_store.upsert_calls(
        [row("n0", "x"), row("s1", "revised")], now=T0 + timedelta(minutes=5)
    )
    assert (calls.inserted, calls.updated, turns.deleted, turns.inserted) == (1, 1, 2, 2)


def test_turns_are_right_when_the_session_believed_new_calls_stored(
    pg_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A call believed stored (erased in between, say) that is new gets its turns derived when
    # the upsert finds it new; a stored one's turns are compared and replaced, not inserted twice.
    pg_store.upsert_calls([row(f"s{i}", "a", "b") for i in range(300)], now=T0)
    later = T0 + timedelta(minutes=5)
    batch = [row(f"s{i}", "a" if i % 2 else "revised") for i in range(300)]
    batch += [row(f"n{i}", "x", "y", "z", at=later) for i in range(300)]
    every_id = {r["call_id"] for r in batch}
    monkeypatch.setattr(postgres_store.PostgresStore, "_stored_call_ids", lambda self, ids: every_id)

    calls, turns = pg_store.upsert_calls(batch, now=later)

    assert (calls.inserted, calls.updated) == (300, 300)
    assert (turns.parents, turns.parents_replaced, turns.deleted, turns.inserted) == (600, 600, 600, 1200)
    stored = dict(query(pg_store, "SELECT call_id, string_agg(content, ',' ORDER BY turn_index) FROM "
                                  "apten.call_transcript_turns GROUP BY 1"))  # fmt: skip
    assert stored == {
        **{f"s{i}": "a" if i % 2 else "revised" for i in range(300)},
        **{f"n{i}": "x,y,z" for i in range(300)},
    }
    assert pg_store.duplicate_keys(CALL_TRANSCRIPT_TURNS) == 0


def test_a_first_load_goes_into_calls_by_copy_and_stores_what_the_upsert_would(
    pg_store, statements: list[str]
) -> None:
    # Pieces of new calls skip the staging table and the INSERT ... SELECT; a piece with a NULL
    # where `Merge.ADD` makes it 0 goes the upsert's way. Both store the same rows.
    body = {
        "id": "c0",
        "transcript": [{"role": "user", "content": "é ☃ \\u0000", "startTime": "x"}],
        "n": 1e300,
    }
    copied = [{**call_rows(Call.from_json({**body, "id": f"c{i}"}), T0).call} for i in range(3)]
    pg_store.upsert_calls(copied, now=T0)
    assert not [sql for sql in statements if 'INSERT INTO "apten"."calls"' in sql]

    upserted = [{**row, "call_id": f"u{i}", "fetch_attempts": None} for i, row in enumerate(copied)]
    pg_store.upsert_calls(upserted, now=T0)
    assert [sql for sql in statements if 'INSERT INTO "apten"."calls"' in sql]

    columns = [c for c in postgres_store.CALLS.column_names if c != "call_id"]
    rows = query(pg_store, f"SELECT call_id, {', '.join(columns)} FROM apten.calls ORDER BY call_id")
    by_id = {r[0]: r[1:] for r in rows}
    attempts = columns.index("fetch_attempts")
    for i in range(3):
        copy, upsert = by_id[f"c{i}"], by_id[f"u{i}"]
        assert (copy[attempts], upsert[attempts]) == (1, 0)
        assert [v for k, v in enumerate(copy) if k != attempts] == [
            v for k, v in enumerate(upsert) if k != attempts
        ]
    turns = query(pg_store, "SELECT call_id, content FROM apten.call_transcript_turns ORDER BY call_id")
    assert [content for _, content in turns] == ["é ☃ \\u0000"] * 6
