"""Injected faults: rate limit, 429/5xx, dropped connections, truncated bodies, slow answers."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from email.utils import parsedate_to_datetime

import httpx
import pytest

from apten_assets.sandbox.app import FaultConfig
from apten_assets.sandbox.server import SandboxServer

EPOCH = "2000-01-01T00:00:00.000Z"


def outcome(http: httpx.Client, path: str) -> str:
    """What a naive client sees for one GET: a status, `truncated` or `dropped`."""
    try:
        response = http.get(path)
    except httpx.RemoteProtocolError:
        return "dropped"
    if response.status_code == 200:
        try:
            response.json()
        except json.JSONDecodeError:
            return "truncated"
    return str(response.status_code)


def test_rate_limit_answers_429_with_and_without_retry_after(sandbox: SandboxServer) -> None:
    sandbox.state.faults = FaultConfig(
        rate_limit_rps=5, retry_after_share=0.6, retry_after_http_date_share=0.5
    )
    with httpx.Client(base_url=sandbox.base_url) as http:
        responses = [http.get("/leads", params={"updatedSince": EPOCH}) for _ in range(60)]
    limited = [r for r in responses if r.status_code == 429]
    assert {r.status_code for r in responses} == {200, 429}
    assert all(r.json() == {"message": "Too Many Requests"} for r in limited)
    retry_after = [r.headers.get("retry-after") for r in limited]
    seconds = [value for value in retry_after if value and value.isdigit()]
    dates = [value for value in retry_after if value and not value.isdigit()]
    assert None in retry_after and seconds and dates
    assert set(seconds) == {"1"}  # the window frees within a second
    assert all(parsedate_to_datetime(value).tzinfo is not None for value in dates)
    assert {r.fault for r in sandbox.state.request_log if r.status == 429} == {"rate_limit"}


def test_rate_limit_admits_at_most_rps_in_any_second(sandbox: SandboxServer) -> None:
    sandbox.state.faults = FaultConfig(rate_limit_rps=10)
    deadline = time.monotonic() + 1.5
    with httpx.Client(base_url=sandbox.base_url) as http:
        while time.monotonic() < deadline:
            http.get("/calls/unknown")
    admitted = [r.t for r in sandbox.state.request_log if r.status != 429]
    assert len(admitted) >= 10
    # Arrival times are stamped a hair before the limiter's own clock reading.
    assert all(later - earlier >= 0.99 for earlier, later in zip(admitted, admitted[10:], strict=False))
    print(f"admitted {len(admitted)} of {len(sandbox.state.request_log)} requests in 1.5 s")


def test_injected_faults_happen_at_about_the_configured_rates(sandbox: SandboxServer) -> None:
    sandbox.state.faults = FaultConfig(p_429=0.1, p_5xx=0.1, p_drop=0.1, p_truncate=0.1, seed=3)
    n = 1000
    call_id = sandbox.state.dataset.ready_summary_call_ids[0]
    with httpx.Client(base_url=sandbox.base_url) as http:
        seen = Counter(outcome(http, f"/calls/{call_id}") for _ in range(n))
    print(dict(seen))
    for fault in ("429", "dropped", "truncated"):
        assert 60 <= seen[fault] <= 140, (fault, seen)
    assert 60 <= seen["500"] + seen["503"] <= 140 and seen["500"] and seen["503"]
    assert 500 <= seen["200"] <= 700
    recorded = Counter(r.fault for r in sandbox.state.request_log)
    assert recorded["drop"] == seen["dropped"] and recorded["truncate"] == seen["truncated"]
    assert {r.status for r in sandbox.state.request_log if r.fault == "drop"} == {0}


def test_same_fault_seed_gives_the_same_fault_sequence(sandbox: SandboxServer) -> None:
    def sequence() -> list[str | None]:
        sandbox.state.faults = FaultConfig(p_429=0.2, p_5xx=0.2, seed=11)
        sandbox.state.clear_request_log()
        with httpx.Client(base_url=sandbox.base_url) as http:
            for _ in range(50):
                http.get("/calls/unknown")
        return [r.fault for r in sandbox.state.request_log]

    assert sequence() == sequence()


def test_dropped_connections_are_not_logged_as_app_errors(
    sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.state.faults = FaultConfig(p_drop=1.0)
    with caplog.at_level(logging.ERROR), httpx.Client(base_url=sandbox.base_url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get("/leads", params={"updatedSince": EPOCH})
        sandbox.state.faults = FaultConfig()
        assert http.get("/leads", params={"updatedSince": EPOCH}).status_code == 200
    assert not [r for r in caplog.records if r.name.startswith("uvicorn")]


def test_truncated_body_is_a_200_with_half_the_json(sandbox: SandboxServer) -> None:
    call_id = sandbox.state.dataset.ready_summary_call_ids[0]
    full = json.dumps(sandbox.state.call_json(call_id), ensure_ascii=False, separators=(",", ":")).encode()
    sandbox.state.faults = FaultConfig(p_truncate=1.0)
    with httpx.Client(base_url=sandbox.base_url) as http:
        response = http.get(f"/calls/{call_id}")
    assert response.status_code == 200 and response.content == full[: len(full) // 2]
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_slow_answer_outlasts_a_client_read_timeout(sandbox: SandboxServer) -> None:
    sandbox.state.faults = FaultConfig(p_slow=1.0, slow_seconds=1.0)
    timeout = httpx.Timeout(5, read=0.2)
    with httpx.Client(base_url=sandbox.base_url, timeout=timeout) as http, pytest.raises(httpx.ReadTimeout):
        http.get("/leads", params={"updatedSince": EPOCH})


def test_latency_is_added_to_every_answer(sandbox: SandboxServer) -> None:
    sandbox.state.faults = FaultConfig(latency_ms=50)
    with httpx.Client(base_url=sandbox.base_url) as http:
        started = time.perf_counter()
        statuses = [http.get("/calls/unknown").status_code for _ in range(5)]
        print(f"5 requests with 50 ms latency took {time.perf_counter() - started:.3f}s")
    assert statuses == [404] * 5


@pytest.mark.parametrize(
    "changes", [{"p_429": 1.5}, {"p_429": 0.6, "p_5xx": 0.6}, {"retry_after_share": -0.1}]
)
def test_fault_config_rejects_impossible_shares(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FaultConfig(**changes)
