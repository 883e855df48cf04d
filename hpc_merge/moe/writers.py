"""Our own MoE writers for what mergekit cannot build.

- Qwen2 (or Llama) experts -> Qwen2-MoE with NO shared expert. Transformers' Qwen2-MoE block
  always adds ``sigmoid(g . x) * shared_expert(x)``; with ``shared_expert_intermediate_size = 0``
  the shared expert's matrices are empty and its output is exactly zero, so the model is exactly
  the routed mixture of the experts.
- Phi-3 experts -> Mixtral. Phi-3 is a Llama-style block (RMSNorm, SiLU-gated MLP, full RoPE, no
  biases, one sliding window for all layers) with fused ``qkv_proj`` and ``gate_up_proj``. Mixtral
  computes the same block; its fused expert ``gate_up_proj`` uses Phi-3's [gate; up] row order, so
  only ``qkv_proj`` needs splitting. (PhiMoE differs: LayerNorm, attention biases, sparsemixer.)

Tensors are read with mergekit's lazy loader and written with its shard writer; experts are
stored in transformers 5's fused layout (``experts.gate_up_proj`` ``[E, 2I, H]``,
``experts.down_proj`` ``[E, H, I]``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpc_merge.moe.arch import head_dim, read_config
from hpc_merge.moe.plan import ExpertSpec, MoePlan

if TYPE_CHECKING:
    import torch

    from hpc_merge.mergekit_adapter.moe import MergeOptions

_MLP = re.compile(r"^model\.layers\.(\d+)\.mlp\.")


def _loader(path: str):
    from hpc_merge.mergekit_adapter.moe import lazy_loader

    return lazy_loader(path)


def _torch_dtype(plan: MoePlan, base: dict[str, Any]):
    import torch

    name = plan.dtype or base.get("dtype") or base.get("torch_dtype") or "float32"
    return getattr(torch, name)


def _expert_mlp(loader, layer: int, source_type: str, spec: ExpertSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gate_up [2I, H], down [H, I])`` of one dense layer, with the expert's noise/residual scaling."""
    import torch

    from hpc_merge.mergekit_adapter.moe import noise_and_scale

    pre = f"model.layers.{layer}.mlp"
    if source_type == "phi3":
        gate_up = loader.get_tensor(f"{pre}.gate_up_proj.weight")
    else:
        gate_up = torch.cat([loader.get_tensor(f"{pre}.gate_proj.weight"), loader.get_tensor(f"{pre}.up_proj.weight")])
    down = loader.get_tensor(f"{pre}.down_proj.weight")
    scale = (spec.path, spec.noise_scale, spec.residual_scale)
    return noise_and_scale(gate_up, *scale), noise_and_scale(down, *scale, is_residual=True)


def _split_qkv(name: str, qkv: torch.Tensor, base: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """Phi-3's fused ``qkv_proj`` rows are [q heads; k heads; v heads]."""
    hd = head_dim(base)
    q = base["num_attention_heads"] * hd
    kv = base["num_key_value_heads"] * hd
    stem = name.removesuffix("qkv_proj.weight")
    return [(stem + "q_proj.weight", qkv[:q]), (stem + "k_proj.weight", qkv[q:q + kv]),
            (stem + "v_proj.weight", qkv[q + kv:q + 2 * kv])]


def _mixtral_config(base: dict[str, Any], plan: MoePlan) -> dict[str, Any]:
    """A Mixtral config computing what the Phi-3 base computes, with ``len(experts)`` experts."""
    from transformers import MixtralConfig

    rope = dict(base.get("rope_parameters") or {})
    rope.pop("partial_rotary_factor", None)  # validated to be 1.0
    cfg = MixtralConfig(
        vocab_size=base["vocab_size"], hidden_size=base["hidden_size"], intermediate_size=base["intermediate_size"],
        num_hidden_layers=base["num_hidden_layers"], num_attention_heads=base["num_attention_heads"],
        num_key_value_heads=base.get("num_key_value_heads") or base["num_attention_heads"], head_dim=head_dim(base),
        hidden_act=base.get("hidden_act", "silu"), max_position_embeddings=base["max_position_embeddings"],
        rms_norm_eps=base.get("rms_norm_eps", 1e-5), tie_word_embeddings=base.get("tie_word_embeddings", False),
        pad_token_id=base.get("pad_token_id"), bos_token_id=base.get("bos_token_id"), eos_token_id=base.get("eos_token_id"),
        sliding_window=base.get("sliding_window"), attention_dropout=base.get("attention_dropout", 0.0),
        num_local_experts=len(plan.experts), num_experts_per_tok=plan.experts_per_token, router_jitter_noise=0.0,
        rope_parameters=rope or None,
    )
    out = cfg.to_dict()
    if "original_max_position_embeddings" in base:  # longrope reads it from the config
        out["original_max_position_embeddings"] = base["original_max_position_embeddings"]
    return out


def _qwen2_moe_config(base: dict[str, Any], plan: MoePlan) -> dict[str, Any]:
    """A Qwen2-MoE config whose shared expert is empty (intermediate size 0)."""
    from transformers import Qwen2MoeConfig

    keep = {k: v for k, v in base.items() if k not in ("architectures", "model_type", "transformers_version",
                                                          "torch_dtype", "dtype", "attention_bias", "mlp_bias")}
    cfg = Qwen2MoeConfig(**keep)
    cfg.num_experts = len(plan.experts)
    cfg.num_experts_per_tok = plan.experts_per_token
    cfg.moe_intermediate_size = base["intermediate_size"]
    cfg.shared_expert_intermediate_size = 0
    cfg.decoder_sparse_step = 1
    cfg.mlp_only_layers = []
    cfg.norm_topk_prob = True  # the top-k weights sum to 1: a convex mixture of the chosen experts
    cfg.qkv_bias = True
    cfg.router_aux_loss_coef = 0.001
    out = cfg.to_dict()
    for key in ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types"):
        if key in base:
            out[key] = base[key]
    return out


def write_own(plan: MoePlan, out_dir: Path, options: MergeOptions, router: torch.Tensor) -> None:
    """Write config and weights for the plans mergekit cannot build (see the module docstring)."""
    import torch

    from hpc_merge.mergekit_adapter.moe import tensor_writer

    base = read_config(plan.base_path, "moe.base_model")
    dtype = _torch_dtype(plan, base)
    if plan.output_arch == "mixtral":
        cfg = _mixtral_config(base, plan)
        cfg["architectures"] = ["MixtralForCausalLM"]
    elif plan.output_arch == "qwen2_moe":
        cfg = _qwen2_moe_config(base, plan)
        cfg["architectures"] = ["Qwen2MoeForCausalLM"]
    else:
        raise ValueError(f"no own writer for {plan.output_arch}")
    cfg["dtype"] = str(dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    hidden, hd = base["hidden_size"], head_dim(base)
    base_loader = _loader(plan.base_path)
    loaders = {e.path: _loader(e.path) for e in plan.experts}
    writer = tensor_writer(str(out_dir), options)
    names = sorted(base_loader.index.tensor_paths)
    for name in names:
        if _MLP.match(name):
            continue
        tensor = base_loader.get_tensor(name)
        if plan.source_type == "phi3" and name.endswith("self_attn.qkv_proj.weight"):
            parts = _split_qkv(name, tensor, base)
        else:
            parts = [(name, tensor)]
        for out_name, t in parts:
            writer.save_tensor(out_name, t.to(dtype).contiguous())
    for layer in range(base["num_hidden_layers"]):
        pre = f"model.layers.{layer}"
        if plan.output_arch == "qwen2_moe":
            for proj, rows in (("q", base["num_attention_heads"]), ("k", base["num_key_value_heads"]),
                               ("v", base["num_key_value_heads"])):
                bias = f"{pre}.self_attn.{proj}_proj.bias"
                if bias not in base_loader.index.tensor_paths:  # Llama source: Qwen2-MoE wants q/k/v biases
                    writer.save_tensor(bias, torch.zeros(rows * hd, dtype=dtype))
            writer.save_tensor(f"{pre}.mlp.shared_expert.gate_proj.weight", torch.zeros(0, hidden, dtype=dtype))
            writer.save_tensor(f"{pre}.mlp.shared_expert.up_proj.weight", torch.zeros(0, hidden, dtype=dtype))
            writer.save_tensor(f"{pre}.mlp.shared_expert.down_proj.weight", torch.zeros(hidden, 0, dtype=dtype))
            writer.save_tensor(f"{pre}.mlp.shared_expert_gate.weight", torch.zeros(1, hidden, dtype=dtype))
        mlps = [_expert_mlp(loaders[e.path], layer, plan.source_type, e) for e in plan.experts]
        writer.save_tensor(f"{pre}.mlp.experts.gate_up_proj", torch.stack([g for g, _ in mlps]).to(dtype).contiguous())
        writer.save_tensor(f"{pre}.mlp.experts.down_proj", torch.stack([d for _, d in mlps]).to(dtype).contiguous())
        writer.save_tensor(f"{pre}.mlp.gate.weight", router[layer].to(dtype).contiguous())
    writer.finalize()
