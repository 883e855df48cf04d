"""Validate an MoE recipe (mergekit-moe field names) into a :class:`MoePlan`, reading no weight.

mergekit's own checks run late, log instead of raising, and end in ``sys.exit(1)``; unknown keys
are silently ignored. Here every rule is checked up front from the models' ``config.json`` files,
and each failure is a one-line :class:`~hpc_merge.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError, did_you_mean

#: ``hidden`` is ours (a router fitted to the prompts' hidden states, see :mod:`hpc_merge.moe.gates`);
#: ``hidden_mergekit`` (mergekit's ``hidden``), ``hidden_avg``, ``hidden_last`` and the rest are mergekit's.
GATE_MODES = ("hidden", "hidden_mergekit", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
PROMPT_GATE_MODES = frozenset({"hidden", "hidden_mergekit", "hidden_avg", "hidden_last", "cheap_embed"})
OUTPUT_ARCHS = ("auto", "mixtral", "qwen2_moe", "qwen3_moe")
#: ``always_on``: the shared expert is added with weight 1 for every token (its gate is constant).
SHARED_GATES = ("prompts", "always_on")
DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}

RECIPE_KEYS = ("base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts",
               "architecture", "output_arch", "shared_expert_gate", "allow_identical_experts", "name")
EXPERT_KEYS = ("source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale")

#: Which source model types each output can reproduce exactly.
SOURCES = {"mixtral": ("llama", "mistral", "phi3"), "qwen2_moe": ("qwen2", "llama"), "qwen3_moe": ("qwen3",)}
DEFAULT_OUTPUT = {"llama": "mixtral", "mistral": "mixtral", "phi3": "mixtral", "qwen2": "qwen2_moe",
                  "qwen3": "qwen3_moe"}
#: mergekit's ``architecture`` names (it matches by prefix of these) -> ours.
MERGEKIT_ARCH_NAMES = {"mixtral": "mixtral", "qwen moe": "qwen2_moe", "qwen3 moe": "qwen3_moe"}
#: Config fields that must agree between the base and every expert for the experts to be stackable.
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size")


@dataclass(frozen=True)
class ExpertSpec:
    """One expert (or shared expert): the reference as written, its folder, its prompts."""

    ref: str
    path: str
    positive_prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass(frozen=True)
class MoePlan:
    """A validated recipe: resolved folders, the chosen output and which writer builds it."""

    base_ref: str
    base_path: str
    experts: tuple[ExpertSpec, ...]
    shared_experts: tuple[ExpertSpec, ...]
    gate_mode: str
    experts_per_token: int
    dtype: str | None
    source_type: str
    output_arch: str
    writer: str  # "mergekit" (its MoE API) or "own" (hpc_merge.moe.writers)
    shared_expert_gate: str = "prompts"
    findings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the job plan travels to SLURM nodes and into result.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MoePlan:
        """Inverse of :meth:`to_dict`."""
        d = dict(data)
        d["experts"] = tuple(ExpertSpec(**_tuplify(e)) for e in d["experts"])
        d["shared_experts"] = tuple(ExpertSpec(**_tuplify(e)) for e in d["shared_experts"])
        d["findings"] = tuple(d.get("findings") or ())
        return cls(**d)

    def recipe(self, resolved: bool = False) -> dict[str, Any]:
        """The plan as a mergekit-moe YAML mapping (model refs as written, or resolved folders)."""
        def exp(e: ExpertSpec) -> dict[str, Any]:
            out: dict[str, Any] = {"source_model": e.path if resolved else e.ref}
            if e.positive_prompts:
                out["positive_prompts"] = list(e.positive_prompts)
            if e.negative_prompts:
                out["negative_prompts"] = list(e.negative_prompts)
            for key in ("noise_scale", "residual_scale"):
                if getattr(e, key) is not None:
                    out[key] = getattr(e, key)
            return out

        rec: dict[str, Any] = {"base_model": self.base_path if resolved else self.base_ref,
                               "gate_mode": self.gate_mode, "experts_per_token": self.experts_per_token,
                               "experts": [exp(e) for e in self.experts]}
        if self.dtype:
            rec["dtype"] = self.dtype
        if self.shared_experts:
            rec["shared_experts"] = [exp(e) for e in self.shared_experts]
        return rec


def _tuplify(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


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


def _output_arch(recipe: Mapping[str, Any], source_type: str, field_prefix: str) -> str:
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


def _check_architecture(base: Mapping[str, Any], output: str, field_prefix: str) -> list[str]:
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


def _weights_present(path: str, where: str) -> None:
    p = Path(path)
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not any((p / n).exists() for n in names):
        raise ConfigError(where, f"{p} has no weights (model.safetensors / pytorch_model.bin)",
                          "point at a complete model folder")


def has_tokenizer(path: str | Path) -> bool:
    """A usable tokenizer donor: tokenizer_config.json plus tokenizer.json or tokenizer.model."""
    p = Path(path)
    return (p / "tokenizer_config.json").exists() and ((p / "tokenizer.json").exists() or (p / "tokenizer.model").exists())


def validate_recipe(recipe: Any, field_prefix: str = "moe",
                    resolve: Callable[[str, str], Path] | None = None) -> MoePlan:
    """Check ``recipe`` (a mergekit-moe mapping plus our keys) and return the plan. Reads no weight."""
    if resolve is None:
        from hpc_merge.models.resolve import resolve_model as resolve
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
    _weights_present(base_path, f"{field_prefix}.base_model")
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
        _weights_present(spec.path, f"{where}.source_model")

    output = _output_arch(recipe, source_type, field_prefix)
    findings = _check_architecture(base_cfg, output, field_prefix)
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
