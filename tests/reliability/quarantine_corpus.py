# ruff: noqa: E501 - one case per line reads as a table
"""The hostile corpus of issue 11: values no column can hold as sent, records no table can hold,
and answers that mean "this item is gone for good". Each case names the record it breaks, how, and
what must come of it: stored with a NULL (or U+FFFD) and a counted warning, or quarantined in
`apten.rejected_records` with its reason. `test_quarantine.py` feeds them all to one real run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LONE_SURROGATE = "\ud83d"  # the first half of an emoji, cut: JSON "\ud83d"
NUL = "\x00"  # JSON "\u0000": PostgreSQL's text and jsonb refuse it, DuckDB takes it
REPLACED = "\ufffd"
YEAR_1_WITH_OFFSET = "0001-01-01T00:00:00+01:00"
YEAR_9999_WITH_OFFSET = "9999-12-31T23:59:59-01:00"
BEYOND_2_53 = 2**53 + 1
HUGE_FLOAT = 1e300
DIGITS_400 = int("9" * 400)
# 10 KB of hex: more than PostgreSQL can index as a key, and incompressible.
LONG_ID = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(160))


@dataclass(frozen=True)
class JsonLiteral:
    """A JSON token no Python value is written as: `json_text` splices it into the body's text."""

    token: str


# `1e400` is valid JSON past a double's range. Python's decoder reads it as an infinity, and no
# Python value is written back as that token (`json.dumps` writes `Infinity`, which is not JSON).
BEYOND_DOUBLE = JsonLiteral("1e400")
NESTED_500: list = []
for _ in range(499):
    NESTED_500 = [NESTED_500]

# Outcomes.
STORED_NULL = "stored with the field NULL"
STORED_REPLACED = "stored with U+FFFD"
QUARANTINED = "quarantined"
STORED = "stored as sent"


@dataclass(frozen=True)
class Case:
    """One hostile record: `where` is leads | events | calls; `edit` changes its JSON in place."""

    name: str
    cls: str  # surrogate | nul | long_id | timestamp | number | persistent_4xx | deep | future
    where: str
    edit: Callable[[dict[str, Any]], None] | None
    outcome: str
    status: int | None = None  # persistent_4xx: the status answered instead of the record


def _set(*path: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(obj: dict[str, Any]) -> None:
        for step in path[:-1]:
            obj = obj[step]
        obj[path[-1]] = value

    return edit


LEAD_CASES = [
    Case("lead_first_name_surrogate", "surrogate", "leads", _set("firstName", value="Jo" + LONE_SURROGATE), STORED_REPLACED),
    Case("lead_last_name_surrogate", "surrogate", "leads", _set("lastName", value=LONE_SURROGATE + "e"), STORED_REPLACED),
    Case("lead_id_surrogate", "surrogate", "leads", _set("id", value="lead-" + LONE_SURROGATE), QUARANTINED),
    Case("lead_first_name_nul", "nul", "leads", _set("firstName", value="Jo" + NUL), STORED_REPLACED),
    # A NUL dropped from an id would make it another record's ("lead-nul-"): refused, not repaired.
    Case("lead_id_nul", "nul", "leads", _set("id", value="lead-nul-" + NUL), QUARANTINED),
    # Stored by DuckDB, refused by PostgreSQL's key index: refused by the models on every backend.
    Case("lead_id_10_kb", "long_id", "leads", _set("id", value=LONG_ID), QUARANTINED),
    Case("lead_updated_year_9999", "timestamp", "leads", _set("updatedAt", value=YEAR_9999_WITH_OFFSET), STORED_NULL),
    Case("lead_created_year_1", "timestamp", "leads", _set("createdAt", value=YEAR_1_WITH_OFFSET), STORED_NULL),
    Case("lead_updated_2099", "future", "leads", _set("updatedAt", value="2099-01-01T00:00:00.000Z"), STORED),
]  # fmt: skip

EVENT_CASES = [
    Case("event_status_surrogate", "surrogate", "events", _set("data", "callStatus", value=LONE_SURROGATE), STORED_REPLACED),
    Case("event_status_nul", "nul", "events", _set("data", "callStatus", value=NUL + "ENDED"), STORED_REPLACED),
    Case("event_id_10_kb", "long_id", "events", _set("id", value="call-" + LONG_ID), QUARANTINED),
    Case("event_duration_400_digits", "number", "events", _set("data", "durationSeconds", value=DIGITS_400), STORED_NULL),
    Case("event_duration_beyond_2_53", "number", "events", _set("data", "durationSeconds", value=BEYOND_2_53), STORED_NULL),
    Case("event_duration_1e300", "number", "events", _set("data", "durationSeconds", value=HUGE_FLOAT), STORED_NULL),
    Case("event_duration_1e400", "number", "events", _set("data", "durationSeconds", value=BEYOND_DOUBLE), STORED_NULL),
    Case("event_timestamp_year_1", "timestamp", "events", _set("timestamp", value=YEAR_1_WITH_OFFSET), QUARANTINED),
    Case("event_timestamp_year_9999", "timestamp", "events", _set("timestamp", value=YEAR_9999_WITH_OFFSET), QUARANTINED),
]  # fmt: skip

LEAD_EVENTS_REFUSED = [
    Case("lead_events_404", "persistent_4xx", "lead_events", None, QUARANTINED, status=404),
    Case("lead_events_410", "persistent_4xx", "lead_events", None, QUARANTINED, status=410),
    Case("lead_events_422", "persistent_4xx", "lead_events", None, QUARANTINED, status=422),
]


def _first_turn(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(body: dict[str, Any]) -> None:
        body["transcript"] = [{**body["transcript"][0], field: value}, *body["transcript"][1:]]

    return edit


CALL_CASES = [
    Case("turn_content_surrogate", "surrogate", "calls", _first_turn("content", "Hi " + LONE_SURROGATE), STORED_REPLACED),
    Case("summary_surrogate", "surrogate", "calls", _set("summary", value=LONE_SURROGATE + " summary"), STORED_REPLACED),
    Case("turn_content_nul", "nul", "calls", _first_turn("content", "Hi " + NUL), STORED_REPLACED),
    # Keys that differ only by a NUL: both values stay in raw (PostgreSQL once merged them into one).
    Case("call_keys_differing_only_by_nul", "nul", "calls", _set("metadata", value={"k": 1, "k" + NUL: 2}), STORED_REPLACED),
    # What jsonb holds but DuckDB's JSON reads otherwise: a number no double holds, one nested
    # just inside APTEN_MAX_JSON_DEPTH. Stored whole on every backend.
    Case("call_raw_400_digit_number", "number", "calls", _set("metadata", value={"n": DIGITS_400}), STORED),
    Case("call_raw_nested_500_deep", "deep", "calls", _set("metadata", value=NESTED_500), STORED),
    # `NaN` (Python's decoder reads it, and integers past 4,300 digits, as non-finite floats) in a
    # field no column reads: no JSON holds it, so raw gets null there, counted.
    Case("call_raw_nan", "number", "calls", _set("metadata", value={"score": float("nan"), "n": 1}), STORED_NULL),
    Case("call_raw_1e400", "number", "calls", _set("metadata", value={"score": BEYOND_DOUBLE, "n": 1}), STORED_NULL),
    Case("call_duration_1e300", "number", "calls", _set("durationSeconds", value=HUGE_FLOAT), STORED_NULL),
    Case("call_duration_1e400", "number", "calls", _set("durationSeconds", value=BEYOND_DOUBLE), STORED_NULL),
    Case("call_duration_400_digits", "number", "calls", _set("durationSeconds", value=DIGITS_400), STORED_NULL),
    Case("call_duration_beyond_2_53", "number", "calls", _set("durationSeconds", value=BEYOND_2_53), STORED_NULL),
    Case("call_created_year_9999", "timestamp", "calls", _set("createdAt", value=YEAR_9999_WITH_OFFSET), STORED_NULL),
    Case("turn_end_year_1", "timestamp", "calls", _first_turn("endTime", YEAR_1_WITH_OFFSET), STORED_NULL),
    Case("turn_start_year_9999", "timestamp", "calls", _first_turn("startTime", YEAR_9999_WITH_OFFSET), STORED_NULL),
]  # fmt: skip

CALLS_REFUSED = [
    Case("call_400", "persistent_4xx", "call_fetch", None, QUARANTINED, status=400),
    Case("call_410", "persistent_4xx", "call_fetch", None, QUARANTINED, status=410),
    Case("call_422", "persistent_4xx", "call_fetch", None, QUARANTINED, status=422),
]

# JSON nested tens of thousands deep: the client refuses the body for good (APTEN_MAX_JSON_DEPTH),
# so the item it belongs to is quarantined. (Deliveries: tests/webhooks/test_hostile_deliveries.py.)
DEEP = 30_000
DEEP_BODIES = [
    Case("call_body_nested_30000_deep", "deep", "call_fetch", None, QUARANTINED),
    Case("call_transcript_nested_30000_deep", "deep", "call_fetch", None, QUARANTINED),
    Case("lead_events_page_nested_30000_deep", "deep", "lead_events", None, QUARANTINED),
]


def json_text(body: Any) -> str:
    """`body` as `json.dumps` writes it, with every `JsonLiteral` written as its token."""
    tokens: list[str] = []

    def placeholder(value: Any) -> str:
        if not isinstance(value, JsonLiteral):
            raise TypeError(f"{type(value).__name__} is not JSON")
        tokens.append(value.token)
        return f"\x01literal {len(tokens) - 1}\x01"

    text = json.dumps(body, default=placeholder)
    for index, token in enumerate(tokens):
        text = text.replace(f'"\\u0001literal {index}\\u0001"', token)
    return text


def deep_json_text(prefix: str, suffix: str) -> str:
    """`prefix` + an array nested `DEEP` levels + `suffix`, as JSON text (no encoder recurses that far)."""
    return prefix + "[" * DEEP + "]" * DEEP + suffix


ALL_CASES = [*LEAD_CASES, *EVENT_CASES, *LEAD_EVENTS_REFUSED, *CALL_CASES, *CALLS_REFUSED, *DEEP_BODIES]
