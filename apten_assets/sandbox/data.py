"""A deterministic, seeded Apten dataset for the sandbox, and the ground truth tests compare against.

The same `DatasetSpec` (seed and anchor included) always yields byte-identical JSON. Timestamps are
whole seconds rendered with millisecond precision (`...:05.000Z`), as in Apten's REST examples.

Shapes follow `shared/apten-api.md`: confirmed names are used as documented; for fields the docs
describe without a visible name the best-candidate names of §4.2 are used (`isMidCallTransfer`,
`isVoicemail`, `transferNumber`, `fallbackTransferNumber`, `answeredBy`,
`transferConnectedSeconds`, `leadNeverSpoke`). The `data` shapes of EMAIL, TOOL_CALL, CUSTOM and
the unknown `APPOINTMENT_BOOKED` events are guesses; the docs do not show them.

Transcripts are the heavy part, so they are built on demand from `(seed, call_id)`; everything a
request needs is kept in sorted indexes so one page costs O(page) even at 100,000 calls.
"""

from __future__ import annotations

import bisect
import functools
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

SummaryMode = Literal["ready", "late", "never"]

DAY_MS = 86_400_000
MINUTE_MS = 60_000

ORG_ID = "org_sandbox"
# COMPLIANCE_BLOCKED and APPOINTMENT_BOOKED cannot be asked for with `types`; the latter stands in
# for the new types Apten says it may add without notice.
OTHER_EVENT_TYPES = ("MESSAGE", "EMAIL", "TOOL_CALL", "CUSTOM", "COMPLIANCE_BLOCKED", "APPOINTMENT_BOOKED")

FIRST_NAMES = (
    "John",
    "Maria",
    "José",
    "Zoë",
    "Aiko",
    "Liam",
    "Fatima",
    "Noah",
    "Chloé",
    "Omar",
    "Ines",
    "Ravi",
)
LAST_NAMES = (
    "Doe",
    "García",
    "Müller",
    "Nguyen",
    "O'Brien",
    "Kowalski",
    "Smith",
    "Tanaka",
    "Okafor",
    "Silva",
)
PROFILES = ("My Customer Profile", "Swim Parent", "Default Profile", "Solar Leads")
TAGS = (
    ("tag_hot", "Hot lead", "Asked for pricing"),
    ("tag_booked", "Booked", "Appointment booked"),
    ("tag_dnc", "Do not call", "Asked not to be called"),
    ("tag_vip", "VIP", "Budget over 10k"),
)
CALL_END_PARTIES = ("LEAD", "AGENT", "SYSTEM", "UNKNOWN")
VOICEMAIL_DETECTIONS = ("machine_end_beep", "machine_end_silence", "machine_end_other")
ASSISTANT_LINES = (
    "Hi, this is Apten calling about your inquiry.",
    "Would a call on Thursday afternoon work for you?",
    "I can transfer you to a specialist right now.",
    "Thanks, I have noted that down.",
    "Is this still the best number to reach you?",
)
USER_LINES = (
    "Yes, I had some questions about pricing.",
    "Thursday works, after three.",
    "Can you tell me more about the installation?",
    "Sure, go ahead.",
    "Ich habe noch eine Frage zur Rechnung.",
)
SUMMARIES = (
    "Customer inquired about pricing and requested a follow-up meeting.",
    "Lead confirmed interest and booked an appointment for Thursday.",
    "Lead asked to be transferred to a specialist about installation.",
    "Lead was not interested at this time.",
)


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate. Shares are fractions in [0, 1] of the calls (or leads) they apply to.

    Calls start within the last `days` UTC days including today, up to `anchor` (None = now, UTC).
    `n_calls`, when given, replaces `calls_per_lead` and is spread as evenly as possible over leads.
    Webchat calls are extra, `share_webchat_calls` times the number of lead calls.
    """

    seed: int = 7
    n_leads: int = 40
    calls_per_lead: int = 5
    n_calls: int | None = None
    days: int = 4
    anchor: datetime | None = None
    turns_per_call: int = 8
    other_events_per_lead: int = 4
    share_deleted_leads: float = 0.05
    share_late_summaries: float = 0.15
    share_never_summaries: float = 0.05
    share_missing_calls: float = 0.03
    share_webchat_calls: float = 0.05
    share_in_progress_calls: float = 0.02
    share_transfers: float = 0.15
    share_voicemail: float = 0.10
    share_events_updated_later: float = 0.10
    share_legacy_calls: float = 0.05
    late_summary_delay_seconds: float = 900.0
    # Sentences holding personal data (tests/pii, the redaction bench). When given, that share of
    # the lead's turns says one of them, and every call summary and lead summary ends with one;
    # the rest of the dataset is the same as without them.
    pii_lines: tuple[str, ...] = ()
    share_pii_turns: float = 1.0

    def __post_init__(self) -> None:
        if self.n_leads < 1 or self.days < 1 or self.turns_per_call < 1:
            raise ValueError("n_leads, days and turns_per_call must be at least 1")
        if min(self.calls_per_lead, self.n_calls or 0, self.other_events_per_lead) < 0:
            raise ValueError("call and event counts cannot be negative")
        if self.anchor is not None and self.anchor.tzinfo is None:
            raise ValueError("anchor must be timezone-aware (UTC)")
        shares = {name: value for name, value in vars(self).items() if name.startswith("share_")}
        for name, value in shares.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.share_late_summaries + self.share_never_summaries > 1.0:
            raise ValueError("share_late_summaries + share_never_summaries cannot exceed 1")


def iso_ms(epoch_ms: int) -> str:
    """Render epoch milliseconds as Apten does: `2026-05-14T15:30:00.000Z`."""
    return f"{_iso_second(epoch_ms // 1000)}.{epoch_ms % 1000:03d}Z"


@functools.lru_cache(maxsize=1 << 18)
def _iso_second(epoch_s: int) -> str:
    # A call's turns are rendered on every GET (two times per turn, millions per large run), and a
    # day has 86,400 seconds: the cache keeps the sandbox's answers cheap enough not to be the
    # bottleneck of a benchmark against it.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s))


def to_epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(slots=True)
class Call:
    """One call. Time fields are epoch ms; `summary_at_ms` is when its summary first appears."""

    id: str
    lead_id: str | None
    session_id: str | None
    direction: str
    status: str
    started_ms: int
    duration_s: int
    updated_ms: int
    summary_mode: SummaryMode | None
    summary_at_ms: int | None
    missing: bool
    legacy: bool
    is_transfer: bool = False
    is_mid_call_transfer: bool = False
    is_voicemail: bool = False
    transfer_number: str | None = None
    fallback_transfer_number: str | None = None
    transfer_connected_seconds: int | None = None
    answered_by: str = "unknown"
    ended_by: str | None = None
    lead_never_spoke: bool = False

    @property
    def ended_ms(self) -> int:
        return self.started_ms + self.duration_s * 1000


@dataclass(slots=True)
class Event:
    """One lead event. CALL events render their `data` from `call`; others carry `data` as is."""

    id: str
    lead_id: str
    type: str
    timestamp_ms: int
    updated_ms: int
    data: dict[str, Any] | None = None
    call: Call | None = None
    extra: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "roomId": self.lead_id,
            "orgId": ORG_ID,
            "type": self.type,
            "timestamp": iso_ms(self.timestamp_ms),
            "updatedAt": iso_ms(self.updated_ms),
            "data": self.data if self.call is None else _call_event_data(self.call),
        }
        if self.extra:
            body.update(self.extra)
        return body


@dataclass(slots=True)
class Lead:
    id: str
    created_ms: int
    updated_ms: int
    json: dict[str, Any]


T = TypeVar("T")


@dataclass
class SortedIndex(Generic[T]):
    """Items sorted by `(epoch_ms, id)` keys, the order Apten pages in (id breaks timestamp ties)."""

    keys: list[tuple[int, str]] = field(default_factory=list)
    items: list[T] = field(default_factory=list)

    @classmethod
    def build(cls, pairs: list[tuple[tuple[int, str], T]]) -> SortedIndex[T]:
        pairs.sort(key=lambda pair: pair[0])
        return cls([key for key, _ in pairs], [item for _, item in pairs])

    def first_at_or_after(self, epoch_ms: int) -> int:
        # "" sorts before every id, so this lands on the first key with this timestamp (inclusive).
        return bisect.bisect_left(self.keys, (epoch_ms, ""))

    def first_after(self, key: tuple[int, str]) -> int:
        return bisect.bisect_right(self.keys, key)

    def __len__(self) -> int:
        return len(self.keys)


class SandboxDataset:
    """The data the sandbox serves, generated from a `DatasetSpec`, and its ground truth.

    Ground truth:
      * `leads`: every lead's JSON as `GET /leads` returns it; `lead(lead_id)`.
      * `events(lead_id)`: a lead's event JSON in API order; `call_events()`: every CALL event.
      * `call_json(call_id, now, released_at_ms)`: what `GET /calls/{id}` returns at `now`
        (None = 404).
      * Id tuples by category: `lead_call_ids`, `webchat_call_ids`, `missing_call_ids` (CALL event
        whose call answers 404), `ready_summary_call_ids`, `late_summary_call_ids`,
        `never_summary_call_ids`, `in_progress_call_ids`, `transfer_call_ids`, `voicemail_call_ids`,
        `legacy_call_ids` (older shape, without the described-only fields), `deleted_lead_ids`.

    The data is a snapshot taken at the anchor. Afterwards only late summaries change: each appears
    `late_summary_delay_seconds` after the later of the call's end and the anchor (its processing is
    still running at the snapshot), or when released; in-progress calls stay in progress.
    """

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        anchor = spec.anchor or datetime.now(UTC)
        self.anchor: datetime = anchor.astimezone(UTC).replace(microsecond=0)
        self.anchor_ms = to_epoch_ms(self.anchor)
        first_day = self.anchor.replace(hour=0, minute=0, second=0) - timedelta(days=spec.days - 1)
        self.window_start_ms = to_epoch_ms(first_day)

        builder = _Builder(spec, self.anchor_ms, self.window_start_ms)
        built = builder.build()
        self._leads: dict[str, Lead] = {lead.id: lead for lead in built.leads}
        self._calls: dict[str, Call] = {call.id: call for call in built.calls if not call.missing}
        self._events_by_lead = built.events_by_lead
        self.leads_by_updated: SortedIndex[Lead] = SortedIndex.build(
            [((lead.updated_ms, lead.id), lead) for lead in built.leads]
        )
        self.leads_by_created: SortedIndex[Lead] = SortedIndex.build(
            [((lead.created_ms, lead.id), lead) for lead in built.leads]
        )
        self._index_ground_truth(built)

    def _index_ground_truth(self, built: _Built) -> None:
        calls = built.calls

        def ids(predicate: Callable[[Call], bool]) -> tuple[str, ...]:
            return tuple(call.id for call in calls if predicate(call))

        self.leads = [lead.json for lead in built.leads]
        self.deleted_lead_ids = tuple(lead.id for lead in built.leads if lead.json["deleted"])
        self.lead_call_ids = ids(lambda c: c.lead_id is not None)
        self.webchat_call_ids = ids(lambda c: c.session_id is not None)
        self.missing_call_ids = ids(lambda c: c.missing)
        self.ready_summary_call_ids = ids(lambda c: not c.missing and c.summary_mode == "ready")
        self.late_summary_call_ids = ids(lambda c: not c.missing and c.summary_mode == "late")
        self.never_summary_call_ids = ids(lambda c: not c.missing and c.summary_mode == "never")
        self.in_progress_call_ids = ids(lambda c: not c.missing and c.status == "IN_PROGRESS")
        self.transfer_call_ids = ids(lambda c: not c.missing and c.is_transfer)
        self.voicemail_call_ids = ids(lambda c: not c.missing and c.is_voicemail)
        self.legacy_call_ids = ids(lambda c: not c.missing and c.legacy)
        self.n_events = sum(len(index) for index in self._events_by_lead.values())

    # --- lookups the HTTP app uses -------------------------------------------------------------

    def events_index(self, lead_id: str) -> SortedIndex[Event] | None:
        """The lead's events sorted by `(updatedAt, id)`, or None for an unknown lead."""
        return self._events_by_lead.get(lead_id)

    def call(self, call_id: str) -> Call | None:
        """The call `GET /calls/{id}` serves, or None when that answers 404."""
        return self._calls.get(call_id)

    # --- ground truth --------------------------------------------------------------------------

    def lead(self, lead_id: str) -> dict[str, Any] | None:
        lead = self._leads.get(lead_id)
        return None if lead is None else lead.json

    def events(self, lead_id: str) -> list[dict[str, Any]]:
        index = self._events_by_lead.get(lead_id)
        return [] if index is None else [event.to_json() for event in index.items]

    def iter_events(self) -> Iterator[Event]:
        for index in self._events_by_lead.values():
            yield from index.items

    def call_events(self) -> list[dict[str, Any]]:
        return [event.to_json() for event in self.iter_events() if event.type == "CALL"]

    def summary_mode(self, call_id: str) -> SummaryMode | None:
        call = self._calls.get(call_id)
        return None if call is None else call.summary_mode

    def call_json(
        self, call_id: str, now: datetime, released_at_ms: int | None = None
    ) -> dict[str, Any] | None:
        """The body of `GET /calls/{call_id}` at `now`, or None when it answers 404.

        `released_at_ms` brings a late summary forward to that moment (see `release_summaries`).
        """
        call = self._calls.get(call_id)
        if call is None:
            return None
        summary_at = call.summary_at_ms
        if call.summary_mode == "late" and summary_at is not None and released_at_ms is not None:
            summary_at = min(summary_at, released_at_ms)
        if summary_at is None or summary_at > to_epoch_ms(now):
            return _call_json(call, self.spec, call.updated_ms, has_summary=False)
        # Writing the summary is an update of the call record.
        return _call_json(call, self.spec, max(call.updated_ms, summary_at), has_summary=True)

    def describe(self) -> str:
        """One line for humans: what this dataset holds."""
        return (
            f"{len(self.leads)} leads ({len(self.deleted_lead_ids)} deleted), "
            f"{len(self.lead_call_ids)} lead calls ({len(self.missing_call_ids)} answer 404, "
            f"{len(self.in_progress_call_ids)} in progress) + {len(self.webchat_call_ids)} webchat calls, "
            f"summaries {len(self.ready_summary_call_ids)} ready / {len(self.late_summary_call_ids)} late / "
            f"{len(self.never_summary_call_ids)} never, {self.n_events} events, "
            f"calls from {iso_ms(self.window_start_ms)} to {iso_ms(self.anchor_ms)}"
        )


# --- JSON rendering -----------------------------------------------------------------------------


def _call_event_data(call: Call) -> dict[str, Any]:
    return {
        "direction": call.direction,
        "durationSeconds": call.duration_s,
        "callStatus": call.status,
        "isTransfer": call.is_transfer,
    }


def _call_json(call: Call, spec: DatasetSpec, updated_ms: int, has_summary: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"id": call.id}
    if call.lead_id is not None:
        body["leadId"] = call.lead_id
    else:
        body["sessionId"] = call.session_id
    body.update(
        direction=call.direction,
        callStatus=call.status,
        durationSeconds=call.duration_s,
        createdAt=iso_ms(call.started_ms),
        updatedAt=iso_ms(updated_ms),
    )
    if has_summary:
        body["summary"] = _pick(spec.seed, call.id, "summary", SUMMARIES)
        if spec.pii_lines:
            body["summary"] += " " + _pick(spec.seed, call.id, "pii-summary", spec.pii_lines)
    body["transcript"] = _transcript(call, spec)
    body["isTransfer"] = call.is_transfer
    if call.ended_by is not None:
        body["endedBy"] = call.ended_by
    if not call.legacy:
        body.update(_described_call_fields(call))
    return body


def _described_call_fields(call: Call) -> dict[str, Any]:
    """Fields the docs describe without a visible name; best-candidate names from apten-api.md §4.2."""
    fields: dict[str, Any] = {
        "isMidCallTransfer": call.is_mid_call_transfer,
        "isVoicemail": call.is_voicemail,
    }
    if call.transfer_number is not None:
        fields["transferNumber"] = call.transfer_number
    if call.fallback_transfer_number is not None:
        fields["fallbackTransferNumber"] = call.fallback_transfer_number
    fields["answeredBy"] = call.answered_by
    if call.transfer_connected_seconds is not None:
        fields["transferConnectedSeconds"] = call.transfer_connected_seconds
    fields["leadNeverSpoke"] = call.lead_never_spoke
    # Not in any doc version we have: stands in for fields Apten adds without notice.
    fields["language"] = "en-US"
    return fields


def _pick(seed: int, call_id: str, purpose: str, options: tuple[str, ...]) -> str:
    return random.Random(f"{seed}:{call_id}:{purpose}").choice(options)


def _transcript(call: Call, spec: DatasetSpec) -> list[dict[str, Any]]:
    """Built on demand from (seed, call id) so 100k calls cost no transcript memory."""
    if call.status != "COMPLETE":
        return []
    rng = random.Random(f"{spec.seed}:{call.id}:transcript")
    pii = random.Random(f"{spec.seed}:{call.id}:pii") if spec.pii_lines else None
    n_turns = rng.randint(1, 2) if call.is_voicemail else spec.turns_per_call
    # Whole seconds per turn keep every timestamp at `.000Z`, like Apten's examples.
    slot_ms = call.duration_s // n_turns * 1000
    turns = []
    for index in range(n_turns):
        lead_speaks = index % 2 == 1 and not call.lead_never_spoke
        start_ms = call.started_ms + index * slot_ms + 1000
        end_ms = max(start_ms, call.started_ms + (index + 1) * slot_ms - 1000)
        content = rng.choice(USER_LINES if lead_speaks else ASSISTANT_LINES)
        if pii is not None and lead_speaks and pii.random() < spec.share_pii_turns:
            content = pii.choice(spec.pii_lines)
        turns.append(
            {
                "role": "user" if lead_speaks else "assistant",
                "content": content,
                "startTime": iso_ms(start_ms),
                "endTime": iso_ms(end_ms),
            }
        )
    return turns


# --- generation ---------------------------------------------------------------------------------


@dataclass
class _Built:
    leads: list[Lead]
    calls: list[Call]
    events_by_lead: dict[str, SortedIndex[Event]]


class _Builder:
    """Draws everything from one `random.Random(seed)` in a fixed order, hence deterministic."""

    def __init__(self, spec: DatasetSpec, anchor_ms: int, window_start_ms: int) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.anchor_ms = anchor_ms
        self.window_start_ms = window_start_ms
        self.used_lead_ids: set[str] = set()
        self.other_event_counter = 0

    def build(self) -> _Built:
        calls_per_lead = self._calls_per_lead()
        leads: list[Lead] = []
        calls: list[Call] = []
        events_by_lead: dict[str, SortedIndex[Event]] = {}
        previous_created_ms: int | None = None
        for index, n_calls in enumerate(calls_per_lead):
            lead_id = self._lead_id(index)
            created_ms = self._lead_created_ms(previous_created_ms)
            previous_created_ms = created_ms
            lead_calls = [self._lead_call(lead_id, created_ms) for _ in range(n_calls)]
            events = [self._call_event(lead_id, call) for call in lead_calls]
            events += [self._other_event(lead_id, created_ms) for _ in range(self.spec.other_events_per_lead)]
            calls += lead_calls
            events_by_lead[lead_id] = SortedIndex.build([((e.updated_ms, e.id), e) for e in events])
            leads.append(self._lead(index, lead_id, created_ms, events))
        n_webchat = round(self.spec.share_webchat_calls * len(calls))
        calls += [self._webchat_call() for _ in range(n_webchat)]
        return _Built(leads, calls, events_by_lead)

    def _calls_per_lead(self) -> list[int]:
        n_leads = self.spec.n_leads
        if self.spec.n_calls is None:
            return [self.spec.calls_per_lead] * n_leads
        base, extra = divmod(self.spec.n_calls, n_leads)
        return [base + (1 if index < extra else 0) for index in range(n_leads)]

    # --- ids and small values

    def _uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _lead_id(self, index: int) -> str:
        """Opaque ids in the mixed formats the docs show, including non-hex "UUIDs"."""
        while True:
            style = index % 4
            if style == 0:
                lead_id = f"room_{self.rng.getrandbits(40):010x}"
            elif style == 1:
                lead_id = self._uuid()
            elif style == 2:
                lead_id = self._uuid()[:-2] + "".join(self.rng.choices("ghijklmnopqrstuvwxyz", k=2))
            else:
                alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
                lead_id = "".join(self.rng.choices(alphabet, k=20))
            if lead_id not in self.used_lead_ids:
                self.used_lead_ids.add(lead_id)
                return lead_id

    def _phone(self) -> str:
        return f"+1555{self.rng.randrange(10_000_000):07d}"

    def _between(self, low_ms: int, high_ms: int) -> int:
        """A whole second in [low, high]."""
        return self.rng.randint(low_ms // 1000, max(low_ms, high_ms) // 1000) * 1000

    def _later(self, moment_ms: int, low_ms: int, high_ms: int) -> int:
        """`moment` plus a delay in [low, high], drawn from the room left before the anchor.

        Drawing within the room (rather than clipping) keeps timestamps from piling up on the anchor.
        """
        room_ms = max(0, self.anchor_ms - moment_ms)
        return moment_ms + self._between(min(low_ms, room_ms), min(high_ms, room_ms))

    def _maybe_updated_later(self, updated_ms: int) -> int:
        if self.rng.random() >= self.spec.share_events_updated_later:
            return updated_ms
        # Up to 36 h later, so some updates land on a later UTC day than the event itself.
        return self._later(updated_ms, MINUTE_MS, 36 * 60 * MINUTE_MS)

    # --- leads

    def _lead_created_ms(self, previous_created_ms: int | None) -> int:
        if previous_created_ms is not None and self.rng.random() < 0.1:
            return previous_created_ms  # bulk imports create leads in the same second
        return self._between(self.window_start_ms - 14 * DAY_MS, self.anchor_ms - 10 * MINUTE_MS)

    def _lead(self, index: int, lead_id: str, created_ms: int, events: list[Event]) -> Lead:
        rng = self.rng
        last_activity_ms = max((e.timestamp_ms for e in events), default=created_ms)
        updated_ms = max([created_ms, *(e.updated_ms for e in events)])
        bulk_update_ms = self.anchor_ms - 60 * MINUTE_MS
        if updated_ms < bulk_update_ms and rng.random() < 0.1:
            updated_ms = bulk_update_ms  # a tag rule touched many leads at once: timestamp ties
        deleted_at_ms = None
        if rng.random() < self.spec.share_deleted_leads:
            deleted_at_ms = self._between(updated_ms, self.anchor_ms)
            updated_ms = deleted_at_ms
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        body: dict[str, Any] = {
            "id": lead_id,
            "firstName": first,
            "lastName": last,
            "phone": f"+1555{(index * 7919 + self.spec.seed) % 10_000_000:07d}",
        }
        if rng.random() < 0.85:
            body["email"] = f"{first.lower()}.{index}@example.com"
        body.update(
            customerProfile=rng.choice(PROFILES),
            createdAt=iso_ms(created_ms),
            updatedAt=iso_ms(updated_ms),
            lastActivityAt=iso_ms(last_activity_ms),
            additionalInfo=self._additional_info(),
            hasReplied=rng.random() < 0.6,
            isHot=rng.random() < 0.2,
            isQualified=rng.random() < 0.3,
            isUnsubscribed=rng.random() < 0.05,
            isAiOn=rng.random() < 0.9,
            tags=self._tags(),
            summary=rng.choice(SUMMARIES),
        )
        external = rng.random()
        if external < 0.6:
            body["externalLeadId"] = f"00Q5g{rng.getrandbits(48):012X}"
        elif external < 0.8:
            body["externalLeadId"] = None
        body["deleted"] = deleted_at_ms is not None
        body["deletedAt"] = None if deleted_at_ms is None else iso_ms(deleted_at_ms)
        if rng.random() < 0.3:
            body["timeZone"] = "America/New_York"  # a field newer API versions may add
        if self.spec.pii_lines:
            line = self.spec.pii_lines[index % len(self.spec.pii_lines)]
            body["summary"] += " " + line
            body["additionalInfo"] = {**body["additionalInfo"], "note": line}
        return Lead(lead_id, created_ms, updated_ms, body)

    def _additional_info(self) -> dict[str, str]:
        if self.rng.random() < 0.2:
            return {}
        return {"source": self.rng.choice(("web form", "facebook", "referral")), "key1": "value1"}

    def _tags(self) -> list[dict[str, str]]:
        tags = self.rng.sample(TAGS, k=self.rng.randint(0, 2))
        with_ids = self.rng.random() < 0.8  # older records lack tag ids
        return [
            ({"id": tag_id} if with_ids else {}) | {"name": name, "condition": condition}
            for tag_id, name, condition in tags
        ]

    # --- calls

    def _lead_call(self, lead_id: str, lead_created_ms: int) -> Call:
        earliest_ms = max(self.window_start_ms, lead_created_ms + MINUTE_MS)
        call = self._call(lead_id=lead_id, session_id=None, earliest_ms=earliest_ms)
        call.missing = self.rng.random() < self.spec.share_missing_calls
        return call

    def _webchat_call(self) -> Call:
        return self._call(lead_id=None, session_id=self._uuid(), earliest_ms=self.window_start_ms)

    def _call(self, lead_id: str | None, session_id: str | None, earliest_ms: int) -> Call:
        rng = self.rng
        call_id = self._uuid()
        direction = "INBOUND" if session_id is not None or rng.random() < 0.35 else "OUTBOUND"
        legacy = rng.random() < self.spec.share_legacy_calls
        if rng.random() < self.spec.share_in_progress_calls:
            started_ms = self._between(
                max(earliest_ms, self.anchor_ms - 10 * MINUTE_MS), self.anchor_ms - 10_000
            )
            return self._in_progress(call_id, lead_id, session_id, direction, started_ms, legacy)
        started_ms = self._between(earliest_ms, self.anchor_ms - 1000)
        status = self._terminal_status(direction)
        voicemail = (
            status == "COMPLETE" and direction == "OUTBOUND" and rng.random() < self.spec.share_voicemail
        )
        duration_s = self._duration_s(status, voicemail)
        if started_ms + duration_s * 1000 + MINUTE_MS > self.anchor_ms:
            # Would still be running at the anchor: that is what an in-progress call is.
            return self._in_progress(call_id, lead_id, session_id, direction, started_ms, legacy)
        ended_ms = started_ms + duration_s * 1000
        mode = self._summary_mode()
        summary_at_ms, updated_ms = self._summary_timing(mode, ended_ms)
        call = Call(
            id=call_id,
            lead_id=lead_id,
            session_id=session_id,
            direction=direction,
            status=status,
            started_ms=started_ms,
            duration_s=duration_s,
            updated_ms=updated_ms,
            summary_mode=mode,
            summary_at_ms=summary_at_ms,
            missing=False,
            legacy=legacy,
            is_voicemail=voicemail,
            ended_by=rng.choice(CALL_END_PARTIES),
        )
        self._set_outcome(call)
        return call

    def _in_progress(
        self,
        call_id: str,
        lead_id: str | None,
        session_id: str | None,
        direction: str,
        started_ms: int,
        legacy: bool,
    ) -> Call:
        return Call(
            id=call_id,
            lead_id=lead_id,
            session_id=session_id,
            direction=direction,
            status="IN_PROGRESS",
            started_ms=started_ms,
            duration_s=0,
            updated_ms=started_ms,
            summary_mode=None,
            summary_at_ms=None,
            missing=False,
            legacy=legacy,
            answered_by="pending",
        )

    def _terminal_status(self, direction: str) -> str:
        draw = self.rng.random()
        if direction == "OUTBOUND" and draw < 0.12:
            return "NO_ANSWER"
        if draw > 0.98:
            return "FAILED"  # not a documented example value: the status enum is open
        return "COMPLETE"

    def _duration_s(self, status: str, voicemail: bool) -> int:
        if status != "COMPLETE":
            return self.rng.randint(0, 30)
        if voicemail:
            return self.rng.randint(20, 45)
        return max(self.rng.randint(30, 900), 4 * self.spec.turns_per_call)

    def _summary_mode(self) -> SummaryMode:
        draw = self.rng.random()
        if draw < self.spec.share_late_summaries:
            return "late"
        if draw < self.spec.share_late_summaries + self.spec.share_never_summaries:
            return "never"
        return "ready"

    def _summary_timing(self, mode: SummaryMode, ended_ms: int) -> tuple[int | None, int]:
        """(when the summary appears, the call's updatedAt before that)."""
        processed_ms = self._later(ended_ms, 2000, 20_000)
        if mode == "ready":
            return self._later(processed_ms, 5000, 90_000), processed_ms
        if mode == "late":
            delay_ms = int(self.spec.late_summary_delay_seconds * 1000)
            return max(ended_ms, self.anchor_ms) + delay_ms, processed_ms
        return None, processed_ms

    def _set_outcome(self, call: Call) -> None:
        """Answered-by, transfer and never-spoke fields, consistent with status and voicemail."""
        rng = self.rng
        if call.status == "NO_ANSWER":
            call.answered_by, call.lead_never_spoke = "no_answer", True
        elif call.status != "COMPLETE":
            call.answered_by = "unknown"
        elif call.is_voicemail:
            call.answered_by, call.lead_never_spoke = rng.choice(VOICEMAIL_DETECTIONS), True
        else:
            call.answered_by = "answered" if call.direction == "INBOUND" else "human"
            call.lead_never_spoke = call.direction == "OUTBOUND" and rng.random() < 0.05
            if rng.random() < self.spec.share_transfers:
                self._set_transfer(call)

    def _set_transfer(self, call: Call) -> None:
        rng = self.rng
        call.is_transfer = True
        call.is_mid_call_transfer = rng.random() < 0.7
        call.transfer_number = self._phone()
        if rng.random() < 0.7:
            call.transfer_connected_seconds = rng.randint(5, max(5, call.duration_s // 2))
        elif rng.random() < 0.5:
            call.fallback_transfer_number = self._phone()

    # --- events

    def _call_event(self, lead_id: str, call: Call) -> Event:
        """The event's top-level id is the call id; `timestamp` is when the call started."""
        settled_ms = call.started_ms if call.status == "IN_PROGRESS" else call.ended_ms
        return Event(
            id=call.id,
            lead_id=lead_id,
            type="CALL",
            timestamp_ms=call.started_ms,
            updated_ms=self._maybe_updated_later(settled_ms),
            call=call,
            extra=self._newer_envelope_fields("call"),
        )

    def _other_event(self, lead_id: str, lead_created_ms: int) -> Event:
        # Round-robin over types so every type shows up even in small datasets.
        event_type = OTHER_EVENT_TYPES[self.other_event_counter % len(OTHER_EVENT_TYPES)]
        self.other_event_counter += 1
        timestamp_ms = self._between(max(self.window_start_ms, lead_created_ms), self.anchor_ms - 1000)
        event_id = f"msg_{self.rng.getrandbits(48):012x}" if event_type == "MESSAGE" else self._uuid()
        channel = "email" if event_type == "EMAIL" else "sms"
        return Event(
            id=event_id,
            lead_id=lead_id,
            type=event_type,
            timestamp_ms=timestamp_ms,
            updated_ms=self._maybe_updated_later(timestamp_ms),
            data=self._event_data(event_type, timestamp_ms),
            extra=self._newer_envelope_fields(channel),
        )

    def _newer_envelope_fields(self, channel: str) -> dict[str, Any] | None:
        # Newer doc versions add `channel`; older events lack it.
        return {"channel": channel} if self.rng.random() < 0.3 else None

    def _event_data(self, event_type: str, timestamp_ms: int) -> dict[str, Any]:
        rng = self.rng
        if event_type == "MESSAGE":
            inbound = rng.random() < 0.5
            return {
                "direction": "INBOUND" if inbound else "OUTBOUND",
                "content": {"text": rng.choice(USER_LINES if inbound else ASSISTANT_LINES)},
                "isAiGenerated": not inbound,
                "deliveryChannel": "SMS",
            }
        if event_type == "EMAIL":
            return {
                "direction": "OUTBOUND",
                "content": {"subject": "Your inquiry", "text": rng.choice(ASSISTANT_LINES)},
                "isAiGenerated": True,
            }
        if event_type == "TOOL_CALL":
            return {"toolName": "bookAppointment", "arguments": {"slot": iso_ms(timestamp_ms + DAY_MS)}}
        if event_type == "CUSTOM":
            return {"name": "crm_sync", "payload": {"status": rng.choice(("ok", "skipped"))}}
        if event_type == "COMPLIANCE_BLOCKED":
            return {"channel": "sms", "reason": "STATE_DNC", "source": "http", "triggeredBy": "llm"}
        return {"startsAt": iso_ms(timestamp_ms + DAY_MS), "calendar": "Sales team"}
