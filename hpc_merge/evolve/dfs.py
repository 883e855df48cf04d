"""Data-flow space (DFS): which layers of which source models a token passes through, in which order.

Evolutionary model merging (Akiba et al., 2024) searches, besides the weights of one merge
(parameter space, :mod:`hpc_merge.evolve.space`), the *path* through layers taken from several
models. Here a candidate is built from ``T = repeats × layers × len(models)`` **slots**: the
source models' layers scanned ``repeats`` times, layer-major (rep 0: layer 0 of every model in
``models`` order, then layer 1 of every model, ...; then rep 1 the same), so one scan can already
pick each depth's layer from any model, and later scans add repeats.

Genotype (the unit cube, like parameter space; documented encoding for CMA-ES):
- ``T`` **include** genes: slot ``k`` is on the path when its gene is > 0.5. If more than
  ``max_layers`` slots are on, the ``max_layers`` with the largest genes stay (ties: earlier slot),
  so the path never exceeds the limit and no slot position is favoured by a cut-off.
- ``T`` **scale** genes, linear over ``scale_bounds``: the scale of slot ``k`` is used when the
  path *enters* slot ``k`` from a layer of another model (a transition); otherwise it is unused.

Realisation (a mergekit ``passthrough`` recipe with one slice per path layer, so ``mergekit-yaml``
runs it unchanged): the paper scales the hidden state entering a layer after a transition by ``s``.
Every branch of a pre-norm decoder (attention, MLP) and the head read the residual stream through a
scale-invariant RMSNorm, so multiplying the stream by ``s`` before layer ``k`` computes exactly
the same function (RMSNorm's epsilon aside) as multiplying the *contributions* of layer ``k`` and of
every later layer by ``1/s``. Contributions enter the stream only through ``o_proj`` (attention)
and ``down_proj`` (MLP), which have no bias in Llama/Qwen2/Mistral-style blocks, so each path layer
gets passthrough's ``scale`` = the product of ``1/s`` over the transitions up to it, on the tensors
whose names contain ``o_proj`` or ``down_proj`` (and 1 on the rest). Scaling only the layer right
after a transition would be cheaper to explain but is not what the paper's input scaling does.

Embeddings, final norm and head come from ``io_model``: mergekit takes them from the first and
the last slice's model, so the recipe starts and ends with an empty slice (``layer_range [0, 0]``)
of ``io_model``, which contributes no layer. The genotype→recipe map is a pure function, so two
genotypes with the same path and effective scales share one recipe, one cache key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc_merge.errors import ConfigError
from hpc_merge.evolve.space import Gene

#: Passthrough ``scale`` filters: the only tensors through which a layer writes to the residual stream.
OUTPUT_PROJECTIONS = ("o_proj", "down_proj")
#: Where include genes start: a slot on the start path sits 0.3 above the threshold, one off 0.3 below,
#: so with sigma0 0.25 a first generation flips a few slots, not half of them.
START_ON, START_OFF = 0.8, 0.2
SCALE_LIMITS = (0.05, 10.0)


@dataclass(frozen=True)
class Slot:
    """One position of the scan: ``layer`` of ``model`` in scan ``rep``."""

    model: str
    layer: int
    rep: int

    @property
    def label(self) -> str:
        return f"{self.model.split(':')[-1].split('/')[-1]}.L{self.layer}.r{self.rep}"


def layer_count(path: str | Path) -> int:
    """``num_hidden_layers`` of a model folder (what the slots of its layers are built from)."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    n = cfg.get("num_hidden_layers") or (cfg.get("text_config") or {}).get("num_hidden_layers")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{path}/config.json has no num_hidden_layers")
    return n


@dataclass(frozen=True)
class DfsSpace:
    """Layer paths through ``models`` (each with ``layers`` layers); maps genotypes to passthrough recipes."""

    models: tuple[str, ...]
    layers: int
    io_model: str
    repeats: int = 2
    max_layers: int = 8
    scale_bounds: tuple[float, float] = (0.5, 1.5)
    start_model: str | None = None  # the start path: every layer of this model, in order
    extra: dict[str, Any] = field(default_factory=dict)  # dtype, out_dtype
    decimals: int = 4
    name: str = "evolved"

    method = "passthrough"
    granularity = "dfs"
    base_model = None
    params = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, ev: dict[str, Any], models: Sequence[str], layers: int,
                    field_prefix: str = "evolve.dfs") -> DfsSpace:
        """Check the ``evolve.dfs`` section; ``models`` are the source refs, each with ``layers`` layers."""
        dfs = ev.get("dfs") or {}
        models = [str(m) for m in models]
        if not models or len(set(models)) != len(models):
            raise ConfigError(f"{field_prefix}.models", "needs a list of distinct source models", "e.g. [${models.math}, ...]")
        repeats = dfs.get("repeats", 2)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 8:
            raise ConfigError(f"{field_prefix}.repeats", f"{repeats!r} is not a whole number in [1, 8]", "use 1 to 8 (the paper: 3)")
        max_layers = dfs.get("max_layers", 2 * layers)
        if isinstance(max_layers, bool) or not isinstance(max_layers, int) or not 1 <= max_layers <= repeats * layers * len(models):
            raise ConfigError(f"{field_prefix}.max_layers", f"{max_layers!r} outside [1, {repeats * layers * len(models)}] "
                              "(the number of slots)", f"use e.g. {2 * layers}")
        bounds = dfs.get("scale_bounds") or [0.5, 1.5]
        if not (isinstance(bounds, Sequence) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds)
                and SCALE_LIMITS[0] <= bounds[0] < bounds[1] <= SCALE_LIMITS[1]):
            raise ConfigError(f"{field_prefix}.scale_bounds", f"bad bounds {bounds!r}",
                              f"give [low, high] with {SCALE_LIMITS[0]} <= low < high <= {SCALE_LIMITS[1]}, e.g. [0.5, 1.5]")
        io_model = str(dfs.get("io_model") or models[0])
        if io_model not in models:
            raise ConfigError(f"{field_prefix}.io_model", f"{io_model} is not one of the source models",
                              "name one of evolve.dfs.models (null: the first)")
        start = dfs.get("start_model")
        start = str(start) if start is not None else io_model
        if start not in models:
            raise ConfigError(f"{field_prefix}.start_model", f"{start} is not one of the source models",
                              "name one of evolve.dfs.models (null: io_model)")
        extra = {k: ev[k] for k in ("dtype", "out_dtype") if ev.get(k) is not None}
        space = cls(models=tuple(models), layers=int(layers), io_model=io_model, repeats=repeats, max_layers=max_layers,
                    scale_bounds=(float(bounds[0]), float(bounds[1])), start_model=start, extra=extra,
                    decimals=int(ev.get("decimals", 4)), name=str(ev.get("name") or "evolved"))
        from hpc_merge.mergekit_adapter import check_recipe

        check_recipe(space.decode(space.start()), field_prefix)  # anything else mergekit rejects, now
        return space

    # ------------------------------------------------------------------ genes
    @property
    def slots(self) -> tuple[Slot, ...]:
        """The scan, layer-major within each repeat (see the module docstring)."""
        return tuple(Slot(m, layer, rep) for rep in range(self.repeats) for layer in range(self.layers)
                     for m in self.models)

    @property
    def genes(self) -> tuple[Gene, ...]:
        """Include genes (one per slot, [0, 1], on above 0.5), then scale genes (one per slot)."""
        lo, hi = self.scale_bounds
        inc = [Gene("include", s.model, None, i, 0.0, 1.0) for i, s in enumerate(self.slots)]
        return (*inc, *(Gene("scale", s.model, None, i, lo, hi) for i, s in enumerate(self.slots)))

    @property
    def dim(self) -> int:
        return 2 * len(self.slots)

    def labels(self) -> list[str]:
        slots = self.slots
        return [f"in:{s.label}" for s in slots] + [f"scale:{s.label}" for s in slots]

    def values(self, x: Sequence[float]) -> list[float]:
        """Gene values (include genes as they are, scales in their bounds), in gene order."""
        return [round(g.lo + _clip(v) * (g.hi - g.lo), self.decimals) for g, v in zip(self.genes, x, strict=True)]

    # ------------------------------------------------------------------ genotype -> path -> recipe
    def path(self, x: Sequence[float]) -> list[tuple[Slot, float]]:
        """The layers a genotype selects, in slot order, each with the scale of its output projections."""
        if len(x) != self.dim:
            raise ValueError(f"genotype has {len(x)} values, the space {self.dim}")
        slots = self.slots
        t = len(slots)
        inc = [_clip(v) for v in x[:t]]
        on = [i for i in range(t) if inc[i] > 0.5]
        if len(on) > self.max_layers:
            on = sorted(sorted(on, key=lambda i: (-inc[i], i))[:self.max_layers])
        lo, hi = self.scale_bounds
        out, factor, prev = [], 1.0, None
        for i in on:
            if prev is not None and slots[i].model != prev:  # a transition: the stream entering is scaled by s
                s = round(lo + _clip(x[t + i]) * (hi - lo), self.decimals)
                factor /= s
            out.append((slots[i], round(factor, self.decimals) + 0.0))
            prev = slots[i].model
        return out

    def decode(self, x: Sequence[float]) -> dict[str, Any]:
        """Genotype -> passthrough recipe (``conf/merge`` shape). An empty path is refused later by the
        merge (a model needs a layer): the candidate fails and gets the worst fitness."""
        io = {"sources": [{"model": self.io_model, "layer_range": [0, 0]}]}
        slices = [io]
        for slot, factor in self.path(x):
            src: dict[str, Any] = {"model": slot.model, "layer_range": [slot.layer, slot.layer + 1]}
            if factor != 1.0:
                src["parameters"] = {"scale": [*({"filter": f, "value": factor} for f in OUTPUT_PROJECTIONS),
                                               {"value": 1.0}]}
            slices.append({"sources": [src]})
        slices.append(io)
        return {"name": self.name, "merge_method": "passthrough", "slices": slices, **self.extra}

    def start(self) -> list[float]:
        """The start genotype: every layer of ``start_model`` once, in order, at scale 1."""
        lo, hi = self.scale_bounds
        one = min(max((1.0 - lo) / (hi - lo), 0.0), 1.0)
        start = self.start_model or self.io_model
        inc = [START_ON if s.rep == 0 and s.model == start else START_OFF for s in self.slots]
        return inc + [one] * len(self.slots)

    def encode(self, recipe: dict[str, Any]) -> list[float]:
        """Only the start path is encoded (``evolve.x0`` for DFS is null: start at ``start_model``)."""
        raise ValueError("a DFS search starts from evolve.dfs.start_model; evolve.x0 must be null")


def _clip(v: float) -> float:
    v = float(v)
    return min(max(v, 0.0), 1.0) if math.isfinite(v) else 0.5
