"""The durable webhook inbox: one file per distinct delivery, in a plain directory.

Kept apart from DuckDB so receiving never waits on DuckDB's writer lock. The receiver stores
every accepted delivery here before it answers 2xx; the `apten/webhook_deliveries` asset reads
it back with `Inbox.iter_deliveries`.

Layout of `<inbox>/`:

* `<delivery_key>.delivery`: one accepted delivery. Line 1 is a JSON header
  (`format`, `delivery_key`, `event`, `received_at`, `size`); everything after that first
  newline is the raw request body, byte for byte (so it can be re-verified or re-parsed).
* `.tmp-*`: a write in progress (or left by a crash); never read, removed by
  `remove_stale_temp_files`.

Writes are atomic and first-writer-wins: the file is written under a temporary name in the same
directory, fsynced, then hard-linked to its final name. `os.link` fails when the name exists, so
a duplicate never overwrites the stored copy, across threads and across receiver processes
sharing the directory. A reader never sees a half-written delivery.

Files are kept after loading: the loader upserts by `delivery_key`, so reading a delivery twice
is harmless, and the inbox stays the replayable record of what Apten sent. Only an erasure
request (`apten_erase_leads`) removes them.

A file that cannot be read back (garbage, truncated, unreadable, a foreign format) never stops a
reader: `iter_deliveries` skips it and reports it as a `BadInboxFile`, so the deliveries after it
still load and still start their runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

FORMAT = "apten-webhook-delivery/1"
SUFFIX = ".delivery"
_TEMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^[0-9a-f]{64}\.delivery$")
_CURSOR_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
DEFAULT_OVERLAP = timedelta(minutes=5)
FUTURE_SKEW = timedelta(hours=1)


class MalformedEnvelope(ValueError):
    """The body is not a JSON object with a string `event`; the message never contains the body."""


def parse_envelope(raw: bytes) -> dict[str, Any]:
    """The webhook envelope (`event`, `timestamp`, `data`) parsed from the raw body."""
    try:
        envelope = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedEnvelope(f"body is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(envelope, dict):
        raise MalformedEnvelope(f"body is a JSON {type(envelope).__name__}, not an object")
    event = envelope.get("event")
    if not isinstance(event, str) or not event:
        raise MalformedEnvelope("body has no string `event`")
    return envelope


def delivery_key(envelope: dict[str, Any]) -> str:
    """The dedup key: hex SHA-256 of the envelope as canonical JSON (sorted keys, compact).

    Apten sends no event id (apten-api.md §5.1). A redelivery or replay carries the same event,
    timestamp and data, so it gets the same key even if re-serialised with other spacing or key
    order. Hashing all of `data`, not only `(event, ids, timestamp)`, keeps events that share
    ids and a second-precision timestamp apart: two `leadTagged` for one lead in the same second
    (different `tag`), or two SMS `message.received` (which carry no message id).
    """
    canonical = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # "surrogatepass": a lone UTF-16 surrogate (a cut emoji, sent escaped) still hashes; valid text
    # encodes exactly as plain UTF-8, so every other key is unchanged.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def is_unicode_text(value: str) -> bool:
    """False for a string holding a lone UTF-16 surrogate: no UTF-8 column can store it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(data: dict[str, Any], name: str) -> str | None:
    """An id field as text; None when absent, not a string, or not storable text."""
    value = data.get(name)
    return value if isinstance(value, str) and is_unicode_text(value) else None


@dataclass(frozen=True)
class Delivery:
    """One stored delivery as the loader sees it."""

    delivery_key: str
    event: str
    event_timestamp: str | None  # envelope `timestamp` exactly as sent (ISO 8601 text)
    received_at: datetime  # UTC, when the receiver accepted it
    raw: bytes = field(repr=False)  # the request body byte for byte
    envelope: dict[str, Any] = field(repr=False)  # `raw` parsed
    call_id: str | None
    lead_id: str | None
    session_id: str | None

    @property
    def data(self) -> dict[str, Any]:
        data = self.envelope.get("data")
        return data if isinstance(data, dict) else {}

    @property
    def cursor(self) -> str:
        """Pass to `Inbox.iter_deliveries(after=...)` to resume after this delivery."""
        return f"{self.received_at.strftime(_CURSOR_TIME)}|{self.delivery_key}"


@dataclass(frozen=True)
class BadInboxFile:
    """An inbox file that could not be read back, and why (never quotes the file's content)."""

    name: str
    reason: str


@dataclass(frozen=True)
class StoreResult:
    delivery_key: str
    stored: bool  # False: a delivery with this key was already in the inbox (duplicate)


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        when, key = cursor.split("|")
        received_at = datetime.strptime(when, _CURSOR_TIME).replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(
            f"not an inbox cursor (expected 'YYYY-MM-DDTHH:MM:SS.ffffffZ|<key>'): {cursor!r}"
        ) from None
    return received_at, key


class Inbox:
    """A webhook inbox directory (`APTEN_WEBHOOK_INBOX`); safe to share between processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Inbox({str(self.path)!r})"

    def ensure_writable(self) -> None:
        """Create the directory and prove a delivery can be written (including the hard link)."""
        self.path.mkdir(parents=True, exist_ok=True)
        probe = self.path / f"{_TEMP_PREFIX}probe-{uuid.uuid4().hex}"
        linked = self.path / f"{_TEMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"probe")
            os.link(probe, linked)
        finally:
            for path in (probe, linked):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def store(self, raw: bytes, envelope: dict[str, Any], received_at: datetime | None = None) -> StoreResult:
        """Write one delivery durably (fsynced) unless its key is already stored."""
        key = delivery_key(envelope)
        final = self.path / f"{key}{SUFFIX}"
        if final.exists():
            return StoreResult(key, stored=False)
        received_at = received_at or datetime.now(UTC)
        header = {
            "format": FORMAT,
            "delivery_key": key,
            "event": envelope["event"],
            "received_at": received_at.astimezone(UTC).isoformat(),
            "size": len(raw),
        }
        self.path.mkdir(parents=True, exist_ok=True)
        with self._written(key, header, raw) as temp:
            try:
                os.link(temp, final)
            except FileExistsError:
                return StoreResult(key, stored=False)
        self._fsync_directory()
        return StoreResult(key, stored=True)

    @contextlib.contextmanager
    def _written(self, key: str, header: dict[str, Any], raw: bytes) -> Iterator[Path]:
        """A fsynced temp file holding `header` and `raw`, removed once the caller has linked or
        moved it into place (or failed to)."""
        temp = self.path / f"{_TEMP_PREFIX}{key}-{uuid.uuid4().hex}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(header).encode("utf-8") + b"\n")
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            yield temp
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def _fsync_directory(self) -> None:
        # Makes the new directory entry itself durable, not only the file's bytes.
        if os.name != "posix":
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _delivery_files(self) -> Iterator[Path]:
        if not self.path.is_dir():
            return
        with os.scandir(self.path) as entries:
            for entry in entries:
                if _NAME.match(entry.name):
                    yield Path(entry.path)

    def count(self) -> int:
        """How many distinct deliveries are stored."""
        return sum(1 for _ in self._delivery_files())

    def get(self, key: str) -> Delivery | None:
        path = self.path / f"{key}{SUFFIX}"
        return _read_delivery(path) if _NAME.match(path.name) and path.exists() else None

    def iter_deliveries(
        self,
        after: str | None = None,
        *,
        overlap: timedelta = DEFAULT_OVERLAP,
        on_bad_file: Callable[[BadInboxFile], None] | None = None,
    ) -> Iterator[Delivery]:
        """Stored deliveries in a stable order, `(received_at, delivery_key)`, oldest first.

        `after` is a `Delivery.cursor`. Deliveries after it are yielded, and so again are those
        received up to `overlap` before it: a slow write can land after a later-received
        delivery was already read, and re-reading a few is harmless to an upsert by
        `delivery_key`. Pass `overlap=timedelta(0)` for strictly-after.

        Every file's header is read to sort (one short read per file); bodies are read as they
        are yielded, so memory stays small however many deliveries are stored. A file that cannot
        be read is skipped and passed to `on_bad_file`, the one place bad files are reported.
        """
        bound: tuple[datetime, str] | None = None
        if after is not None:
            received_at, key = parse_cursor(after)
            bound = (received_at - overlap, key)
        index = []
        # A file may be removed meanwhile (an erasure, or the loader dropping an erased lead's
        # delivery): it is skipped, not an error.
        for path in self._delivery_files():
            try:
                received_at, key = _read_header_order(path)
            except FileNotFoundError:
                continue
            except _UNREADABLE as exc:
                _report(on_bad_file, path, exc)
                continue
            if bound is None or (received_at, key) > bound:
                index.append((received_at, key, path))
        index.sort()
        for _, _, path in index:
            try:
                delivery = _read_delivery(path)
            except FileNotFoundError:
                continue
            except _UNREADABLE as exc:
                _report(on_bad_file, path, exc)
                continue
            yield delivery

    def replace_body(self, key: str, raw: bytes) -> bool:
        """Replace a stored delivery's body (same key, header and receipt time), atomically and
        fsynced: used to apply a stricter PII mode to what is already stored. False when the
        delivery is not in the inbox."""
        final = self.path / f"{key}{SUFFIX}"
        if not _NAME.match(final.name) or not final.exists():
            return False
        with final.open("rb") as f:
            header = _parse_header(f.readline(), final)
        header["size"] = len(raw)
        with self._written(key, header, raw) as temp:
            os.replace(temp, final)
        self._fsync_directory()
        return True

    def remove(self, key: str) -> bool:
        """Delete a stored delivery for good (an erasure request); False when it is not there."""
        path = self.path / f"{key}{SUFFIX}"
        if not _NAME.match(path.name):
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._fsync_directory()
        return True

    def remove_stale_temp_files(self, older_than: timedelta = timedelta(hours=1)) -> int:
        """Remove temporary files a crashed writer left behind; returns how many."""
        if not self.path.is_dir():
            return 0
        cutoff = time.time() - older_than.total_seconds()
        removed = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith(_TEMP_PREFIX) and entry.stat().st_mtime < cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
        return removed


# What reading one damaged or foreign file can raise; anything else is a bug and propagates.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError)


def _report(on_bad_file: Callable[[BadInboxFile], None] | None, path: Path, exc: BaseException) -> None:
    if on_bad_file is not None:
        on_bad_file(BadInboxFile(path.name, f"{type(exc).__name__}: {exc}"[:300]))


def _parse_header(line: bytes, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(line)
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError("not in the apten-webhook-delivery/1 format")
        if not isinstance(header.get("delivery_key"), str) or not isinstance(header.get("event"), str):
            raise ValueError("header has no delivery_key or event")
        return header
    except ValueError as exc:
        raise ValueError(f"{path.name} is not an inbox delivery file: {exc}") from None


def _header_time(header: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(header["received_at"]).astimezone(UTC)


def _read_header_order(path: Path) -> tuple[datetime, str]:
    with path.open("rb") as f:
        header = _parse_header(f.readline(), path)
    received_at = _header_time(header)
    # The receiver stamps files with its own clock: a time far ahead is a damaged or planted file,
    # and read as one it would move every reader's cursor past all later deliveries.
    if received_at > datetime.now(UTC) + FUTURE_SKEW:
        raise ValueError(f"{path.name}: received_at {header['received_at']!r:.40} lies in the future")
    return received_at, header["delivery_key"]


def _read_delivery(path: Path) -> Delivery:
    line, _, raw = path.read_bytes().partition(b"\n")
    header = _parse_header(line, path)
    envelope = json.loads(raw)
    if not isinstance(envelope, dict):
        raise ValueError(f"{path.name}: the stored body is a JSON {type(envelope).__name__}, not an object")
    data = envelope.get("data")
    data = data if isinstance(data, dict) else {}
    timestamp = envelope.get("timestamp")
    return Delivery(
        delivery_key=header["delivery_key"],
        event=header["event"],
        event_timestamp=timestamp if isinstance(timestamp, str) else None,
        received_at=_header_time(header),
        raw=raw,
        envelope=envelope,
        call_id=_text(data, "callId"),
        lead_id=_text(data, "leadId"),
        session_id=_text(data, "sessionId"),
    )
