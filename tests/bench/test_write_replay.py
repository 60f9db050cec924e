"""The write-path diagnostic writes through the calls step's own batch write, so what it takes
apart is what production runs: a first load stores every call, an unchanged re-run stores nothing,
and the store's statements are timed on either backend."""

from __future__ import annotations

from apten_assets.lib.client import AptenClient
from apten_assets.lib.config import AptenSettings
from bench.pii_cost import _pool, profile_for
from bench.write_replay import _replay_into
from tests.conftest import is_postgres

CALLS = 300


def test_a_first_load_stores_every_call_and_a_rerun_stores_nothing(warehouse_url: str) -> None:
    backend = "postgresql" if is_postgres(warehouse_url) else "duckdb"
    pool, _ = _pool(profile_for(25, 50), CALLS, 0.0)
    settings = AptenSettings.from_env({"APTEN_API_KEY": "bench", "APTEN_BASE_URL": "http://127.0.0.1:9"})
    with AptenClient(settings) as client:
        result = _replay_into(warehouse_url, backend, pool, CALLS, client=client, statements=True)

    first = result["first_rows"]
    assert first["calls"] == CALLS
    with_summary = sum(1 for body in pool[:CALLS] if isinstance(body.get("summary"), str) and body["summary"])
    assert first["call_summaries"] == with_summary > 0
    turns = sum(len(body["transcript"]) for body in pool[:CALLS])
    assert first["call_transcript_turns"] == turns > 0
    assert result["rerun_rows"] == {"calls": 0, "call_summaries": 0, "call_transcript_turns": 0}
    for phase in ("first", "rerun"):
        assert 0 < result[f"{phase}_write_s"] <= result[f"{phase}_s"]
    turn_statement = (
        "adbc_ingest (call_transcript_turns)"
        if backend == "postgresql"
        else 'INSERT "apten_warehouse"."apten"."call_transcript_turns"'
    )
    # A first load writes turns; an unchanged re-run writes none, and both stage the calls.
    assert result["first_statements"][turn_statement] > 0
    assert turn_statement not in result["rerun_statements"]
    for phase in ("first", "rerun"):
        assert result[f"{phase}_statements"]["to_arrow"] > 0
