"""Gate vectors: our ``hidden`` (a router fitted to the prompts) against mergekit's, on zoo-task prompts.

The tiny models are random (the trained-zoo figure is in tests/integration/test_moe_routing.py);
what must hold even here: the fitted router separates held-out prompts of different skills far
better than mergekit's last-token residual vectors (``hidden_mergekit``), negative prompts push an
expert's logit down, and a mergekit-moe YAML keeps mergekit's meaning of ``hidden``.
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


def test_fitted_router_separates_its_own_prompts(splits) -> None:

    router, shared = gate_vectors(validate_recipe(_recipe("hidden", splits)))
    assert router.shape == (4, 4, 64) and shared is None
    assert torch.isfinite(router).all() and router.abs().sum() > 0
    assert not torch.allclose(router[:, 0], router[:, 1])


def test_fit_router_learns_labels_and_negatives() -> None:
    """Two clusters of token features: each expert's own tokens get its top logit; a negative
    cluster given to expert 0 ends with expert 0's probability lower than without it."""
    from hpc_merge.moe.gates import fit_router

    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 8, generator=g) + torch.tensor([4.0] + [0.0] * 7)
    b = torch.randn(40, 8, generator=g) + torch.tensor([0.0, 4.0] + [0.0] * 6)
    neg = torch.randn(40, 8, generator=g) + torch.tensor([2.0, 2.0] + [0.0] * 6)
    w = fit_router([a, b], [None, None])
    assert ((a @ w.T).argmax(-1) == 0).float().mean() > 0.95 and ((b @ w.T).argmax(-1) == 1).float().mean() > 0.95
    w_neg = fit_router([a, b], [neg, None])
    p0 = lambda m: torch.softmax(neg @ m.T, -1)[:, 0].mean().item()  # noqa: E731
    assert p0(w_neg) < p0(w) - 0.1


def test_fitted_routes_held_out_prompts_better_than_mergekit_hidden(splits, tmp_path: Path) -> None:
    held_out = [[r["prompt"] for r in splits[t]["test"]] for t in TASKS]
    acc = {}
    for mode in ("hidden_mergekit", "hidden"):
        build_moe(validate_recipe(_recipe(mode, splits)), tmp_path / mode)
        acc[mode] = routing_report(tmp_path / mode, held_out)["accuracy"]
    print(f"held-out routing on random tiny models: {acc}")
    assert acc["hidden"] >= 0.8
    assert acc["hidden"] > acc["hidden_mergekit"] + 0.2


def test_mergekit_moe_yaml_keeps_mergekit_hidden(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from hpc_merge.app import load_mergekit_yaml

    (tmp_path / "moe.yml").write_text("base_model: b\nexperts:\n  - source_model: e\n    positive_prompts: [x]\n")
    cfg = OmegaConf.create({"mergekit_yaml": str(tmp_path / "moe.yml"), "job": {"kind": "merge"}, "name": "default"})
    load_mergekit_yaml(cfg)
    assert cfg.job.kind == "moe" and cfg.moe.gate_mode == "hidden_mergekit"


def test_recipe_files_keep_their_router_when_read_back(splits, tmp_path: Path) -> None:
    """The recipe file in an MoE folder: mergekit's vectors are written as mergekit-moe's ``hidden``
    (a plain mergekit-moe config); ours carry a header, so reading the file back keeps the fitted router."""
    from omegaconf import OmegaConf

    from hpc_merge.app import load_mergekit_yaml
    from hpc_merge.moe.card import RECIPE_FILE, write_card

    for mode, back in (("hidden", "hidden"), ("hidden_mergekit", "hidden_mergekit")):
        folder = tmp_path / mode
        folder.mkdir()
        write_card(folder, validate_recipe(_recipe(mode, splits)), {})
        written = (folder / RECIPE_FILE).read_text()
        assert ("gate_mode: hidden\n" in written) and (written.startswith("# hpc_merge") == (mode == "hidden"))
        cfg = OmegaConf.create({"mergekit_yaml": str(folder / RECIPE_FILE), "job": {"kind": "merge"}, "name": "x"})
        load_mergekit_yaml(cfg)
        assert cfg.moe.gate_mode == back


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
