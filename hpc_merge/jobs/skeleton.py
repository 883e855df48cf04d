"""What every job kind shares: the job-module interface, and the steps after a model is written.

A merge and an MoE build end the same way: the model lands in the output folder
(``output`` or ``<run_dir>/model``), a smoke test loads it and generates, and with
``eval.enabled`` the base, every source and the new model are scored on every task. Those steps
live here once, so both jobs record the same metrics under the same names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from hpc_merge.evaluate import load_tasks
from hpc_merge.jobs.plans import PlanT
from hpc_merge.report import merge_report
from hpc_merge.run.files import MODEL_DIR
from hpc_merge.run.status import update_status
from hpc_merge.smoke import smoke_inputs, smoke_test
from hpc_merge.tracking import Tracker

#: ``(label, role, folder)`` rows of an evaluation report: role is base, source or merged.
ReportModel = tuple[str, str, str]


class JobModule(Protocol[PlanT]):
    """A job kind (``hpc_merge.jobs.<kind>``): a module with these three functions, generic over
    its plan type (:mod:`hpc_merge.jobs.plans`: MergePlan, MoeJobPlan or EvolvePlan)."""

    def validate(self, cfg: DictConfig) -> PlanT:
        """Every check that can run before heavy work (raises ConfigError); returns the plan."""

    def describe(self, cfg: DictConfig, plan: PlanT) -> str:
        """The dry-run text: resolved recipe, findings, resource estimate."""

    def run(self, cfg: DictConfig, plan: PlanT, run_dir: Path, tracker: Tracker) -> dict[str, Any]:
        """Do the work in the job process; returns the result fields (``output_model``, ``metrics``...)."""


def output_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """Where the job's model goes: ``output`` (absolute), else ``<run_dir>/model``."""
    return Path(str(cfg.output)).expanduser().resolve() if cfg.get("output") else run_dir / MODEL_DIR


def smoke_phase(cfg: DictConfig, output: Path, refs: list[str], run_dir: Path, tracker: Tracker,
                timings: dict[str, float], metrics: dict[str, Any]) -> None:
    """``job.smoke``: load the written model, generate on prompts drawn from ``refs``' skills,
    and record perplexity, parameter count and samples into ``metrics`` (and W&B)."""
    smoke = cfg.job.get("smoke")
    if smoke is None or not smoke.get("enabled", True):
        return
    update_status(run_dir, phase="smoke")
    t0 = time.time()
    prompts = smoke.get("prompts")
    inputs = smoke_inputs(refs, list(prompts) if prompts else None, smoke.get("text"))
    res = smoke_test(output, inputs, int(smoke.max_new_tokens))
    timings["smoke_s"] = round(time.time() - t0, 3)
    metrics.update(perplexity=res["perplexity"], n_params=res["n_params"], samples=res["samples"],
                   smoke={k: res[k] for k in ("prompts_from", "perplexity_on")})
    tracker.log({"smoke/perplexity": res["perplexity"], "smoke/n_params": res["n_params"]})


def evaluate_phase(cfg: DictConfig, models: list[ReportModel], run_dir: Path, tracker: Tracker,
                   metrics: dict[str, Any]) -> None:
    """``eval.enabled``: the evaluation report (``report.json``/``.md``/``.png``) of ``models`` on
    every task, kept in ``metrics["report"]``."""
    if cfg.get("eval") is None or not cfg.eval.get("enabled"):
        return
    update_status(run_dir, phase="evaluate")
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    tasks = load_tasks(list(ev.get("tasks") or ["zoo"]), size=ev.get("size", "full"))
    metrics["report"] = merge_report(run_dir, models, tasks, tracker=tracker, split=ev.get("split", "test"),
                                     limit=ev.get("limit"), batch_size=int(ev.get("batch_size") or 32))


def finish_model(cfg: DictConfig, output: Path, refs: list[str], models: list[ReportModel], run_dir: Path,
                 tracker: Tracker, timings: dict[str, float], metrics: dict[str, Any]) -> None:
    """The shared end of a model-writing job: smoke test, then the evaluation report."""
    smoke_phase(cfg, output, refs, run_dir, tracker, timings, metrics)
    evaluate_phase(cfg, models, run_dir, tracker, metrics)
