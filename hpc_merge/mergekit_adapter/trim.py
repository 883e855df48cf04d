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
(≈ 4 × faster than the argsort). The masked tensor is then built by mergekit's own
``rescaled_masked_tensor``, so outside the tied elements the result is bit-identical.

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

from typing import TYPE_CHECKING, Any

from hpc_merge.errors import ConfigError

if TYPE_CHECKING:  # torch is imported lazily: validating options must not pay for it
    import torch

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


def _pick(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """``(digit, above)``: the digit holding the k-th largest element of a histogram, and how many lie above it."""
    import torch

    at_least = counts.flip(0).cumsum(0)  # at_least[j] = #elements with digit >= len - 1 - j
    j = int(torch.searchsorted(at_least, k))
    above = int(at_least[j - 1]) if j > 0 else 0
    return counts.numel() - 1 - j, above


def _kth_largest_bits16(bits: torch.Tensor, k: int) -> tuple[int, int]:
    """``(threshold, above)``: the k-th largest of non-negative 15-bit patterns, and how many exceed it.

    The magnitudes' bit patterns order like the magnitudes (sign bit cleared by ``abs``), so a
    32768-bin count read from the top gives the k-th largest in one pass.
    """
    import torch

    return _pick(torch.bincount(bits, minlength=1 << 15), k)  # int16 directly: no 4-byte copy per element


def magnitude_mask(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask (shape of ``tensor``) of exactly ``max(1, int(density · n))`` largest magnitudes.

    Ties at the threshold are broken by lowest flat index, so the mask is the same on every device.
    Requires ``0 < density < 1`` and a non-empty tensor (the caller handles the trivial cases).
    """
    return top_k_mask(tensor, max(1, int(density * tensor.numel())))


def top_k_mask(tensor: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest magnitudes (``0 <= k <= n``), ties by lowest flat index.

    The order (magnitude descending, then index ascending) is total, so masks for two ``k`` are
    nested: the trims built from differences of them (breadcrumbs) are exact too.
    """
    import torch

    n = tensor.numel()
    if k <= 0:
        return torch.zeros(tensor.shape, dtype=torch.bool)
    if k >= n:
        return torch.ones(tensor.shape, dtype=torch.bool)
    mag = tensor.abs().reshape(-1)
    if tensor.dtype in (torch.bfloat16, torch.float16):
        keys = mag.view(torch.int16)
        threshold, above = _kth_largest_bits16(keys, k)
        keep = keys > threshold
    else:
        keys = mag
        threshold = torch.kthvalue(keys, n - k + 1).values
        keep = keys > threshold
        above = int(keep.sum())
    keep_ties(keep, keys, threshold, k - above)
    return keep.view(tensor.shape)


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

    if density >= 1:
        return tensor
    n = tensor.numel()
    if n == 0:
        return torch.zeros_like(tensor)
    target = int(density * n)
    bottom = max(0, n - target - int(gamma * n))
    keep = top_k_mask(tensor, n - bottom)
    keep &= ~top_k_mask(tensor, n - bottom - target)
    return rescaled_masked_tensor(tensor, keep.to(tensor.dtype), rescale_norm)


_TIE_BLOCK = 128  # elements per tie-count block: 16 int64 words of bools, every byte lane of their sum ≤ 16


def _block_counts(eq: torch.Tensor) -> torch.Tensor:
    """True elements per block of 128 of a flat bool tensor (the last block may be shorter), as int64.

    A ``sum`` of bools along a dimension is slow on CPU (it widens every element); here the bools
    are read 8 at a time as int64 words: 16 words summed hold, in each byte lane, a count ≤ 16, and
    three shift-adds fold the 8 lanes into the low byte (≤ 128, no carry).
    """
    import torch

    n = eq.numel()
    full = n - n % _TIE_BLOCK
    parts = []
    if full:
        words = eq[:full].view(torch.uint8).view(torch.int64).view(-1, _TIE_BLOCK // 8).sum(1)
        words += words >> 8
        words += words >> 16
        words += words >> 32
        parts.append(words & 0xFF)
    if full < n:
        parts.append(eq[full:].sum().view(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def keep_ties(keep: torch.Tensor, keys: torch.Tensor, threshold: Any, need: int) -> int:
    """Add the first ``need`` elements whose key equals ``threshold``, lowest flat index first, to ``keep``.

    The one tie rule of the exact trim, whole tensor or row chunk by row chunk; returns how many it kept.
    ``keep`` and ``keys`` are contiguous and of equal shape.

    Why not ``nonzero`` of the equality mask: on real bf16 task vectors (a few ulps, see
    ``bench/inputs.py``) a threshold is shared by up to a fifth of the elements, and listing and
    scattering their indices was most of the trim. Instead the cut is located by counting ties per
    block of 128 elements (:func:`_block_counts`), a cumulative sum over the blocks and a
    ``nonzero`` inside the one block where the count reaches ``need``; every tie before the cut is
    then kept with one vectorised OR over the prefix.
    """
    import torch

    if need <= 0:
        return 0
    flat_keep, eq = keep.view(-1), (keys == threshold).reshape(-1)
    cumulative = _block_counts(eq).cumsum(0)
    total = int(cumulative[-1]) if cumulative.numel() else 0
    if total <= need:  # every tie is kept
        flat_keep.logical_or_(eq)
        return total
    block = int(torch.searchsorted(cumulative, need))  # first block whose cumulative count reaches need
    before = int(cumulative[block - 1]) if block else 0
    start = block * _TIE_BLOCK
    inside = eq[start:start + _TIE_BLOCK].nonzero()
    cut = start + int(inside[need - before - 1]) + 1  # one past the need-th tie
    flat_keep[:cut].logical_or_(eq[:cut])
    return need


def exact_magnitude(tensor: torch.Tensor, density: float, rescale_norm: Any = None) -> torch.Tensor:
    """Drop-in for ``mergekit.sparsify.magnitude`` (same signature, same edge cases and rescaling).

    Inside a chunked merge (:mod:`~hpc_merge.mergekit_adapter.chunk_trim`) the call is one row chunk
    of a larger task vector: the streamed trim applies the whole tensor's threshold instead.
    """
    import torch
    from mergekit.sparsify import rescaled_masked_tensor

    from hpc_merge.mergekit_adapter.chunk_trim import ACTIVE

    if (stream := ACTIVE.get()) is not None:
        return stream.trim(tensor, density, rescale_norm)

    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    mask = magnitude_mask(tensor, density).to(tensor.dtype)
    return rescaled_masked_tensor(tensor, mask, rescale_norm)
