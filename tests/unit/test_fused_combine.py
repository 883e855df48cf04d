"""The fused combine step (``mergekit_adapter/fused_combine.py``) equals mergekit's ``merge_group`` bit for bit."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from mergekit.merge_methods.base import TensorEntry, TensorGroup
from mergekit.merge_methods.generalized_task_arithmetic import ConsensusMethod, GeneralizedTaskArithmeticMerge
from mergekit.sparsify import SparsificationMethod
from safetensors.torch import load_file

from bench.methods import method_recipe
from hpc_merge import mergekit_adapter as mk
from hpc_merge.mergekit_adapter import fused_combine


def _group(n: int, kind: str, g: torch.Generator) -> TensorGroup:
    """Base + ``n`` bf16 fine-tunes: a few ulps apart (``ft``), or on a coarse grid (ties and exact zeros)."""
    base = (torch.randn(23, 41, generator=g) * 0.02).to(torch.bfloat16)
    base.view(-1)[:5] = -0.0  # signed zeros in the base: base + (+0) is +0
    tensors = []
    for _ in range(n):
        if kind == "ft":
            t = base.float() + 0.01 * base.float().std() * torch.randn(base.shape, generator=g)
        else:
            t = base.float() + torch.randint(-2, 3, base.shape, generator=g) * 1e-3
        tensors.append(t.to(torch.bfloat16))
    return TensorGroup([TensorEntry("base", base, is_base=True)] + [TensorEntry(f"m{i}", t) for i, t in enumerate(tensors)])


def _method(consensus: ConsensusMethod | None, sparsify: SparsificationMethod | None) -> GeneralizedTaskArithmeticMerge:
    return GeneralizedTaskArithmeticMerge(consensus_method=consensus, sparsification_method=sparsify,
                                          default_normalize=True, default_rescale=False, method_name="t",
                                          method_pretty_name=None, method_reference_url=None)


def test_fused_merge_group_equals_mergekit_bit_for_bit() -> None:
    """Every consensus, with and without trim / normalize / lambda, signed, zero and equal weights, 1–3 inputs."""
    g = torch.Generator().manual_seed(0)
    real = GeneralizedTaskArithmeticMerge.merge_group
    grid = itertools.product([None, ConsensusMethod.sum, ConsensusMethod.count], [None, SparsificationMethod.magnitude],
                             [True, False], [1.0, 0.7], [(0.5, 0.3, 0.9), (1.0, -0.4, 0.0)], [1, 2, 3], ["ft", "grid"])
    checked = 0
    for consensus, sparsify, normalize, lam, weights, n, kind in grid:
        method, group = _method(consensus, sparsify), _group(n, kind, g)
        params = {"weight": {f"m{i}": weights[i] for i in range(n)}, "density": {f"m{i}": 0.5 for i in range(n)},
                  "rescale": False, "normalize": normalize, "lambda": lam, "int8_mask": False}
        want = real(method, group, **params)
        got = fused_combine.merge_group(real, method, group, params)
        assert got.dtype == want.dtype and torch.equal(got.view(torch.int16), want.view(torch.int16)), \
            (consensus, sparsify, normalize, lam, weights, n, kind)
        checked += 1
    assert checked == 288


def test_other_dtypes_run_mergekits_own_code() -> None:
    """float32 (and mixed dtypes) are not the kernel's: the real merge_group runs and gives its result."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(8, 8, generator=g)
    group = TensorGroup([TensorEntry("base", base, is_base=True), TensorEntry("m0", base + 0.1)])
    calls = []

    def real(method, group, **params):
        calls.append(1)
        return GeneralizedTaskArithmeticMerge.merge_group(method, group, **params)

    params = {"weight": {"m0": 1.0}, "rescale": False, "normalize": True, "lambda": 1.0, "int8_mask": False}
    out = fused_combine.merge_group(real, _method(ConsensusMethod.sum, None), group, params)
    assert calls == [1] and torch.allclose(out, base + 0.1)


@pytest.mark.parametrize("sparsify,fused", [("fast", True), ("mergekit", False)])
def test_merges_use_the_kernel_unless_sparsify_mergekit(tiny_pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         sparsify: str, fused: bool) -> None:
    """A bf16 task_arithmetic merge goes through the kernel (``sparsify: fast``) and equals the
    ``sparsify: mergekit`` merge (mergekit's own code) tensor for tensor; that one never calls the kernel."""
    calls: list[int] = []
    real = fused_combine.combine
    monkeypatch.setattr(fused_combine, "combine", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    models = [tiny_pool[m] for m in ("base", "math", "coder")]
    recipe = method_recipe("task_arithmetic", models)
    mk.run_mergekit(recipe, tmp_path / "ours", {"device": "cpu", "sparsify": sparsify})
    assert bool(calls) == fused
    if fused:
        mk.run_mergekit(recipe, tmp_path / "theirs", {"device": "cpu", "sparsify": "mergekit"})
        ours, theirs = (load_file(tmp_path / d / "model.safetensors") for d in ("ours", "theirs"))
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key
