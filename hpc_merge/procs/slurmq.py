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


def _squeue(ids: list[str]) -> dict[str, str] | None:
    """States slurmctld knows right now (``-t all``: recently ended jobs too), or ``None``."""
    out = _run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(ids)])
    if out is None:
        # squeue exits 1 when *every* id is unknown ("Invalid job id"): ask for the whole queue.
        out = _run(["squeue", "-h", "-t", "all", "-o", "%i|%T"])
    return None if out is None else parse_sacct(out)


def _sacct(ids: list[str]) -> dict[str, str] | None:
    """States from accounting (jobs slurmctld has forgotten), or ``None`` without accounting."""
    # a still-packed pending array answers only to its base id (``-j 9_0`` prints nothing)
    asked = sorted(set(ids) | {i.partition("_")[0] for i in ids})
    out = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(asked)])
    return None if out is None else parse_sacct(out)


def query_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """``{job_id: STATE}`` for ``job_ids``, or ``None`` when SLURM cannot be asked at all.

    squeue comes first: it is slurmctld's live view, while accounting lags by seconds (slurmdbd
    is fed asynchronously). Jobs squeue no longer knows (ended more than ``MinJobAge`` ago) are
    looked up in sacct; jobs neither knows are left out, or marked :data:`GONE` when squeue
    answered but accounting is unavailable, or when they are array tasks that left their array
    without a record (see :func:`resolve_missing`).
    """
    ids = sorted({str(j) for j in job_ids if str(j).strip()})
    if not ids:
        return {}
    live = _squeue(ids)
    states = {i: st for i in ids if (st := (live or {}).get(i) or _array_fallback(i, live or {}))}
    missing = [i for i in ids if i not in states]
    if not missing:
        return states
    acct = _sacct(missing)
    if acct is None and live is None:
        return None
    return {**states, **resolve_missing(missing, live, acct)}


def resolve_missing(missing: list[str], live: dict[str, str] | None, acct: dict[str, str] | None) -> dict[str, str]:
    """States of the jobs squeue did not list, from accounting (``acct``; ``None``: unavailable).

    An array task cancelled while its array still held it packed as pending (``12_[3-9]``)
    leaves the array without any record of its own, in squeue or sacct (SLURM 22.05): once the
    array is known and no packed part is left that could hold the task, it is :data:`GONE`.
    """
    out: dict[str, str] = {}
    known = {**(live or {}), **(acct or {})}
    for job_id in missing:
        state = (acct or {}).get(job_id) or _array_fallback(job_id, acct or {})
        base, sep, _ = job_id.partition("_")
        if state:
            out[job_id] = state
        elif acct is None:
            out[job_id] = GONE
        elif sep and live is not None and any(k.partition("_")[0] == base for k in known) \
                and not any(k.startswith(f"{base}_[") for k in known):
            out[job_id] = GONE
    return out
