"""Where a generation's candidates run: local worker processes, or one SLURM job array.

Both return an ``evaluate(jobs, on_result)`` callable for :func:`hpc_merge.evolve.search.run_search`.
On SLURM each array task evaluates ``candidates_per_job`` candidates with one evaluator (models
loaded once per task); a task that fails, is cancelled or times out scores its candidates as
failed with SLURM's reason, and the search goes on.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def slurm_evaluator(cluster: dict[str, Any], folder: Path, name: str, spec: WorkerSpec,
                    per_job: int = 1) -> Iterator[Evaluate]:
    """One submitit job array per call (per generation), through ``hpc_merge.launch.slurm``."""
    from hpc_merge.launch import slurm

    batches: list[str] = []

    def evaluate(jobs: list[dict[str, Any]], on_result: Callable[[int, dict[str, Any]], None]) -> list[dict[str, Any]]:
        chunks = _chunks(jobs, per_job)
        batches.append(jobs[0]["key"])  # one folder per array: <n>-<split>-<first key>
        batch_dir = Path(folder) / f"{len(batches):04d}-{jobs[0].get('split') or 'search'}-{jobs[0]['key']}"
        submitted = slurm.submit_array(cluster, batch_dir, name, functools.partial(evaluate_batch, spec), chunks)
        outcomes: list[dict[str, Any]] = []
        for (ok, value), chunk in zip(slurm.gather(submitted), chunks, strict=True):
            if ok and isinstance(value, list) and len(value) == len(chunk):
                got = value
            else:  # gather's reason names the job, its SLURM state and the error's last line
                reason = str(value) if not ok else f"array task returned {type(value).__name__}"
                got = [failed(f"slurm: {reason}"[:500]) for _ in chunk]
            for out in got:
                on_result(len(outcomes), out)
                outcomes.append(out)
        return outcomes

    yield evaluate
