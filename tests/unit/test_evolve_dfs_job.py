"""The evolve job in data-flow space (dfs, ps+dfs) on the TEST zoo with tiny budgets: result with
gain kept, the PS best as a DFS source, exports that load in stock transformers, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpc_merge.config import compose
from hpc_merge.errors import ConfigError
from hpc_merge.jobs import run_job

TINY = ["models=zoo_test", "evolve.fitness.size=test", "evolve.fitness.limit=20", "evolve.population=4",
        "evolve.workers=1", "evolve.budget.max_evaluations=4", "evolve.dfs.population=4",
        "evolve.dfs.budget.max_evaluations=8", "evolve.dfs.repeats=1", "evolve.dfs.max_layers=6", "logger=none"]


def _cfg(exp: str, *extra: str) -> dict:
    return OmegaConf.to_container(compose([f"+experiment={exp}", *TINY, *extra]), resolve=True)


def test_psdfs_job_starts_dfs_from_the_ps_best_and_reports_gain_kept(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    result = run_job("evolve", _cfg("evolve_psdfs_demo"), run_dir)
    assert result["status"] == "ok" and result["space"] == "ps+dfs" and 4 <= result["evaluations"] <= 8
    ps = result["ps"]
    assert ps["evaluations"] == 4 and Path(ps["model"]) == run_dir / "ps_best"
    assert (run_dir / "ps" / "state.pkl").is_file() and (run_dir / "ps" / "fitness.png").is_file()
    best = result["best"]
    assert best["recipe"]["merge_method"] == "passthrough"
    start = json.loads((run_dir / "candidates.json").read_text())[0]  # generation 0 starts at the PS best
    assert {s["sources"][0]["model"] for s in start["recipe"]["slices"]} == {str(run_dir / "ps_best")}
    assert start["fitness"] == pytest.approx(ps["fitness"])  # the PS best as a DFS source is the PS best
    assert best["fitness"] >= ps["fitness"]
    rows = result["test_report"]["rows"]
    assert {"base", "oracle", "best", "ps_best", "baseline"} <= set(rows)
    assert set(rows["best"]["gain_kept"]) == set(result["test_report"]["tasks"])
    assert best["test_gain_kept"] == rows["best"]["gain_kept"] and result["baseline"]["test_gain_kept"]
    assert all(v == pytest.approx(1.0) for v in rows["oracle"]["gain_kept"].values())
    # the exported best: a mergekit YAML with local paths, an experiment, both loadable
    exported = (run_dir / "best_mergekit.yaml").read_text()
    assert "merge_method: passthrough" in exported and str(run_dir / "ps_best") in exported or "slices" in exported
    merged = run_job("merge", OmegaConf.to_container(compose(
        ["mergekit_yaml=" + str(run_dir / "best_mergekit.yaml"), f"output={tmp_path / 'out'}", "logger=none",
         "job.smoke.enabled=false"]), resolve=True), tmp_path / "merge_run")
    assert merged["status"] == "ok"
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    n = sum(1 for s in best["recipe"]["slices"] if s["sources"][0]["layer_range"][1] > s["sources"][0]["layer_range"][0])
    assert model.config.num_hidden_layers == n
    # resumed: nothing is searched again, same best
    again = run_job("evolve", _cfg("evolve_psdfs_demo"), run_dir)
    assert again["best"]["key"] == best["key"] and again["evaluations"] == result["evaluations"]


def test_dfs_config_errors(tmp_path: Path) -> None:
    from hpc_merge.jobs.evolve import validate

    with pytest.raises(ConfigError, match=r"evolve\.space"):
        validate(compose(["+experiment=evolve_dfs_demo", *TINY, "evolve.space=dsf"]))
    with pytest.raises(ConfigError, match=r"evolve\.dfs\.ps_run"):
        validate(compose(["+experiment=evolve_psdfs_demo", *TINY, f"evolve.dfs.ps_run={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"evolve\.dfs\.max_layers"):
        validate(compose(["+experiment=evolve_dfs_demo", *TINY, "evolve.dfs.max_layers=0"]))
    ps_run = tmp_path / "ps_run"  # a finished PS run: its result.json names the best recipe
    ps_run.mkdir()
    recipe = OmegaConf.to_container(compose(["+experiment=evolve_demo", *TINY]).merge, resolve=True)
    (ps_run / "result.json").write_text(json.dumps({"best": {"recipe": recipe}}))
    plan = validate(compose(["+experiment=evolve_psdfs_demo", *TINY, f"evolve.dfs.ps_run={ps_run}"]))
    assert plan["ps_recipe"] == recipe and plan["space"].models[0] == "evolve:ps_best"
    plan = validate(compose(["+experiment=evolve_dfs_demo", *TINY]))
    assert plan["kind"] == "dfs" and plan["space"].dim == 2 * 4 * 4 and plan["settings"].x0 == tuple(plan["space"].start())
    assert json.dumps(plan["experts"])  # the four experts: the references of gain kept
