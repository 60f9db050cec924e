"""The sandbox's HTTP behaviour, pinned over real loopback HTTP with plain httpx."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from apten_assets.sandbox.data import SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from tests.conftest import SANDBOX_ANCHOR, SMALL_SPEC
from tests.sandbox.helpers import fetch_all

EPOCH = "2000-01-01T00:00:00.000Z"


@pytest.fixture
def http(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.base_url, timeout=10) as client:
        yield client


def sort_key(item: dict, field: str) -> tuple[str, str]:
    return item[field], item["id"]


# --- GET /leads --------------------------------------------------------------------------------


@pytest.mark.parametrize("field,param", [("updatedAt", "updatedSince"), ("createdAt", "createdSince")])
def test_lead_pages_return_every_lead_once_in_order(
    http: httpx.Client, sandbox: SandboxServer, field: str, param: str
) -> None:
    pages = fetch_all(http, "/leads", {param: EPOCH, "limit": 7}, "leads")
    expected = sorted(sandbox.state.dataset.leads, key=lambda lead: sort_key(lead, field))
    assert pages.items == expected
    assert pages.page_sizes[:-1] == [7] * (len(pages.page_sizes) - 1)


def test_lead_pages_walk_through_timestamp_ties() -> None:
    dataset = SandboxDataset(replace(SMALL_SPEC, n_leads=300))
    updated = [lead["updatedAt"] for lead in dataset.leads]
    assert len(set(updated)) < len(updated), "the dataset should contain updatedAt ties"
    with SandboxServer(dataset) as sb, httpx.Client(base_url=sb.base_url) as http:
        pages = fetch_all(http, "/leads", {"updatedSince": EPOCH, "limit": 1}, "leads")
    assert [lead["id"] for lead in pages.items] == [
        lead["id"] for lead in sorted(dataset.leads, key=lambda lead: sort_key(lead, "updatedAt"))
    ]


def test_updated_since_is_inclusive(http: httpx.Client, sandbox: SandboxServer) -> None:
    leads = sorted(sandbox.state.dataset.leads, key=lambda lead: sort_key(lead, "updatedAt"))
    pivot = leads[len(leads) // 2]["updatedAt"]
    pages = fetch_all(http, "/leads", {"updatedSince": pivot}, "leads")
    assert pages.items == [lead for lead in leads if lead["updatedAt"] >= pivot]
    assert pages.items[0]["updatedAt"] == pivot


@pytest.mark.parametrize(
    "since",
    [
        "2026-05-13T12:00:00.000Z",
        "2026-05-13T12:00:00Z",
        "2026-05-13T14:00:00+02:00",
        "2026-05-13T07:00:00-05:00",
    ],
)
def test_timestamps_accept_second_precision_and_offsets(http: httpx.Client, since: str) -> None:
    reference = fetch_all(http, "/leads", {"updatedSince": "2026-05-13T12:00:00.000Z"}, "leads").items
    assert fetch_all(http, "/leads", {"updatedSince": since}, "leads").items == reference


def test_both_since_filters_apply_together(http: httpx.Client, sandbox: SandboxServer) -> None:
    created_since = "2026-05-12T00:00:00.000Z"
    pages = fetch_all(
        http, "/leads", {"updatedSince": EPOCH, "createdSince": created_since, "limit": 5}, "leads"
    )
    expected = [lead for lead in sandbox.state.dataset.leads if lead["createdAt"] >= created_since]
    assert sorted(lead["id"] for lead in pages.items) == sorted(lead["id"] for lead in expected)


def test_next_token_is_base64_search_after(http: httpx.Client) -> None:
    body = http.get("/leads", params={"updatedSince": EPOCH, "limit": 1}).json()
    decoded = json.loads(base64.b64decode(body["nextToken"]))
    assert decoded == {"searchAfter": [body["leads"][0]["updatedAt"], body["leads"][0]["id"]]}


def test_last_page_has_null_token(http: httpx.Client) -> None:
    body = http.get("/leads", params={"updatedSince": EPOCH, "limit": 1000}).json()
    assert body["nextToken"] is None and len(body["leads"]) == SMALL_SPEC.n_leads


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"limit": 10},
        {"updatedSince": EPOCH, "limit": 0},
        {"updatedSince": EPOCH, "limit": 1001},
        {"updatedSince": EPOCH, "limit": "ten"},
        {"updatedSince": "yesterday"},
        {"updatedSince": "2026-05-13T12:00:00"},  # no time zone
        {"updatedSince": EPOCH, "nextToken": "not-a-token"},
    ],
)
def test_bad_lead_queries_get_400_with_a_message(http: httpx.Client, params: dict) -> None:
    response = http.get("/leads", params=params)
    assert response.status_code == 400
    assert isinstance(response.json()["message"], str)


# --- GET /leads/{id}/events --------------------------------------------------------------------


def test_event_pages_return_every_event_once_in_updated_order(
    http: httpx.Client, sandbox: SandboxServer
) -> None:
    dataset = sandbox.state.dataset
    for lead in dataset.leads:
        pages = fetch_all(http, f"/leads/{lead['id']}/events", {"since": EPOCH, "limit": 3}, "events")
        assert pages.items == dataset.events(lead["id"])
        assert pages.items == sorted(pages.items, key=lambda event: sort_key(event, "updatedAt"))


def test_event_since_is_inclusive(http: httpx.Client, sandbox: SandboxServer) -> None:
    lead_id = sandbox.state.dataset.leads[0]["id"]
    events = sandbox.state.dataset.events(lead_id)
    pivot = events[len(events) // 2]["updatedAt"]
    pages = fetch_all(http, f"/leads/{lead_id}/events", {"since": pivot}, "events")
    assert pages.items == [event for event in events if event["updatedAt"] >= pivot]


def test_types_filter_matches_ground_truth(http: httpx.Client, sandbox: SandboxServer) -> None:
    dataset = sandbox.state.dataset
    for lead in dataset.leads:
        params = {"since": EPOCH, "types": "CALL,MESSAGE", "limit": 2}
        pages = fetch_all(http, f"/leads/{lead['id']}/events", params, "events")
        assert pages.items == [e for e in dataset.events(lead["id"]) if e["type"] in ("CALL", "MESSAGE")]


def test_filtered_page_can_be_empty_with_next_token() -> None:
    # One call among 30 other events per lead: most 5-event windows hold no CALL at all.
    dataset = SandboxDataset(replace(SMALL_SPEC, n_leads=5, calls_per_lead=1, other_events_per_lead=30))
    with SandboxServer(dataset) as sb, httpx.Client(base_url=sb.base_url) as http:
        empty_pages_with_token = 0
        for lead in dataset.leads:
            params = {"since": EPOCH, "types": "CALL", "limit": 5}
            pages = fetch_all(http, f"/leads/{lead['id']}/events", params, "events")
            assert pages.items == [e for e in dataset.events(lead["id"]) if e["type"] == "CALL"]
            empty_pages_with_token += sum(
                1 for size, token in zip(pages.page_sizes, pages.tokens, strict=True) if size == 0 and token
            )
    assert empty_pages_with_token > 0


def test_filter_excludes_types_it_cannot_name(http: httpx.Client, sandbox: SandboxServer) -> None:
    dataset = sandbox.state.dataset
    lead_id = next(
        lead["id"]
        for lead in dataset.leads
        if any(e["type"] == "COMPLIANCE_BLOCKED" for e in dataset.events(lead["id"]))
    )
    params = {"since": EPOCH, "types": "MESSAGE,CALL,EMAIL,TOOL_CALL,CUSTOM"}
    filtered = fetch_all(http, f"/leads/{lead_id}/events", params, "events").items
    unfiltered = fetch_all(http, f"/leads/{lead_id}/events", {"since": EPOCH}, "events").items
    assert "COMPLIANCE_BLOCKED" not in {e["type"] for e in filtered}
    assert "COMPLIANCE_BLOCKED" in {e["type"] for e in unfiltered}


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"since": "not a date"},
        {"since": EPOCH, "types": "CALL,COMPLIANCE_BLOCKED"},
        {"since": EPOCH, "types": "call"},
        {"since": EPOCH, "limit": 0},
        {"since": EPOCH, "limit": 1001},
    ],
)
def test_bad_event_queries_get_400(http: httpx.Client, sandbox: SandboxServer, params: dict) -> None:
    lead_id = sandbox.state.dataset.leads[0]["id"]
    response = http.get(f"/leads/{lead_id}/events", params=params)
    assert response.status_code == 400 and response.json()["message"]


def test_events_of_unknown_lead_are_404(http: httpx.Client) -> None:
    response = http.get("/leads/room_nobody/events", params={"since": EPOCH})
    assert response.status_code == 404 and response.json() == {"message": "Not Found"}


def test_deleted_leads_are_listed_and_keep_their_events(http: httpx.Client, sandbox: SandboxServer) -> None:
    dataset = sandbox.state.dataset
    deleted_id = dataset.deleted_lead_ids[0]
    leads = fetch_all(http, "/leads", {"updatedSince": EPOCH}, "leads").items
    deleted = next(lead for lead in leads if lead["id"] == deleted_id)
    assert deleted["deleted"] is True and deleted["deletedAt"]
    events = fetch_all(http, f"/leads/{deleted_id}/events", {"since": EPOCH}, "events").items
    assert events == dataset.events(deleted_id)


# --- GET /calls/{id} -----------------------------------------------------------------------------


def test_calls_match_ground_truth(http: httpx.Client, sandbox: SandboxServer) -> None:
    dataset = sandbox.state.dataset
    for call_id in dataset.lead_call_ids + dataset.webchat_call_ids:
        response = http.get(f"/calls/{call_id}")
        if call_id in dataset.missing_call_ids:
            assert response.status_code == 404 and response.json() == {"message": "Not Found"}
        else:
            assert response.status_code == 200 and response.json() == sandbox.state.call_json(call_id)


def test_unknown_call_is_404(http: httpx.Client) -> None:
    response = http.get("/calls/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404 and response.json() == {"message": "Not Found"}


def test_webchat_call_has_session_id_and_no_lead_id(http: httpx.Client, sandbox: SandboxServer) -> None:
    call = http.get(f"/calls/{sandbox.state.dataset.webchat_call_ids[0]}").json()
    assert call["sessionId"] and "leadId" not in call


def test_late_summary_is_absent_then_present_after_release(
    http: httpx.Client, sandbox: SandboxServer
) -> None:
    late = sandbox.state.dataset.late_summary_call_ids
    released, still_late = late[0], late[1]
    before = http.get(f"/calls/{released}").json()
    assert "summary" not in before
    assert sandbox.state.release_summaries([released]) == [released]
    after = http.get(f"/calls/{released}").json()
    assert after["summary"] and after["updatedAt"] >= before["updatedAt"]
    assert "summary" not in http.get(f"/calls/{still_late}").json()


def test_release_of_all_late_summaries(http: httpx.Client, sandbox: SandboxServer) -> None:
    dataset = sandbox.state.dataset
    assert sandbox.state.release_summaries() == list(dataset.late_summary_call_ids)
    assert all("summary" in http.get(f"/calls/{c}").json() for c in dataset.late_summary_call_ids)
    assert all("summary" not in http.get(f"/calls/{c}").json() for c in dataset.never_summary_call_ids)


def test_late_summary_appears_by_itself_after_the_delay() -> None:
    dataset = SandboxDataset(replace(SMALL_SPEC, late_summary_delay_seconds=0.5))
    call_id = dataset.late_summary_call_ids[0]
    with SandboxServer(dataset) as sb, httpx.Client(base_url=sb.base_url) as http:
        assert "summary" not in http.get(f"/calls/{call_id}").json()
        time.sleep(0.7)
        assert "summary" in http.get(f"/calls/{call_id}").json()


def test_sandbox_clock_starts_at_the_anchor(sandbox: SandboxServer) -> None:
    assert abs((sandbox.state.now() - SANDBOX_ANCHOR).total_seconds()) < 60


# --- auth and routing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": ""}, {"x-api-key": "SANDBOX-KEY"}]
)
def test_missing_or_wrong_key_is_403(sandbox_dataset: SandboxDataset, headers: dict) -> None:
    with (
        SandboxServer(sandbox_dataset, api_key="sandbox-key") as sb,
        httpx.Client(base_url=sb.base_url) as http,
    ):
        for path in ("/leads", f"/calls/{sandbox_dataset.lead_call_ids[0]}"):
            response = http.get(path, params={"updatedSince": EPOCH}, headers=headers)
            assert response.status_code == 403 and response.json() == {"message": "Forbidden"}


def test_right_key_is_accepted(sandbox_dataset: SandboxDataset) -> None:
    with (
        SandboxServer(sandbox_dataset, api_key="sandbox-key") as sb,
        httpx.Client(base_url=sb.base_url) as http,
    ):
        response = http.get("/leads", params={"updatedSince": EPOCH}, headers={"x-api-key": "sandbox-key"})
        assert response.status_code == 200


def test_without_a_configured_key_any_key_or_none_is_accepted(http: httpx.Client) -> None:
    assert http.get("/leads", params={"updatedSince": EPOCH}).status_code == 200
    assert http.get("/leads", params={"updatedSince": EPOCH}, headers={"x-api-key": "x"}).status_code == 200


def test_unknown_path_is_json_404(http: httpx.Client) -> None:
    response = http.get("/usage-report")
    assert response.status_code == 404 and response.json() == {"message": "Not Found"}


def test_request_log_records_each_request(http: httpx.Client, sandbox: SandboxServer) -> None:
    http.get("/leads", params={"updatedSince": EPOCH, "limit": 2})
    http.get("/calls/nope")
    log = sandbox.state.request_log
    assert [(r.method, r.path, r.status, r.fault) for r in log] == [
        ("GET", "/v1/leads", 200, None),
        ("GET", "/v1/calls/nope", 404, None),
    ]
    assert "limit=2" in log[0].query and log[0].t <= log[1].t
