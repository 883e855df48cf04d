"""SCE's variance kernel equals torch.var(dim=0, unbiased=False) bit for bit (the mask depends on it)."""

from __future__ import annotations

import pytest
import torch

from hpc_merge.mergekit_adapter.variance import MIN_ELEMENTS, population_var


def _task_vectors(n: int, dtype: torch.dtype, wide: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 300, MIN_ELEMENTS // 256)
    t = torch.randn(shape, generator=g)
    t = t * torch.exp(torch.randn(shape, generator=g) * 8) if wide else t * 1e-3
    t = t.to(dtype)
    t[:, 0, :50] = 0  # zero variance
    t[0, 1, :] = t[-1, 1, :]  # equal inputs
    t[0, 2, 0], t[0, 2, 1], t[-1, 2, 2] = float("nan"), float("inf"), -float("inf")
    return t


def _assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(0.5), want.nan_to_num(0.5))  # bit for bit outside NaN


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("wide", [False, True])
def test_population_var_equals_torch(dtype, n, wide):
    tvs = _task_vectors(n, dtype, wide, seed=n + 10 * wide)
    _assert_same(population_var(tvs), torch.var(tvs, dim=0, unbiased=False))


def test_population_var_of_a_view_and_a_small_tensor():
    tvs = _task_vectors(3, torch.bfloat16, False, seed=1)
    view = tvs.transpose(1, 2)  # not contiguous
    _assert_same(population_var(view), torch.var(view, dim=0, unbiased=False))
    small = tvs[:, :2, :10]  # below MIN_ELEMENTS: torch.var itself
    _assert_same(population_var(small), torch.var(small, dim=0, unbiased=False))
