"""Run the missing parts of a split merge as one SLURM job array (``cluster=slurm*``).

Why an array and not one job of N tasks: each part is independent, so an array lets the scheduler
start each part as soon as a node (or a slot of one) is free, on as many nodes as are free, and a
failed, preempted or timed-out element is reported and redone alone; a job of N tasks waits until
all N fit at once and loses them all together. The array goes through the same submission as every
array here (:func:`hpc_merge.cluster.slurm.submit_array`: the profile's resources per element,
``cluster.array_parallelism`` at a time); the ordinary merge job submitted after it finds every
part recorded and only assembles, smoke-tests and logs the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpc_merge.cluster.executor import single_process
from hpc_merge.cluster.slurm import gather, no_result_reason, submit_array
from hpc_merge.errors import JobFailed
from hpc_merge.procs.slurmq import ENDED, GONE, query_states
from hpc_merge.split.local import spec_for
from hpc_merge.split.part import valid_record
from hpc_merge.split.plan import Part, fingerprint
from hpc_merge.split.progress import fold
from hpc_merge.split.worker import run_spec


def run_array(config: dict[str, Any], options: dict[str, Any], parts: list[Part], parts_root: Path,
              cluster: dict[str, Any], folder: Path, name: str, wait: bool = True,
              progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Submit the parts without a valid record as one array and (``wait``) wait for it.

    Returns ``{"array_job_id": id or None (nothing to run), "ran": [labels]}``. While waiting,
    ``progress(fields)`` gets the whole merge's status fields every poll
    (:func:`hpc_merge.split.progress.fold`). A failed element is one :class:`JobFailed` naming its
    part and why (its SLURM state, or what it raised); the finished parts are kept, so running the
    same command again redoes only the rest. With ``wait=False`` it returns once SLURM accepted
    the array (the merge job then waits for it by an ``afterok`` dependency: :func:`after_array`).
    """
    parts_root.mkdir(parents=True, exist_ok=True)
    fps = {p: fingerprint(config, options, p) for p in parts}
    missing = [p for p in parts if valid_record(parts_root, p, fps[p]) is None]
    if not missing:
        return {"array_job_id": None, "ran": []}
    specs = [spec_for(config, options, p, parts_root, fps[p]) for p in missing]
    started = time.time()
    jobs = submit_array(single_process(cluster), folder, name, run_spec, specs)
    array_id = str(jobs[0].job_id).split("_")[0]
    print(f"submitted SLURM job array {array_id} ({len(jobs)} of {len(parts)} parts); logs: {folder}", flush=True)
    if not wait:
        return {"array_job_id": array_id, "ran": [p.label for p in missing]}
    reused = {p.label for p in parts if p not in missing}

    def tick() -> None:
        if progress is not None:
            progress(fold(parts, parts_root, reused, started))

    _wait_ended([str(job.job_id) for job in jobs], tick=tick)
    tick()
    failed = []
    for part, job in zip(missing, jobs, strict=True):
        if valid_record(parts_root, part, fps[part], checksums=False) is None:
            failed.append((part, _why(job)))
    if failed:
        part, why = failed[0]
        raise JobFailed(f"{len(failed)} of {len(parts)} parts failed, e.g. {part.label}: {why}; run the same command "
                        "again: the finished parts are kept and only the failed ones are submitted")
    return {"array_job_id": array_id, "ran": [p.label for p in missing]}


def after_array(cluster: dict[str, Any], array_ids: list[str]) -> dict[str, Any]:
    """``cluster`` for a job that starts only once every element of ``array_ids`` has COMPLETED.

    ``--dependency=afterok:<array>`` (an array id stands for all its elements) and
    ``--kill-on-invalid-dep=yes``: if an element fails, SLURM cancels the waiting job instead of
    leaving it pending forever (reason ``DependencyNeverSatisfied``).
    """
    extra = dict(cluster.get("additional_parameters") or {})
    extra["dependency"] = "afterok:" + ":".join(array_ids)
    extra["kill_on_invalid_dep"] = "yes"
    return {**cluster, "additional_parameters": extra}


def _wait_ended(job_ids: list[str], poll_s: float = 2.0, tick: Callable[[], None] | None = None,
                requeue_grace_s: float = 60.0) -> None:
    """Until every element has ended, or left its array without a record.

    Not ``job.result()``: an element cancelled while its array still held it packed as pending
    has no record in squeue or sacct (SLURM 22.05), and submitit would wait for it forever.
    A ``PREEMPTED`` element is given ``requeue_grace_s`` to come back (SLURM or submitit requeue
    it; it then redoes its part, :func:`hpc_merge.split.part.run_part`) before it counts as ended.
    """
    preempted: dict[str, float] = {}
    while True:
        states = query_states(job_ids)
        if states is not None:
            now = time.monotonic()
            for j in job_ids:
                if states.get(j) == "PREEMPTED":
                    preempted.setdefault(j, now)
                else:
                    preempted.pop(j, None)
            if all((states.get(j) in ENDED or states.get(j) == GONE)
                   and (j not in preempted or now - preempted[j] >= requeue_grace_s) for j in job_ids):
                return
        if tick is not None:
            tick()
        time.sleep(poll_s)


def _why(job: Any) -> str:
    """Why an ended element left no part: what it raised, or the state it ended in."""
    state = (query_states([str(job.job_id)]) or {}).get(str(job.job_id), "UNKNOWN")
    if state == GONE:
        return no_result_reason(f"job {job.job_id}", "CANCELLED", "cancelled before it started")
    ok, why = gather([job])[0]  # ended: submitit reads its result or its state without waiting
    return why if not ok else f"job {job.job_id} ended {state} without a part record"
