"""Recipe schema check: what mergekit would reject late (mixed exception types) or ignore silently.

mergekit ignores unknown keys (``densty: 0.5`` leaves density at 1.0) and reports a missing base
model or a wrong model count only inside ``run_merge``; here every such problem is one
:class:`~hpc_merge.errors.ConfigError` naming the field, checked from the methods' own specs.
"""

from __future__ import annotations

from typing import Any

from hpc_merge.errors import ConfigError, did_you_mean

#: Keys a recipe may hold besides mergekit's own: our recipe name and multi-stage merges.
OWN_KEYS = ("name", "stages")
RECIPE_KEYS = ("merge_method", "base_model", "models", "slices", "modules", "parameters", "dtype",
               "out_dtype", "tokenizer_source", "tokenizer", "chat_template")
MODEL_KEYS = ("model", "parameters")
SLICE_KEYS = ("sources", "base_model", "residual_weight", "parameters")
SOURCE_KEYS = ("model", "layer_range", "parameters")
DTYPES = ("float32", "float16", "bfloat16", "fp32", "fp16", "bf16")


def method_specs() -> dict[str, Any]:
    """``{name: MergeMethodSpec}`` of every merge method mergekit registers."""
    from mergekit.merge_methods import registered_methods

    return {m.spec.name: m.spec for m in registered_methods()}


def _check_keys(obj: Any, allowed: tuple[str, ...], field: str) -> None:
    if not isinstance(obj, dict):
        raise ConfigError(field, f"expected a mapping, got {type(obj).__name__}", "see conf/merge/*.yaml for the shape")
    for key in obj:
        if key not in allowed:
            raise ConfigError(f"{field}.{key}", f"unknown key{did_you_mean(str(key), allowed)}",
                              f"use one of: {', '.join(allowed)}")


def _check_value(value: Any, field: str) -> None:
    """A parameter value: scalar, gradient (list of numbers) or filter list ([{filter, value}, ...])."""
    if isinstance(value, bool | int | float | str) or value is None:
        return
    if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
        return
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _check_keys(item, ("filter", "value"), f"{field}[{i}]")
            if "value" not in item:
                raise ConfigError(f"{field}[{i}]", "filter entry without a value",
                                  "write {filter: self_attn, value: 0.5}; a last entry without filter is the default")
            _check_value(item["value"], f"{field}[{i}].value")
        return
    raise ConfigError(field, f"bad parameter value {value!r}",
                      "use a number, a gradient list [0.2, 0.8] or a filter list [{filter: mlp, value: 0.5}, {value: 0.3}]")


def _check_params(params: Any, spec: Any, allowed_scopes: tuple[str, ...], field: str) -> None:
    if params is None:
        return
    names = [p.name for p in spec.parameters if p.scope.value in allowed_scopes]
    if not isinstance(params, dict):
        raise ConfigError(field, "expected a mapping of parameter names to values", "e.g. {weight: 0.5}")
    for key, value in params.items():
        if key not in names:
            all_names = [p.name for p in spec.parameters]
            where = "here" if key in all_names else f"for {spec.name}"
            raise ConfigError(f"{field}.{key}", f"unknown parameter {where}{did_you_mean(str(key), names)}",
                              f"{spec.name} takes {', '.join(names) or 'no parameters'} here")
        _check_value(value, f"{field}.{key}")


def check_recipe(recipe: dict[str, Any], field: str = "merge") -> None:
    """Raise :class:`ConfigError` for anything mergekit would reject late or silently ignore."""
    _check_keys(recipe, RECIPE_KEYS + OWN_KEYS, field)
    specs = method_specs()
    method = recipe.get("merge_method")
    if not method:
        raise ConfigError(f"{field}.merge_method", "missing", f"choose one of {', '.join(sorted(specs))}")
    if method not in specs:
        raise ConfigError(f"{field}.merge_method", f"unknown method {method!r}{did_you_mean(str(method), specs)}",
                          f"use one of {', '.join(sorted(specs))}")
    spec = specs[method]
    given = [k for k in ("models", "slices", "modules") if recipe.get(k)]
    if len(given) != 1:
        raise ConfigError(field, f"needs exactly one of models / slices / modules, got {given or 'none'}",
                          "list the input models under models: (or slices: for layer ranges)")
    if recipe.get("dtype") and recipe["dtype"] not in DTYPES:
        raise ConfigError(f"{field}.dtype", f"unknown dtype {recipe['dtype']!r}", f"use one of {', '.join(DTYPES)}")
    _check_params(recipe.get("parameters"), spec, ("shared", "input", "non_base"), f"{field}.parameters")
    base = recipe.get("base_model")
    if spec.contract.base.value == "required" and not base:
        raise ConfigError(f"{field}.base_model", f"{method} needs a base model", "set base_model: ${models.base}")
    if spec.contract.base.value == "forbidden" and base:
        raise ConfigError(f"{field}.base_model", f"{method} takes no base model", "remove base_model")
    if recipe.get("models"):
        if not isinstance(recipe["models"], list):
            raise ConfigError(f"{field}.models", "expected a list", "write models: [{model: ...}, ...]")
        for i, entry in enumerate(recipe["models"]):
            _check_keys(entry, MODEL_KEYS, f"{field}.models[{i}]")
            if not entry.get("model"):
                raise ConfigError(f"{field}.models[{i}].model", "missing", "give a model path, Hub id, tiny:NAME or zoo:NAME")
            _check_params(entry.get("parameters"), spec, ("input", "non_base"), f"{field}.models[{i}].parameters")
        refs = {str(e["model"]) for e in recipe["models"]} | ({str(base)} if base else set())
        _check_required(recipe, spec, field, base)
        n = len(refs)
        c = spec.contract
        if n < c.min_inputs or (c.max_inputs is not None and n > c.max_inputs):
            want = f"{c.min_inputs}" + (f"..{c.max_inputs}" if c.max_inputs != c.min_inputs else "")
            raise ConfigError(f"{field}.models", f"{method} takes {want} input models (base included), got {n}",
                              "add or remove models")
        non_base = len(refs - ({str(base)} if base else set()))
        if (c.min_non_base and non_base < c.min_non_base) or (c.max_non_base is not None and non_base > c.max_non_base):
            raise ConfigError(f"{field}.models", f"{method} takes {c.min_non_base}..{c.max_non_base} non-base models, got {non_base}",
                              "add or remove models")
    if recipe.get("slices"):
        for i, sl in enumerate(recipe["slices"]):
            _check_keys(sl, SLICE_KEYS, f"{field}.slices[{i}]")
            _check_params(sl.get("parameters"), spec, ("shared", "input", "non_base"), f"{field}.slices[{i}].parameters")
            if not sl.get("sources"):
                raise ConfigError(f"{field}.slices[{i}].sources", "missing", "list sources: [{model: ..., layer_range: [0, 8]}]")
            for j, src in enumerate(sl["sources"]):
                f = f"{field}.slices[{i}].sources[{j}]"
                _check_keys(src, SOURCE_KEYS, f)
                lr = src.get("layer_range")
                if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) for x in lr) and 0 <= lr[0] < lr[1]):
                    raise ConfigError(f"{f}.layer_range", f"bad layer range {lr!r}", "use [start, end) with 0 <= start < end")
                _check_params(src.get("parameters"), spec, ("input", "non_base"), f"{f}.parameters")
    if spec.name.startswith("della"):
        _check_della(recipe, field)
    ts = recipe.get("tokenizer_source")
    if ts is not None and not isinstance(ts, str):
        raise ConfigError(f"{field}.tokenizer_source", f"bad value {ts!r}", "use base, union or model:REF")
    if method == "linear" and ts and base:
        weights = {str(e["model"]): (e.get("parameters") or {}) for e in recipe.get("models") or []}
        if str(base) not in weights or "weight" not in weights[str(base)] and "weight" not in (recipe.get("parameters") or {}):
            raise ConfigError(f"{field}.models", "linear with tokenizer_source needs a weight on the base model",
                              "list the base model under models with parameters: {weight: ...}")


def _numbers(value: Any) -> list[float]:
    """Every number inside a parameter value (scalar, gradient or filter list)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v.get("value") if isinstance(v, dict) else v)]
    return []


def _check_della(recipe: dict[str, Any], field: str) -> None:
    """DELLA samples densities in density ± epsilon, which must stay inside (0, 1).

    The base model listed among ``models`` (the form mergekit's docs use) is not sampled: mergekit
    never reads that entry's parameters, so its defaults must not refuse the recipe.
    """
    top = recipe.get("parameters") or {}
    base = recipe.get("base_model")
    for i, entry in enumerate(recipe.get("models") or []):
        if base is not None and str(entry.get("model")) == str(base):
            continue
        params = {**top, **(entry.get("parameters") or {})}
        eps = _numbers(params.get("epsilon", 0.15))
        for d in _numbers(params.get("density", 1.0)):
            for e in eps:
                if not (0 < d - e and d + e < 1):
                    raise ConfigError(f"{field}.models[{i}].parameters.density",
                                      f"density {d} ± epsilon {e} leaves (0, 1)",
                                      "lower the density or epsilon so that density + epsilon < 1 and density - epsilon > 0")


def _check_required(recipe: dict[str, Any], spec: Any, field: str, base: Any) -> None:
    """Every required per-input parameter is given globally or on each (non-base) model."""
    top = recipe.get("parameters") or {}
    for p in spec.parameters:
        if not p.required:
            continue
        if p.scope.value == "shared":
            if p.name not in top:
                raise ConfigError(f"{field}.parameters.{p.name}", f"required by {spec.name}", f"set {field}.parameters.{p.name}")
            continue
        if p.name in top:
            continue
        for i, entry in enumerate(recipe["models"]):
            if p.scope.value == "non_base" and base and str(entry["model"]) == str(base):
                continue
            if p.name not in (entry.get("parameters") or {}):
                raise ConfigError(f"{field}.models[{i}].parameters.{p.name}", f"required by {spec.name}",
                                  f"give each model a {p.name} (or set {field}.parameters.{p.name})")
