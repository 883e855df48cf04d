"""Exact L1 norms of float tensors, as integers: the same whatever the chunking, order or thread count.

Why: DARE's and DELLA's rescaling (:mod:`~hpc_merge.mergekit_adapter.random_sparsify`) matches the
L1 norm of the whole task vector. A chunked merge sums it chunk by chunk; a float sum would depend
on the split. An integer sum (in units of the dtype's smallest subnormal) does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpc_merge.mergekit_adapter.chunk_trim import NotStreamable

if TYPE_CHECKING:
    import torch

# exact L1: (bits of the exponent field, of the mantissa, exponent bias) per float dtype
_FORMATS = {"bfloat16": (8, 7, 127), "float16": (5, 10, 15), "float32": (8, 23, 127)}


def exact_l1(x: torch.Tensor) -> int:
    """Σ|x| exactly, as an integer in units of the dtype's smallest subnormal (order-independent).

    16-bit floats: a histogram of the magnitudes' bit patterns; float32: integer mantissa sums per
    exponent. Integer sums do not depend on how the elements were split or ordered.
    """
    import torch

    name = str(x.dtype).removeprefix("torch.")
    if name not in _FORMATS:
        raise NotStreamable(name)  # float64: merged whole, with torch's float64 sum
    ebits, mbits, _bias = _FORMATS[name]
    flat = x.reshape(-1)
    mantissa_mask = (1 << mbits) - 1
    if name == "float32":
        bits = flat.abs().view(torch.int32)
        exponent = (bits >> mbits).long()
        mantissa = (bits & mantissa_mask).long()
        mantissa += (exponent > 0).long() << mbits
        sums = torch.zeros(1 << ebits, dtype=torch.int64).scatter_add_(0, exponent, mantissa).tolist()
    else:  # count every magnitude pattern, then Σ count × mantissa per exponent (int64: exact)
        counts = torch.bincount(flat.abs().view(torch.int16), minlength=1 << 15).view(1 << ebits, 1 << mbits)
        values = torch.arange(1 << mbits, dtype=torch.int64) + (1 << mbits)
        sums = (counts * values).sum(1)
        sums[0] -= int(counts[0].sum()) << mbits  # subnormals: no implicit leading bit
        sums = sums.tolist()
    return from_exponent_sums(sums)


def from_exponent_sums(sums: list[int]) -> int:
    """The integer of :func:`exact_l1` from per-exponent sums: ``sums[0] + Σ_e sums[e] · 2^(e-1)``.

    ``sums[e]`` is a sum of mantissas (with the implicit bit) of magnitudes of biased exponent
    ``e`` (or any integer in the same units); the all-ones exponent (inf/NaN) is skipped. The
    compiled DARE/DELLA kernels (``numba_kernels.dare_l1_bf16``) produce such sums for bf16.
    """
    total = int(sums[0])
    for e in range(1, len(sums) - 1):
        if sums[e]:
            total += int(sums[e]) << (e - 1)
    return total


def _unit(dtype: torch.dtype) -> float:
    """Value of one unit of :func:`exact_l1` (the smallest subnormal) for ``dtype``."""
    name = str(dtype).removeprefix("torch.")
    _e, mbits, bias = _FORMATS[name]
    return 2.0 ** (1 - bias - mbits)


def rescale_factor(before: int, after: int, dtype: torch.dtype, eps: float = 1e-7) -> float | None:
    """mergekit's L1 rescale factor ``before / after``; None where mergekit leaves the masked tensor alone."""
    unit = _unit(dtype)
    if before * unit < eps or after * unit < eps:
        return None
    return before / after
