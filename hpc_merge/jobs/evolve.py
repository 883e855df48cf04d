"""The evolve job: CMA-ES over merge recipes, resumable, evaluated in memory, locally or on SLURM.

validate -> plan (search space, fitness, budget, resolved models); run -> the search
(:mod:`hpc_merge.evolve.search`), then the held-out test report of the best candidate (and of the
``merge`` recipe as a baseline, when ``evolve.baseline: merge``), the exports and, optionally, the
final merge of the best. Running the same config again resumes from ``state.pkl``.

``evolve.space`` picks what is searched: ``ps`` (parameter space: the weights of one merge),
``dfs`` (data-flow space: a path through the source models' layers, :mod:`hpc_merge.evolve.dfs`)
or ``ps+dfs`` (the best PS recipe, from ``evolve.dfs.ps_run`` or searched first in ``<run_dir>/ps``,
is merged to ``<run_dir>/ps_best`` and becomes one of the DFS source models, as in the paper).
The test report gives, per task, each recipe's accuracy and the share of the expert's gain over the
base that it keeps (base and every source model are scored on the test split too).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from hpc_merge import console
from hpc_merge import mergekit_adapter as mk
from hpc_merge.atomic import atomic_dir, write_text
from hpc_merge.evolve import launchers
from hpc_merge.evolve.cache import candidate_key, merge_seed
from hpc_merge.evolve.export import export_best
from hpc_merge.evolve.fitness import FitnessSpec
from hpc_merge.evolve.quality import format_gain_table, gain_report
from hpc_merge.evolve.report import report_generation
from hpc_merge.evolve.search import SearchSettings, best_candidate, run_search
from hpc_merge.evolve.state import load_state
from hpc_merge.evolve.worker import WorkerSpec, candidate_job
from hpc_merge.jobs import merge as merge_job
from hpc_merge.jobs.evolve_plan import PS_BEST, describe, validate
from hpc_merge.jobs.plans import EvolvePlan
from hpc_merge.run.files import FITNESS_PNG
from hpc_merge.run.status import update_status
from hpc_merge.schema.jobs import Smoke

__all__ = ["describe", "run", "validate", "worker_spec"]


def worker_spec(plan: EvolvePlan, run_dir: Path, paths: dict[str, str] | None = None) -> WorkerSpec:
    """What every evaluation worker gets (picklable); ``paths`` default to the plan's models."""
    return WorkerSpec(sources=dict(paths or plan["paths"]), donor=plan["donor"], fitness=plan["fitness"],
                      in_memory=plan["in_memory"], options=dict(plan["options"]), threads=plan["threads"],
                      scratch=str(run_dir / "scratch") if not plan["in_memory"] else None)


def _evaluator(cfg: DictConfig, plan: EvolvePlan, run_dir: Path, spec: WorkerSpec) -> Any:
    if plan["launcher"] == "slurm":
        cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
        return launchers.slurm_evaluator(cluster, run_dir / "slurm_evolve", f"{cfg.get('name', 'evolve')}-cand",
                                         spec, per_job=plan["per_job"], tasks=plan.get("tasks"))
    if not plan["in_memory"]:
        (run_dir / "scratch").mkdir(parents=True, exist_ok=True)
    return launchers.local_evaluator(spec, plan["workers"], plan["timeout_s"])


def _search(space: Any, settings: SearchSettings, plan: EvolvePlan, run_dir: Path, evaluate: Any, tracker: Any,
            paths: dict[str, str], step_offset: int = 0) -> tuple[Any, str, dict[str, Any]]:
    """One CMA-ES search (resuming from ``run_dir``), reported per generation; returns state, stop reason, best."""
    saved = load_state(run_dir)
    if saved is not None and saved.generation:  # say so: a user who re-runs after a kill sees it picked up
        console.note(f"resuming the search in {run_dir}: {saved.generation} generations and "
                     f"{saved.evaluations} candidates already scored")
    with console.task("evolving", total=settings.max_evaluations, unit="candidate") as bar:
        def counted(jobs: list, on_result: Any) -> list:  # the bar moves as each candidate is scored
            return evaluate(jobs, lambda i, out: (on_result(i, out), bar.update(advance=1)))

        def generation_done(st: Any, rows: list) -> None:
            report_generation(run_dir, tracker, space, st, rows, settings.max_evaluations, step_offset=step_offset)
            best = st.history[-1]["best_so_far"]
            bar.update(st.evaluations, info=f"generation {st.generation} · best so far "
                       + (f"{best:.4f}" if best is not None else "none"))

        state, reason = run_search(
            space, settings, run_dir, counted, on_generation=generation_done,
            fingerprint_extra={"fitness": plan["fitness"], "in_memory": plan["in_memory"], "paths": paths})
    best = best_candidate(state.candidates)
    if best is None:
        reasons = sorted({c["reason"] for c in state.candidates})[:3]
        raise RuntimeError(f"no candidate could be scored in {state.evaluations} evaluations: {reasons}")
    return state, reason, best


def _materialise_ps_best(recipe: dict[str, Any], plan: EvolvePlan, dest: Path) -> Path:
    """Merge the PS best to ``dest`` (atomically; kept across resumes: same recipe, same bytes)."""
    stamp = json.dumps(recipe, sort_keys=True)
    if (dest / "config.json").is_file() and (dest / "hpc_merge_ps_recipe.json").is_file() \
            and (dest / "hpc_merge_ps_recipe.json").read_text() == stamp:
        return dest
    with atomic_dir(dest, overwrite=True) as tmp:
        mk.run_mergekit(mk.to_mergekit(recipe, plan["paths"]), tmp, {**plan["options"], "random_seed": 0})
        mk.copy_tokenizer_files(Path(plan["paths"][plan["donor"]]), tmp)
        write_text(tmp / "hpc_merge_ps_recipe.json", stamp)
    return dest


def _reference_recipes(plan: EvolvePlan, dtype: Any) -> dict[str, dict[str, Any]]:
    """The base and every source model as one-model recipes, so they are scored like candidates."""
    names = ([plan["base"]] if plan["base"] else []) + list(plan["experts"])
    extra = {"dtype": dtype} if dtype else {}
    return {ref: {"name": ref, "merge_method": "passthrough", "models": [{"model": ref}], **extra} for ref in names}


def run(cfg: DictConfig, plan: EvolvePlan, run_dir: Path, tracker: Any) -> dict[str, Any]:
    """Search (resuming), report the best on the test split, export it, optionally merge it."""
    space = plan["space"]
    settings: SearchSettings = plan["settings"]
    fit: FitnessSpec = plan["fitness"]
    t0 = time.time()
    update_status(run_dir, phase="evolve:start", max_evaluations=settings.max_evaluations)
    paths = dict(plan["paths"])
    ps_out: dict[str, Any] | None = None
    step_offset = 0
    if plan["kind"] == "ps+dfs":
        ps_recipe = plan["ps_recipe"]
        if ps_recipe is None:  # search PS first, in its own folder (its own state: resumable on its own)
            ps_dir = run_dir / "ps"
            ps_dir.mkdir(parents=True, exist_ok=True)
            update_status(run_dir, phase="evolve:ps")
            with _evaluator(cfg, plan, ps_dir, worker_spec(plan, ps_dir)) as evaluate:
                ps_state, ps_reason, ps_best = _search(plan["ps_space"], plan["ps_settings"], plan, ps_dir, evaluate,
                                                       tracker, paths)
            ps_recipe, step_offset = ps_best["recipe"], ps_state.generation
            ps_out = {"fitness": ps_best["fitness"], "key": ps_best["key"], "evaluations": ps_state.evaluations,
                      "stop_reason": ps_reason, "run_dir": str(ps_dir)}
        else:
            ps_out = {"from": str(cfg.evolve.dfs.ps_run)}
        update_status(run_dir, phase="evolve:ps_best")
        ps_path = str(_materialise_ps_best(ps_recipe, plan, run_dir / "ps_best"))
        ps_out |= {"recipe": ps_recipe, "model": ps_path}
        paths[ps_path] = ps_path
        swap = {PS_BEST: ps_path}
        space = dataclasses.replace(space, models=tuple(swap.get(m, m) for m in space.models),
                                    io_model=swap.get(space.io_model, space.io_model),
                                    start_model=swap.get(space.start_model, space.start_model))
    spec = worker_spec(plan, run_dir, paths)
    refs = _reference_recipes(plan, space.extra.get("dtype"))
    with _evaluator(cfg, plan, run_dir, spec) as evaluate:
        state, reason, best = _search(space, settings, plan, run_dir, evaluate, tracker, paths, step_offset)
        search_s = time.time() - t0
        update_status(run_dir, phase="evolve:test")
        finals = {"best": candidate_job(best["key"], best["recipe"], merge_seed(best["key"], settings.seed), fit.test_split)}
        if plan["baseline"]:
            base_recipe = plan["baseline"]
            finals["baseline"] = candidate_job(candidate_key(base_recipe), base_recipe,
                                               int(plan["options"]["random_seed"]), fit.test_split)
        if ps_out is not None:
            finals["ps_best"] = candidate_job(candidate_key(ps_recipe), ps_recipe, 0, fit.test_split)
        for ref, recipe in refs.items():
            finals[f"ref:{ref}"] = candidate_job(candidate_key(recipe), recipe, 0, fit.test_split)
        with console.task(f"scoring on {fit.test_split}", total=len(finals), unit="recipe") as bar:
            outs = dict(zip(finals, evaluate(list(finals.values()), lambda i, out: bar.update(advance=1)), strict=True))
    test = outs["best"]
    gains = gain_report({k: v for k, v in outs.items() if not k.startswith("ref:")},
                        {k[4:]: v for k, v in outs.items() if k.startswith("ref:")}, plan["base"], list(plan["experts"]))
    best_out = {"fitness": best["fitness"], "scores": best["scores"], "recipe": best["recipe"], "key": best["key"],
                "generation": best["generation"], "split": fit.split,
                "test_fitness": test["fitness"], "test_scores": test["scores"], "test_status": test["status"],
                "test_metrics": test.get("metrics", {}), "test_gain_kept": gains["rows"].get("best", {}).get("gain_kept")}
    result: dict[str, Any] = {"space": plan["kind"], "best": best_out, "evaluations": state.evaluations,
                              "generations": state.generation, "stop_reason": reason, "candidates": len(state.candidates),
                              "failed": sum(c["status"] != "ok" for c in state.candidates), "test_report": gains}
    summary = {"evolve/best_fitness": best["fitness"], "evolve/test_fitness": test["fitness"],
               "evolve/evaluations": state.evaluations}
    summary.update({f"evolve/test_gain_kept/{t}": v for t, v in (best_out["test_gain_kept"] or {}).items()})
    if ps_out is not None:
        p = outs["ps_best"]
        result["ps"] = ps_out | {"test_fitness": p["fitness"], "test_metrics": p.get("metrics", {}),
                                 "test_gain_kept": gains["rows"].get("ps_best", {}).get("gain_kept")}
        summary["evolve/ps_test_fitness"] = p["fitness"]
    if plan["baseline"]:
        b = outs["baseline"]
        result["baseline"] = {"name": plan["baseline"].get("name"), "test_fitness": b["fitness"],
                              "test_scores": b["scores"], "test_metrics": b.get("metrics", {}), "status": b["status"],
                              "reason": b.get("reason"), "test_gain_kept": gains["rows"].get("baseline", {}).get("gain_kept")}
        summary["evolve/baseline_test_fitness"] = b["fitness"]
    name = f"{cfg.get('name') or 'evolve'}_best"
    headline = (f"best of evolution run {run_dir.name}: fitness {best['fitness']:.4f} on {fit.split}, "
                f"{test['fitness']} on {fit.test_split} after {state.evaluations} evaluations")
    result["exports"] = export_best(run_dir, best["recipe"], paths, name, headline)
    result["fitness_png"] = str(run_dir / FITNESS_PNG)
    result["timings"] = {"search_s": round(search_s, 3), "search_s_all_sessions": round(state.elapsed_s, 3)}
    if plan["final_merge"]:
        result["final_merge"] = _final_merge(cfg, best["recipe"], run_dir, tracker)
    tracker.summary({k: v for k, v in summary.items() if v is not None})
    print(format_gain_table(gains, fit.test_split))
    print(headline)
    print(f"run the best as a merge: {result['exports']['command']}")
    return result


def _final_merge(cfg: DictConfig, recipe: dict[str, Any], run_dir: Path, tracker: Any) -> dict[str, Any]:
    """Merge the best recipe with the merge job (smoke test, model card, merge report on the test split)."""
    sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    fit = OmegaConf.to_container(cfg.evolve.fitness, resolve=True)  # typed by the schema: every field present
    with open_dict(sub):
        sub.merge = recipe
        sub.output = str(run_dir / "final")
        sub.job.kind = "merge"
        sub.job.setdefault("smoke", OmegaConf.structured(Smoke))  # an evolve job has none: the schema's default
        sub.eval = {"enabled": True, "tasks": list(fit["tasks"]), "size": fit["size"], "split": fit["test_split"]}
        sub.force = True
    plan = merge_job.validate(sub)
    update_status(run_dir, phase="evolve:final_merge")
    out = merge_job.run(sub, plan, run_dir, tracker)
    return {k: out[k] for k in ("output_model", "metrics", "timings") if k in out}
