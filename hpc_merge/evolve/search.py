"""The CMA-ES loop (``cma`` package): ask, evaluate (through a caller-supplied function), tell, save.

Determinism is what makes resume exact: cma draws its samples from numpy's global RNG, which is
seeded once and saved with the CMA object after every generation; candidates are scored in a
fixed order; random merges are seeded per candidate; and the budget counts distinct candidates
scored, so a generation redone after a kill (its finished candidates served from the cache)
counts exactly as it did the first time. Hence: killed at any generation and resumed, the search
ends with the same best candidate as an uninterrupted run with the same seed.

This module knows nothing about processes or SLURM: ``evaluate`` maps a list of jobs to outcomes.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpc_merge.evolve.cache import ResultCache, candidate_key, merge_seed
from hpc_merge.evolve.space import SearchSpace
from hpc_merge.evolve.state import EvolutionState, load_state, save_state
from hpc_merge.evolve.worker import candidate_job

#: What CMA-ES (a minimiser, rank-based) is told for a candidate without a score: worse than any.
WORST = 1e12

#: ``evaluate(jobs, on_result)``: outcomes in job order; calls ``on_result(index, outcome)`` as each arrives.
Evaluate = Callable[[list[dict[str, Any]], Callable[[int, dict[str, Any]], None]], list[dict[str, Any]]]
OnGeneration = Callable[[EvolutionState, list[dict[str, Any]]], None]


@dataclass(frozen=True)
class SearchSettings:
    """CMA-ES and budget settings (``evolve.*``)."""

    population: int = 8
    sigma0: float = 0.25
    seed: int = 0
    max_evaluations: int = 96
    max_generations: int | None = None
    max_time_s: float | None = None
    x0: tuple[float, ...] | None = None  # initial mean in the unit cube; default its centre

    def start(self, dim: int) -> list[float]:
        """Where the search starts in the unit cube: ``x0``, else the centre of the box."""
        return list(self.x0) if self.x0 is not None else [0.5] * dim

    def fingerprint(self, space: SearchSpace, extra: dict[str, Any] | None = None) -> str:
        """Hash of everything that shapes the search trajectory (not the budget: it may grow)."""
        data = {"space": asdict(space), "population": self.population, "sigma0": self.sigma0,
                "seed": self.seed, "x0": self.x0, **(extra or {})}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def new_state(space: SearchSpace, settings: SearchSettings, fingerprint: str) -> EvolutionState:
    """A fresh CMA-ES over the unit cube, seeded (cma treats seed 0 as "time": we pass seed + 1)."""
    import cma
    import numpy as np

    x0 = settings.start(space.dim)
    opts = {"bounds": [0.0, 1.0], "popsize": int(settings.population), "seed": int(settings.seed) + 1,
            "verbose": -9, "tolflatfitness": 10**6, "tolfun": 0.0, "tolfunhist": 0.0}
    es = cma.CMAEvolutionStrategy(x0, float(settings.sigma0), opts)
    return EvolutionState(fingerprint=fingerprint, es=es, rng=np.random.get_state())


def stop_reason(state: EvolutionState, settings: SearchSettings) -> str | None:
    """Why the search should not start another generation (None: go on)."""
    if state.evaluations + settings.population > settings.max_evaluations:
        return "max_evaluations"
    if settings.max_generations is not None and state.generation >= settings.max_generations:
        return "max_generations"
    if settings.max_time_s is not None and state.elapsed_s >= settings.max_time_s:
        return "max_time_s"
    stops = {k: v for k, v in state.es.stop().items() if k != "tolflatfitness"}
    if stops:
        return "cma:" + ",".join(sorted(stops))
    return None


def best_candidate(candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Highest fitness among scored candidates; ties go to the earliest (deterministic)."""
    ok = [c for c in candidates if c["status"] == "ok"]
    return max(ok, key=lambda c: (c["fitness"], -c["generation"], -c["index"])) if ok else None


def _summary(state: EvolutionState, rows: list[dict[str, Any]], new: int, wall_s: float) -> dict[str, Any]:
    fits = [r["fitness"] for r in rows if r["status"] == "ok"]
    best = best_candidate(rows)
    overall = best_candidate(state.candidates)
    return {
        "generation": state.generation, "evaluations": state.evaluations, "new_evaluations": new,
        "best_fitness": best["fitness"] if best else None,
        "mean_fitness": statistics.fmean(fits) if fits else None,
        "std_fitness": statistics.pstdev(fits) if len(fits) > 1 else 0.0 if fits else None,
        "best_so_far": overall["fitness"] if overall else None,
        "best_scores": best["scores"] if best else {}, "sigma": float(state.es.sigma),
        "failed": sum(r["status"] != "ok" for r in rows), "wall_s": round(wall_s, 3),
    }


def run_search(space: SearchSpace, settings: SearchSettings, run_dir: str | Path, evaluate: Evaluate,
               on_generation: OnGeneration | None = None, fingerprint_extra: dict[str, Any] | None = None
               ) -> tuple[EvolutionState, str]:
    """Run (or resume) the search in ``run_dir`` until a budget or CMA-ES stops it.

    Returns the final state and the stop reason. The state is saved after every generation.
    """
    import numpy as np

    run_dir = Path(run_dir)
    fingerprint = settings.fingerprint(space, fingerprint_extra)
    state = load_state(run_dir)
    if state is not None and state.fingerprint != fingerprint:
        raise RuntimeError(f"{run_dir} holds a search with other settings; use another run_id "
                           "(or force=true with a fresh run dir)")
    if state is None:
        state = new_state(space, settings, fingerprint)
        save_state(run_dir, state)
    cache = ResultCache(run_dir / "cache.jsonl", initial=state.cache)
    while (reason := stop_reason(state, settings)) is None:
        t0 = time.time()
        np.random.set_state(state.rng)  # cma samples from numpy's global RNG; evaluation may reseed it
        if state.generation == 0:  # the start point is itself a candidate: the best is never worse than it
            start = np.array(settings.start(space.dim), dtype=float)
            state.es.inject([state.es.boundary_handler.inverse(start)], force=True)
        xs = state.es.ask()
        rng_after_ask = np.random.get_state()
        recipes = [space.decode(x) for x in xs]
        keys = [candidate_key(r) for r in recipes]
        seen_before = {c["key"] for c in state.candidates}
        todo = [k for k in dict.fromkeys(keys) if k not in cache]
        jobs = [candidate_job(k, recipes[keys.index(k)], merge_seed(k, settings.seed)) for k in todo]
        if jobs:  # each result is cached as it arrives: a kill loses only unfinished candidates
            outcomes = evaluate(jobs, lambda i, out, jobs=jobs: cache.put(jobs[i]["key"], out))
            for job, outcome in zip(jobs, outcomes, strict=True):
                if job["key"] not in cache:
                    cache.put(job["key"], outcome)
        rows = []
        for i, (x, recipe, key) in enumerate(zip(xs, recipes, keys, strict=True)):
            out = cache.get(key)
            rows.append({"generation": state.generation, "index": i, "key": key, "x": [float(v) for v in x],
                         "recipe": recipe, "status": out["status"], "fitness": out["fitness"],
                         "scores": out.get("scores", {}), "reason": out.get("reason"),
                         "repeat": key in seen_before or keys.index(key) < i,
                         "merge_s": out.get("merge_s"), "handover_s": out.get("handover_s"),
                         "eval_s": out.get("eval_s")})
        np.random.set_state(rng_after_ask)
        told = [-r["fitness"] if r["status"] == "ok" and math.isfinite(r["fitness"]) else WORST for r in rows]
        state.es.tell(xs, told)
        new = len({r["key"] for r in rows} - seen_before)
        state.candidates.extend(rows)
        state.generation += 1
        state.elapsed_s += time.time() - t0
        state.history.append(_summary(state, rows, new, time.time() - t0))
        state.cache = dict(cache.results)
        state.rng = np.random.get_state()
        save_state(run_dir, state)
        if on_generation is not None:
            on_generation(state, rows)
    return state, reason
