"""The one place that knows local vs SLURM: run a job here, or submit it and (optionally) wait."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from hpc_merge.run.files import SLURM_DIR


class JobEntry(Protocol):
    """What launching needs from the job layer, handed in by the caller (:mod:`hpc_merge.jobs.entry`):
    the launcher imports no job code, so the layers run one way (launch -> jobs, never back)."""

    def run_job(self, kind: str, cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """Run job ``kind`` in this process; returns its result."""

    def runner(self, kind: str, cfg: dict[str, Any], run_dir: str, env: dict[str, str]) -> Callable[[], Any]:
        """The picklable callable a SLURM job executes."""

    def before_submit(self, kind: str, cfg: DictConfig, cluster: dict[str, Any], run_dir: Path) -> dict[str, Any]:
        """Submit what must run before the job (e.g. a split merge's parts); returns the profile to submit with."""


def launch(kind: str, cfg: DictConfig, run_dir: Path, entry: JobEntry,
           on_submit: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Run job ``kind`` for ``cfg`` with ``run_dir`` where ``cfg.cluster`` says.

    Returns the job's result, or ``None`` when a SLURM job was submitted with ``cluster.wait=false``.
    ``on_submit(job_id)`` is called as soon as SLURM accepted the job (the run lock moves to it).
    """
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True) if cfg.get("cluster") else {"kind": "local"}
    data = OmegaConf.to_container(cfg, resolve=True)
    if cluster.get("kind", "local") == "local":
        return entry.run_job(kind, data, run_dir)
    if cluster["kind"] != "slurm":
        from hpc_merge.errors import ConfigError

        raise ConfigError("cluster.kind", f"unknown cluster kind {cluster['kind']!r}", "use local or slurm")
    from hpc_merge.cluster import slurm

    cluster = entry.before_submit(kind, cfg, cluster, run_dir)  # e.g. a split merge's parts, as one job array
    job = slurm.submit_job(cluster, run_dir, kind, data, entry.runner)
    if on_submit is not None:
        on_submit(str(job.job_id))
    print(f"submitted SLURM job {job.job_id} ({kind}); logs: {run_dir / SLURM_DIR}", flush=True)
    if not cluster.get("wait", True):
        print(f"not waiting (cluster.wait=false). Follow it with: squeue -j {job.job_id}; "
              f"hpc-merge monitor {run_dir}", flush=True)
        return None
    return slurm.wait(job, run_dir)
