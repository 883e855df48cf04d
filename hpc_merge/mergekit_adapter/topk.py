"""The exact-k selection kernels behind the magnitude trims: thresholds from histograms, ties by index.

Why a module of its own: the whole-tensor trim (:mod:`~hpc_merge.mergekit_adapter.trim`) and the
row-chunk trim (:mod:`~hpc_merge.mergekit_adapter.chunk_trim`) select with the same rules; both
import them from here, so imports flow one way (kernels <- chunk_trim <- trim).

The rule: keep every element whose magnitude is above the k-th largest, then the elements equal to
it in order of lowest flat index until there are k. For 16-bit floats the magnitudes' bit patterns
(sign cleared) order like the magnitudes, so a 32768-bin ``bincount`` gives the k-th largest and
the number above it in one pass; other dtypes use ``torch.kthvalue``.

:func:`masked16` applies a selection to a 16-bit tensor with integer operations on its bit
patterns (kept: unchanged; dropped: the sign bit alone, i.e. ``x * 0``), which is what
``tensor * mask`` gives bit for bit whenever no element is inf or NaN, at a third of the cost of
converting the mask to bf16 and multiplying.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: validating options must not pay for it
    import torch

_TIE_BLOCK = 128  # elements per tie-count block: 16 int64 words of bools, every byte lane of their sum ≤ 16
#: the bit pattern of +inf per 16-bit dtype name: magnitudes at or above it are inf or NaN
INF16 = {"bfloat16": 0x7F80, "float16": 0x7C00}


def _pick(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """``(digit, above)``: the digit holding the k-th largest element of a histogram, and how many lie above it."""
    import torch

    at_least = counts.flip(0).cumsum(0)  # at_least[j] = #elements with digit >= len - 1 - j
    j = int(torch.searchsorted(at_least, k))
    above = int(at_least[j - 1]) if j > 0 else 0
    return counts.numel() - 1 - j, above


_COMPILED_COUNT_MIN = 1 << 16  # below this many elements torch.bincount is as fast (no thread start-up)


def takes_kernels(flat: torch.Tensor) -> bool:
    """True if the compiled kernels take this flat tensor (large, contiguous, on the CPU)."""
    return flat.numel() >= _COMPILED_COUNT_MIN and flat.device.type == "cpu" and flat.is_contiguous()


def count15(keys: torch.Tensor) -> torch.Tensor:
    """``torch.bincount(keys & 0x7FFF, minlength=32768)``: the magnitude histogram of 16-bit float
    bit patterns (int16; the sign bit is ignored, so a tensor's raw bits need no ``abs`` first).

    Large tensors are counted by the compiled, threaded ``numba_kernels.hist15`` (torch's
    ``bincount`` runs on one thread: 8 vs 3.3 ms for 4.4M elements here); the counts are integers,
    so the trims that read them are unchanged.
    """
    import torch

    flat = keys.reshape(-1)
    if not takes_kernels(flat):
        return torch.bincount(flat & 0x7FFF, minlength=1 << 15)
    from numba import get_num_threads

    from hpc_merge.mergekit_adapter.numba_kernels import hist15

    counts = torch.zeros(1 << 15, dtype=torch.int64)
    hist15(flat.detach().numpy(), get_num_threads(), counts.numpy())
    return counts


def _kth_largest_bits16(bits: torch.Tensor, k: int) -> tuple[int, int]:
    """``(threshold, above)``: the k-th largest of non-negative 15-bit patterns, and how many exceed it.

    The magnitudes' bit patterns order like the magnitudes (sign bit cleared by ``abs``), so a
    32768-bin count read from the top gives the k-th largest in one pass.
    """

    return _pick(count15(bits), k)


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


def tie_cut(eq: torch.Tensor, need: int) -> tuple[int, int]:
    """``(cut, kept)``: keeping the ties (``eq``, flat bool) in ``[0, cut)`` keeps the first ``kept = min(need, #ties)``.

    Why not ``nonzero`` of the equality mask: on real bf16 task vectors (a few ulps, see
    ``bench/inputs.py``) a threshold is shared by up to a fifth of the elements, and listing and
    scattering their indices was most of the trim. Instead the cut is located by counting ties per
    block of 128 elements (:func:`_block_counts`), a cumulative sum over the blocks and a
    ``nonzero`` inside the one block where the count reaches ``need``.
    """
    import torch

    if need <= 0:
        return 0, 0
    cumulative = _block_counts(eq).cumsum(0)
    total = int(cumulative[-1]) if cumulative.numel() else 0
    if total <= need:  # every tie is kept
        return eq.numel(), total
    block = int(torch.searchsorted(cumulative, need))  # first block whose cumulative count reaches need
    before = int(cumulative[block - 1]) if block else 0
    start = block * _TIE_BLOCK
    inside = eq[start:start + _TIE_BLOCK].nonzero()
    return start + int(inside[need - before - 1]) + 1, need  # one past the need-th tie


def keep_ties(keep: torch.Tensor, keys: torch.Tensor, threshold: Any, need: int) -> int:
    """Add the first ``need`` elements whose key equals ``threshold``, lowest flat index first, to ``keep``.

    The one tie rule of the exact trim, whole tensor or row chunk by row chunk; returns how many it kept.
    ``keep`` and ``keys`` are contiguous and of equal shape.
    """
    if need <= 0:
        return 0
    flat_keep, eq = keep.view(-1), (keys == threshold).reshape(-1)
    cut, kept = tie_cut(eq, need)
    flat_keep[:cut].logical_or_(eq[:cut])
    return kept


NOTHING16 = (0x7FFF, 0)  # the (threshold, cut) of an empty selection: no finite magnitude is above 0x7FFF


def cut16(bits: torch.Tensor, threshold: int, need: int) -> tuple[int, int]:
    """``(cut, kept)`` (:func:`tie_cut`) for the ties of 16-bit float bits ``bits`` (int16, flat) at magnitude ``threshold``."""
    if need <= 0:
        return 0, 0
    if takes_kernels(bits):
        from hpc_merge.mergekit_adapter.numba_kernels import tie_cut16

        cut, kept = tie_cut16(bits.detach().numpy(), threshold, need)
        return int(cut), int(kept)
    return tie_cut((bits & 0x7FFF) == threshold, need)


def band16(bits: torch.Tensor, upper: tuple[int, int], lower: tuple[int, int] = NOTHING16) -> torch.Tensor:
    """``bits`` (int16, flat, :func:`takes_kernels`) where in selection ``upper`` and not in ``lower``, else the sign bit.

    A selection ``(threshold, cut)`` holds the magnitudes above ``threshold`` and those equal to it
    before flat index ``cut`` (:func:`cut16`): TIES keeps one, breadcrumbs the band between two.
    One compiled pass (``numba_kernels.select16``) instead of six tensor operations.
    """
    import torch

    from hpc_merge.mergekit_adapter.numba_kernels import select16

    out = torch.empty_like(bits)
    select16(bits.detach().numpy(), upper[0], upper[1], lower[0], lower[1], out.numpy())
    return out


def masked16(tensor: torch.Tensor, threshold: int, need: int, keys: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """``(tensor * mask, ties kept)`` for a 16-bit float tensor without inf or NaN, by integer operations on its bits.

    The mask keeps magnitudes whose bit pattern is above ``threshold`` and the first ``need``
    equal to it (lowest flat index first): the same selection as :func:`top_k_mask` /
    :func:`keep_ties`. ``x * 1 == x`` and ``x * 0`` is a zero with ``x``'s sign for every finite
    ``x``, so keeping the bits or only the sign bit equals mergekit's ``tensor * mask`` bit for bit
    (``inf * 0`` is NaN: the caller checks there is no inf/NaN, :func:`finite16`).
    ``keys``: the magnitudes' bit patterns if the caller has them.
    """
    import torch

    bits = tensor.reshape(-1).view(torch.int16)
    if takes_kernels(bits):
        cut, kept = cut16(bits, threshold, need)
        return band16(bits, (threshold, cut)).view(tensor.dtype).view(tensor.shape), kept
    if keys is None:
        keys = bits & 0x7FFF
    mask = torch.rsub(keys, threshold).bitwise_right_shift_(15)  # -1 (all ones) where key > threshold, else 0
    kept = 0
    if need > 0:
        eq = keys == threshold
        cut, kept = tie_cut(eq, need)
        mask[:cut].masked_fill_(eq[:cut], -1)
        del eq
    mask |= -0x8000  # dropped elements keep their sign bit: x * 0
    mask &= bits
    return mask.view(tensor.dtype).view(tensor.shape), kept


def finite16(counts: torch.Tensor, dtype: torch.dtype) -> bool:
    """True if a 32768-bin histogram of a 16-bit float tensor's magnitude bits has no inf or NaN."""
    return not int(counts[INF16[str(dtype).removeprefix("torch.")]:].sum())


def top_k16(tensor: torch.Tensor, k: int) -> torch.Tensor | None:
    """``tensor * top_k_mask(tensor, k)`` for a 16-bit float tensor (``0 < k < n``); None if it holds inf/NaN."""
    import torch

    bits = tensor.reshape(-1).view(torch.int16)
    keys = None if takes_kernels(bits) else bits & 0x7FFF  # the compiled kernels mask the sign themselves
    counts = count15(bits if keys is None else keys)
    if not finite16(counts, tensor.dtype):
        return None
    threshold, above = _pick(counts, k)
    return masked16(tensor, threshold, k - above, keys)[0]


def _selection16(bits: torch.Tensor, counts: torch.Tensor, k: int) -> tuple[int, int]:
    """The ``(threshold, cut)`` of the ``k`` largest magnitudes of ``bits`` (counted in ``counts``), for :func:`band16`."""
    if k <= 0:
        return NOTHING16
    if k >= bits.numel():
        return -1, 0  # every magnitude is above -1
    threshold, above = _pick(counts, k)
    return threshold, cut16(bits, threshold, k - above)[0]


def band_k16(tensor: torch.Tensor, upper_k: int, lower_k: int) -> torch.Tensor | None:
    """``tensor * (top_k_mask(tensor, upper_k) & ~top_k_mask(tensor, lower_k))`` for a 16-bit float tensor.

    Breadcrumbs' band from one histogram and one compiled pass; None where the kernels do not
    apply (small, strided or non-CPU tensors, inf/NaN): the caller builds the two masks instead.
    """
    import torch

    bits = tensor.reshape(-1).view(torch.int16)
    if not takes_kernels(bits):
        return None
    counts = count15(bits)
    if not finite16(counts, tensor.dtype):
        return None
    band = band16(bits, _selection16(bits, counts, upper_k), _selection16(bits, counts, lower_k))
    return band.view(tensor.dtype).view(tensor.shape)
