"""Which architectures merge correctly, the fixes that make them, and the check that refuses the rest.

This is the one place that reads mergekit's architecture tables (``mergekit/_data/architectures``).
mergekit 0.1.5 copies exactly the tensors its table for an architecture names: a table that asks
for a tensor transformers 5 does not write crashes the merge mid-job, and a checkpoint tensor the
table does not name is silently left out of the output (transformers then initialises it at
random). :data:`SUPPORT` is the single source of truth for what has been proven to work — the
architecture matrix test (``tests/integration/test_arch_matrix.py``) runs every cell of it, and
the README table is rendered from that run (``scripts/arch_matrix.py``) — and :func:`check_support`
is what ``hpc-merge`` validation asks before anything runs.

Fixes (applied by :func:`architecture_fixes` around every merge and by the validation check):

- Cohere without qk-norm: the table always asks for ``self_attn.q_norm``/``k_norm``; dropped when
  ``use_qk_norm`` is false (transformers 5 then has no such weights).
- GPT-NeoX: the table asks for ``attention.bias``/``masked_bias``/``rotary_emb.inv_freq``, buffers
  transformers 5 neither has nor writes; dropped (older checkpoints that still hold them merge too).
- No table at all (Qwen2-MoE): mergekit infers the tensor names from the checkpoint but then has
  no config key for the depth, so a passthrough that changes the layer count wrote a config with
  the old ``num_hidden_layers`` (transformers silently ignored the extra layers); the layer count
  is read from ``num_hidden_layers``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError

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


# ---------------------------------------------------------------- fixes to mergekit's tables

@dataclass(frozen=True)
class _Drop:
    """Table entries transformers 5 does not write for configs where ``applies(config)`` holds."""

    pattern: re.Pattern[str]
    applies: Callable[[Any], bool]


_DROPS: dict[str, _Drop] = {
    "cohere": _Drop(re.compile(r"\.self_attn\.[qk]_norm\.weight$"), lambda c: not getattr(c, "use_qk_norm", False)),
    "gpt_neox": _Drop(re.compile(r"\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$"), lambda c: True),
}


@functools.cache
def _module_class() -> type:
    """A ``ModuleArchitecture`` that filters another one's weights and/or fixes its depth key."""
    from mergekit.architecture.base import ModuleArchitecture

    class FixedModuleArchitecture(ModuleArchitecture):
        def __init__(self, inner: Any, drop: re.Pattern[str] | None, layers_key: str | None):
            self.inner, self.drop, self.layers_key = inner, drop, layers_key

        def _keep(self, weights: list[Any] | None) -> list[Any] | None:
            if weights is None or self.drop is None:
                return weights
            return [w for w in weights if not self.drop.search(w.name)]

        def pre_weights(self, config: Any) -> list[Any]:
            return self._keep(self.inner.pre_weights(config))

        def post_weights(self, config: Any) -> list[Any]:
            return self._keep(self.inner.post_weights(config))

        def layer_weights(self, index: int, config: Any) -> list[Any] | None:
            return self._keep(self.inner.layer_weights(index, config))

        def num_layers_config_key(self) -> str:
            return self.layers_key or self.inner.num_layers_config_key()

        def num_layers(self, config: Any) -> int:
            if self.layers_key:
                return int(getattr(config, self.layers_key))
            return self.inner.num_layers(config)

    return FixedModuleArchitecture


def fix_architecture(arch_info: Any, config: Any) -> Any:
    """mergekit's ``ModelArchitecture`` for ``config`` with our fixes applied (or unchanged)."""
    from mergekit.architecture.base import ModuleDefinition

    model_type = getattr(config, "model_type", "")
    drop = _DROPS.get(model_type)
    pattern = drop.pattern if drop and drop.applies(config) else None
    modules, changed = {}, False
    for name, mod in arch_info.modules.items():
        inner = mod.architecture
        layers_key = None
        if _inferred(inner) and getattr(config, "num_hidden_layers", None) is not None:
            layers_key = "num_hidden_layers"
        if pattern is None and layers_key is None:
            modules[name] = mod
            continue
        fixed = _module_class()(inner, pattern, layers_key)
        modules[name] = ModuleDefinition(architecture=fixed, weight_prefix=mod.weight_prefix, subfolder=mod.subfolder)
        changed = True
    return arch_info.model_copy(update={"modules": modules}) if changed else arch_info


def _inferred(module_arch: Any) -> bool:
    """True for a module mergekit inferred from tensor names (no table: no config key for depth)."""
    definition = getattr(module_arch, "definition", None)
    return definition is not None and not definition.num_layers_config_key and \
        getattr(definition, "override_num_layers", None) is not None


def architecture_info(merge_config: Any, options: Any, lookup: Callable[[Any, Any], Any] | None = None) -> Any:
    """mergekit's ``get_architecture_info`` for a merge, with the fixes for its output config's architecture."""
    if lookup is None:
        from mergekit.architecture import get_architecture_info as lookup
    info = lookup(merge_config, options)
    donor = merge_config.base_model or merge_config.referenced_models()[0]
    return fix_architecture(info, donor.config(trust_remote_code=options.trust_remote_code))


@contextlib.contextmanager
def architecture_fixes() -> Iterator[None]:
    """Within the block, mergekit's ``run_merge`` plans with the fixed architecture tables."""
    import mergekit.merge

    real = mergekit.merge.get_architecture_info
    mergekit.merge.get_architecture_info = lambda merge_config, options: architecture_info(merge_config, options, real)
    try:
        yield
    finally:
        mergekit.merge.get_architecture_info = real


# ---------------------------------------------------------------- per-layer structure of a sliced merge

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


def fix_output_config(merge_config: Any, config: Any) -> None:
    """Make the output config of a merge describe its layers (called on mergekit's output config).

    A sliced merge (passthrough) sets ``num_hidden_layers`` but keeps the donor's per-layer
    settings: transformers 5 refuses a ``layer_types`` of the old length, and a layer moved to a
    position where the donor's pattern says otherwise (a Mamba layer where attention was, a dense
    MLP where an MoE block was) loads with its weights missing — random values. ``layer_types``
    and GLM-4-MoE's ``first_k_dense_replace`` are set from the source layers (Qwen-MoE models with
    dense layers are refused at validation); a depth change without slices repeats the donor's
    ``layer_types`` pattern.
    """
    n = getattr(config, "num_hidden_layers", None)
    stored = isinstance(vars(config).get("layer_types"), list)  # Mamba derives it (read-only property)
    if merge_config.slices and n:
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


def _check_layer_structure(recipe: dict[str, Any], config: Any, ref_paths: dict[str, Path], field: str,
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
    from hpc_merge.mergekit_adapter.translate import model_refs

    ref_paths = {ref: paths[f"{field}.{sub}"] for sub, ref in model_refs(recipe) if f"{field}.{sub}" in paths}
    _check_layer_structure(recipe, config, ref_paths, field, ref_field)
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
