"""The evolve job: CMA-ES over merge recipes, resumable, evaluated in memory, locally or on SLURM.

validate -> plan (search space, fitness, budget, resolved models); run -> the search
(:mod:`hpc_merge.evolve.search`), then the held-out test report of the best candidate (and of the
``merge`` recipe as a baseline, when ``evolve.baseline: merge``), the exports and, optionally, the
final merge of the best. Running the same config again resumes from ``state.pkl``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from hpc_merge import archcheck
from hpc_merge import mergekit_adapter as mk
from hpc_merge.errors import ConfigError
from hpc_merge.evolve.fitness import FitnessSpec
from hpc_merge.evolve.search import SearchSettings, best_candidate, run_search
from hpc_merge.evolve.space import SearchSpace
from hpc_merge.evolve.worker import WorkerSpec, candidate_job
from hpc_merge.models.resolve import resolve_model
from hpc_merge.status import update_status

LAUNCHERS = ("local", "slurm")


def _settings(ev: dict[str, Any], space: SearchSpace, merge: dict[str, Any] | None) -> SearchSettings:
    budget = ev.get("budget") or {}
    pop = int(ev.get("population") or 8)
    max_eval = int(budget.get("max_evaluations") or 0)
    if pop < 2:
        raise ConfigError("evolve.population", f"{pop} is too small", "use at least 2 (CMA-ES default: 4 + 3 ln(n))")
    if max_eval < pop:
        raise ConfigError("evolve.budget.max_evaluations", f"{max_eval} is less than one generation ({pop})",
                          "raise the budget or lower evolve.population")
    sigma = float(ev.get("sigma0", 0.25))
    if not 0 < sigma <= 1:
        raise ConfigError("evolve.sigma0", f"{sigma} outside (0, 1]", "the genotype lives in the unit cube: try 0.25")
    return SearchSettings(population=pop, sigma0=sigma, seed=int(ev.get("seed", 0)), max_evaluations=max_eval,
                          max_generations=budget.get("max_generations"), max_time_s=budget.get("max_time_s"),
                          x0=_x0(ev, space, merge))


def _x0(ev: dict[str, Any], space: SearchSpace, merge: dict[str, Any] | None) -> tuple[float, ...] | None:
    """``evolve.x0``: null (centre of the box), ``merge`` (start from the hand recipe ``merge=NAME``:
    evolution then refines a preset instead of rediscovering it) or a recipe in the space."""
    x0 = ev.get("x0")
    if x0 is None:
        return None
    if x0 == "merge":
        if merge is None:
            raise ConfigError("evolve.x0", "x0 'merge' but no merge recipe", "add merge=NAME or set evolve.x0=null")
        x0 = merge
    try:
        return tuple(min(max(v, 0.0), 1.0) for v in space.encode(x0))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError("evolve.x0", f"not a recipe of this search space ({exc})",
                          "give a recipe with a value for every searched parameter, or null") from None


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Search space, fitness, budget, launcher and every model, checked before any work."""
    if cfg.get("evolve") is None:
        raise ConfigError("evolve", "no evolution recipe", "choose one: evolve=NAME (conf/evolve/)")
    ev = OmegaConf.to_container(cfg.evolve, resolve=True)
    space = SearchSpace.from_config(ev)
    fitness = FitnessSpec.from_config(ev.get("fitness") or {})
    merge = OmegaConf.to_container(cfg.merge, resolve=True) if cfg.get("merge") is not None else None
    settings = _settings(ev, space, merge)
    launcher = ev.get("launcher", "local")
    if launcher not in LAUNCHERS:
        raise ConfigError("evolve.launcher", f"unknown launcher {launcher!r}", f"use one of {', '.join(LAUNCHERS)}")
    if launcher == "slurm" and (cfg.get("cluster") is None or cfg.cluster.get("kind") != "slurm"):
        raise ConfigError("evolve.launcher", "slurm arrays need a SLURM cluster profile", "add cluster=slurm")
    if int(ev.get("workers") or 1) < 1:
        raise ConfigError("evolve.workers", "must be >= 1", "set evolve.workers=1")
    tasks, per_job = None, int(ev.get("candidates_per_job") or 1)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True) if launcher == "slurm" else {}
    if launcher == "slurm":  # candidates spread one per GPU (or CPU task) of each job: checked before submitting
        from hpc_merge.evolve.launchers import slurm_tasks

        tasks, per_job = slurm_tasks(cluster, ev.get("candidates_per_job"), ev.get("gpus_per_candidate", 1))
    mk.merge_options(OmegaConf.to_container(cfg.job.options, resolve=True) if cfg.job.get("options") else {})
    refs = {"evolve.base_model": space.base_model} if space.base_model else {}
    refs.update({f"evolve.models[{i}]": m for i, m in enumerate(space.models)})
    baseline = None
    if ev.get("baseline") == "merge":
        if cfg.get("merge") is None:
            raise ConfigError("evolve.baseline", "baseline 'merge' but no merge recipe", "add merge=NAME or set baseline: null")
        baseline = OmegaConf.to_container(cfg.merge, resolve=True)
        if baseline.get("stages"):
            raise ConfigError("evolve.baseline", "a multi-stage merge cannot be the baseline", "use a one-stage recipe")
        mk.check_recipe(baseline, "merge")
        refs.update({f"merge.{f}": r for f, r in mk.model_refs(baseline)})
    elif ev.get("baseline") is not None:
        raise ConfigError("evolve.baseline", f"unknown baseline {ev.get('baseline')!r}", "use merge or null")
    paths: dict[str, str] = {}
    local: dict[str, Path] = {}
    for f, ref in refs.items():
        if ref not in paths:
            paths[ref] = str(resolve_model(ref, f))
            local[f] = Path(paths[ref])
    reference = next(iter(local))
    findings = archcheck.check_models(local, reference, vocab_may_differ=bool(space.extra.get("tokenizer_source")))
    donor = space.base_model or space.models[0]
    if not mk.donor_has_tokenizer(Path(paths[donor])):
        raise ConfigError("evolve.base_model", f"{paths[donor]} has no tokenizer files", "use a model with a tokenizer")
    options = OmegaConf.to_container(cfg.job.options, resolve=True) if cfg.job.get("options") else {}
    if tasks is not None:  # every task of a candidate job holds its own copy of the models
        from hpc_merge.evolve.launchers import check_memory

        check_memory(tasks, cluster, paths, donor, bool(ev.get("in_memory", True)))
    return {"space": space, "fitness": fitness, "settings": settings, "paths": paths, "donor": donor,
            "findings": findings, "baseline": baseline, "launcher": launcher, "options": options,
            "workers": int(ev.get("workers") or 1), "threads": int(ev.get("threads_per_worker") or 1),
            "in_memory": bool(ev.get("in_memory", True)), "timeout_s": ev.get("candidate_timeout_s"),
            "per_job": per_job, "tasks": tasks, "final_merge": bool(ev.get("final_merge", False))}


def describe(cfg: DictConfig, plan: dict[str, Any]) -> str:
    """Dry-run text: the space (genes, bounds), the budget, the fitness and the centre recipe."""
    space: SearchSpace = plan["space"]
    s: SearchSettings = plan["settings"]
    fit: FitnessSpec = plan["fitness"]
    lines = [f"# evolve {space.name}: {space.method}, {space.dim} genes at granularity {space.granularity}",
             *(f"#   {g.label}: [{g.lo}, {g.hi}]" for g in space.genes),
             f"# CMA-ES: population {s.population}, sigma0 {s.sigma0}, seed {s.seed}; budget {s.max_evaluations} "
             f"evaluations" + (f", {s.max_generations} generations" if s.max_generations else "")
             + (f", {s.max_time_s} s" if s.max_time_s else ""),
             f"# fitness: {' + '.join(f'{w:g}*{m}' for m, w in fit.metrics)} on {', '.join(fit.tasks)} ({fit.split} split"
             + (f", {fit.limit} examples/task" if fit.limit else "") + f"), test report on {fit.test_split}",
             f"# launcher {plan['launcher']}, workers {plan['workers']}, in_memory {plan['in_memory']}"
             + (f"; {plan['per_job']} candidates per SLURM job over {plan['tasks'].describe()}" if plan.get("tasks") else ""),
             "# start point (evolve.x0" + (": the centre of the space" if s.x0 is None else "") + ") as a mergekit config:",
             yaml.safe_dump(mk.to_mergekit(space.decode(s.start(space.dim)), plan["paths"]), sort_keys=False),
             "# architecture check: OK", *(f"#   {f}" for f in plan["findings"])]
    return "\n".join(lines)


def worker_spec(plan: dict[str, Any], run_dir: Path) -> WorkerSpec:
    """What every evaluation worker gets (picklable)."""
    return WorkerSpec(sources=dict(plan["paths"]), donor=plan["donor"], fitness=plan["fitness"],
                      in_memory=plan["in_memory"], options=dict(plan["options"]), threads=plan["threads"],
                      scratch=str(run_dir / "scratch") if not plan["in_memory"] else None)


def _evaluator(cfg: DictConfig, plan: dict[str, Any], run_dir: Path, spec: WorkerSpec) -> Any:
    from hpc_merge.evolve import launchers

    if plan["launcher"] == "slurm":
        cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
        return launchers.slurm_evaluator(cluster, run_dir / "slurm_evolve", f"{cfg.get('name', 'evolve')}-cand",
                                         spec, per_job=plan["per_job"], tasks=plan.get("tasks"))
    if not plan["in_memory"]:
        (run_dir / "scratch").mkdir(parents=True, exist_ok=True)
    return launchers.local_evaluator(spec, plan["workers"], plan["timeout_s"])


def run(cfg: DictConfig, plan: dict[str, Any], run_dir: Path, tracker: Any) -> dict[str, Any]:
    """Search (resuming), report the best on the test split, export it, optionally merge it."""
    from hpc_merge.evolve.cache import candidate_key, merge_seed
    from hpc_merge.evolve.export import export_best
    from hpc_merge.evolve.report import report_generation

    space: SearchSpace = plan["space"]
    settings: SearchSettings = plan["settings"]
    fit: FitnessSpec = plan["fitness"]
    t0 = time.time()
    update_status(run_dir, phase="evolve:start", max_evaluations=settings.max_evaluations)
    spec = worker_spec(plan, run_dir)
    with _evaluator(cfg, plan, run_dir, spec) as evaluate:
        state, reason = run_search(
            space, settings, run_dir, evaluate,
            on_generation=lambda st, rows: report_generation(run_dir, tracker, space, st, rows, settings.max_evaluations),
            fingerprint_extra={"fitness": fit, "in_memory": plan["in_memory"], "paths": plan["paths"]})
        search_s = time.time() - t0
        best = best_candidate(state.candidates)
        if best is None:
            reasons = sorted({c["reason"] for c in state.candidates})[:3]
            raise RuntimeError(f"no candidate could be scored in {state.evaluations} evaluations: {reasons}")
        update_status(run_dir, phase="evolve:test")
        finals = [candidate_job(best["key"], best["recipe"], merge_seed(best["key"], settings.seed), fit.test_split)]
        if plan["baseline"]:
            base_recipe = plan["baseline"]
            finals.append(candidate_job(candidate_key(base_recipe), base_recipe, int(plan["options"].get("random_seed") or 0),
                                        fit.test_split))
        tests = evaluate(finals, lambda i, out: None)
    best_out = {"fitness": best["fitness"], "scores": best["scores"], "recipe": best["recipe"], "key": best["key"],
                "generation": best["generation"], "split": fit.split,
                "test_fitness": tests[0]["fitness"], "test_scores": tests[0]["scores"], "test_status": tests[0]["status"],
                "test_metrics": tests[0].get("metrics", {})}
    result: dict[str, Any] = {"best": best_out, "evaluations": state.evaluations, "generations": state.generation,
                              "stop_reason": reason, "candidates": len(state.candidates),
                              "failed": sum(c["status"] != "ok" for c in state.candidates)}
    summary = {"evolve/best_fitness": best["fitness"], "evolve/test_fitness": tests[0]["fitness"],
               "evolve/evaluations": state.evaluations}
    if plan["baseline"]:
        b = tests[1]
        result["baseline"] = {"name": plan["baseline"].get("name"), "test_fitness": b["fitness"],
                              "test_scores": b["scores"], "test_metrics": b.get("metrics", {}), "status": b["status"],
                              "reason": b.get("reason")}
        summary["evolve/baseline_test_fitness"] = b["fitness"]
    name = f"{cfg.get('name') or 'evolve'}_best"
    headline = (f"best of evolution run {run_dir.name}: fitness {best['fitness']:.4f} on {fit.split}, "
                f"{tests[0]['fitness']} on {fit.test_split} after {state.evaluations} evaluations")
    result["exports"] = export_best(run_dir, best["recipe"], plan["paths"], name, headline)
    result["fitness_png"] = str(run_dir / "fitness.png")
    result["timings"] = {"search_s": round(search_s, 3), "search_s_all_sessions": round(state.elapsed_s, 3)}
    if plan["final_merge"]:
        result["final_merge"] = _final_merge(cfg, best["recipe"], run_dir, tracker)
    tracker.summary({k: v for k, v in summary.items() if v is not None})
    print(headline)
    print(f"run the best as a merge: {result['exports']['command']}")
    return result


def _final_merge(cfg: DictConfig, recipe: dict[str, Any], run_dir: Path, tracker: Any) -> dict[str, Any]:
    """Merge the best recipe with the merge job (smoke test, model card, merge report on the test split)."""
    from hpc_merge.jobs import merge as merge_job

    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    ev = OmegaConf.to_container(cfg.evolve, resolve=True)
    fit = ev.get("fitness") or {}
    with open_dict(sub):
        sub.merge = recipe
        sub.output = str(run_dir / "final")
        sub.job.kind = "merge"
        sub.job.setdefault("smoke", {"enabled": True, "prompts": ["add: 1 2 + 3 4 ="], "max_new_tokens": 8, "text": None})
        sub.eval = {"enabled": True, "tasks": list(fit.get("tasks") or ["zoo"]), "size": fit.get("size", "full"),
                    "split": fit.get("test_split", "test")}
        sub.force = True
    plan = merge_job.validate(sub)
    update_status(run_dir, phase="evolve:final_merge")
    out = merge_job.run(sub, plan, run_dir, tracker)
    return {k: out[k] for k in ("output_model", "metrics", "timings") if k in out}
