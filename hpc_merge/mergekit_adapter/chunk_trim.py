"""The exact-k TIES and breadcrumbs trims of a tensor that is only ever seen in row chunks.

Why: TIES keeps the ``k = max(1, int(density · n))`` largest magnitudes of each task vector over
the *whole* tensor. Trimming each row chunk on its own would keep a different set, so the chunked
merge (:mod:`hpc_merge.mergekit_adapter.chunked`) first streams the chunks to find every task
vector's threshold, then streams them again applying it.

How: the threshold is found by radix selection on the magnitudes' bit patterns (non-negative floats
order like their bits): 16-bit floats in one pass of a 32768-bin histogram, float32 in two passes
(top 15 bits, then the low 16 bits among the elements whose top bits hit the threshold). While
applying, elements tied with the threshold are kept in order of lowest flat index until there are
k — row chunks arrive in flat order, so the mask equals :func:`~hpc_merge.mergekit_adapter.trim.magnitude_mask`
on the whole tensor, bit for bit (tested).

mergekit's method calls ``mergekit.sparsify.magnitude`` once per task vector, in input order, for
every chunk; while a :class:`StreamingTrim` is active (:func:`streaming`), the installed exact trim
hands those calls to it (breadcrumbs: two selections per task vector, the top ``n - bottom``
minus the top ``n - bottom - target``, both streamed the same way). In a recording pass the call after the last task vector's histogram raises
:class:`ChunkRecorded` so the rest of the method is not computed for nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpc_merge.mergekit_adapter.topk import (
    NOTHING16,
    _pick,
    band16,
    count15,
    cut16,
    finite16,
    keep_ties,
    masked16,
    takes_kernels,
)
from hpc_merge.mergekit_adapter.trim import ACTIVE

if TYPE_CHECKING:
    import torch

# (shift, width) of each radix digit, most significant first, for 15- and 31-bit magnitude keys
_DIGITS = {15: ((0, 15),), 31: ((16, 15), (0, 16))}


class ChunkRecorded(Exception):
    """Raised inside the merge method once every task vector of a chunk is recorded (nothing to compute)."""


class NotStreamable(Exception):
    """The chunk's dtype has no streamed selection here (float64): merge the tensor whole instead."""


def magnitude_keys(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(keys, bits)``: the magnitudes' bit patterns as integers that order like the magnitudes."""
    import torch

    mag = tensor.abs().reshape(-1)
    if tensor.dtype in (torch.bfloat16, torch.float16):
        return mag.view(torch.int16), 15
    if tensor.dtype == torch.float32:
        return mag.view(torch.int32), 31
    raise NotStreamable(str(tensor.dtype))


@dataclass
class _Entry:
    """One task vector's selection state: digits fixed so far, then its threshold and tie budget."""

    density: float
    k: int
    bits: int = 0
    level: int = 0
    prefix: int = 0
    above: int = 0
    counts: Any = None
    dtype: Any = None
    remaining_ties: int = 0
    finite: bool = False  # 16-bit keys with no inf/NaN: the mask is applied to the bits (topk.masked16)

    @property
    def trivial(self) -> bool:
        return self.density >= 1 or self.density <= 0

    def keep(self, tensor: torch.Tensor) -> torch.Tensor:
        """Bool mask of this chunk (all or nothing for a trivial selection)."""
        import torch

        if self.trivial:
            return torch.full(tensor.shape, self.density >= 1, dtype=torch.bool)
        return self.mask(tensor)

    @property
    def settled(self) -> bool:
        return self.trivial or (self.bits > 0 and self.level == len(_DIGITS[self.bits]))

    def record(self, tensor: torch.Tensor, counts16: torch.Tensor | None = None) -> None:
        """Count this chunk's digits; ``counts16``: the chunk's 15-bit magnitude histogram if the caller has it."""
        import torch

        if self.bits and tensor.dtype != self.dtype:
            raise NotStreamable("dtype changed between chunks")
        if tensor.dtype in (torch.bfloat16, torch.float16):  # one digit: the histogram of the raw bits' magnitudes
            self.bits, self.dtype = 15, tensor.dtype
            counts = counts16 if counts16 is not None else count15(tensor.reshape(-1).view(torch.int16))
            self.counts = counts if self.counts is None else self.counts + counts
            return
        keys, bits = magnitude_keys(tensor)
        self.bits, self.dtype = bits, tensor.dtype
        shift, width = _DIGITS[bits][self.level]
        if self.level:
            keys = keys[(keys >> (shift + width)) == self.prefix]
        digits = keys >> shift if shift else keys
        if width == 16:
            digits = digits & 0xFFFF
        counts = torch.bincount(digits, minlength=1 << width)
        self.counts = counts if self.counts is None else self.counts + counts

    def end_pass(self) -> None:
        if self.settled:
            return
        _shift, width = _DIGITS[self.bits][self.level]
        if self.bits == 15:
            self.finite = finite16(self.counts, self.dtype)
        digit, above = _pick(self.counts, self.k - self.above)
        self.above += above
        self.prefix = (self.prefix << width) | digit
        self.level += 1
        self.counts = None
        if self.settled:
            self.remaining_ties = self.k - self.above

    def mask(self, tensor: torch.Tensor) -> torch.Tensor:
        keys, _bits = magnitude_keys(tensor)
        keep = keys > self.prefix
        self.remaining_ties -= keep_ties(keep, keys, self.prefix, self.remaining_ties)
        return keep.view(tensor.shape)

    def selection16(self, bits: torch.Tensor) -> tuple[int, int] | None:
        """This chunk's ``(threshold, cut)`` for ``topk.band16`` (spending its ties), or None if unknown to be finite."""
        if self.trivial:
            return (-1, 0) if self.density >= 1 else NOTHING16
        if not self.finite:
            return None
        cut, kept = cut16(bits, self.prefix, self.remaining_ties)
        self.remaining_ties -= kept
        return self.prefix, cut

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor * mask`` of this chunk (the whole tensor's threshold, the ties left in flat order)."""
        from mergekit.sparsify import rescaled_masked_tensor

        if self.finite and tensor.dtype == self.dtype:
            out, used = masked16(tensor.contiguous(), self.prefix, self.remaining_ties)
            self.remaining_ties -= used
            return out
        return rescaled_masked_tensor(tensor, self.mask(tensor).to(tensor.dtype), None)


@dataclass
class _Band:
    """Breadcrumbs' selection of one task vector: the top ``upper.k`` magnitudes minus the top ``lower.k``."""

    upper: _Entry
    lower: _Entry

    @classmethod
    def of(cls, numel: int, density: float, gamma: float) -> _Band:
        """The two exact selections ``trim.exact_outliers`` takes of a ``numel``-element task vector."""
        target = int(density * numel)
        bottom = max(0, numel - target - int(gamma * numel))
        ks = (numel - bottom, numel - bottom - target)
        return cls(*(_Entry(k / numel, k) for k in ks))

    @property
    def settled(self) -> bool:
        return self.upper.settled and self.lower.settled

    def record(self, tensor: torch.Tensor) -> None:
        import torch

        todo = [entry for entry in (self.upper, self.lower) if not entry.settled]
        shared = None
        if len(todo) == 2 and tensor.dtype in (torch.bfloat16, torch.float16):  # one histogram serves both
            shared = count15(tensor.reshape(-1).view(torch.int16))
        for entry in todo:
            entry.record(tensor, shared)

    def end_pass(self) -> None:
        self.upper.end_pass()
        self.lower.end_pass()

    def apply(self, tensor: torch.Tensor, rescale_norm: Any) -> torch.Tensor:
        import torch
        from mergekit.sparsify import rescaled_masked_tensor

        if rescale_norm is None and tensor.dtype in (torch.bfloat16, torch.float16) and self.finite:
            bits = tensor.contiguous().reshape(-1).view(torch.int16)
            if takes_kernels(bits):  # one compiled pass over the band
                upper, lower = self.upper.selection16(bits), self.lower.selection16(bits)
                return band16(bits, upper, lower).view(tensor.dtype).view(tensor.shape)
        keep = self.upper.keep(tensor)
        keep &= ~self.lower.keep(tensor)
        return rescaled_masked_tensor(tensor, keep.to(tensor.dtype), rescale_norm)

    @property
    def finite(self) -> bool:
        """True if a (non-trivial) selection's histogram showed no inf/NaN in this 16-bit task vector."""
        entries = [e for e in (self.upper, self.lower) if not e.trivial]
        return bool(entries) and all(e.finite and e.dtype == entries[0].dtype for e in entries)


@dataclass
class StreamingTrim:
    """Exact-k trims of ``n_vectors`` task vectors of ``numel`` elements each, seen chunk by chunk."""

    n_vectors: int
    numel: int
    entries: list[Any] = field(default_factory=list)  # an _Entry per TIES vector, a _Band per breadcrumbs vector
    recording: bool = True
    calls: int = 0

    def needs_pass(self) -> bool:
        """True while some task vector's threshold is not known yet (call before each recording pass)."""
        return not self.entries or not all(e.settled for e in self.entries)

    def end_pass(self) -> None:
        """Fix one more digit of every threshold; once all are settled, later calls apply them."""
        for entry in self.entries:
            entry.end_pass()
        self.calls = 0
        self.recording = self.needs_pass()

    def trim(self, tensor: torch.Tensor, density: float, rescale_norm: Any = None) -> torch.Tensor:
        """Stands in for the trim of one task vector's chunk (the i-th call of a chunk = vector i)."""
        import torch

        index = self.calls % self.n_vectors
        self.calls += 1
        if len(self.entries) <= index:
            self.entries.append(_Entry(density, max(1, int(density * self.numel))))
        entry = self.entries[index]
        if self.recording:
            if not entry.settled:
                entry.record(tensor)
            if index == self.n_vectors - 1:
                raise ChunkRecorded
            return tensor
        if density >= 1:
            return tensor
        if density <= 0:
            return torch.zeros_like(tensor)
        if rescale_norm is not None:
            raise NotStreamable("rescale needs the whole tensor's norm")
        return entry.apply(tensor)

    def outliers(self, tensor: torch.Tensor, density: float, rescale_norm: Any = None,
                 gamma: float = 0.01) -> torch.Tensor:
        """Stands in for breadcrumbs' trim (``trim.exact_outliers``) of one task vector's chunk."""
        index = self.calls % self.n_vectors
        self.calls += 1
        if len(self.entries) <= index:
            self.entries.append(_Band.of(self.numel, density, gamma))
        band = self.entries[index]
        if self.recording:
            band.record(tensor)
            if index == self.n_vectors - 1:
                raise ChunkRecorded
            return tensor
        if density >= 1:
            return tensor
        if rescale_norm is not None:
            raise NotStreamable("rescale needs the whole tensor's norm")
        return band.apply(tensor, None)


@contextlib.contextmanager
def streaming(state: StreamingTrim) -> Iterator[StreamingTrim]:
    """Route the exact trim's calls to ``state`` inside the block."""
    token = ACTIVE.set(state)
    try:
        yield state
    finally:
        ACTIVE.reset(token)
