"""The one thin layer between hpc_merge and mergekit (0.1.5 line).

Everything mergekit-specific lives here: the recipe schema check (mergekit silently ignores
unknown keys and reports most errors late, in mixed exception types), translation of our recipe
into a ``MergeConfiguration``, ``MergeOptions``, in-process execution with progress, and the
workarounds for known mergekit bugs (see ``../shared/notes/mergekit-facts.md``):

- arbitrary tokenizer/config donor without a base model  -> deterministic donor (base, else first);
- passthrough changing the layer count leaves ``layer_types`` stale -> rebuilt;
- process-wide loader cache reads rewritten inputs stale  -> cleared before every merge;
- weights written 0600                                     -> fixed by ``atomic_dir``.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from pathlib import Path
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


# --------------------------------------------------------------------------- schema check
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


def check_recipe(recipe: dict[str, Any], field: str = "merge", stage_names: tuple[str, ...] = ()) -> None:
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
    """DELLA samples densities in density ± epsilon, which must stay inside (0, 1)."""
    top = recipe.get("parameters") or {}
    for i, entry in enumerate(recipe.get("models") or []):
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


# --------------------------------------------------------------------------- translation
def model_refs(recipe: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(field, ref), ...]`` for every model reference in ``recipe``, in order of appearance."""
    out: list[tuple[str, str]] = []
    if recipe.get("base_model"):
        out.append(("base_model", str(recipe["base_model"])))
    for i, e in enumerate(recipe.get("models") or []):
        out.append((f"models[{i}].model", str(e["model"])))
    for i, sl in enumerate(recipe.get("slices") or []):
        if sl.get("base_model"):
            out.append((f"slices[{i}].base_model", str(sl["base_model"])))
        for j, src in enumerate(sl.get("sources") or []):
            out.append((f"slices[{i}].sources[{j}].model", str(src["model"])))
    ts = recipe.get("tokenizer_source")
    if isinstance(ts, str) and ts not in ("base", "union"):
        out.append(("tokenizer_source", ts.removeprefix("model:")))
    return out


def to_mergekit(recipe: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """Our recipe -> a mergekit config dict: refs replaced by local paths, our own keys and nulls dropped."""
    def sub(obj: Any, key: str | None = None) -> Any:
        if isinstance(obj, dict):
            return {k: sub(v, k) for k, v in obj.items() if v is not None and k not in OWN_KEYS}
        if isinstance(obj, list):
            return [sub(v) for v in obj]
        if key in ("model", "base_model") and isinstance(obj, str):
            return paths.get(obj, obj)
        if key == "tokenizer_source" and isinstance(obj, str) and obj not in ("base", "union"):
            ref = obj.removeprefix("model:")
            return paths.get(ref, ref)
        return obj

    return sub(recipe)


def validate_with_mergekit(config: dict[str, Any], field: str = "merge") -> Any:
    """Build the ``MergeConfiguration`` (pydantic) and turn its errors into one line."""
    try:
        merge_config = _ordered_config_class().model_validate(config)
    except Exception as exc:  # pydantic ValidationError or mergekit's RuntimeError
        first = str(exc).strip().splitlines()
        msg = " ".join(first[:3]) if first else type(exc).__name__
        raise ConfigError(field, f"mergekit rejects the recipe: {msg}", "fix the recipe") from None
    order = [merge_config.base_model] if merge_config.base_model else []
    order += [m.model for m in merge_config.models or []]
    order += [src.model for s in merge_config.slices or [] for src in s.sources]
    merge_config._order = list(dict.fromkeys(order))
    return merge_config


def _ordered_config_class() -> type:
    """MergeConfiguration whose ``referenced_models`` keeps the recipe's order.

    mergekit builds that list from a set and takes its first element as the donor of config.json
    and of the tokenizer when there is no base model, so the donor changes from run to run. The
    order is captured at validation (mergekit reorders ``models`` while planning).
    """
    from mergekit.config import MergeConfiguration
    from pydantic import PrivateAttr

    global _ORDERED
    if _ORDERED is None:
        class OrderedMergeConfiguration(MergeConfiguration):
            _order: list = PrivateAttr(default_factory=list)

            def referenced_models(self):  # noqa: D102 - see the factory's docstring
                seen = super().referenced_models()
                return [m for m in self._order if m in seen] + [m for m in seen if m not in self._order]

        _ORDERED = OrderedMergeConfiguration
    return _ORDERED


_ORDERED: type | None = None


# --------------------------------------------------------------------------- execution
def merge_options(options: dict[str, Any]) -> Any:
    """``job.options`` -> ``MergeOptions`` (device ``auto`` picks cuda when there is a GPU)."""
    import torch
    from mergekit.common import parse_kmb
    from mergekit.options import MergeOptions

    opts = dict(options)
    if opts.get("out_shard_size") is not None:
        try:
            opts["out_shard_size"] = parse_kmb(str(opts["out_shard_size"]))
        except ValueError:
            raise ConfigError("job.options.out_shard_size", f"bad size {opts['out_shard_size']!r}",
                              "use bytes with an optional K/M/B suffix, e.g. 500M") from None
    device = opts.pop("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    opts["cuda"] = device == "cuda"
    opts["device"] = device
    if opts.get("num_threads") is None:
        opts.pop("num_threads", None)
    opts.update(copy_tokenizer=True, write_model_card=False, quiet=True)
    try:
        return MergeOptions(**opts)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise ConfigError("job.options", f"mergekit rejects the options: {' '.join(msg[:3])}", "fix job.options") from None


ProgressFn = Callable[[dict[str, Any]], None]


class _ProgressTqdm:
    """Stands in for ``tqdm.tqdm`` inside ``mergekit.graph``: counts executed graph tasks.

    mergekit's executor iterates its schedule through tqdm; counting that iteration is progress
    measured from the execution itself (tasks done, tensors loaded and saved).
    """

    def __init__(self, callback: ProgressFn):
        self.callback = callback

    def tqdm(self, iterable: Any = None, **_kw: Any) -> Any:
        items = list(iterable or [])
        total = len(items)
        kinds = [type(th.task()).__name__ for _, th in items] if items and isinstance(items[0], tuple) else []
        total_saves = sum(k == "SaveTensor" for k in kinds)
        total_loads = sum(k == "LoadTensor" for k in kinds)

        def gen():
            saves = loads = 0
            for n, item in enumerate(items):
                yield item
                if kinds:
                    saves += kinds[n] == "SaveTensor"
                    loads += kinds[n] == "LoadTensor"
                if n % 16 == 0 or n + 1 == total:
                    self.callback({"tasks_done": n + 1, "tasks_total": total, "tensors_done": saves,
                                   "tensors_total": total_saves, "loads_done": loads, "loads_total": total_loads})

        return gen()


def run_mergekit(config: dict[str, Any], out_dir: Path, options: dict[str, Any],
                 progress: ProgressFn | None = None) -> None:
    """Run one merge in-process into ``out_dir`` (a fresh folder; the caller makes it atomic)."""
    import mergekit.graph
    import mergekit.merge
    from mergekit.io.tasks import LoaderCache

    merge_config = validate_with_mergekit(config)
    mk_options = merge_options(options)
    LoaderCache.loaders.clear()  # inputs may have been rewritten since an earlier merge in this process
    real_tqdm, real_out_config = mergekit.graph.tqdm, mergekit.merge._model_out_config
    if progress is not None:
        mergekit.graph.tqdm = types.SimpleNamespace(tqdm=_ProgressTqdm(progress).tqdm)
    mergekit.merge._model_out_config = _with_layer_types_fixed(real_out_config)
    try:
        mergekit.merge.run_merge(merge_config, str(out_dir), options=mk_options)
    except SystemExit as exc:  # mergekit calls sys.exit on some bad configs
        raise RuntimeError(f"mergekit exited ({exc.code}) on this recipe") from None
    finally:
        mergekit.graph.tqdm, mergekit.merge._model_out_config = real_tqdm, real_out_config
        LoaderCache.loaders.clear()


def _with_layer_types_fixed(model_out_config: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap mergekit's ``_model_out_config`` so ``layer_types`` matches the new layer count.

    A passthrough that changes depth sets ``num_hidden_layers`` but leaves the donor's
    ``layer_types``; transformers 5 then refuses to save or load the config (after all shards are
    written). The new list repeats the donor's pattern.
    """
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        cfg = model_out_config(*args, **kwargs)
        types_ = getattr(cfg, "layer_types", None)
        n = getattr(cfg, "num_hidden_layers", None)
        if isinstance(types_, list) and types_ and n and len(types_) != n:
            cfg.layer_types = [types_[i % len(types_)] for i in range(n)]
        return cfg

    return wrapped


def copy_tokenizer_files(donor: Path, out_dir: Path) -> None:
    """Copy the donor's tokenizer files (used when mergekit's own copy is skipped)."""
    import shutil

    for name in os.listdir(donor):
        if name.startswith(("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "chat_template")):
            shutil.copy2(donor / name, out_dir / name)


def donor_has_tokenizer(donor: Path) -> bool:
    """mergekit needs tokenizer_config.json plus tokenizer.json or tokenizer.model in the donor."""
    return (donor / "tokenizer_config.json").is_file() and (
        (donor / "tokenizer.json").is_file() or (donor / "tokenizer.model").is_file())


__all__ = ["check_recipe", "to_mergekit", "run_mergekit", "merge_options", "method_specs", "model_refs",
           "donor_has_tokenizer", "validate_with_mergekit"]
