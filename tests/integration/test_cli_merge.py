"""The merge CLI end to end, in subprocesses, the way users run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from hpc_merge.wandb_files import find_runs, read_run
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


def _run_dir(proc: subprocess.CompletedProcess) -> Path:
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("run_dir: "), proc.stdout[-2000:] + proc.stderr[-2000:]
    return Path(last.removeprefix("run_dir: "))


def _tensors(path: Path) -> dict:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_preset_on_tiny_pool_end_to_end(tiny_pool, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    proc = run_cli("+experiment=stem_focused", "models=tiny", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = _run_dir(proc)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok"
    assert set(result) >= {"output_model", "metrics", "timings"}
    assert result["metrics"]["perplexity"] > 1
    AutoModelForCausalLM.from_pretrained(result["output_model"])
    assert (run_dir / "config.yaml").is_file()
    # W&B offline files hold what we logged
    runs = find_runs(run_dir / "wandb")
    assert len(runs) == 1
    logged = read_run(runs[0])
    assert logged["summary"]["merge_time_s"] == pytest.approx(result["timings"]["merge_s"], rel=1e-6)
    assert logged["summary"]["perplexity"] == pytest.approx(result["metrics"]["perplexity"])
    assert logged["config"]["merge"]["merge_method"] == "ties"
    # same config again: skipped; force=true runs again
    again = run_cli("+experiment=stem_focused", "models=tiny", cwd=tmp_path)
    assert again.returncode == 0 and "skipped" in again.stdout and _run_dir(again) == run_dir
    forced = run_cli("+experiment=stem_focused", "models=tiny", "force=true", "logger=none", cwd=tmp_path)
    assert forced.returncode == 0 and "skipped" not in forced.stdout
    # a deleted output is not "already done": the same config merges it again
    shutil.rmtree(result["output_model"])
    redo = run_cli("+experiment=stem_focused", "models=tiny", "logger=none", cwd=tmp_path)
    assert redo.returncode == 0 and "skipped" not in redo.stdout and "is gone" in redo.stdout
    assert Path(result["output_model"], "config.json").is_file()


@pytest.mark.parametrize("preset", ["balanced", "high_accuracy", "progressive_density", "experimental_multi"])
def test_every_preset_runs_on_tiny(preset: str, tiny_pool, tmp_path: Path) -> None:
    proc = run_cli(f"+experiment={preset}", "models=tiny", "logger=none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((_run_dir(proc) / "result.json").read_text())
    assert result["status"] == "ok" and Path(result["output_model"], "config.json").is_file()


def test_console_script_and_dry_run(tiny_pool, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "hpc-merge"
    proc = subprocess.run([str(exe), "+experiment=progressive_density", "models=tiny", "job.dry_run=true"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "merge_method: dare_ties" in proc.stdout and "density:\n" in proc.stdout
    assert "# estimate: read" in proc.stdout and "peak RAM" in proc.stdout
    assert not (tmp_path / "logs" / "merge").exists() or not any((tmp_path / "logs" / "merge").rglob("model"))


@pytest.mark.parametrize("args,field", [
    (["merge.merge_method=tiez"], "merge.merge_method"),
    (["merge=tiez"], "merge: no merge config named 'tiez' (did you mean 'ties'?)"),
    (["merge.densty=0.5"], "merge.densty"),
    (["+merge.models.0.parameters.densty=0.5", "merge=balanced"], "merge.models[0].parameters.densty"),
    (["merge.models.0.model=/nonexistent/model"], "merge.models[0].model"),
    (["merge=balanced", "~merge.base_model"], "merge.base_model"),
    (["merge=experimental_multi", "merge.stages.0.models.1.model=no-org/no-model"], "merge.stages[0].models[1].model"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], field: str, tiny_pool, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("models=tiny", f"output={out}", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {field}") and "fix:" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_bad_layer_range_cli(tiny_pool, tmp_path: Path) -> None:
    cfg = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(tiny_pool["math"]), "layer_range": [0, 7]}]}]}
    path = tmp_path / "frank.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = run_cli(f"mergekit_yaml={path}", f"output={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2 and "layer_range" in proc.stderr and not (tmp_path / "out").exists()


def _mergekit_cli(config: dict, out: Path, tmp_path: Path) -> int:
    cfg_file = tmp_path / f"{out.name}.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    exe = Path(sys.executable).parent / "mergekit-yaml"
    return subprocess.run([str(exe), str(cfg_file), str(out), "--random-seed", "0"], capture_output=True,
                          timeout=300, env={**os.environ}).returncode


@pytest.mark.parametrize("method", ["linear", "slerp", "ties", "dare_ties", "passthrough"])
def test_mergekit_yaml_runs_unchanged_and_matches_mergekit(method: str, tiny_pool, tmp_path: Path) -> None:
    """A mergekit YAML runs as is through hpc_merge; the output equals mergekit-yaml's, tensor for tensor."""
    from tests.recipes import recipe_for

    recipe = recipe_for(method)
    text = yaml.safe_dump(recipe)
    for name, path in tiny_pool.items():
        text = text.replace(f"tiny:{name}", str(path))
    config = yaml.safe_load(text)
    if method != "passthrough" and "base_model" not in config:
        config["base_model"] = str(tiny_pool["math"])  # both tools then pick the same donor
    ref = tmp_path / "ref"
    rc = _mergekit_cli(config, ref, tmp_path)
    if method == "passthrough":
        # mergekit 0.1.5 writes every shard, then fails on the stale layer_types: no config.json
        assert rc != 0 and not (ref / "config.json").exists()
    else:
        assert rc == 0
    cfg_file = tmp_path / "ours.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    ours = tmp_path / "ours"
    # job.options.sparsify=mergekit: mergekit's own argsort trim (the default exact-k trim keeps
    # other elements among those tied at the threshold; tests/unit/test_trim.py covers it)
    proc = run_cli(f"mergekit_yaml={cfg_file}", f"output={ours}", "logger=none", "job.options.sparsify=mergekit",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _tensors(ours), _tensors(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and (a[k] == b[k]).all(), k
    layers = json.loads((ours / "config.json").read_text())
    assert layers["num_hidden_layers"] == (6 if method == "passthrough" else 4)
    assert len(layers["layer_types"]) == layers["num_hidden_layers"]


def test_failed_merge_leaves_no_output(tiny_pool, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pool["coder"], broken)
    st = broken / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])  # truncated weights
    cfg = {"merge_method": "linear", "models": [
        {"model": str(tiny_pool["math"]), "parameters": {"weight": 0.5}},
        {"model": str(broken), "parameters": {"weight": 0.5}}]}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    proc = run_cli(f"mergekit_yaml={path}", f"output={out}", "logger=none", cwd=tmp_path)
    assert proc.returncode != 0
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    run_dir = next((tmp_path / "logs" / "merge").glob("*/*"))
    assert json.loads((run_dir / "result.json").read_text())["status"] == "failed"
