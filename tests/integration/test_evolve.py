"""Evolution end to end: the proof on the skills zoo, kill-and-resume through the CLI, SLURM arrays.

Run with ``pytest -m integration tests/integration/test_evolve.py -s`` to see the numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpc_merge.config import compose
from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.integration

#: Hand presets of conf/merge/ compared with the evolved recipe (all run on the zoo pool).
PRESETS = ("demo", "linear", "balanced", "stem_focused", "high_accuracy", "progressive_density", "experimental_multi")

SMALL = ["models=zoo_test", "evolve.fitness.size=test", "evolve.population=4", "evolve.workers=1",
         "evolve.budget.max_evaluations=16", "evolve.baseline=null", "merge=linear", "evolve.x0=null", "logger=none"]


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def _run_dir(stdout: str) -> Path:
    return Path([line for line in stdout.splitlines() if line.startswith("run_dir: ")][-1].split(": ", 1)[1])


def _accuracy(metrics: dict) -> float:
    """Mean test accuracy over tasks (the headline number, whatever the fitness weights)."""
    return sum(m["accuracy"] for m in metrics.values()) / len(metrics) if metrics else float("-inf")


def _preset_test_fitness(logs: Path) -> dict[str, tuple[float, float]]:
    """Every hand preset merged over the zoo and scored like the evolved best (same evaluator, test split)."""
    from hpc_merge.evolve.cache import candidate_key
    from hpc_merge.evolve.worker import CandidateEvaluator
    from hpc_merge.jobs.evolve import validate, worker_spec

    out: dict[str, tuple[float, float]] = {}
    cfg = compose(["+experiment=evolve_demo", "logger=none"])
    plan = validate(cfg)
    paths = dict(plan["paths"])
    recipes = {}
    for name in PRESETS:
        c = compose(["+experiment=evolve_demo", f"merge={name}", "logger=none"])
        recipe = OmegaConf.to_container(c.merge, resolve=True)
        from hpc_merge import mergekit_adapter as mk
        from hpc_merge.models.resolve import resolve_model

        for f, ref in mk.model_refs(recipe):
            paths.setdefault(ref, str(resolve_model(ref, f)))
        recipes[name] = recipe
    plan["paths"] = paths
    evaluator = CandidateEvaluator(worker_spec(plan, logs))
    for name, recipe in recipes.items():
        res = evaluator.safe_evaluate({"key": candidate_key(recipe), "recipe": recipe, "seed": 0, "split": "test"})
        ok = res["status"] == "ok"  # a multi-stage preset (experimental_multi) is not one recipe: -inf
        out[name] = (res["fitness"] if ok else float("-inf"), _accuracy(res["metrics"]) if ok else float("-inf"))
    return out


@pytest.mark.proof
def test_evolved_recipe_beats_the_best_hand_preset(tmp_path: Path) -> None:
    """The proof: ≤ 100 evaluations on the zoo; the evolved recipe beats every hand preset on test."""
    t0 = time.time()
    proc = run_cli("+experiment=evolve_demo", "logger=wandb", timeout=900)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _run_dir(proc.stdout)
    res = _result(run_dir)
    presets = _preset_test_fitness(tmp_path)
    best_name = max(presets, key=lambda n: presets[n][1])
    history = json.loads((run_dir / "history.json").read_text())
    evolved_acc = _accuracy(res["best"]["test_metrics"])
    report = {"evolved_test_accuracy": evolved_acc, "evolved_test_fitness": res["best"]["test_fitness"],
              "evolved_val_fitness": res["best"]["fitness"], "evolved_test_scores": res["best"]["test_scores"],
              "evolved_recipe_models": res["best"]["recipe"]["models"], "evaluations": res["evaluations"],
              "presets_test_fitness_accuracy": presets, "best_preset": best_name, "wall_s": round(wall, 1),
              "curve": [(h["evaluations"], h["best_so_far"]) for h in history]}
    print(json.dumps(report, indent=2))
    (ROOT / ".cache").mkdir(exist_ok=True)
    (ROOT / ".cache" / "evolve_proof.json").write_text(json.dumps(report, indent=2))
    assert res["evaluations"] <= 100
    assert evolved_acc > max(acc for _, acc in presets.values()), report  # test accuracy
    assert res["best"]["test_fitness"] > max(fit for fit, _ in presets.values()), report  # the fitness itself
    for name in ("fitness.png", "best_mergekit.yaml", "best_experiment.yaml", "state.pkl", "history.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    # the exported experiment runs as an ordinary merge (here: dry run, resolved from the run dir)
    command = res["exports"]["command"].split()
    exp = [a for a in command if a.startswith("+experiment=")][0]
    search = f"hydra.searchpath=[file://{run_dir / 'conf'}]"
    dry = run_cli(exp, search, "job.dry_run=true", "logger=none")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert f"merge_method: {res['best']['recipe']['merge_method']}" in dry.stdout


def _kill_after_generation(args: list[str], gen: int, run_dir_hint: Path) -> None:
    """Start the CLI, SIGKILL it (and its workers) once generation ``gen`` is saved."""
    from hpc_merge.evolve.state import load_state

    proc = subprocess.Popen([sys.executable, "-m", "hpc_merge", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=os.environ.copy())
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            states = list(run_dir_hint.glob("evolve/*/*/state.pkl"))
            if states:
                try:
                    st = load_state(states[0].parent)
                except Exception:
                    st = None
                if st is not None and st.generation >= gen:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kill_and_resume_equals_uninterrupted(_logs_dir: Path) -> None:
    args = ["+experiment=evolve_demo", *SMALL, "evolve.budget.max_evaluations=20", "evolve.seed=5"]
    full = run_cli(*args, "run_id=full", timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    _kill_after_generation([*args, "run_id=killed"], gen=2, run_dir_hint=_logs_dir)
    resumed = run_cli(*args, "run_id=killed", timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _result(_run_dir(full.stdout)), _result(_run_dir(resumed.stdout))
    assert a["best"]["key"] == b["best"]["key"] and a["best"]["recipe"] == b["best"]["recipe"]
    assert a["best"]["fitness"] == b["best"]["fitness"] and a["evaluations"] == b["evaluations"]
    keys = [json.loads((_run_dir(p.stdout) / "candidates.json").read_text()) for p in (full, resumed)]
    assert [c["key"] for c in keys[0]] == [c["key"] for c in keys[1]]


def test_generations_run_as_slurm_arrays(slurm_profile: dict, tmp_path: Path) -> None:
    from hpc_merge.jobs import run_job

    cfg = compose(["+experiment=evolve_demo", *SMALL, "evolve.launcher=local", "evolve.budget.max_evaluations=8",
                   "evolve.candidates_per_job=2"])
    data = OmegaConf.to_container(cfg, resolve=True)
    data["cluster"] = slurm_profile
    data["evolve"]["launcher"] = "slurm"
    result = run_job("evolve", data, tmp_path / "run")
    assert result["status"] == "ok" and result["evaluations"] == 8
    assert result["failed"] == 0
    arrays = sorted(p.name for p in (tmp_path / "run" / "slurm_evolve").iterdir())
    assert [a.split("-")[1] for a in arrays] == ["search", "search", "test"]  # one array per generation
    for name in arrays[:2]:  # 4 candidates, 2 per array task: 2 tasks, each with its result
        assert len(list((tmp_path / "run" / "slurm_evolve" / name).glob("*_*/*_result.pkl"))) == 2


def test_evolve_stem_preset_runs_here_and_final_merge_loads(_logs_dir: Path) -> None:
    """The seed's evol_config (TIES per filter, bf16, stem_focused baseline, final merge on) runs
    end to end on the test zoo: the best is merged to ``final/``, loads in transformers, and the
    merge report of the final model is written beside the search results."""
    from transformers import AutoModelForCausalLM

    proc = run_cli("+experiment=evolve_stem", "models=zoo_test", "evolve.fitness.size=test", "evolve.fitness.limit=20",
                   "evolve.population=4", "evolve.budget.max_evaluations=8", "evolve.threads_per_worker=1",
                   "logger=wandb", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _run_dir(proc.stdout)
    res = _result(run_dir)
    assert res["status"] == "ok" and res["evaluations"] == 8 and res["baseline"]["status"] == "ok"
    assert res["best"]["recipe"]["merge_method"] == "ties"
    genes = res["best"]["recipe"]["models"][0]["parameters"]["weight"]
    assert [g["filter"] for g in genes[:2]] == ["self_attn", "mlp"]  # per-filter granularity reached the recipe
    final = Path(res["final_merge"]["output_model"])
    assert final == run_dir / "final" and (final / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(final))
    assert next(model.parameters()).dtype.is_floating_point
    report = json.loads((run_dir / "report.json").read_text())
    assert {r["role"] for r in report["rows"]} == {"base", "source", "merged"}
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
