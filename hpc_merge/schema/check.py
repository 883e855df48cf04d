"""The fast validation of a composed config: resolve, type every group, then bound every value.

Composition already types what the command line changed; this checks the config as a whole
again, because keys can arrive without passing a schema (``+job.foo=1`` is added by force, and
``mergekit_yaml=`` replaces the recipe after composition). It imports neither mergekit nor torch,
so a bad value costs well under the 2 s promised; the job module's ``validate`` does the rest
(mergekit's method specs, model files, architectures).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpc_merge.errors import ConfigError, did_you_mean
from hpc_merge.schema import bounds
from hpc_merge.schema.groups import GROUPS, Root
from hpc_merge.schema.jobs import JOBS
from hpc_merge.schema.translate import from_omegaconf

ROOT_KEYS = tuple(Root.__dataclass_fields__)


def _free_mapping(f: dataclasses.Field) -> bool:
    """Whether a field is a free-form mapping: typed ``Any`` (so OmegaConf checks no type) with a
    mapping default (so OmegaConf can only say "Cannot merge DictConfig with ListConfig", no key)."""
    return f.type in ("Any", Any) and f.default_factory is not dataclasses.MISSING \
        and isinstance(f.default_factory(), dict)


def typed(schema: type, value: Any, field: str) -> dict[str, Any]:
    """``value`` merged into ``schema``: wrong types and unknown keys are ConfigErrors naming the field."""
    if not isinstance(value, dict):
        raise ConfigError(field, f"expected a mapping, got {type(value).__name__} {value!r}"[:200],
                          "see --cfg job for the shape of this group")
    for f in dataclasses.fields(schema):
        given = value.get(f.name)
        if _free_mapping(f) and given is not None and not isinstance(given, dict):
            raise ConfigError(f"{field}.{f.name}", f"must be a mapping, got {given!r}"[:200],
                              f"give a mapping, e.g. {field}.{f.name}={{key: value}}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), value)
        out = OmegaConf.to_container(node, resolve=True)
    except Exception as exc:  # OmegaConf's ValidationError / ConfigKeyError / ...
        err = from_omegaconf(exc, field)
        if err is None:
            raise ConfigError(field, f"does not fit the schema ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                              "see --cfg job for the shape of this group") from None
        raise err from None
    assert isinstance(out, dict)
    return out


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The whole config with every ``${...}`` resolved (a reference loop or a missing key: one line)."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except RecursionError:
        raise ConfigError("config", "a ${...} reference refers to itself", "fix the interpolation loop") from None
    except Exception as exc:
        err = from_omegaconf(exc)
        if err is None:
            raise ConfigError("config", f"cannot resolve the config ({type(exc).__name__})", "see --cfg job") from None
        raise err from None
    assert isinstance(data, dict)
    return data


def check(cfg: DictConfig) -> dict[str, Any]:
    """Resolve ``cfg``, type every group and check every bound; returns the typed groups.

    Raises :class:`~hpc_merge.errors.ConfigError` (one line, the field and the fix) on the first
    problem; reads no model and writes nothing.
    """
    from hpc_merge.mergekit_adapter.recipe import check_values

    data = resolved(cfg)
    for key in data:
        if key not in ROOT_KEYS and key != "hydra":
            raise ConfigError(str(key), f"not a field of the config{did_you_mean(str(key), ROOT_KEYS)}",
                              f"use one of: {', '.join(ROOT_KEYS)}")
    job = data.get("job")
    kind = job.get("kind") if isinstance(job, dict) else None
    if not isinstance(kind, str) or kind not in JOBS:
        raise ConfigError("job.kind", f"unknown job kind {kind!r}{did_you_mean(str(kind), JOBS)}",
                          f"use one of {', '.join(JOBS)} (e.g. job=merge)")
    out = {"job": typed(JOBS[kind], job, "job")}
    for group, schema in GROUPS.items():
        if data.get(group) is not None:
            out[group] = typed(schema, data[group], group)
    bounds.job(out["job"], kind)
    bounds.cluster(out["cluster"])
    bounds.logger(out["logger"])
    bounds.evaluation(out["eval"])
    if "moe" in out:
        bounds.moe(out["moe"])
    if "evolve" in out:
        bounds.evolve(out["evolve"])
    recipe = data.get("merge")
    if recipe is not None:
        stages = recipe.get("stages") if isinstance(recipe, dict) else None
        if isinstance(stages, list):
            for i, stage in enumerate(stages):
                check_values(stage, f"merge.stages[{i}]")
        check_values(recipe, "merge")
    return out
