"""ramplus_tl in row chunks: its whole-tensor statistics are integer counts, summed exactly chunk by chunk.

Why: mergekit's ``ramplus_tl`` (RAM+, tensor-local) scales each input's unique changes by
``1 + r · clamp(shared / unique, 0, alpha)``, where ``shared`` and ``unique`` count, over the whole
tensor, the elements that input changes together with others and alone. So it merged whole tensors:
7.3 GB peak for three 0.5B models, 7.9 × the largest shard (issue 15).

What: the counts are integers, so their sum over row chunks is exact in any order. A chunked
merge (:mod:`~hpc_merge.mergekit_adapter.chunked`) first streams the chunks with a :class:`Counts`
active (:func:`counting`): :func:`merge` adds each chunk's counts (mergekit's own
``_prepare_ram_vectors`` marks the elements) and raises ``ChunkRecorded``; then it streams them
again and :func:`merge` runs mergekit's arithmetic on the chunk with the whole tensor's counts. Every
other step of ``ramplus_tl`` is per element, so the result equals mergekit's on the whole tensor bit
for bit (tested). Outside a chunked merge, :func:`merge` is mergekit's function.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from hpc_merge.mergekit_adapter.chunk_trim import ChunkRecorded


@dataclass
class Counts:
    """Per input (in group order): elements changed together with others (``shared``) and alone (``unique``)."""

    shared: list[int] = field(default_factory=list)
    unique: list[int] = field(default_factory=list)
    recording: bool = True

    def add(self, shared: torch.Tensor, unique: torch.Tensor) -> None:
        if not self.shared:
            self.shared, self.unique = [0] * len(shared), [0] * len(unique)
        self.shared = [a + int(b) for a, b in zip(self.shared, shared.tolist(), strict=True)]
        self.unique = [a + int(b) for a, b in zip(self.unique, unique.tolist(), strict=True)]


ACTIVE: contextvars.ContextVar[Counts | None] = contextvars.ContextVar("hpc_merge_ram_counts", default=None)


@contextlib.contextmanager
def counting(state: Counts) -> Iterator[Counts]:
    """Route ``ramplus_tl``'s whole-tensor counts through ``state`` inside the block."""
    token = ACTIVE.set(state)
    try:
        yield state
    finally:
        ACTIVE.reset(token)


def merge(real: Callable[..., torch.Tensor], group: Any, r: float = 0.1, alpha: float = 0.2,
          epsilon: float = 1e-5) -> torch.Tensor:
    """``ramplus_tl_merge(group, r, alpha, epsilon)`` of one row chunk, with the whole tensor's counts (``real``: mergekit's)."""
    from mergekit.merge_methods.ram import _prepare_ram_vectors

    state = ACTIVE.get()
    tensors = [entry.tensor for entry in group.non_base]
    if state is None or not tensors:
        return real(group, r=r, alpha=alpha, epsilon=epsilon)
    base = group.base.tensor
    tv_flat, nonzero_mask, contrib_counts, overlap_mask, unique_mask = _prepare_ram_vectors(tensors, base, epsilon)
    if state.recording:
        state.add((nonzero_mask & overlap_mask).sum(dim=1), (nonzero_mask & unique_mask).sum(dim=1))
        raise ChunkRecorded
    # mergekit's ramplus_tl_merge from here, with the whole tensor's counts
    shared_counts = torch.tensor(state.shared, dtype=torch.int64, device=tv_flat.device)
    unique_counts = torch.tensor(state.unique, dtype=torch.int64, device=tv_flat.device)
    rho = shared_counts / unique_counts.clamp(min=epsilon)
    lambda_ = 1 + r * rho.clamp(min=0, max=alpha)
    tv_flat_z = tv_flat * nonzero_mask
    merged_tv_flat = (
        (tv_flat_z * unique_mask * lambda_.unsqueeze(-1))
        + (tv_flat_z * overlap_mask / contrib_counts.clamp(min=1))
    ).sum(dim=0, keepdim=True)
    return base + merged_tv_flat.reshape_as(base)
