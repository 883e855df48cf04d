"""``mergekit_yaml=FILE moe.KEY=VALUE``: command-line overrides of a recipe read from a file.

The file's recipe becomes the ``moe`` (or ``merge``) group after composition, so Hydra cannot
apply overrides of that group itself: when it composes, the group is empty. Without this, the fix
an error prints (``moe.allow_identical_experts=true``) worked with a preset but not with a YAML,
where only editing the file helped. Such overrides are set aside before composing
(:func:`hold`) and applied over the file's recipe when it is read (:func:`apply`), so both work
as written.
"""

from __future__ import annotations

from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

#: The key that carries the held overrides from composition to :func:`apply` (removed there).
HELD_KEY = "mergekit_yaml_overrides"
GROUPS = ("moe", "merge")


def _target(override: str) -> tuple[str, str, str] | None:
    """``moe.a.b=v`` / ``+moe.a=v`` / ``++merge.x=v`` -> (group, dotted key, value); else None."""
    key, sep, value = override.partition("=")
    group, dot, rest = key.lstrip("+").partition(".")
    if not sep or not dot or group not in GROUPS or not rest:
        return None
    return group, rest, value


def hold(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(overrides to compose, recipe overrides set aside): the split is made only with ``mergekit_yaml=``."""
    if not any(o.startswith("mergekit_yaml=") for o in overrides):
        return overrides, []
    held = [o for o in overrides if _target(o)]
    return [o for o in overrides if o not in held], held


def attach(cfg: DictConfig, held: list[str]) -> DictConfig:
    """Carry ``held`` in the composed config until the recipe file is read."""
    if held:
        with open_dict(cfg):
            cfg[HELD_KEY] = list(held)
    return cfg


def apply(cfg: DictConfig, kind: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """The file's ``recipe`` with the held overrides of group ``kind`` set over it (values as YAML)."""
    held = list(cfg.get(HELD_KEY) or [])
    with open_dict(cfg):
        cfg.pop(HELD_KEY, None)
    if not held:
        return recipe
    from hpc_merge.errors import ConfigError

    node = OmegaConf.create(recipe)
    for override in held:
        group, key, value = _target(override)
        if group != kind:
            raise ConfigError(f"{group}.{key}", f"{FILE_KIND[kind]} has no {group} recipe",
                              f"drop {override}, or override {kind}.{key.split('.')[0]} instead")
        OmegaConf.update(node, key, yaml.safe_load(value) if value else None, force_add=True)
    return OmegaConf.to_container(node)


FILE_KIND = {"moe": "this mergekit-moe YAML", "merge": "this mergekit YAML"}
