"""Recipes for tests: the shipped ``conf/merge/<method>.yaml`` composed over the tiny pool."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from hpc_merge.config import compose


def recipe_for(method: str) -> dict[str, Any]:
    """The shipped recipe for ``method`` with model refs ``tiny:NAME`` (a plain dict to edit)."""
    cfg = compose([f"merge={method}", "models=tiny", "logger=none"])
    return OmegaConf.to_container(cfg.merge, resolve=True)
