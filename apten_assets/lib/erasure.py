"""Erasure on request: remove every trace of some leads, and keep them from coming back.

Plain Python, no Dagster and no SQL. `erase_leads` deletes the leads' rows and their calls' rows
from every table `lib.tables.LEAD_DATA` lists (one transaction), removes their webhook inbox
files, adds them to `apten.erased_leads`, and has the warehouse discard the deleted bytes.
Every sync then loads `ErasedLeads` and drops those leads' records at the rows boundary, so a
lead Apten still returns does not come back.

The erased list holds a hash of each lead id, never the id, so an erased lead's id is not left in
the warehouse either: HMAC-SHA256 keyed with `APTEN_PII_SALT` when it is set (then someone with
the file and a list of Apten ids cannot tell which were erased), plain SHA-256 otherwise. Each
entry records its scheme, with a fingerprint of the salt (never the salt). An entry keyed with
another salt than the current one cannot be recognised any more; loading the list then fails
with `ErasedListUnreadable` instead of letting those leads come back silently.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from apten_assets.lib.pii import keyed_hash
from apten_assets.lib.tables import ERASED_LEADS
from apten_assets.warehouse import Store
from apten_assets.webhooks.inbox import Inbox

if TYPE_CHECKING:
    from apten_assets.lib.sync import OpenWarehouse

SHA256 = "sha256"
HMAC_SHA256 = "hmac-sha256/"
# Hashed with the id, so an erased-lead key never equals the hash of anything else under the salt.
_KEY_DOMAIN = "apten erased lead:"
_SALT_CHECK = "apten erased leads: salt fingerprint"


class ErasedListUnreadable(RuntimeError):
    """Entries of `apten.erased_leads` were keyed with another APTEN_PII_SALT (or with one that is
    no longer set): the syncs cannot recognise those leads, so they refuse to run."""


def key_scheme(salt: str | None) -> str:
    """How a new entry is keyed under `salt`: `sha256`, or `hmac-sha256/<salt fingerprint>`."""
    return HMAC_SHA256 + keyed_hash(_SALT_CHECK, salt)[:16] if salt else SHA256


def lead_key(lead_id: str, scheme: str, salt: str | None) -> str:
    """The stored key of `lead_id` under `scheme` (the salt is needed for an HMAC scheme)."""
    text = _KEY_DOMAIN + lead_id
    if scheme == SHA256:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    return keyed_hash(text, salt or "")


class ErasedLeads:
    """The erased leads, as the syncs test record after record (`lead_id in erased`)."""

    def __init__(self, keys: Iterable[tuple[str, str]] = (), salt: str | None = None) -> None:
        self._keys = frozenset(keys)
        self._schemes = sorted({scheme for scheme, _ in self._keys})
        self._salt = salt

    def __repr__(self) -> str:
        return f"ErasedLeads({len(self._keys)} leads)"

    @classmethod
    def load(cls, store: Store, salt: str | None) -> ErasedLeads:
        """The list in the warehouse; `ErasedListUnreadable` when some entries need another salt."""
        keys = store.erased_lead_keys()
        readable = {SHA256, key_scheme(salt)}
        unreadable = sum(1 for scheme, _ in keys if scheme not in readable)
        if unreadable:
            now = "with the APTEN_PII_SALT set now" if salt else "without APTEN_PII_SALT (it is not set)"
            raise ErasedListUnreadable(
                f"{unreadable} of {len(keys)} erased leads in apten.erased_leads were recorded under "
                f"another APTEN_PII_SALT and cannot be recognised {now}, so Apten could bring their "
                "data back. Set APTEN_PII_SALT to the value in use when they were erased."
            )
        return cls(keys, salt)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, lead_id: object) -> bool:
        if not self._keys or not isinstance(lead_id, str):
            return False
        return any((scheme, lead_key(lead_id, scheme, self._salt)) in self._keys for scheme in self._schemes)


def lead_id_of(record: Any, key: str) -> str | None:
    """`record[key]` when the record is an object and that is a string (bodies are untrusted)."""
    value = record.get(key) if isinstance(record, Mapping) else None
    return value if isinstance(value, str) else None


@dataclass
class ErasureReport:
    """What one erasure did, as counts only: never an id or a value."""

    leads_requested: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    inbox_files: int = 0
    newly_recorded: int = 0
    file_rewritten: bool = False

    @property
    def rows_total(self) -> int:
        return sum(self.rows.values())


def erase_leads(
    open_warehouse: OpenWarehouse,
    inbox: Inbox | None,
    lead_ids: Iterable[str],
    *,
    salt: str | None,
    log: logging.Logger | Any,
    discard_deleted_data: bool = True,
    now: datetime | None = None,
) -> ErasureReport:
    """Remove every trace of these leads and record them as erased; idempotent.

    The rows, the inbox files and the erased-list entries go in one warehouse transaction (the
    files just before it commits: a failure leaves the rows, and a re-run finds them again).
    Then the warehouse rewrites its storage so the deleted bytes are gone too; that also runs
    when nothing was left to delete, so a re-run finishes an erasure that died before it.
    """
    ids = sorted(set(lead_ids))
    if not ids or any(not isinstance(lead_id, str) or not lead_id.strip() for lead_id in ids):
        raise ValueError("lead_ids must name at least one lead, each a non-empty string")
    report = ErasureReport(leads_requested=len(ids))
    scheme = key_scheme(salt)
    at = now or datetime.now(UTC)
    entries = [
        {"lead_key": lead_key(lead_id, scheme, salt), "key_scheme": scheme, "erased_at": at}
        for lead_id in ids
    ]
    with open_warehouse() as store:
        ErasedLeads.load(store, salt)  # refuse before deleting anything if the list is unreadable
        with store.transaction():
            erasure = store.erase_leads(ids)
            report.rows = dict(erasure.rows)
            if inbox is not None:
                report.inbox_files = remove_inbox_files(inbox, set(ids), erasure.call_ids)
            report.newly_recorded = store.upsert(ERASED_LEADS, entries, now=at).inserted
        log.info(
            f"erasure: {report.rows_total:,} rows ({len(erasure.call_ids):,} calls) and "
            f"{report.inbox_files:,} inbox files removed for {len(ids):,} leads"
        )
        if discard_deleted_data:
            store.discard_deleted_data()
            report.file_rewritten = True
            log.info("erasure: the warehouse storage was rewritten without the deleted rows")
    return report


def remove_inbox_files(inbox: Inbox, lead_ids: set[str], call_ids: Iterable[str]) -> int:
    """Delete the inbox deliveries about these leads (`data.leadId`) or their calls (`data.callId`)."""
    calls = set(call_ids)
    removed = 0
    for delivery in inbox.iter_deliveries():
        if delivery.lead_id in lead_ids or delivery.call_id in calls:
            removed += inbox.remove(delivery.delivery_key)
    return removed
