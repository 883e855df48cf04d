"""The architecture × method matrix: every cell of the support table, merged for real and loaded.

For every architecture in ``mergekit_adapter.archsupport.SUPPORT`` a tiny model keeping the
architecture's quirks (``models/archs.py``) goes through the merge job's own validate + run, then
stock transformers loads the output (no remote code) with no missing, unexpected or mis-shaped
tensor and finite logits. A cell the table refuses must be refused at validation, with one line
naming the architecture. Identity: a linear merge of the base with itself (weight 1) and a
passthrough of all its layers reproduce the base's logits — exactly for dense models, to 1e-6 in
fp32 where MoE experts are re-laid out. Every outcome goes into a JSON file that
``scripts/arch_matrix.py`` turns into the README table (``HPC_MERGE_ARCH_MATRIX``, default
``.cache/arch_matrix.json``). Three merges (Gemma 3, Phi-3, Mixtral) run through the real CLI.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from hpc_merge.config import compose
from hpc_merge.errors import ConfigError
from hpc_merge.jobs import merge as merge_job
from hpc_merge.mergekit_adapter.archsupport import CELLS, SUPPORT, expected
from hpc_merge.models.tiny import POOL_NAMES, ensure_tiny, ensure_tiny_wide
from hpc_merge.tracking import Tracker

pytestmark = pytest.mark.integration
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("HPC_MERGE_ARCH_MATRIX", ROOT / ".cache" / "arch_matrix.json"))
SEQ = 12  # longer than the tiny models' 4-token sliding windows
IDS = torch.arange(3, 3 + 2 * SEQ).reshape(2, SEQ)
RESULTS: dict[str, dict[str, dict[str, str]]] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_results() -> Any:
    """After the module: every recorded outcome to the JSON the README table is rendered from."""
    yield
    if RESULTS:
        from importlib.metadata import version

        OUT.parent.mkdir(parents=True, exist_ok=True)
        doc = {"mergekit": version("mergekit"), "transformers": version("transformers"),
               "cells": {a: RESULTS[a] for a in SUPPORT if a in RESULTS}}
        OUT.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")


@functools.cache
def _shipped(method: str) -> dict[str, Any]:
    """``conf/merge/<method>.yaml`` composed over the tiny pool (Hydra composes once per method)."""
    cfg = compose([f"merge={method}", "models=tiny", "logger=none"])
    return OmegaConf.to_container(cfg.merge, resolve=True)


@functools.cache
def _job_config() -> Any:
    return compose(["logger=none", "job.options.random_seed=0"])


def _recipe(arch: str, cell: str) -> dict[str, Any]:
    """The shipped recipe of the cell's method over ``arch``'s tiny pool (a plain dict)."""
    method = {"task_arithmetic_union": "task_arithmetic", "passthrough_depth": "passthrough"}.get(cell, cell)

    def on_arch(obj: Any) -> Any:  # tiny:NAME -> tiny:ARCH/NAME
        if isinstance(obj, dict):
            return {k: on_arch(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [on_arch(v) for v in obj]
        return f"tiny:{arch}/{obj[5:]}" if isinstance(obj, str) and obj.startswith("tiny:") else obj

    recipe = on_arch(_shipped(method))
    if cell == "task_arithmetic_union":
        recipe["models"][-1]["model"] = str(ensure_tiny_wide(arch))  # a fine-tune with 32 more tokens
        recipe["tokenizer_source"] = "union"
    return recipe


def _merge(recipe: dict[str, Any], out: Path) -> Path:
    """The merge job's own validate + run (what ``hpc-merge`` does in the job process)."""
    cfg = copy.deepcopy(_job_config())
    cfg.merge = OmegaConf.create(recipe)
    cfg.job.smoke.enabled = False
    cfg.output = str(out)
    plan = merge_job.validate(cfg)
    result = merge_job.run(cfg, plan, out.parent, Tracker())
    return Path(result["output_model"])


def _load(folder: Path) -> tuple[Any, torch.Tensor]:
    """Stock transformers, fp32; no tensor missing, unexpected or mis-shaped; finite logits."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, trust_remote_code=False,
                                                       output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"}
    assert not bad, f"{folder}: {bad}"
    model.eval()
    with torch.no_grad():
        logits = model(IDS).logits
    assert torch.isfinite(logits).all()
    return model, logits


def _layer_count(folder: Path) -> int:
    cfg = json.loads((folder / "config.json").read_text())
    return cfg.get("num_hidden_layers") or cfg.get("n_layer")


def _run_cell(arch: str, cell: str, tmp: Path) -> str:
    """Run one ok-cell; returns a short detail for the results file."""
    if cell == "identity":
        return _identity(arch, tmp)
    out = _merge(_recipe(arch, cell), tmp / "out")
    _, logits = _load(out)
    if cell == "passthrough_depth":
        assert _layer_count(out) == 6, "the passthrough stacks 3 + 3 layers"
    if cell == "task_arithmetic_union":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(out))
        assert len(tok) == logits.shape[-1] == 352, (len(tok), logits.shape)
        assert len(tok("12+34=46")["input_ids"]) > 0
    return "merged, loaded"


def _identity(arch: str, tmp: Path) -> str:
    base = ensure_tiny("base", arch)
    _, want = _load(base)
    tol = 1e-6 if SUPPORT[arch].moe else 0.0
    worst = 0.0
    layers = _layer_count(base)
    recipes = {
        "linear": {"merge_method": "linear", "models": [{"model": str(base), "parameters": {"weight": 1.0}}],
                   "dtype": "bfloat16"},
        "passthrough": {"merge_method": "passthrough", "dtype": "bfloat16",
                        "slices": [{"sources": [{"model": str(base), "layer_range": [0, layers]}]}]},
    }
    for name, recipe in recipes.items():
        _, got = _load(_merge(recipe, tmp / name / "out"))
        diff = (got - want).abs().max().item()
        assert diff <= tol, f"{arch} {name} identity: max |Δlogit| {diff} > {tol}"
        worst = max(worst, diff)
    return f"max |Δlogit| {worst:.1e}"


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("arch", list(SUPPORT))
def test_cell(arch: str, cell: str, tmp_path: Path) -> None:
    status, reason = expected(arch, cell)
    if status == "refused":
        with pytest.raises(ConfigError) as err:
            _merge(_recipe(arch, cell), tmp_path / "out")
        msg = str(err.value)
        assert arch in msg and "\n" not in msg, msg
        assert not (tmp_path / "out").exists()
        RESULTS.setdefault(arch, {})[cell] = {"status": "refused", "detail": reason}
        return
    detail = _run_cell(arch, cell, tmp_path)
    RESULTS.setdefault(arch, {})[cell] = {"status": "ok", "detail": detail}


CLI_CASES = {
    # arch: (recipe, class transformers must load) — what each exercises
    "gemma3_text": ("ties", "Gemma3ForCausalLM"),      # tied embeddings, qk-norm, sliding pattern
    "phi3": ("slerp", "Phi3ForCausalLM"),              # fused qkv / gate_up, filter-list gradients
    "mixtral": ("dare_ties", "MixtralForCausalLM"),    # MoE experts re-laid out, seeded drops
}


@pytest.mark.parametrize("arch", list(CLI_CASES))
def test_cli_merge_loads(arch: str, tmp_path: Path) -> None:
    """The installed ``hpc-merge`` entry point, as a user runs it, on a non-Qwen architecture."""
    cli = Path(sys.executable).with_name("hpc-merge")
    out = tmp_path / "merged"
    method, cls = CLI_CASES[arch]
    args = [str(cli), f"merge={method}", "models=tiny", "logger=none", "job.options.random_seed=0",
            f"output={out}"] + [f"models.{n}=tiny:{arch}/{n}" for n in POOL_NAMES]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HPC_MERGE_LOGS": str(tmp_path / "logs")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("run_dir: ")
    model, _ = _load(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == arch
    assert type(model).__name__ == cls

