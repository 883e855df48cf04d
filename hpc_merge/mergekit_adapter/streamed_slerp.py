"""SLERP of a large tensor in three streamed passes over flat pieces, bit-identical to mergekit's.

Why: slerp needs two whole-tensor statistics (the norms of both inputs, then the dot product of
the normalised inputs), so the chunked merge used to leave it whole: both inputs and the output of
the largest tensor in memory at once, 2.4-2.6 x the largest shard in RAM at 0.5B (issue 15).

What: mergekit 0.1.5's own ``slerp`` already works in flat pieces of ``_CHUNK_ELEMENTS`` elements
(per output tensor): the norm of each piece, then the norm of those norms; the dot product of each
normalised piece, then their sum; then each piece's result. Every reduction depends only on one
piece's elements and on the list of per-piece values, so :func:`merge` runs the same three passes
with the same torch ops on the same shapes, reading each piece from the files when it is needed
and handing each result piece to ``emit``: equal to mergekit's slerp bit for bit (tested), with one
read span per input in memory. The price is three reads of both inputs (the page cache serves the
second and third) instead of one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

Read = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]  # flat [start, stop) of (base, other)


def piece_elements() -> int:
    """mergekit's piece length for one output tensor (read at call time, as mergekit does)."""
    import mergekit.merge_methods.slerp as slerp

    return max(1, slerp._CHUNK_ELEMENTS // 1)


def _pieces(read: Read, numel: int, span: int, piece: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(flat start, base piece, other piece)`` as ``[1, k]`` rows, in mergekit's piece order."""
    for start in range(0, numel, span):
        a, b = read(start, min(start + span, numel))
        a, b = a.reshape(1, -1), b.reshape(1, -1)
        for p in range(0, a.shape[1], piece):
            yield start + p, a[:, p:p + piece], b[:, p:p + piece]


def merge(read: Read, numel: int, t: float, dtype: torch.dtype, emit: Callable[[int, torch.Tensor], None],
          span_elements: int, dot_threshold: float = 0.9995, eps: float = 1e-8) -> None:
    """``slerp(t, base, other)`` of one tensor of ``numel`` elements, emitted as flat pieces.

    ``read(start, stop)`` gives both inputs' flat elements in the merge's input ``dtype``;
    ``emit(start, piece)`` receives result pieces in that dtype. ``span_elements`` bounds each read
    (rounded to whole pieces).
    """
    piece = piece_elements()
    work = torch.float64 if dtype == torch.float64 else torch.float32
    span = max(piece, span_elements // piece * piece)
    t_col = torch.tensor([t], dtype=work).reshape(-1, 1).to(work)  # mergekit's coefficient tensor
    # per-piece values go into tensors made up front (what torch.stack of mergekit's lists holds):
    # small blocks kept alive between the pieces' large temporaries would split the heap's free
    # blocks, and glibc would then take fresh memory for every piece (measured: 1.35 GB vs 0.5 GB).
    count = -(-numel // piece)
    parts_a, parts_b, dots = (torch.empty((count, 1, 1), dtype=work) for _ in range(3))
    for i, (_, x, y) in enumerate(_pieces(read, numel, span, piece)):
        parts_a[i] = torch.linalg.vector_norm(x.to(work), dim=1, keepdim=True)
        parts_b[i] = torch.linalg.vector_norm(y.to(work), dim=1, keepdim=True)
    norm_a = torch.linalg.vector_norm(parts_a, dim=0)
    norm_b = torch.linalg.vector_norm(parts_b, dim=0)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    for i, (_, x, y) in enumerate(_pieces(read, numel, span, piece)):
        dots[i] = (x.to(work) / norm_a * (y.to(work) / norm_b)).sum(dim=1, keepdim=True)
    dot = dots.sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear, 1 - t_col, torch.sin((1 - t_col) * theta) / sin_theta)
    coef_b = torch.where(linear, t_col, torch.sin(t_col * theta) / sin_theta)
    for start, x, y in _pieces(read, numel, span, piece):
        emit(start, (coef_a * x.to(work) + coef_b * y.to(work)).to(dtype).reshape(-1))
