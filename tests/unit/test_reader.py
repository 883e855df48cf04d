"""Inputs read with pread (``mergekit_adapter/reader.py``) give the same tensors and merges as safe_open."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hpc_merge import mergekit_adapter as mk
from hpc_merge.mergekit_adapter.patches import pread_inputs
from hpc_merge.mergekit_adapter.reader import PreadSafetensors


def test_reads_every_dtype_and_shape_like_safe_open(tmp_path: Path) -> None:
    """Same bytes, dtype and shape for every tensor, scalars and empty tensors included."""
    g = torch.Generator().manual_seed(0)
    tensors = {"bf16": torch.randn(7, 5, generator=g).to(torch.bfloat16), "f32": torch.randn(3, generator=g),
               "f16": torch.randn(2, 2, 2, generator=g).half(), "i64": torch.arange(6).view(2, 3),
               "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "bool": torch.tensor([True, False])}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    reader = PreadSafetensors(str(path))
    with safe_open(str(path), framework="pt") as ref:
        assert sorted(reader.keys()) == sorted(ref.keys())
        for key in ref.keys():
            a, b = reader.get_tensor(key), ref.get_tensor(key)
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), key
    reader.close()


def test_loader_installed_only_during_the_merge(tiny_pool, tmp_path: Path) -> None:
    """A linear merge is bit-identical with mergekit's own safe_open loader; the loader is restored after."""
    from mergekit.io.loader import TensorLoader

    real = TensorLoader.__dict__["get"]
    recipe = {"merge_method": "linear", "dtype": "bfloat16",
              "models": [{"model": str(tiny_pool[m]), "parameters": {"weight": w}}
                         for m, w in (("math", 0.3), ("coder", 0.7))]}
    opts = {"device": "cpu", "random_seed": 0}
    mk.run_mergekit(recipe, tmp_path / "ours", opts)
    assert TensorLoader.__dict__["get"] is real
    with pread_inputs():
        assert isinstance(TensorLoader.get(str(tiny_pool["math"] / "model.safetensors")), PreadSafetensors)
    import mergekit.merge

    from hpc_merge.mergekit_adapter import merge_options, validate_with_mergekit

    mergekit.merge.run_merge(validate_with_mergekit(recipe), str(tmp_path / "ref"), options=merge_options(opts))
    ours, ref = load_file(tmp_path / "ours" / "model.safetensors"), load_file(tmp_path / "ref" / "model.safetensors")
    assert ours.keys() == ref.keys()
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key
