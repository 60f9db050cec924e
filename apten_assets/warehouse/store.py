"""The warehouse seam: what the pipeline asks of the place its tables live, and nothing about SQL.

A `Store` is one open session on the warehouse (DuckDB file or PostgreSQL database). Everything
outside `apten_assets.warehouse` talks to it through the methods below, with rows (dicts or Arrow)
in and counts or plain values out; each backend module (`duckdb.py`, `postgres.py`) owns its SQL.
A new backend subclasses `Store` and passes `tests/warehouse/`.

The rules every backend keeps, written once here:

* **Upserts** (`upsert`): by primary key, rows sharing a key in one batch deduplicated (the last
  wins). Per column, `Merge` decides how a new value meets the stored one; a late-arriving column
  (`Merge.COALESCE`, or named in `keep_existing_when_null`) is never set back to NULL. An existing
  row whose merged content equals the stored row keeps its `_loaded_at`; bookkeeping columns
  (fetch counts and times) are written but never count as a change.
* **A call's children** (`upsert_calls`, `replace_children`): a call's transcript turns, and a
  call's transfer attempts, are replaced as a whole; a parent whose new children equal the stored
  ones is left untouched. Turns are derived from `calls.raw` by one query, `turns.py`, which
  every backend runs (on DuckDB, in the warehouse or in memory), for production and tests: item
  i of `transcript` is `turn_index` i; items that are not objects are skipped; a field of the
  wrong JSON type or an unparseable timestamp is NULL; a timestamp without a zone is UTC. An
  empty or absent transcript ("not stored yet") keeps the stored turns.
* **The partition time of a call** (`CALL_TIME_RULE`): the time of its CALL event; for a call with
  no CALL event (webchat), its `created_at`; failing that, its earliest webhook's timestamp.
* **The end of a call** (`CALL_END_RULE`): `created_at + duration_seconds`; without a duration,
  the latest `end_time` of its transcript turns. `models.Call.ended_at` applies the same rule to
  a body before it is stored; `tests/warehouse` pins that the two agree.
* **Stored values are readable back**: a turn timestamp outside the models' range
  (`models.EARLIEST_TIMESTAMP` to `LATEST_TIMESTAMP`) is NULL like an unparseable one, and
  `CALL_END_RULE` uses a duration only within [0, `models.MAX_DURATION_SECONDS`], so no stored
  row makes a read query overflow (one call of 1e300 seconds once wedged the late-summary sensor).
* **Quarantine** (`quarantine`, `resolve_quarantined`): `apten.rejected_records` holds one row
  per `(source, record_key)`, built by `tables.rejected_row`. Seeing it again bumps `times_seen`
  and `last_seen_at`, takes the latest reason and payload and clears `resolved_at`; a later
  successful store of the record sets `resolved_at` once. `quarantine` is the backend's `upsert`
  (the spec's `Merge` rules do it); `resolve_quarantined` is a shared SELECT plus the backend's
  `overwrite_columns`.
* **Erasure** (`erase_leads`): every row `lib.tables.LEAD_DATA` ties to the leads or their calls
  goes, in one transaction; `discard_deleted_data` then makes sure no copy of deleted rows stays
  readable in the warehouse's storage (freed blocks, dead tuples).
* **Transactions**: every write method is atomic; `with store.transaction():` makes several
  writes one transaction (a batch's calls, summaries and turns; leads and their watermark).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from apten_assets.lib.tables import REJECTED_RECORDS, TableSpec

if TYPE_CHECKING:
    # pandas takes ~1.3 s to import, paid by every process that runs the pipeline; no step passes a
    # DataFrame, so only a caller that already holds one has imported it (see `arrow.to_arrow`).
    import pandas as pd

    Rows = Iterable[Mapping[str, Any]] | pa.Table | pd.DataFrame
else:
    Rows = Iterable[Mapping[str, Any]] | pa.Table

CALL_TIME_RULE = "COALESCE(call_events.occurred_at, calls.created_at, first webhook event_timestamp)"
CALL_END_RULE = "calls.created_at + duration_seconds, else max(call_transcript_turns.end_time)"
# Rows in a metadata preview and in a quality rule's sample of offending ids.
PREVIEW_ROWS = 5
SAMPLE_SIZE = 10


class WarehouseBusy(RuntimeError):
    """The warehouse could not be opened in time (DuckDB: another process holds the file lock)."""


class WarehouseNotReady(RuntimeError):
    """A read-only session found no warehouse yet (no file, no schema): nothing is stored."""


@dataclass(frozen=True)
class UpsertCounts:
    """What one upsert did. `duplicates` are staged rows dropped because a later row had the same key."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        return UpsertCounts(
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
            self.duplicates + other.duplicates,
        )


@dataclass(frozen=True)
class ReplaceCounts:
    """What one replacement of children did, per parent and per child row."""

    parents: int = 0
    parents_replaced: int = 0
    parents_unchanged: int = 0
    deleted: int = 0
    inserted: int = 0
    duplicates: int = 0

    def __add__(self, other: ReplaceCounts) -> ReplaceCounts:
        return ReplaceCounts(
            self.parents + other.parents,
            self.parents_replaced + other.parents_replaced,
            self.parents_unchanged + other.parents_unchanged,
            self.deleted + other.deleted,
            self.inserted + other.inserted,
            self.duplicates + other.duplicates,
        )


@dataclass(frozen=True)
class PendingCall:
    """A stored call still waiting for its summary, as the late-summary sensor needs it.

    `partition_date` is the UTC day of `CALL_TIME_RULE`; `ended_at` follows `CALL_END_RULE`.
    """

    call_id: str
    partition_date: date | None
    last_fetched_at: datetime | None
    created_at: datetime | None
    ended_at: datetime | None
    fetch_attempts: int


@dataclass(frozen=True)
class CallEventFacts:
    """What a call's CALL event says about it: the values a `not_found` call keeps."""

    lead_id: str | None = None
    occurred_at: datetime | None = None
    direction: str | None = None
    call_status: str | None = None
    duration_seconds: float | None = None


@dataclass(frozen=True)
class TransferDelivery:
    """One stored transfer webhook of a call (`data` is the delivery's `data` object)."""

    delivery_key: str
    event: str
    event_timestamp: datetime | None
    received_at: datetime | None
    data: Mapping[str, Any]


@dataclass(frozen=True)
class CallTransferRecord:
    """What `apten.calls` knows about a call's transfer."""

    call_id: str
    lead_id: str | None = None
    session_id: str | None = None
    is_transfer: bool | None = None
    transfer_type: str | None = None
    transfer_number: str | None = None
    fallback_transfer_number: str | None = None
    transfer_status: str | None = None
    transfer_connected_seconds: float | None = None


@dataclass(frozen=True)
class Erasure:
    """What `erase_leads` removed: rows per table name (every `LEAD_DATA` table, 0 included), and
    the ids of the leads' calls it found (their webhook inbox files go too)."""

    rows: dict[str, int]
    call_ids: frozenset[str]


@dataclass(frozen=True)
class Finding:
    """The verdict of one quality rule. `metadata` holds counts (ints/floats) and samples (lists)."""

    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ColumnPage:
    """A page of `Store.read_column_page`: rows `(primary key..., columns...)`, and where the next
    page starts (`after`, for the next call), None after the last page. A page before the last
    may be empty."""

    rows: list[tuple]
    after: Any | None


@dataclass(frozen=True)
class Preview:
    """The first rows of a table or window, for materialization metadata."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class DaySummary:
    """One UTC day of calls, as the demo prints it."""

    day: date
    calls: int
    summaries_ready: int
    summaries_pending: int
    summaries_missing: int
    calls_not_found: int
    webchat_calls: int
    turns: int
    transfer_attempts: int


class Store(ABC):
    """One open session on the warehouse. Close it (or use it as a context manager) when done.

    Sessions are short: the pipeline opens one per write batch, so a DuckDB file's single writer
    lock is never held across HTTP calls. Read-only sessions (the sensors) never write.
    """

    backend: str = ""

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release the session (and, for DuckDB, the file lock when it was the last one)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """BEGIN ... COMMIT (ROLLBACK on error); inside an open transaction it joins that one."""

    # ------------------------------------------------------------------ schema

    @abstractmethod
    def ensure_schema(self) -> None:
        """Create schema `apten`, every contract table and `apten._sync_state` if missing, and add
        columns added to a spec since (nullable). Idempotent and cheap when nothing is missing."""

    @abstractmethod
    def column_types(self) -> dict[str, dict[str, str]]:
        """Table name -> column name -> the backend's type name, for the contract tables present."""

    # ------------------------------------------------------------------ writes

    @abstractmethod
    def upsert(
        self,
        spec: TableSpec,
        rows: Rows,
        *,
        keep_existing_when_null: Iterable[str] = (),
        now: datetime | None = None,
    ) -> UpsertCounts:
        """Insert new rows and update changed ones by primary key (the module docstring's rules).

        `rows` are dicts (JSON columns as Python values), an Arrow table or a DataFrame (JSON
        columns as text). Changed and inserted rows get `_loaded_at = now`. Raises ValueError for
        a NULL key, an unknown column or a value no column can hold.
        """

    @abstractmethod
    def upsert_calls(self, rows: Rows, *, now: datetime | None = None) -> tuple[UpsertCounts, ReplaceCounts]:
        """`upsert(CALLS, rows)` and, in the same transaction, the transcript turns of the calls
        this write inserted or changed, derived from their `raw` (the module docstring's rules)."""

    @abstractmethod
    def replace_children(
        self,
        spec: TableSpec,
        parent_key: str,
        parent_ids: Iterable[str],
        rows: Rows,
        *,
        now: datetime | None = None,
    ) -> ReplaceCounts:
        """Make the rows of each parent in `parent_ids` exactly `rows` (every row's parent must be
        listed; a parent listed without rows ends with none); parents left as they were keep
        their rows and `_loaded_at`."""

    def quarantine(self, rows: Rows, *, now: datetime | None = None) -> UpsertCounts:
        """Record rejected records (`tables.rejected_row` rows); see "Quarantine" above."""
        return self.upsert(REJECTED_RECORDS, rows, now=now)

    @abstractmethod
    def resolve_quarantined(
        self, source: str, record_ids: Iterable[str], *, now: datetime | None = None
    ) -> int:
        """Set `resolved_at = now` on the unresolved rejected rows of `source` whose `record_id` is
        in `record_ids` (they were just stored fine); returns how many were resolved."""

    @abstractmethod
    def unresolved_quarantine(self, source: str) -> Finding:
        """Rejected records of `source` not resolved yet: passes when there are none; metadata
        counts them and samples their ids and reasons."""

    @abstractmethod
    def get_sync_state(self, name: str) -> str | None:
        """The stored value of cursor `name` (e.g. the leads `updatedAt` watermark), or None."""

    @abstractmethod
    def set_sync_state(self, name: str, value: str, *, now: datetime | None = None) -> None:
        """Store cursor `name`; joins the caller's transaction when there is one."""

    @abstractmethod
    def delete_sync_state(self, name: str) -> None:
        """Forget cursor `name` (the next sync starts from the beginning)."""

    # ------------------------------------------------------------------ rewriting stored values

    @abstractmethod
    def read_column_page(
        self, spec: TableSpec, columns: Sequence[str], *, after: Any | None, limit: int
    ) -> ColumnPage:
        """A page of about `limit` rows `(primary key..., columns...)` of `spec`'s table, starting
        where the page before it said (`after`; None: from the start); JSON columns come back as
        text. Every row stored before the first page and not deleted is on a page (a row the
        caller rewrote may come again on a later one); each page is one range scan (of the key,
        or of the table's blocks where no index keeps the key's order)."""

    @abstractmethod
    def overwrite_columns(
        self, spec: TableSpec, columns: Sequence[str], rows: Sequence[tuple], *, now: datetime | None = None
    ) -> int:
        """Set `columns` of existing rows to exactly these values (NULL included, no merge rule), by
        primary key; `rows` are `(primary key..., columns...)`, JSON as Python values. Returns rows
        written; they get `_loaded_at = now`."""

    # ------------------------------------------------------------------ erasure on request

    @abstractmethod
    def erase_leads(self, lead_ids: Sequence[str]) -> Erasure:
        """Delete every row of these leads and of their calls (`lib.tables.LEAD_DATA` says where
        they are), in one transaction (the caller's when there is one). Leads not stored: 0 rows."""

    @abstractmethod
    def erased_lead_keys(self) -> set[tuple[str, str]]:
        """`(key_scheme, lead_key)` of every erased lead (`apten.erased_leads`; written by upsert)."""

    @abstractmethod
    def discard_deleted_data(self) -> None:
        """Make deleted rows unreadable from the warehouse's storage, not only from SQL: DuckDB
        keeps their bytes in freed blocks until reused, so it rewrites the file. Call it outside
        a transaction, on the only open session."""

    # ------------------------------------------------------------------ choosing what to fetch

    @abstractmethod
    def leads_active_since(self, start: datetime) -> list[str]:
        """Leads whose `last_activity_at` or `updated_at` is at or after `start`, or unknown."""

    @abstractmethod
    def calls_needing_fetch(
        self, start: datetime, end: datetime, now: datetime, *, recheck_after: timedelta = timedelta(0)
    ) -> list[str]:
        """Call ids of CALL events in [start, end) needing `GET /calls/{id}`: no call row, never
        fetched, event changed after the last fetch, or still `pending` / `IN_PROGRESS` and last
        fetched at least `recheck_after` before `now`. In event-time order."""

    @abstractmethod
    def webhook_calls_needing_fetch(self, start: datetime, end: datetime) -> list[str]:
        """Calls named by webhooks of [start, end) that have no row yet, or are still `pending`
        or `IN_PROGRESS` (webchat calls are known only this way). Sorted."""

    @abstractmethod
    def calls_in_window(self, start: datetime, end: datetime) -> list[str]:
        """Every call whose CALL event or webhook falls in [start, end). Sorted."""

    @abstractmethod
    def call_event_facts(self, call_ids: Sequence[str]) -> dict[str, CallEventFacts]:
        """What the CALL events of these calls say (calls without an event are left out)."""

    @abstractmethod
    def pending_calls(self) -> list[PendingCall]:
        """Stored calls whose summary is still `pending`, least recently fetched first."""

    # ------------------------------------------------------------------ transfers

    @abstractmethod
    def transfer_calls_in_window(
        self, start: datetime, end: datetime, event_names: Sequence[str]
    ) -> list[str]:
        """Calls of [start, end) (`CALL_TIME_RULE`) that have or had transfer attempts: flagged
        `is_transfer`, named by a webhook in `event_names`, or with stored `call_transfers` rows."""

    @abstractmethod
    def transfer_deliveries(
        self, call_ids: Sequence[str], event_names: Sequence[str]
    ) -> dict[str, list[TransferDelivery]]:
        """The stored webhook deliveries in `event_names` of each call, in no particular order."""

    @abstractmethod
    def call_transfer_records(self, call_ids: Sequence[str]) -> dict[str, CallTransferRecord]:
        """The transfer fields of each stored call (`transfer_type` from `raw.transferType`)."""

    # ------------------------------------------------------------------ quality rules

    @abstractmethod
    def duplicate_keys(self, spec: TableSpec) -> int:
        """How many primary-key values occur more than once (0 when healthy)."""

    @abstractmethod
    def unique_primary_key(self, spec: TableSpec) -> Finding:
        """No primary-key value occurs twice (the tables declare no PK constraint; writers keep it)."""

    @abstractmethod
    def turns_contiguous(self) -> Finding:
        """Each call's `turn_index` values are exactly 0, 1, ..., n-1."""

    @abstractmethod
    def children_have_stored_call(self, spec: TableSpec) -> Finding:
        """Every row of `spec` (summaries, turns) belongs to a call in `apten.calls`."""

    @abstractmethod
    def summary_coverage(self, give_up_after: timedelta, now: datetime | None = None) -> Finding:
        """Calls that ended (`CALL_END_RULE`, else their start, else their event) longer than
        `give_up_after` ago are `ready` or `missing`, never `pending`; `not_found` is left out."""

    @abstractmethod
    def summary_status_allowed(self) -> Finding:
        """`calls.summary_status` is one of the contract's values (NULL is not)."""

    # ------------------------------------------------------------------ metadata

    @abstractmethod
    def row_count(self, spec: TableSpec) -> int:
        """Rows in the table."""

    @abstractmethod
    def leads_metadata(self) -> dict[str, Any]:
        """`dagster/row_count` and a `preview` (newest first)."""

    @abstractmethod
    def call_events_metadata(self, start: datetime, end: datetime) -> dict[str, Any]:
        """Row counts (table, window) and a `preview` of the window."""

    @abstractmethod
    def calls_metadata(self, start: datetime, end: datetime, now: datetime) -> dict[str, Any]:
        """Row counts, calls per `summary_status` in the window, the oldest pending age and a preview."""

    @abstractmethod
    def summaries_metadata(self, start: datetime, end: datetime) -> dict[str, Any]:
        """Row counts, summary latency p50 / p95 / max in the window and a preview."""

    @abstractmethod
    def turns_metadata(self, start: datetime, end: datetime) -> dict[str, Any]:
        """Row counts, calls with turns in the window and a preview."""

    @abstractmethod
    def webhook_deliveries_metadata(self) -> dict[str, Any]:
        """`dagster/row_count` and a `preview` (latest received first)."""

    @abstractmethod
    def transfers_metadata(self, start: datetime, end: datetime, outcomes: Sequence[str]) -> dict[str, Any]:
        """Row counts, attempts per outcome and per source in the window, and a preview."""

    @abstractmethod
    def day_summaries(self, first_day: date) -> list[DaySummary]:
        """Calls per UTC day (`CALL_TIME_RULE`) from `first_day` on, with their children."""
