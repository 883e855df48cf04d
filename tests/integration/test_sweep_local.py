"""Sweeps that run here (``cluster=local``): merge points one after another with the table and the
report, W&B runs grouped per sweep, and evolution points (two seeds) swept the same way."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hpc_merge.wandb_files import find_runs, read_run
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def _sweep_dir(stdout: str) -> Path:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("csv:  "))
    return Path(line.split(None, 1)[1]).parent


def test_local_sweep_of_three_points_prints_the_table_and_the_report(tiny_pool, tmp_path: Path) -> None:
    proc = run_cli("-m", "models=tiny", "logger=wandb", "name=local3", "job.smoke.prompts=[hi]",
                   "job.smoke.max_new_tokens=1", "merge.models.0.parameters.weight=0.2,0.5,0.8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "3 points, 0 skipped, 3 to be run here" in out
    for i, w in enumerate((0.2, 0.5, 0.8)):  # the table, as lines while it changes
        assert f"[sweep] #{i} merge.models.0.parameters.weight={w}: running" in out
        assert f"[sweep] #{i} merge.models.0.parameters.weight={w}: ok perplexity=" in out
    assert "3 points (3 ok), best first by perplexity (lower is better)" in out  # the report
    header = next(ln for ln in out.splitlines() if ln.startswith("#  merge.models.0.parameters.weight"))
    assert "STATE" in header and "PERPLEXITY" in header
    sweep_dir = _sweep_dir(out)
    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    assert sorted(r["merge.models.0.parameters.weight"] for r in rows) == ["0.2", "0.5", "0.8"]
    assert [float(r["perplexity"]) for r in rows] == sorted(float(r["perplexity"]) for r in rows)
    assert (sweep_dir / "report.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((sweep_dir / "sweep.json").read_text())
    assert [p["state"] for p in data["points"]] == ["ok"] * 3 and data["cluster"] == "local"
    groups = {read_run(find_runs(p["run_dir"])[0])["group"] for p in data["points"]}
    assert groups == {f"sweep-{sweep_dir.name}"}  # one W&B group for the sweep's points


def test_evolution_points_sweep_the_same_way(test_zoo, tmp_path: Path) -> None:
    proc = run_cli("-m", "+experiment=evolve_demo", "models=zoo_test", "evolve.fitness.size=test",
                   "evolve.fitness.limit=8", "evolve.population=2", "evolve.workers=1",
                   "evolve.budget.max_evaluations=2", "evolve.baseline=null", "merge=linear", "evolve.x0=null",
                   "logger=none", "evolve.seed=0,1", "hydra.launcher.workers=2", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 points, 0 skipped, 2 to be run here" in proc.stdout
    assert "best first by best.test_fitness (higher is better)" in proc.stdout
    sweep_dir = _sweep_dir(proc.stdout)
    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    assert sorted(r["evolve.seed"] for r in rows) == ["0", "1"]
    assert all(r["state"] == "ok" and r["best.test_fitness"] and r["evaluations"] == "2.0" for r in rows)
    runs = {Path(r["run_dir"]) for r in rows}
    assert len(runs) == 2 and all(json.loads((d / "result.json").read_text())["best"] for d in runs)

    again = run_cli("-m", "+experiment=evolve_demo", "models=zoo_test", "evolve.fitness.size=test",
                    "evolve.fitness.limit=8", "evolve.population=2", "evolve.workers=1",
                    "evolve.budget.max_evaluations=2", "evolve.baseline=null", "merge=linear", "evolve.x0=null",
                    "logger=none", "evolve.seed=0,1", cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "2 points, 2 skipped, 0 to be run here" in again.stdout, again.stdout[-2000:]
