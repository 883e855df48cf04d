"""A run's state from its files and SLURM's word, in an order the user can trust.

The state rules, in order (first match wins):

1. ``result.json`` says ok -> ``ok``; SLURM says CANCELLED -> ``cancelled``; ``result.json`` or
   the status file says failed -> ``failed``; the status file says ok -> ``ok``.
2. A SLURM job that is waiting -> ``pending``; running -> ``running``; ended (FAILED, TIMEOUT,
   NODE_FAIL, OUT_OF_MEMORY, ... or gone from the queue) while the status file still says
   running -> ``dead``: the job died without a last word.
3. A local job (no SLURM id) whose pid is gone on this host -> ``dead``.
4. Otherwise a heartbeat (``updated_at``) older than ``stale_after`` -> ``dead``, because nothing
   else can be checked from here (another host, SLURM unreachable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hpc_merge.procs import slurmq
from hpc_merge.run.files import RESULT_FILE, STATUS_FILE

STATES = ("pending", "running", "ok", "failed", "cancelled", "dead")
ENDED_STATES = frozenset({"ok", "failed", "cancelled", "dead"})
DEFAULT_STALE_AFTER_S = 15 * 60


def num(value: Any) -> float | None:
    """``value`` as a float, or ``None`` (status files are written by several hands)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _pid_alive(pid: int, since: float | None) -> bool:
    """Whether ``pid`` still runs here and is the process that wrote the status at ``since``.

    A pid can be reused after the job died; a process that started after the last status
    update cannot be its writer (checked through ``/proc`` where there is one).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    if since is None:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":  # zombie: exited, not yet reaped by its parent
            return False
        start_ticks = int(fields[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        started = btime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return True
    return started <= since + 2  # btime has 1 s resolution


def progress_of(status: dict[str, Any]) -> float | None:
    """Fraction done in [0, 1]: merge tasks, else evolution generations or evaluations."""
    for done, total in (("tasks_done", "tasks_total"), ("generation", "generations_total"),
                        ("evaluations", "evaluations_total")):
        d, t = num(status.get(done)), num(status.get(total))
        if d is not None and t:
            return max(0.0, min(1.0, d / t))
    return None


def history_of(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-generation ``{generation, best, mean, sigma}`` rows (malformed rows dropped)."""
    rows = status.get("history")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def classify(status: dict[str, Any], result: dict[str, Any], slurm_state: str | None,
             has_slurm: bool, *, now: float, stale_after: float, host: str,
             created_at: float | None = None) -> tuple[str, str]:
    """``(state, reason)`` of a run from its files and SLURM's word (see the module docstring).

    ``has_slurm`` says the run is a SLURM job; ``slurm_state`` is ``None`` when SLURM could not
    be asked (or did not know the job).
    """
    written = str(status.get("state") or "").lower()
    res = str(result.get("status") or "").lower()
    if res == "ok":
        return "ok", RESULT_FILE
    if slurm_state == "CANCELLED":
        return "cancelled", "SLURM: CANCELLED"
    if str(result.get("error") or status.get("error") or "").startswith("KeyboardInterrupt"):
        return "cancelled", "interrupted (Ctrl-C)"
    if res == "failed" or written == "failed":
        return "failed", str(result.get("error") or status.get("error") or "")
    if written in ("ok", "cancelled"):
        return written, STATUS_FILE
    if has_slurm and slurm_state:
        if slurm_state in slurmq.WAITING:
            return "pending", f"SLURM: {slurm_state}"
        if slurm_state == slurmq.GONE and written in ("pending", "submitted"):  # never started
            return "cancelled", "SLURM: left the queue before it started (cancelled)"
        if slurm_state in slurmq.ENDED or slurm_state == slurmq.GONE:
            what = "left the queue" if slurm_state == slurmq.GONE else f"ended {slurm_state}"
            return "dead", f"SLURM job {what} without a final status"
        return "running", f"SLURM: {slurm_state}"
    if written in ("pending", "submitted"):
        return "pending", "submitted (SLURM not asked)" if has_slurm else "submitted"
    updated = num(status.get("updated_at"))
    pid = status.get("pid")
    if not has_slurm and isinstance(pid, int) and status.get("host") == host and not _pid_alive(pid, updated):
        return "dead", f"pid {pid} is gone on {host}"
    last = updated if updated is not None else created_at
    if last is not None and now - last > stale_after:
        return "dead", f"no heartbeat for {int(now - last)} s"
    if not status:
        return "pending", "no status yet"
    return "running", ""
