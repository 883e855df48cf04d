"""Counter-based 16-bit random draws: the draw of element ``i`` is a pure function of ``(key, i)``.

Why: DARE's and DELLA's masks (:mod:`~hpc_merge.mergekit_adapter.random_sparsify`) must not depend
on the order tensors are merged in, on the chunking or on the thread count. Each task vector of
each tensor gets a key (BLAKE2b of ``(random_seed, name, vector)``: an odd multiplier and an
offset); hash ``j`` is ``lowbias32(j · mul + add)`` on wrapping int32, and its low and high 16 bits
are the draws of elements ``2j`` and ``2j + 1``.

How it is fast: the hash runs in blocks of 64K int32 (the temporaries stay in cache) on one
thread; each block's int32 hashes are read as int16 pairs (little-endian: low half first, so the
pair order is the element order) with the sign bit flipped, which orders them like the unsigned
draws — one contiguous comparison per block gives the keep decisions, and DELLA compares the same
"signed draws" with per-element integer thresholds.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_BLOCK = 1 << 16  # hashes per block: the int32 temporaries of one block stay in the CPU cache
RESOLUTION = 1 << 16  # one draw = 16 bits
_HALF = 1 << 15  # signed draw = draw - 32768 (the int16 pattern with its sign bit flipped)
if sys.byteorder != "little":  # the int16 view of an int32 hash must put its low half first
    raise ImportError("counter-based draws assume a little-endian machine")


def key(seed: int, name: str, vector: int) -> tuple[int, int]:
    """Two 32-bit words (an odd multiplier and an offset) for one task vector of one tensor."""
    digest = hashlib.blake2b(f"{seed}\0{name}\0{vector}".encode(), digest_size=8).digest()
    mul = int.from_bytes(digest[:4], "little") | 1
    add = int.from_bytes(digest[4:], "little")
    return _signed32(mul), _signed32(add)


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


_M1, _M2 = _signed32(0x7FEB352D), _signed32(0x846CA68B)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` in place on int32 (wrapping multiply; logical shifts by masking the sign-extended bits)."""
    x ^= (x >> 16) & 0xFFFF
    x *= _M1
    x ^= (x >> 15) & 0x1FFFF
    x *= _M2
    x ^= (x >> 16) & 0xFFFF
    return x


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the hash blocks on one intra-op thread.

    A block is a few hundred KB: split over threads it gains nothing, and on a shared machine the
    threads' synchronisation cost 10-50 × the work (measured: 10 ms CPU per 4.4M draws on one
    thread, 0.2-0.5 s on two under load).
    """
    import torch

    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _signed_blocks(seed: int, name: str, vector: int, start: int, count: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(offset, signed draws)`` per block: int16 views (draw - 32768) of hashes ``start // 2 ..``, in order.

    Offsets count elements from ``2 · (start // 2)`` (the first hash's first draw).
    """
    import torch

    mul, add = key(seed, name, vector)
    first, stop = start // 2, (start + count + 1) // 2
    for a in range(first, stop, _BLOCK):
        b = min(a + _BLOCK, stop)
        if b <= 1 << 31:  # the same int32 values as an int64 range wrapped to int32, one copy fewer
            x = torch.arange(a, b, dtype=torch.int32)
        else:
            x = torch.arange(a, b, dtype=torch.int64).to(torch.int32)
        x *= mul
        x += add
        _hash32(x)
        pairs = x.view(torch.int16)  # [low, high] of each hash: the draws of elements 2j, 2j + 1
        pairs ^= -_HALF  # flip the sign bit: signed order = unsigned draw order
        yield 2 * (a - first), pairs


def keep_mask(seed: int, name: str, vector: int, start: int, count: int, density: float) -> torch.Tensor:
    """Keep decisions (bool, flat) of elements ``start .. start+count-1`` of one task vector: draw < round(density · 65536)."""
    import torch

    threshold = round(density * RESOLUTION)
    first = start // 2
    out = torch.empty(2 * ((start + count + 1) // 2 - first), dtype=torch.bool)
    if threshold <= 0 or threshold >= RESOLUTION:  # every draw is >= 0 / < 65536
        out.fill_(threshold > 0)
    else:
        with _one_thread():
            for offset, signed in _signed_blocks(seed, name, vector, start, count):
                torch.lt(signed, threshold - _HALF, out=out[offset:offset + signed.numel()])
    skip = start - 2 * first
    return out[skip:skip + count]


def signed_draws(seed: int, name: str, vector: int, start: int, count: int) -> torch.Tensor:
    """The draws behind :func:`keep_mask` minus 32768, as int16 (flat), for per-element keep thresholds."""
    import torch

    first = start // 2
    out = torch.empty(2 * ((start + count + 1) // 2 - first), dtype=torch.int16)
    with _one_thread():
        for offset, signed in _signed_blocks(seed, name, vector, start, count):
            out[offset:offset + signed.numel()] = signed
    skip = start - 2 * first
    return out[skip:skip + count]


def draws16(seed: int, name: str, vector: int, start: int, count: int) -> torch.Tensor:
    """The 16-bit draws (int32, 0..65535) behind :func:`keep_mask` (a reference for tests)."""
    import torch

    return signed_draws(seed, name, vector, start, count).to(torch.int32) + _HALF
