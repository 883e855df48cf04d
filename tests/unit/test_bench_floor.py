"""The benchmark's floor script computes what mergekit computes (else its timings mean nothing).

Linear must be bit-identical to mergekit's linear merge; TIES uses the product's exact-k trim
(``job.options.sparsify: fast``), so it must equal ``run_mergekit``'s default TIES. Nothing here
is about time.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from bench import floor, inputs
from hpc_merge.mergekit_adapter import run_mergekit
from hpc_merge.models.tiny import ensure_tiny


def _both(recipe: dict, tmp_path) -> tuple[dict, dict]:
    floor.merge(recipe, tmp_path / "floor")
    run_mergekit(recipe, tmp_path / "mk", {"device": "cpu", "random_seed": 0})
    return load_file(tmp_path / "floor" / "model.safetensors"), load_file(tmp_path / "mk" / "model.safetensors")


def test_floor_linear_is_mergekit_linear(tmp_path):
    models = [ensure_tiny(n) for n in ("base", "math", "coder")]
    recipe = inputs.recipe("linear", models)
    recipe["models"][0]["parameters"]["weight"] = 0.5  # unequal weights: the order of sums matters
    ours, theirs = _both(recipe, tmp_path)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype
        assert torch.equal(ours[name], theirs[name]), name


def test_floor_ties_is_hpc_merge_ties(tmp_path):
    models = [ensure_tiny(n) for n in ("base", "math", "coder")]
    ours, theirs = _both(inputs.recipe("ties", models), tmp_path)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
