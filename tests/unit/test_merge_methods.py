"""Every mergekit method runs through our adapter on tiny models; outputs load and are finite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hpc_merge import mergekit_adapter as mk
from hpc_merge.config import compose
from hpc_merge.jobs import merge as merge_job
from tests.recipes import recipe_for

ALL_METHODS = sorted(mk.method_specs())


def test_twenty_methods_registered() -> None:
    assert len(ALL_METHODS) == 20


def _plan(recipe: dict) -> tuple:
    cfg = compose(["logger=none"])
    cfg.merge = OmegaConf.create(recipe)
    cfg.job.smoke.enabled = False
    return cfg, merge_job.validate(cfg)


def test_every_method_has_a_recipe_file() -> None:
    from hpc_merge.config import config_dir

    shipped = {p.stem for p in (Path(config_dir()) / "merge").glob("*.yaml")}
    assert set(ALL_METHODS) <= shipped


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_merges_and_loads(method: str, tiny_pool, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hpc_merge.tracking import Tracker

    cfg, plan = _plan(recipe_for(method))
    cfg.output = str(tmp_path / "out")
    result = merge_job.run(cfg, plan, tmp_path, Tracker())
    out = Path(result["output_model"])
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("12+34=46", return_tensors="pt")
    assert ids["input_ids"].shape[1] > 0
    logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    layers = json.loads((out / "config.json").read_text())["num_hidden_layers"]
    assert layers == (6 if method == "passthrough" else 4)
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == "0o644"
    assert "## Recipe" in (out / "README.md").read_text()
