"""Hostile and malformed input through the whole pipeline (Dagster job -> warehouse), one test per
case, on every warehouse backend (a DuckDB file; a database on the throwaway PostgreSQL server).

Model- and client-level cases live in tests/lib (test_models.py, test_client.py: repeating
nextToken, redirects, HTML bodies, key hygiene...). Here each case is fed to a real run and we
check what a data team sees: either a counted, logged skip carrying the record's id with the rest
of the run stored, or a clear error, and never a partition marked done with records missing.

Runs (each on its own sandbox and warehouse, same dataset):
  * baseline: no hostility.
  * records: every record-level case at once (leads, events, calls); the run succeeds.
  * event_fetches / call_fetches: one lead's events or one call failing in each way; the step
    ends with a clear error naming them, after storing everything else; a plain re-run completes.
  * fatal cases (403, a broken leads listing): the run fails at once with a clear message.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from apten_assets.sandbox.data import SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from apten_assets.warehouse import open_store
from tests.lib.scripted_server import Reply, ScriptedServer, Seen
from tests.reliability.proxy import HostileProxy
from tests.warehouse.helpers import query
from tools.reliability.harness import (
    RunOutcome,
    Warehouses,
    compare,
    describe_diffs,
    drill_spec,
    environment,
    partition_range,
    pipeline_env,
    run_pipeline,
    snapshot,
)

KEY = "sk-test-hostile-7a1e0c55"
SPEC = drill_spec(n_leads=24, calls_per_lead=4, days=1, seed=5)
READ_TIMEOUT = 0.5


@dataclass
class Pipeline:
    """One pass: leads, then call_events and the calls op over the dataset's partitions."""

    leads: RunOutcome
    calls: RunOutcome | None
    warehouse: str  # its URL

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Rows of `sql` (`?` parameters; JSON as text) in a read-only session of its own."""
        with open_store(self.warehouse, read_only=True) as store:
            return query(store, sql, params or [])

    def metadata(self, asset: str) -> dict[str, Any]:
        assert self.calls is not None
        source = self.leads if asset == "apten/leads" else self.calls
        return source.step_metadata[asset]

    def skipped(self, asset: str) -> dict[str | None, str]:
        return {r["id"]: r["reason"] for r in self.metadata(asset).get("skipped_records", [])}

    @property
    def warnings(self) -> str:
        return "\n".join(self.leads.warnings + (self.calls.warnings if self.calls else []))


def run_once(
    base_url: str, warehouse: str, dataset: SandboxDataset, *, inbox: Path, key: str = KEY
) -> Pipeline:
    first, last = partition_range(dataset)
    env = pipeline_env(
        base_url, warehouse, first, api_key=key, read_timeout_seconds=READ_TIMEOUT, inbox=inbox
    )
    instance = dg.DagsterInstance.ephemeral()
    with environment(env):
        leads = run_pipeline("leads", instance=instance)
        calls = None
        if leads.success:
            calls = run_pipeline("events_and_calls", partition_range_keys=(first, last), instance=instance)
    return Pipeline(leads, calls, warehouse)


def run_new(base_url: str, warehouses: Warehouses, name: str, dataset: SandboxDataset) -> Pipeline:
    """`run_once` into a new warehouse called `name` (its inbox: `warehouses.inbox(name)`)."""
    return run_once(base_url, warehouses.new(name), dataset, inbox=warehouses.inbox(name))


@pytest.fixture(scope="module")
def dataset() -> SandboxDataset:
    return SandboxDataset(SPEC)


@pytest.fixture(scope="module")
def baseline(dataset: SandboxDataset, warehouses: Warehouses) -> Pipeline:
    with SandboxServer(dataset, api_key=KEY) as sandbox:
        result = run_new(sandbox.base_url, warehouses, "baseline", dataset)
    assert result.calls is not None and result.calls.success, result.calls and result.calls.error
    return result


# --------------------------------------------------------------------------- choosing victims


@dataclass(frozen=True)
class Victims:
    """Distinct leads and calls for each case, so cases never mask each other."""

    leads: list[str]  # leads whose events are served untouched
    calls: list[str]  # found calls of those leads
    not_found_call: str

    @classmethod
    def pick(cls, dataset: SandboxDataset) -> Victims:
        missing = set(dataset.missing_call_ids)
        leads = [lead["id"] for lead in dataset.leads if not lead["deleted"]]
        calls = [
            e["id"]
            for lead_id in leads
            for e in dataset.events(lead_id)
            if e["type"] == "CALL" and e["id"] not in missing
        ]
        assert missing, "the dataset needs a CALL event whose call answers 404"
        return cls(leads, calls, sorted(missing)[0])


def call_lead(dataset: SandboxDataset, call_id: str) -> str:
    return next(
        lead["id"] for lead in dataset.leads if any(e["id"] == call_id for e in dataset.events(lead["id"]))
    )


# --------------------------------------------------------------------------- record-level run

LEAD_CASES = ["lead_without_id", "lead_id_not_a_string", "lead_naive", "lead_offset", "lead_bad_ts"]
EVENT_CASES = [
    "event_without_id",
    "event_id_not_a_string",
    "event_timestamp_unparseable",
    "event_timestamp_naive",
    "event_timestamp_offset",
    "event_unknown_enums",
    "event_unknown_type",
    "event_data_not_an_object",
    "event_updated_at_unparseable",
]
CALL_CASES = [
    "call_without_id",
    "call_id_not_a_string",
    "call_id_mismatch",
    "transcript_null",
    "transcript_not_a_list",
    "turn_without_content",
    "turn_not_an_object",
    "transcript_10000_turns",
    "summary_1mb",
    "created_at_naive",
    "created_at_offset",
    "created_at_unparseable",
    "unknown_enums",
    "wrong_json_types",
    "nan_duration",
    "summary_not_a_string",
]
MB_SUMMARY = "Lead asked about pricing. " * 40330  # just over 1 MB


@dataclass
class RecordRun:
    pipeline: Pipeline
    victim_lead: dict[str, str]
    victim_event: dict[str, str]
    victim_call: dict[str, str]
    originals: dict[str, Any]
    duplicated_lead: str


def _iso(moment: datetime, tz: timezone | None = None) -> str:
    if tz is None:
        return moment.astimezone(UTC).replace(tzinfo=None).isoformat()  # no zone at all
    return moment.astimezone(tz).isoformat()


@pytest.fixture(scope="module")
def record_run(dataset: SandboxDataset, warehouses: Warehouses) -> RecordRun:
    victims = Victims.pick(dataset)
    leads, calls = iter(victims.leads), iter(victims.calls)
    victim_lead = {case: next(leads) for case in ["lead_naive", "lead_offset", "lead_bad_ts"]}
    duplicated_lead = next(leads)
    # Event cases take a call each, from leads not used above; call cases take later calls.
    used = set(victim_lead.values()) | {duplicated_lead}
    free_calls = [c for c in calls if call_lead(dataset, c) not in used]
    victim_event = {case: free_calls.pop(0) for case in EVENT_CASES}
    victim_call = {case: free_calls.pop() for case in CALL_CASES}
    originals: dict[str, Any] = {}

    with SandboxServer(dataset, api_key=KEY) as sandbox, HostileProxy(sandbox) as proxy:
        state = sandbox.state
        events = {e["id"]: e for e in dataset.call_events()}
        for case, call_id in victim_event.items():
            event = copy.deepcopy(events[call_id])
            originals[case] = copy.deepcopy(event)
            moment = datetime.fromisoformat(event["timestamp"])
            if case == "event_without_id":
                del event["id"]
            elif case == "event_id_not_a_string":
                event["id"] = 987654
            elif case == "event_timestamp_unparseable":
                event["timestamp"] = "yesterday at noon"
            elif case == "event_timestamp_naive":
                event["timestamp"] = _iso(moment)
            elif case == "event_timestamp_offset":
                event["timestamp"] = _iso(moment, timezone(timedelta(hours=5, minutes=30)))
            elif case == "event_unknown_enums":
                event["data"] = {**event["data"], "direction": "SIDEWAYS", "callStatus": "TELEPORTED"}
            elif case == "event_unknown_type":
                event["type"] = "VIDEO_CALL"
            elif case == "event_data_not_an_object":
                event["data"] = "call happened"
            elif case == "event_updated_at_unparseable":
                event["updatedAt"] = "13/13/2026"
            state.event_overrides[call_id] = event

        for case, call_id in victim_call.items():
            body = copy.deepcopy(state.call_json(call_id))
            assert body is not None
            originals[case] = copy.deepcopy(body)
            created = datetime.fromisoformat(body["createdAt"])
            if case == "call_without_id":
                del body["id"]
            elif case == "call_id_not_a_string":
                body["id"] = 42
            elif case == "call_id_mismatch":
                body["id"] = victim_call["call_without_id"]
            elif case == "transcript_null":
                body["transcript"] = None
            elif case == "transcript_not_a_list":
                body["transcript"] = "see attachment"
            elif case == "turn_without_content":
                body["transcript"] = [{"role": "user", "startTime": body["createdAt"]}]
            elif case == "turn_not_an_object":
                body["transcript"] = ["hello?", {"role": "assistant", "content": "Hi, this is Apten."}]
            elif case == "transcript_10000_turns":
                body["transcript"] = [
                    {"role": ("assistant", "user")[i % 2], "content": f"turn {i}"} for i in range(10_000)
                ]
            elif case == "summary_1mb":
                body["summary"] = MB_SUMMARY
            elif case == "created_at_naive":
                body["createdAt"] = _iso(created)
            elif case == "created_at_offset":
                body["createdAt"] = _iso(created, timezone(timedelta(hours=-7)))
            elif case == "created_at_unparseable":
                body["createdAt"] = "last Tuesday"
            elif case == "unknown_enums":
                body.update(callStatus="VOICEMAIL_DROPPED", direction="SIDEWAYS", answeredBy="fax_machine")
                body["transcript"] = [{"role": "ROBOT", "content": "beep"}]
            elif case == "wrong_json_types":
                body.update(isTransfer="true", durationSeconds="145")
            elif case == "nan_duration":
                body["durationSeconds"] = float("nan")
            elif case == "summary_not_a_string":
                body["summary"] = {"text": "a summary in an object"}
            state.call_overrides[call_id] = body

        def edit_leads(page: dict[str, Any]) -> dict[str, Any]:
            for lead in page["leads"]:
                for case, lead_id in victim_lead.items():
                    if lead["id"] != lead_id:
                        continue
                    created = datetime.fromisoformat(lead["createdAt"])
                    if case == "lead_naive":
                        lead["createdAt"] = _iso(created)
                    elif case == "lead_offset":
                        lead["createdAt"] = _iso(created, timezone(timedelta(hours=9)))
                    elif case == "lead_bad_ts":
                        lead["lastActivityAt"] = "soon"
                        lead["favouriteColour"] = "teal"  # an unknown field
            page["leads"] += [
                {"firstName": "Nameless", "updatedAt": "2026-05-14T10:00:00.000Z"},
                {"id": 12345, "firstName": "Numeric", "updatedAt": "2026-05-14T10:00:00.000Z"},
            ]
            return page

        proxy.leads_page_edit = edit_leads
        proxy.rules[("events", duplicated_lead)] = _split_with_duplicate
        pipeline = run_new(proxy.base_url, warehouses, "records", dataset)
    return RecordRun(pipeline, victim_lead, victim_event, victim_call, originals, duplicated_lead)


def _split_with_duplicate(seen: Seen, proxy: HostileProxy) -> Reply:
    """Serve the lead's events in two pages; the second repeats the first page's last event."""
    query = {k: v for k, v in seen.query.items() if k != "nextToken"}
    whole = proxy.forward(Seen(seen.t, seen.method, seen.path, query, seen.headers)).json()["events"]
    half = max(1, len(whole) // 2)
    if seen.query.get("nextToken") == "page-2":
        return Reply(json={"events": whole[half - 1 :], "nextToken": None})
    return Reply(json={"events": whole[:half], "nextToken": "page-2"})


def test_record_level_hostility_does_not_stop_the_run(record_run: RecordRun) -> None:
    p = record_run.pipeline
    assert p.leads.success and p.calls is not None and p.calls.success, p.calls and p.calls.error


def test_records_untouched_by_hostility_equal_the_fault_free_run(
    record_run: RecordRun, baseline: Pipeline, dataset: SandboxDataset
) -> None:
    touched = set(record_run.victim_event.values()) | set(record_run.victim_call.values())
    want, got = snapshot(baseline.warehouse), snapshot(record_run.pipeline.warehouse)
    for name in ("call_events", "calls", "call_summaries", "call_transcript_turns"):
        w = {k: v for k, v in want[name].by_key().items() if k[0] not in touched}
        g = {k: v for k, v in got[name].by_key().items() if k[0] not in touched}
        assert w == g, name


# leads


def test_lead_without_id_is_skipped_and_counted(record_run: RecordRun) -> None:
    p = record_run.pipeline
    assert "'id' is missing" in p.skipped("apten/leads")[None]
    assert p.metadata("apten/leads")["skipped"] == 2


def test_lead_with_a_numeric_id_is_skipped_with_its_id(record_run: RecordRun) -> None:
    p = record_run.pipeline
    assert "not a string" in p.skipped("apten/leads")["12345"]
    assert "skipped record '12345'" in p.warnings
    assert p.query("SELECT count(*) FROM apten.leads WHERE lead_id = '12345'") == [(0,)]


@pytest.mark.parametrize("case", ["lead_naive", "lead_offset"])
def test_lead_timestamps_without_zone_or_with_offset_are_stored_in_utc(
    record_run: RecordRun, baseline: Pipeline, case: str
) -> None:
    lead_id = record_run.victim_lead[case]
    sql = "SELECT created_at FROM apten.leads WHERE lead_id = ?"
    assert record_run.pipeline.query(sql, [lead_id]) == baseline.query(sql, [lead_id])


def test_lead_with_unparseable_timestamp_and_unknown_field_is_kept(record_run: RecordRun) -> None:
    lead_id = record_run.victim_lead["lead_bad_ts"]
    [(activity, raw)] = record_run.pipeline.query(
        "SELECT last_activity_at, raw FROM apten.leads WHERE lead_id = ?", [lead_id]
    )
    assert activity is None
    assert json.loads(raw)["favouriteColour"] == "teal"
    # Without lastActivityAt the lead cannot be ruled out, so its calls were still scanned.
    assert record_run.pipeline.query(
        "SELECT count(*) > 0 FROM apten.call_events WHERE lead_id = ?", [lead_id]
    )[0][0]


# events


@pytest.mark.parametrize(
    ("case", "record_id", "reason"),
    [
        ("event_without_id", None, "'id' is missing"),
        ("event_id_not_a_string", "987654", "not a string"),
        ("event_timestamp_unparseable", "<call>", "not an ISO 8601 timestamp"),
    ],
)
def test_malformed_event_is_skipped_with_its_id(
    record_run: RecordRun, case: str, record_id: str | None, reason: str
) -> None:
    call_id = record_run.victim_event[case]
    record_id = call_id if record_id == "<call>" else record_id
    p = record_run.pipeline
    assert reason in p.skipped("apten/call_events")[record_id]
    assert p.query("SELECT count(*) FROM apten.call_events WHERE call_id = ?", [call_id]) == [(0,)]
    if record_id is not None:
        assert f"skipped record '{record_id}'" in p.warnings


@pytest.mark.parametrize("case", ["event_timestamp_naive", "event_timestamp_offset"])
def test_event_timestamp_without_zone_or_with_offset_lands_in_the_same_utc_instant(
    record_run: RecordRun, baseline: Pipeline, case: str
) -> None:
    call_id = record_run.victim_event[case]
    sql = "SELECT occurred_at FROM apten.call_events WHERE call_id = ?"
    assert record_run.pipeline.query(sql, [call_id]) == baseline.query(sql, [call_id]) != []


def test_unknown_event_enum_values_are_stored_as_sent(record_run: RecordRun) -> None:
    call_id = record_run.victim_event["event_unknown_enums"]
    assert record_run.pipeline.query(
        "SELECT direction, call_status FROM apten.call_events WHERE call_id = ?", [call_id]
    ) == [("SIDEWAYS", "TELEPORTED")]


def test_unknown_event_type_is_counted_never_stored_as_a_call(record_run: RecordRun) -> None:
    call_id = record_run.victim_event["event_unknown_type"]
    p = record_run.pipeline
    assert p.metadata("apten/call_events")["ignored_type_VIDEO_CALL"] == 1
    assert p.query("SELECT count(*) FROM apten.call_events WHERE call_id = ?", [call_id]) == [(0,)]


def test_event_data_that_is_not_an_object_keeps_the_event(record_run: RecordRun) -> None:
    call_id = record_run.victim_event["event_data_not_an_object"]
    assert record_run.pipeline.query(
        "SELECT direction, duration_seconds FROM apten.call_events WHERE call_id = ?", [call_id]
    ) == [(None, None)]


def test_event_with_unparseable_optional_timestamp_is_kept(record_run: RecordRun) -> None:
    call_id = record_run.victim_event["event_updated_at_unparseable"]
    assert record_run.pipeline.query(
        "SELECT updated_at FROM apten.call_events WHERE call_id = ?", [call_id]
    ) == [(None,)]


def test_call_event_whose_call_answers_404_is_kept_as_not_found(record_run: RecordRun) -> None:
    p = record_run.pipeline
    rows = p.query("SELECT call_id FROM apten.calls WHERE summary_status = 'not_found'")
    assert rows and p.metadata("apten/calls")["not_found"] == len(rows)
    assert p.query(
        "SELECT count(*) FROM apten.call_transcript_turns WHERE call_id IN (SELECT call_id FROM "
        "apten.calls WHERE summary_status = 'not_found')"
    ) == [(0,)]


def test_duplicate_events_across_pages_are_stored_once(record_run: RecordRun, baseline: Pipeline) -> None:
    sql = "SELECT call_id FROM apten.call_events WHERE lead_id = ? ORDER BY 1"
    lead_id = record_run.duplicated_lead
    assert record_run.pipeline.query(sql, [lead_id]) == baseline.query(sql, [lead_id]) != []


# calls


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("call_without_id", "'id' is missing"),
        ("call_id_not_a_string", "not a string"),
        ("call_id_mismatch", "body has id"),
    ],
)
def test_call_body_without_its_own_id_is_skipped_with_the_requested_id(
    record_run: RecordRun, case: str, reason: str
) -> None:
    call_id = record_run.victim_call[case]
    p = record_run.pipeline
    assert reason in p.skipped("apten/calls")[call_id]
    assert f"skipped record '{call_id}'" in p.warnings
    # Still known from its CALL event, and asked for again on the next run.
    assert p.query("SELECT count(*) FROM apten.calls WHERE call_id = ?", [call_id]) == [(0,)]
    assert p.query("SELECT count(*) FROM apten.call_events WHERE call_id = ?", [call_id]) == [(1,)]


def _turns(p: Pipeline, call_id: str) -> list[tuple]:
    return p.query(
        "SELECT turn_index, role, content FROM apten.call_transcript_turns WHERE call_id = ? ORDER BY 1",
        [call_id],
    )


@pytest.mark.parametrize("case", ["transcript_null", "transcript_not_a_list"])
def test_call_without_a_transcript_list_is_kept_without_turns(record_run: RecordRun, case: str) -> None:
    call_id = record_run.victim_call[case]
    p = record_run.pipeline
    assert p.query("SELECT summary_status FROM apten.calls WHERE call_id = ?", [call_id]) != []
    assert _turns(p, call_id) == []


def test_turn_without_content_is_stored_with_null_content(record_run: RecordRun) -> None:
    assert _turns(record_run.pipeline, record_run.victim_call["turn_without_content"]) == [(0, "user", None)]


def test_turn_that_is_not_an_object_is_skipped_and_indexes_stay_in_api_order(record_run: RecordRun) -> None:
    call_id = record_run.victim_call["turn_not_an_object"]
    assert _turns(record_run.pipeline, call_id) == [(1, "assistant", "Hi, this is Apten.")]
    assert record_run.pipeline.metadata("apten/calls")["field_warnings"] >= 1


def test_ten_thousand_turn_transcript_is_stored_whole(record_run: RecordRun) -> None:
    call_id = record_run.victim_call["transcript_10000_turns"]
    assert record_run.pipeline.query(
        "SELECT count(*), min(turn_index), max(turn_index), max(c.turn_count) "
        "FROM apten.call_transcript_turns JOIN apten.calls AS c USING (call_id) WHERE call_id = ?",
        [call_id],
    ) == [(10_000, 0, 9_999, 10_000)]


def test_one_megabyte_summary_is_stored_intact(record_run: RecordRun) -> None:
    call_id = record_run.victim_call["summary_1mb"]
    [(summary, status)] = record_run.pipeline.query(
        "SELECT s.summary, c.summary_status FROM apten.call_summaries AS s JOIN apten.calls AS c "
        "USING (call_id) WHERE call_id = ?",
        [call_id],
    )
    assert summary == MB_SUMMARY and len(summary.encode()) > 1_000_000 and status == "ready"


@pytest.mark.parametrize("case", ["created_at_naive", "created_at_offset"])
def test_call_timestamp_without_zone_or_with_offset_is_the_same_utc_instant(
    record_run: RecordRun, baseline: Pipeline, case: str
) -> None:
    call_id = record_run.victim_call[case]
    sql = "SELECT created_at FROM apten.calls WHERE call_id = ?"
    assert record_run.pipeline.query(sql, [call_id]) == baseline.query(sql, [call_id]) != []


def test_unparseable_call_timestamp_is_null_and_the_call_is_kept(record_run: RecordRun) -> None:
    call_id = record_run.victim_call["created_at_unparseable"]
    [(created, raw)] = record_run.pipeline.query(
        "SELECT created_at, raw FROM apten.calls WHERE call_id = ?", [call_id]
    )
    assert created is None and json.loads(raw)["createdAt"] == "last Tuesday"


def test_unknown_call_enum_values_are_stored_as_sent(record_run: RecordRun) -> None:
    call_id = record_run.victim_call["unknown_enums"]
    p = record_run.pipeline
    assert p.query(
        "SELECT call_status, direction, answered_by FROM apten.calls WHERE call_id = ?", [call_id]
    ) == [("VOICEMAIL_DROPPED", "SIDEWAYS", "fax_machine")]
    assert _turns(p, call_id) == [(0, "ROBOT", "beep")]


@pytest.mark.parametrize("case", ["wrong_json_types", "nan_duration"])
def test_values_of_the_wrong_json_type_are_null_never_coerced(record_run: RecordRun, case: str) -> None:
    call_id = record_run.victim_call[case]
    [(is_transfer, duration)] = record_run.pipeline.query(
        "SELECT is_transfer, duration_seconds FROM apten.calls WHERE call_id = ?", [call_id]
    )
    assert duration is None
    if case == "wrong_json_types":
        assert is_transfer is None


def test_summary_that_is_not_a_string_does_not_count_as_a_summary(record_run: RecordRun) -> None:
    call_id = record_run.victim_call["summary_not_a_string"]
    p = record_run.pipeline
    assert p.query("SELECT summary_status FROM apten.calls WHERE call_id = ?", [call_id]) != [("ready",)]
    assert p.query("SELECT count(*) FROM apten.call_summaries WHERE call_id = ?", [call_id]) == [(0,)]


# --------------------------------------------------------------------------- fetch failures


def _always(reply: Reply) -> Any:
    return lambda seen, proxy: reply


def _repeating_token(seen: Seen, proxy: HostileProxy) -> Reply:
    return Reply(json={"events": [], "nextToken": "same-token-forever"})


EVENT_FETCH_CASES = {
    "repeating_next_token": (_repeating_token, "already returned"),
    "html_body": (_always(Reply(text="<html><body>Gateway</body></html>")), "malformed body"),
    "json_array_body": (_always(Reply(json=[{"id": "x"}])), "malformed body"),
    "empty_body": (_always(Reply()), "malformed body"),
    "server_error_every_time": (_always(Reply(status=503, json={"message": "down"})), "HTTP 503"),
}
EVIL_HOST = "127.0.0.2"
CALL_FETCH_CASES = {
    "empty_body": (_always(Reply()), "malformed body"),
    "html_body": (_always(Reply(text="<!doctype html><title>Login</title>")), "malformed body"),
    "json_array_body": (_always(Reply(json=[])), "malformed body"),
    "redirect_to_another_host": (None, f"redirecting to host '{EVIL_HOST}'"),
    "server_error_every_time": (_always(Reply(status=500, json={"message": "boom"})), "HTTP 500"),
    "slower_than_read_timeout": (_always(Reply(json={}, delay=READ_TIMEOUT * 3)), "Timeout"),
}


@dataclass
class FetchFailureRun:
    failed: Pipeline
    rerun: Pipeline
    victims: dict[str, str]
    hits: dict[tuple[str, str | None], int]
    evil_requests: list[Seen]


def keep_copy(p: Pipeline, warehouses: Warehouses, name: str) -> Pipeline:
    """The failed run's tables as they were, before the re-run writes to the same warehouse."""
    return Pipeline(p.leads, p.calls, warehouses.copy(p.warehouse, f"{name}_after_failure"))


@pytest.fixture(scope="module")
def event_fetch_failures(dataset: SandboxDataset, warehouses: Warehouses) -> FetchFailureRun:
    victims = dict(zip(EVENT_FETCH_CASES, Victims.pick(dataset).leads, strict=False))
    with SandboxServer(dataset, api_key=KEY) as sandbox, HostileProxy(sandbox) as proxy:
        for case, lead_id in victims.items():
            proxy.rules[("events", lead_id)] = EVENT_FETCH_CASES[case][0]
        first = run_new(proxy.base_url, warehouses, "event_fetches", dataset)
        failed = keep_copy(first, warehouses, "event_fetches")
        hits = dict(proxy.hits)
        proxy.rules.clear()
        rerun = run_once(proxy.base_url, first.warehouse, dataset, inbox=warehouses.inbox("event_fetches"))
    return FetchFailureRun(failed, rerun, victims, hits, [])


@pytest.fixture(scope="module")
def call_fetch_failures(dataset: SandboxDataset, warehouses: Warehouses) -> Iterator[FetchFailureRun]:
    victims = dict(zip(CALL_FETCH_CASES, reversed(Victims.pick(dataset).calls), strict=False))
    evil = ScriptedServer(lambda seen: Reply(json={"id": "stolen"}), host=EVIL_HOST)
    with evil, SandboxServer(dataset, api_key=KEY) as sandbox, HostileProxy(sandbox) as proxy:
        redirect = Reply(status=302, headers={"Location": f"{evil.base_url}/calls/x?collect=1"})
        for case, call_id in victims.items():
            rule = CALL_FETCH_CASES[case][0]
            proxy.rules[("call", call_id)] = rule if rule is not None else _always(redirect)
        first = run_new(proxy.base_url, warehouses, "call_fetches", dataset)
        failed = keep_copy(first, warehouses, "call_fetches")
        hits = dict(proxy.hits)
        proxy.rules.clear()
        rerun = run_once(proxy.base_url, first.warehouse, dataset, inbox=warehouses.inbox("call_fetches"))
        yield FetchFailureRun(failed, rerun, victims, hits, list(evil.requests))


@pytest.mark.parametrize("case", list(EVENT_FETCH_CASES))
def test_lead_events_that_cannot_be_fetched_fail_the_step_clearly_after_storing_the_rest(
    event_fetch_failures: FetchFailureRun, baseline: Pipeline, dataset: SandboxDataset, case: str
) -> None:
    run = event_fetch_failures
    lead_id = run.victims[case]
    calls_run = run.failed.calls
    assert calls_run is not None and not calls_run.success
    assert "leads' events could not be fetched" in calls_run.error and repr(lead_id) in calls_run.error
    assert f"skipped record '{lead_id}'" in run.failed.warnings
    line = next(w for w in run.failed.warnings.splitlines() if f"skipped record '{lead_id}'" in w)
    assert EVENT_FETCH_CASES[case][1] in line
    assert KEY not in calls_run.error and KEY not in run.failed.warnings
    # Every other lead's CALL events were stored before the step failed.
    victims = set(run.victims.values())
    sql = "SELECT call_id, lead_id FROM apten.call_events ORDER BY 1"

    def others(p: Pipeline) -> list[str]:
        return [call_id for call_id, lead_id in p.query(sql) if lead_id not in victims]

    assert others(baseline) == others(run.failed) != []
    assert run.failed.query("SELECT count(*) FROM apten.call_events WHERE lead_id = ?", [lead_id]) == [(0,)]
    if case == "repeating_next_token":
        assert run.hits[("events", lead_id)] == 2  # stopped at the first repeat, no loop


def test_events_fetch_failures_are_recovered_by_a_plain_rerun(
    event_fetch_failures: FetchFailureRun, baseline: Pipeline
) -> None:
    rerun = event_fetch_failures.rerun
    assert rerun.calls is not None and rerun.calls.success, rerun.calls and rerun.calls.error
    diffs = compare(snapshot(baseline.warehouse), snapshot(rerun.warehouse))
    assert all(d.equal for d in diffs.values()), describe_diffs(diffs)


@pytest.mark.parametrize("case", list(CALL_FETCH_CASES))
def test_call_that_cannot_be_fetched_is_skipped_with_its_id_and_the_step_fails_after_the_rest(
    call_fetch_failures: FetchFailureRun, baseline: Pipeline, case: str
) -> None:
    run = call_fetch_failures
    call_id = run.victims[case]
    calls_run = run.failed.calls
    assert calls_run is not None and not calls_run.success
    assert "calls could not be fetched" in calls_run.error and repr(call_id) in calls_run.error
    line = next(w for w in run.failed.warnings.splitlines() if f"skipped record '{call_id}'" in w)
    assert CALL_FETCH_CASES[case][1] in line
    assert KEY not in calls_run.error and KEY not in run.failed.warnings
    victims = set(run.victims.values())
    sql = "SELECT call_id, summary_status FROM apten.calls ORDER BY 1"

    def others(p: Pipeline) -> list[tuple]:
        return [row for row in p.query(sql) if row[0] not in victims]

    assert others(baseline) == others(run.failed) != []
    assert run.failed.query("SELECT count(*) FROM apten.calls WHERE call_id = ?", [call_id]) == [(0,)]
    if case == "redirect_to_another_host":
        assert run.evil_requests == []  # never followed: the key never left for another host


def test_call_fetch_failures_are_recovered_by_a_plain_rerun(
    call_fetch_failures: FetchFailureRun, baseline: Pipeline
) -> None:
    rerun = call_fetch_failures.rerun
    assert rerun.calls is not None and rerun.calls.success, rerun.calls and rerun.calls.error
    diffs = compare(snapshot(baseline.warehouse), snapshot(rerun.warehouse))
    assert all(d.equal for d in diffs.values()), describe_diffs(diffs)


# --------------------------------------------------------------------------- fatal cases


def test_wrong_key_fails_at_once_with_check_api_key(
    dataset: SandboxDataset, warehouse_url: str, tmp_path: Path
) -> None:
    wrong = "sk-test-wrong-0000"
    with SandboxServer(dataset, api_key=KEY) as sandbox:
        p = run_once(sandbox.base_url, warehouse_url, dataset, inbox=tmp_path / "inbox", key=wrong)
        log = sandbox.state.request_log
    assert not p.leads.success and "check APTEN_API_KEY" in p.leads.error
    assert [r.status for r in log] == [403]  # never retried
    assert wrong not in p.leads.error and KEY not in p.leads.error


def test_forbidden_on_one_call_fails_the_calls_step_at_once(
    dataset: SandboxDataset, warehouse_url: str, tmp_path: Path
) -> None:
    call_id = Victims.pick(dataset).calls[0]
    with SandboxServer(dataset, api_key=KEY) as sandbox, HostileProxy(sandbox) as proxy:
        proxy.rules[("call", call_id)] = _always(Reply(status=403, json={"message": "Forbidden"}))
        p = run_once(proxy.base_url, warehouse_url, dataset, inbox=tmp_path / "inbox")
        hits = proxy.hits[("call", call_id)]
    assert p.calls is not None and not p.calls.success
    assert "check APTEN_API_KEY" in p.calls.error and hits == 1


def _leads_repeating(seen: Seen, proxy: HostileProxy) -> Reply:
    return Reply(json={"leads": [], "nextToken": "again"})


@pytest.mark.parametrize(
    ("case", "rule", "message"),
    [
        ("repeating_next_token", _leads_repeating, "already returned"),
        ("empty_body", _always(Reply()), "malformed body"),
        ("html_body", _always(Reply(text="<html>maintenance</html>")), "malformed body"),
        ("json_array_body", _always(Reply(json=[{"id": "lead"}])), "malformed body"),
        ("redirect_to_another_host", None, f"redirecting to host '{EVIL_HOST}'"),
    ],
)
def test_broken_leads_listing_fails_the_leads_run_with_a_clear_error(
    dataset: SandboxDataset, warehouse_url: str, tmp_path: Path, case: str, rule: Any, message: str
) -> None:
    evil = ScriptedServer(lambda seen: Reply(json={"leads": [], "nextToken": None}), host=EVIL_HOST)
    with evil, SandboxServer(dataset, api_key=KEY) as sandbox, HostileProxy(sandbox) as proxy:
        redirect = Reply(status=301, headers={"Location": f"{evil.base_url}/leads"})
        proxy.rules[("leads", None)] = rule if rule is not None else _always(redirect)
        p = run_once(proxy.base_url, warehouse_url, dataset, inbox=tmp_path / "inbox")
        hits = proxy.hits[("leads", None)]
    assert not p.leads.success and message in p.leads.error and KEY not in p.leads.error
    assert hits <= 6  # bounded: one attempt per retry at most, never a loop
    assert evil.requests == []
