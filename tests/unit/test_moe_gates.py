"""Gate vectors: our ``hidden_centered`` mode against mergekit's ``hidden``, on zoo-task prompts.

The tiny models are random (the trained-zoo figure is in tests/integration/test_moe_routing.py);
what must hold even here is the ranking that motivated ``hidden_centered``: the router sees the
post-norm MLP input of every token, so vectors built from exactly that, centered across experts,
separate held-out prompts of different skills far better than mergekit's last-token residual.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpc_merge.models.tiny import ensure_tiny
from hpc_merge.moe import build_moe, validate_recipe
from hpc_merge.moe.gates import gate_vectors
from hpc_merge.moe.routing import routing_report
from hpc_merge.zoo.tasks import make_splits

torch.set_num_threads(2)
TASKS = {"addition": {"max_operand": 99}, "reversal": {"min_len": 3, "max_len": 6},
         "sorting": {"min_len": 3, "max_len": 6}, "shift": {"min_len": 3, "max_len": 6}}
EXPERTS = ("math", "coder", "science", "instruct")


@pytest.fixture(scope="module")
def splits() -> dict[str, dict[str, list[dict[str, str]]]]:
    return {t: make_splits(t, 0, {"train": 12, "validation": 0, "test": 25}, p) for t, p in TASKS.items()}


def _recipe(mode: str, splits) -> dict:
    return {"base_model": str(ensure_tiny("base")), "gate_mode": mode, "experts_per_token": 2,
            "experts": [{"source_model": str(ensure_tiny(name)), "positive_prompts": [r["prompt"] for r in splits[t]["train"]]}
                        for name, t in zip(EXPERTS, TASKS, strict=True)]}


def test_centered_vectors_are_centered_and_unit(splits) -> None:
    router, shared = gate_vectors(validate_recipe(_recipe("hidden_centered", splits)))
    assert router.shape == (4, 4, 64) and shared is None
    assert torch.allclose(router.norm(dim=-1), torch.ones(4, 4), atol=1e-5)
    cos = router @ router.transpose(1, 2)  # (layers, experts, experts)
    off_diagonal = cos[:, ~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.mean().item() < 0  # centered: un-centered mean states all point the same way


def test_centered_routes_held_out_prompts_better_than_mergekit_hidden(splits, tmp_path: Path) -> None:
    held_out = [[r["prompt"] for r in splits[t]["test"]] for t in TASKS]
    acc = {}
    for mode in ("hidden", "hidden_centered"):
        build_moe(validate_recipe(_recipe(mode, splits)), tmp_path / mode)
        acc[mode] = routing_report(tmp_path / mode, held_out)["accuracy"]
    print(f"held-out routing on random tiny models: {acc}")
    assert acc["hidden_centered"] >= 0.8
    assert acc["hidden_centered"] > acc["hidden"] + 0.2


def test_prompt_gates_through_mergekit_writer(tmp_path: Path) -> None:
    """cheap_embed gates + mergekit's Mixtral writer: builds and loads."""
    from transformers import AutoModelForCausalLM

    r = {"base_model": str(ensure_tiny("base", "llama")), "gate_mode": "cheap_embed",
         "experts": [{"source_model": str(ensure_tiny("math", "llama")), "positive_prompts": ["add: 1 + 2 ="]},
                     {"source_model": str(ensure_tiny("coder", "llama")), "positive_prompts": ["reverse: a b ->"]}]}
    build_moe(validate_recipe(r), tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    assert type(model).__name__ == "MixtralForCausalLM"
    gate = model.model.layers[0].mlp.gate.weight
    assert gate.shape == (2, 64) and not torch.allclose(gate[0], gate[1])
