"""model_stock and nuslerp by row chunks, each whole-tensor reduction done by torch on its operand alone.

Why: both methods reduce whole tensors (model_stock: the norms of the task vectors and their dot
products; nuslerp, flattened: the norms of both task vectors and the dot product of the normalised
ones), so they merged whole tensors: every input's copy of the largest tensor plus a handful of
temporaries, 2.5-2.9 x the largest shard in RAM at 0.5B (issue 15). A streamed sum would reduce in
another order than torch does and change the result's last bits.

What: each reduction's operand is an elementwise expression of the inputs, and elementwise bf16
(or float32) arithmetic gives the same bits on a row chunk as on the whole tensor. So the operand
of each reduction is built whole, chunk by chunk (:func:`operand`), and reduced by the same torch
call on the same flat shape as mergekit's — the same bits — then freed; with the statistics known,
the result is computed chunk by chunk. At most one whole operand (one tensor in the merge's input
dtype) is in memory at a time; the inputs are read once per reduction plus once for the result.
The arithmetic mirrors mergekit 0.1.5's ``model_stock_merge_method`` (``filter_wise: false``) and
``nuslerp`` (``nuslerp_flatten: true``, the default) line by line; tested equal to them bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Rows = Callable[[int, int], list[torch.Tensor]]  # rows [a, b) of every input, in the group's order
Emit = Callable[[int, torch.Tensor], None]  # (first row, merged rows)


def operand(rows: Rows, bounds: list[tuple[int, int]], numel: int, expr: Callable[[list[torch.Tensor]], torch.Tensor]
            ) -> torch.Tensor:
    """``expr`` of the inputs as one flat tensor of ``numel`` elements, evaluated chunk by chunk."""
    out: torch.Tensor | None = None
    at = 0
    for a, b in bounds:
        part = expr(rows(a, b)).reshape(-1)
        if out is None:
            out = torch.empty(numel, dtype=part.dtype)
        out[at:at + part.numel()] = part
        at += part.numel()
    assert out is not None and at == numel
    return out


def model_stock(rows: Rows, bounds: list[tuple[int, int]], numel: int, count: int, emit: Emit) -> None:
    """``model_stock`` (whole-tensor cosines) of inputs ``[base, *others]`` (``count`` others)."""
    def offset(i: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
        return lambda t: t[i] - t[0]

    norms = []
    for i in range(1, count + 1):
        whole = operand(rows, bounds, numel, offset(i))
        norms.append(torch.norm(whole, dim=-1))
        del whole
    cos_thetas = []
    for i in range(1, count + 1):
        for j in range(i + 1, count + 1):
            whole = operand(rows, bounds, numel, lambda t, i=i, j=j: (t[i] - t[0]) * (t[j] - t[0]))
            norm_product = norms[i - 1] * norms[j - 1]
            cos_thetas.append((whole.sum(dim=-1) / norm_product.clamp(min=1e-6)).clamp(-1, 1))
            del whole
    cos_theta = torch.stack(cos_thetas).mean(dim=0).unsqueeze(-1)
    denominator = 1 + (count - 1) * cos_theta
    singular = denominator.abs() < 1e-6
    safe_denominator = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos_theta), (count * cos_theta) / safe_denominator)
    for a, b in bounds:
        chunk = rows(a, b)
        w_0, ws = chunk[0], chunk[1:]
        shape = w_0.shape
        w_0, ws = w_0.reshape(-1), [w.reshape(-1) for w in ws]
        average = sum(ws) / count
        emit(a, (t * average + (1 - t) * w_0).reshape(shape))


def nuslerp(rows: Rows, bounds: list[tuple[int, int]], numel: int, t: float, has_base: bool, emit: Emit,
            eps: float = 1e-8) -> None:
    """``nuslerp`` (flattened) of inputs ``[base, first, second]`` (``has_base``) or ``[first, second]``."""
    def vectors(x: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return (x[1] - x[0], x[2] - x[0]) if has_base else (x[0], x[1])

    norm0 = torch.norm(operand(rows, bounds, numel, lambda x: vectors(x)[0]), dim=-1, keepdim=True).clamp(min=1e-7)
    norm1 = torch.norm(operand(rows, bounds, numel, lambda x: vectors(x)[1]), dim=-1, keepdim=True).clamp(min=1e-7)

    def product(x: list[torch.Tensor]) -> torch.Tensor:
        v0, v1 = vectors(x)
        return v0.reshape(-1) / norm0 * (v1.reshape(-1) / norm1)

    cos_theta = torch.sum(operand(rows, bounds, numel, product), dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos_theta.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos_theta))
    sin_theta = torch.sin(theta)
    for a, b in bounds:
        x = rows(a, b)
        shape = x[0].shape
        v0, v1 = (v.reshape(-1) for v in vectors(x))
        result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta
        result = torch.where(colinear, (1 - t) * v0 + t * v1, result)
        emit(a, x[0] + result.reshape(shape) if has_base else result.reshape(shape))
