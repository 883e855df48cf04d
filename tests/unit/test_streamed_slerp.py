"""streamed_slerp against mergekit's own slerp: same bits for every dtype, both branches, any read span."""

from __future__ import annotations

import mergekit.merge_methods.slerp as mk_slerp
import pytest
import torch

from hpc_merge.mergekit_adapter import streamed_slerp


def _pair(shape: tuple[int, ...], dtype: torch.dtype, spread: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    a = torch.randn(shape, generator=g)
    return a.to(dtype), (a + spread * torch.randn(shape, generator=g)).to(dtype)


def _streamed(a: torch.Tensor, b: torch.Tensor, t: float, span: int) -> tuple[torch.Tensor, list[int]]:
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    out = torch.full((a.numel(),), float("nan"), dtype=a.dtype)
    reads: list[int] = []

    def read(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        reads.append(stop - start)
        return flat_a[start:stop].clone(), flat_b[start:stop].clone()

    def emit(start: int, part: torch.Tensor) -> None:
        out[start:start + part.numel()] = part

    streamed_slerp.merge(read, a.numel(), t, a.dtype, emit, span)
    return out.reshape(a.shape), reads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("spread", [0.01, 1.0], ids=["collinear-lerp", "spherical"])
@pytest.mark.parametrize("span", [1, 250, 10_000])
def test_streamed_slerp_equals_mergekit(dtype: torch.dtype, spread: float, span: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of 100 elements (mergekit's piece length patched down), a tensor of 3,017 (not a whole
    number of pieces), read spans shorter than, between and longer than a piece: bit-identical,
    and no read is longer than the span rounded up to whole pieces."""
    monkeypatch.setattr(mk_slerp, "_CHUNK_ELEMENTS", 100)
    a, b = _pair((431, 7), dtype, spread)
    coef = torch.float64 if dtype == torch.float64 else torch.float32
    want = mk_slerp.slerp(torch.tensor([0.3], dtype=coef), a[None], b[None])[0]
    got, reads = _streamed(a, b, 0.3, span)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert max(reads) <= max(100, span // 100 * 100)


def test_streamed_slerp_at_mergekits_piece_length() -> None:
    """mergekit's own 1M-element pieces, a tensor of 2.7 pieces in bf16 (an embedding's shape)."""
    a, b = _pair((3000, 896), torch.bfloat16, 1.0)
    want = mk_slerp.slerp(torch.tensor([0.6]), a[None], b[None])[0]
    got, _ = _streamed(a, b, 0.6, 1 << 20)
    assert torch.equal(got, want)
