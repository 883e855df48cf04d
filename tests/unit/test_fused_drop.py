"""DARE's and DELLA's compiled drop-and-rescale (``fused_drop.py``): the torch path's bits, whole or by chunks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from mergekit.sparsify import RescaleNorm

from hpc_merge.mergekit_adapter import fused_drop
from hpc_merge.mergekit_adapter.chunk_trim import ChunkRecorded
from hpc_merge.mergekit_adapter.random_sparsify import RescaleSums, Site, at, counter_bernoulli, counter_della


def _inputs(kind: str, shape: tuple[int, int] = (300, 257), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, model) in bf16: a real-looking fine-tune (a few ulps, many ties) or harder cases."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(shape, generator=g) * 0.02).bfloat16()
    if kind == "ulps":  # 1 % of the spread: a few bf16 ulps, equal magnitudes everywhere, exact zeros
        model = (base.float() + torch.randn(shape, generator=g) * 0.0002).bfloat16()
    elif kind == "wide":  # exponents spanning far more than 33 binades within one block, subnormals, signed zeros
        model = (base.float() + torch.randn(shape, generator=g) * 0.01).bfloat16()
        model.view(-1)[::97] = torch.tensor(3e30).bfloat16()
        model.view(-1)[5::101] = (base.view(-1)[5::101].float() + 1e-39).bfloat16()
        model.view(-1)[7::89] = base.view(-1)[7::89]
    elif kind == "huge":  # magnitudes near bf16's largest: the integer path of the norm kernel
        base = (torch.randn(shape, generator=g) * 1e37).bfloat16()
        model = (torch.randn(shape, generator=g) * 1e37).bfloat16()
    else:
        raise ValueError(kind)
    return base, model


# (fused entry point, the torch drop-in it replaces), each called with (density, rescale)
METHODS: dict[str, tuple[Callable[..., bool], Callable[..., torch.Tensor]]] = {
    "dare": (lambda out, b, m, d, r: fused_drop.dare_into(out, b, m, d, r),
             lambda x, d, norm: counter_bernoulli(x, d, norm)),
    "della": (lambda out, b, m, d, r: fused_drop.della_into(out, b, m, d, min(0.1, d / 2, (1 - d) / 2), r),
              lambda x, d, norm: counter_della(x, d, min(0.1, d / 2, (1 - d) / 2), norm)),
}


def _torch_path(method: str, base: torch.Tensor, model: torch.Tensor, density: float, rescale: bool,
                site: Site) -> torch.Tensor:
    with at(site):
        return METHODS[method][1](model - base, density, RescaleNorm.l1 if rescale else None)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("kind", ["ulps", "wide", "huge"])
@pytest.mark.parametrize("density", [0.05, 0.5, 0.9, 0.99999])
@pytest.mark.parametrize("rescale", [True, False])
def test_whole_tensor_equals_the_torch_path(method: str, kind: str, density: float, rescale: bool) -> None:
    base, model = _inputs(kind)
    expected = _torch_path(method, base, model, density, rescale, Site(seed=3, name="w"))
    out = torch.empty_like(base)
    site = Site(seed=3, name="w")
    with at(site):
        assert METHODS[method][0](out, base, model, density, rescale)
    assert site.calls == 1
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("kind", ["ulps", "wide"])
@pytest.mark.parametrize("rows", [1, 7, 64, 300])
def test_chunks_equal_the_whole_tensor(method: str, kind: str, rows: int) -> None:
    """Two vectors, recorded then applied chunk by chunk like ChunkedMerge: the whole tensor's bits."""
    fused = METHODS[method][0]
    base, m0 = _inputs(kind, seed=1)
    _, m1 = _inputs(kind, seed=2)
    row = base.shape[1]
    expected = []
    for vector, model in enumerate((m0, m1)):
        site = Site(seed=0, name="x")
        site.calls = vector
        expected.append(_torch_path(method, base, model, 0.3, True, site))
    sums = RescaleSums()
    for a in range(0, base.shape[0], rows):
        site = Site(seed=0, name="x", offset=a * row, numel=base.numel(), sums=sums, recording=True, n_vectors=2)
        with at(site), contextlib.suppress(ChunkRecorded):
            for model in (m0, m1):
                assert fused(torch.empty_like(base[a:a + rows]), base[a:a + rows], model[a:a + rows], 0.3, True)
            pytest.fail("the last vector of a recording pass raises ChunkRecorded")
    out = torch.empty((2, *base.shape), dtype=torch.bfloat16)
    for a in range(0, base.shape[0], rows):
        site = Site(seed=0, name="x", offset=a * row, numel=base.numel(), sums=sums, n_vectors=2)
        with at(site):
            for vector, model in enumerate((m0, m1)):
                part = torch.empty_like(base[a:a + rows])
                assert fused(part, base[a:a + rows], model[a:a + rows], 0.3, True)
                out[vector, a:a + rows] = part
    for vector in range(2):
        assert torch.equal(out[vector].view(torch.int16), expected[vector].view(torch.int16))


def test_norms_of_a_large_tensor_are_exact() -> None:
    """8M elements (a 16 MB chunk): every partition's float64 block sums near 2^53, summed without overflow."""
    from hpc_merge.mergekit_adapter.counter_draws import keep_mask
    from hpc_merge.mergekit_adapter.exact_norm import exact_l1
    from hpc_merge.mergekit_adapter.random_sparsify import _masked

    base, model = _inputs("ulps", shape=(4096, 2048), seed=6)
    delta = model - base
    mul, add = (w & 0xFFFFFFFF for w in fused_drop.key(1, "big", 0))
    norms = fused_drop._norms(fused_drop._bits(base), fused_drop._bits(model), 12345, mul, add, 19661, None)
    mask = keep_mask(1, "big", 0, 12345, delta.numel(), 19661 / 65536).view(delta.shape)
    assert norms == (exact_l1(delta), exact_l1(_masked(delta, mask)))


def test_declines_what_it_does_not_reproduce() -> None:
    """inf task vectors, float32, all-or-nothing densities, DELLA on 1-D, no draw site: False, nothing counted."""
    base, model = _inputs("ulps")
    out = torch.empty_like(base)
    assert not fused_drop.dare_into(out, base, model, 0.5, True)  # no site
    bad = model.clone()
    bad[3, 4] = float("inf")
    cases = [(fused_drop.dare_into, out, base, bad, 0.5, True),
             (fused_drop.dare_into, out.float(), base.float(), model.float(), 0.5, True),
             (fused_drop.dare_into, out, base, model, 1.0, True),
             (fused_drop.dare_into, out, base, model, 1e-9, True),
             (fused_drop.della_into, out, base, bad, 0.5, 0.1, True),
             (fused_drop.della_into, out[0], base[0], model[0], 0.5, 0.1, True),
             (fused_drop.della_into, out, base, model, 0.5, 0.5, True)]
    for fn, *args in cases:
        site = Site(seed=0, name="w")
        with at(site):
            assert not fn(*args)
        assert site.calls == 0


@pytest.mark.parametrize("sparsification", ["random", "della_magprune"])
def test_merge_group_takes_the_compiled_path_and_keeps_the_bits(sparsification: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A dare_ties / della merge step with the kernels equals the same step with them switched off."""
    from hpc_merge.mergekit_adapter import fused_combine, patches

    base, m0 = _inputs("ulps", seed=4)
    _, m1 = _inputs("ulps", seed=5)
    name = "dare_into" if sparsification == "random" else "della_into"
    real = getattr(fused_drop, name)
    calls = []

    def counting(*args: object) -> bool:
        calls.append(1)
        return real(*args)

    outs = []
    for fused in (True, False):
        monkeypatch.setattr(fused_drop, name, counting if fused else (lambda *a: False))
        with patches.counter_random(0), patches.fused_combine_step():
            outs.append(_ties_group(fused_combine, sparsification, base, m0, m1))
    assert len(calls) == 2
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))


def _ties_group(fused_combine: object, sparsification: str, base: torch.Tensor, m0: torch.Tensor,
                m1: torch.Tensor) -> torch.Tensor:
    from types import SimpleNamespace

    from mergekit.merge_methods.generalized_task_arithmetic import ConsensusMethod
    from mergekit.sparsify import SparsificationMethod

    method = SimpleNamespace(consensus_method=ConsensusMethod.sum,
                             sparsification_method=SparsificationMethod(sparsification))
    entries = [SimpleNamespace(id=i, tensor=t) for i, t in enumerate((m0, m1))]
    group = SimpleNamespace(base=SimpleNamespace(tensor=base), non_base=entries)
    params = {"density": [0.4, 0.6], "weight": [0.5, 0.7], "rescale": True, "normalize": True, "lambda": 1.0,
              "epsilon": [0.1, 0.2]}
    with at(Site(seed=0, name="t")):
        return fused_combine.merge_group(None, method, group, params)  # type: ignore[attr-defined]
