"""Outputs mergekit builds correctly: Llama/Mistral -> Mixtral, Qwen2 + 1 shared -> Qwen2-MoE, Qwen3 -> Qwen3-MoE.

We call ``arch.write_model`` directly (never ``scripts.moe.build``, which can ``sys.exit``) and then
repair the one thing it gets wrong for us: it drops the source's attention window settings
(``sliding_window`` for Mistral, per-layer ``layer_types`` for Qwen2), which changes the
computation on sequences longer than the window.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from hpc_merge.mergekit_adapter.moe import moe_config, output_architecture
from hpc_merge.moe.arch import read_config
from hpc_merge.moe.gates import mergekit_expert
from hpc_merge.moe.plan import MoePlan

if TYPE_CHECKING:
    import torch

    from hpc_merge.mergekit_adapter.moe import MergeOptions

def mergekit_config(plan: MoePlan):
    """The plan as a ``MoEMergeConfig``; an always-on shared expert's output is doubled (see gates)."""
    factor = 2.0 if plan.shared_expert_gate == "always_on" else 1.0
    return moe_config(plan.base_path, [mergekit_expert(e) for e in plan.experts], plan.gate_mode, plan.dtype,
                      plan.experts_per_token, [mergekit_expert(e, factor) for e in plan.shared_experts] or None)


def carry_attention_window(out_dir: Path, plan: MoePlan) -> None:
    """Copy the base model's sliding-window settings into the written config.json."""
    base = read_config(plan.base_path, "moe.base_model")
    cfg_file = out_dir / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if plan.output_arch == "mixtral":
        cfg["sliding_window"] = base.get("sliding_window") if plan.source_type == "mistral" else None
    elif plan.output_arch == "qwen2_moe":
        for key in ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types"):
            if key in base:
                cfg[key] = base[key]
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_with_mergekit(plan: MoePlan, out_dir: Path, options: MergeOptions, router: torch.Tensor,
                        shared: torch.Tensor | None) -> None:
    """Write weights and config into ``out_dir`` with mergekit's MoE writer for ``plan.output_arch``."""
    arch = output_architecture(plan.output_arch)
    layers = router.shape[0]
    arch.write_model(str(out_dir), mergekit_config(plan), options,
                     router_weights=[router[i] for i in range(layers)],
                     shared_router_weights=[shared[i] for i in range(layers)] if shared is not None else None)
    carry_attention_window(out_dir, plan)
