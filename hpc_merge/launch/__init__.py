"""The one place that knows local vs SLURM: run a job here, or submit it and (optionally) wait."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def launch(kind: str, cfg: DictConfig, run_dir: Path,
           on_submit: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Run job ``kind`` for ``cfg`` with ``run_dir`` where ``cfg.cluster`` says.

    Returns the job's result, or ``None`` when a SLURM job was submitted with ``cluster.wait=false``.
    ``on_submit(job_id)`` is called as soon as SLURM accepted the job (the run lock moves to it).
    """
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True) if cfg.get("cluster") else {"kind": "local"}
    data = OmegaConf.to_container(cfg, resolve=True)
    if cluster.get("kind", "local") == "local":
        from hpc_merge.jobs import run_job

        return run_job(kind, data, run_dir)
    if cluster["kind"] != "slurm":
        from hpc_merge.errors import ConfigError

        raise ConfigError("cluster.kind", f"unknown cluster kind {cluster['kind']!r}", "use local or slurm")
    from hpc_merge.launch import slurm

    if kind == "merge" and int(cfg.job.get("tasks") or 1) > 1:  # the parts first, as one job array
        from hpc_merge.jobs.merge import submit_split_parts

        submit_split_parts(cfg, cluster, run_dir)
    job = slurm.submit_job(cluster, run_dir, kind, data)
    if on_submit is not None:
        on_submit(str(job.job_id))
    print(f"submitted SLURM job {job.job_id} ({kind}); logs: {run_dir / 'slurm'}", flush=True)
    if not cluster.get("wait", True):
        print(f"not waiting (cluster.wait=false). Follow it with: squeue -j {job.job_id}; "
              f"hpc-merge monitor {run_dir}", flush=True)
        return None
    return slurm.wait(job, run_dir)
