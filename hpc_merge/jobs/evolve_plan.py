"""The evolve job's plan: search space, fitness, budget, launcher and every model, checked before
any work, and its dry-run text (:func:`describe`). :mod:`hpc_merge.jobs.evolve` runs the plan.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from hpc_merge import archcheck
from hpc_merge import mergekit_adapter as mk
from hpc_merge.errors import ConfigError
from hpc_merge.evolve.dfs import DfsSpace, layer_count
from hpc_merge.evolve.fitness import FitnessSpec
from hpc_merge.evolve.launchers import check_memory, slurm_tasks
from hpc_merge.evolve.search import SearchSettings
from hpc_merge.evolve.space import SearchSpace
from hpc_merge.jobs.plans import EvolvePlan
from hpc_merge.resolve import resolve_model
from hpc_merge.run.files import RESULT_FILE

LAUNCHERS = ("local", "slurm")
SPACES = ("ps", "dfs", "ps+dfs")
#: Model reference of the PS best in a ps+dfs search until run() has merged it (then: its folder).
PS_BEST = "evolve:ps_best"


def _settings(ev: dict[str, Any], space: SearchSpace, merge: dict[str, Any] | None) -> SearchSettings:
    budget = ev["budget"]  # the typed fields below are present whatever the YAML says (the schema)
    pop = int(ev["population"])  # typed by the schema: present, an integer (no silent default)
    max_eval = int(budget.get("max_evaluations") or 0)
    if pop < 2:
        raise ConfigError("evolve.population", f"{pop} is too small", "use at least 2 (CMA-ES default: 4 + 3 ln(n))")
    if max_eval < pop:
        raise ConfigError("evolve.budget.max_evaluations", f"{max_eval} is less than one generation ({pop})",
                          "raise the budget or lower evolve.population")
    sigma = float(ev["sigma0"])
    if not 0 < sigma <= 1:
        raise ConfigError("evolve.sigma0", f"{sigma} outside (0, 1]", "the genotype lives in the unit cube: try 0.25")
    return SearchSettings(population=pop, sigma0=sigma, seed=int(ev["seed"]), max_evaluations=max_eval,
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
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a list or a word is no recipe
        raise ConfigError("evolve.x0", f"not a recipe of this search space ({exc})",
                          "give a recipe with a value for every searched parameter, or null") from None


def validate(cfg: DictConfig) -> EvolvePlan:
    """Search space, fitness, budget, launcher and every model, checked before any work."""
    if cfg.get("evolve") is None:
        raise ConfigError("evolve", "no evolution recipe", "choose one: evolve=NAME (conf/evolve/)")
    ev = OmegaConf.to_container(cfg.evolve, resolve=True)
    kind = ev["space"]
    if kind not in SPACES:
        raise ConfigError("evolve.space", f"unknown space {kind!r}", f"use one of {', '.join(SPACES)}")
    dfs = ev["dfs"]
    ps_recipe = _ps_run_recipe(dfs.get("ps_run")) if kind == "ps+dfs" and dfs.get("ps_run") else None
    space = SearchSpace.from_config(ev) if kind != "dfs" else None
    fitness = FitnessSpec.from_config(ev["fitness"])
    merge = OmegaConf.to_container(cfg.merge, resolve=True) if cfg.get("merge") is not None else None
    settings = _settings(ev, space, merge) if space is not None else None
    launcher = ev["launcher"]
    if launcher not in LAUNCHERS:
        raise ConfigError("evolve.launcher", f"unknown launcher {launcher!r}", f"use one of {', '.join(LAUNCHERS)}")
    if launcher == "slurm" and (cfg.get("cluster") is None or cfg.cluster.get("kind") != "slurm"):
        raise ConfigError("evolve.launcher", "slurm arrays need a SLURM cluster profile", "add cluster=slurm")
    if int(ev["workers"]) < 1:
        raise ConfigError("evolve.workers", "must be >= 1", "set evolve.workers=1")
    tasks, per_job = None, int(ev.get("candidates_per_job") or 1)
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True) if launcher == "slurm" else {}
    if launcher == "slurm":  # candidates spread one per GPU (or CPU task) of each job: checked before submitting
        tasks, per_job = slurm_tasks(cluster, ev.get("candidates_per_job"), ev["gpus_per_candidate"])
    mk.merge_options(OmegaConf.to_container(cfg.job.options, resolve=True) if cfg.job.get("options") else {})
    base_ref = str(ev["base_model"]) if ev.get("base_model") else None
    refs = {"evolve.base_model": base_ref} if base_ref else {}
    refs.update({f"evolve.models[{i}]": str(m) for i, m in enumerate(ev.get("models") or [])})
    dfs_sources = [str(m) for m in (dfs.get("models") or ev.get("models") or [])]
    if kind != "ps":
        refs.update({f"evolve.dfs.models[{i}]": m for i, m in enumerate(dfs_sources)})
    if ps_recipe is not None:
        refs.update({f"evolve.dfs.ps_run.{f}": r for f, r in mk.model_refs(ps_recipe)})
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
    findings = archcheck.check_models(local, reference, vocab_may_differ=bool(space and space.extra.get("tokenizer_source")))
    dfs_space, ps_settings = None, None
    if kind != "ps":
        dfs_space, settings_dfs = _dfs_plan(ev, kind, dfs_sources, paths, ps_recipe)
        ps_settings, settings = settings, settings_dfs
    donor = space.base_model or space.models[0] if space is not None else dfs_space.io_model
    if donor == PS_BEST:  # the PS best is merged from the PS space's models: its tokenizer donor
        donor = space.base_model or space.models[0] if ps_recipe is None else mk.model_refs(ps_recipe)[0][1]
    if not mk.donor_has_tokenizer(Path(paths[donor])):
        raise ConfigError("evolve.base_model", f"{paths[donor]} has no tokenizer files", "use a model with a tokenizer")
    options = OmegaConf.to_container(cfg.job.options, resolve=True) if cfg.job.get("options") else {}
    if tasks is not None:  # every task of a candidate job holds its own copy of the models
        check_memory(tasks, cluster, paths, donor, bool(ev["in_memory"]))
    return {"space": dfs_space or space, "ps_space": space if kind != "ps" else None, "kind": kind,
            "ps_settings": ps_settings, "ps_recipe": ps_recipe, "base": base_ref,
            "experts": [m for m in dict.fromkeys([*(ev.get("models") or []), *dfs_sources]) if m != base_ref],
            "fitness": fitness, "settings": settings, "paths": paths, "donor": donor,
            "findings": findings, "baseline": baseline, "launcher": launcher, "options": options,
            "workers": int(ev["workers"]), "threads": int(ev["threads_per_worker"]),
            "in_memory": bool(ev["in_memory"]), "timeout_s": ev.get("candidate_timeout_s"),
            "per_job": per_job, "tasks": tasks, "final_merge": bool(ev["final_merge"])}


def _ps_run_recipe(ps_run: Any) -> dict[str, Any]:
    """The best recipe of a finished PS run (``evolve.dfs.ps_run``: its run dir)."""
    path = Path(str(ps_run)) / RESULT_FILE
    try:
        recipe = json.loads(path.read_text())["best"]["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError("evolve.dfs.ps_run", f"{path} holds no finished evolution result",
                          "give the run dir of a finished evolve run (space=ps), or null to search PS first") from None
    if recipe.get("merge_method") == "passthrough" or recipe.get("slices"):
        raise ConfigError("evolve.dfs.ps_run", f"{ps_run} is not a parameter-space run", "give a space=ps run dir")
    mk.check_recipe(recipe, "evolve.dfs.ps_run")
    return recipe


def _dfs_plan(ev: dict[str, Any], kind: str, sources: list[str], paths: dict[str, str],
              ps_recipe: dict[str, Any] | None) -> tuple[DfsSpace, SearchSettings]:
    """The DFS space over ``sources`` (plus the PS best for ps+dfs, first) and its CMA-ES settings.

    ``evolve.dfs.population``/``sigma0``/``budget`` default to ``evolve``'s; the search starts at
    ``evolve.dfs.start_model`` (default: the io model; for ps+dfs the PS best, so the search begins
    at the recipe PS found and its best is never worse on validation).
    """
    dfs = ev["dfs"]
    if not sources:
        raise ConfigError("evolve.dfs.models", "no source models", "list models in evolve.dfs.models or evolve.models")
    counts = {m: layer_count(paths[m]) for m in sources}
    if len(set(counts.values())) != 1:
        raise ConfigError("evolve.dfs.models", f"layer counts differ: {counts}", "use models of one architecture and depth")
    models = [PS_BEST, *sources] if kind == "ps+dfs" else sources
    space = DfsSpace.from_config(ev, models, next(iter(counts.values())))
    budget = {**ev["budget"], **{k: v for k, v in (dfs.get("budget") or {}).items() if v is not None}}
    sub = {**ev, **{k: dfs[k] for k in ("population", "sigma0", "seed") if dfs.get(k) is not None}, "budget": budget,
           "x0": None}
    settings = dataclasses.replace(_settings(sub, space, None), x0=tuple(space.start()))
    return space, settings


def _shown_paths(plan: EvolvePlan) -> dict[str, str]:
    return {**plan["paths"], PS_BEST: "<run_dir>/ps_best"}


def describe(cfg: DictConfig, plan: EvolvePlan) -> str:
    """Dry-run text: the space (genes, bounds), the budget, the fitness and the centre recipe."""
    space: SearchSpace = plan["space"]
    s: SearchSettings = plan["settings"]
    fit: FitnessSpec = plan["fitness"]
    if isinstance(space, DfsSpace):
        head = [f"# evolve {space.name}: space {plan['kind']}, data-flow: {len(space.slots)} slots "
                f"({space.repeats} scans x {space.layers} layers x {len(space.models)} models), at most "
                f"{space.max_layers} layers, embeddings/norm/head from {space.io_model}; {space.dim} genes:",
                "#   in:<model>.L<layer>.r<scan> in [0, 1], on above 0.5; scale:<slot> in "
                f"[{space.scale_bounds[0]}, {space.scale_bounds[1]}], the input scale when the path enters it from another model",
                *(f"#   {label}" for label in space.labels())]
        if plan["kind"] == "ps+dfs":
            ps = plan["ps_space"]
            src = (f"the best of {cfg.evolve.dfs.ps_run}" if plan["ps_recipe"] is not None else
                   f"searched first: {ps.method}, {ps.dim} genes ({', '.join(ps.labels())}), "
                   f"budget {plan['ps_settings'].max_evaluations} evaluations")
            head.append(f"# {PS_BEST} (merged to <run_dir>/ps_best) = the PS best: {src}")
    else:
        head = [f"# evolve {space.name}: {space.method}, {space.dim} genes at granularity {space.granularity}",
                *(f"#   {g.label}: [{g.lo}, {g.hi}]" for g in space.genes)]
    lines = [*head,
             f"# CMA-ES: population {s.population}, sigma0 {s.sigma0}, seed {s.seed}; budget {s.max_evaluations} "
             f"evaluations" + (f", {s.max_generations} generations" if s.max_generations else "")
             + (f", {s.max_time_s} s" if s.max_time_s else ""),
             f"# fitness: {' + '.join(f'{w:g}*{m}' for m, w in fit.metrics)} on {', '.join(fit.tasks)} ({fit.split} split"
             + (f", {fit.limit} examples/task" if fit.limit else "") + f"), test report on {fit.test_split}",
             f"# launcher {plan['launcher']}, workers {plan['workers']}, in_memory {plan['in_memory']}"
             + (f"; {plan['per_job']} candidates per SLURM job over {plan['tasks'].describe()}" if plan.get("tasks") else ""),
             "# start point (evolve.x0" + (": the centre of the space" if s.x0 is None else "")
             + (", DFS: every layer of evolve.dfs.start_model" if isinstance(space, DfsSpace) else "") + ") as a mergekit config:",
             yaml.safe_dump(mk.to_mergekit(space.decode(s.start(space.dim)), _shown_paths(plan)), sort_keys=False),
             "# architecture check: OK", *(f"#   {f}" for f in plan["findings"])]
    return "\n".join(lines)
