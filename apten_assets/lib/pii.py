"""Personal data controls: redaction of free text, keyed hashing of lead contacts, and the modes
(`APTEN_TRANSCRIPT_MODE`, `APTEN_LEAD_PII`) applied to whole Apten records.

Plain Python, no Dagster and no SQL. `PiiPolicy` is applied to Apten JSON at the one boundary
where it becomes rows (and where the webhook receiver writes its inbox), so every table, `raw`
column, inbox file and preview downstream only ever sees the transformed JSON.

Rules, in one place:

* Free text is the value of a text key (`TEXT_KEYS`: transcript turn `content`, `summary`, message
  `text`/`subject`, ...) anywhere in a record, a transcript's items that are bare strings, and
  every string inside a lead's `additionalInfo`.
  `redacted` replaces e-mail addresses, payment card numbers (13-19 digits, spaces or dashes
  between them, Luhn-valid) and phone numbers (the `phonenumbers` matcher, international format
  for any country, national format for `DEFAULT_PHONE_REGIONS`) by `[EMAIL]`, `[CARD]`, `[PHONE]`.
  `off` stores no text: a turn's content becomes null, a summary becomes `[REMOVED]` (so a call
  still counts as summarised), and `additionalInfo` is redacted as in `redacted`.
* Lead contacts are the values of `phone`, `email`, `firstName` and `lastName` anywhere in a
  record. `hashed` replaces phone and e-mail by HMAC-SHA256 under `APTEN_PII_SALT` of the
  normalized value (e-mail trimmed and lower-cased, phone as E.164 when it parses) and drops the
  names; `off` drops all four. A value that already is such a hash is kept, so applying a policy
  twice (receiver, then loader) gives the same result.
* Everything is deterministic: the same record gives the same output, so a refetch of an
  unchanged call stays "unchanged".
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import repeat
from typing import Any

import phonenumbers

PHONE = "[PHONE]"
EMAIL = "[EMAIL]"
CARD = "[CARD]"
REMOVED = "[REMOVED]"

# National formats are recognised for these regions (international `+CC ...` for every country):
# Apten's customers are mostly North American (US covers Canada's NANP numbers too), then the
# UK, Australia, Germany and France. Regions are tried in this order on the few texts that hold
# a long enough run of digits. India is left out: its 10-digit numbers match epoch timestamps.
DEFAULT_PHONE_REGIONS = ("US", "GB", "AU", "DE", "FR")

TEXT_KEYS = frozenset(
    {"content", "text", "subject", "summary", "notificationMessage", "optOutMessage", "message"}
)
SUMMARY_KEYS = frozenset({"summary"})
# Lists whose string items are free text (a transcript sent as bare strings rather than turns).
TRANSCRIPT_KEYS = frozenset({"transcript"})
TRANSCRIPT_TEXT_KEY = "content"
FREE_FORM_KEYS = frozenset({"additionalInfo"})
CONTACT_HASHED_KEYS = frozenset({"phone", "email"})
CONTACT_NAME_KEYS = frozenset({"firstName", "lastName"})

_EMAIL = re.compile(
    r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)+"
)
# A card: 13-19 digits with at most one space or dash between two digits, not inside a longer
# run of digits.
_CARD = re.compile(r"(?<![0-9])[0-9](?:[ \-]?[0-9]){12,18}(?![0-9])")
# A run that may hold a phone number: 7+ characters of digits and the separators people write
# numbers with. Only such runs (with at least 7 digits) are handed to the phonenumbers matcher,
# which is far slower than this scan; text without one is returned as it is.
_PHONE_RUN = re.compile(r"\+?\(?[0-9][0-9 ().\-/]{5,}[0-9]")
_TRIGGER = re.compile(r"@|[0-9][0-9 ().\-/]{5,}[0-9]")
# The keys of a plain transcript turn (the fast path of `call_body` keeps turns with no other
# key, and contents without a digit or `@`, without walking them).
_PLAIN_TURN_KEYS = frozenset({"role", "content", "startTime", "endTime"})
# Every key a rule of `_walk` names, and the value types `_walk` returns unchanged under any other.
_RULE_KEYS = TEXT_KEYS | FREE_FORM_KEYS | CONTACT_HASHED_KEYS | CONTACT_NAME_KEYS
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
_MIN_PHONE_DIGITS = 7
_HASH = re.compile(r"[0-9a-f]{64}")


class TranscriptMode(StrEnum):
    FULL = "full"
    REDACTED = "redacted"
    OFF = "off"


class LeadPii(StrEnum):
    FULL = "full"
    HASHED = "hashed"
    OFF = "off"


def _may_hold_pii(text: str) -> bool:
    # Checked first: eleven substring scans run at memory speed, many times faster than any regex,
    # and most text (no digit, no `@`) ends here. Spelled out: a generator over the characters
    # cost more than the scans themselves.
    return (
        "@" in text
        or "0" in text
        or "1" in text
        or "2" in text
        or "3" in text
        or "4" in text
        or "5" in text
        or "6" in text
        or "7" in text
        or "8" in text
        or "9" in text
    )


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of ASCII digits (payment card numbers pass it)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = match.group().replace(" ", "").replace("-", "")
    return CARD if luhn_valid(digits) else match.group()


def _digit_count(text: str) -> int:
    return sum(1 for char in text if "0" <= char <= "9")


@functools.cache
def _regions_by_start(regions: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Which regions can read a run, by how it starts. A `+` number reads the same in any region;
    a national number starting with 0 belongs to the regions whose trunk prefix is 0 (GB, AU,
    DE, FR), one starting with 1-9 to the others (US). Each region tried costs a matcher pass."""
    zero = tuple(
        region
        for region in regions
        if (metadata := phonenumbers.PhoneMetadata.metadata_for_region(region)) is not None
        and metadata.national_prefix == "0"
    )
    return {"+": regions[:1], "0": zero, "1": tuple(region for region in regions if region not in zero)}


@functools.cache
def _national_screen(region: str) -> re.Pattern[str] | None:
    """What the digits of a run with no `+` and no letter must contain for `region`'s matcher to
    find a number in it, or None when there is no such rule for the region.

    A number the matcher gives is valid (`Leniency.VALID`), so its national significant number
    fully matches the general pattern of a region with its country code. Read without a `+`, that
    country code is `region`'s own unless the digits start with `region`'s international (IDD)
    prefix; and the national number is a stretch of the candidate's digits (a trunk prefix, a
    carrier code or the country code is only cut from its front) unless the region rewrites its
    national numbers (`national_prefix_transform_rule`). So when neither the IDD prefix nor any of
    those general patterns occurs anywhere in the digits, the matcher finds nothing, and its pass
    (~0.1-0.4 ms) is skipped: dates and order numbers of 8-9 digits in the US, for instance."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None or metadata.national_prefix_transform_rule or not metadata.international_prefix:
        return None
    parts = [metadata.international_prefix]
    for code in phonenumbers.region_codes_for_country_code(metadata.country_code):
        shared = phonenumbers.PhoneMetadata.metadata_for_region(code)
        if shared is None or shared.general_desc is None or not shared.general_desc.national_number_pattern:
            return None
        parts.append(shared.general_desc.national_number_pattern)
    return re.compile("|".join(f"(?:{part})" for part in parts))


def _region_may_read(region: str, run: str) -> bool:
    """False only when `region`'s matcher surely finds no number in `run` (see `_national_screen`);
    `run` holds digits and separators only, without a `+`."""
    screen = _national_screen(region)
    return screen is None or screen.search("".join(filter(str.isdigit, run))) is not None


# Runs repeat (a lead reads a number out and the agent reads it back, a date or an order number
# recurs across a day's calls) and a matcher pass costs ~0.1 ms: the result of a run is a pure
# function of the run and the regions, so it is kept, for a bounded number of distinct runs.
@functools.lru_cache(maxsize=16_384)
def _phones_in_run(run: str, regions: tuple[str, ...]) -> str:
    first = run.lstrip("(")[:1]
    # Until a number is replaced the run holds no letter (the `[PHONE]` token's letters could be
    # read as a vanity number), and without a `+` it may be screened.
    screened = first != "+"
    for region in _regions_by_start(regions)[first if first in "+0" else "1"]:
        if screened and not _region_may_read(region, run):
            continue
        matches = list(phonenumbers.PhoneNumberMatcher(run, region))
        for match in reversed(matches):
            run = run[: match.start] + PHONE + run[match.end :]
            screened = False
        if _digit_count(run) < _MIN_PHONE_DIGITS:
            break
    return run


def redact_text(text: str, regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS) -> str:
    """`text` with e-mail addresses, Luhn-valid card numbers and phone numbers replaced by
    `[EMAIL]`, `[CARD]` and `[PHONE]`. Returns `text` itself when there is nothing to replace."""
    if not _may_hold_pii(text) or _TRIGGER.search(text) is None:
        return text
    if "@" in text:
        text = _EMAIL.sub(EMAIL, text)
    text = _CARD.sub(_card, text)
    pieces: list[str] = []
    last = 0
    for run in _PHONE_RUN.finditer(text):
        if _digit_count(run.group()) < _MIN_PHONE_DIGITS:
            continue
        redacted = _phones_in_run(run.group(), regions)
        if redacted != run.group():
            pieces.append(text[last : run.start()])
            pieces.append(redacted)
            last = run.end()
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def normalize_email(value: str) -> str:
    return value.strip().lower()


def normalize_phone(value: str, region: str = DEFAULT_PHONE_REGIONS[0]) -> str:
    """E.164 when the number parses (national numbers read in `region`), else the value with
    spaces, dashes, dots and brackets removed."""
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_possible_number(number):
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return re.sub(r"[\s\-.()]", "", value)


def keyed_hash(value: str, salt: str) -> str:
    """Lower-case hex HMAC-SHA256 of `value` (UTF-8) under `salt` (UTF-8)."""
    return hmac.new(salt.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class PiiPolicy:
    """The two modes (and the salt) to apply to Apten records. The salt never shows in a repr."""

    transcript_mode: TranscriptMode = TranscriptMode.FULL
    lead_pii: LeadPii = LeadPii.FULL
    salt: str | None = field(default=None, repr=False)
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS

    def __post_init__(self) -> None:
        if self.lead_pii is LeadPii.HASHED and not self.salt:
            raise ValueError("lead PII mode 'hashed' needs a salt")

    @property
    def is_full(self) -> bool:
        """Nothing to change: records pass through untouched."""
        return self.transcript_mode is TranscriptMode.FULL and self.lead_pii is LeadPii.FULL

    @property
    def label(self) -> str:
        """The modes as one string (no salt), recorded with stored data to notice a change."""
        return f"transcript={self.transcript_mode.value};lead={self.lead_pii.value}"

    # ------------------------------------------------------------------ values

    def text(self, value: str, *, summary: bool = False) -> str | None:
        """One free-text value under the transcript mode."""
        mode = self.transcript_mode
        if mode is TranscriptMode.FULL:
            return value
        if mode is TranscriptMode.OFF:
            return REMOVED if summary else None
        return redact_text(value, self.phone_regions)

    def contact(self, key: str, value: str) -> str | None:
        """One lead contact value (`phone`, `email`, `firstName`, `lastName`) under the lead mode."""
        mode = self.lead_pii
        if mode is LeadPii.FULL:
            return value
        if mode is LeadPii.OFF or key in CONTACT_NAME_KEYS:
            return None
        if _HASH.fullmatch(value):
            return value
        normalized = normalize_email(value) if key == "email" else normalize_phone(value)
        return keyed_hash(normalized, self.salt or "")

    # ------------------------------------------------------------------ records

    def record(self, obj: Any) -> Any:
        """Any Apten record (lead, call, event, webhook envelope) with the modes applied to its
        text and contact fields wherever they are; the input is never modified."""
        if self.is_full:
            return obj
        return self._walk(obj)

    def call_body(self, body: Any) -> Any:
        """A `GET /calls/{id}` body. Same result as `record`, with a fast path for the transcript
        (the bulk of the data): when no turn holds anything to redact, the turns are kept as they
        are without walking them one by one."""
        if self.is_full or not isinstance(body, Mapping):
            return self.record(body)
        transcript = body.get("transcript")
        if (
            self.transcript_mode is TranscriptMode.REDACTED
            and isinstance(transcript, list)
            and _nothing_to_redact(transcript)
        ):
            # Key order kept, so the stored JSON text is the same however the body was walked. A
            # plain value under a key no rule names is kept without a call (most fields of a call).
            return {
                key: value
                if key == "transcript" or (key not in _RULE_KEYS and type(value) in _PLAIN_TYPES)
                else self._walk(value, key)
                for key, value in body.items()
            }
        return self._walk(body)

    def _walk(self, value: Any, key: str | None = None) -> Any:
        if isinstance(value, str):
            if key in TEXT_KEYS:
                return self.text(value, summary=key in SUMMARY_KEYS)
            if key in CONTACT_HASHED_KEYS or key in CONTACT_NAME_KEYS:
                return self.contact(key, value)
            return value
        if isinstance(value, list):
            # Items of a list take the list's key (a list of texts is text), and a transcript's
            # items that are bare strings, not turn objects, are its text: the warehouse keeps no
            # turn for them, but `calls.raw` keeps them.
            return [self._walk(item, _item_key(key)) for item in value]
        # Numbers, booleans and nulls (most fields of a call) before the slower `Mapping` check.
        if value is None or isinstance(value, (int, float)):
            return value
        if isinstance(value, Mapping):
            if key in FREE_FORM_KEYS:
                return self._free_form(value)
            return {k: self._walk(v, k) for k, v in value.items()}
        return value

    def _free_form(self, value: Any) -> Any:
        """Every string of a free-form object (a lead's additionalInfo) is redacted unless
        transcripts are kept in full."""
        if isinstance(value, str):
            if self.transcript_mode is TranscriptMode.FULL:
                return value
            return redact_text(value, self.phone_regions)
        if isinstance(value, Mapping):
            return {k: self._free_form(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._free_form(item) for item in value]
        return value


def _item_key(key: str | None) -> str | None:
    if key in TEXT_KEYS:
        return key
    return TRANSCRIPT_TEXT_KEY if key in TRANSCRIPT_KEYS else None


def _nothing_to_redact(transcript: list[Any]) -> bool:
    # One check over all turns at once: when every turn is a dict with no other key and every
    # content is null or a string without a digit or an `@` (most transcripts), this costs a
    # fraction of a microsecond per turn. `map` over C functions, not a generator: this runs for
    # every call. A turn that is not a dict, or a content that is not a string, fails a step below
    # (`issuperset` of a string's characters or of a number, `dict.get` of a non-dict, `join` of
    # a non-string) and takes the walk.
    try:
        if not all(map(_PLAIN_TURN_KEYS.issuperset, transcript)):
            return False
        joined = "\n".join(filter(None, map(dict.get, transcript, repeat("content", len(transcript)))))
    except TypeError:
        return False
    return not _may_hold_pii(joined)
