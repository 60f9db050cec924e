"""Materialization metadata a data team reads in the UI: schema, row counts, run figures, preview."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import dagster as dg

from apten_assets.lib.sync import StepReport
from apten_assets.lib.tables import TableSpec
from apten_assets.warehouse import Preview

PREVIEW_CELL_CHARS = 60
# Ids listed in a run's `quarantined_ids` (the count is in `quarantined`; the table has them all).
MAX_QUARANTINED_IDS = 100


def table_definition_metadata(spec: TableSpec) -> dict[str, Any]:
    """Static metadata for the asset definition: table name and column schema with descriptions."""
    return {
        "dagster/table_name": spec.qualified_name,
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(
                    name=c.name, type=c.type, description=c.description, tags={"pii": ""} if c.pii else None
                )
                for c in spec.columns
            ],
        ),
        "primary_key": ", ".join(spec.primary_key),
    }


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= PREVIEW_CELL_CHARS else text[: PREVIEW_CELL_CHARS - 1] + "…"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    header = "| " + " | ".join(columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join([header, rule, *body])


def figures(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A store's metadata figures for Dagster: its `Preview`s as markdown tables."""
    return {
        name: dg.MetadataValue.md(markdown_table(value.columns, value.rows))
        if isinstance(value, Preview)
        else value
        for name, value in metadata.items()
    }


def run_metadata(
    report: StepReport,
    *,
    row_count: int,
    partition_row_count: int | None = None,
    api_stats: Mapping[str, int | float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What this run fetched, wrote, skipped (with reasons and ids) and retried."""
    meta: dict[str, Any] = {"dagster/row_count": row_count}
    if partition_row_count is not None:
        meta["dagster/partition_row_count"] = partition_row_count
    for name, value in sorted(report.counts.items()):
        meta[name] = int(value)
    meta.setdefault("skipped", 0)
    meta.setdefault("quarantined", 0)
    if report.quarantined_ids:
        shown = report.quarantined_ids[:MAX_QUARANTINED_IDS]
        meta["quarantined_ids"] = dg.MetadataValue.json(shown)
    if report.skipped:
        meta["skipped_reasons"] = dg.MetadataValue.json(dict(report.skip_reasons))
        meta["skipped_records"] = dg.MetadataValue.json(report.skipped_preview())
    for name, value in (api_stats or {}).items():
        meta[name] = value
    meta.update(extra or {})
    return meta


def window_label(start: datetime, end: datetime) -> str:
    return f"[{start.date().isoformat()}, {end.date().isoformat()})"
