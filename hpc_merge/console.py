"""What a user sees while a job runs: progress of every long phase, in one form.

One progress API (:func:`task`) is used by every phase (zoo training, model checks, the merge, the
smoke test, evaluation, MoE gates, evolution), so all of them look the same:

- on a terminal, a rich bar with count, rate, elapsed time and ETA (what pip, tqdm and
  huggingface-cli users expect for anything longer than a few seconds);
- elsewhere (SLURM logs, ``> file``), plain timestamped lines: one when a phase starts, one every
  :data:`PLAIN_EVERY_S` seconds, one when it ends. Bars' control codes would make such files
  unreadable, and the monitor shows ``job.log``'s tail, so that file always gets the plain lines.

Progress and results go to stdout (as pip's do), in order; stderr keeps the one-line errors
(``error: FIELD: ... — fix: ...``) that scripts and tests read, and warnings. Which log records
reach the terminal at all: :mod:`hpc_merge.verbosity`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

#: In plain mode, at most one line per phase every this many seconds (besides start and end).
PLAIN_EVERY_S = 10.0
#: ``HPC_MERGE_PROGRESS=plain|bar`` forces a form (default: bars on a terminal, else plain).
FORM_ENV = "HPC_MERGE_PROGRESS"

_lock = threading.RLock()
_T0 = time.monotonic()  # reset by start_clock: the CLI's start


def start_clock() -> None:
    """The CLI starts now (:func:`elapsed_s` counts from here)."""
    global _T0
    _T0 = time.monotonic()


# ----------------------------------------------------------------------------------------- streams

def _streams(stream: TextIO | None = None) -> tuple[TextIO, TextIO | None]:
    """(the terminal-side stream, the job log file or None) behind ``stream`` (default stdout).

    While a job runs, :func:`hpc_merge.run.joblog.tee_output` puts a tee in ``sys.stdout`` that copies
    into ``job.log``; bars go to the stream behind it and plain lines to the log file, so control
    codes never land in the log.
    """
    out = sys.stdout if stream is None else stream
    inner = getattr(out, "stream", None)
    log = getattr(out, "file", None)
    if inner is not None and log is not None:
        return inner, log
    return out, None


def bars_wanted() -> bool:
    """Bars on a terminal, plain lines elsewhere (``HPC_MERGE_PROGRESS`` overrides)."""
    form = os.environ.get(FORM_ENV, "").lower()
    if form in ("plain", "bar"):
        return form == "bar"
    term, _ = _streams()
    try:
        return term.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def elapsed_s() -> float:
    """Seconds since the CLI started (the end-of-run summary's "in 3m 12s")."""
    return time.monotonic() - _T0


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _stamp() -> str:
    return time.strftime("[%H:%M:%S]")


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def duration(seconds: float) -> str:
    """``1m 05s`` style, for the end-of-run summary."""
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(s, 60)
    return f"{m}m {s:02d}s" if m < 60 else f"{m // 60}h {m % 60:02d}m"


def _write_plain(line: str, to_terminal: bool) -> None:
    term, log = _streams()
    with _lock:
        if log is not None:
            log.write(line + "\n")
            log.flush()
        if to_terminal:
            term.write(line + "\n")
            term.flush()


def note(text: str) -> None:
    """One message line between bars (stdout): timestamped in plain mode, above the live bars on a terminal."""
    if bars_wanted():
        _write_plain(f"{_stamp()} {text}", to_terminal=False)
        print_above(text, sys.stdout)
    else:
        _write_plain(f"{_stamp()} {text}", to_terminal=True)


def echo(text: str = "") -> None:
    """Result lines on stdout, flushed (so they stay in order with progress and errors)."""
    print(text, flush=True)


def print_above(text: str, stream: TextIO) -> None:
    """One line on the terminal side of ``stream``: above the live bars when they are shown."""
    live = _live
    if live is not None:
        live.console.print(text, highlight=False, markup=False)
    else:
        term, _ = _streams(stream)
        term.write(text + "\n")
        term.flush()


# ----------------------------------------------------------------------------------------- progress

_live: Any = None  # the rich Progress while any bar is open
_open = 0


def _rich_progress() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Column
    from rich.text import Text

    class CountRate(ProgressColumn):
        """``12/40 step · 3.1 step/s`` (count without a total when there is none)."""

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "")
            if not task.total and not task.completed:
                return Text("")
            count = f"{task.completed:.0f}/{task.total:.0f}" if task.total else f"{task.completed:.0f}"
            rate = f" {_rate(task.speed)}/s" if task.speed else ""
            return Text(f"{count} {unit}{rate}", style="progress.download")

    term, _ = _streams()
    console = Console(file=term, highlight=False)
    return Progress(SpinnerColumn(finished_text="✓"), TextColumn("[bold]{task.description}"), BarColumn(bar_width=16),
                    CountRate(table_column=Column(no_wrap=True)), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(compact=True),
                    TextColumn("{task.fields[info]}"), console=console, transient=False, redirect_stdout=False,
                    redirect_stderr=False, refresh_per_second=4)


class Task:
    """One phase's progress: :meth:`update` it as work is done (cheap to call often)."""

    def __init__(self, description: str, total: float | None, unit: str):
        self.description, self.total, self.unit = description, total, unit
        self.completed = 0.0
        self.info = ""
        self.t0 = time.monotonic()
        self._last_plain = self.t0
        self._rich_id: Any = None
        self._shown = self._closed = False

    def update(self, completed: float | None = None, *, advance: float | None = None, total: float | None = None,
               info: str | None = None) -> None:
        """Set (``completed``) or add to (``advance``) the work done; ``info`` is a short free text."""
        if total is not None:
            self.total = total
        if completed is not None:
            self.completed = completed
        if advance is not None:
            self.completed += advance
        if info is not None:
            self.info = info
        if not self._shown:
            return
        if self._rich_id is not None:
            _live.update(self._rich_id, completed=self.completed, total=self.total, info=self.info)
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = now
            _write_plain(f"{_stamp()} {self.line()}", to_terminal=self._rich_id is None)

    def line(self, done: bool = False) -> str:
        """The plain-text form: count, percent, rate, ETA (or time taken), info."""
        elapsed = time.monotonic() - self.t0
        parts = [f"{self.completed:.0f}/{self.total:.0f} {self.unit}" if self.total else
                 (f"{self.completed:.0f} {self.unit}" if self.completed else "")]
        if self.total:
            parts[0] += f" ({100 * self.completed / self.total:.0f}%)"
        rate = self.completed / elapsed if elapsed > 0 else 0.0
        if done:
            parts.append(f"done in {_duration(elapsed)}")
        else:
            if rate and self.completed:
                parts.append(f"{_rate(rate)} {self.unit}/s")
            if self.total and rate:
                parts.append(f"ETA {_duration((self.total - self.completed) / rate)}")
            elif not self.completed:
                parts.append("started")
        if self.info:
            parts.append(self.info)
        return f"{self.description}: " + " · ".join(p for p in parts if p)

    def show(self) -> None:
        """Put the phase on screen (at once, or from a timer for phases that are usually instant)."""
        global _live, _open
        with _lock:
            if self._shown or self._closed:
                return
            self._shown = True
            bars = bars_wanted()
            if bars:
                if _live is None:
                    _live = _rich_progress()
                    _live.start()
                _open += 1
                self._rich_id = _live.add_task(self.description, total=self.total, completed=self.completed,
                                               unit=self.unit, info=self.info)
            _write_plain(f"{_stamp()} {self.line()}", to_terminal=not bars)

    def close(self, ok: bool) -> None:
        """The end line (time taken, or ``stopped``), and the live display closed after the last bar."""
        global _live, _open
        with _lock:
            self._closed = True
            if not self._shown:
                return
            if ok and self.total is not None and self.completed < self.total:
                self.completed = self.total
            if not ok:
                self.info = (self.info + " · " if self.info else "") + "stopped"
            _write_plain(f"{_stamp()} {self.line(done=ok)}", to_terminal=self._rich_id is None)
            if self._rich_id is not None and _live is not None:
                _live.update(self._rich_id, completed=self.completed,
                             total=self.total if self.total is not None else self.completed, info=self.info)
                _live.stop_task(self._rich_id)
                _open -= 1
                if _open == 0:
                    _live.refresh()
                    _live.stop()
                    _live = None


@contextlib.contextmanager
def task(description: str, total: float | None = None, unit: str = "it", show_after: float = 0.0) -> Iterator[Task]:
    """Show the progress of one phase while the block runs (bars on a terminal, else lines).

    ``show_after``: seconds before the phase appears at all; for phases that are usually instant
    (model checks), so that a fast run, or a bad config's one-line error, shows no progress noise.
    Phases may nest (the zoo build inside model checks): on a terminal they share one live display.
    """
    t = Task(description, total, unit)
    timer = None
    if show_after > 0:
        timer = threading.Timer(show_after, t.show)
        timer.daemon = True
        timer.start()
    else:
        t.show()
    ok = False
    try:
        yield t
        ok = True
    finally:
        if timer is not None:
            timer.cancel()
        t.close(ok)
