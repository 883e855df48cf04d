"""Job kinds (merge, moe, evolve): one module each, no cluster code inside.

A job module has
- ``validate(cfg: DictConfig) -> dict``: every check that can run before heavy work (raises
  :class:`~hpc_merge.errors.ConfigError`); returns the *plan* (resolved paths, mergekit configs).
- ``describe(cfg, plan) -> str``: the dry-run text (resolved recipe, findings, resource estimate).
- ``run(cfg: DictConfig, plan: dict, run_dir: Path, tracker) -> dict``: does the work in the job
  process and returns the result fields (``output_model``, ``metrics``...).

:func:`run_job` is what executes inside the job process, locally or on a SLURM node.
"""

from __future__ import annotations

import importlib
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpc_merge.atomic import write_json
from hpc_merge.joblog import tee_output
from hpc_merge.status import heartbeat, update_status

KINDS = ("merge", "moe", "evolve")
RESULT_FILE = "result.json"


def job_module(kind: str) -> ModuleType:
    """The module implementing job ``kind`` (imported lazily: keeps start-up fast)."""
    if kind not in KINDS:
        from hpc_merge.errors import ConfigError, did_you_mean

        raise ConfigError("job.kind", f"unknown job kind {kind!r}{did_you_mean(kind, KINDS)}",
                          f"use one of {', '.join(KINDS)} (e.g. job=merge)")
    return importlib.import_module(f"hpc_merge.jobs.{kind}")


def run_job(kind: str, cfg: dict[str, Any] | DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Validate, run and record one job in this process; write ``result.json`` whatever happens.

    The job's output also goes to ``run_dir/job.log`` (the monitor's log panel) and a heartbeat
    keeps ``status.json`` fresh while it runs.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with tee_output(run_dir / "job.log"), heartbeat(run_dir):
        return _run_job(kind, cfg, run_dir)


def _run_job(kind: str, cfg: dict[str, Any] | DictConfig, run_dir: Path) -> dict[str, Any]:
    from hpc_merge.tracking import make_tracker

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
        write_json(run_dir / RESULT_FILE, failed)
        update_status(run_dir, state="failed", phase="failed", error=failed["error"])
        tracker.finish(exit_code=1)
        raise
    result = {"status": "ok", "kind": kind, **result}
    result.setdefault("timings", {})["total_s"] = round(time.time() - t0, 3)
    tracker.summary({"total_s": result["timings"]["total_s"]})
    tracker.finish()
    result["wandb_run"] = str(tracker.run_path) if tracker.run_path else None
    write_json(run_dir / RESULT_FILE, result)
    update_status(run_dir, state="ok", phase="done")
    return result
