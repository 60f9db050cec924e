"""The sandbox's webhook sender: envelopes exactly as documented, delivered unreliably."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from apten_assets.sandbox.webhook_sender import (
    CallLifecycle,
    WebhookSender,
    agent_missed_transfer,
    call_completed,
    call_lifecycle_envelopes,
    call_transfer_connected,
    call_transferred,
    transfer_fallback_triggered,
    webchat_call_transferred,
)
from apten_assets.webhooks import Inbox, delivery_key
from tests.webhooks.conftest import SECRET

LEAD = "c4f23a1b-d8e5-4f67-90c1-2a5b8d3e9x7y"
CALL = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
LEAD2 = "fc5859ea-1f9f-4871-946c-fd73e83f05f7"
CALL2 = "ddd1cf74-e6d3-4b32-a6c4-76e81c5295ff"
JAN = datetime(2024, 1, 15, 14, 30, tzinfo=UTC)
FEB = datetime(2026, 2, 5, 18, 49, 41, tzinfo=UTC)
SWIM = {"call_id": CALL2, "lead_id": LEAD2, "phone": "+13102919783", "profile": "Swim Parent"}


# The call-related examples of apten-api.md §5.4 / §5.5, verbatim.
DOC_EXAMPLES = {
    "call.completed": {
        "event": "call.completed",
        "data": {
            "leadId": LEAD,
            "externalLeadId": "003XX000004DHPY",
            "phone": "+12025550189",
            "profile": "Default Profile",
            "callId": CALL,
            "durationSeconds": 145,
            "direction": "INBOUND",
            "summary": "Customer inquired about pricing and requested a follow-up meeting.",
        },
        "timestamp": "2024-01-15T14:30:00Z",
    },
    "call.transferred": {
        "event": "call.transferred",
        "data": {
            "leadId": LEAD,
            "externalLeadId": "003XX000004DHPY",
            "phone": "+12025550189",
            "profile": "Default Profile",
            "callId": CALL,
            "transferType": "WARM",
            "transferTo": "+12025550100",
        },
        "timestamp": "2024-01-15T14:30:00Z",
    },
    "call.transfer.connected": {
        "event": "call.transfer.connected",
        "data": {
            "leadId": LEAD2,
            "firstName": "Jane",
            "lastName": "Doe",
            "externalLeadId": "003XX000004DHPY",
            "phone": "+13102919783",
            "profile": "Swim Parent",
            "callId": CALL2,
            "transferNumber": "+14153750579",
        },
        "timestamp": "2026-02-05T18:49:41Z",
    },
    "agentMissedTransfer": {
        "event": "agentMissedTransfer",
        "data": {
            "leadId": LEAD2,
            "externalLeadId": "003XX000004DHPY",
            "phone": "+13102919783",
            "profile": "Swim Parent",
            "callId": CALL2,
            "transferNumber": "+14153750579",
            "fallbackAttempted": True,
            "fallbackTransferNumber": "+14153750579",
            "channel": "SMS",
        },
        "timestamp": "2026-02-05T18:49:41Z",
    },
    "transferFallbackTriggered": {
        "event": "transferFallbackTriggered",
        "data": {
            "leadId": LEAD2,
            "externalLeadId": "003XX000004DHPY",
            "phone": "+13102919783",
            "profile": "Swim Parent",
            "callId": CALL2,
            "originalTransferNumber": "+14153750579",
            "fallbackTransferNumber": "+14153750580",
        },
        "timestamp": "2026-02-05T18:49:41Z",
    },
    "webchat.call.transferred": {
        "event": "webchat.call.transferred",
        "data": {
            "sessionId": "550e8400-e29b-41d4-a716-446655440000",
            "orgId": "org-abc123",
            "profile": "Default Profile",
            "origin": "https://example.com/pricing",
            "callId": CALL,
            "transferType": "WARM",
            "transferTo": "+12025550100",
        },
        "timestamp": "2024-01-15T14:30:00Z",
    },
}

BUILT = {
    "call.completed": lambda: call_completed(
        when=JAN,
        call_id=CALL,
        lead_id=LEAD,
        external_lead_id="003XX000004DHPY",
        phone="+12025550189",
        profile="Default Profile",
        duration_seconds=145,
        direction="INBOUND",
        summary="Customer inquired about pricing and requested a follow-up meeting.",
    ),
    "call.transferred": lambda: call_transferred(
        when=JAN,
        call_id=CALL,
        lead_id=LEAD,
        external_lead_id="003XX000004DHPY",
        phone="+12025550189",
        profile="Default Profile",
        transfer_type="WARM",
        transfer_to="+12025550100",
    ),
    "call.transfer.connected": lambda: call_transfer_connected(
        when=FEB,
        **SWIM,
        external_lead_id="003XX000004DHPY",
        first_name="Jane",
        last_name="Doe",
        transfer_number="+14153750579",
    ),
    "agentMissedTransfer": lambda: agent_missed_transfer(
        when=FEB,
        **SWIM,
        external_lead_id="003XX000004DHPY",
        transfer_number="+14153750579",
        fallback_transfer_number="+14153750579",
        channel="SMS",
    ),
    "transferFallbackTriggered": lambda: transfer_fallback_triggered(
        when=FEB,
        **SWIM,
        external_lead_id="003XX000004DHPY",
        original_transfer_number="+14153750579",
        fallback_transfer_number="+14153750580",
    ),
    "webchat.call.transferred": lambda: webchat_call_transferred(
        when=JAN,
        call_id=CALL,
        session_id="550e8400-e29b-41d4-a716-446655440000",
        org_id="org-abc123",
        profile="Default Profile",
        origin="https://example.com/pricing",
        transfer_type="WARM",
        transfer_to="+12025550100",
    ),
}


@pytest.mark.parametrize("event", sorted(DOC_EXAMPLES))
def test_builders_reproduce_the_documented_examples_field_for_field(event: str) -> None:
    built = BUILT[event]()
    assert built == DOC_EXAMPLES[event]
    assert list(built["data"]) == list(DOC_EXAMPLES[event]["data"])  # same field order too


def test_call_completed_without_summary_leaves_the_field_out() -> None:
    built = call_completed(
        when=JAN,
        call_id=CALL,
        lead_id=LEAD,
        phone="+1",
        profile="p",
        duration_seconds=3,
        direction="OUTBOUND",
    )
    assert "summary" not in built["data"] and "externalLeadId" not in built["data"]


def test_missed_transfer_without_fallback_says_so_and_sends_no_number() -> None:
    built = agent_missed_transfer(when=FEB, **SWIM, transfer_number="+1", channel="WEBCHAT")
    assert built["data"]["fallbackAttempted"] is False
    assert "fallbackTransferNumber" not in built["data"]
    assert built["data"]["channel"] == "WEBCHAT"


def events(call: CallLifecycle) -> list[str]:
    return [e["event"] for e in call_lifecycle_envelopes(call)]


def test_lifecycle_sequences_follow_the_documented_transfer_flow() -> None:
    base = {"started_at": FEB, "duration_seconds": 300}
    assert events(CallLifecycle("c1", lead_id="l", **base)) == ["call.completed"]
    assert events(CallLifecycle("c2", lead_id="l", transfer_type="COLD", **base)) == [
        "call.transferred",
        "call.completed",
    ]
    assert events(CallLifecycle("c3", lead_id="l", transfer_type="WARM", **base)) == [
        "call.transferred",
        "call.transfer.connected",
        "call.completed",
    ]
    missed = CallLifecycle(
        "c4",
        lead_id="l",
        transfer_type="WARM",
        transfer_outcome="missed",
        fallback_transfer_number="+2",
        **base,
    )
    assert events(missed) == [
        "call.transferred",
        "transferFallbackTriggered",
        "agentMissedTransfer",
        "call.completed",
    ]
    webchat = CallLifecycle("c5", session_id="s", transfer_type="WARM", transfer_outcome="missed", **base)
    assert events(webchat) == ["webchat.call.transferred", "agentMissedTransfer"]
    [_, missed_webchat] = call_lifecycle_envelopes(webchat)
    assert missed_webchat["data"]["channel"] == "WEBCHAT" and missed_webchat["data"]["sessionId"] == "s"
    assert "leadId" not in missed_webchat["data"]


def test_lifecycle_timestamps_are_in_order_and_webhook_formatted() -> None:
    call = CallLifecycle(
        "c",
        lead_id="l",
        started_at=FEB,
        duration_seconds=300,
        transfer_type="WARM",
        summary="Booked a lesson.",
    )
    stamps = [e["timestamp"] for e in call_lifecycle_envelopes(call)]
    assert stamps == sorted(stamps)
    assert stamps[-1] == "2026-02-05T18:54:41Z"
    assert call_lifecycle_envelopes(call)[-1]["data"]["summary"] == "Booked a lesson."


def test_a_call_needs_exactly_one_of_lead_or_session() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        CallLifecycle("c", started_at=FEB, duration_seconds=1)


def _calls(n: int) -> list[dict]:
    envelopes = []
    for i in range(n):
        call = CallLifecycle(
            f"call-{i}",
            lead_id=f"lead-{i % 7}" if i % 5 else None,
            session_id=None if i % 5 else f"session-{i}",
            started_at=FEB,
            duration_seconds=60 + i,
            transfer_type=("WARM", "COLD", None)[i % 3],
            transfer_outcome=("connected", "missed")[i % 2],
            fallback_transfer_number="+14153750580" if i % 4 == 1 else None,
            summary=None if i % 2 else f"Summary {i}",
        )
        envelopes.extend(call_lifecycle_envelopes(call))
    return envelopes


def test_unreliable_delivery_stores_every_envelope_exactly_once(receiver, inbox: Inbox) -> None:
    envelopes = _calls(60)
    with WebhookSender(receiver.url, SECRET) as sender:
        report = sender.send_many(envelopes, seed=11, redeliver_rate=0.3, bad_signature_rate=0.1)
    print(f"\n{report.summary()}")
    assert report.redeliveries > 0 and report.forged > 0
    assert report.by_status[401] == report.forged
    assert report.stored == len(envelopes)
    assert report.duplicates == report.redeliveries
    assert sorted(d.delivery_key for d in inbox.iter_deliveries()) == sorted(
        delivery_key(e) for e in envelopes
    )


def test_same_seed_same_arrival_order(receiver, inbox: Inbox) -> None:
    envelopes = _calls(10)
    with WebhookSender(receiver.url, SECRET) as sender:
        first = sender.send_many(envelopes, seed=3)
    order = [d.delivery_key for d in inbox.iter_deliveries()]
    for path in inbox.path.glob("*.delivery"):
        path.unlink()
    with WebhookSender(receiver.url, SECRET) as sender:
        second = sender.send_many(envelopes, seed=3)
    assert first == second
    assert [d.delivery_key for d in inbox.iter_deliveries()] == order
    assert order != [delivery_key(e) for e in envelopes]  # arrival is out of order


def test_send_with_redeliveries_and_a_bad_signature(receiver, inbox: Inbox) -> None:
    envelope = DOC_EXAMPLES["agentMissedTransfer"]
    with WebhookSender(receiver.url, SECRET) as sender:
        assert [r.status_code for r in sender.send(envelope, bad_signature=True)] == [401]
        assert [r.json()["status"] for r in sender.send(envelope, redeliver=2)] == [
            "stored",
            "duplicate",
            "duplicate",
        ]
    assert inbox.count() == 1
