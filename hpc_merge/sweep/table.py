"""The table of a sweep's points: swept values, state, phase, key metric, run.

One function builds the rows, so the live table (while waiting), the plain table (printed when
output is not a terminal, and in tests) and ``hpc-merge sweep-report`` show the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpc_merge.sweep.metrics import better_is_lower, rank_key

STYLE = {"pending": "yellow", "running": "cyan", "ok": "green", "skipped": "green", "failed": "red",
         "cancelled": "magenta", "dead": "bold red"}


def metric_of(data: dict[str, Any]) -> tuple[str | None, bool]:
    """The sweep's key metric and whether lower is better."""
    metric = data.get("metric")
    return metric, better_is_lower(metric, data.get("mode")) if metric else False


def fmt_value(value: Any) -> str:
    """A cell: numbers with 4 significant digits, ``-`` for nothing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def ranked(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The points, best key metric first (points without one last, in sweep order)."""
    metric, lower = metric_of(data)
    points = list(data["points"])
    if not metric:
        return points
    return sorted(points, key=lambda p: (rank_key((p.get("metrics") or {}).get(metric), lower), p["index"]))


def rows(data: dict[str, Any], points: Sequence[dict[str, Any]] | None = None,
         extra_metrics: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and cells: ``#``, the swept parameters, STATE, PHASE, the key metric, [others], RUN."""
    params = list(data.get("params") or [])
    metric, _ = metric_of(data)
    points = data["points"] if points is None else points
    others: list[str] = []
    if extra_metrics:
        names = {k for p in points for k in (p.get("metrics") or {})}
        others = sorted(names - {metric})
    header = ["#", *params, "STATE", "PHASE", (metric or "METRIC").upper(), *others, "RUN"]
    body = []
    for p in points:
        values = p.get("params") or {}
        m = p.get("metrics") or {}
        body.append([str(p["index"]), *(fmt_value(values.get(k)) for k in params), str(p.get("state") or "-"),
                     str(p.get("phase") or "-"), fmt_value(m.get(metric)) if metric else "-",
                     *(fmt_value(m.get(k)) for k in others), str(p.get("run_id") or "-")])
    return header, body


def plain(header: list[str], body: list[list[str]]) -> str:
    """Columns padded with spaces (no colours: scripts, logs and tests read it)."""
    table = [header, *body]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table)


def counts(data: dict[str, Any]) -> str:
    """``3 ok, 2 running, 1 pending`` over the points."""
    tally: dict[str, int] = {}
    for p in data["points"]:
        tally[p.get("state") or "?"] = tally.get(p.get("state") or "?", 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(tally.items(), key=lambda kv: -kv[1]))


def rich_table(data: dict[str, Any], title: str) -> Any:
    """The live form of :func:`rows` (coloured states)."""
    from rich.table import Table
    from rich.text import Text

    header, body = rows(data)
    table = Table(title=title, title_justify="left", header_style="bold", pad_edge=False)
    for name in header:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    state_col = header.index("STATE")
    for cells in body:
        table.add_row(*(Text(c, style=STYLE.get(c, "")) if i == state_col else Text(c)
                        for i, c in enumerate(cells)))
    return table


class Display:
    """The table of points while a sweep runs: redrawn in place on a terminal; elsewhere (logs,
    pipes, tests) one line per point whose state changes, so the output stays readable."""

    def __init__(self, title: str):
        import sys

        self.title, self.live, self.seen = title, None, {}
        self.tty = sys.stdout.isatty()

    def __enter__(self) -> Display:
        if self.tty:
            from rich.live import Live

            self.live = Live(refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def update(self, data: dict[str, Any]) -> None:
        """Show ``data``'s points (a full redraw, or the changed states)."""
        if self.live is not None:
            from rich.console import Group
            from rich.text import Text

            self.live.update(Group(rich_table(data, self.title), Text(counts(data), style="dim")))
            return
        metric, _ = metric_of(data)
        for p in data["points"]:
            state = p.get("state")
            if self.seen.get(p["index"]) == state:
                continue
            self.seen[p["index"]] = state
            value = (p.get("metrics") or {}).get(metric) if metric else None
            extra = f" {metric}={fmt_value(value)}" if value is not None else ""
            phase = f" ({p['phase']})" if p.get("phase") and state not in ("ok", "skipped") else ""
            print(f"[sweep] #{p['index']} {p.get('label', '')}: {state}{phase}{extra}", flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
