"""Every experiment composes; every merge preset resolves to a valid mergekit config."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_merge.config import compose, config_dir

EXPERIMENTS = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))
MERGE_PRESETS = ["balanced", "stem_focused", "high_accuracy", "progressive_density", "experimental_multi"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name: str) -> None:
    cfg = compose([f"+experiment={name}"])
    assert cfg.name == name
    assert cfg.job.kind in ("merge", "moe", "evolve")


@pytest.mark.parametrize("name", MERGE_PRESETS)
def test_preset_on_tiny_pool_is_valid(name: str, tiny_pool) -> None:
    from hpc_merge.jobs import merge as merge_job

    cfg = compose([f"+experiment={name}", "models=tiny"])
    assert str(cfg.merge.name) == name
    plan = merge_job.validate(cfg)
    assert plan["stages"] and plan["estimate"]["read_gb"] > 0


def test_presets_use_qwen32b_by_default() -> None:
    cfg = compose(["+experiment=stem_focused"])
    assert cfg.models.base == "Qwen/Qwen2.5-32B"
    assert cfg.merge.base_model == "Qwen/Qwen2.5-32B"


def test_command_line_override_wins() -> None:
    cfg = compose(["+experiment=balanced", "merge.models.0.parameters.density=0.3"])
    assert cfg.merge.models[0].parameters.density == 0.3
