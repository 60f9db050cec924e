import json
import multiprocessing
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from apten_assets.webhooks.inbox import Inbox, MalformedEnvelope, delivery_key, parse_envelope

T0 = datetime(2026, 2, 5, 18, 0, tzinfo=UTC)


def envelope(event: str = "call.completed", call_id: str = "call-1", **data: object) -> dict:
    return {
        "event": event,
        "data": {"callId": call_id, "leadId": "lead-1", **data},
        "timestamp": "2026-02-05T18:49:41Z",
    }


def body(env: dict) -> bytes:
    return json.dumps(env).encode()


def store(inbox: Inbox, env: dict, received_at: datetime | None = None) -> bool:
    raw = body(env)
    return inbox.store(raw, parse_envelope(raw), received_at).stored


def test_stored_delivery_reads_back_byte_for_byte_with_its_ids(inbox: Inbox) -> None:
    raw = b'{"event": "webchat.call.transferred",\n "data": {"sessionId": "s-1", "callId": "c-9"},'
    raw += b' "timestamp": "t"}'
    result = inbox.store(raw, parse_envelope(raw), T0)
    [delivery] = inbox.iter_deliveries()
    assert (delivery.delivery_key, delivery.event, delivery.event_timestamp) == (
        result.delivery_key,
        "webchat.call.transferred",
        "t",
    )
    assert delivery.raw == raw
    assert (delivery.call_id, delivery.lead_id, delivery.session_id) == ("c-9", None, "s-1")
    assert delivery.received_at == T0
    assert inbox.get(result.delivery_key) == delivery


def test_same_event_is_stored_once_even_when_reserialised(inbox: Inbox) -> None:
    env = envelope()
    assert store(inbox, env)
    respaced = json.dumps(env, indent=2, sort_keys=True).encode()
    assert not inbox.store(respaced, parse_envelope(respaced)).stored
    assert inbox.count() == 1
    assert [d.raw for d in inbox.iter_deliveries()] == [body(env)]  # the first copy wins, untouched


def test_events_sharing_ids_and_second_are_kept_apart(inbox: Inbox) -> None:
    tagged = [
        {"event": "leadTagged", "data": {"leadId": "l", "tag": tag}, "timestamp": "2024-02-18T09:45:22Z"}
        for tag in ("isHot", "isQualified")
    ]
    assert delivery_key(tagged[0]) != delivery_key(tagged[1])
    assert all(store(inbox, env) for env in tagged)
    assert inbox.count() == 2


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1, 2]", b'{"data": {}}', b'{"event": 7}', b'{"event": ""}', b"\xff\xfe{"]
)
def test_malformed_envelopes_are_refused_without_quoting_the_body(raw: bytes) -> None:
    with pytest.raises(MalformedEnvelope) as info:
        parse_envelope(raw)
    assert raw.decode(errors="replace") not in str(info.value)


def test_deliveries_come_in_received_order_and_resume_from_a_cursor(inbox: Inbox) -> None:
    for minute in (3, 1, 2):
        store(inbox, envelope(call_id=f"call-{minute}"), T0 + timedelta(minutes=minute))
    deliveries = list(inbox.iter_deliveries())
    assert [d.call_id for d in deliveries] == ["call-1", "call-2", "call-3"]
    strict = list(inbox.iter_deliveries(after=deliveries[0].cursor, overlap=timedelta(0)))
    assert [d.call_id for d in strict] == ["call-2", "call-3"]
    # The default overlap re-reads recent ones: a slow write may land behind a read cursor.
    assert [d.call_id for d in inbox.iter_deliveries(after=deliveries[1].cursor)] == [
        "call-1",
        "call-2",
        "call-3",
    ]
    assert list(inbox.iter_deliveries(after=deliveries[2].cursor, overlap=timedelta(0))) == []


def test_a_bad_cursor_is_a_clear_error(inbox: Inbox) -> None:
    with pytest.raises(ValueError, match="not an inbox cursor"):
        list(inbox.iter_deliveries(after="yesterday"))


def test_empty_or_missing_inbox_reads_as_empty(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "never-created")
    assert inbox.count() == 0
    assert list(inbox.iter_deliveries()) == []


def test_temp_files_are_never_read_and_stale_ones_are_removed(inbox: Inbox) -> None:
    inbox.ensure_writable()
    store(inbox, envelope())
    stale = inbox.path / ".tmp-crashed-write"
    stale.write_bytes(b"half a deliv")
    old = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    os.utime(stale, (old, old))
    assert inbox.count() == 1
    assert inbox.remove_stale_temp_files() == 1
    assert sorted(p.name for p in inbox.path.iterdir()) == [f"{delivery_key(envelope())}.delivery"]


def _store_all(path: str, n: int) -> list[str]:
    inbox = Inbox(path)
    stored = []
    for i in range(n):
        raw = body(envelope(call_id=f"call-{i}"))
        if inbox.store(raw, parse_envelope(raw)).stored:
            stored.append(f"call-{i}")
    return stored


def test_processes_racing_on_the_same_deliveries_store_each_exactly_once(inbox: Inbox) -> None:
    inbox.ensure_writable()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(_store_all, [(str(inbox.path), 300)] * 4)
    winners = [call for result in results for call in result]
    assert sorted(winners) == sorted(f"call-{i}" for i in range(300))  # exactly one winner per key
    assert inbox.count() == 300
    assert {d.call_id for d in inbox.iter_deliveries()} == {f"call-{i}" for i in range(300)}
