"""Exact-k magnitude trim in O(n), replacing ``mergekit.sparsify.magnitude`` during a merge.

Why: mergekit 0.1.5 trims each task vector with a full ``torch.argsort`` of its magnitudes
(O(n log n), a float32 copy plus an int64 index per element). On CPU that sort is most of a TIES
merge's time (≈ 2.5 × the rest of the merge on three 0.5B models). The sort is also not stable, so
which of the elements *tied* with the k-th largest magnitude survive is implementation-defined and
can differ between CPU and GPU, or between torch versions.

What: :func:`magnitude_mask` keeps exactly ``k = max(1, int(density · n))`` elements, like
mergekit: every element whose magnitude is above the k-th largest, then the elements equal to it
in order of lowest flat index until there are k — the same mask on every device. The k-th value
comes from a histogram of the bit patterns for 16-bit floats (bf16/fp16: 2^15 magnitudes, one
``bincount``; ≈ 10–50 × faster than ``kthvalue`` here) and from ``torch.kthvalue`` otherwise
(≈ 4 × faster than the argsort). The selection kernels live in
:mod:`~hpc_merge.mergekit_adapter.topk` (shared with the row-chunk trim). Without rescaling, a
16-bit task vector with no inf/NaN is masked on its bit patterns (``topk.top_k16``: the same
bits as ``tensor * mask``); otherwise the masked tensor is built by mergekit's own
``rescaled_masked_tensor``. Outside the tied elements the result is bit-identical to mergekit's.

Which methods it affects (mergekit 0.1.5): ``ties`` (``magnitude``) and ``breadcrumbs`` /
``breadcrumbs_ties`` (``magnitude_outliers``: :func:`exact_outliers`, the difference of two exact
top-k masks instead of a full sort). ``dare_*`` and ``della*`` draw random masks: with ``fast``
they use the counter-based draws of :mod:`~hpc_merge.mergekit_adapter.random_sparsify` (installed
by ``run_mergekit`` beside this trim); ``sce`` keeps its own ``topk``.

``job.options.sparsify``: ``fast`` (default) installs this trim around the merge; ``mergekit``
leaves mergekit's argsort in place (output bit-identical to ``mergekit-yaml``). ``mergekit_patches``
(``patches.py``) installs it around every merge, on disk and in memory.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Protocol

from hpc_merge.errors import ConfigError
from hpc_merge.mergekit_adapter.topk import band_k16, magnitude_mask, top_k16, top_k_mask
from hpc_merge.mergekit_adapter.variance import population_var

if TYPE_CHECKING:  # torch is imported lazily: validating options must not pay for it
    import torch


class RowChunkTrim(Protocol):
    """What a chunked merge installs in :data:`ACTIVE`: the trim of one row chunk of a task vector
    (:class:`~hpc_merge.mergekit_adapter.chunk_trim.StreamingTrim`)."""

    def trim(self, tensor: torch.Tensor, density: float, rescale_norm: Any = None) -> torch.Tensor: ...

    def outliers(self, tensor: torch.Tensor, density: float, rescale_norm: Any = None,
                 gamma: float = 0.01) -> torch.Tensor: ...


#: set by ``chunk_trim.streaming`` while a chunked merge runs: the exact trim hands its calls to it.
#: It lives here, the lower module, so chunk_trim imports trim and never the other way round.
ACTIVE: contextvars.ContextVar[RowChunkTrim | None] = contextvars.ContextVar("hpc_merge_chunk_trim", default=None)

SPARSIFY_MODES = ("fast", "mergekit")
DEFAULT_SPARSIFY = "fast"


def sparsify_mode(options: dict[str, Any]) -> str:
    """``job.options.sparsify`` checked (missing or null = ``fast``); a bad value is one ConfigError."""
    mode = options.get("sparsify")
    if mode is None:
        return DEFAULT_SPARSIFY
    if mode not in SPARSIFY_MODES:
        raise ConfigError("job.options.sparsify", f"unknown value {mode!r}",
                          "use fast (exact-k O(n) magnitude trim, the default) or mergekit "
                          "(mergekit's argsort, bit-identical to mergekit-yaml)")
    return str(mode)


def exact_outliers(tensor: torch.Tensor, density: float, rescale_norm: Any = None, gamma: float = 0.01) -> torch.Tensor:
    """Drop-in for ``mergekit.sparsify.magnitude_outliers`` (breadcrumbs) without its full sort.

    mergekit keeps the elements at ranks ``[n_bot, n_bot + int(density · n))`` of an ascending
    argsort, ``n_bot = max(0, n - int(density · n) - int(gamma · n))``: the largest ``int(gamma · n)``
    (fewer if density needs them) and the smallest dropped. Here that is the top-``(n - n_bot)`` mask
    minus the top-``(n - n_bot - int(density · n))`` one, in the exact trim's order (ties by lowest
    index; mergekit's sort leaves tied elements' order open), so outside ties the result is the same.
    """
    import torch
    from mergekit.sparsify import rescaled_masked_tensor

    if (stream := ACTIVE.get()) is not None:  # a row chunk: the whole tensor's two thresholds apply
        return stream.outliers(tensor, density, rescale_norm, gamma)
    if density >= 1:
        return tensor
    n = tensor.numel()
    if n == 0:
        return torch.zeros_like(tensor)
    target = int(density * n)
    bottom = max(0, n - target - int(gamma * n))
    if rescale_norm is None and tensor.dtype in (torch.bfloat16, torch.float16):
        if (out := band_k16(tensor, n - bottom, n - bottom - target)) is not None:  # one histogram, one pass
            return out
    keep = top_k_mask(tensor, n - bottom)
    keep &= ~top_k_mask(tensor, n - bottom - target)
    return rescaled_masked_tensor(tensor, keep.to(tensor.dtype), rescale_norm)


def exact_sce_mask(tvs: torch.Tensor, density: float, mask_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Drop-in for ``mergekit.merge_methods.sce.sce_mask`` (SCE's "select": top-k by variance across inputs).

    The same ``k = int(count_nonzero(var) · density)`` elements of largest variance, selected with
    the exact trim (a histogram of the variance's bit patterns, ties by lowest index) instead of
    ``torch.topk`` with a k of half the tensor — which was most of an SCE merge's time and, with its
    values and int64 indices, most of its memory (4.9 GB for three 0.5B models). Outside ties at
    the threshold, where ``topk``'s choice is unspecified, the mask is mergekit's.
    """
    import torch

    if density <= 0:
        return torch.zeros_like(tvs[0], dtype=mask_dtype)
    if density >= 1:
        return torch.ones_like(tvs[0], dtype=mask_dtype)
    var = population_var(tvs)  # torch.var(tvs, dim=0, unbiased=False), compiled
    dtype = var.dtype if mask_dtype is None else mask_dtype
    k = int(torch.count_nonzero(var) * density)
    if k == 0:
        return torch.zeros_like(var, dtype=dtype)
    return top_k_mask(var, k).to(dtype)


def exact_magnitude(tensor: torch.Tensor, density: float, rescale_norm: Any = None) -> torch.Tensor:
    """Drop-in for ``mergekit.sparsify.magnitude`` (same signature, same edge cases and rescaling).

    Inside a chunked merge (:mod:`~hpc_merge.mergekit_adapter.chunk_trim`) the call is one row chunk
    of a larger task vector: the streamed trim applies the whole tensor's threshold instead.
    """
    import torch
    from mergekit.sparsify import rescaled_masked_tensor

    if (stream := ACTIVE.get()) is not None:
        return stream.trim(tensor, density, rescale_norm)

    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    k = max(1, int(density * tensor.numel()))
    if rescale_norm is None and k < tensor.numel() and tensor.dtype in (torch.bfloat16, torch.float16):
        if (out := top_k16(tensor, k)) is not None:  # bit patterns in, bit patterns out: no mask multiply
            return out
    mask = magnitude_mask(tensor, density).to(tensor.dtype)
    return rescaled_masked_tensor(tensor, mask, rescale_norm)
