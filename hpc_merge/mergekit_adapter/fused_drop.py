"""DARE's and DELLA's drop-and-rescale of one bf16 task vector in compiled passes, the torch path's bits.

Why: with counter-based draws (:mod:`~hpc_merge.mergekit_adapter.random_sparsify`) a DARE or
DELLA task vector took about a dozen torch passes per chunk — the subtraction, the hash in 64K
blocks, the comparison, the masking, two 32K-bin ``bincount`` for the exact L1 norms, the
rescale. DARE merges were 2.4 × the I/O floor at 7B where TIES is 1.3 × (issue 15); profiled at
0.5B, those passes were a third of a dare_ties merge.

What: :func:`dare_into` and :func:`della_into` compute the same numbers from the base's and
the model's bf16 bits: ``numba_kernels.dare_l1_bf16`` / ``della_l1_bf16`` sum the task vector's
and its kept part's L1 norms exactly (the same integers as ``exact_norm.exact_l1``), and
``dare_delta_bf16`` / ``della_delta_bf16`` write the dropped and rescaled task vector
(``model - base`` rounded to bf16 as torch does, the
kept elements times the float32 factor rounded, the dropped ones their signed zero). DARE keeps
a draw below one threshold; DELLA compares each draw with its element's rank-dependent limit
(``della_rank``: one radix sort per row). Both follow ``counter_bernoulli``'s draw-site protocol
— whole tensor, or a chunked merge's recording pass (norms only) and applying pass — and
decline (return False, nothing drawn, recorded or counted) what they do not reproduce:
non-bf16 inputs, a density whose threshold is 0 or 65536, inf/NaN task vectors, DELLA on
tensors that are not 2-D. The caller then runs the torch path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpc_merge.mergekit_adapter.chunk_trim import ChunkRecorded
from hpc_merge.mergekit_adapter.counter_draws import RESOLUTION, key
from hpc_merge.mergekit_adapter.exact_norm import from_exponent_sums, rescale_factor
from hpc_merge.mergekit_adapter.random_sparsify import SITE, Site

if TYPE_CHECKING:
    import numpy as np
    import torch


def _bits(x: torch.Tensor) -> np.ndarray:
    """``x``'s bf16 bit patterns as a flat int16 array (a view where ``x`` is contiguous)."""
    import torch

    return x.contiguous().view(torch.int16).reshape(-1).numpy()


def _norms(base: np.ndarray, model: np.ndarray, start: int, mul: int, add: int, threshold: int,
           limits: np.ndarray | None) -> tuple[int, int] | None:
    """Exact L1 norms (before, after the drop) of ``model - base``; None if it has inf/NaN."""
    import numpy as np

    from hpc_merge.mergekit_adapter import numba_kernels

    sums = np.zeros((numba_kernels.PARTS, 2, 256), np.int64)
    if limits is None:
        numba_kernels.dare_l1_bf16(base, model, start, np.uint64(mul), np.uint64(add), threshold, sums)
    else:
        numba_kernels.della_l1_bf16(base, model, start, np.uint64(mul), np.uint64(add), limits, sums)
    if sums[:, 0, 255].any():
        return None
    total = sums.astype(object).sum(axis=0)  # Python integers: 64 partitions of up to 2^62 each would overflow int64
    return from_exponent_sums(total[0].tolist()), from_exponent_sums(total[1].tolist())


def _usable(site: Site | None, out: torch.Tensor, base: torch.Tensor, model: torch.Tensor) -> bool:
    import torch

    return (site is not None and base.dtype == model.dtype == out.dtype == torch.bfloat16
            and base.device.type == "cpu" and out.is_contiguous() and model.shape == base.shape == out.shape)


def dare_into(out: torch.Tensor, base: torch.Tensor, model: torch.Tensor, density: float, rescale: bool) -> bool:
    """``out`` = ``counter_bernoulli(model - base, density, l1 if rescale else None)`` for bf16; False: declined."""
    site = SITE.get()
    threshold = round(density * RESOLUTION)
    if not _usable(site, out, base, model) or density >= 1 or not 0 < threshold < RESOLUTION:
        return False
    assert site is not None
    return _drop(site, out, base, model, threshold, None, rescale)


def della_into(out: torch.Tensor, base: torch.Tensor, model: torch.Tensor, density: float, epsilon: float,
               rescale: bool) -> bool:
    """``out`` = ``counter_della(model - base, density, epsilon, l1 if rescale else None)`` for 2-D bf16; False: declined."""
    import torch

    from hpc_merge.mergekit_adapter.della_rank import rank_table
    from hpc_merge.mergekit_adapter.numba_kernels import rank_limits16

    site = SITE.get()
    if (not _usable(site, out, base, model) or base.dim() != 2 or not 0 < density < 1
            or density + epsilon >= 1 or density - epsilon <= 0):
        return False
    assert site is not None
    table = rank_table(base.shape[1], density, epsilon, torch.bfloat16)
    if table is None:
        return False
    keys = (model - base).abs_().view(torch.int16)  # magnitude bit patterns: ranked within each row
    limits = torch.empty(keys.shape, dtype=torch.int16)
    rank_limits16(keys.numpy(), table.numpy(), limits.numpy())
    del keys
    return _drop(site, out, base, model, 0, limits.view(-1).numpy(), rescale)


def _drop(site: Site, out: torch.Tensor, base: torch.Tensor, model: torch.Tensor, threshold: int,
          limits: np.ndarray | None, rescale: bool) -> bool:
    """The draw site's next task vector, dropped (and rescaled) in the kernels; False if it has inf/NaN.

    As ``random_sparsify._finish``: a whole tensor's norms directly; in a chunked merge's
    recording pass, this chunk's share of the norms only (``ChunkRecorded`` after the last
    vector); in its applying pass, the whole tensor's recorded norms.
    """
    import numpy as np
    import torch

    from hpc_merge.mergekit_adapter import numba_kernels

    vector = site.calls
    mul, add = (word & 0xFFFFFFFF for word in key(site.seed, site.name, vector))
    b, m = _bits(base), _bits(model)
    factor: float | None = None
    if rescale:
        if site.sums is None or site.recording:
            norms = _norms(b, m, site.offset, mul, add, threshold, limits)
            if norms is None:
                return False
            if site.sums is not None:  # recording
                site.sums.before[vector] = site.sums.before.get(vector, 0) + norms[0]
                site.sums.after[vector] = site.sums.after.get(vector, 0) + norms[1]
                site.calls += 1
                if site.calls == site.n_vectors:
                    raise ChunkRecorded
                return True
            factor = rescale_factor(*norms, torch.bfloat16)
        else:
            factor = rescale_factor(site.sums.before[vector], site.sums.after[vector], torch.bfloat16)
    scale = np.float32(factor if factor is not None else 1.0)
    into = out.view(torch.int16).reshape(-1).numpy()
    if limits is None:
        bad = numba_kernels.dare_delta_bf16(b, m, site.offset, np.uint64(mul), np.uint64(add), threshold, scale,
                                            factor is not None, into)
    else:
        bad = numba_kernels.della_delta_bf16(b, m, site.offset, np.uint64(mul), np.uint64(add), limits, scale,
                                             factor is not None, into)
    if bad:
        return False
    site.calls += 1
    if site.recording and site.calls == site.n_vectors:
        raise ChunkRecorded
    return True
