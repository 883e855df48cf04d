"""A valid mergekit YAML is not refused: DELLA/TIES recipes that list the base among ``models``.

mergekit's docs (and most published recipes) list the base model among ``models`` without
parameters; mergekit-yaml never reads that entry's parameters. Our DELLA range check used to
apply its defaults (density 1.0 ± epsilon 0.15) to that entry and refuse the whole recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hpc_merge.app import run
from hpc_merge.config import compose
from hpc_merge.errors import ConfigError


def _recipe(method: str, pool: dict[str, Path]) -> dict:
    params = {"weight": 0.5, "density": 0.5} | ({"epsilon": 0.1} if method.startswith("della") else {})
    return {"merge_method": method, "base_model": str(pool["base"]),
            "models": [{"model": str(pool["base"])},
                       {"model": str(pool["math"]), "parameters": params},
                       {"model": str(pool["coder"]), "parameters": params}],
            "dtype": "float32"}


@pytest.mark.parametrize("method", ["della", "ties"])
def test_base_listed_without_parameters_merges(method: str, tiny_pool, tmp_path: Path) -> None:
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(_recipe(method, tiny_pool)))
    out = tmp_path / "out"
    result = run(compose([f"mergekit_yaml={path}", f"output={out}", "logger=none"]))
    assert result is not None and result["status"] == "ok"
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    assert result["metrics"]["perplexity"] > 1  # loaded by transformers and run


def test_a_non_base_entry_is_still_range_checked(tiny_pool, tmp_path: Path) -> None:
    recipe = _recipe("della", tiny_pool)
    recipe["models"][1]["parameters"]["density"] = 0.95
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError) as info:
        run(compose([f"mergekit_yaml={path}", f"output={tmp_path / 'out'}", "logger=none"]))
    assert info.value.field == "merge.models[1].parameters.density"
    assert not (tmp_path / "out").exists()
