"""Counter-based DARE masks (``random_sparsify.py``): mergekit's distribution, any chunking gives the same model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hpc_merge import mergekit_adapter as mk
from hpc_merge.mergekit_adapter.random_sparsify import Site, at, counter_bernoulli, exact_l1, keep_mask


def test_exact_l1_is_the_exact_sum_whatever_the_split() -> None:
    g = torch.Generator().manual_seed(0)
    for dtype, unit in ((torch.bfloat16, 2.0 ** -133), (torch.float16, 2.0 ** -24), (torch.float32, 2.0 ** -149)):
        x = (torch.randn(300, 17, generator=g) * 0.02).to(dtype)
        x[0, :3] = torch.tensor([0.0, 1e-30, -5.0]).to(dtype)  # zero, (bf16/f32) tiny, large
        exact = math.fsum(x.double().abs().reshape(-1).tolist())  # bf16/f16/f32 sums of this size fit a double
        assert exact_l1(x) * unit == exact, dtype
        assert exact_l1(x[:7]) + exact_l1(x[7:]) == exact_l1(x)


def test_mask_depends_only_on_coordinates() -> None:
    """Any split of the index range draws the same decisions; name, vector and seed change them."""
    whole = keep_mask(0, "w", 0, 0, 100_001, 0.3)
    parts = torch.cat([keep_mask(0, "w", 0, a, min(a + 777, 100_001) - a, 0.3) for a in range(0, 100_001, 777)])
    assert torch.equal(whole, parts)
    for other in (keep_mask(1, "w", 0, 0, 100_001, 0.3), keep_mask(0, "v", 0, 0, 100_001, 0.3),
                  keep_mask(0, "w", 1, 0, 100_001, 0.3)):
        agree = float((other == whole).float().mean())
        assert abs(agree - (0.3 ** 2 + 0.7 ** 2)) < 0.01  # independent draws, not the same mask


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_keep_rate_and_rescale_match_mergekit(density: float, dtype: torch.dtype) -> None:
    """Same keep rate as mergekit's bernoulli (binomial bounds) and the same L1 rescaling of the survivors."""
    from mergekit.sparsify import RescaleNorm, bernoulli

    g = torch.Generator().manual_seed(2)
    x = (torch.randn(512, 512, generator=g) * 0.01).to(dtype)
    x[x == 0] = 0.01  # kept = non-zero
    n = x.numel()
    torch.manual_seed(0)
    theirs = bernoulli(x, density, RescaleNorm.l1)
    with at(Site(seed=0, name="t")):
        ours = counter_bernoulli(x, density, RescaleNorm.l1)
    sigma = math.sqrt(n * density * (1 - density))
    for out in (ours, theirs):
        kept = int((out != 0).sum())
        assert abs(kept - density * n) < 5 * sigma
        l1_in, l1_out = float(x.double().abs().sum()), float(out.double().abs().sum())
        assert abs(l1_out / l1_in - 1) < 0.01  # both rescale the kept part to the input's L1 norm
        scale = (out[out != 0].double() / x[out != 0].double()).median()
        assert abs(float(scale) - 1 / density) < 0.05 / density
    with at(Site(seed=0, name="t")):
        plain = counter_bernoulli(x, density, None)
    assert torch.equal(plain != 0, ours != 0) and torch.equal(plain[plain != 0], x[plain != 0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_della_keep_probability_follows_rank_like_mergekit(dtype: torch.dtype) -> None:
    """Overall keep rate density; the largest magnitudes of each row kept more often, as much as mergekit's."""
    from mergekit.sparsify import RescaleNorm, della_magprune

    from hpc_merge.mergekit_adapter.random_sparsify import counter_della

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(256, 1024, generator=g) * 0.01).to(dtype)
    x[x == 0] = 0.01
    torch.manual_seed(0)
    theirs = della_magprune(x, 0.4, 0.3, RescaleNorm.l1)
    with at(Site(seed=0, name="t")):
        ours = counter_della(x, 0.4, 0.3, RescaleNorm.l1)
    large = x.abs() >= x.abs().median(dim=1, keepdim=True).values  # top half of each row
    rates = {}
    for label, out in (("ours", ours), ("theirs", theirs)):
        kept = out != 0
        rates[label] = (float(kept.float().mean()), float(kept[large].float().mean()), float(kept[~large].float().mean()))
        assert abs(float(out.double().abs().sum()) / float(x.double().abs().sum()) - 1) < 0.01
    for ours_rate, theirs_rate in zip(rates["ours"], rates["theirs"], strict=True):
        assert abs(ours_rate - theirs_rate) < 0.01, rates
    assert rates["ours"][1] > rates["ours"][2] + 0.2  # ≈ 0.55 vs 0.25


def _dare(pool: dict[str, Path], method: str, rescale: bool) -> dict:
    extra = {"epsilon": 0.2} if method.startswith("della") else {}
    return {"merge_method": method, "base_model": str(pool["base"]), "dtype": "bfloat16",
            "parameters": {"rescale": rescale},
            "models": [{"model": str(pool[m]), "parameters": {"weight": w, "density": d, **extra}}
                       for m, w, d in (("math", 0.6, 0.35), ("coder", 0.5, 0.6), ("science", 0.4, 0.5))]}


@pytest.mark.parametrize("method,rescale", [("dare_ties", True), ("dare_linear", True), ("dare_ties", False),
                                            ("della", True), ("della_linear", False)])
def test_dare_same_model_for_any_chunk_size_and_threads(tiny_pool, tmp_path: Path, method: str, rescale: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole tensors, 1K and 5K row chunks, one thread: the same bytes; another seed: another model."""
    from hpc_merge.mergekit_adapter import chunked

    chunked_calls: list[tuple[int, ...]] = []
    real = chunked.ChunkedMerge._merge_random
    monkeypatch.setattr(chunked.ChunkedMerge, "_merge_random",
                        lambda self, *a: chunked_calls.append(self.shape) or real(self, *a))
    recipe = _dare(tiny_pool, method, rescale)
    runs = {"whole": {"chunk_size": 0}, "1K": {"chunk_size": "1K"}, "5K": {"chunk_size": "5K"}}
    outs = {}
    for label, extra in runs.items():
        mk.run_mergekit(recipe, tmp_path / label, {"device": "cpu", "random_seed": 7, **extra})
        outs[label] = load_file(tmp_path / label / "model.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mk.run_mergekit(recipe, tmp_path / "one", {"device": "cpu", "random_seed": 7, "chunk_size": "2K"})
    finally:
        torch.set_num_threads(threads)
    outs["one thread"] = load_file(tmp_path / "one" / "model.safetensors")
    mk.run_mergekit(recipe, tmp_path / "seed8", {"device": "cpu", "random_seed": 8})
    other = load_file(tmp_path / "seed8" / "model.safetensors")
    assert any(shape[0] >= 64 for shape in chunked_calls)  # the embedding and MLP matrices went by row chunks
    whole = outs.pop("whole")
    for label, out in outs.items():
        assert out.keys() == whole.keys()
        for key in whole:
            assert torch.equal(out[key], whole[key]), (label, key)
    big = max(whole, key=lambda k: whole[k].numel())
    assert not torch.equal(other[big], whole[big])


def test_sparsify_mergekit_keeps_mergekit_stream(tiny_pool, tmp_path: Path) -> None:
    """``sparsify: mergekit`` draws from torch's generator like mergekit-yaml (the seed fixes it)."""
    import mergekit.merge
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    recipe = _dare(tiny_pool, "dare_ties", True)
    mk.run_mergekit(recipe, tmp_path / "ours", {"device": "cpu", "random_seed": 3, "sparsify": "mergekit"})
    mergekit.merge.run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "theirs"),
                             options=MergeOptions(random_seed=3, quiet=True))
    ours, theirs = (load_file(tmp_path / d / "model.safetensors") for d in ("ours", "theirs"))
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("shape", [(1, 1), (3, 700), (64, 37), (5, 4096)])
def test_della_radix_ranks_equal_a_stable_sort(shape: tuple[int, int]) -> None:
    """The compiled per-row radix sort ranks like ``torch.sort(stable=True)``: ties by column, every bit pattern."""
    from hpc_merge.mergekit_adapter.numba_kernels import rank_limits16

    g = torch.Generator().manual_seed(shape[1])
    for keys in (torch.randint(0, 1 << 15, shape, generator=g, dtype=torch.int16),  # high and low bytes both vary
                 torch.randint(0, 5, shape, generator=g, dtype=torch.int16) * 257):  # ties everywhere
        table = torch.randint(-32768, 32767, (shape[1],), generator=g, dtype=torch.int16)
        order = torch.sort(keys, dim=1, stable=True).indices
        want = torch.empty(shape, dtype=torch.int16).scatter_(1, order, table.expand(shape))
        got = torch.empty(shape, dtype=torch.int16)
        rank_limits16(keys.numpy(), table.numpy(), got.numpy())
        assert torch.equal(got, want)
