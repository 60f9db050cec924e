"""Median and spread of repeated runs, and the few formatting helpers the report shares."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class Figure:
    """One measured quantity over several runs."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Figure:
        if not values:
            raise ValueError("a figure needs at least one value")
        return cls(tuple(float(v) for v in values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def spread_pct(self) -> float:
        """(max - min) / median, in percent: how far apart the runs were."""
        return 100.0 * (self.high - self.low) / self.median if self.median else 0.0

    def show(self, digits: int = 1, unit: str = "", scale: float = 1.0) -> str:
        """`12.3 s (11.9–12.8, n=3)`; one run shows just the value."""
        med = f"{self.median / scale:,.{digits}f}{unit}"
        if len(self.values) == 1:
            return f"{med} (n=1)"
        return f"{med} ({self.low / scale:,.{digits}f}–{self.high / scale:,.{digits}f}, n={len(self.values)})"


def ratio(numerator: Figure, denominator: Figure) -> float:
    """Ratio of medians."""
    return numerator.median / denominator.median if denominator.median else float("inf")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def plain_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table for a terminal: aligned columns."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
