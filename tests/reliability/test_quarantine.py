"""Issue 11 through the real job: no single record stops the pipeline, nothing is lost silently.

One run (`apten_pipeline_job`'s leads, then call_events and the calls op over the partitions) is
fed every case of `quarantine_corpus` at once through a loopback proxy in front of the sandbox.
For each case: the bad record is stored with a NULL (or U+FFFD) and a counted warning, or sits in
`apten.rejected_records` with its reason; every honest record equals the fault-free run; the runs
succeed (persistent 4xx answers are quarantined skips); a re-run changes nothing; new leads still
arrive after a lead dated 2099; the late-summary sensor still ticks over a stored absurd row.
All of it on every warehouse backend (a DuckDB file; a database on the throwaway PostgreSQL server).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pytest

from apten_assets.defs.apten.resources import AptenWarehouse
from apten_assets.defs.apten.sensors import build_late_summary_sensor
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.sync import LEADS_CURSOR, WATERMARK_SKEW
from apten_assets.lib.tables import CALLS
from apten_assets.sandbox.data import SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from apten_assets.warehouse import open_store
from tests.lib.scripted_server import Reply, Seen
from tests.reliability.proxy import HostileProxy
from tests.reliability.quarantine_corpus import (
    ALL_CASES,
    CALL_CASES,
    CALLS_REFUSED,
    DEEP_BODIES,
    DIGITS_400,
    EVENT_CASES,
    LEAD_CASES,
    LEAD_EVENTS_REFUSED,
    LONG_ID,
    NESTED_500,
    QUARANTINED,
    REPLACED,
    STORED,
    STORED_NULL,
    STORED_REPLACED,
    Case,
    deep_json_text,
    json_text,
)
from tests.reliability.test_hostile import KEY, Pipeline, run_new, run_once
from tools.reliability.harness import (
    Warehouses,
    drill_spec,
    environment,
    partition_range,
    pipeline_env,
    snapshot,
)

NEW_LEAD_ID = "lead-arriving-after-2099"
# Enough leads for every case to have its own, and honest ones left over.
SPEC = drill_spec(n_leads=36, calls_per_lead=4, days=1, seed=5)


@dataclass
class Victims:
    """Each case's record, on a lead of its own, so no case hides another."""

    record: dict[str, str]  # case name -> lead id, event (= call) id or call id
    leads: set[str]  # every lead a case touches
    calls: set[str]  # every call of those leads


def pick_victims(dataset: SandboxDataset, sandbox: SandboxServer) -> Victims:
    leads = iter(lead["id"] for lead in dataset.leads if not lead["deleted"])
    missing = set(dataset.missing_call_ids)
    record: dict[str, str] = {}
    touched: set[str] = set()

    def calls_of(lead_id: str) -> list[str]:
        return [e["id"] for e in dataset.events(lead_id) if e["type"] == "CALL" and e["id"] not in missing]

    deep_leads = [c for c in DEEP_BODIES if c.where == "lead_events"]
    deep_calls = [c for c in DEEP_BODIES if c.where == "call_fetch"]
    for case in [*LEAD_CASES, *LEAD_EVENTS_REFUSED, *deep_leads]:
        record[case.name] = next(leads)
        touched.add(record[case.name])
    for case in EVENT_CASES:
        lead_id = next(lead for lead in leads if calls_of(lead))
        record[case.name] = calls_of(lead_id)[0]
        touched.add(lead_id)
    # Calls with turns and a summary, so every turn and summary case has something to break.
    rich = (
        call_id
        for lead_id in leads
        for call_id in calls_of(lead_id)
        if (body := sandbox.state.call_json(call_id)) and body.get("transcript") and body.get("summary")
    )
    for case in [*CALL_CASES, *CALLS_REFUSED, *deep_calls]:
        record[case.name] = next(rich)
    touched |= {lead_of(dataset, record[case.name]) for case in [*CALL_CASES, *CALLS_REFUSED, *deep_calls]}
    calls = {e["id"] for lead_id in touched for e in dataset.events(lead_id) if e["type"] == "CALL"}
    return Victims(record, touched, calls)


def lead_of(dataset: SandboxDataset, call_id: str) -> str:
    return next(e["roomId"] for e in dataset.call_events() if e["id"] == call_id)


def install(proxy: HostileProxy, victims: Victims, state: dict[str, Any]) -> None:
    """The proxy rules that serve every case (and, once `state["new_lead"]` is set, one more lead)."""
    by_lead = {victims.record[c.name]: c for c in LEAD_CASES}

    def leads(seen: Seen, proxy: HostileProxy) -> Reply:
        body = proxy.forward(seen).json()
        for lead in body["leads"]:
            case = by_lead.get(lead["id"])
            if case is not None and case.edit is not None:
                case.edit(lead)
        new = state.get("new_lead")
        # Served like the API would: only to a listing whose updatedSince it passes.
        if new is not None and seen.query.get("updatedSince", "") <= new["updatedAt"]:
            body["leads"].append(new)
        return json_reply(body)

    proxy.rules[("leads", None)] = leads

    event_cases = {victims.record[c.name]: c for c in EVENT_CASES}
    for call_id, case in event_cases.items():

        def events(seen: Seen, proxy: HostileProxy, call_id: str = call_id, case: Case = case) -> Reply:
            body = proxy.forward(seen).json()
            for event in body["events"]:
                if event["id"] == call_id and case.edit is not None:
                    case.edit(event)
            return json_reply(body)

        proxy.rules[("events", lead_of_event(proxy, call_id))] = events

    for case in LEAD_EVENTS_REFUSED:
        refused = Reply(status=case.status or 404, json={"message": f"lead refused ({case.status})"})
        proxy.rules[("events", victims.record[case.name])] = lambda seen, proxy, r=refused: r

    for case in CALL_CASES:
        body = copy.deepcopy(proxy.sandbox.state.call_json(victims.record[case.name]))
        assert case.edit is not None and body is not None
        case.edit(body)
        reply = json_reply(body)
        proxy.rules[("call", victims.record[case.name])] = lambda seen, proxy, r=reply: r
    for case in CALLS_REFUSED:
        refused = Reply(status=case.status or 400, json={"message": f"call refused ({case.status})"})
        proxy.rules[("call", victims.record[case.name])] = lambda seen, proxy, r=refused: r
    for case in DEEP_BODIES:
        record = victims.record[case.name]
        if case.name == "call_body_nested_30000_deep":
            text = deep_json_text(f'{{"id": "{record}", "nested": ', "}")
        elif case.name == "call_transcript_nested_30000_deep":
            text = deep_json_text(f'{{"id": "{record}", "transcript": [{{"role": "user", "content": ', "}]}")
        else:
            text = deep_json_text(
                '{"events": [{"id": "e", "type": "CALL", "data": ', '}], "nextToken": null}'
            )
        deep = Reply(text=text, headers={"content-type": "application/json"})
        endpoint = "events" if case.where == "lead_events" else "call"
        proxy.rules[(endpoint, record)] = lambda seen, proxy, r=deep: r


def json_reply(body: Any) -> Reply:
    """`body` as JSON, with the corpus's literal tokens (`1e400`) as they are."""
    return Reply(body=json_text(body).encode())


def lead_of_event(proxy: HostileProxy, call_id: str) -> str:
    return lead_of(proxy.sandbox.state.dataset, call_id)


@dataclass
class QuarantineRun:
    dataset: SandboxDataset
    victims: Victims
    first: Pipeline  # the tables as the hostile run left them (a copy)
    rerun: Pipeline
    after_new_lead: Pipeline
    new_lead_sent_at: str
    sensor_result: dg.SensorResult
    sensor_settings: AptenSettings


def copy_of(p: Pipeline, warehouses: Warehouses, name: str) -> Pipeline:
    return Pipeline(p.leads, p.calls, warehouses.copy(p.warehouse, name))


@pytest.fixture(scope="module")
def dataset() -> SandboxDataset:
    return SandboxDataset(SPEC)


@pytest.fixture(scope="module")
def baseline(dataset: SandboxDataset, warehouses: Warehouses) -> Pipeline:
    with SandboxServer(dataset, api_key=KEY) as sandbox:
        result = run_new(sandbox.base_url, warehouses, "quarantine_baseline", dataset)
    assert result.calls is not None and result.calls.success, result.calls and result.calls.error
    return result


@pytest.fixture(scope="module")
def run(dataset: SandboxDataset, warehouses: Warehouses) -> QuarantineRun:
    url, inbox = warehouses.new("hostile"), warehouses.inbox("hostile")
    state: dict[str, Any] = {}
    with SandboxServer(dataset, api_key=KEY) as sandbox, HostileProxy(sandbox) as proxy:
        victims = pick_victims(dataset, sandbox)
        install(proxy, victims, state)
        first = copy_of(run_once(proxy.base_url, url, dataset, inbox=inbox), warehouses, "hostile_first")
        rerun = copy_of(run_once(proxy.base_url, url, dataset, inbox=inbox), warehouses, "hostile_rerun")
        # A lead created after the 2099 one was stored: it must still be fetched.
        sent_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        template = next(lead for lead in dataset.leads if lead["id"] not in victims.leads)
        state["new_lead"] = {**copy.deepcopy(template), "id": NEW_LEAD_ID, "updatedAt": sent_at}
        after = run_once(proxy.base_url, url, dataset, inbox=inbox)
        # A row written before the bounds existed: 1e300 seconds long, still pending.
        with open_store(url) as store:
            created = datetime.now(UTC) - timedelta(hours=1)
            store.upsert(
                CALLS,
                [
                    {
                        "call_id": "stored-before-the-bounds",
                        "created_at": created,
                        "duration_seconds": 1e300,
                        "summary_status": "pending",
                    }
                ],
            )
        first_day, _ = partition_range(dataset)
        env = pipeline_env(proxy.base_url, url, first_day, api_key=KEY, inbox=inbox)
        with environment(env):
            settings = AptenSettings.from_env()
            sensor = build_late_summary_sensor(settings)
            context = dg.build_sensor_context(resources={"warehouse": AptenWarehouse(url=url)})
            result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return QuarantineRun(dataset, victims, first, rerun, after, sent_at, result, settings)


def rejected(p: Pipeline) -> dict[tuple[str, str | None], tuple]:
    rows = p.query(
        "SELECT source, record_id, reason, payload, payload_bytes, times_seen, resolved_at "
        "FROM apten.rejected_records"
    )
    return {(row[0], row[1]): row[2:] for row in rows}


def test_the_runs_succeed_with_every_case_in_them(run: QuarantineRun) -> None:
    for p in (run.first, run.rerun, run.after_new_lead):
        assert p.leads.success, p.leads.error
        assert p.calls is not None and p.calls.success, p.calls and p.calls.error


def test_every_honest_record_lands_exactly(run: QuarantineRun, baseline: Pipeline) -> None:
    want, got = snapshot(baseline.warehouse), snapshot(run.first.warehouse)
    leads = run.victims.leads
    calls = run.victims.calls
    for name, snap in want.items():
        if name in ("_sync_state", "rejected_records"):
            continue
        key_is_lead = name == "leads"
        w = {k: v for k, v in snap.by_key().items() if k[0] not in (leads if key_is_lead else calls)}
        g = {k: v for k, v in got[name].by_key().items() if k[0] not in (leads if key_is_lead else calls)}
        assert w == g, name
        assert w or name in ("webhook_deliveries", "call_transfers"), name


LEAD_COLUMN = {
    "lead_first_name_surrogate": ("first_name", "Jo" + REPLACED),
    "lead_last_name_surrogate": ("last_name", REPLACED + "e"),
    "lead_updated_year_9999": ("updated_at", None),
    "lead_created_year_1": ("created_at", None),
    "lead_first_name_nul": ("first_name", "Jo" + REPLACED),
}
EVENT_COLUMN = {
    "event_status_surrogate": ("call_status", REPLACED),
    "event_duration_400_digits": ("duration_seconds", None),
    "event_duration_beyond_2_53": ("duration_seconds", None),
    "event_duration_1e300": ("duration_seconds", None),
    "event_duration_1e400": ("duration_seconds", None),
    "event_status_nul": ("call_status", REPLACED + "ENDED"),
}
CALL_COLUMN = {
    "call_duration_1e300": ("calls", "duration_seconds", None),
    "call_duration_1e400": ("calls", "duration_seconds", None),
    "call_duration_400_digits": ("calls", "duration_seconds", None),
    "call_duration_beyond_2_53": ("calls", "duration_seconds", None),
    "call_created_year_9999": ("calls", "created_at", None),
    "summary_surrogate": ("call_summaries", "summary", None),
    "turn_content_surrogate": ("call_transcript_turns", "content", "Hi " + REPLACED),
    "turn_end_year_1": ("call_transcript_turns", "end_time", None),
    "turn_start_year_9999": ("call_transcript_turns", "start_time", None),
    "turn_content_nul": ("call_transcript_turns", "content", "Hi " + REPLACED),
}
# Cases whose value lives in `calls.raw` only: what raw's `metadata` must hold.
CALL_RAW = {
    "call_keys_differing_only_by_nul": {"k": 1, "k" + REPLACED: 2},
    "call_raw_400_digit_number": {"n": DIGITS_400},
    "call_raw_nested_500_deep": NESTED_500,
    "call_raw_nan": {"score": None, "n": 1},
    "call_raw_1e400": {"score": None, "n": 1},
}
# The id a quarantined case is filed under, where it is not the victim's own.
QUARANTINED_IDS = {
    "lead_id_surrogate": "lead-" + REPLACED,
    "lead_id_nul": "lead-nul-" + REPLACED,
    "lead_id_10_kb": LONG_ID,
    "event_id_10_kb": "call-" + LONG_ID,
}


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_each_bad_record_is_stored_with_nulls_or_quarantined_with_its_reason(
    run: QuarantineRun, case: Case
) -> None:
    p = run.first
    record = run.victims.record[case.name]
    quarantine = rejected(p)
    if case.name in LEAD_COLUMN:
        column, value = LEAD_COLUMN[case.name]
        ((stored, raw),) = p.query(f"SELECT {column}, raw FROM apten.leads WHERE lead_id = ?", [record])
        assert stored == value
        assert json.loads(raw)  # the record stays with its raw JSON
    elif case.name in EVENT_COLUMN:
        column, value = EVENT_COLUMN[case.name]
        ((stored, data),) = p.query(
            f"SELECT {column}, data FROM apten.call_events WHERE call_id = ?", [record]
        )
        assert stored == value
        if value is None:
            kept = json.loads(data)["durationSeconds"]
            # Kept as sent in `data`, but for a number no JSON holds once read: null there, counted.
            assert kept is None if case.name == "event_duration_1e400" else kept is not None
    elif case.name in CALL_COLUMN:
        table, column, value = CALL_COLUMN[case.name]
        where = "call_id = ?" + (" AND turn_index = 0" if table == "call_transcript_turns" else "")
        ((stored,),) = p.query(f"SELECT {column} FROM apten.{table} WHERE {where}", [record])
        if case.name == "summary_surrogate":
            assert stored.startswith(REPLACED + " summary")
        else:
            assert stored == value
        assert p.query("SELECT raw IS NOT NULL FROM apten.calls WHERE call_id = ?", [record]) == [(True,)]
    elif case.name in CALL_RAW:
        ((raw, turns),) = p.query(
            "SELECT raw, (SELECT count(*) FROM apten.call_transcript_turns AS t WHERE t.call_id = c.call_id) "
            "FROM apten.calls AS c WHERE call_id = ?",
            [record],
        )
        assert json.loads(raw)["metadata"] == CALL_RAW[case.name] and turns > 0
    elif case.name == "lead_updated_2099":
        ((updated,),) = p.query("SELECT updated_at FROM apten.leads WHERE lead_id = ?", [record])
        assert updated == datetime(2099, 1, 1, tzinfo=UTC)
    elif case.outcome == QUARANTINED:
        source = {"leads": "leads", "events": "call_events", "lead_events": "call_events"}.get(
            case.where, "calls"
        )
        record_id = QUARANTINED_IDS.get(case.name, record)
        reason, payload, size, times, resolved = quarantine[(source, record_id)]
        expected = {
            "lead_id_surrogate": "not valid Unicode",
            "lead_id_nul": "not valid Unicode",
            "lead_id_10_kb": "longer than 512 characters",
            "event_id_10_kb": "longer than 512 characters",
            "event_timestamp_year_1": "out of range",
            "event_timestamp_year_9999": "out of range",
        }.get(case.name, "APTEN_MAX_JSON_DEPTH" if case.cls == "deep" else f"HTTP {case.status}")
        assert expected in reason
        assert (times, resolved) == (1, None)
        assert KEY not in reason and KEY not in (payload or "")
        if case.where in ("leads", "events"):
            assert size > 0 and json.loads(payload)  # the record as received
        table, key = {
            "leads": ("leads", "lead_id"),
            "call_events": ("call_events", "call_id"),
            "calls": ("calls", "call_id"),
        }[source]
        if case.where != "lead_events":
            assert p.query(f"SELECT count(*) FROM apten.{table} WHERE {key} = ?", [record_id]) == [(0,)]
    else:
        pytest.fail(f"no expectation written for {case.name}")


def test_quarantined_records_are_counted_in_the_run_metadata(run: QuarantineRun) -> None:
    p = run.first
    expected = {
        "apten/leads": sorted(QUARANTINED_IDS[c.name] for c in LEAD_CASES if c.outcome == QUARANTINED),
        "apten/call_events": sorted(
            QUARANTINED_IDS.get(c.name, run.victims.record[c.name])
            for c in [*EVENT_CASES, *LEAD_EVENTS_REFUSED, *DEEP_BODIES]
            if c.outcome == QUARANTINED and c.where != "call_fetch"
        ),
        "apten/calls": sorted(
            run.victims.record[c.name] for c in [*CALLS_REFUSED, *DEEP_BODIES] if c.where == "call_fetch"
        ),
    }
    for asset, ids in expected.items():
        meta = p.metadata(asset)
        assert meta["quarantined"] == len(ids), asset
        assert sorted(meta["quarantined_ids"]) == ids, asset
    warned = [case for case in CALL_CASES if case.outcome != STORED]
    assert p.metadata("apten/calls")["field_warnings"] >= len(warned)
    warned = [case for case in EVENT_CASES if case.outcome in (STORED_NULL, STORED_REPLACED)]
    assert p.metadata("apten/call_events")["field_warnings"] >= len(warned)


def test_a_rerun_changes_nothing_and_counts_the_sightings(run: QuarantineRun) -> None:
    assert snapshot(run.first.warehouse) == snapshot(run.rerun.warehouse)
    first, again = rejected(run.first), rejected(run.rerun)
    assert first.keys() == again.keys() and first
    # Events and calls are listed again and rejected again; a lead is listed again only once it
    # changes (the watermark passed it), and then it is resolved or rejected anew.
    assert {key: row[3] for key, row in again.items()} == {
        key: 1 if key[0] == "leads" else 2 for key in again
    }


def test_a_lead_dated_2099_does_not_hold_back_the_leads_that_follow(run: QuarantineRun) -> None:
    ((cursor,),) = run.first.query(f"SELECT value FROM apten._sync_state WHERE name = '{LEADS_CURSOR}'")
    assert datetime.fromisoformat(cursor) <= datetime.now(UTC) + WATERMARK_SKEW
    assert run.first.metadata("apten/leads")["future_dated"] == 1
    stored = run.after_new_lead.query("SELECT lead_id FROM apten.leads WHERE lead_id = ?", [NEW_LEAD_ID])
    assert stored == [(NEW_LEAD_ID,)]


def test_the_late_summary_sensor_ticks_over_a_stored_absurd_duration(run: QuarantineRun) -> None:
    result = run.sensor_result
    message = result.skip_reason.skip_message if result.skip_reason else ""
    assert result.run_requests or "pending" in message
    assert "warehouse busy" not in message
