"""The job layer as :func:`hpc_merge.launch.launch` needs it (a :class:`~hpc_merge.launch.JobEntry`).

The launcher decides where a job runs (here, or as a SLURM job) and must not import the job code
that runs there: the caller hands it this module. ``run_job`` runs a job in this process,
``runner`` is the picklable callable a SLURM job executes, ``before_submit`` is what a job kind
submits ahead of its own job (the parts of a split merge, as one job array).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hpc_merge.jobs import run_job
from hpc_merge.jobs.merge import submit_split_parts
from hpc_merge.jobs.runner import JobRunner as runner
from hpc_merge.split.slurm import after_array

__all__ = ["before_submit", "run_job", "runner"]


def before_submit(kind: str, cfg: DictConfig, cluster: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Submit what must run before job ``kind``'s SLURM job; returns the cluster profile to submit it with.

    A merge split over ``job.tasks > 1`` runs its parts first, as one job array; with
    ``cluster.wait=false`` the merge job is submitted to start once every part has COMPLETED.
    """
    if kind != "merge" or int(cfg.job.get("tasks") or 1) <= 1:
        return cluster
    arrays = submit_split_parts(cfg, cluster, run_dir)  # waits for them unless cluster.wait=false
    if arrays and not cluster.get("wait", True):
        cluster = after_array(cluster, arrays)  # the merge job starts once every part has COMPLETED
    return cluster
