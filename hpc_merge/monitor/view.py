"""How runs look: a live rich table (plus the selected run's log tail) and a plain snapshot.

The plain form is for scripts and tests, so it has no colours, boxes or terminal tricks; the
live form redraws in place and lets the user pick the run whose log is shown (up/down or j/k,
q to quit) when stdin is a terminal.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from hpc_merge.monitor.reader import Reader, RunInfo
from hpc_merge.run.logs import last_log_lines

SPARKS = "▁▂▃▄▅▆▇█"
STYLE = {"pending": "yellow", "running": "cyan", "ok": "green", "failed": "red", "cancelled": "magenta",
         "dead": "bold red"}


def sparkline(values: Sequence[float], width: int = 16) -> str:
    """The last ``width`` values as block characters, scaled between their min and max."""
    vals = [float(v) for v in values if isinstance(v, int | float)][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(SPARKS[round((v - lo) / span * (len(SPARKS) - 1))] for v in vals)


def fmt_duration(seconds: float | None) -> str:
    """``75`` -> ``1m15s``; ``None`` -> ``-``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_num(value: float | None, fmt: str = ".1f") -> str:
    """A number, or ``-`` when unknown."""
    return "-" if value is None else format(value, fmt)


def run_label(run: RunInfo) -> str:
    """``kind/name/run_id``, the short way to name a run dir."""
    return "/".join(p for p in (run.kind, run.name, run.run_id) if p)


def fitness_text(run: RunInfo) -> str:
    """Best fitness with a sparkline of the per-generation best (evolution runs only)."""
    if run.best_fitness is None and not run.history:
        return "-"
    best = fmt_num(run.best_fitness, ".4g")
    line = sparkline([r.get("best") for r in run.history])
    gen = f" g{run.generation}" if run.generation is not None else ""
    return f"{best}{gen} {line}".strip()


def slurm_text(run: RunInfo) -> str:
    """``123 RUNNING``, or ``-`` for a local run."""
    if not run.slurm_job_id:
        return "-"
    return f"{run.slurm_job_id} {run.slurm_state or '?'}"


def detail_text(run: RunInfo) -> str:
    """Why a run is in its state, when that is not obvious (dead, failed, cancelled); the parts of a
    split merge (``job.tasks=N``) while it runs."""
    if run.state in ("dead", "failed", "cancelled", "pending"):
        return run.reason
    return parts_text(run.status) if run.state == "running" else ""


def parts_text(status: dict) -> str:
    """``parts: 1 done, 2 merging (2: 40%, 3: 12%)`` from a split merge's status rows, else ``""``."""
    rows = [r for r in status.get("parts") or [] if isinstance(r, dict)]
    tally: dict[str, int] = {}
    for r in rows:
        tally[str(r.get("state"))] = tally.get(str(r.get("state")), 0) + 1
    busy = [f"{str(r.get('part', '?'))[5:10].lstrip('0')}: "
            f"{100 * (r.get('tensors_done') or 0) / max(r.get('tensors_total') or 1, 1):.0f}%"
            for r in rows if r.get("state") == "merging"]
    return ("parts: " + ", ".join(f"{n} {s}" for s, n in tally.items()) + (f" ({', '.join(busy)})" if busy else "")
            if rows else "")


def fmt_bytes(n: float | None) -> str:
    """``29e6`` -> ``29M``; ``None`` -> ``-``."""
    if n is None:
        return "-"
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" or abs(n) >= 10 else f"{n:.1f}{unit}"
        n /= 1000
    return "-"


def io_text(run: RunInfo) -> str:
    """``read→written`` bytes, as far as the job reports them."""
    if run.bytes_read is None and run.bytes_written is None:
        return "-"
    return f"{fmt_bytes(run.bytes_read)}→{fmt_bytes(run.bytes_written)}"


COLUMNS = ("STATE", "RUN", "PHASE", "PROGRESS", "MB/S", "IO", "ETA", "FITNESS", "SLURM", "UPDATED")
#: Columns shown even when no run has a value there; the others give way on narrow terminals.
ALWAYS = frozenset({"STATE", "RUN", "PHASE", "PROGRESS", "UPDATED"})


def _cells(run: RunInfo, now: float) -> list[str]:
    """Plain cells of one run's row (same order as :data:`COLUMNS`)."""
    pct = "-" if run.progress is None else f"{run.progress * 100:.0f}%"
    eta = "-"
    if run.state == "running" and run.eta_s is not None:  # counted down since the job said it
        eta = fmt_duration(max(0.0, run.eta_s - (now - (run.updated_at or now))))
    age = fmt_duration(now - run.updated_at) + " ago" if run.updated_at else "-"
    return [run.state, run_label(run), run.phase or "-", pct, fmt_num(run.throughput_mb_s), io_text(run), eta,
            fitness_text(run), slurm_text(run), age]


def _table(runs: Sequence[RunInfo], now: float) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows and the kept column indexes: a column no run fills (``-``) is left out."""
    rows = [_cells(r, now) for r in runs]
    keep = [i for i, name in enumerate(COLUMNS) if name in ALWAYS or any(row[i] != "-" for row in rows)]
    return [COLUMNS[i] for i in keep], [[row[i] for i in keep] for row in rows], keep


def sweep_heading(runs: Sequence[RunInfo], sweep: str) -> str:
    """``sweep 2026-12-02_07-10-11-demo: 12 runs (10 ok, 2 running)``: the line above a sweep's runs."""
    tally: dict[str, int] = {}
    for run in runs:
        if run.sweep == sweep:
            tally[run.state] = tally.get(run.state, 0) + 1
    parts = ", ".join(f"{n} {state}" for state, n in sorted(tally.items(), key=lambda kv: -kv[1]))
    total = sum(tally.values())
    return f"sweep {sweep}: {total} run{'s' if total != 1 else ''} ({parts})"


def plain_snapshot(runs: Sequence[RunInfo], selected: int = 0, log_lines: int = 8,
                   now: float | None = None) -> str:
    """A plain-text table of ``runs`` and the selected run's last log lines."""
    now = time.time() if now is None else now
    if not runs:
        return "no runs found"
    header, body, _ = _table(runs, now)
    rows = [header, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    out, group = lines[:1], None
    for run, line in zip(runs, lines[1:], strict=True):  # a sweep's runs under one heading
        if run.sweep != group and run.sweep is not None:
            out.append(f"── {sweep_heading(runs, run.sweep)}")
        group = run.sweep
        out.append(line)
    for run in runs:
        if detail_text(run):
            out.append(f"{run_label(run)}: {run.state}: {detail_text(run)}")
    if log_lines and runs:
        run = runs[min(selected, len(runs) - 1)]
        logs = last_log_lines(run.run_dir, log_lines)
        if logs:
            out += ["", f"--- last log lines of {run_label(run)} ---", *logs]
    return "\n".join(out)


def render(runs: Sequence[RunInfo], selected: int = 0, log_lines: int = 8,
           now: float | None = None) -> RenderableType:
    """The live view: a table (one row per run) and a panel with the selected run's log tail."""
    now = time.time() if now is None else now
    header, body, _ = _table(runs, now)
    table = Table(expand=True, header_style="bold", pad_edge=False)
    label_width = min(max(len(row[1]) for row in body) if body else 3, 40)
    for name in header:
        if name == "RUN":
            table.add_column(name, no_wrap=True, min_width=label_width, ratio=3)
        else:
            table.add_column(name, no_wrap=True, overflow="ellipsis")
    progress_col = header.index("PROGRESS")
    group = None
    for i, (run, cells) in enumerate(zip(runs, body, strict=True)):
        if run.sweep != group and run.sweep is not None:  # a sweep's runs under one heading
            table.add_section()
            heading = [Text("")] * len(header)
            heading[header.index("RUN")] = Text(sweep_heading(runs, run.sweep), style="bold")
            table.add_row(*heading)
        group = run.sweep
        row: list[RenderableType] = [Text(c) for c in cells]
        row[0] = Text(run.state, style=STYLE.get(run.state, ""))
        if run.progress is not None:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=1.0, completed=run.progress, width=12,
                                    complete_style=STYLE.get(run.state, "cyan")), cells[progress_col])
            row[progress_col] = bar
        table.add_row(*row, style="reverse" if i == selected and len(runs) > 1 else "")
    parts: list[RenderableType] = [table]
    for run in runs:
        if detail_text(run):
            parts.append(Text(f"{run_label(run)}: {detail_text(run)}", style=STYLE.get(run.state, "")))
    if runs and log_lines:
        run = runs[min(selected, len(runs) - 1)]
        logs = last_log_lines(run.run_dir, log_lines) or ["(no log yet)"]
        parts.append(Panel(Text("\n".join(logs), no_wrap=True, overflow="ellipsis"),
                           title=f"log: {run_label(run)}", title_align="left"))
    parts.append(Text(f"{sum(not r.ended for r in runs)} active of {len(runs)}  ·  "
                      "↑/↓ select  ·  q quit", style="dim"))
    return Group(*parts)


@contextlib.contextmanager
def keypresses() -> Iterator[Callable[[], list[str]]]:
    """A function returning the keys pressed since the last call (nothing if stdin is no tty)."""
    if not sys.stdin.isatty():
        yield list
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read() -> list[str]:
        data = ""
        while select.select([fd], [], [], 0)[0]:
            data += os.read(fd, 32).decode(errors="ignore")
        return split_keys(data)

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def split_keys(data: str) -> list[str]:
    """Raw terminal input -> keys: ``"j\x1b[Ak"`` -> ``["j", "\x1b[A", "k"]``."""
    keys, i = [], 0
    while i < len(data):
        n = 3 if data.startswith("\x1b[", i) and i + 2 < len(data) else 1
        keys.append(data[i:i + n])
        i += n
    return keys


def _move(selected: int, keys: list[str], n: int) -> tuple[int, bool]:
    """New selection after ``keys``; ``True`` as second value when the user asked to quit."""
    for key in keys:
        if key in ("q", "Q", "\x1b"):
            return selected, True
        if key in ("j", "\x1b[B"):
            selected += 1
        elif key in ("k", "\x1b[A"):
            selected -= 1
    return max(0, min(selected, n - 1)), False


def watch(reader: Reader, interval: float = 1.0, log_lines: int = 8, console: Console | None = None) -> int:
    """Redraw until every run has ended: 0 if all ended ok, else 1 (0 when the user quits)."""
    console = console or Console()
    runs = reader.snapshot()
    if not runs:
        console.print("no runs found")
        return 0
    selected, quit_ = 0, False
    with keypresses() as keys, Live(render(runs, selected, log_lines), console=console,
                                     refresh_per_second=4, transient=False) as live:
        while not all(r.ended for r in runs) and not quit_:
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and not quit_:
                time.sleep(0.05)
                moved, quit_ = _move(selected, keys(), len(runs))
                if moved != selected:
                    selected = moved
                    live.update(render(runs, selected, log_lines))
            runs = reader.snapshot()
            selected = min(selected, len(runs) - 1)
            live.update(render(runs, selected, log_lines))
    if quit_:
        return 0
    return 0 if all(r.state == "ok" for r in runs) else 1
