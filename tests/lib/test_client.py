"""AptenClient against real HTTP on loopback: scripted servers for exact edge cases, the sandbox for
whole-dataset behaviour."""

from __future__ import annotations

import gzip
import itertools
import logging
import threading
import time
import zlib
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
    AptenMalformedResponse,
    AptenProtocolError,
    AptenRetriesExhausted,
    CallFetch,
    RequestGate,
    RetryPolicy,
    decode_json,
    starts_per_window,
    to_api_timestamp,
)
from apten_assets.lib.config import AptenSettings, ConfigError
from apten_assets.lib.models import Call, repair_text
from tests.lib.scripted_server import Reply, ScriptedServer, Seen, max_in_any_window, paged

KEY = "sk-test-5f1c9a7e-never-show-me"
FAST = RetryPolicy(max_attempts=4, base_delay_seconds=0.01, max_delay_seconds=0.05)
SINCE = datetime(2026, 1, 1, tzinfo=UTC)


def make_client(
    server: ScriptedServer,
    *,
    rps: float = 1000,
    concurrency: int = 4,
    retry: RetryPolicy = FAST,
    limits: dict | None = None,
    **kw,
) -> AptenClient:
    settings = AptenSettings(
        base_url=server.base_url, api_key=KEY, max_rps=rps, max_concurrency=concurrency, **(limits or {})
    )
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


def test_an_integer_past_pythons_digit_limit_decodes_as_an_infinite_float() -> None:
    # 5,000 digits: json.loads alone raises ValueError (sys.get_int_max_str_digits is 4,300).
    body = b'{"id": "c1", "durationSeconds": ' + b"9" * 5000 + b', "n": 12}'
    decoded = decode_json(body, 512).body
    assert decoded["id"] == "c1" and decoded["n"] == 12
    assert decoded["durationSeconds"] == float("inf")
    call = Call.from_json(decoded)
    assert call.duration_seconds is None and any("durationSeconds" in w for w in call.warnings)


@pytest.mark.parametrize(
    ("raw", "honest"),
    [
        (b'{"id": "c1", "summary": "fine", "n": 12, "t": [{"content": "caf\xc3\xa9"}]}', True),
        (b'{"id": "c1", "summary": "Jo\\ud83d"}', False),
        (b'{"id": "c1", "summary": "Jo\\uD83D"}', False),
        (b'{"id": "c1", "summary": "Jo\xed\xa0\xbd"}', False),  # a surrogate encoded as UTF-8
        (b'{"id": "c1", "k\\u0000": 1}', False),
        (b'{"id": "c1", "score": NaN}', False),
        (b'{"id": "c1", "score": -Infinity}', False),
        (b'{"id": "c1", "n": ' + b"9" * 5000 + b"}", False),
        ('{"id": "c1"}'.encode("utf-16"), False),
    ],
)
def test_a_body_is_honest_only_when_its_bytes_show_nothing_to_repair(raw: bytes, honest: bool) -> None:
    body, said_honest = decode_json(raw, 512)
    assert said_honest is honest
    # The screen may say "look" for nothing (a false alarm costs a serialisation), never the reverse.
    if honest:
        assert repair_text(body) == (body, 0)
    elif b"9999" in raw or b"NaN" in raw or b"Infinity" in raw or b"\\u" in raw or b"\xed" in raw:
        assert repair_text(body)[1] > 0


@pytest.mark.parametrize("number", [b"1e400", b"-1.5e999"])
def test_a_float_past_a_doubles_range_is_not_honest_and_the_repair_counts_it(number: bytes) -> None:
    # Valid JSON that reads as an infinity: the step must repair (null) and count it, not skip it.
    body, honest = decode_json(b'{"id": "c1", "score": ' + number + b', "n": 1.5}', 512)
    assert honest is False
    assert repair_text(body) == ({"id": "c1", "score": None, "n": 1.5}, 1)


def test_map_concurrent_keeps_fetching_ahead_while_the_caller_is_busy() -> None:
    """A caller writing a batch holds the generator; the threads go on with up to `read_ahead`
    items meanwhile, and no further."""
    started: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
        return x

    def started_count() -> int:
        with lock:
            return len(started)

    def settle() -> int:
        # Wait until the count stops moving (the threads ran out of admitted work).
        last, deadline = -1, time.monotonic() + 10
        while time.monotonic() < deadline:
            now = started_count()
            if now == last:
                return now
            last = now
            time.sleep(0.2)
        return started_count()

    with ScriptedServer(paged([([], None)], "leads")) as server, make_client(server, concurrency=4) as c:
        results = c.map_concurrent(work, range(1000), read_ahead=100)
        taken = [next(results)]
        # The caller is busy now (not pulling): the fan-out fills its read-ahead and stops there.
        assert settle() == 100
        taken += [next(results) for _ in range(10)]
        assert settle() == 110
        taken += list(results)
        assert sorted(taken) == list(range(1000))

        started.clear()
        lazy = c.map_concurrent(work, range(1000))
        next(lazy)
        # Without read-ahead: two rounds of the 4 threads.
        assert settle() == 8
        lazy.close()


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


# --------------------------------------------------------------------------- limits on one answer

ONE_TRY = RetryPolicy(max_attempts=1)
TWO_TRIES = RetryPolicy(max_attempts=2, base_delay_seconds=0.01, max_delay_seconds=0.01)
SLOW_READS = httpx.Timeout(connect=2.0, read=2.0, write=2.0, pool=2.0)


def test_a_body_trickled_inside_the_read_timeout_is_cut_at_the_request_deadline() -> None:
    """One byte every 0.1 s never trips the 2 s read timeout; the whole body would take 30 s."""
    slow = Reply(body=b'{"id": "call_1"}'.ljust(300), trickle=0.1)
    with ScriptedServer(lambda seen: slow) as server:
        client = make_client(
            server, retry=TWO_TRIES, timeout=SLOW_READS, limits={"request_deadline_seconds": 1}
        )
        began = time.monotonic()
        with client, pytest.raises(AptenRetriesExhausted, match="deadline") as info:
            client.get_call("call_1")
        elapsed = time.monotonic() - began
    assert "APTEN_REQUEST_DEADLINE_SECONDS=1" in str(info.value)
    assert len(server.requests) == 2
    assert client.stats.retries_by_reason == Counter({"deadline": 1})
    assert elapsed < 10  # two attempts of 1 s each, not two of 30 s


def test_trickled_headers_are_cut_at_the_request_deadline_too() -> None:
    slow = Reply(json={"leads": [], "nextToken": None}, trickle=0.1, trickle_headers=True)
    with ScriptedServer(lambda seen: slow) as server:
        client = make_client(
            server, retry=ONE_TRY, timeout=SLOW_READS, limits={"request_deadline_seconds": 1}
        )
        began = time.monotonic()
        with client, pytest.raises(AptenRetriesExhausted, match="deadline"):
            list(client.iter_leads(updated_since=SINCE))
        assert time.monotonic() - began < 8  # the status line and headers alone take 10 s
    assert len(server.requests) == 1


def test_a_caller_budget_cuts_a_trickle_and_skips_a_retry_after_past_it() -> None:
    """A sensor tick's client: nothing it sends runs past `stop_at`, neither a slow answer nor
    the wait a Retry-After asks for."""
    answers = {
        "/v1/calls/slow": Reply(body=b'{"id": "slow"}'.ljust(300), trickle=0.1),
        "/v1/calls/busy": Reply(status=503, headers={"Retry-After": "30"}),
    }
    with ScriptedServer(lambda seen: answers[seen.path]) as server:
        for call_id in ("slow", "busy"):
            stop_at = time.monotonic() + 1.0
            policy = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, retry_after_cap_seconds=60)
            with (
                make_client(server, retry=policy, timeout=SLOW_READS, stop_at=stop_at) as client,
                pytest.raises(AptenRetriesExhausted, match="time budget ran out|deadline"),
            ):
                client.get_call(call_id)
            assert time.monotonic() - stop_at < 3, call_id
    assert [r.path for r in server.requests] == ["/v1/calls/slow", "/v1/calls/busy"]


def test_a_gzip_bomb_stops_at_the_body_limit_without_retrying() -> None:
    bomb = gzip.compress(b'{"id": "call_1", "padding": "' + b"0" * 50_000_000 + b'"}', compresslevel=9)
    assert len(bomb) < 100_000
    reply = Reply(body=bomb, headers={"content-encoding": "gzip"})
    with (
        ScriptedServer(lambda seen: reply) as server,
        make_client(server, limits={"max_body_bytes": 1_000_000}) as client,
        pytest.raises(AptenMalformedResponse, match="over 1,000,000 bytes once decoded") as info,
    ):
        client.get_call("call_1")
    assert "APTEN_MAX_BODY_BYTES" in str(info.value) and "GET /calls/{callId}" in str(info.value)
    assert len(server.requests) == 1


def test_a_deflate_bomb_on_a_listing_page_stops_at_the_body_limit() -> None:
    squeezer = zlib.compressobj(9)
    page = b'{"leads": [], "nextToken": null, "pad": "' + b" " * 20_000_000 + b'"}'
    bomb = squeezer.compress(page) + squeezer.flush()
    reply = Reply(body=bomb, headers={"content-encoding": "deflate"})
    with (
        ScriptedServer(lambda seen: reply) as server,
        make_client(server, limits={"max_body_bytes": 2_000_000}) as client,
        pytest.raises(AptenMalformedResponse, match="APTEN_MAX_BODY_BYTES"),
    ):
        list(client.iter_leads(updated_since=SINCE))
    assert len(server.requests) == 1


def test_an_endless_body_stops_at_the_body_limit() -> None:
    """A chunked body that never ends: read whole, this test would never finish."""
    reply = Reply(endless=b"[" + b"0," * 8000)
    with (
        ScriptedServer(lambda seen: reply) as server,
        make_client(server, limits={"max_body_bytes": 5_000_000}) as client,
        pytest.raises(AptenMalformedResponse, match="over 5,000,000 bytes"),
    ):
        client.get_call("call_1")


def endless_tokens(items_key: str, items: list | None = None) -> ScriptedServer:
    fresh = itertools.count()
    return ScriptedServer(lambda seen: Reply(json={items_key: items or [], "nextToken": f"t{next(fresh)}"}))


def test_a_fresh_next_token_forever_stops_at_the_page_limit_naming_the_endpoint() -> None:
    with (
        endless_tokens("leads", [lead(1)]) as server,
        make_client(server, limits={"max_pages": 40}) as client,
        pytest.raises(AptenProtocolError, match="APTEN_MAX_PAGES") as info,
    ):
        list(client.iter_leads(updated_since=SINCE))
    assert "GET /leads: Apten still returned a nextToken after 40 pages" in str(info.value)
    assert len(server.requests) == 40


def test_endless_empty_filtered_event_pages_stop_at_the_page_limit_naming_the_lead() -> None:
    with (
        endless_tokens("events") as server,
        make_client(server, limits={"max_pages": 25}) as client,
        pytest.raises(AptenProtocolError, match="leadId='room_abc'.*after 25 pages"),
    ):
        list(client.iter_lead_events("room_abc", since=SINCE, types=["CALL"]))
    assert len(server.requests) == 25


def test_the_page_limit_is_per_listing_and_a_listing_of_exactly_that_many_pages_completes() -> None:
    pages = [([lead(i)], f"t{i}") for i in range(9)] + [([lead(9)], None)]
    with ScriptedServer(paged(pages, "leads")) as server, make_client(server, limits={"max_pages": 10}) as c:
        assert len(list(c.iter_leads(updated_since=SINCE))) == 10
        assert len(list(c.iter_leads(updated_since=SINCE))) == 10
    assert len(server.requests) == 20


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_json_nested_tens_of_thousands_deep_is_a_malformed_body_not_a_recursion_error() -> None:
    body = b'{"id": "call_1", "transcript": ' + deep(50_000) + b"}"
    with (
        ScriptedServer(lambda seen: Reply(body=body)) as server,
        make_client(server) as client,
        pytest.raises(AptenMalformedResponse, match="nested deeper than 512 levels") as info,
    ):
        client.get_call("call_1")
    assert "APTEN_MAX_JSON_DEPTH" in str(info.value) and "call_1" in str(info.value)
    assert len(server.requests) == 1  # the same record comes back the same: not retried


def test_deep_json_in_a_listing_page_and_in_an_error_body_never_recurses() -> None:
    page = b'{"leads": [{"id": "lead_1", "additionalInfo": ' + deep(30_000) + b'}], "nextToken": null}'
    error = b'{"message": ' + deep(30_000) + b"}"
    answers = {"/v1/leads": Reply(body=page), "/v1/leads/room_abc/events": Reply(status=422, body=error)}
    with ScriptedServer(lambda seen: answers[seen.path]) as server, make_client(server) as client:
        with pytest.raises(AptenMalformedResponse, match="nested deeper"):
            list(client.iter_leads(updated_since=SINCE))
        with pytest.raises(AptenHTTPError, match=r'HTTP 422: \{"message": \[\[\['):
            list(client.iter_lead_events("room_abc", since=SINCE))


def test_the_depth_limit_is_configurable_and_brackets_inside_strings_do_not_count() -> None:
    quoted = {"id": "call_1", "summary": "[" * 5000 + '\\"{' * 100, "nested": [[[["ok"]]]]}
    answers = {"/v1/calls/call_1": Reply(json=quoted), "/v1/calls/call_2": Reply(body=deep(40))}
    with (
        ScriptedServer(lambda seen: answers[seen.path]) as server,
        make_client(server, limits={"max_json_depth": 20}) as client,
    ):
        assert client.get_call("call_1").body == quoted
        with pytest.raises(AptenMalformedResponse, match="deeper than 20 levels"):
            client.get_call("call_2")


# --------------------------------------------------------------------------- Retry-After for everyone


def test_a_retry_after_on_the_last_attempt_still_holds_every_other_request() -> None:
    answers = {"/v1/calls/limited": Reply(status=429, headers={"Retry-After": "1.5"})}

    def respond(seen: Seen) -> Reply:
        return answers.get(seen.path, Reply(json={"id": "c"}))

    with ScriptedServer(respond) as server, make_client(server) as a, make_client(server) as b:
        with pytest.raises(AptenRetriesExhausted):
            make_client(server, retry=ONE_TRY).get_call("limited")
        assert b.get_call("other").found
        assert a.get_call("third").found
    limited, other, third = server.requests
    assert other.t - limited.t >= 1.4
    assert third.t - limited.t >= 1.4


def test_a_retry_after_outlives_the_client_that_got_it() -> None:
    """The next client in the process (the next op, the next sensor tick) waits too."""
    answers = iter([Reply(status=503, headers={"Retry-After": "1.5"})])

    def respond(seen: Seen) -> Reply:
        return next(answers, Reply(json={"id": "c"}))

    with ScriptedServer(respond) as server:
        with make_client(server, retry=ONE_TRY) as first, pytest.raises(AptenRetriesExhausted):
            first.get_call("c1")
        with make_client(server) as second:
            assert second.get_call("c2").found
    refused, later = server.requests
    assert later.t - refused.t >= 1.4


def test_threads_of_other_clients_send_nothing_inside_a_retry_after_window() -> None:
    """Two clients draining calls on two threads each, one attempt per call: the 429 ends its
    own look-up, and every thread of both clients still keeps out of the window."""
    hold = 1.5
    limited_at: list[float] = []
    lock = threading.Lock()

    def respond(seen: Seen) -> Reply:
        with lock:
            if seen.path.endswith("/c5") and not limited_at:
                limited_at.append(seen.t)
                return Reply(status=429, headers={"Retry-After": str(hold)})
        return Reply(json={"id": "c"}, delay=0.01)

    def drain(client: AptenClient, prefix: str) -> None:
        def ask(call_id: str) -> bool:
            try:
                return client.get_call(call_id).found
            except AptenRetriesExhausted:
                return False

        list(client.map_concurrent(ask, [f"{prefix}{i}" for i in range(40)]))

    with (
        ScriptedServer(respond) as server,
        make_client(server, rps=50, concurrency=2, retry=ONE_TRY) as a,
        make_client(server, rps=50, concurrency=2, retry=ONE_TRY) as b,
    ):
        threads = [threading.Thread(target=drain, args=(c, p)) for c, p in ((a, "a"), (b, "c"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    (start,) = limited_at
    # Requests already on the wire when the 429 was sent may land just after it; none later.
    inside = [r.path for r in server.requests if start + 0.2 < r.t < start + hold - 0.05]
    assert inside == []
    assert len(server.requests) == 80
