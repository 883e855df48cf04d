"""Job kinds (merge, moe, evolve): one module each, no cluster code inside.

A job module is a :class:`~hpc_merge.jobs.skeleton.JobModule`: ``validate(cfg) -> plan`` (every
check that can run before heavy work), ``describe(cfg, plan) -> str`` (the dry-run text) and
``run(cfg, plan, run_dir, tracker) -> dict`` (the work, in the job process; returns the result
fields). Merge and MoE share their last steps (smoke test, evaluation report) through
:mod:`~hpc_merge.jobs.skeleton`.

:func:`run_job` is what executes inside the job process, locally or on a SLURM node.
"""

from __future__ import annotations

import importlib
import time
import traceback
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from hpc_merge.errors import ConfigError, did_you_mean
from hpc_merge.jobs.skeleton import JobModule
from hpc_merge.run.files import JOB_LOG, write_result
from hpc_merge.run.joblog import tee_output
from hpc_merge.run.status import heartbeat, update_status
from hpc_merge.tracking import make_tracker

KINDS = ("merge", "moe", "evolve")


def job_module(kind: str) -> JobModule:
    """The module implementing job ``kind`` (imported lazily: keeps start-up fast)."""
    if kind not in KINDS:
        raise ConfigError("job.kind", f"unknown job kind {kind!r}{did_you_mean(kind, KINDS)}",
                          f"use one of {', '.join(KINDS)} (e.g. job=merge)")
    return cast(JobModule, importlib.import_module(f"hpc_merge.jobs.{kind}"))


def run_job(kind: str, cfg: dict[str, Any] | DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Validate, run and record one job in this process; write ``result.json`` whatever happens.

    The job's output also goes to ``run_dir/job.log`` (the monitor's log panel) and a heartbeat
    keeps ``status.json`` fresh while it runs.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with tee_output(run_dir / JOB_LOG), heartbeat(run_dir):
        return _run_job(kind, cfg, run_dir)


def _run_job(kind: str, cfg: dict[str, Any] | DictConfig, run_dir: Path) -> dict[str, Any]:
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    mod = job_module(kind)
    t0 = time.time()
    update_status(run_dir, state="running", phase="validate", kind=kind, started_at=t0)
    plan = mod.validate(cfg)
    tracker = make_tracker(OmegaConf.to_container(cfg.get("logger"), resolve=True) if cfg.get("logger") else None,
                           run_dir, name=f"{cfg.get('name', kind)}-{run_dir.name}",
                           config=OmegaConf.to_container(cfg, resolve=True), job_type=kind,
                           group=str(cfg.get("name", kind)))
    try:
        result = mod.run(cfg, plan, run_dir, tracker)
    except BaseException as exc:
        failed = {"status": "failed", "kind": kind, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(), "timings": {"total_s": time.time() - t0}}
        write_result(run_dir, failed)
        update_status(run_dir, state="failed", phase="failed", error=failed["error"])
        tracker.finish(exit_code=1)
        raise
    result = {"status": "ok", "kind": kind, **result}
    result.setdefault("timings", {})["total_s"] = round(time.time() - t0, 3)
    tracker.summary({"total_s": result["timings"]["total_s"]})
    tracker.finish()
    result["wandb_run"] = str(tracker.run_path) if tracker.run_path else None
    write_result(run_dir, result)
    update_status(run_dir, state="ok", phase="done")
    return result
