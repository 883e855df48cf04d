"""Per-layer structure of a sliced merge: the output config's fix and the validation rule.

A passthrough that changes depth or moves layers keeps the donor's per-layer settings in
mergekit's output config; :func:`fix_output_config` makes them describe the merged layers (it is
installed around mergekit's ``_model_out_config`` by
:func:`~hpc_merge.mergekit_adapter.patches.mergekit_patches`, and used by evolution's in-memory
skeletons), and :func:`check_layer_structure` refuses at validation what no config can describe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError


def _layer_kinds(config: Any) -> list[str] | None:
    """Which layers hold a dense MLP and which an MoE block, for configs that derive it from indices."""
    n = getattr(config, "num_hidden_layers", None)
    if not n:
        return None
    if config.model_type == "glm4_moe":
        return ["dense" if i < config.first_k_dense_replace else "moe" for i in range(n)]
    if config.model_type in ("qwen2_moe", "qwen3_moe"):
        return ["moe" if i not in (config.mlp_only_layers or []) and config.num_experts > 0
                and (i + 1) % config.decoder_sparse_step == 0 else "dense" for i in range(n)]
    return None


def carried_layers(sources: list[tuple[Any, int, int]]) -> tuple[list[str] | None, list[str] | None]:
    """``(layer_types, dense/moe kinds)`` the output layers of a sliced merge carry from their sources.

    ``sources`` is ``(config, start, end)`` per slice (its first source: the one passthrough
    copies). An output layer is its source layer: a sliding-window, conv or Mamba layer stays one,
    whatever the donor's pattern would say at its new position. None where a source has no such list.
    """
    types: list[str] | None = []
    kinds: list[str] | None = []
    for config, start, end in sources:
        t, k = getattr(config, "layer_types", None), _layer_kinds(config)
        types = types + list(t[start:end]) if types is not None and isinstance(t, list) else None
        kinds = kinds + k[start:end] if kinds is not None and k is not None else None
    return types, kinds


def _dense_prefix(kinds: list[str]) -> int | None:
    """k when ``kinds`` is k dense layers then only MoE layers (GLM-4-MoE's only form), else None."""
    k = kinds.index("moe") if "moe" in kinds else len(kinds)
    return k if all(x == "moe" for x in kinds[k:]) else None


def fix_output_config(merge_config: Any | None, config: Any) -> None:
    """Make the output config of a merge describe its layers (called on mergekit's output config).

    A sliced merge (passthrough) sets ``num_hidden_layers`` but keeps the donor's per-layer
    settings: transformers 5 refuses a ``layer_types`` of the old length, and a layer moved to a
    position where the donor's pattern says otherwise (a Mamba layer where attention was, a dense
    MLP where an MoE block was) loads with its weights missing — random values. ``layer_types``
    and GLM-4-MoE's ``first_k_dense_replace`` are set from the source layers (Qwen-MoE models with
    dense layers are refused at validation); a depth change without slices (or without a
    ``merge_config``: evolution's skeletons when the recipe is not known) repeats the donor's
    ``layer_types`` pattern. Used on every merge's output config (``patches.output_config_fixed``)
    and by evolution's in-memory skeletons, so both describe the same layers.
    """
    n = getattr(config, "num_hidden_layers", None)
    stored = isinstance(vars(config).get("layer_types"), list)  # Mamba derives it (read-only property)
    if merge_config is not None and merge_config.slices and n:
        sources = [(s.sources[0].model.config(), *s.sources[0].layer_range) for s in merge_config.slices]
        types, kinds = carried_layers(sources)
        if types is not None and len(types) == n and stored:
            config.layer_types = types
        if kinds is not None and len(kinds) == n and config.model_type == "glm4_moe":
            k = _dense_prefix(kinds)
            if k is None:  # refused at validation (check_support); never write such a model
                raise RuntimeError("glm4_moe: dense layers after MoE layers cannot be described by its config")
            config.first_k_dense_replace = k
    types_ = getattr(config, "layer_types", None)
    if stored and types_ and n and len(types_) != n:
        config.layer_types = [types_[i % len(types_)] for i in range(n)]


def check_layer_structure(recipe: dict[str, Any], config: Any, ref_paths: dict[str, Path], field: str,
                           ref_field: str) -> None:
    """Qwen-MoE models have no dense layers (mergekit cannot merge them); a sliced GLM-4-MoE
    merge keeps its dense layers first (its config cannot say otherwise)."""
    model_type = config.model_type
    if model_type in ("qwen2_moe", "qwen3_moe") and "dense" in (_layer_kinds(config) or []):
        raise ConfigError(ref_field, f"architecture {model_type}: the model has dense-MLP layers (mlp_only_layers / "
                          "decoder_sparse_step); mergekit 0.1.5 merges Qwen-MoE models only when every layer is MoE "
                          "(it would crash mid-job or drop the experts)", "merge an all-MoE checkpoint")
    if model_type != "glm4_moe" or not recipe.get("slices"):
        return
    from transformers import AutoConfig

    sources = []
    for sl in recipe["slices"]:
        src = sl["sources"][0]
        path = ref_paths.get(str(src["model"]))
        if path is None:
            return  # an earlier stage's output: not built yet
        sources.append((AutoConfig.from_pretrained(str(path)), *src["layer_range"]))
    _, kinds = carried_layers(sources)
    if kinds is not None and _dense_prefix(kinds) is None:
        raise ConfigError(f"{field}.slices", f"architecture glm4_moe: this passthrough puts dense-MLP layers after MoE "
                          f"layers ({' '.join(k[0] for k in kinds)}; d = dense, m = MoE), which its config "
                          "(first_k_dense_replace) cannot describe",
                          "keep the source's first dense layers at the start of the stack")
