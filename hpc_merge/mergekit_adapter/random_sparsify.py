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

Chunked merges (:mod:`~hpc_merge.mergekit_adapter.chunked`) with rescaling run two passes: the
first sums the norms (the call after the last task vector raises ``ChunkRecorded``), the second
applies the masks and the whole tensor's scale. float64 task vectors are merged whole (their norm
is torch's float64 sum).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpc_merge.mergekit_adapter.chunk_trim import ChunkRecorded, NotStreamable

if TYPE_CHECKING:
    import torch

_BLOCK = 1 << 16  # hashes per block: the int32 temporaries of one block stay in the CPU cache
_RESOLUTION = 1 << 16  # one draw = 16 bits


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


def _key(seed: int, name: str, vector: int) -> tuple[int, int]:
    """Two 32-bit words (an odd multiplier and an offset) for one task vector of one tensor."""
    digest = hashlib.blake2b(f"{seed}\0{name}\0{vector}".encode(), digest_size=8).digest()
    mul = int.from_bytes(digest[:4], "little") | 1
    add = int.from_bytes(digest[4:], "little")
    return _signed32(mul), _signed32(add)


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


_M1, _M2 = _signed32(0x7FEB352D), _signed32(0x846CA68B)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` in place on int32 (wrapping multiply; logical shifts by masking the sign-extended bits)."""
    x ^= (x >> 16) & 0xFFFF
    x *= _M1
    x ^= (x >> 15) & 0x1FFFF
    x *= _M2
    x ^= (x >> 16) & 0xFFFF
    return x


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the hash blocks on one intra-op thread.

    A block is a few hundred KB: split over threads it gains nothing, and on a shared machine the
    threads' synchronisation cost 10-50 × the work (measured: 10 ms CPU per 4.4M draws on one
    thread, 0.2-0.5 s on two under load).
    """
    import torch

    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def keep_mask(seed: int, name: str, vector: int, start: int, count: int, density: float) -> torch.Tensor:
    """Keep decisions (bool, flat) of elements ``start .. start+count-1`` of one task vector."""
    with _one_thread():
        return _keep_mask(seed, name, vector, start, count, density)


def _keep_mask(seed: int, name: str, vector: int, start: int, count: int, density: float) -> torch.Tensor:
    import torch

    threshold = round(density * _RESOLUTION)
    mul, add = _key(seed, name, vector)
    first, stop = start // 2, (start + count + 1) // 2
    out = torch.empty(2 * (stop - first), dtype=torch.bool)
    pairs = out.view(-1, 2)
    for a in range(first, stop, _BLOCK):
        b = min(a + _BLOCK, stop)
        x = torch.arange(a, b, dtype=torch.int64).to(torch.int32)
        x *= mul
        x += add
        _hash32(x)
        rows = pairs[a - first:b - first]
        torch.lt(x & 0xFFFF, threshold, out=rows[:, 0])
        torch.lt((x >> 16) & 0xFFFF, threshold, out=rows[:, 1])
    skip = start - 2 * first
    return out[skip:skip + count]


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
        raise NotStreamable(name)
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
    total = sums[0]
    for e in range(1, (1 << ebits) - 1):  # the all-ones exponent is inf/nan: no norm to match
        if sums[e]:
            total += sums[e] << (e - 1)
    return total


def _unit(dtype: torch.dtype) -> float:
    """Value of one unit of :func:`exact_l1` (the smallest subnormal) for ``dtype``."""
    name = str(dtype).removeprefix("torch.")
    _e, mbits, bias = _FORMATS[name]
    return 2.0 ** (1 - bias - mbits)


def _scale(before: int, after: int, dtype: torch.dtype, eps: float = 1e-7) -> float | None:
    """mergekit's L1 rescale factor ``before / after``; None where mergekit leaves the masked tensor alone."""
    unit = _unit(dtype)
    if before * unit < eps or after * unit < eps:
        return None
    return before / after


def draws16(seed: int, name: str, vector: int, start: int, count: int) -> torch.Tensor:
    """The 16-bit draws (int32, 0..65535) behind :func:`keep_mask`, for a per-element keep probability."""
    import torch

    mul, add = _key(seed, name, vector)
    first, stop = start // 2, (start + count + 1) // 2
    out = torch.empty(stop - first, 2, dtype=torch.int32)
    with _one_thread():
        for a in range(first, stop, _BLOCK):
            b = min(a + _BLOCK, stop)
            x = torch.arange(a, b, dtype=torch.int64).to(torch.int32)
            x *= mul
            x += add
            _hash32(x)
            torch.bitwise_and(x, 0xFFFF, out=out[a - first:b - first, 0])
            torch.bitwise_and(x >> 16, 0xFFFF, out=out[a - first:b - first, 1])
    out = out.view(-1)
    skip = start - 2 * first
    return out[skip:skip + count]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """mergekit's working dtype for random drops on CPU: bf16 stays, others go to float32 (float64 stays)."""
    import torch

    return dtype if dtype in (torch.bfloat16, torch.float64) else torch.float32


def _finish(site: Site, vector: int, tensor: torch.Tensor, x: torch.Tensor, mask: torch.Tensor,
            rescale_norm: Any) -> torch.Tensor:
    """``x * mask``, rescaled to the whole task vector's L1 norm like mergekit (or a pass-1 recording)."""
    import torch
    from mergekit.sparsify import RescaleNorm

    masked = x * mask
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
            factor = _scale(exact_l1(x), exact_l1(masked), x.dtype)
    elif site.recording:  # pass 1 of a chunked merge: add this chunk to the whole tensor's norms
        site.sums.before[vector] = site.sums.before.get(vector, 0) + exact_l1(x)
        site.sums.after[vector] = site.sums.after.get(vector, 0) + exact_l1(masked)
        if site.calls == site.n_vectors:
            raise ChunkRecorded
        return tensor
    else:
        factor = _scale(site.sums.before[vector], site.sums.after[vector], x.dtype)
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
    work = _work_dtype(tensor.dtype)
    x = tensor.to(work)
    # mergekit ranks along dim 1 (a 1-D tensor is one row): make that dimension the last of a 2-D view
    along = x.view(1, -1) if x.dim() < 2 else x.movedim(1, -1) if x.dim() > 2 else x
    rows = along.reshape(-1, along.shape[-1])
    magnitudes = rows.abs()
    keys = magnitudes.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[magnitudes.element_size()])
    order = torch.sort(keys, dim=1, stable=True).indices
    cols = rows.shape[1]
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(1, cols + 1).expand(rows.shape[0], cols))
    ranks = ranks.to(work)
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    probs = (density - epsilon) + ((ranks - low) / (high - low)).clamp(0, 1) * 2 * epsilon
    probs = probs.view(along.shape)
    probs = probs.view(x.shape) if x.dim() <= 2 else probs.movedim(-1, 1)
    draws = draws16(site.seed, site.name, vector, site.offset, x.numel()).view(x.shape)
    mask = (draws < probs.float() * _RESOLUTION).to(work)
    return _finish(site, vector, tensor, x, mask, rescale_norm)


@contextlib.contextmanager
def at(site: Site) -> Iterator[Site]:
    """Calls inside the block draw for ``site`` (a tensor, or a row chunk of it)."""
    token = SITE.set(site)
    try:
        yield site
    finally:
        SITE.reset(token)
