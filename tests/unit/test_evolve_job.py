"""The evolve job on the TEST zoo with a tiny budget: result, exports, status, failures in workers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpc_merge.config import compose
from hpc_merge.errors import ConfigError
from hpc_merge.jobs import run_job
from hpc_merge.run.status import read_status

TINY = ["+experiment=evolve_demo", "models=zoo_test", "evolve.fitness.size=test", "evolve.population=4",
        "evolve.workers=1", "evolve.budget.max_evaluations=8", "logger=none", "merge=balanced"]


def _cfg(*extra: str) -> dict:
    return OmegaConf.to_container(compose([*TINY, *extra]), resolve=True)


def test_evolve_job_result_exports_and_status(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_job("evolve", _cfg(), run_dir)
    best = result["best"]
    assert result["status"] == "ok" and result["evaluations"] == 8 and result["generations"] == 2
    assert set(best) >= {"fitness", "scores", "recipe", "test_fitness", "test_scores"}
    assert math.isfinite(best["fitness"]) and set(best["scores"]) == set(best["test_scores"]) == set(best["test_metrics"])
    assert result["baseline"]["status"] == "ok"  # the hand preset merge=demo, on the test split
    status = read_status(run_dir)
    assert status["generation"] == 2 and status["evaluations"] == 8 and status["state"] == "ok"
    assert {"best_fitness", "mean_fitness", "sigma"} <= set(status)
    for name in ("fitness.png", "history.json", "candidates.json", "best_mergekit.yaml", "best_experiment.yaml"):
        assert (run_dir / name).stat().st_size > 0, name
    exported = (run_dir / "conf" / "experiment" / "evolve_demo_best.yaml").read_text()
    assert exported == (run_dir / "best_experiment.yaml").read_text()
    cfg = compose(["+experiment=evolve_demo_best", f"hydra.searchpath=[file://{run_dir / 'conf'}]"])
    assert cfg.job.kind == "merge" and OmegaConf.to_container(cfg.merge)["models"] == best["recipe"]["models"]
    # a second run of the same config resumes: nothing is evaluated again
    again = run_job("evolve", _cfg(), run_dir)
    assert again["best"]["key"] == best["key"] and again["evaluations"] == 8
    assert len(json.loads((run_dir / "candidates.json").read_text())) == 8


def test_a_failing_candidate_becomes_a_failed_outcome_with_its_reason(tmp_path: Path) -> None:
    """In the worker: a merge mergekit rejects is reported, not raised (the search scores it worst)."""
    from hpc_merge.evolve.worker import CandidateEvaluator
    from hpc_merge.jobs.evolve import validate, worker_spec

    cfg = compose([*TINY, "evolve.method=della", "evolve.baseline=null", "evolve.x0=null"])
    cfg.evolve.parameters = {"weight": [0.2, 1.0], "density": [0.3, 0.8], "epsilon": [0.01, 0.1]}
    plan = validate(cfg)
    evaluator = CandidateEvaluator(worker_spec(plan, tmp_path))
    recipe = plan["space"].decode([0.5] * plan["space"].dim)
    ok = evaluator.safe_evaluate({"key": "ok", "recipe": recipe, "seed": 1})
    assert ok["status"] == "ok"
    assert all(ok[p] > 0 for p in ("merge_s", "handover_s", "eval_s"))  # each phase timed apart
    recipe["models"][0]["parameters"].update(density=0.95, epsilon=0.1)  # density + epsilon >= 1
    out = evaluator.safe_evaluate({"key": "bad", "recipe": recipe, "seed": 1})
    assert out["status"] == "failed" and out["fitness"] is None and "psilon" in out["reason"]


def test_config_errors() -> None:
    from hpc_merge.jobs.evolve import validate

    with pytest.raises(ConfigError, match="evolve.budget.max_evaluations"):
        validate(compose([*TINY, "evolve.budget.max_evaluations=2"]))
    with pytest.raises(ConfigError, match="evolve.launcher"):
        validate(compose([*TINY, "evolve.launcher=slurm"]))
    cfg = compose(TINY)
    cfg.evolve.parameters = {"t": [0, 1]}
    with pytest.raises(ConfigError, match="evolve.parameters.t"):
        validate(cfg)
