"""Planning from the inbox: bounded scans, overlap re-reads never counted twice, the call's day."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from apten_assets.lib.webhook_events import InboxScanCursor, call_day, scan_inbox
from apten_assets.webhooks import Inbox

RECEIVED = datetime(2026, 5, 14, 15, 0, tzinfo=UTC)


def _store(inbox: Inbox, event: str, data: dict, timestamp: str, offset_seconds: int) -> None:
    envelope = {"event": event, "data": data, "timestamp": timestamp}
    inbox.store(json.dumps(envelope).encode(), envelope, RECEIVED + timedelta(seconds=offset_seconds))


def test_scans_are_bounded_and_overlap_rereads_are_not_new(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    for n in range(7):
        _store(inbox, "call.transferred", {"callId": f"call-{n}"}, "2026-05-13T10:00:00Z", n)
    _store(inbox, "leadTagged", {"leadId": "l1", "tag": "isHot"}, "2026-05-13T10:00:00Z", 8)
    cursor = InboxScanCursor()
    seen: list[str] = []
    sizes = []
    for _ in range(4):
        scan = scan_inbox(inbox, InboxScanCursor.parse(cursor.to_json()), max_deliveries=3)
        cursor = scan.cursor
        sizes.append((scan.new_deliveries, scan.more_waiting))
        seen += [call_id for ids in scan.calls_by_day.values() for call_id in ids]
    assert sizes == [(3, True), (3, True), (2, False), (0, False)]
    assert sorted(seen) == [f"call-{n}" for n in range(7)]
    assert cursor.unloaded_other == 1


def test_a_call_named_by_several_deliveries_goes_to_its_earliest_day(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    _store(inbox, "call.transferred", {"callId": "c"}, "2026-05-13T00:01:00Z", 0)
    _store(inbox, "call.completed", {"callId": "c", "durationSeconds": 300}, "2026-05-13T00:03:00Z", 1)
    scan = scan_inbox(inbox, InboxScanCursor())
    assert scan.calls_by_day == {date(2026, 5, 12): ["c"]}
    assert (scan.new_deliveries, scan.new_call_deliveries) == (2, 2)


def test_call_day_uses_the_start_of_the_call(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    _store(inbox, "call.completed", {"callId": "a", "durationSeconds": 45}, "2026-05-13T00:00:30Z", 0)
    _store(inbox, "agentMissedTransfer", {"callId": "b"}, "2026-05-13T00:00:30Z", 1)
    _store(inbox, "call.completed", {"callId": "x"}, "not a time", 2)
    days = {d.call_id: call_day(d) for d in inbox.iter_deliveries()}
    assert days == {"a": date(2026, 5, 12), "b": date(2026, 5, 13), "x": RECEIVED.date()}
