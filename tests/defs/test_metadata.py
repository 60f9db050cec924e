"""Materialization metadata helpers."""

from __future__ import annotations

import duckdb
import pytest

from apten_assets.defs.apten.metadata import PREVIEW_ROWS, preview


def test_preview_keeps_only_its_rows_instead_of_sorting_the_whole_result() -> None:
    # The previews of the calls step ordered every transcript turn of the window with its content
    # only to show five: at 100,000 calls that sort was the run's peak memory.
    con = duckdb.connect()
    con.execute("SET memory_limit = '32MB'")
    con.execute("SET temp_directory = ''")  # no spilling: a full sort of ~60 MB cannot finish
    sql = "SELECT i, repeat(CAST(i AS VARCHAR), 200) AS pad FROM range(300000) AS t(i) ORDER BY pad DESC, i"
    with pytest.raises(duckdb.OutOfMemoryException):
        con.execute(sql).fetchmany(PREVIEW_ROWS)

    table = preview(con, sql).value

    rows = table.splitlines()[2:]
    assert len(rows) == PREVIEW_ROWS
    assert [row.split(" | ")[0] for row in rows] == ["| 99999", "| 9999", "| 999", "| 99", "| 9"]
    con.close()
