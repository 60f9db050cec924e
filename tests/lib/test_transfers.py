"""Transfer attempts derived from webhooks and the call record, whatever order deliveries came in."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from apten_assets.lib.transfers import CallTransferRecord, TransferDelivery, transfer_attempt_rows

T0 = datetime(2026, 5, 13, 10, 0, tzinfo=UTC)


def _delivery(key: str, event: str, seconds: int, **data: object) -> TransferDelivery:
    at = T0 + timedelta(seconds=seconds)
    return TransferDelivery(
        key, event, at, at + timedelta(seconds=1), {"callId": "c1", "leadId": "l1", **data}
    )


def _summary(rows: list[dict]) -> list[tuple]:
    return [
        (r["attempt"], r["transfer_type"], r["target_number"], r["fallback_number"], r["outcome"])
        for r in rows
    ]


FALLBACK_LIFECYCLE = [
    _delivery("a", "call.transferred", 0, transferType="WARM", transferTo="+1001"),
    _delivery(
        "b", "transferFallbackTriggered", 20, originalTransferNumber="+1001", fallbackTransferNumber="+1002"
    ),
    _delivery(
        "c",
        "agentMissedTransfer",
        20,
        transferNumber="+1001",
        fallbackAttempted=True,
        fallbackTransferNumber="+1002",
    ),
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_arrival_order_does_not_change_the_rows(order: tuple[int, ...]) -> None:
    rows = transfer_attempt_rows("c1", [FALLBACK_LIFECYCLE[i] for i in order])
    assert _summary(rows) == [(1, "WARM", "+1001", "+1002", "fallback_triggered")]
    assert rows[0]["delivery_keys"] == ["a", "b", "c"]
    assert rows[0]["fallback_attempted"] is True and rows[0]["source"] == "webhook"


def test_outcomes_attach_to_the_latest_attempt_started_before_them() -> None:
    deliveries = [
        _delivery("s2", "call.transferred", 60, transferType="WARM", transferTo="+2002"),
        _delivery("m1", "agentMissedTransfer", 30, transferNumber="+2001", fallbackAttempted=False),
        _delivery("c2", "call.transfer.connected", 80, transferNumber="+2002"),
        _delivery("s1", "call.transferred", 0, transferType="WARM", transferTo="+2001"),
    ]
    rows = transfer_attempt_rows("c1", deliveries)
    assert _summary(rows) == [(1, "WARM", "+2001", None, "missed"), (2, "WARM", "+2002", None, "connected")]
    assert rows[0]["missed_at"] == T0 + timedelta(seconds=30)
    assert rows[1]["connected_at"] == T0 + timedelta(seconds=80)


def test_an_outcome_before_any_start_goes_to_attempt_one() -> None:
    deliveries = [
        _delivery("c", "call.transfer.connected", 5, transferNumber="+3001"),
        _delivery("s", "call.transferred", 10, transferType="WARM", transferTo="+3001"),
    ]
    assert _summary(transfer_attempt_rows("c1", deliveries)) == [(1, "WARM", "+3001", None, "connected")]


def test_an_outcome_whose_start_never_arrived_still_makes_attempt_one() -> None:
    rows = transfer_attempt_rows("c1", [_delivery("m", "agentMissedTransfer", 5, transferNumber="+4001")])
    assert _summary(rows) == [(1, None, "+4001", None, "missed")]
    assert rows[0]["started_at"] is None


def test_webchat_transfer_keeps_the_session_and_no_lead() -> None:
    delivery = TransferDelivery(
        "w", "webchat.call.transferred", T0, T0, {"callId": "c1", "sessionId": "s-1", "transferType": "COLD"}
    )
    (row,) = transfer_attempt_rows("c1", [delivery])
    assert (row["lead_id"], row["session_id"], row["transfer_type"], row["outcome"]) == (
        None,
        "s-1",
        "COLD",
        "started",
    )


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (CallTransferRecord("c1", is_transfer=True, transfer_number="+5001", transfer_connected_seconds=40.0),
         (1, None, "+5001", None, "connected")),
        (CallTransferRecord("c1", is_transfer=True, transfer_number="+5001",
                            fallback_transfer_number="+5002"),
         (1, None, "+5001", "+5002", "fallback_triggered")),
        (CallTransferRecord("c1", is_transfer=True, transfer_number="+5001", transfer_status="NO_ANSWER"),
         (1, None, "+5001", None, "missed")),
        (CallTransferRecord("c1", is_transfer=True, transfer_type="COLD"),
         (1, "COLD", None, None, "started")),
    ],
)  # fmt: skip
def test_a_transfer_call_without_webhooks_gets_one_attempt_from_its_record(
    record: CallTransferRecord, expected: tuple
) -> None:
    rows = transfer_attempt_rows("c1", [], record)
    assert _summary(rows) == [expected]
    assert rows[0]["source"] == "api" and rows[0]["delivery_keys"] == []


def test_no_transfer_no_rows() -> None:
    assert transfer_attempt_rows("c1", [], CallTransferRecord("c1", is_transfer=False)) == []
    assert transfer_attempt_rows("c1", [_delivery("x", "call.completed", 0)], None) == []


def test_the_record_fills_what_the_latest_webhook_attempt_left_open() -> None:
    start = _delivery("s", "call.transferred", 0, transferType="COLD", transferTo="+6001")
    record = CallTransferRecord("c1", lead_id="l1", is_transfer=True, transfer_connected_seconds=12.0)
    (row,) = transfer_attempt_rows("c1", [start], record)
    assert (row["outcome"], row["source"], row["target_number"]) == ("connected", "webhook", "+6001")
