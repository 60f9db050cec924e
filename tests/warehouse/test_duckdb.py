"""What only the DuckDB backend promises: its file, its catalog name, its lock, its storage layout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from apten_assets.lib.models import Call
from apten_assets.lib.tables import CALLS, LEADS, STORED_TABLES, call_rows
from apten_assets.warehouse import WarehouseBusy, open_store
from apten_assets.warehouse import duckdb as duckdb_store
from apten_assets.warehouse.duckdb import DuckDBStore
from apten_assets.warehouse.store import PREVIEW_ROWS
from tests.warehouse.test_store import CALL_BODY, T0, lead


def _table(con: duckdb.DuckDBPyConnection, name: str, order: str) -> list[tuple]:
    return con.execute(f"SELECT * FROM apten.{name} ORDER BY {order}").fetchall()


def test_connect_creates_the_parent_directory_and_ensure_schema_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "apten.duckdb"
    con = duckdb_store.connect(path)
    for _ in range(3):
        duckdb_store.ensure_schema(con)
    assert path.exists()
    tables = {
        name
        for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='apten'"
        ).fetchall()
    }
    assert tables == {spec.name for spec in STORED_TABLES} | {"_sync_state"}
    con.close()


def test_default_file_name_does_not_make_the_apten_schema_ambiguous(tmp_path: Path) -> None:
    # A file named apten.duckdb would be catalog `apten`, clashing with schema `apten`.
    con = duckdb_store.connect(tmp_path / "data" / "apten.duckdb")
    duckdb_store.ensure_schema(con)
    duckdb_store.upsert(con, LEADS, [lead("a")])
    assert con.execute("SELECT lead_id FROM apten.leads").fetchall() == [("a",)]
    other = duckdb_store.connect(tmp_path / "data" / "apten.duckdb", read_only=True)
    assert other.execute("SELECT count(*) FROM apten.leads").fetchone() == (1,)
    other.close()
    con.close()


def test_closing_the_last_connection_releases_the_file_for_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "apten.duckdb"
    first, second = duckdb_store.connect(path), duckdb_store.connect(path)
    duckdb_store.ensure_schema(first)
    first.close()
    second.close()
    probe = f"import duckdb; duckdb.connect({str(path)!r}).close(); print('opened')"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "opened", result.stderr


def test_ensure_schema_adds_columns_missing_from_an_older_table(tmp_path: Path) -> None:
    con = duckdb_store.connect(tmp_path / "old.duckdb")
    con.execute("CREATE SCHEMA apten")
    con.execute("CREATE TABLE apten.leads (lead_id VARCHAR, first_name VARCHAR)")
    con.execute("INSERT INTO apten.leads VALUES ('room_abc', 'John')")
    duckdb_store.ensure_schema(con)
    columns = [
        name
        for (name,) in con.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'apten' AND table_name = 'leads'"
        ).fetchall()
    ]
    assert set(columns) == set(LEADS.column_names)
    assert con.execute("SELECT first_name FROM apten.leads").fetchall() == [("John",)]
    con.close()


def test_process_killed_mid_write_leaves_the_last_committed_state(tmp_path: Path) -> None:
    path = tmp_path / "apten.duckdb"
    con = duckdb_store.connect(path)
    duckdb_store.ensure_schema(con)
    duckdb_store.upsert(con, LEADS, [lead("a")], now=T0)
    before = _table(con, "leads", "lead_id")
    con.close()
    script = textwrap.dedent(
        f"""
        import os
        from apten_assets.warehouse import duckdb as duckdb_store
        from apten_assets.lib.tables import LEADS
        con = duckdb_store.connect({str(path)!r})
        with duckdb_store.transaction(con):
            duckdb_store.upsert(con, LEADS, [{{"lead_id": "a", "first_name": "half"}}, {{"lead_id": "b"}}])
            os._exit(9)  # killed before COMMIT
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == 9, result.stderr.decode()
    con = duckdb_store.connect(path)
    assert _table(con, "leads", "lead_id") == before
    con.close()


def test_batches_written_one_connection_after_another_keep_small_row_groups(tmp_path: Path) -> None:
    # With DuckDB's default (122,880 rows), each checkpoint merged the small row groups of earlier
    # batches again, rewriting their raw JSON: write time per call grew with the table.
    path = tmp_path / "apten.duckdb"
    for batch in range(3):
        con = duckdb_store.connect(path)
        duckdb_store.ensure_schema(con)
        bodies = [{**CALL_BODY, "id": f"call-{batch}-{i}"} for i in range(1500)]
        duckdb_store.upsert(con, CALLS, [call_rows(Call.from_json(body), T0).call for body in bodies])
        con.close()  # the last connection checkpoints
    con = duckdb_store.connect(path, read_only=True)
    storage = f"pragma_storage_info('{duckdb_store.CATALOG}.apten.calls')"
    ((groups, largest, rows),) = con.execute(
        "SELECT count(*), max(n), sum(n) FROM (SELECT row_group_id, sum(count) AS n "
        f"FROM {storage} WHERE column_id = 0 AND segment_type <> 'VALIDITY' GROUP BY ALL)"
    ).fetchall()
    con.close()
    assert rows == 4500
    assert largest <= duckdb_store.ROW_GROUP_SIZE and groups >= 3


def test_json_documents_are_stored_with_zstd(tmp_path: Path) -> None:
    # FSST, which DuckDB picks by itself for long strings, made compressing calls.raw most of the
    # cost of each batch's checkpoint.
    path = tmp_path / "apten.duckdb"
    con = duckdb_store.connect(path)
    duckdb_store.ensure_schema(con)
    bodies = [{**CALL_BODY, "id": f"call-{i}"} for i in range(500)]
    duckdb_store.upsert(con, CALLS, [call_rows(Call.from_json(body), T0).call for body in bodies])
    con.execute("CHECKPOINT")
    storage = f"pragma_storage_info('{duckdb_store.CATALOG}.apten.calls')"
    methods = con.execute(
        f"SELECT DISTINCT compression FROM {storage} WHERE column_name = 'raw' AND segment_type <> 'VALIDITY'"
    ).fetchall()
    con.close()
    assert methods == [("ZSTD",)]


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        import sys, time, duckdb
        con = duckdb.connect({str(path)!r})
        print("locked", flush=True)
        time.sleep({seconds})
        con.close()
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_connect_to_a_file_locked_by_another_process_raises_warehouse_busy(tmp_path: Path) -> None:
    path = tmp_path / "apten.duckdb"
    holder = _hold_write_lock(path, 60)
    try:
        started = time.monotonic()
        with pytest.raises(WarehouseBusy, match="locked by another process") as caught:
            duckdb_store.connect(path, timeout_seconds=0.5)
        assert time.monotonic() - started < 5
        assert str(path) in str(caught.value)
        with pytest.raises(WarehouseBusy):
            duckdb_store.connect(path, read_only=True, timeout_seconds=0.2)
    finally:
        holder.kill()
        holder.wait()


def test_connect_waits_for_a_lock_that_is_released_in_time(tmp_path: Path) -> None:
    path = tmp_path / "apten.duckdb"
    holder = _hold_write_lock(path, 1.0)
    try:
        con = duckdb_store.connect(path, timeout_seconds=30)
        duckdb_store.ensure_schema(con)
        con.close()
    finally:
        holder.kill()
        holder.wait()


def test_a_refused_write_leaves_no_temp_tables(tmp_path: Path) -> None:
    with open_store(f"duckdb:///{tmp_path / 'apten.duckdb'}") as store:
        store.ensure_schema()
        with pytest.raises(ValueError, match="NULL primary key"):
            store.upsert(LEADS, [lead("a"), {"lead_id": None, "first_name": "x"}])
        temp_tables = store.con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()
    assert temp_tables == (0,)


def test_preview_keeps_only_its_rows_instead_of_sorting_the_whole_result() -> None:
    # The previews of the calls step ordered every transcript turn of the window with its content
    # only to show five: at 100,000 calls that sort was the run's peak memory.
    con = duckdb.connect()
    con.execute("SET memory_limit = '32MB'")
    con.execute("SET temp_directory = ''")  # no spilling: a full sort of ~60 MB cannot finish
    rest = "FROM range(300000) AS t(i) ORDER BY pad DESC, i"
    with pytest.raises(duckdb.OutOfMemoryException):
        con.execute(f"SELECT i, repeat(CAST(i AS VARCHAR), 200) AS pad {rest}").fetchmany(PREVIEW_ROWS)

    preview = DuckDBStore(con)._preview("i, repeat(CAST(i AS VARCHAR), 200) AS pad", rest)

    assert [row[0] for row in preview.rows] == [99999, 9999, 999, 99, 9]
    con.close()
