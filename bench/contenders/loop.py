"""The hand-written loop a user writes in an afternoon: sequential httpx, pandas, DuckDB.

Leads page by page, each lead's CALL events, then each call one after the other; everything is
kept in lists, turned into DataFrames at the end and written with CREATE TABLE ... AS.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import httpx
import pandas as pd

from bench.contenders._harness import run


def load(params: dict[str, Any], state: None) -> dict[str, Any]:
    base_url = params["base_url"]
    since = f"{params['partition']}T00:00:00.000Z"
    leads: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    requests = 0
    with httpx.Client(base_url=base_url, timeout=30.0) as http:

        def pages(path: str, key: str, query: dict[str, Any]) -> list[dict[str, Any]]:
            nonlocal requests
            items: list[dict[str, Any]] = []
            token = None
            while True:
                args = dict(query, limit=1000, **({"nextToken": token} if token else {}))
                response = http.get(path, params=args)
                requests += 1
                response.raise_for_status()
                body = response.json()
                items += body[key]
                token = body.get("nextToken")
                if not token:
                    return items

        leads = pages("/leads", "leads", {"updatedSince": "1970-01-01T00:00:00.000Z"})
        for lead in leads:
            events += pages(f"/leads/{lead['id']}/events", "events", {"since": since, "types": "CALL"})
        for event in events:
            response = http.get(f"/calls/{event['id']}")
            requests += 1
            if response.status_code == 404:
                continue
            response.raise_for_status()
            call = response.json()
            for index, turn in enumerate(call.get("transcript") or []):
                turns.append({"call_id": call["id"], "turn_index": index, **turn})
            calls.append(
                {
                    "call_id": call["id"],
                    "lead_id": call.get("leadId"),
                    "direction": call.get("direction"),
                    "call_status": call.get("callStatus"),
                    "duration_seconds": call.get("durationSeconds"),
                    "created_at": call.get("createdAt"),
                    "summary": call.get("summary"),
                    "raw": json.dumps(call),
                }
            )

    leads_df = pd.DataFrame([{"lead_id": x["id"], "raw": json.dumps(x)} for x in leads])
    events_df = pd.json_normalize(events)
    calls_df = pd.DataFrame(calls)
    calls_df["created_at"] = pd.to_datetime(calls_df["created_at"], utc=True)
    turns_df = pd.DataFrame(turns)
    with duckdb.connect(params["db_path"]) as con:
        for name, frame in (("leads", leads_df), ("call_events", events_df), ("calls", calls_df)):
            con.register("frame", frame)
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM frame")
            con.unregister("frame")
        con.register("frame", turns_df)
        con.execute("CREATE OR REPLACE TABLE call_transcript_turns AS SELECT * FROM frame")
        con.unregister("frame")
        rows = {
            "leads": con.execute("SELECT count(*) FROM leads").fetchone()[0],
            "call_events": con.execute("SELECT count(*) FROM call_events").fetchone()[0],
            "calls": con.execute("SELECT count(*) FROM calls").fetchone()[0],
            "summaries": con.execute("SELECT count(*) FROM calls WHERE summary IS NOT NULL").fetchone()[0],
            "turns": con.execute("SELECT count(*) FROM call_transcript_turns").fetchone()[0],
        }
    return {"rows": rows, "requests": requests}


if __name__ == "__main__":
    run(load)
