"""What a SLURM job executes: one job kind on one config, requeued through submitit on time limit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import submitit

from hpc_merge.jobs import run_job
from hpc_merge.procs.owner import slurm_job_id
from hpc_merge.run.status import update_status


class JobRunner(submitit.helpers.Checkpointable):
    """Runs ``run_job(kind, cfg, run_dir)`` on the node.

    It is Checkpointable so that on the time-limit (or preemption) signal submitit requeues the
    same callable: resumable jobs pick up their own state from ``run_dir``, so no extra state has
    to travel with the checkpoint (the default ``checkpoint`` resubmits ``self`` as is).
    """

    def __init__(self, kind: str, cfg: dict[str, Any], run_dir: str, env: dict[str, str] | None = None):
        self.kind, self.cfg, self.run_dir, self.env = kind, cfg, run_dir, dict(env or {})

    def __call__(self) -> dict[str, Any]:
        """Record the SLURM job in the status file (from the job's own process), then run it."""
        os.environ.update(self.env)  # also exported by the batch script; this covers local executors
        job_id = slurm_job_id()
        if job_id:
            update_status(Path(self.run_dir), slurm_job_id=job_id, slurm_state="RUNNING",
                          slurm_node=os.environ.get("SLURMD_NODENAME"),
                          slurm_restarts=int(os.environ.get("SLURM_RESTART_COUNT") or 0))
        return run_job(self.kind, self.cfg, self.run_dir)

    def __repr__(self) -> str:
        return f"JobRunner({self.kind!r}, run_dir={self.run_dir!r})"
