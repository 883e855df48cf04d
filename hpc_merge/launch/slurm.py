"""Jobs on SLURM through submitit: submit, wait while streaming what happens, and say plainly how
a job ended (its SLURM state, its log tail or remote traceback). Nothing reports success that
did not succeed: a result is returned only when the job wrote one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from hpc_merge.errors import JobFailed
from hpc_merge.launch.executor import job_env, make_executor
from hpc_merge.launch.logtail import LogFollower, tail_text
from hpc_merge.launch.runner import JobRunner
from hpc_merge.monitor.slurmq import ENDED, query_states
from hpc_merge.status import update_status

__all__ = ["JobRunner", "gather", "job_state", "make_executor", "submit_array", "submit_job", "wait"]

Stream = Callable[[str], Any]
PREEMPTED_GRACE_S = 60.0


def submit_job(cluster: dict[str, Any], run_dir: Path, kind: str, cfg: dict[str, Any]) -> submitit.Job:
    """Submit job ``kind`` on ``cfg`` (a plain dict); its submitit files go to ``run_dir/slurm/``."""
    run_dir = Path(run_dir)
    name = f"{kind}-{cfg.get('name') or run_dir.name}"
    executor = make_executor(cluster, run_dir / "slurm", name)
    job = executor.submit(JobRunner(kind, cfg, str(run_dir), env=job_env(cluster)))
    update_status(run_dir, slurm_job_id=str(job.job_id), slurm_state="PENDING",
                  slurm_stdout=str(job.paths.stdout), slurm_stderr=str(job.paths.stderr))
    return job


def job_state(job: submitit.Job) -> str:
    """The job's SLURM state now (``CANCELLED by 0`` -> ``CANCELLED``); ``UNKNOWN`` if SLURM cannot say.

    Asked directly (squeue, then sacct) rather than through submitit's cache, which is refreshed
    on a back-off and can lag by a minute.
    """
    if not isinstance(job, submitit.SlurmJob):
        return "COMPLETED" if job.done() else "RUNNING"
    states = query_states([str(job.job_id)]) or {}
    return states.get(str(job.job_id), "UNKNOWN")


def _has_result(job: submitit.Job) -> bool:
    return job.paths.result_pickle.exists()


def wait(job: submitit.Job, run_dir: Path, stream: Stream = print, poll_s: float = 1.0,
         max_poll_s: float = 15.0) -> dict[str, Any]:
    """Wait for ``job``; stream state changes and new log lines; return its result.

    Raises :class:`~hpc_merge.errors.JobFailed` naming the SLURM state and showing the remote
    traceback (the job raised) or the log tail (cancelled, killed, timed out, out of memory...).
    Polling backs off from ``poll_s`` to ``max_poll_s`` to spare the scheduler on long jobs.
    """
    run_dir = Path(run_dir)
    follower = LogFollower([job.paths.stdout, job.paths.stderr])
    last, delay, since = None, poll_s, time.monotonic()
    try:
        while True:
            state = job_state(job)
            if state != last:
                stream(f"[slurm {job.job_id}] {state}")
                if state not in ("UNKNOWN", "RUNNING", "COMPLETING"):
                    # RUNNING is written by the job itself (JobRunner): a write from here, while
                    # the job updates its progress, would stamp this process's pid over the job's
                    update_status(run_dir, slurm_state=state)
                last, since = state, time.monotonic()
            for line in follower.new_lines():
                stream(f"[slurm {job.job_id}] | {line}")
            if _ended(state, time.monotonic() - since) or _has_result(job):
                break
            time.sleep(delay)
            delay = min(delay * 1.5, max_poll_s)
    except KeyboardInterrupt:
        stream(f"[slurm {job.job_id}] stopped waiting; the job goes on. Cancel it with: scancel {job.job_id}")
        raise
    final = _settle(job, state)
    if final != state:
        stream(f"[slurm {job.job_id}] {final}")
        update_status(run_dir, slurm_state=final)
    for line in follower.new_lines():
        stream(f"[slurm {job.job_id}] | {line}")
    return _outcome(job, final)


def _ended(state: str, for_s: float) -> bool:
    """Whether ``state`` (held for ``for_s`` seconds) is the end of the job.

    A preempted job that is requeued (submitit's Checkpointable, PreemptMode=REQUEUE) shows
    PREEMPTED only for a moment before PENDING, so that state counts only once it lasts.
    """
    if state == "PREEMPTED":
        return for_s > PREEMPTED_GRACE_S
    return state in ENDED


def _settle(job: submitit.Job, state: str, within_s: float = 20.0) -> str:
    """The final state of a job that wrote its result (RUNNING/COMPLETING until its step exits)."""
    deadline = time.monotonic() + within_s
    while not _ended(state, 0.0) and time.monotonic() < deadline:
        time.sleep(0.5)
        state = job_state(job)
    return state


def _outcome(job: submitit.Job, state: str) -> dict[str, Any]:
    """The result of a finished job, or :class:`JobFailed` with the reason."""
    logs = [job.paths.stdout, job.paths.stderr]
    if not _has_result(job):
        raise JobFailed(f"SLURM job {job.job_id} ended {state} without a result"
                        f"{_hint(state)}\n{tail_text(logs)}")
    try:
        result = job.result()
    except FailedJobError as exc:
        raise JobFailed(f"SLURM job {job.job_id} ended {state}: the job raised an exception.\n"
                        f"{_remote_trace(exc)}") from None
    except UncompletedJobError as exc:  # e.g. a plain function past its time limit
        raise JobFailed(f"SLURM job {job.job_id} ended {state}: {str(exc).splitlines()[0]}\n"
                        f"{tail_text(logs)}") from None
    return result


def _remote_trace(exc: FailedJobError) -> str:
    """The traceback block of submitit's message, without its banner lines."""
    text = str(exc)
    start = text.find("Traceback (most recent call last)")
    end = text.find("\n----------------------", start)
    return text[start:end if end > 0 else None].rstrip() if start >= 0 else text


def _hint(state: str) -> str:
    """What to do about a state, said once."""
    hints = {
        "CANCELLED": " (cancelled by scancel, an admin or a dependency)",
        "TIMEOUT": " (time limit: raise cluster.timeout_min)",
        "OUT_OF_MEMORY": " (out of memory: raise cluster.mem_gb)",
        "NODE_FAIL": " (the node failed: submit again)",
        "PREEMPTED": " (preempted and not requeued)",
        "FAILED": " (the process died before writing a result: see the log)",
    }
    return hints.get(state, "")


def submit_array(cluster: dict[str, Any], folder: Path, name: str, fn: Callable[[Any], Any],
                 items: Sequence[Any]) -> list[submitit.Job]:
    """``fn(item)`` for every item as one job array (``cluster.array_parallelism`` at a time)."""
    if not items:
        return []
    executor = make_executor(cluster, Path(folder), name)
    return list(executor.map_array(fn, list(items)))


def gather(jobs: Sequence[submitit.Job]) -> list[tuple[bool, Any]]:
    """``(True, result)`` or ``(False, reason)`` per job, in order; never raises for a failed job.

    A reason names the SLURM state and the error's last line, so one bad candidate of an
    evolution generation does not lose the others.
    """
    out: list[tuple[bool, Any]] = []
    for job in jobs:
        try:
            out.append((True, job.result()))
        except FailedJobError as exc:
            trace = _remote_trace(exc).strip().splitlines()
            out.append((False, f"job {job.job_id} raised: {trace[-1] if trace else exc}"))
        except UncompletedJobError as exc:
            state = job_state(job) if isinstance(job, submitit.SlurmJob) else "FAILED"
            out.append((False, f"job {job.job_id} ended {state} without a result: "
                               f"{str(exc).splitlines()[0]}"))
    return out
