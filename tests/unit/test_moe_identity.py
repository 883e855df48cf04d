"""An MoE built from N copies of one dense model must compute exactly that dense model.

The router's top-k weights are renormalised to sum to 1, so with identical experts any routing
gives the dense MLP output: a difference means a weight landed in the wrong place, a config
setting (sliding window, rope, biases, norms) did not carry over, or the output class computes
something else. Sequences are longer than the sliding windows set below, so dropped windows show.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hpc_merge.models.tiny import build_tiny, ensure_tiny
from hpc_merge.moe import build_moe, validate_recipe

torch.set_num_threads(2)
SEQ = 24
N_EXPERTS = 3


def _logits(model_dir: Path, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Full-sequence logits, an 8-token greedy continuation (exercises the KV cache), the class name."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, trust_remote_code=False)
    model.eval()
    with torch.no_grad():
        gen = model.generate(ids[:1, :6], max_new_tokens=8, do_sample=False, pad_token_id=0)
        return model(ids).logits, gen, type(model).__name__


def _with_config(folder: Path, **changes) -> Path:
    """Edit a built model's config.json (tiny_config takes only shape arguments)."""
    cfg_file = folder / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(changes)
    cfg_file.write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Dense tiny models whose sliding windows (4 tokens) are shorter than the test sequence."""
    root = tmp_path_factory.mktemp("dense")
    qwen_layers = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    return {
        "mistral": _with_config(build_tiny(root / "mistral", arch="mistral", seed=3), sliding_window=4),
        "phi3": _with_config(build_tiny(root / "phi3", arch="phi3", seed=4), sliding_window=4),
        "qwen2": _with_config(build_tiny(root / "qwen2", arch="qwen2", seed=5), use_sliding_window=True,
                              sliding_window=4, max_window_layers=4, layer_types=qwen_layers),
    }


CASES = {
    # name: (dense source, expected class, extra recipe keys, residual scale of routed experts)
    "llama->mixtral": ("llama", "MixtralForCausalLM", {}, None),
    "mistral->mixtral": ("mistral@window", "MixtralForCausalLM", {}, None),
    "qwen2->qwen2_moe(no shared)": ("qwen2@window", "Qwen2MoeForCausalLM", {}, None),
    "qwen2->qwen2_moe(shared)": ("qwen2@window", "Qwen2MoeForCausalLM", {"shared": True}, 0.5),
    "qwen3->qwen3_moe": ("qwen3", "Qwen3MoeForCausalLM", {}, None),
    "phi3->mixtral": ("phi3@window", "MixtralForCausalLM", {}, None),
    "llama->qwen2_moe(no shared)": ("llama", "Qwen2MoeForCausalLM", {"output_arch": "qwen2_moe"}, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_moe_of_copies_equals_dense(case: str, windowed: dict[str, Path], tmp_path: Path) -> None:
    source, expected_class, extra, residual = CASES[case]
    arch, _, variant = source.partition("@")
    dense = windowed[arch] if variant else ensure_tiny("base", arch)
    expert = {"source_model": str(dense)}
    if residual is not None:
        expert["residual_scale"] = residual
    recipe = {"base_model": str(dense), "gate_mode": "random", "experts_per_token": 2, "dtype": "float32",
              "experts": [dict(expert) for _ in range(N_EXPERTS)], "allow_identical_experts": True}
    if extra.get("shared"):
        # half from the routed mixture + half from an always-on shared copy = the dense model
        recipe["shared_experts"] = [{"source_model": str(dense), "residual_scale": 0.5}]
        recipe["shared_expert_gate"] = "always_on"
    if "output_arch" in extra:
        recipe["output_arch"] = extra["output_arch"]
    plan = validate_recipe(recipe)
    out = tmp_path / "moe"
    build_moe(plan, out)

    ids = torch.randint(1, 320, (2, SEQ), generator=torch.Generator().manual_seed(0))
    want, want_gen, _ = _logits(dense, ids)
    got, got_gen, cls = _logits(out, ids)
    assert cls == expected_class
    assert torch.equal(want_gen, got_gen), "cached greedy generation differs"
    diff = (want - got).abs().max().item()
    print(f"identity {case}: max abs diff {diff:.3g}")
    assert diff <= 1e-4, f"{case}: max abs logit diff {diff}"


def test_dropping_the_window_would_be_caught(windowed: dict[str, Path]) -> None:
    """The windowed sources really depend on their window at this length (so the test above can fail)."""
    src = windowed["mistral"]
    ids = torch.randint(1, 320, (1, SEQ), generator=torch.Generator().manual_seed(0))
    with_window, _, _ = _logits(src, ids)
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["sliding_window"] == 4
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.from_pretrained(str(src))
    conf.sliding_window = None
    model = AutoModelForCausalLM.from_pretrained(str(src), config=conf, dtype=torch.float32).eval()
    with torch.no_grad():
        without = model(ids).logits
    assert (with_window - without).abs().max().item() > 1e-3
