"""Validate an MoE recipe (mergekit-moe field names) into a :class:`MoePlan`, reading no weight.

mergekit's own checks run late, log instead of raising, and end in ``sys.exit(1)``; unknown keys
are silently ignored. Here every rule is checked up front from the models' ``config.json`` files,
and each failure is a one-line :class:`~hpc_merge.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError, did_you_mean
from hpc_merge.moe.arch import architecture_findings, check_stackable, has_tokenizer, output_arch, read_config
from hpc_merge.moe.plan import ExpertSpec, MoePlan

#: ``hidden`` is ours (a router fitted to the prompts' hidden states, see :mod:`hpc_merge.moe.gates`);
#: ``hidden_mergekit`` (mergekit's ``hidden``), ``hidden_avg``, ``hidden_last`` and the rest are mergekit's.
GATE_MODES = ("hidden", "hidden_mergekit", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
PROMPT_GATE_MODES = frozenset({"hidden", "hidden_mergekit", "hidden_avg", "hidden_last", "cheap_embed"})
#: ``always_on``: the shared expert is added with weight 1 for every token (its gate is constant).
SHARED_GATES = ("prompts", "always_on")
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}

RECIPE_KEYS = ("base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts",
               "architecture", "output_arch", "shared_expert_gate", "allow_identical_experts", "name")
EXPERT_KEYS = ("source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale")


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}", f"unknown key{did_you_mean(str(key), allowed)}",
                              f"use only {', '.join(allowed)}")


def _prompts(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in value):
        raise ConfigError(where, "must be a list of non-empty strings", "write e.g. [\"solve 12+7\", \"integral of x\"]")
    return tuple(value)


def _scale(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(where, f"must be a finite number >= 0, got {value!r}", "give a float such as 0.5")
    return float(value)


def _expert(raw: Any, where: str, resolve: Callable[[str, str], Path]) -> ExpertSpec:
    if isinstance(raw, str):  # shorthand: just a model reference
        raw = {"source_model": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "must be a mapping with source_model", "write {source_model: MODEL, positive_prompts: [...]}")
    _check_keys(raw, EXPERT_KEYS, where)
    ref = raw.get("source_model")
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"{where}.source_model", "missing", "give a model path, Hub id, tiny:NAME or zoo:NAME")
    return ExpertSpec(ref=ref, path=str(resolve(ref, f"{where}.source_model")),
                      positive_prompts=_prompts(raw.get("positive_prompts"), f"{where}.positive_prompts"),
                      negative_prompts=_prompts(raw.get("negative_prompts"), f"{where}.negative_prompts"),
                      noise_scale=_scale(raw.get("noise_scale"), f"{where}.noise_scale"),
                      residual_scale=_scale(raw.get("residual_scale"), f"{where}.residual_scale"))


def _expert_list(raw: Any, where: str, resolve: Callable[[str, str], Path], required: bool) -> tuple[ExpertSpec, ...]:
    if raw is None and not required:
        return ()
    if not isinstance(raw, (list, tuple)) or (required and not raw):
        raise ConfigError(where, "must be a non-empty list of experts" if required else "must be a list",
                          "list experts as [{source_model: MODEL, positive_prompts: [...]}, ...]")
    return tuple(_expert(e, f"{where}[{i}]", resolve) for i, e in enumerate(raw))


def validate_recipe(recipe: Any, field_prefix: str = "moe",
                    resolve: Callable[[str, str], Path] | None = None) -> MoePlan:
    """Check ``recipe`` (a mergekit-moe mapping plus our keys) and return the plan. Reads no weight."""
    if resolve is None:
        from hpc_merge.resolve import resolve_model as resolve
    if not isinstance(recipe, Mapping):
        raise ConfigError(field_prefix, "missing or not a mapping", "choose a recipe: moe=stem, or mergekit_yaml=PATH")
    _check_keys(recipe, RECIPE_KEYS, field_prefix)
    gate_mode = recipe.get("gate_mode", "hidden")
    if gate_mode not in GATE_MODES:
        raise ConfigError(f"{field_prefix}.gate_mode", f"unknown gate mode {gate_mode!r}{did_you_mean(str(gate_mode), GATE_MODES)}",
                          f"use one of {', '.join(GATE_MODES)}")
    dtype = recipe.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"{field_prefix}.dtype", f"unknown dtype {dtype!r}", "use bfloat16, float16 or float32")
    shared_gate = recipe.get("shared_expert_gate") or "prompts"
    if shared_gate not in SHARED_GATES:
        raise ConfigError(f"{field_prefix}.shared_expert_gate", f"unknown value {shared_gate!r}", "use prompts or always_on")

    base_ref = recipe.get("base_model")
    if not isinstance(base_ref, str) or not base_ref.strip():
        raise ConfigError(f"{field_prefix}.base_model", "missing", "give the model whose attention/embeddings the MoE keeps")
    raw_experts = recipe.get("experts")
    if not isinstance(raw_experts, (list, tuple)) or not raw_experts:
        raise ConfigError(f"{field_prefix}.experts", "must be a non-empty list of experts",
                          "list experts as [{source_model: MODEL, positive_prompts: [...]}, ...]")
    k = recipe.get("experts_per_token", 2)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(raw_experts):
        raise ConfigError(f"{field_prefix}.experts_per_token", f"{k!r} is not between 1 and the {len(raw_experts)} experts",
                          f"use an integer from 1 to {len(raw_experts)}")

    # Prompt rules need only the recipe: check them before resolving (which may build models).
    raw_shared = recipe.get("shared_experts")
    needs_prompts = gate_mode in PROMPT_GATE_MODES
    for i, e in enumerate(raw_experts):
        if isinstance(e, Mapping):
            _check_keys(e, EXPERT_KEYS, f"{field_prefix}.experts[{i}]")
        if needs_prompts and isinstance(e, Mapping) and not e.get("positive_prompts"):
            raise ConfigError(f"{field_prefix}.experts[{i}].positive_prompts", f"missing; gate_mode={gate_mode} routes by prompts",
                              "give each expert positive_prompts, or use gate_mode=random")
    for i, e in enumerate(raw_shared if isinstance(raw_shared, (list, tuple)) else []):
        if isinstance(e, Mapping):
            _check_keys(e, EXPERT_KEYS, f"{field_prefix}.shared_experts[{i}]")
        if (needs_prompts and shared_gate == "prompts" and isinstance(e, Mapping) and not e.get("positive_prompts")):
            raise ConfigError(f"{field_prefix}.shared_experts[{i}].positive_prompts",
                              f"missing; with gate_mode={gate_mode} the shared expert's gate is computed from prompts",
                              "give it positive_prompts, or set shared_expert_gate=always_on")

    resolve_fn = resolve
    base_path = str(resolve_fn(base_ref, f"{field_prefix}.base_model"))
    experts = _expert_list(raw_experts, f"{field_prefix}.experts", resolve_fn, required=True)
    shared = _expert_list(raw_shared, f"{field_prefix}.shared_experts", resolve_fn, required=False)

    if needs_prompts and len(experts) > 1:
        first = (experts[0].positive_prompts, experts[0].negative_prompts)
        if all((e.positive_prompts, e.negative_prompts) == first for e in experts[1:]):
            raise ConfigError(f"{field_prefix}.experts", "all experts have the same prompts, so the router cannot tell them apart",
                              "give each expert prompts typical of what it should handle")
    if len(experts) > 1 and len({e.path for e in experts}) == 1 and not recipe.get("allow_identical_experts"):
        raise ConfigError(f"{field_prefix}.experts", "all experts are the same model: a bigger model with the same outputs",
                          f"use different experts, or add {field_prefix}.allow_identical_experts=true (e.g. to train the router later)")

    base_cfg = read_config(base_path, f"{field_prefix}.base_model")
    source_type = base_cfg.get("model_type")
    check_stackable(base_path, base_cfg, experts, shared, field_prefix)

    output = output_arch(recipe, source_type, field_prefix)
    findings = architecture_findings(base_cfg, output, field_prefix)
    if shared and output != "qwen2_moe":
        raise ConfigError(f"{field_prefix}.shared_experts", f"{output} has no shared experts",
                          "remove shared_experts (only Qwen2-MoE outputs have one)")
    if len(shared) > 1:
        raise ConfigError(f"{field_prefix}.shared_experts", f"{len(shared)} given; Qwen2-MoE holds exactly one",
                          "keep one shared expert")
    if shared_gate == "always_on" and not shared:
        findings.append("shared_expert_gate=always_on has no effect without shared_experts")
    if needs_prompts and not has_tokenizer(base_path):
        raise ConfigError(f"{field_prefix}.base_model", f"{base_path} has no tokenizer; gate_mode={gate_mode} tokenizes prompts",
                          "use a base model folder with tokenizer files, or gate_mode=random")
    if not has_tokenizer(base_path):
        findings.append("base model has no tokenizer: the output will have none")

    own = (output == "qwen2_moe" and not shared) or source_type == "phi3"
    return MoePlan(base_ref=base_ref, base_path=base_path, experts=experts, shared_experts=shared,
                   gate_mode=gate_mode, experts_per_token=k, dtype=DTYPES[dtype] if dtype else None,
                   source_type=source_type, output_arch=output, writer="own" if own else "mergekit",
                   shared_expert_gate=shared_gate, findings=tuple(findings))
