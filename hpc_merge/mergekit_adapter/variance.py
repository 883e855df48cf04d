"""SCE's per-element variance across task vectors, equal to ``torch.var(tvs, dim=0, unbiased=False)``.

Why: on CPU, torch reduces a leading axis of two or three inputs with a scalar Welford loop; for
three 0.5B bf16 models it was 49 of an SCE merge's 73 CPU seconds (2026-12-03 profile). The
compiled kernel (:func:`~hpc_merge.mergekit_adapter.numba_kernels.var_bf16`) does the same
arithmetic (float64 Welford over the inputs in order, then float64 -> float32 -> bf16) in one
parallel pass; tested equal to torch bit for bit. Other dtypes and devices use torch.var.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MIN_ELEMENTS = 1 << 16  # below this, torch.var is as fast as the kernel call


def population_var(tvs: torch.Tensor) -> torch.Tensor:
    """``torch.var(tvs, dim=0, unbiased=False)``: the same values, the compiled kernel where it applies."""
    import torch

    n = tvs.shape[0]
    if (tvs.device.type != "cpu" or tvs.dtype not in (torch.bfloat16, torch.float32) or n == 0
            or tvs[0].numel() < MIN_ELEMENTS):
        return torch.var(tvs, dim=0, unbiased=False)
    from hpc_merge.mergekit_adapter.numba_kernels import var_bf16, var_f32

    flat = tvs.reshape(n, -1).contiguous()
    out = torch.empty(tvs.shape[1:], dtype=tvs.dtype)
    if tvs.dtype == torch.bfloat16:
        var_bf16(flat.view(torch.int16).numpy(), out.view(-1).view(torch.int16).numpy())
    else:
        var_f32(flat.numpy(), out.view(-1).numpy())
    return out
