"""Parsing Apten JSON: the verbatim examples of apten-api.md, then hostile variants."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from apten_assets.lib.models import (
    MAX_ID_LENGTH,
    Call,
    CallEventData,
    Event,
    Lead,
    MalformedRecord,
    parse_timestamp,
    repair_text,
    transcript_object_count,
)

# apten-api.md §3.1, verbatim.
LEAD_LIST_ITEM = {
    "id": "room_abc",
    "firstName": "John",
    "lastName": "Doe",
    "phone": "+15555555555",
    "email": "john.doe@example.com",
    "customerProfile": "My Customer Profile",
    "createdAt": "2026-05-01T12:00:00.000Z",
    "updatedAt": "2026-05-14T15:30:00.000Z",
    "lastActivityAt": "2026-05-14T15:30:00.000Z",
    "additionalInfo": {"key1": "value1"},
    "hasReplied": True,
    "isHot": True,
    "isQualified": False,
    "isUnsubscribed": False,
    "isAiOn": True,
    "tags": [{"id": "tag1", "name": "Tag 1", "condition": "Condition 1"}],
    "summary": "Summary of the conversation.",
    "externalLeadId": "00Q5g00000ABCDEAA1",
    "deleted": False,
    "deletedAt": None,
}

# apten-api.md §3.2 (old GET /leads/{leadId}), verbatim: no id, second-precision timestamp.
OLD_SINGLE_LEAD = {
    "firstName": "John",
    "lastName": "Doe",
    "phone": "+15555555555",
    "customerProfile": "My Customer Profile",
    "additionalInfo": {"key1": "value1", "key2": "value2"},
    "createdAt": "2024-05-17T21:09:13Z",
    "hasReplied": True,
    "isHot": True,
    "isQualified": False,
    "isUnsubscribed": False,
    "isAiOn": True,
    "tags": [{"name": "Tag 1", "condition": "Condition 1"}, {"name": "Tag 2", "condition": "Condition 2"}],
    "summary": "Summary of the conversation with the lead.",
}

# apten-api.md §3.3, verbatim.
MESSAGE_EVENT = {
    "id": "msg_abc",
    "roomId": "room_abc",
    "orgId": "org_123",
    "type": "MESSAGE",
    "timestamp": "2026-05-14T15:00:00.000Z",
    "updatedAt": "2026-05-14T15:00:00.000Z",
    "data": {
        "direction": "INBOUND",
        "content": {"text": "Hi, I am interested"},
        "isAiGenerated": False,
        "deliveryChannel": "SMS",
    },
}
COMPLIANCE_BLOCKED_EVENT = {
    "id": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
    "roomId": "room_abc",
    "orgId": "org_123",
    "type": "COMPLIANCE_BLOCKED",
    "timestamp": "2026-05-20T05:50:12.000Z",
    "updatedAt": "2026-05-20T05:50:12.000Z",
    "data": {"channel": "sms", "reason": "STATE_DNC", "source": "http", "triggeredBy": "llm"},
}
# CALL data names are a guess (apten-api.md §3.3); the envelope is the documented one.
CALL_EVENT = {
    "id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
    "roomId": "c4f23a1b-d8e5-4f67-90c1-2a5b8d3e9f7c",
    "orgId": "org_123",
    "type": "CALL",
    "timestamp": "2026-06-15T14:30:00.000Z",
    "updatedAt": "2026-06-15T14:32:25.000Z",
    "data": {"direction": "OUTBOUND", "durationSeconds": 145, "callStatus": "COMPLETE", "isTransfer": False},
}

# apten-api.md §4.1, verbatim.
CALL = {
    "id": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
    "leadId": "c4f23a1b-d8e5-4f67-90c1-2a5b8d3e9f7c",
    "direction": "OUTBOUND",
    "callStatus": "COMPLETE",
    "durationSeconds": 145,
    "createdAt": "2026-06-15T14:30:00.000Z",
    "updatedAt": "2026-06-15T14:32:25.000Z",
    "summary": "Customer inquired about pricing and requested a follow-up meeting.",
    "transcript": [
        {
            "role": "assistant",
            "content": "Hi, this is Apten calling about your inquiry.",
            "startTime": "2026-06-15T14:30:01.000Z",
            "endTime": "2026-06-15T14:30:05.000Z",
        },
        {
            "role": "user",
            "content": "Yes, I had some questions about pricing.",
            "startTime": "2026-06-15T14:30:06.000Z",
            "endTime": "2026-06-15T14:30:10.000Z",
        },
    ],
    "isTransfer": False,
    "endedBy": "LEAD",
}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def call_with(**changes: object) -> dict:
    body = copy.deepcopy(CALL)
    body.update(changes)
    return body


def test_lead_list_example_parses_every_field() -> None:
    lead = Lead.from_json(LEAD_LIST_ITEM)
    assert lead.id == "room_abc"
    assert (lead.first_name, lead.last_name, lead.phone) == ("John", "Doe", "+15555555555")
    assert lead.email == "john.doe@example.com"
    assert lead.customer_profile == "My Customer Profile"
    assert lead.external_lead_id == "00Q5g00000ABCDEAA1"
    assert lead.created_at == utc(2026, 5, 1, 12)
    assert lead.updated_at == lead.last_activity_at == utc(2026, 5, 14, 15, 30)
    assert (lead.has_replied, lead.is_hot, lead.is_qualified, lead.is_unsubscribed, lead.is_ai_on) == (
        True,
        True,
        False,
        False,
        True,
    )
    assert lead.tags == [{"id": "tag1", "name": "Tag 1", "condition": "Condition 1"}]
    assert lead.additional_info == {"key1": "value1"}
    assert lead.summary == "Summary of the conversation."
    assert lead.is_deleted is False and lead.deleted_at is None
    assert lead.raw is LEAD_LIST_ITEM
    assert lead.warnings == ()


def test_old_single_lead_example_needs_the_id_from_the_path() -> None:
    with pytest.raises(MalformedRecord, match="'id' is missing"):
        Lead.from_json(OLD_SINGLE_LEAD)
    lead = Lead.from_json(OLD_SINGLE_LEAD, lead_id="room_abc")
    assert lead.id == "room_abc"
    assert lead.created_at == utc(2024, 5, 17, 21, 9, 13)
    assert lead.email is None and lead.updated_at is None and lead.external_lead_id is None
    assert lead.is_deleted is False
    assert len(lead.tags) == 2


def test_soft_deleted_lead_is_kept_with_its_deletion_time() -> None:
    lead = Lead.from_json({**LEAD_LIST_ITEM, "deleted": True, "deletedAt": "2026-05-15T00:00:00.000Z"})
    assert lead.is_deleted is True
    assert lead.deleted_at == utc(2026, 5, 15)


def test_message_and_compliance_blocked_events_parse_without_call_data() -> None:
    message = Event.from_json(MESSAGE_EVENT)
    assert (message.id, message.lead_id, message.org_id) == ("msg_abc", "room_abc", "org_123")
    assert message.type == "MESSAGE"
    assert message.timestamp == message.updated_at == utc(2026, 5, 14, 15)
    assert message.data["content"] == {"text": "Hi, I am interested"}
    assert message.call is None and not message.is_call

    blocked = Event.from_json(COMPLIANCE_BLOCKED_EVENT)
    assert blocked.type == "COMPLIANCE_BLOCKED"
    assert blocked.timestamp == utc(2026, 5, 20, 5, 50, 12)
    assert blocked.data["reason"] == "STATE_DNC"
    assert blocked.warnings == ()


def test_call_event_reads_the_guessed_call_fields() -> None:
    event = Event.from_json(CALL_EVENT)
    assert event.is_call
    assert event.id == "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
    assert event.call == CallEventData(
        direction="OUTBOUND", duration_seconds=145, call_status="COMPLETE", is_transfer=False
    )


def test_call_event_without_call_fields_gives_nulls() -> None:
    event = Event.from_json({**CALL_EVENT, "data": {"somethingNew": 1}})
    assert event.call == CallEventData(
        direction=None, duration_seconds=None, call_status=None, is_transfer=None
    )
    assert event.warnings == ()


def test_call_example_parses_every_documented_field() -> None:
    call = Call.from_json(CALL)
    assert call.id == "a1b2c3d4-e5f6-7890-abcd-ef1234567890"
    assert call.lead_id == "c4f23a1b-d8e5-4f67-90c1-2a5b8d3e9f7c"
    assert call.session_id is None
    assert (call.direction, call.call_status, call.duration_seconds) == ("OUTBOUND", "COMPLETE", 145)
    assert call.created_at == utc(2026, 6, 15, 14, 30)
    assert call.updated_at == utc(2026, 6, 15, 14, 32, 25)
    assert call.summary == "Customer inquired about pricing and requested a follow-up meeting."
    assert call.is_transfer is False and call.ended_by == "LEAD"
    assert call.ended_at == utc(2026, 6, 15, 14, 32, 25)
    # The turns themselves are derived by the warehouse (tests/warehouse/test_store.py).
    assert transcript_object_count(call.raw) == 2
    # Names the docs do not confirm are simply absent here.
    assert call.is_mid_call_transfer is None and call.is_voicemail is None and call.answered_by is None
    assert call.warnings == ()


def test_call_reads_unconfirmed_transfer_fields_when_present() -> None:
    call = Call.from_json(
        call_with(
            isTransfer=True,
            isMidCallTransfer=True,
            isVoicemail=False,
            transferTo="+12025550100",
            fallbackTransferNumber="+12025550101",
            answeredBy="machine_end_beep",
            transferConnectedSeconds=61.5,
            leadNeverSpoke=False,
        )
    )
    assert call.transfer_number == "+12025550100"
    assert call.fallback_transfer_number == "+12025550101"
    assert (call.is_transfer, call.is_mid_call_transfer, call.is_voicemail) == (True, True, False)
    assert call.answered_by == "machine_end_beep"
    assert call.transfer_connected_seconds == 61.5
    assert call.lead_never_spoke is False
    # transferNumber wins over transferTo when both are sent.
    both = Call.from_json(call_with(transferNumber="+1111", transferTo="+2222"))
    assert both.transfer_number == "+1111"


def test_webchat_call_has_session_and_no_lead() -> None:
    body = call_with(sessionId="550e8400-e29b-41d4-a716-446655440000")
    del body["leadId"]
    call = Call.from_json(body)
    assert call.lead_id is None
    assert call.session_id == "550e8400-e29b-41d4-a716-446655440000"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"leadId": "x"}, "'id' is missing"),
        ({"id": None}, "'id' is missing"),
        ({"id": 12345}, "'id' is a int, not a string"),
        ({"id": ["a"]}, "'id' is a list, not a string"),
        ({"id": "   "}, "'id' is empty"),
    ],
)
def test_call_without_a_string_id_is_malformed(body: dict, reason: str) -> None:
    with pytest.raises(MalformedRecord) as caught:
        Call.from_json(body)
    assert reason in caught.value.reason


def test_non_object_records_are_malformed() -> None:
    for parse in (Lead.from_json, Event.from_json, Call.from_json):
        with pytest.raises(MalformedRecord):
            parse(["not", "an", "object"])
        with pytest.raises(MalformedRecord):
            parse(None)


def test_malformed_record_names_the_record() -> None:
    with pytest.raises(MalformedRecord) as caught:
        Event.from_json({**CALL_EVENT, "timestamp": "yesterday"})
    assert caught.value.record_id == CALL_EVENT["id"]
    assert "timestamp" in caught.value.reason


@pytest.mark.parametrize("timestamp", [None, "", "yesterday", "2026-13-40T00:00:00Z", 1718461800, True])
def test_event_with_missing_or_unparseable_timestamp_is_malformed(timestamp: object) -> None:
    body = dict(CALL_EVENT)
    if timestamp is None:
        del body["timestamp"]
    else:
        body["timestamp"] = timestamp
    with pytest.raises(MalformedRecord):
        Event.from_json(body)


def test_event_without_type_is_malformed_and_unknown_type_is_kept() -> None:
    with pytest.raises(MalformedRecord, match="type"):
        Event.from_json({k: v for k, v in CALL_EVENT.items() if k != "type"})
    odd = Event.from_json({**COMPLIANCE_BLOCKED_EVENT, "type": "VIDEO_CALL", "brandNew": {"x": 1}})
    assert odd.type == "VIDEO_CALL" and odd.call is None
    assert odd.raw["brandNew"] == {"x": 1}
    assert odd.warnings == ()


def test_event_data_that_is_not_an_object_reads_as_empty() -> None:
    event = Event.from_json({**CALL_EVENT, "data": "oops"})
    assert event.data == {}
    assert event.call is not None and event.call.direction is None
    assert any("data" in warning for warning in event.warnings)
    assert event.raw["data"] == "oops"


def test_timestamps_with_ms_seconds_and_offsets_all_become_utc() -> None:
    assert parse_timestamp("2026-05-14T15:30:00.000Z") == (utc(2026, 5, 14, 15, 30), False)
    assert parse_timestamp("2024-01-15T14:30:00Z") == (utc(2024, 1, 15, 14, 30), False)
    assert parse_timestamp("2024-01-15T16:30:00+02:00") == (utc(2024, 1, 15, 14, 30), False)
    assert parse_timestamp("2024-01-15T09:30:00.250-05:00") == (utc(2024, 1, 15, 14, 30, 0, 250000), False)
    assert parse_timestamp("2024-01-15T14:30:00z") == (utc(2024, 1, 15, 14, 30), False)
    parsed, _ = parse_timestamp("2024-01-15T16:30:00+02:00")
    assert parsed.tzinfo is UTC
    aware = datetime(2024, 1, 15, 16, 30, tzinfo=timezone(timedelta(hours=2)))
    assert parse_timestamp(aware) == (utc(2024, 1, 15, 14, 30), False)


def test_timestamp_without_zone_is_read_as_utc_with_a_warning() -> None:
    assert parse_timestamp("2024-01-15T14:30:00") == (utc(2024, 1, 15, 14, 30), True)
    call = Call.from_json(call_with(createdAt="2026-06-15T14:30:00"))
    assert call.created_at == utc(2026, 6, 15, 14, 30)
    assert any("createdAt" in w and "no time zone" in w for w in call.warnings)
    event = Event.from_json({**CALL_EVENT, "timestamp": "2026-06-15 14:30:00"})
    assert event.timestamp == utc(2026, 6, 15, 14, 30)
    assert any("timestamp" in w for w in event.warnings)


def test_unparseable_optional_timestamp_is_null_with_a_warning() -> None:
    call = Call.from_json(call_with(updatedAt="not a time", createdAt=1718461800))
    assert call.updated_at is None and call.created_at is None
    assert any(w.startswith("updatedAt") for w in call.warnings)
    assert any(w.startswith("createdAt") for w in call.warnings)
    assert call.ended_at == utc(2026, 6, 15, 14, 30, 10)  # falls back to the last turn's end


def test_transcript_null_or_absent_means_no_turns() -> None:
    call = Call.from_json(call_with(transcript=None))
    assert transcript_object_count(call.raw) is None and call.warnings == ()
    body = call_with()
    del body["transcript"]
    call = Call.from_json(body)
    assert transcript_object_count(call.raw) is None and call.warnings == ()


def test_transcript_that_is_not_a_list_keeps_the_call_without_turns() -> None:
    call = Call.from_json(call_with(transcript={"role": "user"}))
    assert call.id == CALL["id"]
    assert transcript_object_count(call.raw) is None
    assert any("transcript" in w for w in call.warnings)


def test_non_object_turns_are_warned_about_and_not_counted() -> None:
    call = Call.from_json(
        call_with(
            transcript=[
                {"role": "assistant", "startTime": "2026-06-15T14:30:01.000Z"},
                "garbage",
                None,
                {"role": "LEAD", "content": "hi", "extra": [1, 2]},
                {"role": 7, "content": {"text": "structured"}, "startTime": "later"},
            ]
        )
    )
    # Which turns are kept, and with which values, is the warehouse's rule (tests/warehouse).
    assert transcript_object_count(call.raw) == 3
    assert sum("turn skipped" in w for w in call.warnings) == 2


def test_booleans_and_numbers_must_have_their_json_type() -> None:
    call = Call.from_json(call_with(isTransfer="true", durationSeconds="145", isVoicemail=1))
    assert call.is_transfer is None and call.duration_seconds is None and call.is_voicemail is None
    assert {w.split(":")[0] for w in call.warnings} == {"isTransfer", "durationSeconds", "isVoicemail"}
    assert call.raw["isTransfer"] == "true"
    lead = Lead.from_json({**LEAD_LIST_ITEM, "isHot": "yes", "phone": 15555555555})
    assert lead.is_hot is None and lead.phone is None
    assert Call.from_json(call_with(durationSeconds=True)).duration_seconds is None


def test_unknown_fields_and_enum_values_never_raise_and_stay_in_raw() -> None:
    body = call_with(
        callStatus="RINGING_ON_MARS",
        direction="SIDEWAYS",
        endedBy="ALIEN",
        answeredBy="dolphin",
        brandNewField={"nested": [1, 2, 3]},
    )
    call = Call.from_json(body)
    assert (call.call_status, call.direction, call.ended_by, call.answered_by) == (
        "RINGING_ON_MARS",
        "SIDEWAYS",
        "ALIEN",
        "dolphin",
    )
    assert call.raw["brandNewField"] == {"nested": [1, 2, 3]}
    assert call.warnings == ()


def test_blank_summary_counts_as_not_yet_available() -> None:
    assert Call.from_json(call_with(summary="   ")).summary is None
    assert Call.from_json(call_with(summary=None)).summary is None


def test_ten_thousand_turns_and_a_one_megabyte_summary_parse_quickly() -> None:
    turns = [
        {
            "role": "assistant" if i % 2 else "user",
            "content": f"turn {i}",
            "startTime": "2026-06-15T14:30:01.000Z",
            "endTime": "2026-06-15T14:30:05.000Z",
        }
        for i in range(10_000)
    ]
    summary = "x" * 1_000_000
    started = time.perf_counter()
    call = Call.from_json(call_with(transcript=turns, summary=summary))
    elapsed = time.perf_counter() - started
    assert transcript_object_count(call.raw) == 10_000
    assert call.ended_at == utc(2026, 6, 15, 14, 32, 25)
    assert len(call.summary or "") == 1_000_000
    assert elapsed < 2.0, f"parsing took {elapsed:.2f}s"


def test_warnings_are_capped_per_record() -> None:
    call = Call.from_json(call_with(transcript=list(range(500))))
    assert transcript_object_count(call.raw) == 0
    assert len(call.warnings) == 51
    assert call.warnings[-1] == "... and 450 more warnings"


def test_a_call_without_a_duration_ends_at_its_latest_turn_end() -> None:
    body = call_with(
        durationSeconds=None,
        transcript=[
            {"role": "agent", "content": "Hi", "endTime": "2026-06-15T14:30:04Z"},
            "not a turn",
            {"role": "user", "content": "Hello", "endTime": "2026-06-15T14:30:10.500Z"},
            {"role": "user", "content": "?", "endTime": "garbage"},
        ],
    )
    call = Call.from_json(body)
    assert call.ended_at == utc(2026, 6, 15, 14, 30, 10, 500000)
    assert [w for w in call.warnings if "not an object" in w] == [
        "transcript[1]: a str, not an object; turn skipped"
    ]
    shape = Call.from_json(call_with(transcript={"turns": []}))
    assert any(w.startswith("transcript: expected an array") for w in shape.warnings)


def _turn(start: object = "2026-06-15T14:30:00Z", end: object = "2026-06-15T14:30:04Z") -> dict[str, object]:
    turn: dict[str, object] = {"role": "agent", "content": "Hi"}
    if start is not _MISSING:
        turn["startTime"] = start
    if end is not _MISSING:
        turn["endTime"] = end
    return turn


_MISSING = object()


@pytest.mark.parametrize(
    ("transcript", "expected"),
    [
        ([], []),
        ([_turn()] * 40, []),
        ([_turn(start=" 2026-06-15T14:30:00Z")], []),
        ([_turn(start=_MISSING), _turn(end=None), _turn(end=5), _turn(start=[1])], []),
        ([_turn(end=None)], []),
        (
            [_turn(), _turn(start="0001-01-01T00:00:00Z"), _turn()],
            ["transcript[1].startTime: '0001-01-01T00:00:00Z' is out of range; stored as NULL"],
        ),
        (
            [_turn(start=_MISSING), _turn(end="9999-12-31T23:59:59Z"), _turn(end=7)],
            ["transcript[1].endTime: '9999-12-31T23:59:59Z' is out of range; stored as NULL"],
        ),
        ([_turn(end="")], ["transcript[0].endTime: '' is out of range; stored as NULL"]),
        ([_turn(), 3, _turn()], ["transcript[1]: a int, not an object; turn skipped"]),
    ],
)
def test_transcript_checks_warn_about_each_turn_out_of_range_or_not_an_object(
    transcript: list[object], expected: list[str]
) -> None:
    call = Call.from_json(call_with(transcript=transcript))
    assert [w for w in call.warnings if w.startswith("transcript")] == expected
    assert transcript_object_count(call.raw) == sum(isinstance(item, dict) for item in transcript)


# --------------------------------------------------------------------------- text no backend stores


def test_an_honest_record_is_returned_as_it_is_by_repair_text() -> None:
    record = {"id": "c1", "note": "a literal \\u0000 stays", "emoji": "\U0001f600", "n": [1, None]}
    repaired, count = repair_text(record)
    assert repaired is record and count == 0


@pytest.mark.parametrize(
    ("given", "expected", "count"),
    [
        ("Jo\ud83d", "Jo\ufffd", 1),
        ("a\x00b", "a\ufffdb", 1),
        ({"k\x00": ["\x00", "ok", "\ud800\x00"]}, {"k\ufffd": ["\ufffd", "ok", "\ufffd\ufffd"]}, 3),
        # Keys that differ only by a NUL (or a surrogate) stay apart: no value is lost.
        ({"a": 1, "a\x00": 2, "a\ud83d": 3}, {"a": 1, "a\ufffd": 2, "a\ufffd\ufffd": 3}, 2),
        ({"\x00": "v", "": "w"}, {"\ufffd": "v", "": "w"}, 1),
    ],
)
def test_repair_text_replaces_lone_surrogates_and_nul_keeping_every_key(
    given: object, expected: object, count: int
) -> None:
    assert repair_text(given) == (expected, count)


@pytest.mark.parametrize("bad_id", ["call\x00", "\x00", "call\ud83d"])
def test_an_id_no_backend_stores_as_sent_is_a_malformed_record(bad_id: str) -> None:
    with pytest.raises(MalformedRecord, match="not valid Unicode text"):
        Call.from_json({"id": bad_id})


def test_an_id_longer_than_max_id_length_is_a_malformed_record() -> None:
    assert Call.from_json({"id": "c" * MAX_ID_LENGTH}).id == "c" * MAX_ID_LENGTH
    with pytest.raises(MalformedRecord, match=f"longer than {MAX_ID_LENGTH} characters"):
        Lead.from_json({"id": "l" * (MAX_ID_LENGTH + 1)})


def test_repair_text_replaces_non_finite_numbers_with_null_and_counts_them() -> None:
    record = {"id": "c1", "score": float("nan"), "big": [1, float("inf")], "note": "NaN and Infinity as text"}
    repaired, count = repair_text(record)
    assert repaired == {"id": "c1", "score": None, "big": [1, None], "note": "NaN and Infinity as text"}
    assert count == 2
    honest = {"id": "c1", "note": "NaN and Infinity as text", "n": 1e308}
    assert repair_text(honest) == (honest, 0)
