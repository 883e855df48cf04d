"""The fused SCE combine (``mergekit_adapter/fused_sce.py``) equals mergekit's ``sce_merge`` bit for bit."""

from __future__ import annotations

import itertools

import torch
from mergekit.merge_methods.base import TensorEntry, TensorGroup
from mergekit.merge_methods.sce import sce_merge

from hpc_merge.mergekit_adapter import fused_sce
from hpc_merge.mergekit_adapter.fused_combine import bf16_alike

REAL = sce_merge.implementation


def _group(n: int, kind: str, shape: tuple[int, int], g: torch.Generator) -> TensorGroup:
    """Base + ``n`` bf16 fine-tunes: a few ulps apart (``ft``), on a coarse grid (ties, exact zeros,
    opposite signs), or equal to the base (``same``: zero task vectors, SCE's equal-weights branch)."""
    base = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    base.view(-1)[:5] = -0.0
    tensors = []
    for _ in range(n):
        if kind == "ft":
            t = base.float() + 0.01 * base.float().std() * torch.randn(shape, generator=g)
        elif kind == "grid":
            t = base.float() + torch.randint(-2, 3, shape, generator=g) * 1e-3
        else:
            t = base.float()
        tensors.append(t.to(torch.bfloat16))
    return TensorGroup([TensorEntry("base", base, is_base=True)] + [TensorEntry(f"m{i}", t) for i, t in enumerate(tensors)])


def test_fused_sce_equals_mergekit_bit_for_bit() -> None:
    """1-3 inputs, three kinds of task vectors, with and without selection, int8 masks, more than one kernel block."""
    g = torch.Generator().manual_seed(0)
    checked = 0
    for n, kind, topk, int8, shape in itertools.product([1, 2, 3], ["ft", "grid", "same"], [1.0, 0.5, 0.1],
                                                        [False, True], [(23, 41), (97, 211)]):
        group = _group(n, kind, shape, g)
        want = REAL(group, int8_mask=int8, select_topk=topk)
        got = fused_sce.merge(REAL, group, int8_mask=int8, select_topk=topk)
        assert got.dtype == want.dtype and torch.equal(got.view(torch.int16), want.view(torch.int16)), \
            (n, kind, topk, int8, shape)
        checked += 1
    assert checked == 108


def test_float32_runs_mergekits_own_code() -> None:
    g = torch.Generator().manual_seed(1)
    bf16 = _group(2, "ft", (23, 41), g)
    group = TensorGroup([TensorEntry("base", bf16.base.tensor.float(), is_base=True)]
                        + [TensorEntry(e.id, e.tensor.float()) for e in bf16.non_base])
    assert not bf16_alike(group.base.tensor, [e.tensor for e in group.non_base])
    want = REAL(group, select_topk=0.5)
    assert torch.equal(fused_sce.merge(REAL, group, select_topk=0.5), want)
