"""DELLA's rank-dependent keep decisions, from one sort per row and a per-rank threshold table.

mergekit's MAGPRUNE keeps the element of magnitude rank ``r`` (1 = smallest) of a row of ``c`` with
probability ``p(r) = density - epsilon + 2 · epsilon · (r - 1) / (c - 1)``, computed elementwise in
the working dtype (bf16 for bf16 tensors). Computed that way for every element it is ten passes
over the tensor (ranks to the working dtype, min, max, subtract, divide, clamp, two multiplies, an
add, a float copy) plus an int64 rank per element — most of DELLA's time after the sort.

Here ``p`` depends on the rank alone (each row's ranks are a permutation of ``1..c``, so the row
minimum and maximum are the same for every row): it is computed once for ``r = 1..c`` with the
same operations in the same dtype (bit for bit the values the per-element formula gives), turned
into an integer threshold on the signed draws of :mod:`~hpc_merge.mergekit_adapter.counter_draws`
(``draw < p · 65536`` ⇔ ``draw - 32768 <= ceil(p · 65536) - 32769``), and scattered to the
elements in one pass through the sort's order. For 16-bit dtypes the sort and the scatter are one
compiled kernel (``numba_kernels.rank_limits16``: a stable radix sort per row, rows in parallel;
torch's stable sort per row ran on one thread and was ~70 % of DELLA's time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpc_merge.mergekit_adapter.counter_draws import RESOLUTION

if TYPE_CHECKING:
    import torch

_HALF = RESOLUTION // 2


def rank_table(cols: int, density: float, epsilon: float, work: torch.dtype) -> torch.Tensor | None:
    """int16 thresholds on signed draws for ranks ``1..cols`` (index ``r - 1``), or None if one cannot be an int16.

    None where some rank can never be kept (a probability ≤ 0, or NaN for one-column rows):
    the caller then compares the draws with the probabilities directly.
    """
    import torch

    ranks = torch.arange(1, cols + 1).view(1, cols).to(work)
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    probs = (density - epsilon) + ((ranks - low) / (high - low)).clamp(0, 1) * 2 * epsilon
    limits = (probs.float() * RESOLUTION).double().ceil() - (1 + _HALF)  # keep iff signed draw <= limit
    if bool(limits.isnan().any()) or float(limits.min()) < -_HALF:
        return None
    return limits.clamp(max=_HALF - 1).to(torch.int16).view(cols)


def probabilities(rows: torch.Tensor, order: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """mergekit's per-element keep probabilities (the slow reference, for the cases :func:`rank_table` declines)."""
    import torch

    cols = rows.shape[1]
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(1, cols + 1).expand(rows.shape[0], cols))
    ranks = ranks.to(rows.dtype)
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    return (density - epsilon) + ((ranks - low) / (high - low)).clamp(0, 1) * 2 * epsilon


def della_keep(x: torch.Tensor, signed: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """Keep mask (bool, shape of ``x``) of DELLA's draws ``signed`` (int16, flat, draw - 32768) for ``x`` in the working dtype.

    Ranks run along dim 1 (a 1-D tensor is one row); equal magnitudes are ranked by column (a
    stable sort of the magnitudes' bit patterns), so the ranks are a function of the data alone.
    """
    import torch

    along = x.view(1, -1) if x.dim() < 2 else x.movedim(1, -1) if x.dim() > 2 else x
    rows = along.reshape(-1, along.shape[-1])
    magnitudes = rows.abs()
    keys = magnitudes.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[magnitudes.element_size()])
    cols = rows.shape[1]
    table = rank_table(cols, density, epsilon, x.dtype)
    if table is not None and keys.dtype == torch.int16 and int(keys.min()) >= 0:
        from hpc_merge.mergekit_adapter.numba_kernels import rank_limits16

        limits = torch.empty(keys.shape, dtype=torch.int16)  # one radix sort per row, rows in parallel
        rank_limits16(keys.contiguous().numpy(), table.numpy(), limits.numpy())
    else:
        order = torch.sort(keys, dim=1, stable=True).indices
        if table is None:
            probs = probabilities(rows, order, density, epsilon).view(along.shape)
            probs = probs.view(x.shape) if x.dim() <= 2 else probs.movedim(-1, 1)
            draws = signed.to(torch.int32).view(x.shape) + _HALF
            return draws < probs.float() * RESOLUTION
        limits = torch.empty(order.shape, dtype=torch.int16).scatter_(1, order, table.expand(order.shape))
        del order
    del keys, magnitudes
    limits = limits.view(along.shape)
    limits = limits.view(x.shape) if x.dim() <= 2 else limits.movedim(-1, 1)
    return signed.view(x.shape) <= limits
