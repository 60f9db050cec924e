"""Typed views of Apten JSON: `Lead`, `Event` (+ `CallEventData`), `Call`.

Every model is a frozen dataclass that keeps the untouched JSON in `raw` and the problems met while
reading it in `warnings`. The rules, in one place:

* `id` (and an event's `type` and `timestamp`) are required: missing, of the wrong type,
  unparseable or longer than `MAX_ID_LENGTH` raises `MalformedRecord(record_id, reason)`; callers
  count it and go on.
* Every other field is optional. Absent or null gives None. A value of the wrong JSON type gives
  None plus a warning; it is never coerced (`"true"` is not a boolean, `"145"` is not a number),
  because a type change in the API is something to notice, and `raw` still holds the value.
* Timestamps go through `parse_timestamp`: ISO 8601 with or without milliseconds, `Z` or an
  offset, converted to aware UTC. A timestamp without a zone is read as UTC and warned about.
  One outside [`EARLIEST_TIMESTAMP`, `LATEST_TIMESTAMP`) is unreadable like any other (year 1 or
  9999 with an offset overflows, and day arithmetic on it overflows later).
* Numbers must fit a DOUBLE exactly (|n| <= 2^53 for integers) and be finite; a duration must
  also lie in [0, `MAX_DURATION_SECONDS`]: a call end computed from 1e300 seconds overflows every
  query that adds it to a start. Outside: None plus a warning, `raw` keeps the value.
* Text with a lone UTF-16 surrogate (a cut emoji, `"\ud83d"`) cannot be stored in any UTF-8
  column, and U+0000 in none of PostgreSQL's (`text`, `jsonb`): `repair_text` replaces each with
  U+FFFD before a record is read, on every backend alike, and the callers count it. An id holding
  one is refused (`MalformedRecord`): a replaced id could name another record.
* Enum-like values (`type`, `direction`, `callStatus`, `role`, ...) are open strings.
* Field names the docs do not confirm (see apten-api.md) are read when present.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any

MAX_WARNINGS_PER_RECORD = 50
EARLIEST_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(2200, 1, 1, tzinfo=UTC)
# Integers beyond this lose digits as a DOUBLE (and Arrow refuses them).
MAX_EXACT_INTEGER = 2**53
# Longer than any real call (the longest seen are hours); what lies beyond is a broken value.
MAX_DURATION_SECONDS = 30 * 24 * 3600.0
# Far longer than any id Apten issues (tens of characters). A key much longer than this is more
# than PostgreSQL can index (about 2.7 KB per primary-key entry), so one backend would refuse the
# record and another store it: every backend refuses it instead.
MAX_ID_LENGTH = 512


class MalformedRecord(ValueError):
    """A record that cannot be read at all (no usable id, no event timestamp, not an object)."""

    def __init__(self, record_id: str | None, reason: str) -> None:
        super().__init__(f"malformed record {record_id!r}: {reason}")
        self.record_id = record_id
        self.reason = reason


def parse_timestamp(value: object) -> tuple[datetime, bool]:
    """Parse an Apten timestamp into an aware UTC datetime.

    Returns `(timestamp, assumed_utc)`; `assumed_utc` is True when the text carried no zone.
    Accepts ISO 8601 strings (`2026-05-14T15:30:00.000Z`, `2024-01-15T14:30:00Z`, `...+02:00`)
    and aware or naive `datetime` objects. Raises ValueError for anything else; epoch numbers are
    refused because seconds and milliseconds cannot be told apart.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        if text[-1:] == "z":
            text = text[:-1] + "Z"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value[:64]!r}") from None
    else:
        raise ValueError(f"expected an ISO 8601 string, got {type(value).__name__}")
    assumed_utc = parsed.tzinfo is None
    try:
        parsed = parsed.replace(tzinfo=UTC) if assumed_utc else parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"timestamp {str(value)[:64]!r} is out of range") from None
    if not EARLIEST_TIMESTAMP <= parsed < LATEST_TIMESTAMP:
        raise ValueError(
            f"timestamp {str(value)[:64]!r} is outside {EARLIEST_TIMESTAMP.year}-{LATEST_TIMESTAMP.year}"
        )
    return parsed, assumed_utc


def is_unicode_text(value: str) -> bool:
    """False for a string holding a lone UTF-16 surrogate: no UTF-8 column can store it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _replace_surrogates(text: str) -> str:
    # Through UTF-16: a proper pair stays the character it encodes, a lone half becomes U+FFFD.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def is_storable_text(value: str) -> bool:
    """False for a string no backend stores as sent: a lone UTF-16 surrogate or U+0000."""
    return "\x00" not in value and is_unicode_text(value)


def json_text(value: Any) -> str:
    """The JSON text a warehouse stores for a value: compact, not ASCII-escaped, with NaN and
    infinities written as null (JSON and the warehouses have neither) and other objects as their
    `str`. (Records are repaired first, `repair_text`, which counts what it replaces.)"""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


# How json.dumps writes a non-finite float (allow_nan, its default). In a string they are text and
# cost only a walk that finds nothing.
_NON_FINITE_TOKENS = ("NaN", "Infinity")


def may_need_repair(raw: bytes) -> bool:
    """False when the JSON text `raw` cannot decode to a string `repair_text` changes: it holds no
    `\\u0000` escape, no escaped surrogate and no byte that may start a UTF-8-encoded one (0xED,
    which Python's decoder lets through as a lone surrogate) or belong to a UTF-16/32 text (NUL).
    Numbers are the decoder's to report: `NaN`, `Infinity` and integers past 4,300 digits
    (`client.decode_json`). A screen over the bytes, so an honest body costs no serialisation."""
    return any(marker in raw for marker in _REPAIR_MARKERS)


_REPAIR_MARKERS = (b"\\u0000", b"\\ud", b"\\uD", b"\xed", b"\x00")


def repair_text(obj: Any) -> tuple[Any, int]:
    """`obj` (decoded JSON) with what no warehouse stores replaced, and how many values (keys
    included) were: a lone UTF-16 surrogate or U+0000 in a string becomes U+FFFD, a NaN or an
    infinity (Python's parser reads `NaN`, `Infinity` and integers of more than 4,300 digits so:
    `client.decode_json`) becomes null. An honest record costs one serialisation and is returned as
    it is (a caller holding the record's bytes skips it: `may_need_repair`). Keys that become equal
    are all kept (a later one gets one more U+FFFD per clash): `{"a": 1, "a\\u0000": 2}` must not
    lose a value."""
    text = json.dumps(obj, ensure_ascii=False)
    try:
        text.encode("utf-8")
        # json.dumps writes U+0000 as the escape `\u0000` (six characters), even with ensure_ascii off.
        if "\\u0000" not in text and not any(token in text for token in _NON_FINITE_TOKENS):
            return obj, 0
    except UnicodeEncodeError:
        pass
    repaired = 0

    def walk(value: Any) -> Any:
        nonlocal repaired
        if isinstance(value, str):
            if is_storable_text(value):
                return value
            repaired += 1
            return _replace_surrogates(value).replace("\x00", "\ufffd")
        if isinstance(value, float) and not math.isfinite(value):
            repaired += 1
            return None
        if isinstance(value, list):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                new_key = walk(key)
                while new_key in out:
                    new_key += "\ufffd"
                out[new_key] = walk(item)
            return out
        return value

    repaired_obj = walk(obj)
    # A text with a literal backslash before "u0000", or "NaN" in a string, matched above and holds
    # nothing to repair.
    return (repaired_obj, repaired) if repaired else (obj, 0)


class _Reader:
    """Reads typed fields out of one JSON object and collects the warnings for its record."""

    __slots__ = ("obj", "record_id", "warnings", "_dropped")

    def __init__(self, obj: Mapping[str, Any], record_id: str | None) -> None:
        self.obj = obj
        self.record_id = record_id
        self.warnings: list[str] = []
        self._dropped = 0

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS_PER_RECORD:
            self.warnings.append(message)
        else:
            self._dropped += 1

    def finish(self) -> tuple[str, ...]:
        if self._dropped:
            self.warnings.append(f"... and {self._dropped} more warnings")
        return tuple(self.warnings)

    def _wrong_type(self, where: str, expected: str, value: object) -> None:
        self.warn(f"{where}: expected {expected}, got {type(value).__name__}; stored as NULL")

    def text(self, key: str, obj: Mapping[str, Any] | None = None, where: str | None = None) -> str | None:
        value = (self.obj if obj is None else obj).get(key)
        if value is None or isinstance(value, str):
            return value
        self._wrong_type(where or key, "a string", value)
        return None

    def boolean(
        self, key: str, obj: Mapping[str, Any] | None = None, where: str | None = None
    ) -> bool | None:
        value = (self.obj if obj is None else obj).get(key)
        if value is None or isinstance(value, bool):
            return value
        self._wrong_type(where or key, "a boolean", value)
        return None

    def number(
        self, key: str, obj: Mapping[str, Any] | None = None, where: str | None = None
    ) -> float | None:
        value = (self.obj if obj is None else obj).get(key)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > MAX_EXACT_INTEGER:
                digits = len(str(abs(value)))
                self.warn(f"{where or key}: integer of {digits} digits fits no DOUBLE; stored as NULL")
                return None
            if math.isfinite(value):
                return value
            self.warn(f"{where or key}: non-finite number {value!r}; stored as NULL")
            return None
        self._wrong_type(where or key, "a number", value)
        return None

    def duration(
        self, key: str, obj: Mapping[str, Any] | None = None, where: str | None = None
    ) -> float | None:
        value = self.number(key, obj, where)
        if value is not None and not 0 <= value <= MAX_DURATION_SECONDS:
            self.warn(f"{where or key}: {value:.6g} s is not a call length; stored as NULL")
            return None
        return value

    def timestamp(
        self, key: str, obj: Mapping[str, Any] | None = None, where: str | None = None
    ) -> datetime | None:
        value = (self.obj if obj is None else obj).get(key)
        if value is None:
            return None
        try:
            parsed, assumed_utc = parse_timestamp(value)
        except ValueError as exc:
            self.warn(f"{where or key}: {exc}; stored as NULL")
            return None
        if assumed_utc:
            self.warn(f"{where or key}: timestamp {value!s:.64} has no time zone; read as UTC")
        return parsed

    def required_timestamp(self, key: str) -> datetime:
        value = self.obj.get(key)
        if value is None:
            raise MalformedRecord(self.record_id, f"required timestamp {key!r} is missing")
        try:
            parsed, assumed_utc = parse_timestamp(value)
        except ValueError as exc:
            raise MalformedRecord(self.record_id, f"{key}: {exc}") from None
        if assumed_utc:
            self.warn(f"{key}: timestamp {value!s:.64} has no time zone; read as UTC")
        return parsed


def _require_object(obj: object, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise MalformedRecord(None, f"{what} is a {type(obj).__name__}, not a JSON object")
    return obj


def _require_id(obj: Mapping[str, Any], key: str = "id", fallback: str | None = None) -> str:
    value = obj.get(key)
    if value is None and fallback is not None:
        return fallback
    if not isinstance(value, str):
        record_id = None if value is None else repr(value)[:64]
        problem = "is missing" if value is None else f"is a {type(value).__name__}, not a string"
        raise MalformedRecord(record_id, f"{key!r} {problem}")
    if not value.strip():
        raise MalformedRecord(value, f"{key!r} is empty")
    if not is_storable_text(value) or "\ufffd" in value:
        raise MalformedRecord(_replace_surrogates(value), f"{key!r} is not valid Unicode text")
    if len(value) > MAX_ID_LENGTH:
        raise MalformedRecord(value, f"{key!r} is longer than {MAX_ID_LENGTH} characters")
    return value


@dataclass(frozen=True, slots=True)
class Lead:
    """A lead (Apten also calls it a room) from `GET /leads`."""

    id: str
    first_name: str | None
    last_name: str | None
    phone: str | None
    email: str | None
    customer_profile: str | None
    external_lead_id: str | None
    created_at: datetime | None
    updated_at: datetime | None
    last_activity_at: datetime | None
    has_replied: bool | None
    is_hot: bool | None
    is_qualified: bool | None
    is_unsubscribed: bool | None
    is_ai_on: bool | None
    tags: Any
    additional_info: Any
    summary: str | None
    is_deleted: bool
    deleted_at: datetime | None
    raw: Mapping[str, Any] = field(repr=False)
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: object, *, lead_id: str | None = None) -> Lead:
        """Parse one lead object. `lead_id` fills in for the old `GET /leads/{id}` body, which has no `id`."""
        obj = _require_object(obj, "lead")
        record_id = _require_id(obj, fallback=lead_id)
        r = _Reader(obj, record_id)
        deleted = r.boolean("deleted")
        deleted_at = r.timestamp("deletedAt")
        # The list endpoint marks soft-deleted leads with `deleted: true`; no flag means not deleted.
        is_deleted = deleted if deleted is not None else deleted_at is not None
        return cls(
            id=record_id,
            first_name=r.text("firstName"),
            last_name=r.text("lastName"),
            phone=r.text("phone"),
            email=r.text("email"),
            customer_profile=r.text("customerProfile"),
            external_lead_id=r.text("externalLeadId"),
            created_at=r.timestamp("createdAt"),
            updated_at=r.timestamp("updatedAt"),
            last_activity_at=r.timestamp("lastActivityAt"),
            has_replied=r.boolean("hasReplied"),
            is_hot=r.boolean("isHot"),
            is_qualified=r.boolean("isQualified"),
            is_unsubscribed=r.boolean("isUnsubscribed"),
            is_ai_on=r.boolean("isAiOn"),
            tags=obj.get("tags"),
            additional_info=obj.get("additionalInfo"),
            summary=r.text("summary"),
            is_deleted=is_deleted,
            deleted_at=deleted_at,
            raw=obj,
            warnings=r.finish(),
        )


@dataclass(frozen=True, slots=True)
class CallEventData:
    """The call metadata a CALL event carries in `data` (names guessed, apten-api.md §3.3)."""

    direction: str | None
    duration_seconds: float | None
    call_status: str | None
    is_transfer: bool | None


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction event from `GET /leads/{leadId}/events`; `type` is an open string.

    For a CALL event `id` is the call id and `call` holds its metadata; `call` is None otherwise.
    """

    id: str
    lead_id: str | None
    org_id: str | None
    type: str
    timestamp: datetime
    updated_at: datetime | None
    data: Mapping[str, Any]
    call: CallEventData | None
    raw: Mapping[str, Any] = field(repr=False)
    warnings: tuple[str, ...] = ()

    @property
    def is_call(self) -> bool:
        return self.type == "CALL"

    @classmethod
    def from_json(cls, obj: object) -> Event:
        """Parse one event; raises MalformedRecord without a string `id`, `type` or a `timestamp`."""
        obj = _require_object(obj, "event")
        record_id = _require_id(obj)
        event_type = obj.get("type")
        if not isinstance(event_type, str) or not event_type:
            raise MalformedRecord(record_id, f"event 'type' is {event_type!r}, not a non-empty string")
        r = _Reader(obj, record_id)
        timestamp = r.required_timestamp("timestamp")
        data = obj.get("data")
        if data is None:
            data = {}
        elif not isinstance(data, Mapping):
            r.warn(f"data: expected an object, got {type(data).__name__}; read as empty")
            data = {}
        call = None
        if event_type == "CALL":
            call = CallEventData(
                direction=r.text("direction", data, "data.direction"),
                duration_seconds=r.duration("durationSeconds", data, "data.durationSeconds"),
                call_status=r.text("callStatus", data, "data.callStatus"),
                is_transfer=r.boolean("isTransfer", data, "data.isTransfer"),
            )
        lead_id = r.text("roomId") if obj.get("roomId") is not None else r.text("leadId")
        return cls(
            id=record_id,
            lead_id=lead_id,
            org_id=r.text("orgId"),
            type=event_type,
            timestamp=timestamp,
            updated_at=r.timestamp("updatedAt"),
            data=data,
            call=call,
            raw=obj,
            warnings=r.finish(),
        )


@dataclass(frozen=True, slots=True)
class Call:
    """A call from `GET /calls/{callId}` and its summary.

    Its transcript turns are not parsed here: the warehouse derives them from `raw` in bulk
    (`Store.upsert_calls`, the one implementation of the turn rules), so they never become Python
    objects. `from_json` still warns about a transcript that is not an array or holds items that
    are not objects.
    """

    id: str
    lead_id: str | None
    session_id: str | None
    direction: str | None
    call_status: str | None
    duration_seconds: float | None
    created_at: datetime | None
    updated_at: datetime | None
    ended_by: str | None
    is_transfer: bool | None
    is_mid_call_transfer: bool | None
    is_voicemail: bool | None
    transfer_number: str | None
    fallback_transfer_number: str | None
    transfer_status: str | None
    answered_by: str | None
    transfer_connected_seconds: float | None
    lead_never_spoke: bool | None
    summary: str | None
    raw: Mapping[str, Any] = field(repr=False)
    warnings: tuple[str, ...] = ()

    @property
    def ended_at(self) -> datetime | None:
        """When the call ended, by the warehouse's `CALL_END_RULE` applied to this body before it
        is stored: `createdAt + durationSeconds`, else the latest turn `endTime`, else None."""
        if self.created_at is not None and self.duration_seconds is not None:
            return self.created_at + timedelta(seconds=self.duration_seconds)
        ends = [end for end in map(_turn_end, _transcript_objects(self.raw)) if end is not None]
        return max(ends) if ends else None

    @classmethod
    def from_json(cls, obj: object) -> Call:
        """Parse one call body; raises MalformedRecord without a string `id`."""
        obj = _require_object(obj, "call")
        record_id = _require_id(obj)
        r = _Reader(obj, record_id)
        summary = r.text("summary")
        if summary is not None and not summary.strip():
            r.warn("summary: blank; treated as not yet available")
            summary = None
        transfer_number = r.text("transferNumber")
        if transfer_number is None:
            transfer_number = r.text("transferTo")
        return cls(
            id=record_id,
            lead_id=r.text("leadId"),
            session_id=r.text("sessionId"),
            direction=r.text("direction"),
            call_status=r.text("callStatus"),
            duration_seconds=r.duration("durationSeconds"),
            created_at=r.timestamp("createdAt"),
            updated_at=r.timestamp("updatedAt"),
            ended_by=r.text("endedBy"),
            is_transfer=r.boolean("isTransfer"),
            is_mid_call_transfer=r.boolean("isMidCallTransfer"),
            is_voicemail=r.boolean("isVoicemail"),
            transfer_number=transfer_number,
            fallback_transfer_number=r.text("fallbackTransferNumber"),
            transfer_status=r.text("transferStatus"),
            answered_by=r.text("answeredBy"),
            transfer_connected_seconds=r.duration("transferConnectedSeconds"),
            lead_never_spoke=r.boolean("leadNeverSpoke"),
            summary=summary,
            raw=_check_transcript(obj, r),
            warnings=r.finish(),
        )


def transcript_object_count(obj: Mapping[str, Any]) -> int | None:
    """How many turns a call body's transcript holds (its items that are objects, as the warehouse
    keeps them); None when there is no transcript array."""
    transcript = obj.get("transcript")
    if not isinstance(transcript, list):
        return None
    return sum(map(isinstance, transcript, repeat(dict)))


def _transcript_objects(obj: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    transcript = obj.get("transcript")
    if isinstance(transcript, list):
        yield from (item for item in transcript if isinstance(item, dict))


def _turn_end(item: Mapping[str, Any]) -> datetime | None:
    try:
        return parse_timestamp(item.get("endTime"))[0]
    except ValueError:
        return None


def _check_transcript(obj: Mapping[str, Any], r: _Reader) -> Mapping[str, Any]:
    """`obj`, after warning about a transcript that is not an array, about items that are not
    objects (the warehouse skips them when it derives the turns) and about turn times out of range.

    A transcript is checked in C-level passes first: calls hold tens of turns, a run millions."""
    transcript = obj.get("transcript")
    if transcript is None:
        return obj
    if not isinstance(transcript, list):
        r.warn(f"transcript: expected an array, got {type(transcript).__name__}; call kept without turns")
        return obj
    first, last = f"{EARLIEST_TIMESTAMP.year:04d}", f"{LATEST_TIMESTAMP.year:04d}"
    if all(map(isinstance, transcript, repeat(dict))) and all(
        _times_in_range(list(map(dict.get, transcript, repeat(key))), first, last) for key in _TURN_TIME_KEYS
    ):
        return obj
    # Walked item by item only when the passes above found something, for the warnings' wording.
    for index, item in enumerate(transcript):
        if not isinstance(item, dict):
            r.warn(f"transcript[{index}]: a {type(item).__name__}, not an object; turn skipped")
            continue
        for key in _TURN_TIME_KEYS:
            value = item.get(key)
            if isinstance(value, str) and not first <= value.lstrip()[:4] < last:
                r.warn(f"transcript[{index}].{key}: {value[:40]!r} is out of range; stored as NULL")
    return obj


_TURN_TIME_KEYS = ("startTime", "endTime")


def _times_in_range(values: list[Any], first: str, last: str) -> bool:
    """Whether every string in `values` starts with a year in [first, last). For a string `s`,
    `first <= s < last` says the same as the test on its first four characters, so the smallest
    and the largest string decide (the warehouse reads turn times; only the year is looked at here,
    so a 10,000-turn transcript is not parsed twice: out of range there means NULL)."""
    try:
        return not values or (first <= min(values) and max(values) < last)
    except TypeError:  # a missing time, or one that is not a string
        strings = [value for value in values if isinstance(value, str)]
        return not strings or (first <= min(strings) and max(strings) < last)
