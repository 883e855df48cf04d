"""Markdown tables and the small statistics the benchmarks report.

The median of interleaved repetitions is the headline number because the machine is shared:
one slow repetition (another process grabbing a core) must not move the result. The spread
(min..max) is printed next to it so a reader can see how noisy the run was.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def median(values: Sequence[float]) -> float:
    """The median, ``nan`` for no values (a skipped command still gets a row)."""
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], digits: int = 1) -> str:
    """``"min–max"`` of ``values`` (or ``"-"``), to show the noise beside a median."""
    if not values:
        return "-"
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def ratio(value: float, reference: float) -> str:
    """``"1.23 ×"``: how many times ``reference`` the value is."""
    if not reference or reference != reference or value != value:
        return "-"
    return f"{value / reference:.2f} ×"


def fmt(value: Any, digits: int = 1) -> str:
    """Numbers with a fixed number of decimals, everything else as text."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}f}"
    return str(value)


@dataclass
class Table:
    """A titled markdown table with notes below it (what was measured, how, caveats)."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        """Append one row (cells formatted with :func:`fmt`)."""
        self.rows.append([fmt(c) for c in cells])

    def markdown(self) -> str:
        """The table as GitHub markdown: heading, table, then the notes as a list."""
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"
