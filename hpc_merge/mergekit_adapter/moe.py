"""mergekit's MoE pieces, as the MoE package uses them: experts, gate vectors, loaders, writers.

Why here: :mod:`hpc_merge.moe` decides *what* to build (recipes, plans, our own writers); every
name it needs from mergekit is reached through this module, so a mergekit release that moves one
breaks this file (and the canary test), not the MoE code. Nothing here knows our plan types:
callers pass plain values, so imports keep flowing from ``moe`` down to the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from mergekit.moe.config import Expert, MoEMergeConfig
    from mergekit.options import MergeOptions

#: Our output names -> the class name of mergekit's MoE output architecture that writes them.
OUTPUT_CLASSES = {"mixtral": "MixtralMoE", "qwen2_moe": "QwenMoE", "qwen3_moe": "Qwen3MoE"}


def expert(source_model: str, positive_prompts: list[str] | None = None, negative_prompts: list[str] | None = None,
           noise_scale: float | None = None, residual_scale: float | None = None) -> Expert:
    """A ``mergekit.moe.config.Expert`` (a folder path as its model)."""
    from mergekit.moe.config import Expert

    return Expert(source_model=source_model, positive_prompts=positive_prompts, negative_prompts=negative_prompts,
                  noise_scale=noise_scale, residual_scale=residual_scale)


def moe_config(base_model: str, experts: list[Expert], gate_mode: str, dtype: str | None, experts_per_token: int,
               shared_experts: list[Expert] | None) -> MoEMergeConfig:
    """mergekit's ``MoEMergeConfig`` for its output writers."""
    from mergekit.moe.config import MoEMergeConfig

    return MoEMergeConfig(base_model=base_model, experts=experts, gate_mode=gate_mode, dtype=dtype,
                          experts_per_token=experts_per_token, shared_experts=shared_experts)


def output_architecture(name: str) -> Any:
    """mergekit's output-architecture object for our output name (``mixtral``, ``qwen2_moe``, ...)."""
    from mergekit.moe import ALL_OUTPUT_ARCHITECTURES

    cls = OUTPUT_CLASSES[name]
    for arch in ALL_OUTPUT_ARCHITECTURES:
        if type(arch).__name__ == cls:
            return arch
    raise RuntimeError(f"mergekit {cls} output is not available in this mergekit version")


def gate_params(base_path: str, tokenizer: Any, experts: list[Expert], mode: str, device: str) -> torch.Tensor:
    """mergekit's gate vectors ``(layers, experts, hidden)`` for its gate modes."""
    from mergekit.common import ModelReference
    from mergekit.moe.router import get_gate_params

    return get_gate_params(ModelReference.parse(base_path), tokenizer, experts, mode=mode,
                           lazy_unpickle=False, trust_remote_code=False, device=device)


def warn_degenerate_gates(vectors: torch.Tensor) -> None:
    """mergekit's warning for prompt gates that cannot tell experts apart."""
    from mergekit.moe.router import warn_degenerate_gates as warn

    warn(vectors)


def lazy_loader(path: str) -> Any:
    """mergekit's lazy tensor loader over a model folder."""
    from mergekit.common import ModelReference

    return ModelReference.parse(path).lazy_loader(lazy_unpickle=False)


def noise_and_scale(tensor: torch.Tensor, source_model: str, noise_scale: float | None,
                    residual_scale: float | None, is_residual: bool = False) -> torch.Tensor:
    """An expert tensor with mergekit's noise and residual scaling applied."""
    from mergekit.moe.common import noise_and_scale as scale

    return scale(tensor, expert(source_model, noise_scale=noise_scale, residual_scale=residual_scale),
                 is_residual=is_residual)


def tensor_writer(out_dir: str, options: MergeOptions) -> Any:
    """mergekit's shard writer with the merge options' shard size and format."""
    from mergekit.io import TensorWriter

    return TensorWriter(out_dir, max_shard_size=options.out_shard_size, safe_serialization=options.safe_serialization)
