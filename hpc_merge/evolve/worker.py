"""Evaluate candidates: merge (in memory by default) and score with the evaluator.

A :class:`CandidateEvaluator` is built once per worker process (or SLURM array task): it loads
the source models, the tokenizer, the tasks and one model skeleton, then serves many candidates,
so a candidate costs a merge plus an evaluation, not five model loads. ``in_memory=false`` writes
each candidate with ``run_mergekit`` to a temp folder and evaluates it from there instead (the
reference path; also what a user gets with ``evolve.in_memory=false`` when memory is short).

An outcome times its three phases: ``merge_s`` (merge in memory, or ``run_mergekit`` writing the
candidate), ``handover_s`` (``load_into`` the skeleton, or ``from_pretrained`` of the written
folder) and ``eval_s`` (scoring only).

Everything here is plain Python with picklable inputs: the local pool and submitit both call it.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.evolve.fitness import FitnessSpec, flat_scores


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs: model refs -> local paths, the fitness, how to merge."""

    sources: dict[str, str]  # model reference (as in recipes) -> local folder
    donor: str  # reference whose config/tokenizer the merged model takes (base, else the first model)
    fitness: FitnessSpec
    in_memory: bool = True
    options: dict[str, Any] = field(default_factory=lambda: {"device": "auto", "random_seed": 0})
    threads: int = 1
    scratch: str | None = None  # temp folders for in_memory=false (default: the system temp dir)


def candidate_job(key: str, recipe: dict[str, Any], seed: int, split: str | None = None) -> dict[str, Any]:
    """One unit of work: the candidate's cache key, recipe and merge seed (and split override)."""
    return {"key": key, "recipe": recipe, "seed": seed, "split": split}


def failed(reason: str, **extra: Any) -> dict[str, Any]:
    """The outcome of a candidate that produced no score (the search gives it the worst fitness)."""
    return {"status": "failed", "fitness": None, "scores": {}, "metrics": {}, "reason": reason, **extra}


class CandidateEvaluator:
    """Holds the source models and evaluation set; merges and scores one candidate at a time."""

    def __init__(self, spec: WorkerSpec):
        import torch

        from hpc_merge.evaluate import load_model, load_tasks, load_tokenizer
        from hpc_merge.mergekit_adapter.inmemory import load_tensors

        torch.set_num_threads(max(1, int(spec.threads)))
        self.spec = spec
        self.tasks = load_tasks(list(spec.fitness.tasks), size=spec.fitness.size)
        donor = spec.sources[spec.donor]
        self.tokenizer = load_tokenizer(donor)
        self.sources: dict[str, dict[str, torch.Tensor]] = {}
        self.model = None
        if spec.in_memory:  # the skeleton is loaded exactly as evaluate_model loads a folder
            self.sources = {path: load_tensors(path) for path in sorted(set(spec.sources.values()))}
            self.model = load_model(donor).eval()
        self._skeletons: dict[tuple, Any] = {}

    def _skeleton(self, merged: dict[str, Any], config: dict[str, Any] | None = None) -> Any:
        """The model to load ``merged`` into: the donor's, or (a data-flow candidate with another
        depth) one built from the donor's config with that many layers and its per-layer settings
        fixed by the adapter's ``fix_output_config`` for the mergekit ``config`` (None: the donor's
        pattern repeated), as the written model's config would be. One per layer structure is kept
        (tiny next to the sources)."""
        n = 1 + max((int(k.split(".")[2]) for k in merged if k.startswith("model.layers.")), default=-1)
        if n == self.model.config.num_hidden_layers:
            return self.model
        import copy

        from hpc_merge.mergekit_adapter import fix_output_config, validate_with_mergekit

        cfg = copy.deepcopy(self.model.config)
        cfg.num_hidden_layers = n
        fix_output_config(validate_with_mergekit(config) if config is not None else None, cfg)
        key = (n, tuple(getattr(cfg, "layer_types", None) or ()), getattr(cfg, "first_k_dense_replace", None))
        if key not in self._skeletons:
            import torch
            from transformers import AutoModelForCausalLM

            self._skeletons[key] = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        return self._skeletons[key]

    def _config(self, recipe: dict[str, Any]) -> dict[str, Any]:
        from hpc_merge.mergekit_adapter import to_mergekit

        return to_mergekit(recipe, self.spec.sources)

    def evaluate(self, recipe: dict[str, Any], seed: int, split: str | None = None) -> dict[str, Any]:
        """Merge ``recipe`` (random methods seeded with ``seed``) and score it; raises on failure."""
        from hpc_merge.evaluate import evaluate_model

        fit = self.spec.fitness
        split = split or fit.split
        limit = fit.limit if split == fit.split else None
        t0 = time.perf_counter()
        config = self._config(recipe)
        options = {**self.spec.options, "random_seed": int(seed)}
        if self.spec.in_memory:
            from hpc_merge.mergekit_adapter.inmemory import load_into, merge_in_memory

            merged = merge_in_memory(config, self.sources, options, seed=seed)
            t1 = time.perf_counter()
            model = self._skeleton(merged, config)
            load_into(model, merged)
            del merged
            t2 = time.perf_counter()
            metrics = evaluate_model(model, self.tasks, tokenizer=self.tokenizer, split=split, limit=limit,
                                     batch_size=fit.batch_size)
        else:
            from hpc_merge.evaluate import load_model
            from hpc_merge.mergekit_adapter import run_mergekit

            tmp = Path(tempfile.mkdtemp(prefix="hpc-evolve-", dir=self.spec.scratch))
            try:
                run_mergekit(config, tmp, options)
                t1 = time.perf_counter()
                model = load_model(tmp)  # what evaluate_model(str(tmp)) does, timed apart
                t2 = time.perf_counter()
                metrics = evaluate_model(model, self.tasks, tokenizer=self.tokenizer, split=split, limit=limit,
                                         batch_size=fit.batch_size)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        t3 = time.perf_counter()
        fitness = fit.score(metrics)
        if not math.isfinite(fitness):
            raise FloatingPointError(f"fitness is {fitness} (metrics {metrics})")
        return {"status": "ok", "fitness": fitness, "scores": flat_scores(metrics, fit.metric),
                "metrics": {t: dict(m) for t, m in sorted(metrics.items())}, "reason": None,
                "merge_s": round(t1 - t0, 6), "handover_s": round(t2 - t1, 6), "eval_s": round(t3 - t2, 6),
                "split": split}

    def safe_evaluate(self, job: dict[str, Any]) -> dict[str, Any]:
        """:meth:`evaluate` that turns any exception into a failed outcome with its reason."""
        t0 = time.time()
        try:
            return self.evaluate(job["recipe"], job["seed"], job.get("split"))
        except Exception as exc:  # a bad candidate must not stop the search
            last = traceback.format_exc().strip().splitlines()[-1]
            return failed(f"{type(exc).__name__}: {exc}"[:500], traceback_tail=last[:300],
                          eval_s=round(time.time() - t0, 3))


def evaluate_batch(spec: WorkerSpec, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Build one evaluator and run ``jobs`` on it (what a SLURM array task executes)."""
    evaluator = CandidateEvaluator(spec)
    return [evaluator.safe_evaluate(job) for job in jobs]
