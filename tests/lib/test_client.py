"""AptenClient against real HTTP on loopback: scripted servers for exact edge cases, the sandbox for
whole-dataset behaviour."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from email.utils import formatdate

import httpx
import pytest

from apten_assets.lib.client import (
    AptenAuthError,
    AptenBadRequest,
    AptenClient,
    AptenError,
    AptenHTTPError,
    AptenProtocolError,
    AptenRetriesExhausted,
    CallFetch,
    RequestGate,
    RetryPolicy,
    starts_per_window,
    to_api_timestamp,
)
from apten_assets.lib.config import AptenSettings, ConfigError
from tests.lib.scripted_server import Reply, ScriptedServer, Seen, max_in_any_window, paged

KEY = "sk-test-5f1c9a7e-never-show-me"
FAST = RetryPolicy(max_attempts=4, base_delay_seconds=0.01, max_delay_seconds=0.05)
SINCE = datetime(2026, 1, 1, tzinfo=UTC)


def make_client(
    server: ScriptedServer, *, rps: float = 1000, concurrency: int = 4, retry: RetryPolicy = FAST, **kw
) -> AptenClient:
    settings = AptenSettings(base_url=server.base_url, api_key=KEY, max_rps=rps, max_concurrency=concurrency)
    return AptenClient(settings, retry=retry, **kw)


def lead(i: int) -> dict:
    return {"id": f"lead_{i}", "updatedAt": "2026-01-02T00:00:00.000Z"}


# --------------------------------------------------------------------------- pagination


def test_filtered_page_can_be_empty_with_next_token() -> None:
    pages = [([lead(1), lead(2)], "t1"), ([], "t2"), ([], "t3"), ([lead(3)], "t4"), ([], None)]
    with ScriptedServer(paged(pages, "leads")) as server, make_client(server) as client:
        ids = [x["id"] for x in client.iter_leads(updated_since=SINCE, page_size=2)]
        assert ids == ["lead_1", "lead_2", "lead_3"]
        assert [r.query.get("nextToken") for r in server.requests] == [None, "t1", "t2", "t3", "t4"]
        assert client.stats.pages_fetched == 5


def test_short_page_does_not_end_the_listing() -> None:
    pages = [([lead(1)], "t1"), ([lead(2)], None)]
    with ScriptedServer(paged(pages, "leads")) as server, make_client(server) as client:
        assert [x["id"] for x in client.iter_leads(created_since=SINCE, page_size=50)] == ["lead_1", "lead_2"]


def test_inclusive_cursor_overlap_yields_each_record_once() -> None:
    first = [lead(1), lead(2)]
    second = [lead(2), lead(3)]  # keyset pages that overlap on the inclusive boundary
    with ScriptedServer(paged([(first, "t1"), (second, None)], "leads")) as server, make_client(server) as c:
        assert [x["id"] for x in c.iter_leads(updated_since=SINCE)] == ["lead_1", "lead_2", "lead_3"]


def test_events_are_deduplicated_by_type_and_id_not_id_alone() -> None:
    events = [
        {"id": "e1", "type": "CALL", "data": {}},
        {"id": "e1", "type": "MESSAGE", "data": {}},
        {"id": "e1", "type": "CALL", "data": {}},
    ]
    with ScriptedServer(paged([(events, None)], "events")) as server, make_client(server) as client:
        got = list(client.iter_lead_events("room_abc", since=SINCE))
        assert [(e["type"], e["id"]) for e in got] == [("CALL", "e1"), ("MESSAGE", "e1")]


def test_repeating_next_token_stops_with_clear_error() -> None:
    tokens = itertools.cycle(["t1", "t2"])  # t1 -> t2 -> t1 -> ... forever

    def respond(seen: Seen) -> Reply:
        return Reply(json={"leads": [lead(len(server.requests))], "nextToken": next(tokens)})

    with ScriptedServer(respond) as server, make_client(server) as client:
        with pytest.raises(AptenProtocolError, match="nextToken it had already returned") as info:
            list(client.iter_leads(updated_since=SINCE))
        assert "GET /leads" in str(info.value)
        assert len(server.requests) == 3


def test_same_next_token_twice_in_a_row_is_a_cycle() -> None:
    def respond(seen: Seen) -> Reply:
        return Reply(json={"events": [], "nextToken": "stuck"})

    with ScriptedServer(respond) as server, make_client(server) as client:
        with pytest.raises(AptenProtocolError, match="GET /leads/{leadId}/events for 'room_abc'"):
            list(client.iter_lead_events("room_abc", since=SINCE))
        assert len(server.requests) == 2


def test_unknown_event_types_and_fields_survive_untouched() -> None:
    events = [
        {
            "id": "x1",
            "roomId": "room_abc",
            "type": "HOLOGRAM_SENT",
            "timestamp": "2026-05-14T15:00:00.000Z",
            "updatedAt": "2026-05-14T15:00:00.000Z",
            "data": {"beam": {"colour": "teal"}, "intensity": 3},
            "brandNewEnvelopeField": [1, 2, 3],
        },
        {"id": "c1", "type": "COMPLIANCE_BLOCKED", "data": {"reason": "STATE_DNC"}, "extra": None},
    ]
    with ScriptedServer(paged([(events, None)], "events")) as server, make_client(server) as client:
        assert list(client.iter_lead_events("room_abc", since=SINCE)) == events


def test_query_parameters_use_iso_utc_milliseconds_and_z() -> None:
    plus_two = timezone(timedelta(hours=2))
    updated = datetime(2026, 5, 14, 17, 30, 0, 123999, tzinfo=plus_two)
    empty = Reply(json={"leads": [], "events": [], "nextToken": None})
    with ScriptedServer(lambda seen: empty) as server, make_client(server) as client:
        list(client.iter_leads(updated_since=updated, created_since=SINCE, page_size=250))
        list(client.iter_lead_events("room abc/1", since=updated, types=["CALL", "MESSAGE"]))
    leads_q, events_q = server.requests[0].query, server.requests[1].query
    assert leads_q == {
        "updatedSince": "2026-05-14T15:30:00.123Z",
        "createdSince": "2026-01-01T00:00:00.000Z",
        "limit": "250",
    }
    assert events_q == {"since": "2026-05-14T15:30:00.123Z", "limit": "1000", "types": "CALL,MESSAGE"}
    assert server.requests[1].path == "/v1/leads/room%20abc%2F1/events"


def test_naive_datetimes_and_bad_arguments_are_refused_before_any_request() -> None:
    with ScriptedServer(paged([([], None)], "leads")) as server, make_client(server) as client:
        with pytest.raises(ValueError, match="timezone-aware"):
            client.iter_leads(updated_since=datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="updated_since and/or created_since"):
            client.iter_leads()
        with pytest.raises(ValueError, match="page_size"):
            client.iter_lead_events("room_abc", since=SINCE, page_size=1001)
        assert server.requests == []
    assert to_api_timestamp(datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)) == "2026-01-02T03:04:05.999Z"


# --------------------------------------------------------------------------- calls


def test_call_ids_are_percent_encoded_and_404_is_not_found() -> None:
    def respond(seen: Seen) -> Reply:
        if seen.path == "/v1/calls/call_1":
            return Reply(json={"id": "call_1", "transcript": [], "futureField": {"a": 1}})
        return Reply(status=404, json={"message": "Call not found"})

    with ScriptedServer(respond) as server, make_client(server) as client:
        assert client.get_call("call_1") == CallFetch(
            "call_1", True, {"id": "call_1", "transcript": [], "futureField": {"a": 1}}
        )
        assert client.get_call("a/b ?#") == CallFetch("a/b ?#", False, None)
        assert client.get_call("..") == CallFetch("..", False, None)
        assert [r.path for r in server.requests][1:] == ["/v1/calls/a%2Fb%20%3F%23", "/v1/calls/%2E%2E"]
        assert client.stats.calls_not_found == 2


def test_get_calls_fetches_every_id_once_with_bounded_concurrency() -> None:
    def respond(seen: Seen) -> Reply:
        call_id = seen.path.rsplit("/", 1)[-1]
        if call_id.endswith("7"):
            return Reply(status=404, json={"message": "Not Found"}, delay=0.02)
        return Reply(json={"id": call_id}, delay=0.02)

    ids = [f"call_{i}" for i in range(60)]
    with ScriptedServer(respond) as server, make_client(server, concurrency=3) as client:
        fetched = list(client.get_calls(ids))
    assert sorted(f.call_id for f in fetched) == sorted(ids)
    assert {f.call_id for f in fetched if not f.found} == {i for i in ids if i.endswith("7")}
    assert all(f.body == {"id": f.call_id} for f in fetched if f.found)
    assert len(server.requests) == 60
    assert server.max_in_flight <= 3


def test_map_concurrent_pulls_items_lazily_and_stops_on_first_error() -> None:
    pulled = itertools.count()

    def endless():
        for i in itertools.count():
            next(pulled)
            yield i

    with ScriptedServer(paged([([], None)], "leads")) as server, make_client(server, concurrency=4) as c:
        results = c.map_concurrent(lambda x: x * 2, endless())
        first = [next(results) for _ in range(5)]
        results.close()
        assert len(first) == 5
        assert next(pulled) <= 5 + 2 * 4 + 1

        def boom(x: int) -> int:
            if x == 3:
                raise RuntimeError("item 3 failed")
            return x

        with pytest.raises(RuntimeError, match="item 3 failed"):
            list(c.map_concurrent(boom, range(100)))


# --------------------------------------------------------------------------- retries


def test_retry_after_in_seconds_is_waited_before_the_next_request() -> None:
    answers = iter([Reply(status=429, json={"message": "Too Many Requests"}, headers={"Retry-After": "1"})])

    def respond(seen: Seen) -> Reply:
        return next(answers, Reply(json={"id": "call_1"}))

    with ScriptedServer(respond) as server, make_client(server) as client:
        assert client.get_call("call_1").found
        first, second = server.requests
        assert second.t - first.t >= 1.0
        assert client.stats.rate_limited_429 == 1
        assert client.stats.retry_after_wait_seconds >= 1.0
        assert client.stats.retries_by_reason == Counter({"http_429": 1})


def test_retry_after_as_http_date_is_honoured() -> None:
    replies = 0

    def respond(seen: Seen) -> Reply:
        nonlocal replies
        replies += 1
        if replies == 1:
            # Dated when the answer is made, so a slow machine cannot eat into the wait.
            return Reply(status=503, headers={"Retry-After": formatdate(time.time() + 3, usegmt=True)})
        return Reply(json={"id": "call_1"})

    with ScriptedServer(respond) as server, make_client(server) as client:
        assert client.get_call("call_1").found
        first, second = server.requests
        # The date has whole-second precision, so "3 s from now" is at least 2 s away.
        assert second.t - first.t >= 2.0


def test_retry_after_is_capped() -> None:
    answers = iter([Reply(status=429, headers={"Retry-After": "3600"})])

    def respond(seen: Seen) -> Reply:
        return next(answers, Reply(json={"id": "call_1"}))

    policy = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, retry_after_cap_seconds=0.2)
    with ScriptedServer(respond) as server, make_client(server, retry=policy) as client:
        assert client.get_call("call_1").found
        assert client.stats.retry_after_wait_seconds == pytest.approx(0.2)


def test_server_errors_are_retried_until_success() -> None:
    answers = iter([Reply(status=s) for s in (500, 502, 503)] + [Reply(status=504, text="<html>gw</html>")])

    def respond(seen: Seen) -> Reply:
        return next(answers, Reply(json={"leads": [lead(1)], "nextToken": None}))

    policy = RetryPolicy(max_attempts=5, base_delay_seconds=0.01, max_delay_seconds=0.05)
    with ScriptedServer(respond) as server, make_client(server, retry=policy) as client:
        assert [x["id"] for x in client.iter_leads(updated_since=SINCE)] == ["lead_1"]
        assert len(server.requests) == 5
        stats = client.stats
        assert stats.requests_sent == 5
        assert stats.responses_by_status == Counter({500: 1, 502: 1, 503: 1, 504: 1, 200: 1})
        assert stats.retries == 4
        assert stats.as_metadata()["api_retries_http_503"] == 1


def test_retries_exhausted_names_endpoint_id_and_last_status() -> None:
    with (
        ScriptedServer(lambda seen: Reply(status=503, json={"message": "down"})) as server,
        make_client(server) as client,
        pytest.raises(AptenRetriesExhausted) as info,
    ):
        client.get_call("call_42")
    message = str(info.value)
    assert "GET /calls/{callId}" in message
    assert "call_42" in message
    assert "HTTP 503" in message
    assert info.value.status == 503
    assert len(server.requests) == FAST.max_attempts


def test_dropped_connection_and_read_timeout_are_retried() -> None:
    answers = iter([Reply(drop=True), Reply(json={"id": "slow"}, delay=1.0)])

    def respond(seen: Seen) -> Reply:
        return next(answers, Reply(json={"id": "call_1"}))

    timeout = httpx.Timeout(connect=2.0, read=0.3, write=2.0, pool=2.0)
    with ScriptedServer(respond) as server, make_client(server, timeout=timeout) as client:
        assert client.get_call("call_1").body == {"id": "call_1"}
        assert set(client.stats.retries_by_reason) == {"RemoteProtocolError", "ReadTimeout"}
        assert len(server.requests) == 3


def test_transport_errors_exhausted_name_the_error() -> None:
    exhausted = pytest.raises(
        AptenRetriesExhausted, match=r"GET /leads failed after 4 attempts.*RemoteProtocol"
    )
    with ScriptedServer(lambda seen: Reply(drop=True)) as server, make_client(server) as client, exhausted:
        list(client.iter_leads(updated_since=SINCE))


def test_html_or_wrong_shape_body_is_retried_like_a_5xx() -> None:
    answers = iter(
        [
            Reply(text="<html><body>Gateway hiccup</body></html>"),
            Reply(json=["not", "an", "object"]),
            Reply(json={"leads": None, "nextToken": None}),
            Reply(json={"nextToken": None}),
        ]
    )

    def respond(seen: Seen) -> Reply:
        return next(answers, Reply(json={"leads": [lead(1)], "nextToken": None}))

    policy = RetryPolicy(max_attempts=5, base_delay_seconds=0.01, max_delay_seconds=0.05)
    with ScriptedServer(respond) as server, make_client(server, retry=policy) as client:
        assert [x["id"] for x in client.iter_leads(updated_since=SINCE)] == ["lead_1"]
        assert client.stats.retries_by_reason == Counter({"bad_body": 4})


def test_malformed_body_on_every_attempt_is_a_protocol_error() -> None:
    with (
        ScriptedServer(lambda seen: Reply(text="<html>maintenance</html>")) as server,
        make_client(server) as client,
        pytest.raises(AptenProtocolError, match="malformed body") as info,
    ):
        client.get_call("call_1")
    assert isinstance(info.value, AptenRetriesExhausted)
    assert "GET /calls/{callId}" in str(info.value)
    assert len(server.requests) == FAST.max_attempts


def test_truncated_json_body_is_retried() -> None:
    answers = iter([Reply(text='{"id": "call_1", "transcript": [{"role": "assis')])

    def respond(seen: Seen) -> Reply:
        return next(answers, Reply(json={"id": "call_1"}))

    with ScriptedServer(respond) as server, make_client(server) as client:
        assert client.get_call("call_1").body == {"id": "call_1"}
        assert len(server.requests) == 2


# --------------------------------------------------------------------------- errors that are final


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_says_check_api_key_and_is_not_retried(status: int) -> None:
    with (
        ScriptedServer(lambda seen: Reply(status=status, json={"message": "Forbidden"})) as server,
        make_client(server) as client,
        pytest.raises(AptenAuthError, match="check APTEN_API_KEY") as info,
    ):
        list(client.iter_leads(updated_since=SINCE))
    assert len(server.requests) == 1
    assert server.requests[0].headers["x-api-key"] == KEY
    assert KEY not in str(info.value)
    assert info.value.status == status


def test_bad_request_surfaces_the_api_message() -> None:
    def respond(seen: Seen) -> Reply:
        return Reply(status=400, json={"message": "Invalid since: must be an ISO 8601 timestamp"})

    with ScriptedServer(respond) as server, make_client(server) as client:
        with pytest.raises(AptenBadRequest, match="Invalid since: must be an ISO 8601 timestamp"):
            list(client.iter_lead_events("room_abc", since=SINCE))
        assert len(server.requests) == 1


def test_other_client_errors_fail_clearly_without_retry() -> None:
    with (
        ScriptedServer(lambda seen: Reply(status=404, json={"message": "Lead not found"})) as server,
        make_client(server) as client,
    ):
        with pytest.raises(AptenHTTPError, match=r"GET /leads/\{leadId\}/events.*HTTP 404: Lead not found"):
            list(client.iter_lead_events("room_gone", since=SINCE))
        assert len(server.requests) == 1


def test_redirect_to_another_host_is_refused_and_the_key_never_reaches_it() -> None:
    with ScriptedServer(lambda seen: Reply(json={"leads": [], "nextToken": None}), host="127.0.0.2") as other:

        def respond(seen: Seen) -> Reply:
            return Reply(status=302, headers={"Location": f"{other.base_url}/leads?stolen=1"})

        refused = pytest.raises(AptenProtocolError, match="redirecting to host '127.0.0.2'")
        with ScriptedServer(respond) as server, make_client(server) as client, refused as info:
            list(client.iter_leads(updated_since=SINCE))
        assert len(server.requests) == 1
        assert other.requests == []
        assert KEY not in str(info.value)


def test_missing_key_for_the_real_api_fails_before_any_request() -> None:
    with pytest.raises(ConfigError, match="APTEN_API_KEY"):
        AptenClient(AptenSettings(base_url="https://api.attent.app/v1", api_key=None))


def test_sandbox_style_loopback_without_key_sends_no_key_header() -> None:
    with ScriptedServer(lambda seen: Reply(json={"id": "c"})) as server:
        settings = AptenSettings(base_url=server.base_url, api_key=None)
        with AptenClient(settings) as client:
            assert client.get_call("c").found
        assert "x-api-key" not in server.requests[0].headers


def test_key_never_appears_in_logs_errors_repr_or_stats(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def respond(seen: Seen) -> Reply:
        key = seen.headers.get("x-api-key", "")
        if seen.path.endswith("/echo"):  # a server that echoes the key back in its error message
            return Reply(status=400, json={"message": f"bad key {key}"})
        if seen.path.endswith("/flaky"):
            return Reply(status=503, text=f"<html>{key}</html>")
        if seen.path.endswith("/denied"):
            return Reply(status=403, json={"message": f"Forbidden {key}"})
        return Reply(status=302, headers={"Location": "https://evil.example/collect"})

    errors: list[AptenError] = []
    with ScriptedServer(respond) as server, make_client(server) as client:
        for call_id in ("echo", "flaky", "denied", "moved"):
            with pytest.raises(AptenError) as info:
                client.get_call(call_id)
            errors.append(info.value)
        assert all(r.headers["x-api-key"] == KEY for r in server.requests)
        shown = [repr(client), repr(client.settings), repr(client.stats), str(client.stats.as_metadata())]
    assert [type(e).__name__ for e in errors] == [
        "AptenBadRequest",
        "AptenRetriesExhausted",
        "AptenAuthError",
        "AptenProtocolError",
    ]
    for text in [caplog.text, *shown, *(str(e) for e in errors), *(repr(e) for e in errors)]:
        assert KEY not in text
    assert "GET /calls/{callId}" in caplog.text


# --------------------------------------------------------------------------- rate limit


def test_rate_limit_holds_over_every_one_second_window() -> None:
    rps = 10
    with (
        ScriptedServer(lambda seen: Reply(json={"id": "c"})) as server,
        make_client(server, rps=rps, concurrency=8) as client,
    ):
        assert sum(1 for _ in client.get_calls([f"c{i}" for i in range(35)])) == 35
        assert client.stats.rate_limiter_wait_seconds > 0
    times = [r.t for r in server.requests]
    assert len(times) == 35
    assert max_in_any_window(times) <= rps


def test_starts_per_window_leaves_headroom_below_the_limit() -> None:
    assert starts_per_window(50) == 49
    assert starts_per_window(10) == 9
    assert starts_per_window(1000) == 980
    assert starts_per_window(2.5) == 2
    assert starts_per_window(1) == 1
    assert starts_per_window(0.5) == 1


def test_requests_a_stall_held_back_count_where_the_server_counted_them() -> None:
    """A server that counts a request when it gets to it, and stalls on three of them: they are
    counted together 0.6 s late, on top of the requests that follow. The gate learns from their
    late answers and leaves room, so no one-second window at the server holds more than the limit
    (counting each request at its start instead puts 12 into one second here)."""
    rps = 10
    stalled = {5, 6, 7}
    counted_at: list[float] = []
    arrivals = itertools.count()
    lock = threading.Lock()

    def respond(seen: Seen) -> Reply:
        if next(arrivals) in stalled:
            time.sleep(0.6)
        with lock:
            counted_at.append(time.monotonic())
        return Reply(json={"id": "c"})

    with ScriptedServer(respond) as server, make_client(server, rps=rps, concurrency=8) as client:
        assert sum(1 for _ in client.get_calls([f"c{i}" for i in range(40)])) == 40
    assert len(counted_at) == 40
    assert max_in_any_window(counted_at) <= rps


def test_a_429_slows_the_rate_down_and_it_recovers() -> None:
    answers = iter([Reply(status=429, json={"message": "Too Many Requests"})])

    def respond(seen: Seen) -> Reply:
        return next(answers, Reply(json={"id": "c"}))

    with ScriptedServer(respond) as server, make_client(server, rps=20) as client:
        assert [f.found for f in client.get_calls(["c1", "c2", "c3"])] == [True, True, True]
        gate = client._gate
        assert client.stats.rate_slowdowns == 1
        assert client.stats.as_metadata()["api_rate_slowdowns"] == 1
        assert gate.rate_factor == pytest.approx(RequestGate.SLOWDOWN)
        # A burst of 429s is one signal: a second one within the second changes nothing.
        assert gate.slow_down() is False
        time.sleep(RequestGate.RECOVER_EVERY_SECONDS + 0.1)
        assert gate.rate_factor == pytest.approx(RequestGate.SLOWDOWN + RequestGate.RECOVER_STEP)


def test_two_clients_in_one_process_share_the_rate_limit_and_retries_count() -> None:
    rps = 8
    flaky = itertools.count()

    def respond(seen: Seen) -> Reply:
        # Every fifth request fails once more, so retries must queue behind the same limiter.
        return Reply(status=503) if next(flaky) % 5 == 0 else Reply(json={"id": "c"})

    with ScriptedServer(respond) as server:
        with make_client(server, rps=rps) as a, make_client(server, rps=rps) as b:

            def drain(client: AptenClient, prefix: str) -> None:
                list(client.get_calls([f"{prefix}{i}" for i in range(14)]))

            threads = [threading.Thread(target=drain, args=(c, p)) for c, p in ((a, "a"), (b, "b"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert a.stats.retries + b.stats.retries > 0
        times = [r.t for r in server.requests]
    assert len(times) >= 28
    assert max_in_any_window(times) <= rps
