"""Hostile deliveries at the receiver and in the inbox: extreme timestamps, lone surrogates, JSON
nested too deep, and files in the inbox that cannot be read back. The receiver either stores a
delivery in a form that always reads back or refuses it with a 4xx; a bad inbox file is skipped
and reported, and the honest deliveries after it still come through (RELIABILITY.md §4)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest

from apten_assets.lib.webhook_events import InboxScanCursor, call_day, event_time, scan_inbox
from apten_assets.webhooks import Inbox, delivery_key, sign
from apten_assets.webhooks.inbox import BadInboxFile
from tests.webhooks.conftest import SECRET, ReceiverThread


def post(http: httpx.Client, receiver: ReceiverThread, raw: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-Signature-SHA256": sign(raw, SECRET)}
    return http.post(receiver.url, content=raw, headers=headers)


def completed(call_id: str, timestamp: object, **data: object) -> dict:
    body = {"callId": call_id, "leadId": "lead-1", "durationSeconds": 120, **data}
    return {"event": "call.completed", "data": body, "timestamp": timestamp}


HONEST = completed("call-honest", "2026-05-14T15:30:00Z")


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00+01:00",  # overflows when converted to UTC
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00Z",  # representable, but a day earlier is not
        "9999-12-31T23:59:59.999999Z",
        1e300,
        99999999999999999999,
        "1970-01-01T00:00:00+14:00",
    ],
)
def test_an_extreme_timestamp_is_stored_and_never_stops_the_scan(
    receiver: ReceiverThread, http: httpx.Client, inbox: Inbox, timestamp: object
) -> None:
    extreme = completed("call-extreme", timestamp)
    for envelope in (extreme, HONEST):
        answer = post(http, receiver, json.dumps(envelope).encode())
        assert answer.status_code == 200, answer.text
    by_call = {d.call_id: d for d in inbox.iter_deliveries()}
    assert event_time(by_call["call-extreme"]) is None  # NULL in event_timestamp, raw kept
    assert call_day(by_call["call-extreme"]) == by_call["call-extreme"].received_at.date()
    scan = scan_inbox(inbox, InboxScanCursor())
    assert scan.new_call_deliveries == 2
    assert sorted(c for ids in scan.calls_by_day.values() for c in ids) == ["call-extreme", "call-honest"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event": "call.completed", "timestamp": "2026-05-14T15:30:00Z", '
        b'"data": {"callId": "call-1", "summary": "cut emoji \\ud83d"}}',
        b'{"event": "call.completed", "timestamp": "2026-05-14T15:30:00Z", '
        b'"data": {"callId": "call-\\udfff", "leadId": "lead-1"}}',
        b'{"event": "message.received\\ud800", "timestamp": "2026-05-14T15:30:00Z", "data": {}}',
        b'{"event": "leadTagged", "timestamp": "2026-05-14T15:30:00Z", '
        b'"data": {"\\ud83d": "\\ude00\\ud83d"}}',
    ],
)
def test_a_lone_surrogate_is_stored_once_not_a_500(
    receiver: ReceiverThread, http: httpx.Client, inbox: Inbox, raw: bytes
) -> None:
    first, again = post(http, receiver, raw), post(http, receiver, raw)
    assert (first.status_code, first.json()["status"]) == (200, "stored")
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    (stored,) = list(inbox.iter_deliveries())
    assert stored.raw == raw
    assert stored.delivery_key == first.json()["delivery_key"] == delivery_key(json.loads(raw))
    assert stored.call_id in (None, "call-1")  # an id that is not valid Unicode reads as None


def test_valid_text_keeps_its_delivery_key() -> None:
    """Hashing with surrogatepass changes nothing for real text: stored keys stay valid."""
    envelope = {"event": "call.completed", "data": {"summary": "devis – 北京 😀"}, "timestamp": "t"}
    canonical = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert delivery_key(envelope) == hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("depth", [5_000, 100_000, 500_000])
def test_json_nested_too_deep_is_refused_with_400_not_500(
    receiver: ReceiverThread, http: httpx.Client, inbox: Inbox, depth: int
) -> None:
    raw = b'{"event": "call.completed", "data": ' + b"[" * depth + b"]" * depth + b"}"
    answer = post(http, receiver, raw)
    assert answer.status_code == 400
    assert "not valid JSON" in answer.json()["error"]
    assert inbox.count() == 0


# --------------------------------------------------------------------------- bad files in the inbox

BAD_FILES = {
    "garbage": b"\x00\xff\xfe garbage \x80\n\x81",
    "empty": b"",
    "header_only_wrong_format": b'{"format": "something-else/9"}\n{}',
    "header_not_an_object": b"[1, 2, 3]\n{}",
    "bad_received_at": b'{"format": "apten-webhook-delivery/1", "delivery_key": "k", "event": "e", '
    b'"received_at": "yesterday"}\n{}',
    "received_in_the_future": b'{"format": "apten-webhook-delivery/1", "delivery_key": "k", "event": "e", '
    b'"received_at": "9999-12-31T00:00:00+00:00"}\n{"event": "call.completed", "data": {"callId": "x"}}',
    "body_not_json": b'{"format": "apten-webhook-delivery/1", "delivery_key": "k", "event": "e", '
    b'"received_at": "2026-05-14T15:00:00+00:00"}\n{"event": "call.comp',
    "body_a_list": b'{"format": "apten-webhook-delivery/1", "delivery_key": "k", "event": "e", '
    b'"received_at": "2026-05-14T15:00:00+00:00"}\n[1]',
    "body_too_deep": b'{"format": "apten-webhook-delivery/1", "delivery_key": "k", "event": "e", '
    b'"received_at": "2026-05-14T15:00:00+00:00"}\n' + b"[" * 200_000 + b"]" * 200_000,
}


def _plant(inbox: Inbox, content: bytes | None, name: str = "0" * 64) -> Path:
    """A file named like a delivery; `None` plants a directory (unreadable as a file)."""
    inbox.path.mkdir(parents=True, exist_ok=True)
    path = inbox.path / f"{name}.delivery"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("kind", [*BAD_FILES, "a_directory"])
def test_an_unreadable_inbox_file_is_skipped_and_reported_and_honest_deliveries_still_come(
    inbox: Inbox, kind: str
) -> None:
    inbox.store(json.dumps(HONEST).encode(), HONEST)
    bad = _plant(inbox, BAD_FILES.get(kind))
    later = completed("call-later", "2026-05-14T16:00:00Z")
    inbox.store(json.dumps(later).encode(), later)

    reported: list[BadInboxFile] = []
    assert [d.call_id for d in inbox.iter_deliveries(on_bad_file=reported.append)] == [
        "call-honest",
        "call-later",
    ]
    assert [r.name for r in reported] == [bad.name]
    assert reported[0].reason

    scan = scan_inbox(inbox, InboxScanCursor())
    assert sorted(c for ids in scan.calls_by_day.values() for c in ids) == ["call-honest", "call-later"]
    assert [r.name for r in scan.bad_files] == [bad.name]


def test_a_damaged_sensor_cursor_counts_as_empty() -> None:
    damaged = (
        "{not json",
        '["a list"]',
        '{"recent": 5}',
        '{"recent": {"k": "x"}}',
        '{"inbox": 3}',
        '{"inbox": "x"}',
    )
    for text in damaged:
        assert InboxScanCursor.parse(text) == InboxScanCursor()
