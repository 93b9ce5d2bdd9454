"""Plain-text tables for the terminal client: left-aligned columns, a header and a rule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from coordinator.timeline import parse_time

__all__ = ["table", "when"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The rows under their headers, each column as wide as its widest cell."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True))

    return [
        line(headers).rstrip(),
        "  ".join("-" * width for width in widths),
        *(line(row).rstrip() for row in cells),
    ]


def when(value: str | datetime | None) -> str:
    """A timestamp (JSON or datetime) as ``YYYY-MM-DD HH:MM:SS`` UTC (``-`` when absent)."""
    if not value:
        return "-"
    return parse_time(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return when(value)
    return str(value)
