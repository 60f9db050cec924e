"""A change of PII mode applied to what is already stored, so no earlier text lingers.

The modes in force when data was written are recorded in `apten._sync_state` (`pii.modes`; a
warehouse without the entry was written before the modes existed, i.e. in `full`). Every asset
calls `apply_pii_modes` before it writes: when the recorded modes differ from the configured
ones, every stored value the modes govern (see `REWRITTEN_COLUMNS`) and every webhook inbox
file is passed through the new policy and written back where it changed, and the new modes
are recorded last, so a run that dies half-way is finished by the next one. The policy is
idempotent (redacted text, removed text and hashes stay as they are), so a value written in
the new mode meanwhile is left alone.

A stricter mode thus takes effect on everything at the next materialization of any asset. A
looser one (e.g. `redacted` -> `full`) cannot bring text back: calls get it back when they are
fetched again (`refresh_all` run config), leads at once, because a change of the lead mode
resets the leads cursor so the next `apten/leads` run fetches every lead again.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from apten_assets.lib.pii import PiiPolicy
from apten_assets.lib.sync import LEADS_CURSOR, OpenWarehouse
from apten_assets.lib.tables import (
    CALL_EVENTS,
    CALL_SUMMARIES,
    CALL_TRANSCRIPT_TURNS,
    CALLS,
    LEADS,
    REJECTED_RECORDS,
    WEBHOOK_DELIVERIES,
    TableSpec,
    payload_text,
)
from apten_assets.webhooks.inbox import Inbox

PII_MODES_STATE = "pii.modes"
PAGE_SIZE = 20000

# The columns each mode governs, with the Apten JSON key whose rule applies to them; None is a
# whole record (its `raw`/`data`), which the policy walks like the JSON it came from.
REWRITTEN_COLUMNS: tuple[tuple[TableSpec, dict[str, str | None]], ...] = (
    (
        LEADS,
        {
            "first_name": "firstName",
            "last_name": "lastName",
            "phone": "phone",
            "email": "email",
            "summary": "summary",
            "additional_info": "additionalInfo",
            "raw": None,
        },
    ),
    (CALL_EVENTS, {"data": None}),
    (CALLS, {"raw": None}),
    (CALL_SUMMARIES, {"summary": "summary"}),
    (CALL_TRANSCRIPT_TURNS, {"content": "content"}),
    (WEBHOOK_DELIVERIES, {"raw": None}),
    (REJECTED_RECORDS, {"payload": None}),
)


def _lead_part(label: str) -> str:
    return label.partition(";lead=")[2]


def apply_pii_modes(
    open_warehouse: OpenWarehouse,
    policy: PiiPolicy,
    inbox: Inbox | None,
    log: logging.Logger | Any,
    *,
    page_size: int = PAGE_SIZE,
) -> Counter[str]:
    """Rewrite stored data under `policy` if the recorded modes differ; returns how many rows
    (per table) and inbox files changed, empty when nothing had to be done."""
    with open_warehouse() as store:
        recorded = store.get_sync_state(PII_MODES_STATE) or PiiPolicy().label
    counts: Counter[str] = Counter()
    if recorded == policy.label:
        return counts
    log.info(f"PII modes changed from {recorded} to {policy.label}: applying them to stored data")
    for spec, columns in REWRITTEN_COLUMNS:
        names = list(columns)
        width = len(spec.primary_key)
        json_columns = {name for name in names if spec.column(name).type == "JSON"}
        after: Any | None = None
        while True:
            with open_warehouse() as store:
                page = store.read_column_page(spec, names, after=after, limit=page_size)
            changed = []
            for row in page.rows:
                values = zip(names, row[width:], strict=True)
                old = [json.loads(v) if n in json_columns and v is not None else v for n, v in values]
                new = [_apply(policy, spec, columns[n], v) for n, v in zip(names, old, strict=True)]
                if new != old:
                    changed.append((*row[:width], *new))
            if changed:
                with open_warehouse() as store:
                    counts[spec.name] += store.overwrite_columns(spec, names, changed)
            if page.after is None:
                break
            after = page.after
        log.info(f"PII modes: {counts[spec.name]:,} rows of {spec.qualified_name} rewritten")
    if inbox is not None:
        for delivery in inbox.iter_deliveries():
            envelope = policy.record(delivery.envelope)
            if envelope != delivery.envelope:
                body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                counts["inbox_files"] += inbox.replace_body(delivery.delivery_key, body)
        log.info(f"PII modes: {counts['inbox_files']:,} webhook inbox files rewritten")
    with open_warehouse() as store, store.transaction():
        if _lead_part(recorded) != _lead_part(policy.label):
            store.delete_sync_state(LEADS_CURSOR)
        store.set_sync_state(PII_MODES_STATE, policy.label)
    return counts


def _apply(policy: PiiPolicy, spec: TableSpec, key: str | None, value: Any) -> Any:
    if value is None:
        return None
    if spec is REJECTED_RECORDS:
        return _rejected_payload(policy, value)
    if key is None:
        return policy.call_body(value) if spec is CALLS else policy.record(value)
    return policy.record({key: value})[key]


def _rejected_payload(policy: PiiPolicy, payload: str) -> str | None:
    """A quarantined payload under `policy`: a whole JSON record goes through it like the record
    would have; one cut at the 64 KiB cap (or not JSON at all) cannot be walked field by field, so
    under any mode but `full` it is dropped (`payload_bytes` still tells its size)."""
    if policy.is_full:
        return payload
    try:
        record = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return payload_text(policy.record(record))
