"""PostgreSQL's pipelined `upsert_calls`: how a batch is cut into pieces, and turns derived ahead
of the upsert for calls the session believed new, or not derived for calls it believed stored,
when another writer proved it wrong in between."""

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


@pytest.mark.parametrize("belief", ["nothing stored", "everything stored"])
def test_turns_are_right_whatever_the_session_believed_was_stored(
    pg_store, monkeypatch: pytest.MonkeyPatch, belief: str
) -> None:
    # Between the session's look at `calls` and its lock, another writer may have stored a call
    # (or the look may be stale in the other direction): turns derived ahead for a call that
    # turns out stored must be compared and replaced, not inserted twice; a call believed stored
    # that is new must get its turns derived when the upsert finds it new.
    pg_store.upsert_calls([row(f"s{i}", "a", "b") for i in range(300)], now=T0)
    later = T0 + timedelta(minutes=5)
    batch = [row(f"s{i}", "a" if i % 2 else "revised") for i in range(300)]
    batch += [row(f"n{i}", "x", "y", "z", at=later) for i in range(300)]
    every_id = {r["call_id"] for r in batch}
    monkeypatch.setattr(
        postgres_store.PostgresStore,
        "_stored_call_ids",
        lambda self, ids: set() if belief == "nothing stored" else every_id,
    )

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
