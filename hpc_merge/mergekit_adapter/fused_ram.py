"""RAM's combine in one compiled pass, bit-identical to mergekit's ``ram_merge`` in bf16.

Why: mergekit's ``ram_merge`` (Reinforced Agent Merging) is per element — each input's task
vector counts where its magnitude exceeds ``epsilon``; an element changed by one input takes that
input's change, one changed by several takes their mean — but it gets there in about fifteen
bf16 passes over the stacked task vectors (subtractions, ``abs``, comparisons, a count, masks,
products, a division, a sum), each converting to float and back. On real-looking bf16 inputs it
was 3.4 × the I/O floor at 0.5B with twice linear's CPU (issue 15).

What: :func:`merge` runs :func:`~hpc_merge.mergekit_adapter.numba_kernels.ram_combine_bf16`,
which rounds to bf16 exactly where torch's ops round, for bf16 tensors on CPU; everything else
(other dtypes, devices, and ``ramplus_tl``, whose per-tensor statistics stay in mergekit) runs
mergekit's own function, as do task vectors with inf or NaN (the kernel counts them; torch's
NaN bit patterns are not reproduced). Tested equal to ``ram_merge`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hpc_merge.mergekit_adapter.fused_combine import bf16_alike


def merge(real: Callable[..., torch.Tensor], group: Any, epsilon: float = 1e-5) -> torch.Tensor:
    """``ram_merge(group, epsilon)`` (``real``: mergekit's implementation)."""
    import numpy as np

    from hpc_merge.mergekit_adapter.numba_kernels import ram_combine_bf16

    tensors = [entry.tensor for entry in group.non_base]
    base = group.base.tensor
    if not tensors or not bf16_alike(base, tensors):
        return real(group, epsilon=epsilon)
    eps = np.float32(torch.tensor(epsilon, dtype=torch.bfloat16).float().item())  # torch compares in bf16
    models = torch.stack([t.contiguous().view(torch.int16).reshape(-1) for t in tensors])
    out = torch.empty(base.shape, dtype=torch.bfloat16)
    bad = ram_combine_bf16(base.contiguous().view(torch.int16).reshape(-1).numpy(), models.numpy(), eps,
                           out.view(torch.int16).reshape(-1).numpy())
    return real(group, epsilon=epsilon) if bad else out
