"""Asset checks: the warehouse store's quality rules, one check op per table.

The checks are unpartitioned and read the whole table: a duplicate key or an orphan anywhere is a
problem, whichever day's run wrote it. Dagster runs unpartitioned checks of partitioned assets in
partitioned runs and in single-run backfills (ranges) alike. Each table's checks share one op (a
`multi_asset_check` that runs only the selected checks), so a run has one check step per table,
right after that table's step. Blocking checks (unique keys of `call_events` and `calls`) fail
their step, so nothing downstream of a table with duplicate keys runs.

`apten.rejected_records` (the quarantine) has no asset of its own: every op writes it. Its rows
are checked where they come from: each source's asset has a WARN check listing the records of that
source still unresolved (the late-summary sensor's sit with `apten/calls`, which it refreshes).
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dagster as dg

from apten_assets.defs.apten.resources import AptenWarehouse
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.tables import (
    CALL_EVENTS,
    CALL_SUMMARIES,
    CALL_TRANSCRIPT_TURNS,
    CALLS,
    LEADS,
    REJECTED_RECORDS,
    TABLES,
    WEBHOOK_DELIVERIES,
    TableSpec,
)
from apten_assets.warehouse import Finding, Store

# Downstream steps read these tables by key; a duplicate there multiplies rows further down.
BLOCKING_UNIQUE_KEYS = frozenset({CALL_EVENTS.name, CALLS.name})
# Quarantine source -> the table whose asset carries its check.
QUARANTINE_SOURCES = {
    LEADS.name: LEADS,
    CALL_EVENTS.name: CALL_EVENTS,
    CALLS.name: CALLS,
    WEBHOOK_DELIVERIES.name: WEBHOOK_DELIVERIES,
    "apten_late_summary_sensor": CALLS,
}


@dataclass(frozen=True)
class TableCheck:
    """One rule applied to one table's asset."""

    name: str
    description: str
    rule: Callable[[Store], Finding]
    blocking: bool = False
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR


def asset_key(spec: TableSpec) -> dg.AssetKey:
    return dg.AssetKey(["apten", spec.name])


def _table_checks(settings: AptenSettings) -> dict[str, list[TableCheck]]:
    give_up_after = timedelta(hours=settings.summary_give_up_hours)
    checks: dict[str, list[TableCheck]] = {
        spec.name: [
            TableCheck(
                "unique_primary_key",
                f"No ({', '.join(spec.primary_key)}) occurs twice in {spec.qualified_name}.",
                lambda store, spec=spec: store.unique_primary_key(spec),
                blocking=spec.name in BLOCKING_UNIQUE_KEYS,
            )
        ]
        for spec in TABLES.values()
        if spec is not REJECTED_RECORDS
    }
    for source, spec in QUARANTINE_SOURCES.items():
        checks[spec.name].append(
            TableCheck(
                f"rejected_records_{source}_resolved",
                f"No record rejected by {source} is still unresolved in {REJECTED_RECORDS.qualified_name} "
                "(lists them: id, reason, times seen).",
                lambda store, source=source: store.unresolved_quarantine(source),
                severity=dg.AssetCheckSeverity.WARN,
            )
        )
    checks[CALLS.name].append(
        TableCheck(
            "summary_status_allowed",
            "summary_status is one of ready | pending | missing | not_found.",
            lambda store: store.summary_status_allowed(),
        )
    )
    checks[CALL_SUMMARIES.name] += [
        TableCheck(
            "summaries_belong_to_stored_calls",
            "Every summary's call_id is in apten.calls.",
            lambda store: store.children_have_stored_call(CALL_SUMMARIES),
        ),
        TableCheck(
            "summary_coverage_after_give_up",
            f"No call that ended more than {settings.summary_give_up_hours:g} h ago "
            "(APTEN_SUMMARY_GIVE_UP_HOURS) is still pending a summary; reports the share of those "
            "calls that have one.",
            lambda store: store.summary_coverage(give_up_after),
            severity=dg.AssetCheckSeverity.WARN,
        ),
    ]
    checks[CALL_TRANSCRIPT_TURNS.name] += [
        TableCheck(
            "turn_indexes_contiguous",
            "Each call's turn_index values are 0, 1, ..., n-1 (no gaps, no repeats).",
            lambda store: store.turns_contiguous(),
        ),
        TableCheck(
            "turns_belong_to_stored_calls",
            "Every transcript turn's call_id is in apten.calls.",
            lambda store: store.children_have_stored_call(CALL_TRANSCRIPT_TURNS),
        ),
    ]
    return checks


def _metadata(finding: Finding) -> dict[str, Any]:
    return {
        name: dg.MetadataValue.json(value) if isinstance(value, list | dict) else value
        for name, value in finding.metadata.items()
    }


def _check_op(spec: TableSpec, table_checks: list[TableCheck]) -> dg.AssetChecksDefinition:
    key = asset_key(spec)
    by_name = {check.name: check for check in table_checks}

    @dg.multi_asset_check(
        name=f"check_{spec.name}",
        specs=[
            dg.AssetCheckSpec(check.name, asset=key, description=check.description, blocking=check.blocking)
            for check in table_checks
        ],
        can_subset=True,
        description=f"Data-quality checks of {spec.qualified_name}.",
    )
    def run_checks(
        context: dg.AssetCheckExecutionContext, warehouse: AptenWarehouse
    ) -> Iterator[dg.AssetCheckResult]:
        selected = sorted(check_key.name for check_key in context.selected_asset_check_keys)
        # The write session creates missing tables first, so a check before any load sees empty ones.
        with warehouse.get_store() as store:
            findings = {name: by_name[name].rule(store) for name in selected}
        for name, finding in findings.items():
            check = by_name[name]
            if not finding.passed:
                context.log.warning(f"{spec.qualified_name}: check {name} failed: {finding.metadata}")
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=name,
                passed=finding.passed,
                severity=check.severity,
                metadata=_metadata(finding),
            )

    return run_checks


def build_checks(settings: AptenSettings) -> list[dg.AssetChecksDefinition]:
    return [_check_op(TABLES[name], checks) for name, checks in _table_checks(settings).items()]
