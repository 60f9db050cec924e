"""Rows to Arrow: the one conversion every backend stages its writes from."""

from __future__ import annotations

import sys
from typing import Any

import pyarrow as pa

from apten_assets.lib.models import json_text
from apten_assets.lib.tables import TableSpec
from apten_assets.warehouse.store import Rows

ARROW_TYPES = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "BOOLEAN": pa.bool_(),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
}


def _to_json_text(value: Any) -> str | None:
    return None if value is None else json_text(value)


def to_arrow(spec: TableSpec, rows: Rows) -> pa.Table:
    """Rows as an Arrow table with every data column of `spec` (absent columns are NULL)."""
    columns = spec.data_columns
    pandas = sys.modules.get("pandas")  # a DataFrame exists only once pandas is imported
    if pandas is not None and isinstance(rows, pandas.DataFrame):
        rows = pa.Table.from_pandas(rows, preserve_index=False)
    if isinstance(rows, pa.Table):
        unknown = set(rows.column_names) - {column.name for column in columns}
        if unknown:
            raise ValueError(f"{spec.qualified_name} has no columns {sorted(unknown)}")
        arrays = [
            rows.column(column.name) if column.name in rows.column_names else pa.nulls(rows.num_rows)
            for column in columns
        ]
        return pa.table(arrays, names=[column.name for column in columns])
    rows = rows if isinstance(rows, list) else list(rows)
    if rows:
        unknown = set(rows[0]) - {column.name for column in columns}
        if unknown:
            raise ValueError(f"{spec.qualified_name} has no columns {sorted(unknown)}")
    arrays = []
    for column in columns:
        name = column.name
        values = [row.get(name) for row in rows]
        if column.type == "JSON":
            values = [_to_json_text(value) for value in values]
        try:
            arrays.append(pa.array(values, type=ARROW_TYPES[column.type]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise ValueError(
                f"{spec.qualified_name}.{name}: value does not fit {column.type}: {exc}"
            ) from exc
    return pa.table(arrays, names=[column.name for column in columns])
