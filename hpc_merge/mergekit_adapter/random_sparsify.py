"""DARE's and DELLA's random drops with a counter-based generator: a mask is a pure function of its coordinates.

Why: mergekit 0.1.5 draws DARE's mask (``dare_ties``, ``dare_linear``: ``mergekit.sparsify.bernoulli``)
and DELLA's (``della``, ``della_linear``: ``della_magprune``) from torch's global generator, so a tensor's mask depends on every draw before it — on the order
in which the executor runs tensors, and on the whole tensor being drawn at once. Merged in row
chunks, or in another order, or split over processes, the same recipe would give another model.
Its rescaling (``rescale: true``, the default) matches the L1 norm of the whole task vector, which
a row chunk does not have either.

What: while ``patches.counter_random`` is active (``job.options.sparsify: fast``, the default), the
keep decision of element ``i`` of task vector ``v`` of tensor ``name`` is bits of
``hash32(i // 2)`` (two 16-bit draws per 32-bit hash; ``lowbias32`` of the index mixed with a key
from BLAKE2b of ``(random_seed, name, v)``): kept iff the draw is below ``round(density · 65536)``
— the keep rate is ``density`` to within 1/131072 (DELLA: the same draws against each element's
rank-dependent probability, :func:`counter_della`). The L1 norms of the task vector and of its kept
part are summed *exactly* (integer histograms of the bit patterns for 16-bit floats, integer
mantissa sums per exponent for float32), so they are the same whatever the chunking or thread
count, and the kept elements are scaled by their ratio as mergekit does. The result is therefore
identical for any ``chunk_size``, thread count or split of the work, and reproducible across runs
(``random_seed`` unset = 0). It is NOT mergekit's random stream: ``job.options.sparsify: mergekit``
keeps mergekit's own draws (bit-identical to ``mergekit-yaml`` with the same ``random_seed``).

The kernels are split by idea: the hash and its draws in :mod:`~hpc_merge.mergekit_adapter.counter_draws`,
the exact norms in :mod:`~hpc_merge.mergekit_adapter.exact_norm`, DELLA's ranks in
:mod:`~hpc_merge.mergekit_adapter.della_rank`; this module holds the drop-ins and where they draw.

Chunked merges (:mod:`~hpc_merge.mergekit_adapter.chunked`) with rescaling run two passes: the
first sums the norms (the call after the last task vector raises ``ChunkRecorded``), the second
applies the masks and the whole tensor's scale. float64 task vectors are merged whole (their norm
is torch's float64 sum).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpc_merge.mergekit_adapter.chunk_trim import ChunkRecorded, NotStreamable
from hpc_merge.mergekit_adapter.counter_draws import keep_mask, signed_draws
from hpc_merge.mergekit_adapter.della_rank import della_keep
from hpc_merge.mergekit_adapter.exact_norm import exact_l1, rescale_factor
from hpc_merge.mergekit_adapter.topk import INF16

if TYPE_CHECKING:
    import torch


@dataclass
class RescaleSums:
    """Exact L1 norms (as integers times 2^-scale) of each task vector and of its kept part."""

    before: dict[int, int] = field(default_factory=dict)  # task vector index -> Σ|delta|
    after: dict[int, int] = field(default_factory=dict)  # -> Σ|kept delta|


@dataclass
class Site:
    """Where the current calls come from: tensor ``name``, flat ``offset`` of the rows, whole ``numel``."""

    seed: int
    name: str
    offset: int = 0
    numel: int | None = None  # None: the call holds the whole tensor
    sums: RescaleSums | None = None  # set by a chunked merge: whole-tensor norms (pass 2) or being summed (pass 1)
    recording: bool = False
    n_vectors: int = 0
    calls: int = 0


SITE: contextvars.ContextVar[Site | None] = contextvars.ContextVar("hpc_merge_random_site", default=None)
#: the merge's ``random_seed`` while ``patches.counter_random`` is active (None: mergekit's own draws)
SEED: contextvars.ContextVar[int | None] = contextvars.ContextVar("hpc_merge_random_seed", default=None)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """mergekit's working dtype for random drops on CPU: bf16 stays, others go to float32 (float64 stays)."""
    import torch

    return dtype if dtype in (torch.bfloat16, torch.float64) else torch.float32


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x * mask`` (bool mask): for 16-bit floats without inf/NaN by keeping the bits or only the sign bit.

    ``x * 1 == x`` and ``x * 0`` is a zero of ``x``'s sign for finite ``x``, so the result is the
    product's bits, without converting the mask to the float dtype (a third of the time).
    """
    import torch

    name = str(x.dtype).removeprefix("torch.")
    if name in INF16 and x.is_contiguous():
        bits = x.view(torch.int16)
        if bits.numel() == 0 or int((bits & 0x7FFF).max()) < INF16[name]:
            word = mask.to(torch.int16).neg_()  # kept: -1 (all ones), dropped: 0
            word |= -0x8000  # dropped elements keep their sign bit
            word &= bits
            return word.view(x.dtype)
    return x * mask


def _finish(site: Site, vector: int, tensor: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
            rescale_norm: Any) -> torch.Tensor:
    """``x * mask``, rescaled to the whole task vector's L1 norm like mergekit (or a pass-1 recording)."""
    import torch
    from mergekit.sparsify import RescaleNorm

    masked = _masked(x, mask)
    if rescale_norm is None:
        if site.recording and site.calls == site.n_vectors:
            raise ChunkRecorded
        return masked.to(tensor.dtype)
    if rescale_norm != RescaleNorm.l1:
        raise NotStreamable(f"rescale norm {rescale_norm}")
    if site.sums is None:  # the whole tensor is here: its norms directly
        if x.dtype == torch.float64:
            before, after = float(x.abs().sum()), float(masked.abs().sum())
            factor = None if before < 1e-7 or after < 1e-7 else before / after
        else:
            factor = rescale_factor(exact_l1(x), exact_l1(masked), x.dtype)
    elif site.recording:  # pass 1 of a chunked merge: add this chunk to the whole tensor's norms
        site.sums.before[vector] = site.sums.before.get(vector, 0) + exact_l1(x)
        site.sums.after[vector] = site.sums.after.get(vector, 0) + exact_l1(masked)
        if site.calls == site.n_vectors:
            raise ChunkRecorded
        return tensor
    else:
        factor = rescale_factor(site.sums.before[vector], site.sums.after[vector], x.dtype)
    if factor is not None:
        masked *= factor
    return masked.to(tensor.dtype)


def _next_call(site: Site | None) -> tuple[Site, int]:
    if site is None:  # not inside a planned merge task (no tensor name): nothing to key the mask on
        raise RuntimeError("counter-based sparsification called outside a merge task")
    site.calls += 1
    return site, site.calls - 1


def _unchanged(site: Site, tensor: torch.Tensor) -> torch.Tensor:
    if site.recording and site.calls == site.n_vectors:
        raise ChunkRecorded
    return tensor


def counter_bernoulli(tensor: torch.Tensor, density: float, rescale_norm: Any = None) -> torch.Tensor:
    """Drop-in for ``mergekit.sparsify.bernoulli`` with the counter-based mask (see the module doc)."""
    site, vector = _next_call(SITE.get())
    if density >= 1:
        return _unchanged(site, tensor)
    x = tensor.to(_work_dtype(tensor.dtype))
    mask = keep_mask(site.seed, site.name, vector, site.offset, x.numel(), density).view(x.shape)
    return _finish(site, vector, tensor, x, mask, rescale_norm)


def counter_della(tensor: torch.Tensor, density: float, epsilon: float, rescale_norm: Any = None) -> torch.Tensor:
    """Drop-in for ``mergekit.sparsify.della_magprune`` (DELLA's MAGPRUNE) with counter-based draws.

    As mergekit: within each row, the element of magnitude rank r (1 = smallest) of c is kept with
    probability ``density - epsilon + 2 · epsilon · (r - 1) / (c - 1)`` (computed in the same working
    dtype), then the L1 rescale. Equal magnitudes are ranked by column (mergekit's argsort leaves
    their order to the sort), so the ranks, like the draws, are a function of the data alone. Rows
    are never split by a chunked merge (2-D tensors only), so the result is the same for any chunk size.
    """
    import torch

    site, vector = _next_call(SITE.get())
    if density >= 1:
        return _unchanged(site, tensor)
    if density <= 0:
        return _unchanged(site, torch.zeros_like(tensor))
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("Epsilon must be chosen such that density +/- epsilon is in (0, 1)")
    x = tensor.to(_work_dtype(tensor.dtype))
    draws = signed_draws(site.seed, site.name, vector, site.offset, x.numel())
    return _finish(site, vector, tensor, x, della_keep(x, draws, density, epsilon), rescale_norm)


@contextlib.contextmanager
def at(site: Site) -> Iterator[Site]:
    """Calls inside the block draw for ``site`` (a tensor, or a row chunk of it)."""
    token = SITE.set(site)
    try:
        yield site
    finally:
        SITE.reset(token)
