"""streamed_stats against mergekit's model_stock and nuslerp: same bits for any row chunking."""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods.base import TensorEntry, TensorGroup
from mergekit.merge_methods.model_stock import model_stock_merge_method
from mergekit.merge_methods.nuslerp import nuslerp as mk_nuslerp

from hpc_merge.mergekit_adapter import streamed_stats


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, n: int, spread: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    base = torch.randn(shape, generator=g)
    return [base.to(dtype)] + [(base + spread * torch.randn(shape, generator=g)).to(dtype) for _ in range(n)]


def _run(inputs: list[torch.Tensor], rows_per_chunk: int, merge) -> tuple[torch.Tensor, int]:
    shape = inputs[0].shape
    bounds = [(a, min(a + rows_per_chunk, shape[0])) for a in range(0, shape[0], rows_per_chunk)]
    out = torch.full(shape, float("nan"), dtype=inputs[0].dtype)
    reads = [0]

    def rows(a: int, b: int) -> list[torch.Tensor]:
        reads[0] += 1
        return [t[a:b].clone() for t in inputs]

    def emit(a: int, part: torch.Tensor) -> None:
        out[a:a + part.shape[0]] = part

    merge(rows, bounds, inputs[0].numel(), emit)
    return out, reads[0] // len(bounds)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("rows_per_chunk", [1, 7, 5000])
@pytest.mark.parametrize("spread", [0.01, 1.0])
def test_model_stock_equals_mergekit(dtype: torch.dtype, n: int, rows_per_chunk: int, spread: float) -> None:
    """Bit-identical to mergekit's model_stock; the inputs are read once per reduction plus once."""
    inputs = _inputs((1201, 96), dtype, n, spread)
    group = TensorGroup(entries=tuple(TensorEntry(id=i, tensor=t, is_base=i == 0) for i, t in enumerate(inputs)),
                        metadata=None)
    want = model_stock_merge_method.implementation(group)
    got, passes = _run(inputs, rows_per_chunk, lambda r, b, m, e: streamed_stats.model_stock(r, b, m, n, e))
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert passes == n + n * (n - 1) // 2 + 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows_per_chunk", [1, 7, 5000])
@pytest.mark.parametrize("spread", [1e-4, 1.0], ids=["colinear", "spherical"])
@pytest.mark.parametrize("has_base", [True, False])
def test_nuslerp_equals_mergekit(dtype: torch.dtype, rows_per_chunk: int, spread: float, has_base: bool) -> None:
    """Flattened nuslerp, with and without a base, both branches: bit-identical to mergekit's."""
    inputs = _inputs((1201, 96), dtype, 2, spread)
    base, first, second = inputs
    t = 0.35
    if has_base:
        want = base + mk_nuslerp(t, first - base, second - base, dim=-1, flatten=True)
    else:
        inputs = [first, second]
        want = mk_nuslerp(t, first, second, dim=-1, flatten=True)
    got, _ = _run(inputs, rows_per_chunk, lambda r, b, m, e: streamed_stats.nuslerp(r, b, m, t, has_base, e))
    assert got.dtype == want.dtype and torch.equal(got, want)
