"""Deterministic methods through ``run_mergekit`` (chunked, pread, streamed writer) equal mergekit's own merge.

Every method whose result does not depend on a trim's tie order or a random stream must give
mergekit's tensors exactly, whatever our adapter changed around it. The trims (ties, breadcrumbs)
equal mergekit with ``sparsify: mergekit``; their ``fast`` trims (and SCE's top-k by variance) are tested
against mergekit's in ``test_trim.py``, the random methods in ``test_random_sparsify.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.methods import method_recipe
from hpc_merge import mergekit_adapter as mk

DETERMINISTIC = ("linear", "task_arithmetic", "slerp", "nuslerp", "multislerp", "karcher", "model_stock",
                 "arcee_fusion", "ram", "ramplus_tl", "nearswap", "passthrough")
TRIMS = ("ties", "breadcrumbs", "breadcrumbs_ties", "sce")  # top-k selections: equal up to ties with sparsify fast


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


@pytest.mark.parametrize("method,sparsify", [(m, "fast") for m in DETERMINISTIC] + [(m, "mergekit") for m in TRIMS])
def test_method_equals_mergekit_tensor_for_tensor(method: str, sparsify: str, tiny_pool, tmp_path: Path) -> None:
    import mergekit.merge
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    recipe = method_recipe(method, [tiny_pool["base"], tiny_pool["math"], tiny_pool["coder"]])
    mk.run_mergekit(recipe, tmp_path / "ours", {"device": "cpu", "random_seed": 0, "chunk_size": "1K",
                                                "sparsify": sparsify})
    mergekit.merge.run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "theirs"),
                             options=MergeOptions(random_seed=0, quiet=True, copy_tokenizer=False))
    ours, theirs = _tensors(tmp_path / "ours"), _tensors(tmp_path / "theirs")
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        assert torch.equal(ours[name], tensor), name
