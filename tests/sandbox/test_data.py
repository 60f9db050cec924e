"""The generated dataset itself: shapes, variety and determinism, without HTTP."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from apten_assets.sandbox.data import SandboxDataset
from tests.conftest import SANDBOX_ANCHOR, SMALL_SPEC

DOC_LEAD_KEYS = {
    "id", "firstName", "lastName", "phone", "customerProfile", "createdAt", "updatedAt", "lastActivityAt",
    "additionalInfo", "hasReplied", "isHot", "isQualified", "isUnsubscribed", "isAiOn", "tags", "summary",
    "deleted", "deletedAt",
}  # fmt: skip
CALL_KEYS = {
    "id", "leadId", "direction", "callStatus", "durationSeconds", "createdAt", "updatedAt", "summary",
    "transcript", "isTransfer", "endedBy", "isMidCallTransfer", "isVoicemail", "answeredBy", "leadNeverSpoke",
}  # fmt: skip


@pytest.fixture(scope="module")
def dataset() -> SandboxDataset:
    return SandboxDataset(replace(SMALL_SPEC, n_leads=120))


def all_timestamps(value: object) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in all_timestamps(v)]
    if isinstance(value, list):
        return [s for v in value for s in all_timestamps(v)]
    return [value] if isinstance(value, str) and value[:2] == "20" and "T" in value else []


def test_same_seed_and_anchor_give_identical_json() -> None:
    first, second = SandboxDataset(SMALL_SPEC), SandboxDataset(SMALL_SPEC)

    def snapshot(dataset: SandboxDataset) -> str:
        calls = [
            dataset.call_json(c, SANDBOX_ANCHOR) for c in dataset.lead_call_ids + dataset.webchat_call_ids
        ]
        events = [dataset.events(lead["id"]) for lead in dataset.leads]
        return json.dumps([dataset.leads, events, calls])

    assert snapshot(first) == snapshot(second)
    assert snapshot(SandboxDataset(replace(SMALL_SPEC, seed=8))) != snapshot(first)


def test_small_spec_has_every_category() -> None:
    dataset = SandboxDataset(SMALL_SPEC)
    categories = {
        "deleted leads": dataset.deleted_lead_ids,
        "404 calls": dataset.missing_call_ids,
        "webchat": dataset.webchat_call_ids,
        "late": dataset.late_summary_call_ids,
        "never": dataset.never_summary_call_ids,
        "in progress": dataset.in_progress_call_ids,
        "transfers": dataset.transfer_call_ids,
        "voicemail": dataset.voicemail_call_ids,
        "legacy": dataset.legacy_call_ids,
    }
    assert [name for name, ids in categories.items() if not ids] == []


def test_leads_carry_every_documented_field_and_mixed_id_formats(dataset: SandboxDataset) -> None:
    for lead in dataset.leads:
        assert lead.keys() >= DOC_LEAD_KEYS
        assert lead["deleted"] == (lead["deletedAt"] is not None)
    external = [lead.get("externalLeadId", "absent") for lead in dataset.leads]
    assert (
        "absent" in external
        and None in external
        and any(isinstance(e, str) and e != "absent" for e in external)
    )
    ids = [lead["id"] for lead in dataset.leads]
    assert any(i.startswith("room_") for i in ids)
    assert any(len(i) == 36 and not set(i[-2:]) <= set("0123456789abcdef") for i in ids)  # non-hex "UUID"
    assert dataset.deleted_lead_ids
    assert any("email" not in lead for lead in dataset.leads)


def test_lead_timestamps_cover_their_events(dataset: SandboxDataset) -> None:
    for lead in dataset.leads:
        events = dataset.events(lead["id"])
        assert lead["updatedAt"] >= max(e["updatedAt"] for e in events)
        assert lead["lastActivityAt"] == max(e["timestamp"] for e in events)
        assert [(e["updatedAt"], e["id"]) for e in events] == sorted(
            (e["updatedAt"], e["id"]) for e in events
        )


def test_events_cover_every_type_and_some_change_later(dataset: SandboxDataset) -> None:
    events = [event for lead in dataset.leads for event in dataset.events(lead["id"])]
    types = {event["type"] for event in events}
    assert {
        "MESSAGE",
        "CALL",
        "EMAIL",
        "TOOL_CALL",
        "CUSTOM",
        "COMPLIANCE_BLOCKED",
        "APPOINTMENT_BOOKED",
    } <= types
    later = [e for e in events if e["updatedAt"] > e["timestamp"] and e["type"] != "CALL"]
    assert later, "some events are updated after they happened"
    assert any(e["updatedAt"][:10] > e["timestamp"][:10] for e in events), "some updates land on a later day"
    assert any("channel" in e for e in events), "an envelope field newer doc versions add"


def test_call_event_id_is_the_call_id_and_carries_call_metadata(dataset: SandboxDataset) -> None:
    call_events = dataset.call_events()
    assert {e["id"] for e in call_events} == set(dataset.lead_call_ids)
    for event in call_events:
        assert set(event["data"]) == {"direction", "durationSeconds", "callStatus", "isTransfer"}
        call = dataset.call_json(event["id"], SANDBOX_ANCHOR)
        if call is None:
            assert event["id"] in dataset.missing_call_ids
            continue
        assert call["leadId"] == event["roomId"]
        assert call["createdAt"] == event["timestamp"]
        assert call["callStatus"] == event["data"]["callStatus"]


def test_calls_start_within_the_last_days_including_today(dataset: SandboxDataset) -> None:
    first_day = (SANDBOX_ANCHOR - timedelta(days=SMALL_SPEC.days - 1)).date().isoformat()
    anchor = SANDBOX_ANCHOR.isoformat().replace("+00:00", ".000Z")
    starts = [e["timestamp"] for e in dataset.call_events()]
    assert min(starts)[:10] >= first_day and max(starts) <= anchor
    assert {s[:10] for s in starts} >= {first_day, SANDBOX_ANCHOR.date().isoformat()}


def test_every_timestamp_has_millisecond_precision(dataset: SandboxDataset) -> None:
    calls = [dataset.call_json(c, SANDBOX_ANCHOR) for c in dataset.lead_call_ids + dataset.webchat_call_ids]
    stamps = all_timestamps([dataset.leads, dataset.call_events(), calls])
    assert stamps and all(s.endswith(".000Z") and len(s) == 24 for s in stamps)


def test_call_records_have_documented_and_described_fields(dataset: SandboxDataset) -> None:
    ready = [dataset.call_json(c, SANDBOX_ANCHOR) for c in dataset.ready_summary_call_ids]
    modern_lead_calls = [c for c in ready if c and "leadId" in c and c["id"] not in dataset.legacy_call_ids]
    assert all(call.keys() >= CALL_KEYS and "language" in call for call in modern_lead_calls)
    for call_id in dataset.legacy_call_ids:
        assert "isVoicemail" not in dataset.call_json(call_id, SANDBOX_ANCHOR)
    transfer = dataset.call_json(dataset.transfer_call_ids[0], SANDBOX_ANCHOR)
    assert transfer["isTransfer"] is True and transfer.get("transferNumber", "+1").startswith("+1")
    voicemail = dataset.call_json(dataset.voicemail_call_ids[0], SANDBOX_ANCHOR)
    assert voicemail["isVoicemail"] is True and voicemail["leadNeverSpoke"] is True


def test_transcripts_have_turns_per_call(dataset: SandboxDataset) -> None:
    complete = [
        call
        for call in (dataset.call_json(c, SANDBOX_ANCHOR) for c in dataset.ready_summary_call_ids)
        if call["callStatus"] == "COMPLETE" and call["id"] not in dataset.voicemail_call_ids
    ]
    assert complete
    for call in complete:
        turns = call["transcript"]
        assert len(turns) == SMALL_SPEC.turns_per_call
        assert all(turn.keys() == {"role", "content", "startTime", "endTime"} for turn in turns)
        assert all(turn["startTime"] <= turn["endTime"] for turn in turns)


def test_in_progress_calls_have_no_transcript_and_no_summary(dataset: SandboxDataset) -> None:
    assert dataset.in_progress_call_ids
    for call_id in dataset.in_progress_call_ids:
        call = dataset.call_json(call_id, SANDBOX_ANCHOR + timedelta(days=30))
        assert call["callStatus"] == "IN_PROGRESS" and call["transcript"] == [] and "summary" not in call


def test_webchat_calls_have_a_session_and_no_lead(dataset: SandboxDataset) -> None:
    assert dataset.webchat_call_ids
    lead_event_ids = {e["id"] for e in dataset.call_events()}
    for call_id in dataset.webchat_call_ids:
        call = dataset.call_json(call_id, SANDBOX_ANCHOR)
        assert "sessionId" in call and "leadId" not in call
        assert call_id not in lead_event_ids


def test_summary_modes_follow_the_clock(dataset: SandboxDataset) -> None:
    delay = timedelta(seconds=SMALL_SPEC.late_summary_delay_seconds)
    at_anchor = SANDBOX_ANCHOR
    assert all("summary" in dataset.call_json(c, at_anchor) for c in dataset.ready_summary_call_ids)
    late = dataset.late_summary_call_ids
    assert late and all("summary" not in dataset.call_json(c, at_anchor) for c in late)
    after_delay = at_anchor + delay + timedelta(seconds=1)
    assert all("summary" in dataset.call_json(c, after_delay) for c in late)
    far_future = at_anchor + timedelta(days=365)
    assert all("summary" not in dataset.call_json(c, far_future) for c in dataset.never_summary_call_ids)


def test_a_summary_arriving_moves_the_call_updated_at(dataset: SandboxDataset) -> None:
    call_id = dataset.late_summary_call_ids[0]
    before = dataset.call_json(call_id, SANDBOX_ANCHOR)
    released_ms = int(SANDBOX_ANCHOR.timestamp() * 1000) + 5000
    after = dataset.call_json(call_id, SANDBOX_ANCHOR + timedelta(seconds=5), released_at_ms=released_ms)
    assert "summary" in after and after["updatedAt"] > before["updatedAt"]


def test_missing_calls_answer_nothing(dataset: SandboxDataset) -> None:
    assert dataset.missing_call_ids
    assert all(dataset.call_json(c, SANDBOX_ANCHOR) is None for c in dataset.missing_call_ids)
    assert dataset.call_json("no-such-call", SANDBOX_ANCHOR) is None


def test_n_calls_replaces_calls_per_lead() -> None:
    dataset = SandboxDataset(replace(SMALL_SPEC, n_leads=10, n_calls=103))
    assert len(dataset.lead_call_ids) == 103


@pytest.mark.parametrize(
    "changes",
    [
        {"n_leads": 0},
        {"share_late_summaries": 1.5},
        {"share_late_summaries": 0.7, "share_never_summaries": 0.5},
    ],
)
def test_spec_rejects_impossible_values(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        replace(SMALL_SPEC, **changes)
