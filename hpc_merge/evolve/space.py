"""The search space: which merge parameters CMA-ES moves, within which bounds, at which granularity.

A genotype is a vector in the unit cube [0, 1]^n (CMA-ES works best on a well-scaled box); each
coordinate (a :class:`Gene`) maps linearly onto one parameter value within its bounds. Decoding
gives one of our merge recipes (the same shape as ``conf/merge/*.yaml``), checked by the adapter's
``check_recipe``, so everything the merge job can run, evolution can propose, and the best
candidate exports as an ordinary recipe. Values are rounded (``decimals``) so that recipes read
well and two genotypes that merge identically share one cache entry.

Granularity of a searched parameter:
- ``model``: one value per model (per-input parameters) or one value (shared ones, e.g. slerp t);
- ``layer``: a gradient of ``layer_groups`` values, which mergekit interpolates across the layers;
- ``filter``: one value for ``self_attn``, one for ``mlp`` and one for every other tensor;
- ``filter_layer``: both: a gradient per filter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hpc_merge.errors import ConfigError, did_you_mean

#: Merge methods evolution supports, and the parameters each searches by default.
METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "dare_linear": ("weight", "density"),
    "slerp": ("t",),
    "della": ("weight", "density", "epsilon"),
    "della_linear": ("weight", "density", "epsilon"),
    "breadcrumbs": ("weight", "density", "gamma"),
    "breadcrumbs_ties": ("weight", "density", "gamma"),
}
#: Default bounds of every searchable parameter, and the range a bound may take at all.
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "weight": (0.0, 1.0), "density": (0.1, 1.0), "t": (0.0, 1.0), "epsilon": (0.01, 0.1), "gamma": (0.0, 0.05),
    "lambda": (0.5, 1.5),
}
#: Method-specific defaults: della's density ± epsilon must stay inside (0, 1).
METHOD_BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "della": {"density": (0.2, 0.85)}, "della_linear": {"density": (0.2, 0.85)},
}
LIMITS: dict[str, tuple[float, float]] = {
    "weight": (-2.0, 2.0), "density": (0.0, 1.0), "t": (0.0, 1.0), "epsilon": (0.0, 0.5), "gamma": (0.0, 0.5),
    "lambda": (0.0, 4.0),
}
GRANULARITIES = ("model", "layer", "filter", "filter_layer")
FILTERS = ("self_attn", "mlp")


@dataclass(frozen=True)
class Gene:
    """One coordinate of the genotype: the value of ``param`` for ``model`` (None = shared)."""

    param: str
    model: str | None
    filter: str | None  # None: the default entry (every tensor no filter matched)
    group: int  # index in the layer gradient
    lo: float
    hi: float

    @property
    def label(self) -> str:
        """Readable name, e.g. ``zoo:math.weight[mlp][1]`` (tables, plots, logs)."""
        where = self.model.split(":")[-1].split("/")[-1] if self.model else "shared"
        return f"{where}.{self.param}" + (f"[{self.filter}]" if self.filter else "") + f"[{self.group}]"


@dataclass(frozen=True)
class SearchSpace:
    """A method, its searched parameters with bounds, and the granularity; maps genotypes to recipes."""

    method: str
    models: tuple[str, ...]
    base_model: str | None = None
    params: tuple[tuple[str, float, float], ...] = ()
    granularity: str = "model"
    layer_groups: int = 1
    fixed: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # dtype, tokenizer_source...
    decimals: int = 4
    name: str = "evolved"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, ev: dict[str, Any], field_prefix: str = "evolve") -> SearchSpace:
        """Build and check a space from the ``evolve`` config section (errors name its fields)."""
        method = ev.get("method")
        if method not in METHOD_PARAMS:
            raise ConfigError(f"{field_prefix}.method", f"unknown or unsupported method {method!r}"
                              f"{did_you_mean(str(method), METHOD_PARAMS)}",
                              f"use one of {', '.join(METHOD_PARAMS)}")
        models = [str(m) for m in ev.get("models") or []]
        if not models or len(set(models)) != len(models):
            raise ConfigError(f"{field_prefix}.models", "needs a list of distinct models", "e.g. [${models.math}, ...]")
        base = ev.get("base_model")
        base = str(base) if base else None
        if base in models and method != "linear":
            raise ConfigError(f"{field_prefix}.models", f"the base model {base} is also listed",
                              "list only the fine-tunes; base_model is merged in by the method")
        if method == "slerp" and len(models) != 1:
            raise ConfigError(f"{field_prefix}.models", "slerp takes exactly one model besides base_model",
                              "list one model")
        defaults = {**DEFAULT_BOUNDS, **METHOD_BOUNDS.get(method, {})}
        params = ev.get("parameters") or {p: list(defaults[p]) for p in METHOD_PARAMS[method]}
        allowed = METHOD_PARAMS[method] + ("lambda",) if method not in ("linear", "slerp") else METHOD_PARAMS[method]
        checked = []
        for name, bounds in params.items():
            f = f"{field_prefix}.parameters.{name}"
            if name not in allowed:
                raise ConfigError(f, f"{method} cannot search {name!r}{did_you_mean(str(name), allowed)}",
                                  f"search some of {', '.join(allowed)}")
            if bounds is None:
                bounds = defaults[name]
            if not (isinstance(bounds, Sequence) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds)):
                raise ConfigError(f, f"bad bounds {bounds!r}", "give [low, high]")
            lo, hi = float(bounds[0]), float(bounds[1])
            lim = LIMITS[name]
            if not (lim[0] <= lo < hi <= lim[1]):
                raise ConfigError(f, f"bounds [{lo}, {hi}] not increasing within [{lim[0]}, {lim[1]}]",
                                  f"use low < high inside [{lim[0]}, {lim[1]}]")
            checked.append((str(name), lo, hi))
        if not checked:
            raise ConfigError(f"{field_prefix}.parameters", "nothing to search", "give at least one parameter")
        gran = ev.get("granularity", "model")
        if gran not in GRANULARITIES:
            raise ConfigError(f"{field_prefix}.granularity", f"unknown granularity {gran!r}{did_you_mean(str(gran), GRANULARITIES)}",
                              f"use one of {', '.join(GRANULARITIES)}")
        groups = int(ev.get("layer_groups") or 1)
        if "layer" in gran and groups < 2:
            raise ConfigError(f"{field_prefix}.layer_groups", f"{gran} needs at least 2 layer groups", "set layer_groups: 3")
        fixed = dict(ev.get("fixed") or {})
        clash = [p for p, _, _ in checked if p in fixed]
        if clash:
            raise ConfigError(f"{field_prefix}.fixed.{clash[0]}", "is both fixed and searched", "remove one")
        extra = {k: ev[k] for k in ("dtype", "out_dtype", "tokenizer_source") if ev.get(k) is not None}
        space = cls(method=method, models=tuple(models), base_model=base, params=tuple(checked),
                    granularity=gran, layer_groups=groups if "layer" in gran else 1, fixed=fixed, extra=extra,
                    decimals=int(ev.get("decimals", 4)), name=str(ev.get("name") or "evolved"))
        from hpc_merge.mergekit_adapter import check_recipe

        check_recipe(space.decode([0.5] * space.dim), field_prefix)  # anything else mergekit rejects, now
        return space

    # ------------------------------------------------------------------ genes
    def _is_shared(self, param: str) -> bool:
        from hpc_merge.mergekit_adapter import method_specs

        spec = method_specs()[self.method]
        return next(p.scope.value for p in spec.parameters if p.name == param) == "shared"

    @property
    def genes(self) -> tuple[Gene, ...]:
        """Every coordinate, in a fixed order: parameter, model, filter, layer group."""
        filters: tuple[str | None, ...] = (*FILTERS, None) if "filter" in self.granularity else (None,)
        out = []
        for param, lo, hi in self.params:
            owners: tuple[str | None, ...] = (None,) if self._is_shared(param) else self.models
            for model in owners:
                for flt in filters:
                    for g in range(self.layer_groups):
                        out.append(Gene(param, model, flt, g, lo, hi))
        return tuple(out)

    @property
    def dim(self) -> int:
        """Length of a genotype."""
        return len(self.genes)

    # ------------------------------------------------------------------ genotype <-> recipe
    def _value(self, values: list[float]) -> Any:
        """Gene values of one (param, model, filter) -> scalar or gradient."""
        return values[0] if self.layer_groups == 1 else list(values)

    def decode(self, x: Sequence[float]) -> dict[str, Any]:
        """Genotype (unit cube; clipped) -> recipe dict (``conf/merge`` shape)."""
        if len(x) != self.dim:
            raise ValueError(f"genotype has {len(x)} values, the space {self.dim}")
        grouped: dict[tuple[str, str | None], dict[str | None, list[float]]] = {}
        for gene, xi in zip(self.genes, x, strict=True):
            xi = min(max(float(xi), 0.0), 1.0) if math.isfinite(float(xi)) else 0.5
            v = round(gene.lo + xi * (gene.hi - gene.lo), self.decimals) + 0.0  # +0.0: no -0.0
            grouped.setdefault((gene.param, gene.model), {}).setdefault(gene.filter, []).append(v)
        shared: dict[str, Any] = {}
        per_model: dict[str, dict[str, Any]] = {m: {} for m in self.models}
        for (param, model), by_filter in grouped.items():
            if set(by_filter) == {None}:
                value = self._value(by_filter[None])
            else:
                value = [{"filter": f, "value": self._value(by_filter[f])} for f in FILTERS] + \
                        [{"value": self._value(by_filter[None])}]
            (shared if model is None else per_model[model])[param] = value
        entries = []
        if self.method == "slerp":
            entries.append({"model": self.base_model})
        entries += [{"model": m, "parameters": per_model[m]} if per_model[m] else {"model": m} for m in self.models]
        recipe: dict[str, Any] = {"name": self.name, "merge_method": self.method}
        if self.base_model and (self.method != "linear" or self.base_model in self.models):
            recipe["base_model"] = self.base_model  # linear would merge an unlisted base in, weightless
        recipe["models"] = entries
        top = {**self.fixed, **shared}
        if top:
            recipe["parameters"] = top
        recipe.update(self.extra)
        return recipe

    def encode(self, recipe: dict[str, Any]) -> list[float]:
        """Recipe -> genotype (inverse of :meth:`decode`); raises ValueError if outside this space."""
        per_model = {str(e["model"]): e.get("parameters") or {} for e in recipe.get("models") or []}
        shared = recipe.get("parameters") or {}
        x = []
        for gene in self.genes:
            source = shared if gene.model is None else per_model.get(gene.model)
            if source is None or gene.param not in source:
                raise ValueError(f"recipe has no value for {gene.label}")
            value = source[gene.param]
            # a scalar is the point of a finer space that has that value everywhere (every filter,
            # every layer group): so a hand preset can seed a per-layer or per-filter search
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value = next(item["value"] for item in value if item.get("filter") == gene.filter)
            if isinstance(value, list):
                if len(value) != self.layer_groups:
                    raise ValueError(f"{gene.label}: gradient of {len(value)} values, space has {self.layer_groups}")
                value = value[gene.group]
            x.append((float(value) - gene.lo) / (gene.hi - gene.lo))
        return x

    def labels(self) -> list[str]:
        """Gene labels in genotype order."""
        return [g.label for g in self.genes]
