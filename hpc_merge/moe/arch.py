"""The source models of an MoE and the output class that can hold them, from ``config.json`` only.

Which MoE architecture the experts become (``output_arch``: ours, mergekit's ``architecture`` name,
or by source type), which source features that output cannot represent, and whether the experts
stack (same type and shapes as the base, weights present). No weight is read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError, did_you_mean
from hpc_merge.moe.plan import ExpertSpec

OUTPUT_ARCHS = ("auto", "mixtral", "qwen2_moe", "qwen3_moe")
#: Which source model types each output can reproduce exactly.
SOURCES = {"mixtral": ("llama", "mistral", "phi3"), "qwen2_moe": ("qwen2", "llama"), "qwen3_moe": ("qwen3",)}
DEFAULT_OUTPUT = {"llama": "mixtral", "mistral": "mixtral", "phi3": "mixtral", "qwen2": "qwen2_moe",
                  "qwen3": "qwen3_moe"}
#: mergekit's ``architecture`` names (it matches by prefix of these) -> ours.
MERGEKIT_ARCH_NAMES = {"mixtral": "mixtral", "qwen moe": "qwen2_moe", "qwen3 moe": "qwen3_moe"}
#: Config fields that must agree between the base and every expert for the experts to be stackable.
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size")


def read_config(path: str | Path, field_name: str) -> dict[str, Any]:
    """A model folder's ``config.json`` as a dict (cheap: no transformers import, no weights)."""
    cfg_file = Path(path) / "config.json"
    try:
        return json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(field_name, f"cannot read {cfg_file} ({exc.__class__.__name__})",
                          "point at a Hugging Face model folder with a valid config.json") from None


def head_dim(cfg: Mapping[str, Any]) -> int:
    """The attention head size, explicit or implied."""
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def output_arch(recipe: Mapping[str, Any], source_type: str, field_prefix: str) -> str:
    """Our ``output_arch`` if given, else mergekit's ``architecture`` (a name prefix), else by source type."""
    ours = recipe.get("output_arch") or "auto"
    if ours not in OUTPUT_ARCHS:
        raise ConfigError(f"{field_prefix}.output_arch", f"unknown output {ours!r}{did_you_mean(str(ours), OUTPUT_ARCHS)}",
                          f"use one of {', '.join(OUTPUT_ARCHS)}")
    mk = recipe.get("architecture")
    if ours == "auto" and mk:
        names = [tgt for name, tgt in MERGEKIT_ARCH_NAMES.items() if name.startswith(str(mk).lower())]
        compatible = [n for n in names if source_type in SOURCES[n]]
        if not names:
            raise ConfigError(f"{field_prefix}.architecture", f"no MoE output named {mk!r}",
                              "use mixtral, qwen or qwen3 (or set output_arch)")
        if not compatible:
            raise ConfigError(f"{field_prefix}.architecture", f"{mk!r} outputs cannot hold {source_type} experts",
                              f"drop it: {source_type} experts become {DEFAULT_OUTPUT.get(source_type, '?')}")
        return compatible[0]
    if ours == "auto":
        if source_type not in DEFAULT_OUTPUT:
            raise ConfigError(f"{field_prefix}.base_model", f"no MoE output for {source_type!r} models",
                              f"use experts of type {', '.join(DEFAULT_OUTPUT)}")
        return DEFAULT_OUTPUT[source_type]
    if source_type not in SOURCES[ours]:
        raise ConfigError(f"{field_prefix}.output_arch", f"{ours} cannot reproduce {source_type} experts exactly",
                          f"use output_arch={DEFAULT_OUTPUT.get(source_type, 'auto')} (or auto)")
    return ours


def architecture_findings(base: Mapping[str, Any], output: str, field_prefix: str) -> list[str]:
    """Features of the source that the output cannot represent; returns informational findings."""
    mt, where = base["model_type"], f"{field_prefix}.base_model"
    findings: list[str] = []
    if mt == "llama" and (base.get("attention_bias") or base.get("mlp_bias")):
        raise ConfigError(where, f"Llama model with attention_bias/mlp_bias cannot become {output} exactly",
                          "use experts without biases")
    if mt == "phi3":
        rope = base.get("rope_parameters") or base.get("rope_scaling") or {}
        prf = float(rope.get("partial_rotary_factor", base.get("partial_rotary_factor", 1.0)))
        if prf != 1.0:
            raise ConfigError(where, f"Phi-3 model with partial_rotary_factor={prf} (Mixtral rotates whole heads)",
                              "use Phi-3 experts with full rotary embeddings (Phi-3-mini/medium)")
        if rope.get("rope_type") in ("longrope", "su", "yarn"):
            findings.append("longrope Phi-3: a forward pass is exact, but cached generation that crosses "
                            "original_max_position_embeddings keeps short-factor keys (Phi-3 recomputes them)")
    sliding = [t for t in base.get("layer_types") or [] if t == "sliding_attention"]
    if sliding and output != "qwen2_moe":
        raise ConfigError(where, f"{mt} model with per-layer sliding windows cannot become {output} exactly",
                          "use experts without sliding-window layers")
    if output == "mixtral" and base.get("num_key_value_heads") and base["num_attention_heads"] % base["num_key_value_heads"]:
        raise ConfigError(where, "num_attention_heads is not a multiple of num_key_value_heads", "use a valid model")
    return findings


def weights_present(path: str, where: str) -> None:
    """The folder has weights (safetensors or pickle), else a ConfigError for ``where``."""
    p = Path(path)
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not any((p / n).exists() for n in names):
        raise ConfigError(where, f"{p} has no weights (model.safetensors / pytorch_model.bin)",
                          "point at a complete model folder")


def has_tokenizer(path: str | Path) -> bool:
    """A usable tokenizer donor: tokenizer_config.json plus tokenizer.json or tokenizer.model."""
    p = Path(path)
    return (p / "tokenizer_config.json").exists() and ((p / "tokenizer.json").exists() or (p / "tokenizer.model").exists())




def check_stackable(base_path: str, base_cfg: Mapping[str, Any], experts: tuple[ExpertSpec, ...],
                    shared: tuple[ExpertSpec, ...], field_prefix: str) -> None:
    """Every expert is a model of the base's type and shapes, with weights (so the MoE can stack them)."""
    source_type = base_cfg.get("model_type")
    weights_present(base_path, f"{field_prefix}.base_model")
    for where, spec in ([(f"{field_prefix}.experts[{i}]", e) for i, e in enumerate(experts)]
                        + [(f"{field_prefix}.shared_experts[{i}]", e) for i, e in enumerate(shared)]):
        cfg = read_config(spec.path, f"{where}.source_model")
        if cfg.get("model_type") != source_type:
            raise ConfigError(f"{where}.source_model", f"is a {cfg.get('model_type')} model but the base is {source_type}",
                              "use experts of the base model's architecture")
        for key in SHAPE_KEYS:
            a = head_dim(base_cfg) if key == "head_dim" else base_cfg.get(key)
            b = head_dim(cfg) if key == "head_dim" else cfg.get(key)
            if a != b:
                raise ConfigError(f"{where}.source_model", f"{key}={b} differs from the base model's {a}",
                                  "use experts fine-tuned from the same base (same shapes)")
        weights_present(spec.path, f"{where}.source_model")
