"""Throughput of candidate evaluation, in memory vs written to disk (for the benchmark suite).

Usage (what ``bench`` calls)::

    from hpc_merge.config import compose
    from hpc_merge.evolve.bench import compare_modes
    cfg = compose(["+experiment=evolve_demo", "logger=none"])
    print(compare_modes(cfg, n=6))

Both modes evaluate the same ``n`` candidates (drawn from the search space with a fixed seed)
in this process on one evaluator, after its set-up (model loading), which is reported apart.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hpc_merge.evolve.cache import candidate_key, merge_seed
from hpc_merge.evolve.space import SearchSpace
from hpc_merge.evolve.worker import CandidateEvaluator, WorkerSpec


def sample_recipes(space: SearchSpace, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` reproducible random candidates of ``space``."""
    rng = random.Random(seed)
    return [space.decode([rng.random() for _ in range(space.dim)]) for _ in range(n)]


def throughput(spec: WorkerSpec, recipes: list[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """Set-up time, seconds per candidate (merge / evaluation) and candidates per minute of one worker."""
    t0 = time.time()
    evaluator = CandidateEvaluator(spec)
    setup = time.time() - t0
    outs = []
    t1 = time.time()
    for r in recipes:
        key = candidate_key(r)
        outs.append(evaluator.safe_evaluate({"key": key, "recipe": r, "seed": merge_seed(key, seed)}))
    total = time.time() - t1
    ok = [o for o in outs if o["status"] == "ok"]
    return {"in_memory": spec.in_memory, "candidates": len(recipes), "failed": len(recipes) - len(ok),
            "setup_s": round(setup, 3), "total_s": round(total, 3),
            "s_per_candidate": round(total / max(len(recipes), 1), 3),
            **{f"{phase}_mean": round(sum(o[phase] for o in ok) / max(len(ok), 1), 4)
               for phase in ("merge_s", "handover_s", "eval_s")},
            "candidates_per_min": round(60 * len(recipes) / max(total, 1e-9), 2),
            "fitness": [o["fitness"] for o in outs]}


def compare_modes(cfg: DictConfig, n: int = 6, seed: int = 0) -> dict[str, dict[str, Any]]:
    """In-memory and on-disk throughput for the evolve config ``cfg`` on the same candidates."""
    from hpc_merge.jobs.evolve import validate, worker_spec

    plan = validate(cfg)
    recipes = sample_recipes(plan["space"], n, seed)
    with tempfile.TemporaryDirectory(prefix="hpc-bench-") as tmp:
        base = worker_spec(plan, Path(tmp))
        return {mode: throughput(dataclasses.replace(base, in_memory=(mode == "in_memory"), scratch=tmp), recipes, seed)
                for mode in ("in_memory", "disk")}
