"""In-memory merges equal what run_mergekit writes, for deterministic and random (seeded) methods."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hpc_merge.mergekit_adapter import run_mergekit, to_mergekit
from hpc_merge.mergekit_adapter.inmemory import MemoryLoader, load_into, load_tensors, merge_in_memory

OPTIONS = {"device": "cpu", "random_seed": 7}


@pytest.fixture(scope="module")
def sources(tiny_pool) -> tuple[dict[str, str], dict[str, dict[str, torch.Tensor]]]:
    paths = {f"tiny:{n}": str(p) for n, p in tiny_pool.items()}
    return paths, {p: load_tensors(p) for p in paths.values()}


def _recipe(method: str) -> dict:
    extra = {"epsilon": 0.05} if method == "della" else {}
    return {"merge_method": method, "base_model": "tiny:base", "dtype": "bfloat16", "parameters": {"normalize": True},
            "models": [{"model": "tiny:math", "parameters": {"weight": [0.1, 0.9], "density": 0.5, **extra}},
                       {"model": "tiny:coder", "parameters": {"weight": [{"filter": "mlp", "value": 0.7}, {"value": 0.2}],
                                                              "density": 0.6, **extra}}]}


@pytest.mark.parametrize("method", ["ties", "dare_ties", "della"])
def test_in_memory_equals_disk(method: str, sources, tmp_path: Path) -> None:
    paths, tensors = sources
    config = to_mergekit(_recipe(method), paths)
    mem = merge_in_memory(config, tensors, OPTIONS, seed=7)
    run_mergekit(config, tmp_path, OPTIONS)
    disk = {}
    for f in tmp_path.glob("*.safetensors"):
        disk.update(load_file(f))
    assert set(mem) == set(disk)
    assert all(torch.equal(mem[k], disk[k]) for k in disk)
    if method != "ties":  # random methods: another seed gives another merge
        other = merge_in_memory(config, tensors, OPTIONS, seed=8)
        assert any(not torch.equal(mem[k], other[k]) for k in mem if k.endswith("mlp.up_proj.weight"))


def test_load_into_a_skeleton_and_memory_loader(sources, tiny_pool) -> None:
    from transformers import AutoModelForCausalLM

    paths, tensors = sources
    model = AutoModelForCausalLM.from_pretrained(str(tiny_pool["base"]), dtype=torch.float32)
    merged = merge_in_memory(to_mergekit(_recipe("ties"), paths), tensors, OPTIONS)
    load_into(model, merged)
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(model.state_dict()[name], merged[name].float())
    with pytest.raises(RuntimeError, match="do not fit"):
        load_into(model, {"nope": torch.zeros(1)})
    loader = MemoryLoader({"a": torch.ones(2)})
    assert loader.get_tensor("b", aliases=["a"]).sum() == 2
    assert loader.get_tensor("b", raise_on_missing=False) is None


def test_cached_configs_reads_once_hands_out_copies_and_sees_rewrites(tiny_pool, tmp_path: Path) -> None:
    import json
    import shutil

    from mergekit.common import ModelReference

    from hpc_merge.mergekit_adapter.patches import cached_configs

    folder = tmp_path / "m"
    shutil.copytree(tiny_pool["base"], folder)
    ref = ModelReference.model_validate(str(folder))
    real = ModelReference.config
    with cached_configs():
        first = ref.config()
        first.num_hidden_layers = 99  # mergekit mutates what it gets: must not leak into the cache
        second = ref.config()
        assert second.num_hidden_layers == real(ref).num_hidden_layers != 99
        cfg = json.loads((folder / "config.json").read_text())
        cfg["rms_norm_eps"] = 0.125
        (folder / "config.json").write_text(json.dumps(cfg, indent=1))  # other size: a new stamp
        assert ref.config().rms_norm_eps == 0.125
    assert ModelReference.config is real  # restored after the block
