"""SCE's erase-and-combine in one compiled pass, bit-identical to mergekit's ``sce_merge`` in bf16.

Why: after its select step (a top-k by variance: :func:`~hpc_merge.mergekit_adapter.trim.exact_sce_mask`
with the variance kernel), mergekit's ``sce_merge`` elects signs, masks the per-input weights,
multiplies, sums, divides and adds the base: a dozen bf16 passes over the stacked task vectors,
each converting to float and back — after the variance fix, most of an SCE merge's CPU.

What: :func:`merge` forms the task vectors, selects them (mergekit's ``sce_mask``, looked up at
call time so the patched exact trim applies) and weights them (mergekit's own ``sce_weight``, a
whole-tensor mean) exactly as mergekit does; the rest runs in
:func:`~hpc_merge.mergekit_adapter.numba_kernels.sce_combine_bf16`, which rounds to bf16 where
torch's ops round. Tested equal to mergekit's ``sce_merge`` bit for bit. bf16 on CPU only;
anything else runs mergekit's function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hpc_merge.mergekit_adapter.fused_combine import bf16_alike


def merge(real: Callable[..., torch.Tensor], group: Any, int8_mask: bool = False,
          select_topk: float = 1.0) -> torch.Tensor:
    """``sce_merge(group, int8_mask, select_topk)`` (``real``: mergekit's implementation)."""
    import mergekit.merge_methods.sce as sce
    import numpy as np

    from hpc_merge.mergekit_adapter.numba_kernels import sce_combine_bf16

    tensors = [entry.tensor for entry in group.non_base]
    base = group.base.tensor
    if not tensors or not bf16_alike(base, tensors):
        return real(group, int8_mask=int8_mask, select_topk=select_topk)
    mask_dtype = torch.int8 if int8_mask else base.dtype
    tvs = torch.stack([t - base for t in tensors], dim=0)
    if select_topk < 1:
        tvs.mul_(sce.sce_mask(tvs, select_topk, mask_dtype).unsqueeze(0))
    weights = sce.sce_weight(tvs)
    floor = torch.zeros(1, dtype=base.dtype).clamp(min=1e-6)  # torch's clamp of a bf16 divisor
    out = torch.empty(base.shape, dtype=torch.bfloat16)
    sce_combine_bf16(base.contiguous().view(torch.int16).reshape(-1).numpy(),
                     tvs.view(torch.int16).reshape(len(tensors), -1).numpy(),
                     weights.float().numpy(), np.float32(floor.item()), out.view(torch.int16).reshape(-1).numpy())
    return out
