"""arcee_fusion in row chunks: its one whole-tensor statistic, a sampled-quantile threshold, found by a first pass.

Why: mergekit's ``arcee_fusion`` keeps the elements whose importance reaches a threshold taken from
the whole tensor, so it merged whole tensors: 3.2 GiB peak for two 0.5B bf16 models, 3.5 x the
largest shard (issue 15).

What: mergekit computes each element's importance, ``|p - b| * KL(softmax(p) || softmax(b))``
along the last dimension, so per row; then the quartiles of 1,000,000 elements drawn with
replacement (``torch.randint`` on the global generator; all elements when there are fewer) give the
threshold ``median + 1.5 * IQR``. A chunked merge (:mod:`~hpc_merge.mergekit_adapter.chunked`)
draws the same indices at the same point of the random stream (:meth:`Threshold.start`), streams
the chunks once with a :class:`Threshold` active, collecting the drawn elements' importance from
mergekit's own computation on each chunk (the patched ``calculate_dynamic_threshold`` records and
raises ``ChunkRecorded``), computes mergekit's threshold from them (sorting makes their order
irrelevant), then streams the chunks again with that threshold. Importance is equal chunk by chunk
only for chunks of at least two rows (torch reduces a single wide row in another order, measured),
so the chunked merge never makes a one-row chunk. Result equal to the whole tensor's bit for bit
(tested). Outside a chunked merge the patch calls mergekit's function.
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
class Threshold:
    """One tensor's drawn elements (``index``: flat indices, None = every element) and, once found, its threshold."""

    index: torch.Tensor | None
    offset: int = 0  # flat offset of the chunk being recorded
    values: list[torch.Tensor] = field(default_factory=list)
    value: torch.Tensor | None = None

    @classmethod
    def start(cls, numel: int) -> Threshold:
        """Draw the tensor's sample as mergekit's ``approximate_quantiles`` would, here and now."""
        import mergekit.merge_methods.arcee_fusion as fusion

        if numel <= fusion._QUANTILE_SAMPLE_SIZE:
            return cls(index=None)
        return cls(index=torch.randint(numel, (fusion._QUANTILE_SAMPLE_SIZE,)))

    def record(self, importance: torch.Tensor) -> None:
        """Keep the drawn elements (with their multiplicity) of one chunk's importance."""
        flat = importance.reshape(-1)
        if self.index is None:
            self.values.append(flat.clone())
            return
        inside = (self.index >= self.offset) & (self.index < self.offset + flat.numel())
        self.values.append(flat[self.index[inside] - self.offset])

    def finish(self) -> None:
        """mergekit's threshold of the drawn elements (its own ``calculate_dynamic_threshold``, outside this state)."""
        import mergekit.merge_methods.arcee_fusion as fusion

        drawn = torch.cat(self.values)
        self.values = []
        token = ACTIVE.set(None)
        try:  # no second draw: at most the sample size
            self.value = fusion.DynamicThresholdFusion().calculate_dynamic_threshold(drawn)
        finally:
            ACTIVE.reset(token)


ACTIVE: contextvars.ContextVar[Threshold | None] = contextvars.ContextVar("hpc_merge_fusion", default=None)


@contextlib.contextmanager
def thresholding(state: Threshold) -> Iterator[Threshold]:
    """Route ``arcee_fusion``'s threshold through ``state`` inside the block."""
    token = ACTIVE.set(state)
    try:
        yield state
    finally:
        ACTIVE.reset(token)


def calculate_dynamic_threshold(real: Callable[[Any, torch.Tensor], torch.Tensor], fusion: Any,
                                importance: torch.Tensor) -> torch.Tensor:
    """``DynamicThresholdFusion.calculate_dynamic_threshold`` (``real``) in or out of a chunked merge."""
    state = ACTIVE.get()
    if state is None:
        return real(fusion, importance)
    if state.value is None:
        state.record(importance)
        raise ChunkRecorded
    return state.value
