"""Ask SLURM for job states: ``sacct`` first, ``squeue`` when accounting is unavailable.

One batched call per refresh for every watched job, so a monitor over many runs does not
hammer slurmctld/slurmdbd. Everything here fails soft: no SLURM on this machine -> no states,
and the caller falls back on the status file's heartbeat.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable

#: SLURM states after which the job's processes are gone.
ENDED = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "REVOKED",
})
#: States where the job has not started yet (or waits to start again).
WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD"})
#: Marker for "SLURM no longer knows this job" (squeue fallback: it left the queue).
GONE = "GONE"

_TIMEOUT_S = 15


def _run(cmd: list[str]) -> str | None:
    """stdout of ``cmd``, or ``None`` when it is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _normalize(state: str) -> str:
    """``"CANCELLED by 0"`` -> ``"CANCELLED"``; ``"RUNNING+"`` -> ``"RUNNING"``."""
    return state.split()[0].rstrip("+").upper() if state.strip() else "UNKNOWN"


def parse_sacct(text: str) -> dict[str, str]:
    """``JobID|State`` lines (``sacct -P -n -X``) -> ``{job_id: STATE}``.

    For an array element submitted as ``123_4`` sacct prints ``123_4``; a not-yet-expanded
    pending array prints ``123_[4-7]``, which is mapped to each id the caller asked for later.
    """
    states: dict[str, str] = {}
    for line in text.splitlines():
        job_id, _, state = line.partition("|")
        if job_id.strip():
            states[job_id.strip()] = _normalize(state)
    return states


def _array_fallback(job_id: str, states: dict[str, str]) -> str | None:
    """State of array element ``123_4`` from a still-packed ``123_[0-7]`` entry, if any."""
    base, sep, _ = job_id.partition("_")
    if not sep:
        return None
    for key, state in states.items():
        if key.startswith(f"{base}_[") and state in WAITING:
            return state
    return None


def query_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """``{job_id: STATE}`` for ``job_ids``, or ``None`` when SLURM cannot be asked at all.

    Jobs SLURM does not know (anymore) are left out with sacct, or marked :data:`GONE` when only
    squeue answered (it forgets finished jobs after ``MinJobAge``).
    """
    ids = sorted({str(j) for j in job_ids if str(j).strip()})
    if not ids:
        return {}
    out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)])
    if out is not None:
        raw = parse_sacct(out)
        states = {}
        for job_id in ids:
            state = raw.get(job_id) or _array_fallback(job_id, raw)
            if state:
                states[job_id] = state
        return states
    out = _run(["squeue", "-h", "-o", "%i|%T", "-j", ",".join(ids)])
    if out is None:
        # squeue exits 1 when *every* id is unknown ("Invalid job id"): ask for the whole queue.
        out = _run(["squeue", "-h", "-o", "%i|%T"])
        if out is None:
            return None
    raw = parse_sacct(out)
    return {job_id: raw.get(job_id) or _array_fallback(job_id, raw) or GONE for job_id in ids}
