"""Recipe schema check: what mergekit would reject late (mixed exception types) or ignore silently.

mergekit ignores unknown keys (``densty: 0.5`` leaves density at 1.0) and reports a missing base
model or a wrong model count only inside ``run_merge``; here every such problem is one
:class:`~hpc_merge.errors.ConfigError` naming the field, checked from the methods' own specs.
"""

from __future__ import annotations

import math
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
    check_values(recipe, field)
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
                if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) for x in lr) and 0 <= lr[0] <= lr[1]):
                    # [n, n] is an empty slice: no layer, but mergekit takes the embeddings from the first
                    # slice's model and the head from the last's (how a DFS path names its io model)
                    raise ConfigError(f"{f}.layer_range", f"bad layer range {lr!r}", "use [start, end) with 0 <= start <= end")
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
        listed = {str(entry["model"]) for entry in recipe["models"]}
        if p.scope.value == "input" and base and str(base) not in listed:  # mergekit adds the base as one more input
            raise ConfigError(f"{field}.base_model", f"{spec.name} merges the base model in as another input, "
                              f"and it has no {p.name}",
                              f"remove base_model, or list it under {field}.models with a {p.name}")
        for i, entry in enumerate(recipe["models"]):
            if p.scope.value == "non_base" and base and str(entry["model"]) == str(base):
                continue
            if p.name not in (entry.get("parameters") or {}):
                raise ConfigError(f"{field}.models[{i}].parameters.{p.name}", f"required by {spec.name}",
                                  f"give each model a {p.name} (or set {field}.parameters.{p.name})")


#: Value ranges of mergekit's method parameters, from what each method does with them:
#: (low, high, low included, high included); None = unbounded on that side. Every value must be
#: finite. ``weight`` may be negative (task negation); a density of 0 keeps nothing (DARE divides by it).
PARAM_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "weight": (None, None, False, False), "scale": (None, None, False, False),
    "density": (0.0, 1.0, False, True), "select_topk": (0.0, 1.0, False, True),
    "t": (0.0, 1.0, True, True), "gamma": (0.0, 1.0, True, False), "epsilon": (0.0, 1.0, True, False),
    "lambda": (0.0, None, True, False), "r": (0.0, 1.0, True, True), "alpha": (0.0, 1.0, True, True),
    "tol": (0.0, None, False, False), "eps": (0.0, None, False, False), "max_iter": (1.0, None, True, False),
    "residual_weight": (None, None, False, False),
}
#: Parameters that are switches (mergekit reads them as booleans).
BOOL_PARAMS = frozenset({"normalize", "int8_mask", "rescale", "filter_wise", "normalize_weights",
                         "nuslerp_row_wise", "nuslerp_flatten"})


def _range_text(name: str) -> str:
    lo, hi, lo_in, hi_in = PARAM_RANGES[name]
    if lo is None and hi is None:
        return "a finite number"
    if hi is None:
        return f"a number {'>=' if lo_in else '>'} {lo:g}"
    return f"a number in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def _check_param_value(name: str, value: Any, field: str) -> None:
    """One parameter value (scalar, gradient or filter list) within its method-independent range."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                if "value" in item:
                    _check_param_value(name, item["value"], f"{field}[{i}].value")
            else:
                _check_param_value(name, item, f"{field}[{i}]")
        return
    if name in BOOL_PARAMS:
        if not isinstance(value, bool):
            raise ConfigError(field, f"{value!r} is not true or false", f"set {name}: true or false")
        return
    if name not in PARAM_RANGES:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(field, f"{value!r} is not a finite number", "give a finite number")
        return
    lo, hi, lo_in, hi_in = PARAM_RANGES[name]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value >= lo if lo_in else value > lo
    if ok and hi is not None:
        ok = value <= hi if hi_in else value < hi
    if not ok:
        raise ConfigError(field, f"{value!r} is not {_range_text(name)}", f"give {name} as {_range_text(name)}")


def _check_params_values(params: Any, field: str) -> None:
    if isinstance(params, dict):
        for key, value in params.items():
            _check_param_value(str(key), value, f"{field}.{key}")


def check_values(recipe: Any, field: str = "merge") -> None:
    """Types and ranges of a recipe's values, without mergekit (fast: runs before any import of it).

    Shapes this does not understand are left to :func:`check_recipe`, which names them.
    """
    if not isinstance(recipe, dict):
        return
    method = recipe.get("merge_method")
    if method is not None and not (isinstance(method, str) and method.strip()):
        raise ConfigError(f"{field}.merge_method", f"{method!r} is not a method name", "give one name, e.g. ties")
    for key in ("dtype", "out_dtype"):
        value = recipe.get(key)
        if value is not None and value not in DTYPES:
            raise ConfigError(f"{field}.{key}", f"unknown dtype {value!r}{did_you_mean(str(value), DTYPES)}",
                              f"use one of {', '.join(DTYPES)}")
    for key in ("base_model", "tokenizer_source", "chat_template"):
        value = recipe.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{field}.{key}", f"{value!r} is not a string", "give a model reference or name")
    _check_params_values(recipe.get("parameters"), f"{field}.parameters")
    for i, entry in enumerate(recipe.get("models") or [] if isinstance(recipe.get("models"), list) else []):
        if isinstance(entry, dict):
            if entry.get("model") is not None and not isinstance(entry["model"], str):
                raise ConfigError(f"{field}.models[{i}].model", f"{entry['model']!r} is not a model reference",
                                  "give a model path, Hub id, tiny:NAME or zoo:NAME")
            _check_params_values(entry.get("parameters"), f"{field}.models[{i}].parameters")
    for i, sl in enumerate(recipe.get("slices") or [] if isinstance(recipe.get("slices"), list) else []):
        if not isinstance(sl, dict):
            continue
        _check_params_values(sl.get("parameters"), f"{field}.slices[{i}].parameters")
        if "residual_weight" in sl:
            _check_param_value("residual_weight", sl["residual_weight"], f"{field}.slices[{i}].residual_weight")
        for j, src in enumerate(sl.get("sources") or [] if isinstance(sl.get("sources"), list) else []):
            if isinstance(src, dict):
                _check_params_values(src.get("parameters"), f"{field}.slices[{i}].sources[{j}].parameters")
