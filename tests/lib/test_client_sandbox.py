"""AptenClient against the bundled sandbox: whole listings compared with the sandbox's ground truth.

The sandbox here requires a key (the shared `sandbox` fixture accepts none), so every request
proves the key header is sent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from apten_assets.lib.client import AptenAuthError, AptenClient, RetryPolicy
from apten_assets.lib.config import AptenSettings
from apten_assets.sandbox.app import FaultConfig
from apten_assets.sandbox.data import SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from tests.lib.scripted_server import max_in_any_window

KEY = "sandbox-key-7c2d-never-logged"
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
KNOWN_TYPES = {"MESSAGE", "CALL", "EMAIL", "TOOL_CALL", "CUSTOM", "COMPLIANCE_BLOCKED"}


@pytest.fixture(scope="module")
def keyed_sandbox(sandbox_dataset: SandboxDataset) -> Iterator[SandboxServer]:
    with SandboxServer(sandbox_dataset, api_key=KEY) as server:
        yield server


def client_for(sandbox: SandboxServer, *, rps: float = 500, concurrency: int = 8, **kw) -> AptenClient:
    settings = AptenSettings(base_url=sandbox.base_url, api_key=KEY, max_rps=rps, max_concurrency=concurrency)
    return AptenClient(settings, **kw)


def test_every_lead_event_and_call_is_fetched_exactly_once(keyed_sandbox: SandboxServer) -> None:
    truth = keyed_sandbox.state.dataset
    with client_for(keyed_sandbox) as client:
        leads = list(client.iter_leads(updated_since=EPOCH, page_size=7))
        assert sorted(lead["id"] for lead in leads) == sorted(lead["id"] for lead in truth.leads)
        assert {lead["id"]: lead for lead in leads} == {lead["id"]: lead for lead in truth.leads}

        by_created = [lead["id"] for lead in client.iter_leads(created_since=EPOCH, page_size=1000)]
        assert sorted(by_created) == sorted(lead["id"] for lead in truth.leads)

        def events_of(lead_id: str) -> tuple[str, list[dict]]:
            return lead_id, list(client.iter_lead_events(lead_id, since=EPOCH, page_size=5))

        events = dict(client.map_concurrent(events_of, [lead["id"] for lead in leads]))
        assert events == {lead["id"]: truth.events(lead["id"]) for lead in truth.leads}
        # Unknown event types (and whatever fields they carry) come through untouched.
        assert {e["type"] for evs in events.values() for e in evs} - KNOWN_TYPES

        call_ids = [e["id"] for evs in events.values() for e in evs if e["type"] == "CALL"]
        call_ids += list(truth.webchat_call_ids)
        fetched = list(client.get_calls(call_ids))
    assert sorted(f.call_id for f in fetched) == sorted(call_ids)
    assert {f.call_id for f in fetched if not f.found} == set(truth.missing_call_ids)
    for fetch in fetched:
        if fetch.found:
            assert fetch.body == keyed_sandbox.state.call_json(fetch.call_id)


def test_filtered_event_pages_can_be_empty_and_are_still_followed(keyed_sandbox: SandboxServer) -> None:
    truth = keyed_sandbox.state.dataset
    page_size = 2
    lead_ids = [lead["id"] for lead in truth.leads]
    chunks = [
        evs[i : i + page_size] for evs in map(truth.events, lead_ids) for i in range(0, len(evs), page_size)
    ]
    assert any(all(e["type"] != "CALL" for e in chunk) for chunk in chunks), "dataset needs empty pages"

    with client_for(keyed_sandbox) as client:
        for lead_id in lead_ids:
            got = list(client.iter_lead_events(lead_id, since=EPOCH, types=["CALL"], page_size=page_size))
            assert got == [e for e in truth.events(lead_id) if e["type"] == "CALL"]
        expected_pages = sum(
            max(1, math.ceil(len(truth.events(lead_id)) / page_size)) for lead_id in lead_ids
        )
        assert client.stats.pages_fetched == expected_pages


def test_injected_faults_are_retried_and_change_nothing(sandbox_dataset: SandboxDataset) -> None:
    faults = FaultConfig(p_429=0.1, p_5xx=0.1, p_drop=0.05, p_truncate=0.1, seed=5)
    # A request is faulted with p = 0.35, drawn in the order requests arrive (8 threads, so not
    # repeatable). With 8 attempts a call failed all of them with p = 0.35^8 = 2.3e-4, about one run
    # in 40 over the 120 calls; with 20 it is 0.35^20 = 7.6e-10 per call.
    policy = RetryPolicy(
        max_attempts=20, base_delay_seconds=0.01, max_delay_seconds=0.05, retry_after_cap_seconds=0.1
    )
    with (
        SandboxServer(sandbox_dataset, api_key=KEY, faults=faults) as sandbox,
        client_for(sandbox, retry=policy) as client,
    ):
        truth = sandbox.state.dataset
        leads = list(client.iter_leads(updated_since=EPOCH, page_size=3))
        calls = {f.call_id: f.body for f in client.get_calls(truth.lead_call_ids) if f.found}
        log = sandbox.state.request_log
    assert sorted(lead["id"] for lead in leads) == sorted(lead["id"] for lead in truth.leads)
    assert set(calls) == set(truth.lead_call_ids) - set(truth.missing_call_ids)
    assert {fault for r in log if (fault := r.fault)} == {"429", "5xx", "drop", "truncate"}
    reasons = set(client.stats.retries_by_reason)
    assert {"http_429", "bad_body", "RemoteProtocolError"} <= reasons
    assert reasons & {"http_500", "http_503"}


def test_sandbox_rate_limit_answers_are_waited_out(
    sandbox_dataset: SandboxDataset, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    faults = FaultConfig(rate_limit_rps=4, retry_after_share=1.0, retry_after_http_date_share=0.5, seed=1)
    with (
        SandboxServer(sandbox_dataset, api_key=KEY, faults=faults) as sandbox,
        client_for(sandbox, rps=50) as client,
    ):
        ids = list(sandbox.state.dataset.lead_call_ids[:12])
        fetched = list(client.get_calls(ids))
        log = sandbox.state.request_log
    assert sorted(f.call_id for f in fetched) == sorted(ids)
    assert client.stats.rate_limited_429 > 0
    assert client.stats.retry_after_wait_seconds >= 1.0
    assert sum(1 for r in log if r.status == 200 or r.status == 404) == len(ids)
    assert KEY not in caplog.text


def test_client_side_rate_limit_holds_at_the_sandbox(keyed_sandbox: SandboxServer) -> None:
    rps = 10
    keyed_sandbox.state.clear_request_log()
    with client_for(keyed_sandbox, rps=rps) as client:
        assert len(list(client.get_calls(keyed_sandbox.state.dataset.lead_call_ids[:35]))) == 35
    times = [r.t for r in keyed_sandbox.state.request_log]
    assert len(times) == 35
    assert max_in_any_window(times) <= rps


def test_wrong_key_is_refused_once_with_the_key_message(keyed_sandbox: SandboxServer) -> None:
    keyed_sandbox.state.clear_request_log()
    settings = AptenSettings(base_url=keyed_sandbox.base_url, api_key="not-the-key")
    with AptenClient(settings) as client, pytest.raises(AptenAuthError, match="check APTEN_API_KEY") as info:
        list(client.iter_leads(updated_since=EPOCH))
    assert "not-the-key" not in str(info.value)
    assert [r.status for r in keyed_sandbox.state.request_log] == [403]


def test_exchange_seconds_count_each_request_from_send_to_answer(sandbox_dataset: SandboxDataset) -> None:
    latency_ms = 40
    with (
        SandboxServer(sandbox_dataset, api_key=KEY, faults=FaultConfig(latency_ms=latency_ms)) as sandbox,
        client_for(sandbox, concurrency=4) as client,
    ):
        ids = list(sandbox.state.dataset.lead_call_ids[:12])
        started = time.monotonic()
        assert len(list(client.get_calls(ids))) == len(ids)
        elapsed = time.monotonic() - started
    exchange = client.stats.as_metadata()["api_exchange_seconds"]
    # Every request spent the sandbox's latency in flight; 4 at a time, they overlapped.
    assert exchange >= len(ids) * latency_ms / 1000
    assert exchange <= 4 * elapsed
