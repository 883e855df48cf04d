"""The likeliest first mistakes say the next thing to type, and what they say works as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from hpc_merge.app import prepare
from hpc_merge.config import compose
from hpc_merge.errors import ConfigError


def test_a_misspelt_preset_says_the_whole_command_and_that_command_composes() -> None:
    with pytest.raises(ConfigError) as err:
        compose(["+experiment=demoo", "logger=none"])
    assert err.value.fix == "hpc-merge +experiment=demo logger=none"
    cfg = compose(shlex.split(err.value.fix)[1:])  # typed as printed
    assert cfg.name == "demo"


def test_identical_experts_fix_works_beside_a_mergekit_yaml(tiny_pool, tmp_path: Path) -> None:
    """The YAML replaces the moe group after composition: its suggested override must still apply."""
    expert = {"source_model": str(tiny_pool["math"]), "positive_prompts": ["12+34="]}
    path = tmp_path / "same.yml"
    path.write_text(yaml.safe_dump({"base_model": str(tiny_pool["base"]), "gate_mode": "hidden",
                                    "experts": [expert, {**expert, "positive_prompts": ["def f(x):"]}]}))
    args = [f"mergekit_yaml={path}", f"output={tmp_path / 'out'}", "logger=none"]
    with pytest.raises(ConfigError) as err:
        prepare(compose(args))
    [suggested] = re.findall(r"\S+\.allow_identical_experts=true", err.value.fix)
    kind, plan, _ = prepare(compose([*args, suggested]))
    assert kind == "moe" and len({e["path"] for e in plan["moe"]["experts"]}) == 1
    assert not (tmp_path / "out").exists()


def test_an_override_of_the_other_group_beside_a_yaml_is_one_error(tiny_pool, tmp_path: Path) -> None:
    path = tmp_path / "m.yml"
    path.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(tiny_pool["math"]), "parameters": {"weight": 1.0}},
        {"model": str(tiny_pool["coder"]), "parameters": {"weight": 1.0}}]}))
    with pytest.raises(ConfigError, match="moe.gate_mode"):
        prepare(compose([f"mergekit_yaml={path}", "moe.gate_mode=random", "logger=none"]))
