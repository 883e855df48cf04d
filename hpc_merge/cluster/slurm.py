"""Jobs on SLURM through submitit: submit, wait while streaming what happens, and say plainly how
a job ended (its SLURM state, its log tail or remote traceback). Nothing reports success that
did not succeed: a result is returned only when the job wrote one.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from hpc_merge.cluster.executor import job_env, make_executor, single_process
from hpc_merge.cluster.logtail import LogFollower, tail_text
from hpc_merge.errors import JobFailed, SubmitRefused
from hpc_merge.procs.slurmq import ENDED, query_states
from hpc_merge.run.files import SLURM_DIR
from hpc_merge.run.status import update_status

__all__ = ["ended_message", "failure_reason", "gather", "job_state", "make_executor",
           "no_result_reason", "submit_array", "submit_job", "wait"]

Stream = Callable[[str], Any]
PREEMPTED_GRACE_S = 60.0


@contextlib.contextmanager
def refused_as_error() -> Iterator[None]:
    """sbatch's refusal (a ``CalledProcessError`` deep in submitit) -> one line naming what sbatch
    said and where to look, instead of a traceback."""
    try:
        yield
    except (FailedJobError, subprocess.CalledProcessError) as exc:
        if isinstance(exc, FailedJobError):  # submitit's wrapper around sbatch's stderr
            text, fallback = str(exc), "no message"
        else:
            out = exc.stderr or exc.output or b""
            text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
            fallback = f"exit status {exc.returncode} (sbatch's own message is printed just above)"
        said = next((ln.strip() for ln in text.splitlines() if ln.strip()), fallback)
        raise SubmitRefused(f"sbatch refused the job: {said} — fix: check the cluster profile (partition, "
                            "gpus_per_node, constraint, mem_gb) against `sinfo -o '%P %G %f %m'`") from None


def submit_job(cluster: dict[str, Any], run_dir: Path, kind: str, cfg: dict[str, Any],
               runner: Callable[..., Callable[[], Any]]) -> submitit.Job:
    """Submit job ``kind`` on ``cfg`` (a plain dict); its submitit files go to ``run_dir/slurm/``.

    ``runner(kind, cfg, run_dir, env=...)`` is what the job executes (the job layer's
    :class:`~hpc_merge.jobs.runner.JobRunner`, handed in: this module imports no job code)."""
    run_dir = Path(run_dir)
    name = f"{kind}-{cfg.get('name') or run_dir.name}"
    executor = make_executor(single_process(cluster), run_dir / SLURM_DIR, name)  # one task: one copy of the job
    with refused_as_error():
        job = executor.submit(runner(kind, cfg, str(run_dir), env=job_env(cluster)))
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
    """The result of a finished job, or :class:`JobFailed` with the reason.

    A result is trusted only from a job that SLURM does not say was killed: a task can write its
    result and still be cancelled, or run out of memory in a child process, before the job ends.
    """
    logs = [job.paths.stdout, job.paths.stderr]
    if not _has_result(job):
        raise JobFailed(ended_message(str(job.job_id), state, tail_text(logs)))
    try:
        result = job.result()
    except FailedJobError as exc:
        hint = _hint(state) if state != "FAILED" else ""  # e.g. a MemoryError in an OUT_OF_MEMORY job
        raise JobFailed(f"SLURM job {job.job_id} ended {state}{hint}: the job raised an exception.\n"
                        f"{_remote_trace(exc)}") from None
    except UncompletedJobError as exc:  # e.g. a plain function past its time limit
        raise JobFailed(ended_message(str(job.job_id), state, tail_text(logs), str(exc).splitlines()[0])) from None
    if state in KILLED:
        raise JobFailed(ended_message(str(job.job_id), state, tail_text(logs),
                                      "it wrote a result, but SLURM killed it: the result is not used"))
    return result


def ended_message(job_id: str, state: str, log_text: str, detail: str | None = None) -> str:
    """``SLURM job 12 ended OUT_OF_MEMORY without a result (out of memory: ... raise cluster.mem_gb ...)``
    (or ``ended STATE (hint): detail``), then the log tail.

    The one wording of a failed end, so every way a job can end says its state and the fix.
    """
    if detail is None:
        head = f"SLURM job {job_id} ended {state} without a result{_hint(state)}"
    else:
        head = f"SLURM job {job_id} ended {state}{_hint(state)}: {detail}"
    return f"{head}\n{log_text}"


def _remote_trace(exc: FailedJobError) -> str:
    """The traceback block of submitit's message, without its banner lines."""
    text = str(exc)
    start = text.find("Traceback (most recent call last)")
    end = text.find("\n----------------------", start)
    return text[start:end if end > 0 else None].rstrip() if start >= 0 else text


def _hint(state: str) -> str:
    """What to do about a state, said once."""
    return f" ({HINTS[state]})" if state in HINTS else ""


#: What each end state means and what to do about it.
HINTS = {
    "CANCELLED": "cancelled by scancel, an admin or a dependency",
    "TIMEOUT": "time limit: raise cluster.timeout_min",
    "OUT_OF_MEMORY": "out of memory: the job used more than it asked for; raise cluster.mem_gb "
                     "(or give each job less work)",
    "NODE_FAIL": "the node failed: submit again; the run resumes from its run dir",
    "PREEMPTED": "preempted and not requeued: submit again (the run resumes), or use a QOS without preemption",
    "BOOT_FAIL": "the node failed to boot: submit again",
    "DEADLINE": "past its --deadline: remove the deadline or submit earlier",
    "FAILED": "the process died before writing a result: see the log",
}
#: End states in which SLURM killed the job: a result written before is not reported as success.
KILLED = frozenset({"CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                    "DEADLINE", "REVOKED"})


def submit_array(cluster: dict[str, Any], folder: Path, name: str, fn: Callable[[Any], Any],
                 items: Sequence[Any]) -> list[submitit.Job]:
    """``fn(item)`` for every item as one job array (``cluster.array_parallelism`` at a time)."""
    if not items:
        return []
    executor = make_executor(cluster, Path(folder), name)
    with refused_as_error():
        return list(executor.map_array(fn, list(items)))


def gather(jobs: Sequence[submitit.Job]) -> list[tuple[bool, Any]]:
    """``(True, result)`` or ``(False, reason)`` per job, in order; never raises for a failed job.

    A reason names the SLURM state and the error's last line (:func:`failure_reason`), so one
    bad candidate of an evolution generation does not lose the others.
    """
    out: list[tuple[bool, Any]] = []
    for job in jobs:
        try:
            out.append((True, job.result()))
        except (FailedJobError, UncompletedJobError) as exc:
            out.append((False, failure_reason(job, exc)))
    return out


def failure_reason(job: submitit.Job, exc: Exception, task: int | None = None) -> str:
    """One line on why ``job`` (or its task ``task``) gave no result: what it raised, or the
    SLURM state it ended in and the fix (``job 12_3 task 1 ended OUT_OF_MEMORY without a result
    (out of memory: ... raise cluster.mem_gb ...)``)."""
    who = f"job {job.job_id}" + (f" task {task}" if task is not None else "")
    if isinstance(exc, FailedJobError):
        trace = _remote_trace(exc).strip().splitlines()
        return f"{who} raised: {trace[-1] if trace else exc}"
    state = job_state(job) if isinstance(job, submitit.SlurmJob) else "FAILED"
    return no_result_reason(who, state, str(exc).splitlines()[0])


def no_result_reason(who: str, state: str, detail: str) -> str:
    """``job 12_3 task 1 ended OUT_OF_MEMORY without a result (out of memory: ...): detail``."""
    return f"{who} ended {state} without a result{_hint(state)}: {detail}"
