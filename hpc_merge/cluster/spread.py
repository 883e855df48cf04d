"""Spread a list of work items over the tasks of one SLURM job, one task per GPU.

Why: a job that works through its items one after another in one process uses one GPU of a
node that has k. Here the job has k SLURM tasks (``--ntasks-per-node=k``); each task keeps only
its own GPU(s), takes a contiguous share of the items (by its global rank) and returns one
result per item of its share; :func:`gather` puts every task's results back into item order. A
task that fails loses only its own items, each with the reason (SLURM state, remote error).
One scheduler job per k items also keeps the queue short and the node whole.

**GPU pinning.** The job asks for ``--gpus-per-node`` (``cluster.gpus_per_node``, understood by
every GPU site) and each task selects its GPUs itself, by its *local* rank, by writing
``CUDA_VISIBLE_DEVICES`` before anything initialises CUDA (:func:`pin_gpus` refuses to run after
that). ``--gpus-per-task=1`` is not passed: whether SLURM then really restricts each task
depends on the site (gres binding, cgroup ``ConstrainDevices``, SLURM version), and it does not
combine with ``--gpus-per-node`` on every version. The selection here works either way: where
SLURM already bound the task's own devices it sees exactly its share and keeps it; where every
task sees all the node's GPUs it keeps the ``local_rank``-th slice. This machine has no GPU, so
the selection is tested as a unit (``tests/unit/test_spread.py``); the task/item assignment and
the gathering run for real on CPU tasks of the local SLURM cluster.

The job's resources are the cluster profile's, shared by its tasks: the GPUs (``gpus_per_node``),
the memory (``mem_gb`` is per node) and the CPUs (``tasks_per_node × cpus_per_task``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from hpc_merge.cluster.slurm import failure_reason, submit_array
from hpc_merge.errors import ConfigError

Batch = Sequence[Any]


@dataclass(frozen=True)
class TaskPlan:
    """How one job splits into tasks: ``tasks`` per job (one node), each with its GPUs and CPUs."""

    tasks: int
    gpus_per_task: int  # 0: CPU tasks (no pinning)
    cpus_per_task: int | None  # None: the scheduler's default

    def job_cluster(self, cluster: dict[str, Any]) -> dict[str, Any]:
        """The cluster profile a job of this plan is submitted with."""
        return {**cluster, "tasks_per_node": self.tasks, "cpus_per_task": self.cpus_per_task}

    def describe(self) -> str:
        """``8 tasks × 1 GPU, 8 CPUs each`` (for dry runs and logs)."""
        gpus = _count(self.gpus_per_task, "GPU") if self.gpus_per_task else "no GPU"
        cpus = f", {_count(self.cpus_per_task, 'CPU')}" if self.cpus_per_task else ""
        return f"{_count(self.tasks, 'task')} × {gpus}{cpus} each"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def plan_tasks(cluster: dict[str, Any], gpus_per_task: Any = 1, field: str = "gpus_per_task") -> TaskPlan:
    """The task layout of a job for ``cluster``: one task per ``gpus_per_task`` GPUs of the node,
    or, on a CPU profile, ``cluster.tasks_per_node`` tasks. Bad combinations are one-line
    :class:`ConfigError` s (``field`` names the config field that set ``gpus_per_task``).
    """
    nodes = int(cluster.get("nodes") or 1)
    if nodes != 1:
        raise ConfigError("cluster.nodes", f"{nodes} nodes per job; a job of per-item tasks runs on one node",
                          "set cluster.nodes=1: a job array spreads such jobs over nodes (cluster.array_parallelism)")
    if isinstance(gpus_per_task, bool) or not isinstance(gpus_per_task, int) or gpus_per_task < 1:
        raise ConfigError(field, f"{gpus_per_task!r} is not a number of GPUs >= 1", f"set {field}=1 (one task per GPU)")
    gpus = int(cluster.get("gpus_per_node") or 0)
    node_tasks = int(cluster.get("tasks_per_node") or 1)
    if gpus:
        if gpus % gpus_per_task:
            divisors = ", ".join(str(d) for d in range(1, gpus + 1) if gpus % d == 0)
            raise ConfigError(field, f"{_count(gpus_per_task, 'GPU')} per task do not divide cluster.gpus_per_node={gpus}",
                              f"use one of {divisors}")
        tasks, task_gpus = gpus // gpus_per_task, gpus_per_task
    else:
        tasks, task_gpus = node_tasks, 0
    cpus = cluster.get("cpus_per_task")
    if cpus is not None:
        total = int(cpus) * node_tasks
        if total < tasks:
            raise ConfigError("cluster.cpus_per_task", f"{total} CPUs per job cannot give each of its {tasks} tasks one",
                              f"set cluster.cpus_per_task={tasks} or more (a job's CPUs are shared by its tasks)")
        cpus = total // tasks
    return TaskPlan(tasks=tasks, gpus_per_task=task_gpus, cpus_per_task=cpus)


def share(n_items: int, num_tasks: int, rank: int) -> range:
    """The items task ``rank`` of ``num_tasks`` takes: a contiguous block, the first
    ``n_items % num_tasks`` tasks one more (so concatenating the shares in rank order is the list)."""
    if not 0 <= rank < num_tasks:
        raise ValueError(f"rank {rank} outside 0..{num_tasks - 1}")
    base, extra = divmod(n_items, num_tasks)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def task_gpus(local_rank: int, gpus_per_task: int, visible: str | None) -> str | None:
    """The ``CUDA_VISIBLE_DEVICES`` value of the task with ``local_rank``, or ``None`` (CPU task).

    ``visible`` is what the task inherited: ``None`` (unset: every GPU of the node, numbered
    from 0), exactly ``gpus_per_task`` devices (SLURM bound them to this task: kept as they are),
    or the node's devices, of which the task takes the ``local_rank``-th slice.
    """
    if gpus_per_task <= 0:
        return None
    if visible is None:
        start = local_rank * gpus_per_task
        return ",".join(str(i) for i in range(start, start + gpus_per_task))
    devices = [d.strip() for d in visible.split(",") if d.strip()]
    if len(devices) == gpus_per_task:
        return ",".join(devices)
    start = local_rank * gpus_per_task
    if start + gpus_per_task > len(devices):
        raise RuntimeError(f"task with local rank {local_rank} needs GPUs {start}..{start + gpus_per_task - 1} but "
                           f"CUDA_VISIBLE_DEVICES={visible!r} has {len(devices)}: the job must ask for "
                           f"gpus_per_node = tasks × {gpus_per_task}")
    return ",".join(devices[start:start + gpus_per_task])


def pin_gpus(local_rank: int, gpus_per_task: int, environ: MutableMapping[str, str] | None = None) -> str | None:
    """Restrict this process to its GPUs (see :func:`task_gpus`); returns the value set, if any.

    Must run before CUDA is initialised: CUDA reads ``CUDA_VISIBLE_DEVICES`` once, so a later
    change would silently leave every task on the same GPU; that case raises instead.
    """
    environ = os.environ if environ is None else environ
    value = task_gpus(local_rank, gpus_per_task, environ.get("CUDA_VISIBLE_DEVICES"))
    if value is None:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised before the task picked its GPU; pin_gpus must run first")
    environ["CUDA_VISIBLE_DEVICES"] = value
    return value


class TaskShare:
    """What every task of a job runs: pin its GPUs, then ``fn(its share of items)``.

    ``fn`` takes a list of items and returns one result per item, so a task can set up once
    (load models) for its whole share. Picklable (submitit sends it to the node).
    """

    def __init__(self, fn: Callable[[list[Any]], list[Any]], gpus_per_task: int = 0):
        self.fn, self.gpus_per_task = fn, int(gpus_per_task)

    def __call__(self, items: Batch) -> list[Any]:
        """Run this task's share of ``items`` (the whole batch of the job) and return its results."""
        env = submitit.JobEnvironment()
        devices = pin_gpus(env.local_rank, self.gpus_per_task)
        mine = share(len(items), env.num_tasks, env.global_rank)
        print(f"[spread] task {env.global_rank}/{env.num_tasks} (local rank {env.local_rank}): "
              f"items {list(mine)} of {len(items)}, CUDA_VISIBLE_DEVICES={devices or 'not pinned (CPU task)'}",
              flush=True)
        if not mine:
            return []
        out = list(self.fn([items[i] for i in mine]))
        if len(out) != len(mine):
            raise RuntimeError(f"task {env.global_rank} returned {len(out)} results for {len(mine)} items")
        return out

    def __repr__(self) -> str:
        return f"TaskShare({getattr(self.fn, '__name__', self.fn)!r}, gpus_per_task={self.gpus_per_task})"


def submit(cluster: dict[str, Any], plan: TaskPlan, folder: Path, name: str,
           fn: Callable[[list[Any]], list[Any]], batches: Sequence[Batch]) -> list[submitit.Job]:
    """One job per batch (a job array when several), each of ``plan.tasks`` tasks sharing its batch;
    submitted like every array (:func:`hpc_merge.cluster.slurm.submit_array`: sbatch refusals are one line)."""
    return submit_array(plan.job_cluster(cluster), Path(folder), name, TaskShare(fn, plan.gpus_per_task),
                        [list(b) for b in batches])


def gather(jobs: Sequence[submitit.Job], batches: Sequence[Batch]) -> list[list[tuple[bool, Any]]]:
    """Per batch, ``(True, result)`` or ``(False, reason)`` per item, in item order; never raises.

    Each task's result (submitit keeps one per task) is placed back at its share's positions; a
    task that raised, died or was killed fails only its own items, with its SLURM state and the
    fix (:func:`hpc_merge.cluster.slurm.failure_reason`).
    """
    out: list[list[tuple[bool, Any]]] = []
    for job, batch in zip(jobs, batches, strict=True):
        items: list[tuple[bool, Any]] = []
        n = job.num_tasks
        for rank in range(n):
            mine = share(len(batch), n, rank)
            task = job.task(rank)
            try:
                values = task.result()
            except (FailedJobError, UncompletedJobError) as exc:
                reason = failure_reason(task, exc, rank if n > 1 else None)
                items += [(False, reason)] * len(mine)
                continue
            if not isinstance(values, list) or len(values) != len(mine):
                got = len(values) if isinstance(values, list) else type(values).__name__
                items += [(False, f"job {job.job_id} task {rank} returned {got} results for {len(mine)} items")] * len(mine)
            else:
                items += [(True, v) for v in values]
        out.append(items)
    return out
