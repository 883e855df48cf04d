"""Where a generation's candidates run: local worker processes, or one SLURM job array.

Both return an ``evaluate(jobs, on_result)`` callable for :func:`hpc_merge.evolve.search.run_search`.
On SLURM a generation is one job array; each job takes ``candidates_per_job`` candidates and
spreads them over its tasks (:mod:`hpc_merge.cluster.spread`): one task per GPU on a GPU profile
(``gpus_per_node / evolve.gpus_per_candidate`` tasks), ``cluster.tasks_per_node`` CPU tasks
otherwise (1 by default: the candidates run one after another). Each task builds one evaluator
(models loaded once) for its share. A task that fails, is cancelled or runs out of memory
scores only its own candidates as failed, with SLURM's reason, and the search goes on.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpc_merge.cluster.spread import TaskPlan, plan_tasks
from hpc_merge.errors import ConfigError
from hpc_merge.evolve.worker import WorkerSpec, evaluate_batch, failed

Evaluate = Callable[[list[dict[str, Any]], Callable[[int, dict[str, Any]], None]], list[dict[str, Any]]]


@contextlib.contextmanager
def local_evaluator(spec: WorkerSpec, workers: int, timeout_s: float | None) -> Iterator[Evaluate]:
    """A pool of ``workers`` processes, alive for the whole search (models stay loaded)."""
    from hpc_merge.evolve.pool import LocalPool

    with LocalPool(spec, workers=workers, timeout_s=timeout_s) as pool:
        yield pool.map


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


def slurm_tasks(cluster: dict[str, Any], per_job: Any, gpus_per_candidate: Any = 1) -> tuple[TaskPlan, int]:
    """The task layout of a candidate job and the candidates per job, checked before submitting.

    ``per_job`` null means one candidate per task. Fewer candidates than tasks is refused: the
    idle tasks would hold their GPUs for the whole job.
    """
    plan = plan_tasks(cluster, 1 if gpus_per_candidate is None else gpus_per_candidate, "evolve.gpus_per_candidate")
    n = plan.tasks if per_job is None else per_job
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("evolve.candidates_per_job", f"{n!r} is not a number >= 1",
                          f"set evolve.candidates_per_job={plan.tasks} (or null: one per task)")
    if n < plan.tasks:
        what = "one per GPU" if plan.gpus_per_task else "CPU tasks"
        raise ConfigError("evolve.candidates_per_job",
                          f"{n} per job would leave {plan.tasks - n} of its {plan.tasks} tasks ({what}) idle",
                          f"set evolve.candidates_per_job={plan.tasks} or a multiple (null: one per task)")
    return plan, n


def check_memory(tasks: TaskPlan, cluster: dict[str, Any], paths: dict[str, str], donor: str,
                 in_memory: bool) -> None:
    """Refuse a job whose tasks cannot all hold their models, before anything is submitted.

    With ``in_memory`` every task keeps its own copy of every source model plus one model to
    evaluate (processes share nothing), so a job of 8 tasks needs 8 × that: on a 32B pool this
    is the difference between a one-line error now and an OUT_OF_MEMORY kill of every job later.
    """
    mem_gb = cluster.get("mem_gb")
    if not in_memory or not mem_gb:
        return
    from hpc_merge.archcheck import weight_bytes

    per_task = sum(weight_bytes(Path(p)) for p in set(paths.values())) + weight_bytes(Path(paths[donor]))
    need_gb = tasks.tasks * per_task / 1e9
    if need_gb > float(mem_gb):
        raise ConfigError("cluster.mem_gb", f"{mem_gb} GB per job, but its {tasks.tasks} task(s) each keep the "
                          f"source models in memory (≈ {need_gb:.3g} GB in all)",
                          f"set evolve.in_memory=false, use fewer tasks (a larger evolve.gpus_per_candidate) "
                          f"or raise cluster.mem_gb to {int(need_gb * 1.2) + 1}")


@contextlib.contextmanager
def slurm_evaluator(cluster: dict[str, Any], folder: Path, name: str, spec: WorkerSpec,
                    per_job: int = 1, tasks: TaskPlan | None = None) -> Iterator[Evaluate]:
    """One submitit job array per call (per generation); each job spreads its candidates over
    ``tasks`` (default: one task, the candidates in a row)."""
    from hpc_merge.cluster import spread

    plan = tasks or TaskPlan(tasks=1, gpus_per_task=0, cpus_per_task=cluster.get("cpus_per_task"))
    batches: list[str] = []

    def evaluate(jobs: list[dict[str, Any]], on_result: Callable[[int, dict[str, Any]], None]) -> list[dict[str, Any]]:
        chunks = _chunks(jobs, per_job)
        batches.append(jobs[0]["key"])  # one folder per array: <n>-<split>-<first key>
        batch_dir = Path(folder) / f"{len(batches):04d}-{jobs[0].get('split') or 'search'}-{jobs[0]['key']}"
        submitted = spread.submit(cluster, plan, batch_dir, name, functools.partial(evaluate_batch, spec), chunks)
        outcomes: list[dict[str, Any]] = []
        for items in spread.gather(submitted, chunks):
            for ok, value in items:  # a reason names the job, the task, its SLURM state and the fix
                why = value if not ok else f"task returned {type(value).__name__}, not an outcome"
                out = value if ok and isinstance(value, dict) else failed(f"slurm: {why}"[:500])
                on_result(len(outcomes), out)
                outcomes.append(out)
        return outcomes

    yield evaluate
