"""A run dir's logs: its newest log lines (``job.log``, submitit's logs) and its SLURM job id.

Read-only and cheap (the tail of a file, a listing of ``slurm/``): the monitor calls these on
every refresh for every run it shows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hpc_merge.run.files import RESULT_FILE, SLURM_DIR, read_json

_SUBMITIT_ID = re.compile(r"^(\d+(?:_\d+)?)_(?:submitted\.pkl|\d+_log\.(?:out|err)|\d+_result\.pkl)$")


def slurm_job_id(run_dir: Path, status: dict[str, Any]) -> str | None:
    """The run's SLURM job id: from the status file, else from submitit's files in ``slurm/``."""
    job_id = status.get("slurm_job_id")
    if job_id not in (None, ""):
        return str(job_id)
    folder = run_dir / SLURM_DIR
    if not folder.is_dir():
        return None
    hits = [(p.stat().st_mtime, m.group(1)) for p in folder.rglob("*") if (m := _SUBMITIT_ID.match(p.name))]
    return max(hits)[1] if hits else None


def tail(path: Path, lines: int = 10, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` lines of a text file (reads at most ``max_bytes`` from its end)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    # progress bars redraw with \r: keep what a terminal would show
    return [ln.rsplit("\r", 1)[-1] for ln in data.splitlines()][-lines:]


def log_files(run_dir: Path) -> list[Path]:
    """The run's log files, newest first: submitit's logs under ``slurm/``, then ``*.log``."""
    candidates = [p for p in (run_dir / SLURM_DIR).rglob("*") if p.suffix in (".out", ".err", ".log")] \
        if (run_dir / SLURM_DIR).is_dir() else []
    candidates += [p for p in run_dir.glob("*.log")]
    return sorted((p for p in candidates if p.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


def last_log_lines(run_dir: str | Path, lines: int = 10) -> list[str]:
    """Recent log lines of a run (its newest log file; a failure's traceback if no log)."""
    run_dir = Path(run_dir)
    for path in log_files(run_dir):
        got = [ln for ln in tail(path, lines) if ln.strip()]
        if got:
            return [f"==> {path.relative_to(run_dir)} <=="] + got
    trace = read_json(run_dir / RESULT_FILE).get("traceback")
    return str(trace).splitlines()[-lines:] if trace else []
