"""A sliced merge's output config describes the layers it holds, whatever their new positions.

Hybrid and patterned architectures decide each layer's block from the config: ``layer_types``
(LFM2 conv/attention, Granite 4 Mamba/attention, Gemma 3 sliding/full) or GLM-4-MoE's
``first_k_dense_replace``. A passthrough that moves a layer to a
position where the donor's pattern says otherwise would load that layer's weights into the wrong
block (transformers reports them missing and fills random values). The matrix's passthrough keeps
alternating patterns aligned by chance; these stacks do not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hpc_merge.config import compose
from hpc_merge.errors import ConfigError
from hpc_merge.jobs import merge as merge_job
from hpc_merge.mergekit_adapter import run_mergekit
from hpc_merge.models.tiny import build_tiny, ensure_tiny


def _stack(model: Path, ranges: list[list[int]], out: Path) -> dict:
    """Passthrough of ``ranges`` of ``model``; loads with every tensor in place; returns the config."""
    from transformers import AutoModelForCausalLM

    recipe = {"merge_method": "passthrough", "dtype": "bfloat16",
              "slices": [{"sources": [{"model": str(model), "layer_range": r}]} for r in ranges]}
    run_mergekit(recipe, out, {})
    merged, info = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
    assert not any(v for k, v in info.items() if k != "error_msgs"), info
    assert torch.isfinite(merged(torch.arange(3, 15)[None]).logits).all()
    return json.loads((out / "config.json").read_text())


@pytest.mark.parametrize("arch", ["lfm2", "granitemoehybrid", "gemma3_text"])
def test_layers_keep_their_type(arch: str, tmp_path: Path) -> None:
    base = ensure_tiny("base", arch)
    types = json.loads((base / "config.json").read_text())["layer_types"]
    cfg = _stack(base, [[0, 3], [2, 4]], tmp_path / "out")  # layer 2 twice: off the donor's pattern
    assert cfg["layer_types"] == types[0:3] + types[2:4]
    assert cfg["num_hidden_layers"] == 5


@pytest.mark.parametrize("arch", ["qwen2_moe", "qwen3_moe"])
def test_qwen_moe_with_dense_layers_is_refused(arch: str, tmp_path: Path) -> None:
    """mergekit 0.1.5 has experts in every layer of Qwen3-MoE's table and cannot convert Qwen2-MoE's
    inferred expert names when some layers are dense: refused before anything runs."""
    base = build_tiny(tmp_path / "base", arch=arch, mlp_only_layers=[0])  # layer 0 dense
    with pytest.raises(ConfigError, match=f"architecture {arch}: the model has dense-MLP layers"):
        _validate_stack(str(base), [[0, 4]], tmp_path)
    assert not (tmp_path / "out").exists()


def _validate_stack(model: str, ranges: list[list[int]], tmp_path: Path) -> None:
    cfg = compose(["logger=none"])
    cfg.merge = OmegaConf.create({"merge_method": "passthrough", "dtype": "bfloat16",
                                  "slices": [{"sources": [{"model": model, "layer_range": r}]} for r in ranges]})
    cfg.output = str(tmp_path / "out")
    merge_job.validate(cfg)


def test_glm4_moe_dense_layers_stay_first(tmp_path: Path) -> None:
    """GLM-4-MoE's config can only say "the first k layers are dense": other orders are refused."""
    _validate_stack("tiny:glm4_moe/base", [[0, 4], [1, 4]], tmp_path)  # dense, then 6 MoE: fine
    cfg = _stack(ensure_tiny("base", "glm4_moe"), [[0, 4], [1, 4]], tmp_path / "ok")
    assert cfg["first_k_dense_replace"] == 1
    with pytest.raises(ConfigError) as err:
        _validate_stack("tiny:glm4_moe/base", [[1, 4], [0, 2]], tmp_path)
    msg = str(err.value)
    assert msg.startswith("merge.slices: architecture glm4_moe") and "m m m d m" in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()
