"""Who a process is (pid, host, SLURM job) and whether it still runs.

Run locks and temp folders record their owner so that the next run can tell a live owner (leave it
alone) from a dead one (take over, clean up) instead of waiting forever or deleting someone's work.
A pid is only meaningful on its own host; elsewhere only SLURM can say whether a job still runs,
and when nobody can say, the answer is "unknown", which callers treat as alive.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from hpc_merge.procs.slurmq import ENDED, GONE, query_states


def hostname() -> str:
    """This machine's name as recorded in owners (the short name: what SLURM shows too)."""
    return socket.gethostname().split(".")[0]


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in (``123`` or ``123_4``), if any."""
    array_id, task_id = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_id and task_id:
        return f"{array_id}_{task_id}"
    return os.environ.get("SLURM_JOB_ID") or None


def this_owner() -> dict[str, Any]:
    """This process as an owner record (its start time tells it from a later process with its pid)."""
    return {"pid": os.getpid(), "host": hostname(), "slurm_job_id": slurm_job_id(),
            "pid_start": process_start(os.getpid())}


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/PID/stat`` (state, ppid, ..., starttime), or None without /proc."""
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None where /proc cannot say."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as gone); with ``started``,
    also that it is the same process, not a later one that was given the same pid."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    fields = _proc_stat(pid)
    if fields is None:
        return True
    if fields[0] == "Z":
        return False
    return started is None or len(fields) <= 19 or int(fields[19]) == int(started)


def slurm_job_active(job_id: str) -> bool | None:
    """True while SLURM job ``job_id`` is pending or running, False once it ended, None if SLURM cannot say."""
    states = query_states([str(job_id)])
    if states is None:
        return None
    state = states.get(str(job_id))
    if state is None or state == GONE or state in ENDED:
        return False
    return True


def owner_alive(owner: dict[str, Any]) -> bool | None:
    """Whether the owner still runs: True, False, or None (unknown: another host, no SLURM to ask).

    A record ``held_by: slurm`` belongs to its SLURM job (the submitting process may be long gone);
    otherwise the pid decides on its own host, and the SLURM job it ran in decides elsewhere.
    """
    job = owner.get("slurm_job_id")
    if owner.get("held_by") == "slurm" and job:
        return slurm_job_active(str(job))
    if owner.get("host") == hostname() and owner.get("pid") is not None:
        return pid_alive(int(owner["pid"]), owner.get("pid_start"))
    if job:
        return slurm_job_active(str(job))
    return None


def describe(owner: dict[str, Any]) -> str:
    """``SLURM job 42`` or ``pid 1234 on host h`` (plus the SLURM job it runs in)."""
    if owner.get("held_by") == "slurm" and owner.get("slurm_job_id"):
        return f"SLURM job {owner['slurm_job_id']}"
    text = f"pid {owner.get('pid')} on host {owner.get('host')}"
    return text + (f" (SLURM job {owner['slurm_job_id']})" if owner.get("slurm_job_id") else "")
