"""Reading a store's tables in tests, whatever the backend: `?` parameters, `apten.<table>` names.

Tests check what is stored with their own SQL rather than through the store they test; this is
the only place that knows how to reach each backend's session. JSON values come back as text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from apten_assets.warehouse import Store


def _text(value: Any) -> Any:
    return (
        json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        if isinstance(value, dict | list)
        else value
    )


def query(store: Store, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """All rows of `sql` on the store's own session."""
    if store.backend == "duckdb":
        rows = store.con.execute(sql, list(params)).fetchall()  # type: ignore[attr-defined]
    else:
        rows = store.test_query(sql, params)  # type: ignore[attr-defined]
    return [tuple(_text(value) for value in row) for row in rows]


def one(store: Store, sql: str, params: Sequence[Any] = ()) -> tuple:
    """The first row of `sql`."""
    return query(store, sql, params)[0]
