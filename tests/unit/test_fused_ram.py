"""The fused RAM combine (``mergekit_adapter/fused_ram.py``) equals mergekit's ``ram_merge`` bit for bit."""

from __future__ import annotations

import itertools

import torch
from mergekit.merge_methods.base import TensorEntry, TensorGroup
from mergekit.merge_methods.ram import ram_merge

from hpc_merge.mergekit_adapter import fused_ram
from hpc_merge.mergekit_adapter.fused_combine import bf16_alike

REAL = ram_merge.implementation


def _group(n: int, kind: str, shape: tuple[int, int], g: torch.Generator) -> TensorGroup:
    """Base + ``n`` bf16 inputs: a few ulps apart (``ft``: many below epsilon), on a coarse grid (exact zeros,
    overlaps of 1..n inputs, opposite signs), equal to the base (``same``), or at epsilon's edges (``edge``)."""
    base = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    base.view(-1)[:5] = -0.0
    if kind == "edge":
        base = torch.zeros(shape, dtype=torch.bfloat16)
        base.view(-1)[::3] = -0.0
    eps16 = float(torch.tensor(1e-5, dtype=torch.bfloat16))
    edges = torch.tensor([eps16, -eps16, 1e-5, -1e-5, eps16 * 1.01, eps16 * 0.99, 0.0, -0.0, 2e-5, 1.5e-5])
    tensors = []
    for _ in range(n):
        if kind == "ft":
            t = base.float() + 1e-3 * base.float().std() * torch.randn(shape, generator=g)
        elif kind == "grid":
            t = base.float() + torch.randint(-2, 3, shape, generator=g) * 1e-3 * (torch.rand(shape, generator=g) < 0.5)
        elif kind == "edge":
            t = edges[torch.randint(0, len(edges), shape, generator=g)]
        else:
            t = base.float()
        tensors.append(t.to(torch.bfloat16))
    return TensorGroup([TensorEntry("base", base, is_base=True)] + [TensorEntry(f"m{i}", t) for i, t in enumerate(tensors)])


def test_fused_ram_equals_mergekit_bit_for_bit() -> None:
    """1-3 inputs, four kinds of task vectors, three epsilons, more than one kernel block."""
    g = torch.Generator().manual_seed(0)
    checked = 0
    for n, kind, eps, shape in itertools.product([1, 2, 3], ["ft", "grid", "same", "edge"], [1e-5, 0.0, 1e-3],
                                                 [(23, 41), (97, 211)]):
        group = _group(n, kind, shape, g)
        want = REAL(group, epsilon=eps)
        got = fused_ram.merge(REAL, group, epsilon=eps)
        assert got.dtype == want.dtype and torch.equal(got.view(torch.int16), want.view(torch.int16)), \
            (n, kind, eps, shape)
        checked += 1
    assert checked == 72


def test_non_finite_inputs_give_mergekits_bits() -> None:
    """inf and NaN in the inputs: the same bits as mergekit (NaN as torch writes it)."""
    g = torch.Generator().manual_seed(2)
    group = _group(3, "grid", (31, 37), g)
    for entry, value in zip(group.non_base, (float("inf"), float("nan"), float("-inf")), strict=True):
        entry.tensor.view(-1)[7:40:3] = value
    want = REAL(group, epsilon=1e-5)
    got = fused_ram.merge(REAL, group, epsilon=1e-5)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def test_float32_runs_mergekits_own_code() -> None:
    g = torch.Generator().manual_seed(1)
    bf16 = _group(2, "ft", (23, 41), g)
    group = TensorGroup([TensorEntry("base", bf16.base.tensor.float(), is_base=True)]
                        + [TensorEntry(e.id, e.tensor.float()) for e in bf16.non_base])
    assert not bf16_alike(group.base.tensor, [e.tensor for e in group.non_base])
    assert torch.equal(fused_ram.merge(REAL, group), REAL(group))
