"""The exact-k magnitude trim (``job.options.sparsify: fast``) against mergekit's argsort trim."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hpc_merge import mergekit_adapter as mk
from hpc_merge.errors import ConfigError
from hpc_merge.mergekit_adapter.trim import exact_magnitude, magnitude_mask


def _mergekit_mask(x: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit's kept set, read off its output (inputs have no zeros, so kept = non-zero)."""
    from mergekit.sparsify import magnitude

    return magnitude(x, density) != 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.9])
def test_keeps_exactly_k_and_differs_from_mergekit_only_at_ties(dtype: torch.dtype, density: float) -> None:
    """Exactly mergekit's k; any disagreement is among elements equal to the k-th magnitude."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(37, 129, generator=g) * 0.02).to(dtype)
    x[x == 0] = 1e-3  # no zeros: a kept zero would be invisible in mergekit's output
    k = max(1, int(density * x.numel()))
    ours = magnitude_mask(x, density)
    theirs = _mergekit_mask(x, density)
    assert int(ours.sum()) == int(theirs.sum()) == k
    mag = x.abs()
    threshold = mag.reshape(-1).float().sort(descending=True).values[k - 1]
    assert (mag[ours].float() >= threshold).all() and (mag[~ours].float() <= threshold).all()
    differ = ours != theirs
    assert (mag[differ].float() == threshold).all()


def test_ties_broken_by_lowest_index() -> None:
    """Twenty equal magnitudes of which 5 survive: the first five by flat index, whatever the signs."""
    x = torch.full((4, 10), 0.001)
    x[0, :3] = torch.tensor([5.0, -4.0, 3.0])
    x[1:3] = 0.5 * torch.tensor([1, -1] * 10).view(2, 10)  # 20 ties at |0.5|
    for dtype in (torch.bfloat16, torch.float32):
        mask = magnitude_mask(x.to(dtype), 8 / 40)
        kept = mask.reshape(-1).nonzero().squeeze(1).tolist()
        assert kept == [0, 1, 2, 10, 11, 12, 13, 14], dtype


@pytest.mark.parametrize("n", [1, 127, 128, 129, 1000, 4096 + 77])
def test_keep_ties_is_the_first_need_ties_by_index(n: int) -> None:
    """Massive ties (a handful of distinct keys, as on real bf16 task vectors): block counting
    finds exactly the first ``need`` tied elements, for every need including none and all."""
    from hpc_merge.mergekit_adapter.topk import keep_ties

    g = torch.Generator().manual_seed(n)
    keys = torch.randint(0, 4, (n,), generator=g, dtype=torch.int16)
    ties = (keys == 2).nonzero().squeeze(1)
    for need in sorted({-1, 0, 1, 2, len(ties) // 2, len(ties) - 1, len(ties), len(ties) + 5}):
        keep = keys > 2
        kept = keep_ties(keep, keys, 2, need)
        expected = keys > 2
        expected[ties[:max(0, need)]] = True
        assert kept == min(max(0, need), len(ties)) and torch.equal(keep, expected), (n, need)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("density,gamma", [(0.9, 0.01), (0.5, 0.1), (0.95, 0.1), (0.3, 0.0)])
def test_breadcrumbs_trim_is_mergekits_up_to_ties(dtype: torch.dtype, density: float, gamma: float) -> None:
    """exact_outliers keeps as many as mergekit's sort; differences only at the two cut magnitudes; same values."""
    from mergekit.sparsify import RescaleNorm, magnitude_outliers

    from hpc_merge.mergekit_adapter.trim import exact_outliers

    g = torch.Generator().manual_seed(5)
    x = (torch.randn(97, 53, generator=g) * 0.02).to(dtype)
    x[x == 0] = 1e-3
    for norm in (None, RescaleNorm.l1):
        theirs, ours = magnitude_outliers(x, density, norm, gamma), exact_outliers(x, density, norm, gamma)
        kt, ko = theirs != 0, ours != 0
        assert int(kt.sum()) == int(ko.sum())
        ranked = x.abs().reshape(-1).float().sort(descending=True).values
        n, target = x.numel(), int(density * x.numel())
        top = n - max(0, n - target - int(gamma * n)) - target  # dropped from the top
        cuts = {float(ranked[top - 1]) if top else None, float(ranked[top + target - 1])}
        assert all(float(v) in cuts for v in x.abs()[kt != ko].float())
        assert torch.equal(theirs[kt & ko], ours[kt & ko])


@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("coarse", [False, True])
def test_sce_mask_is_mergekits_up_to_ties(density: float, coarse: bool) -> None:
    """SCE's selection: mergekit's k and dtype; disagreements only among variances equal to the k-th."""
    from mergekit.merge_methods.sce import sce_mask

    from hpc_merge.mergekit_adapter.trim import exact_sce_mask

    g = torch.Generator().manual_seed(3)
    tvs = torch.randn(3, 41, 57, generator=g) * 0.01
    if coarse:  # few distinct values: many equal variances, some zero
        tvs = torch.randint(-2, 3, tvs.shape, generator=g) * 0.25
    tvs = tvs.to(torch.bfloat16)
    theirs, ours = sce_mask(tvs, density), exact_sce_mask(tvs, density)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert int(ours.sum()) == int(theirs.sum())
    var = torch.var(tvs, dim=0, unbiased=False)
    differ = ours != theirs
    if differ.any():
        kept = var[ours.bool()]
        assert torch.all(var[differ] == kept.min()), "a difference away from the threshold"


def test_output_bit_identical_outside_ties_and_edge_cases() -> None:
    """Same values as mergekit where both keep an element, rescaling included; trivial densities alike."""
    from mergekit.sparsify import RescaleNorm, magnitude

    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 64, generator=g)
    for norm in (None, RescaleNorm.l1):
        assert torch.equal(exact_magnitude(x, 0.37, norm), magnitude(x, 0.37, norm))  # fp32 randn: no ties
    assert exact_magnitude(x, 1.0) is x
    assert torch.equal(exact_magnitude(x, 0.0), torch.zeros_like(x))
    assert int((exact_magnitude(x, 1e-9) != 0).sum()) == 1  # at least one element, like mergekit
    assert exact_magnitude(torch.empty(0), 0.5).numel() == 0


@pytest.mark.parametrize("n", [0, 5, (1 << 16) - 1, 1 << 16, 4_000_003])
def test_compiled_count_equals_bincount(n: int) -> None:
    """The threaded 32768-bin count behind the 16-bit trims gives torch.bincount's counts, runs of ties included."""
    from hpc_merge.mergekit_adapter.topk import count15

    g = torch.Generator().manual_seed(n)
    base = (torch.randn(n, generator=g) * 0.02).bfloat16()
    model = (base.float() + torch.randn(n, generator=g) * 0.0002).bfloat16()
    keys = (model - base).abs().view(torch.int16)  # a few ulps: thousands of equal magnitudes
    if n:
        keys[: min(n, 9)] = torch.tensor([0, 32767, 32767, 0, 1, 0x7F80, 0x7FC0, 5, 5], dtype=torch.int16)[: min(n, 9)]
    assert torch.equal(count15(keys), torch.bincount(keys, minlength=1 << 15))
    if n > 8:  # a strided view goes through torch
        assert torch.equal(count15(keys[::2]), torch.bincount(keys[::2], minlength=1 << 15))


def _few_ulps(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A real-looking 16-bit task vector: a few ulps of a base, so thousands of elements share each magnitude."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(n, generator=g) * 0.02).to(dtype)
    return (base.float() + torch.randn(n, generator=g) * 0.0002).to(dtype) - base


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [(1 << 16) + 3, 1_000_003])
def test_compiled_selections_equal_the_masks(dtype: torch.dtype, n: int) -> None:
    """The compiled trim (tie cut + one select pass) gives ``x * mask`` bit for bit, signed zeros and ties included:
    TIES' top-k and breadcrumbs' band, for k on ties, k = 1, n - 1, and empty or full bands."""
    from hpc_merge.mergekit_adapter.topk import (
        band_k16,
        count15,
        cut16,
        takes_kernels,
        tie_cut,
        top_k16,
        top_k_mask,
    )

    x = _few_ulps(n, dtype, n)
    bits = x.view(torch.int16)
    assert takes_kernels(bits) and bool((bits < 0).any())  # raw bits with sign: the kernels must ignore it
    assert torch.equal(count15(bits), torch.bincount(bits & 0x7FFF, minlength=1 << 15))
    mags = (bits & 0x7FFF).sort(descending=True).values
    on_tie = int((mags == mags[n // 2]).nonzero()[0]) + 3  # a k that cuts through a run of equal magnitudes
    assert mags[on_tie - 1] == mags[on_tie]

    def expect(keep: torch.Tensor) -> torch.Tensor:
        return (x * keep.to(dtype)).view(torch.int16)

    for k in (1, on_tie, n // 3, n - 1):
        assert torch.equal(top_k16(x, k).view(torch.int16), expect(top_k_mask(x, k))), k
    for upper, lower in ((n, 0), (n, on_tie), (on_tie + 100, on_tie), (on_tie, on_tie), (n - 7, 5), (0, 0)):
        band = band_k16(x, upper, lower)
        assert torch.equal(band.view(torch.int16), expect(top_k_mask(x, upper) & ~top_k_mask(x, lower))), (upper, lower)
    threshold = int(mags[on_tie])
    ties = int((mags == threshold).sum())
    for need in (1, ties // 2, ties, ties + 9):
        assert cut16(bits, threshold, need) == tie_cut((bits & 0x7FFF) == threshold, need), need


def test_option_validated_as_one_config_error() -> None:
    """A bad ``job.options.sparsify`` is one ConfigError naming the field; good values pass."""
    with pytest.raises(ConfigError) as info:
        mk.merge_options({"device": "cpu", "sparsify": "quick"})
    assert info.value.field == "job.options.sparsify" and "\n" not in str(info.value)
    for mode in ("fast", "mergekit", None):
        mk.merge_options({"device": "cpu", "sparsify": mode})


def test_trim_installed_only_during_the_merge(tiny_pool, tmp_path: Path) -> None:
    """fast and mergekit TIES merges differ only at tied elements; mergekit's function is restored after."""
    import mergekit.sparsify

    real = mergekit.sparsify.magnitude
    recipe = {"merge_method": "ties", "base_model": str(tiny_pool["math"]), "dtype": "bfloat16",
              "models": [{"model": str(tiny_pool[m]), "parameters": {"weight": 0.5, "density": 0.5}}
                         for m in ("coder", "science")]}
    opts = {"device": "cpu", "random_seed": 0, "out_shard_size": "1B"}
    mk.run_mergekit(recipe, tmp_path / "fast", opts)
    assert mergekit.sparsify.magnitude is real
    mk.run_mergekit(recipe, tmp_path / "mk", {**opts, "sparsify": "mergekit"})
    fast, ref = load_file(tmp_path / "fast" / "model.safetensors"), load_file(tmp_path / "mk" / "model.safetensors")
    assert fast.keys() == ref.keys()
    same = sum(int((fast[k] == ref[k]).sum()) for k in fast)
    total = sum(v.numel() for v in fast.values())
    assert same / total > 0.95  # the rest: which tied magnitudes survived the trim
