"""Which architectures merge correctly, and the validation check that refuses the rest.

With :mod:`~hpc_merge.mergekit_adapter.archfix`, the only place that reads mergekit's architecture
tables (``mergekit/_data/architectures``). mergekit 0.1.5 copies exactly the tensors its table for an architecture names: a table that asks
for a tensor transformers 5 does not write crashes the merge mid-job, and a checkpoint tensor the
table does not name is silently left out of the output (transformers then initialises it at
random). :data:`SUPPORT` is the single source of truth for what has been proven to work — the
architecture matrix test (``tests/integration/test_arch_matrix.py``) runs every cell of it, and
the README table is rendered from that run (``scripts/arch_matrix.py``) — and :func:`check_support`
is what ``hpc-merge`` validation asks before anything runs.

The fixes that make mergekit's tables fit transformers 5 are in
:mod:`~hpc_merge.mergekit_adapter.archfix`; the per-layer structure of sliced merges (output config
and its validation rule) in :mod:`~hpc_merge.mergekit_adapter.layerfix`. This module holds the
table of what is supported and the validation check that applies all of them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError
from hpc_merge.mergekit_adapter.archfix import fix_architecture
from hpc_merge.mergekit_adapter.layerfix import check_layer_structure
from hpc_merge.mergekit_adapter.translate import model_refs

#: Matrix columns: mergekit methods as the shipped recipes use them, a union-vocabulary merge,
#: a depth-changing passthrough and the identity proofs.
CELLS: dict[str, str] = {
    "linear": "linear",
    "ties": "ties",
    "dare_ties": "dare_ties",
    "slerp": "slerp",
    "model_stock": "model_stock",
    "task_arithmetic_union": "task_arithmetic + union vocab",
    "passthrough_depth": "passthrough (4→6 layers)",
    "identity": "identity (linear ×1, passthrough)",
}


@dataclass(frozen=True)
class ArchSupport:
    """One architecture's row: what its tiny model exercises and which cells are refused, why."""

    name: str
    quirks: str
    moe: bool = False
    fix: str = ""
    refused: dict[str, str] = field(default_factory=dict)


SUPPORT: dict[str, ArchSupport] = {
    "llama": ArchSupport("Llama", "GQA, SwiGLU"),
    "mistral": ArchSupport("Mistral", "GQA, sliding-window config"),
    "qwen2": ArchSupport("Qwen2 / Qwen2.5", "qkv biases, `layer_types`"),
    "qwen3": ArchSupport("Qwen3", "qk-norm"),
    "gemma": ArchSupport("Gemma", "tied embeddings, GeGLU, head_dim ≠ hidden/heads"),
    "gemma2": ArchSupport("Gemma 2", "tied, logit soft-capping, sliding/full alternation, pre+post norms"),
    "gemma3_text": ArchSupport("Gemma 3 (text)", "tied, qk-norm, 3:1 sliding pattern, local/global rope"),
    "phi3": ArchSupport("Phi-3", "fused qkv and gate_up"),
    "phi": ArchSupport("Phi-2", "partial rotary, biases, parallel block"),
    "granite": ArchSupport("Granite", "embedding/residual/attention/logit multipliers"),
    "olmo2": ArchSupport("OLMo 2", "qk-norm, post-norms"),
    "starcoder2": ArchSupport("StarCoder2", "LayerNorm + biases, sliding window"),
    "cohere": ArchSupport("Cohere (Command R)", "tied, parallel block, logit scale, qk-norm off",
                          fix="`q_norm`/`k_norm` dropped from mergekit's table when `use_qk_norm` is false"),
    "cohere2": ArchSupport("Cohere2 (Command R7B)", "tied, parallel block, 3:1 sliding pattern"),
    "stablelm": ArchSupport("StableLM 2", "partial rotary, qkv biases, LayerNorm"),
    "gpt_neox": ArchSupport("GPT-NeoX / Pythia", "partial rotary, parallel residual, fused qkv, biases",
                            fix="buffers `attention.bias`/`masked_bias`/`rotary_emb.inv_freq` dropped from mergekit's table"),
    "glm4": ArchSupport("GLM-4", "partial rotary, fused gate_up, post norms"),
    "arcee": ArchSupport("Arcee (AFM)", "ReLU² MLP without gate"),
    "apertus": ArchSupport("Apertus", "xIELU activation, qk-norm"),
    "mixtral": ArchSupport("Mixtral", "MoE (4 experts, top-2), fused experts", moe=True),
    "qwen2_moe": ArchSupport("Qwen2-MoE", "MoE + gated shared expert", moe=True,
                             fix="no mergekit table (tensor names inferred); depth read from `num_hidden_layers`"),
    "qwen3_moe": ArchSupport("Qwen3-MoE", "MoE, qk-norm", moe=True),
    "glm4_moe": ArchSupport("GLM-4-MoE", "first layer dense, routed + shared experts, score bias", moe=True),
    "granitemoehybrid": ArchSupport("Granite 4 (hybrid)", "Mamba-2 + attention layers, MoE + shared expert",
                                    moe=True),
    "falcon": ArchSupport("Falcon (40B/180B layout)", "new decoder: ln_attn + ln_mlp, grouped kv, parallel block"),
    "gpt2": ArchSupport("GPT-2", "learned positions, Conv1D, tied"),
    "gpt_bigcode": ArchSupport("GPTBigCode (StarCoder 1)", "multi-query attention, learned positions, tied"),
    "mamba": ArchSupport("Mamba", "selective state space, no attention, tied"),
    "lfm2": ArchSupport("LFM2", "short convolutions + attention layers, tied"),
}


def expected(model_type: str, cell: str) -> tuple[str, str]:
    """``("ok", "")`` or ``("refused", reason)`` for one matrix cell, from :data:`SUPPORT`."""
    reason = SUPPORT[model_type].refused.get(cell)
    return ("refused", reason) if reason else ("ok", "")


# ---------------------------------------------------------------- the validation check

def recipe_cells(recipe: dict[str, Any], layers: int | None) -> list[str]:
    """The matrix cells a recipe stands for (what :data:`SUPPORT` is asked about)."""
    method = str(recipe.get("merge_method"))
    cells = [method]
    if method == "task_arithmetic" and recipe.get("tokenizer_source") == "union":
        cells.append("task_arithmetic_union")
    if method == "passthrough" and recipe.get("slices") and layers is not None:
        depth = sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0] for s in recipe["slices"])
        if depth != layers:
            cells.append("passthrough_depth")
    return cells


def check_support(paths: dict[str, Path], recipe: dict[str, Any], field: str) -> list[str]:
    """Refuse (one :class:`ConfigError`) what mergekit 0.1.5 cannot merge correctly for these models.

    ``paths`` maps config fields to the stage's input folders (one architecture: ``archcheck``
    has checked that). Returns findings for the dry run. Reads configs and safetensors headers
    only; builds the model skeleton on the meta device (no weights) to see which tensors a
    correct output must contain.
    """
    from transformers import AutoConfig

    ref_field, ref_path = next(iter(paths.items()))
    config = AutoConfig.from_pretrained(str(ref_path))
    model_type = config.model_type
    arch = SUPPORT.get(model_type)
    info = _mergekit_table(config)
    if arch is not None:
        for cell in recipe_cells(recipe, getattr(config, "num_hidden_layers", None)):
            reason = arch.refused.get(cell)
            if reason:
                raise ConfigError(ref_field, f"{model_type} ({arch.name}): {CELLS.get(cell, cell)} is not supported: {reason}",
                                  "use another method (see the README's architecture table)")
        findings = [f"architecture {model_type} ({arch.name}): supported" + (f"; adapter fix: {arch.fix}" if arch.fix else "")]
    elif info is None:
        raise ConfigError(ref_field, f"architecture {model_type} has no mergekit 0.1.5 table and is not in hpc_merge's "
                          "tested list (mergekit would guess its tensor layout from the checkpoint)",
                          "use a supported architecture (see the README's architecture table)")
    else:
        findings = [f"architecture {model_type}: mergekit has a table for it, but hpc_merge has not tested it"]
    ref_paths = {ref: paths[f"{field}.{sub}"] for sub, ref in model_refs(recipe) if f"{field}.{sub}" in paths}
    check_layer_structure(recipe, config, ref_paths, field, ref_field)
    if info is not None:
        info = fix_architecture(info, config)
        _check_tensors(info, config, paths, model_type)
    return findings


def _mergekit_table(config: Any) -> Any:
    """mergekit's ``ModelArchitecture`` for ``config``, or None when it has no table (it infers)."""
    import logging

    from mergekit.architecture import arch_info_for_config

    logger = logging.getLogger("mergekit.architecture")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "No JSON architecture found" is our refusal, not a warning
    try:
        return arch_info_for_config(config) if getattr(config, "architectures", None) else None
    finally:
        logger.setLevel(level)


def _header_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for f in Path(folder).glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            names.update(k for k in json.loads(fh.read(n)) if k != "__metadata__")
    return names


def _check_tensors(info: Any, config: Any, paths: dict[str, Path], model_type: str) -> None:
    """Every tensor mergekit will ask for exists in every input, and none the model needs is left out."""
    from mergekit.architecture.conversion import can_convert_checkpoint_keys

    weights = info.all_weights(config)
    for fld, path in paths.items():
        names = _header_names(path)
        if not names:
            continue  # .bin checkpoints: mergekit reads them; we do not parse pickles here
        for w in weights:
            if w.optional or any(n in names for n in (w.name, *(w.aliases or ()), *(w.tied_names or ()))):
                continue
            if not any(can_convert_checkpoint_keys(model_type, names, n) for n in (w.name, *(w.aliases or ()))):
                raise ConfigError(fld, f"architecture {model_type}: mergekit 0.1.5's table asks for tensor {w.name}, "
                                  f"which {path} does not contain (the merge would fail mid-job)",
                                  "use a supported architecture or config variant (see the README's architecture table)")
    needed = _model_tensor_names(config)
    if needed is None:
        return
    covered = {n for w in weights for n in (w.name, *(w.aliases or ()), *(w.tied_names or ()))}
    # a table may name the checkpoint layout (per-expert, legacy) that transformers converts on load
    left_out = sorted(n for n in needed - covered if not can_convert_checkpoint_keys(model_type, covered, n))
    if left_out:
        raise ConfigError(next(iter(paths)), f"architecture {model_type}: mergekit 0.1.5's table does not cover "
                          f"{len(left_out)} tensor(s) this model has, e.g. {left_out[0]} (the output would miss "
                          "them and transformers would fill them with random values)",
                          "use a supported architecture or config variant (see the README's architecture table)")


def _model_tensor_names(config: Any) -> set[str] | None:
    """Tensors a transformers model of ``config`` loads (tied copies excluded), built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    try:
        with torch.device("meta"), no_init_weights():
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # not a causal LM transformers can build from the config alone (multimodal ...)
        return None
    names = set(model.state_dict().keys())
    try:
        from transformers.modeling_utils import _get_tied_weight_keys

        model.tie_weights()
        names -= set(_get_tied_weight_keys(model))
    except (ImportError, AttributeError, TypeError):
        pass
    return names
