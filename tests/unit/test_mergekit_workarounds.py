"""Known mergekit 0.1.5 problems, fixed by the adapter (see shared notes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hpc_merge import mergekit_adapter as mk
from hpc_merge.models.tokenizer import build_tokenizer

OPTS = {"device": "cpu", "random_seed": 0, "out_shard_size": "1B"}


def _linear(a: Path, b: Path) -> dict:
    return {"merge_method": "linear", "dtype": "float32", "models": [
        {"model": str(a), "parameters": {"weight": 0.5}}, {"model": str(b), "parameters": {"weight": 0.5}}]}


def test_inputs_are_reread_between_merges(tiny_pool, tmp_path: Path) -> None:
    """mergekit caches loaders process-wide; a rewritten input must not be read stale."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_pool["math"], a)
    shutil.copytree(tiny_pool["coder"], b)
    mk.run_mergekit(_linear(a, b), tmp_path / "out1", OPTS)
    weights = load_file(b / "model.safetensors")
    save_file({k: torch.zeros_like(v) for k, v in weights.items()}, str(b / "model.safetensors"),
              metadata={"format": "pt"})
    mk.run_mergekit(_linear(a, b), tmp_path / "out2", OPTS)
    one = load_file(tmp_path / "out1" / "model.safetensors")
    two = load_file(tmp_path / "out2" / "model.safetensors")
    key = "model.layers.0.mlp.down_proj.weight"
    expected = load_file(a / "model.safetensors")[key].float() * 0.5
    assert torch.allclose(two[key], expected, atol=1e-6)
    assert not torch.allclose(one[key], two[key])


def test_donor_is_first_model_whatever_the_hash_seed(tiny_pool, tmp_path: Path) -> None:
    """Without a base model, mergekit's donor comes from a set; ours is always the first model."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_pool["math"], a)
    shutil.copytree(tiny_pool["coder"], b)
    build_tokenizer(b, corpus=["zzzz yyyy xxxx wwww " * 20, "0 1 2 3 4 5 6 7 8 9"], vocab_size=320)
    assert (a / "tokenizer.json").read_text() != (b / "tokenizer.json").read_text()
    script = (
        "import sys, json; from pathlib import Path; from hpc_merge import mergekit_adapter as mk;"
        f"mk.run_mergekit(json.loads(sys.argv[1]), Path(sys.argv[2]), {OPTS!r})"
    )
    import json

    for seed in ("1", "2", "3", "4"):
        out = tmp_path / f"out{seed}"
        subprocess.run([sys.executable, "-c", script, json.dumps(_linear(a, b)), str(out)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, timeout=300)
        assert (out / "tokenizer.json").read_text() == (a / "tokenizer.json").read_text(), seed
