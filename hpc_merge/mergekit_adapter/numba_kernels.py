"""The compiled kernels: the fused bf16 combine (:mod:`~hpc_merge.mergekit_adapter.fused_combine`),
DELLA's per-row ranks (:mod:`~hpc_merge.mergekit_adapter.della_rank`), SCE's variance
(:mod:`~hpc_merge.mergekit_adapter.variance`) and combine (:mod:`~hpc_merge.mergekit_adapter.fused_sce`),
DARE's and DELLA's draws, norms and drops (:mod:`~hpc_merge.mergekit_adapter.fused_drop`); imported on first use.

A module of its own so that numba compiles them once per machine: module-level ``njit(cache=True)``
functions are cached beside this file and loaded in milliseconds by later processes (a kernel
defined inside a function would be recompiled by every process), and importing numba (~0.5 s)
is paid only by merges that use them.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

BLOCK = 8192  # elements per kernel block: n + 4 float rows of it stay in L1/L2


@numba.njit(cache=True, inline="always")
def _bf16(f: Any) -> Any:  # pragma: no cover - compiled
    """bf16 bits (uint32, low 16) of float32 ``f`` rounded to nearest even; NaN -> torch's 0x7FC0."""
    if f != f:
        return np.uint32(0x7FC0)
    x = np.float32(f).view(np.uint32)
    return np.uint32((x + np.uint32(0x7FFF) + ((x >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@numba.njit(cache=True, inline="always")
def _round(f: Any, u: Any, m: int) -> None:
    """``f[:m]`` rounded to bf16 in place (``u`` is ``f``'s uint32 view); NaN -> torch's 0x7FC0."""
    for k in range(m):
        u[k] = _bf16(f[k]) << np.uint32(16)


@numba.njit(cache=True, inline="always")
def _widen(bits: Any, m: int, u: Any) -> None:
    """``u[:m]`` = the float32 bit patterns of the bf16 bits ``bits[:m]`` (exact)."""
    for k in range(m):
        u[k] = np.uint32(np.uint16(bits[k])) << np.uint32(16)


@numba.njit(cache=True, inline="always")
def _store_base_plus(base: Any, m: int, acc: Any, accu: Any, tmp: Any, tmpu: Any, out: Any) -> None:
    """``out[:m]`` = bf16 bits of ``base[:m]`` + ``acc`` (rounded once, as torch's ``base + delta``); uses ``tmp``."""
    _widen(base, m, tmpu)
    for k in range(m):
        acc[k] = tmp[k] + acc[k]
    _round(acc, accu, m)
    for k in range(m):
        out[k] = np.int16(np.uint16(accu[k] >> np.uint32(16)))


@numba.njit(parallel=True, cache=True)
def combine_bf16(base: Any, deltas: Any, w: Any, consensus: int, normalize: bool, lam: Any, use_lam: bool,
                 divisor_all: Any, out: Any) -> None:  # pragma: no cover - compiled
    """``out`` = bf16 bits of base + the combined ``deltas`` (int16 bit patterns; see fused_combine)."""
    n, total = deltas.shape
    zero = np.float32(0.0)
    one = np.float32(1.0)
    blocks = (total + BLOCK - 1) // BLOCK
    for blk in numba.prange(blocks):
        a = blk * BLOCK
        m = min(total, a + BLOCK) - a
        dw = np.empty((n, m), np.float32)
        dwu = dw.view(np.uint32)
        acc = np.empty(m, np.float32)
        accu = acc.view(np.uint32)
        div = np.empty(m, np.float32)
        divu = div.view(np.uint32)
        for i in range(n):  # weighted task vectors: bf16(delta * w)
            wi = w[i]
            _widen(deltas[i, a:a + m], m, dwu[i])
            for k in range(m):
                dw[i, k] = dw[i, k] * wi
            _round(dw[i], dwu[i], m)
        if consensus == 0:  # task arithmetic: sum, one divisor for the whole tensor
            for k in range(m):
                acc[k] = zero
            for i in range(n):
                for k in range(m):
                    acc[k] = acc[k] + dw[i, k]
            _round(acc, accu, m)
            for k in range(m):
                div[k] = divisor_all
        else:
            for k in range(m):  # the elected sign: sum (or count of signs) >= 0 after rounding
                acc[k] = zero
            for i in range(n):
                if consensus == 1:
                    for k in range(m):
                        acc[k] = acc[k] + dw[i, k]
                else:
                    for k in range(m):
                        x = dw[i, k]
                        acc[k] = acc[k] + (one if x > zero else (-one if x < zero else zero))
            _round(acc, accu, m)
            sgn = np.empty(m, np.float32)
            for k in range(m):  # the elected sign per element; then the agreeing deltas' and weights' sums
                sgn[k] = one if acc[k] >= zero else -one
                acc[k] = zero
                div[k] = zero
            for i in range(n):
                wi = w[i]
                for k in range(m):
                    x = dw[i, k]
                    keep = (x > zero) if sgn[k] > zero else (x < zero)
                    acc[k] = acc[k] + (x if keep else x * zero)
                    div[k] = div[k] + (wi if keep else wi * zero)
            _round(acc, accu, m)
            _round(div, divu, m)
            for k in range(m):
                if div[k] == zero:
                    div[k] = one
        if normalize:
            for k in range(m):
                acc[k] = acc[k] / div[k]
            _round(acc, accu, m)
        if use_lam:
            for k in range(m):
                acc[k] = acc[k] * lam
            _round(acc, accu, m)
        _store_base_plus(base[a:a + m], m, acc, accu, div, divu, out[a:a + m])



@numba.njit(parallel=True, cache=True)
def rank_limits16(keys: Any, table: Any, out: Any) -> None:  # pragma: no cover - compiled
    """``out[r, j] = table[rank of keys[r, j] in its row]`` (rank 0 = smallest, equal keys by column).

    ``keys`` are 15-bit magnitudes (int16 ≥ 0); a stable two-pass radix sort per row (low byte,
    then the high 7 bits) gives the same order as ``torch.sort(keys, dim=1, stable=True)``.
    """
    rows, cols = keys.shape
    for r in numba.prange(rows):
        row, dest = keys[r], out[r]
        low = np.zeros(257, np.int64)
        high = np.zeros(129, np.int64)
        for j in range(cols):
            k = row[j]
            low[(k & 0xFF) + 1] += 1
            high[((k >> 8) & 0x7F) + 1] += 1
        for b in range(256):
            low[b + 1] += low[b]
        for b in range(128):
            high[b + 1] += high[b]
        first = np.empty(cols, np.int64)
        for j in range(cols):
            b = row[j] & 0xFF
            first[low[b]] = j
            low[b] += 1
        for i in range(cols):
            j = first[i]
            b = (row[j] >> 8) & 0x7F
            dest[j] = table[high[b]]
            high[b] += 1


@numba.njit(cache=True, inline="always")
def _welford(x: Any, j: int) -> float:  # pragma: no cover - compiled
    """Population variance of column ``j`` of ``x`` (inputs × elements, float32) the way
    ``torch.var(dim=0, unbiased=False)`` computes it on CPU: Welford's update in float64, inputs in order."""
    mean = 0.0
    m2 = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i, j])
        delta = v - mean
        mean = mean + delta / np.float64(i + 1)
        m2 = m2 + delta * (v - mean)
    return m2 / np.float64(x.shape[0])


@numba.njit(parallel=True, cache=True)
def var_bf16(tvs: Any, out: Any) -> None:  # pragma: no cover - compiled
    """``out`` = bf16 bits of ``torch.var(tvs, dim=0, unbiased=False)`` for bf16 bit patterns ``tvs``
    (int16, inputs × elements): float64 Welford, then float64 -> float32 -> bf16 (round to nearest
    even, NaN -> 0x7FC0) as torch casts its float64 accumulator to bf16."""
    n, total = tvs.shape
    blocks = (total + BLOCK - 1) // BLOCK
    for blk in numba.prange(blocks):
        a = blk * BLOCK
        m = min(total, a + BLOCK) - a
        x = np.empty((n, m), np.float32)
        xu = x.view(np.uint32)
        for i in range(n):
            _widen(tvs[i, a:a + m], m, xu[i])
        f = np.empty(m, np.float32)
        fu = f.view(np.uint32)
        for k in range(m):
            f[k] = np.float32(_welford(x, k))
        _round(f, fu, m)
        dest = out[a:a + m]
        for k in range(m):
            dest[k] = np.int16(np.uint16(fu[k] >> np.uint32(16)))


@numba.njit(parallel=True, cache=True)
def var_f32(tvs: Any, out: Any) -> None:  # pragma: no cover - compiled
    """``out`` = ``torch.var(tvs, dim=0, unbiased=False)`` for float32 ``tvs`` (inputs × elements)."""
    total = tvs.shape[1]
    for j in numba.prange(total):
        out[j] = np.float32(_welford(tvs, j))


@numba.njit(parallel=True, cache=True)
def sce_combine_bf16(base: Any, tvs: Any, w: Any, floor: Any, out: Any) -> None:  # pragma: no cover - compiled
    """``out`` = bf16 bits of SCE's erase-and-combine (mergekit's ``sce_merge`` after its select step).

    ``tvs``: the selected task vectors (int16 bf16 bits, inputs × elements); ``w``: their bf16
    weights as float32; ``floor``: the divisor's clamp (bf16 of 1e-6). Per element, as torch does
    it in bf16: the sign of the rounded sum elects the majority; each agreeing input's weight
    (others' weight × 0) multiplies its delta (rounded); the products and the weights are summed in
    float32 from +0 in input order and rounded; the clamped quotient (rounded) is added to the base.
    """
    n, total = tvs.shape
    zero = np.float32(0.0)
    blocks = (total + BLOCK - 1) // BLOCK
    for blk in numba.prange(blocks):
        a = blk * BLOCK
        m = min(total, a + BLOCK) - a
        d = np.empty((n, m), np.float32)
        du = d.view(np.uint32)
        for i in range(n):
            _widen(tvs[i, a:a + m], m, du[i])
        acc = np.empty(m, np.float32)
        accu = acc.view(np.uint32)
        div = np.empty(m, np.float32)
        divu = div.view(np.uint32)
        p = np.empty(m, np.float32)
        pu = p.view(np.uint32)
        for k in range(m):
            acc[k] = zero
        for i in range(n):
            for k in range(m):
                acc[k] = acc[k] + d[i, k]
        _round(acc, accu, m)
        sgn = np.empty(m, np.bool_)
        for k in range(m):
            sgn[k] = acc[k] >= zero
            acc[k] = zero
            div[k] = zero
        for i in range(n):
            wi = w[i]
            for k in range(m):
                x = d[i, k]
                keep = (x > zero) if sgn[k] else (x < zero)
                ew = wi if keep else wi * zero
                p[k] = x * ew
                div[k] = div[k] + ew
            _round(p, pu, m)
            for k in range(m):
                acc[k] = acc[k] + p[k]
        _round(acc, accu, m)
        _round(div, divu, m)
        for k in range(m):
            if div[k] < floor:
                div[k] = floor
            acc[k] = acc[k] / div[k]
        _round(acc, accu, m)
        _store_base_plus(base[a:a + m], m, acc, accu, div, divu, out[a:a + m])


@numba.njit(parallel=True, cache=True)
def ram_combine_bf16(base: Any, models: Any, eps: Any, out: Any) -> int:  # pragma: no cover - compiled
    """``out`` = bf16 bits of mergekit's ``ram_merge`` (Reinforced Agent Merging) of bf16 bit patterns.

    ``models``: the inputs (int16, inputs × elements); ``eps``: the threshold as torch compares a
    bf16 tensor with it (rounded to bf16, as float32). Per element, as torch does it in bf16: each
    task vector ``bf16(model - base)``; an input contributes where ``|tv| > eps``; its term is the
    (masked) task vector where it alone contributes, ``bf16(tv / count)`` where several do, a signed
    zero elsewhere (``x * 0``, plus ``x * 0 / 1``, rounded); the terms are summed in float32 from +0
    in input order and rounded; the base is added and the sum rounded. Returns the number of
    inf/NaN task-vector elements (torch's NaN bits differ from ours: the caller runs mergekit's code).
    """
    n, total = models.shape
    zero = np.float32(0.0)
    inf = np.float32(np.inf)
    blocks = (total + BLOCK - 1) // BLOCK
    bad = np.zeros(blocks, np.int64)
    for blk in numba.prange(blocks):
        a = blk * BLOCK
        m = min(total, a + BLOCK) - a
        tv = np.empty((n, m), np.float32)
        tvu = tv.view(np.uint32)
        b = np.empty(m, np.float32)
        bu = b.view(np.uint32)
        _widen(base[a:a + m], m, bu)
        count = np.zeros(m, np.float32)
        for i in range(n):
            row, rowu = tv[i], tvu[i]
            _widen(models[i, a:a + m], m, rowu)
            for k in range(m):
                row[k] = row[k] - b[k]
            _round(row, rowu, m)
            for k in range(m):
                count[k] += np.float32(1.0) if abs(row[k]) > eps else zero
            for k in range(m):
                bad[blk] += 0 if abs(row[k]) < inf else 1
        acc = np.empty(m, np.float32)
        accu = acc.view(np.uint32)
        term = np.empty(m, np.float32)
        termu = term.view(np.uint32)
        for k in range(m):
            acc[k] = zero
        for i in range(n):
            row = tv[i]
            for k in range(m):  # the quotient of an overlapping element, rounded (row keeps the masked tv)
                x = row[k]
                xz = x if abs(x) > eps else x * zero
                row[k] = xz
                term[k] = xz / count[k] if count[k] > np.float32(1.0) else xz * zero
            _round(term, termu, m)
            for k in range(m):  # + the unique part (x * 1 or x * 0), rounded
                xz = row[k]
                term[k] = (xz if count[k] == np.float32(1.0) else xz * zero) + term[k]
            _round(term, termu, m)
            for k in range(m):
                acc[k] = acc[k] + term[k]
        _round(acc, accu, m)
        _store_base_plus(base[a:a + m], m, acc, accu, b, bu, out[a:a + m])
    return int(bad.sum())


_MASK32 = np.uint64(0xFFFFFFFF)
PARTS = 64  # partitions of a DARE/DELLA pass over a tensor (rows of the caller's sums array)
_EXACT_BLOCK = 4096  # elements summed in float64 at a time by the DARE/DELLA norm kernels (see dare_l1_bf16)
_INF_BIN = 255  # sums[p, 0, 255] counts inf/NaN task-vector elements


@numba.njit(cache=True, inline="always")
def _draw16(i: Any, mul: Any, add: Any) -> Any:  # pragma: no cover - compiled
    """The 16-bit counter-based draw of flat element ``i`` (``counter_draws``): ``lowbias32`` of
    ``(i // 2) · mul + add`` on wrapping 32-bit words; its low half for even ``i``, high for odd."""
    x = np.uint32((np.uint64(i >> 1) * mul + add) & _MASK32)
    x ^= x >> np.uint32(16)
    x = np.uint32(x * np.uint32(0x7FEB352D))
    x ^= x >> np.uint32(15)
    x = np.uint32(x * np.uint32(0x846CA68B))
    x ^= x >> np.uint32(16)
    return (x >> np.uint32(16)) if i & 1 else (x & np.uint32(0xFFFF))


@numba.njit(cache=True, inline="always")
def _f32(bits16: Any) -> Any:  # pragma: no cover - compiled
    """The float32 value of bf16 bits (any integer type; the low 16 bits are used)."""
    return np.uint32(np.uint32(np.uint16(bits16)) << np.uint32(16)).view(np.float32)


@numba.njit(cache=True, inline="always")
def _delta16(model: Any, base: Any, k: int) -> Any:  # pragma: no cover - compiled
    """bf16 bits (uint32, low 16) of ``model[k] - base[k]`` rounded like torch's bf16 subtraction."""
    return _bf16(_f32(model[k]) - _f32(base[k]))


@numba.njit(cache=True, inline="always")
def _add_exact(sums: Any, x: float) -> None:  # pragma: no cover - compiled
    """Add ``x`` (≥ 0, an exact multiple of bf16's smallest subnormal 2^-133) to the exponent sums
    ``sums`` (value = Σ_e sums[e] · 2^(e-1) units of 2^-133, as ``exact_norm`` reads them)."""
    if x == 0.0:
        return
    bits = np.float64(x).view(np.int64)
    mant = (bits & ((np.int64(1) << 52) - 1)) | (np.int64(1) << 52)  # x is normal in float64
    e = ((bits >> 52) & 0x7FF) - 941  # x = mant · 2^(e - 1) units
    if e < 1:  # exact: x is a multiple of one unit
        mant >>= 1 - e
        e = 1
    sums[e] += mant
    if sums[e] >= np.int64(1) << 61:  # carry into the next exponent (2 units of e = 1 of e + 1)
        sums[e + 1] += sums[e] >> 1
        sums[e] &= 1


@numba.njit(cache=True, inline="always")
def _kept(k: int, start: int, mul: Any, add: Any, threshold: Any, limits: Any, per_element: bool) -> bool:  # pragma: no cover - compiled
    """Element ``k``'s keep decision: its draw (flat index ``start + k``) below ``threshold`` (DARE),
    or its signed draw (draw - 32768) at most ``limits[k]`` (DELLA's rank-dependent limits)."""
    draw = _draw16(start + k, mul, add)
    if per_element:
        return np.int32(draw) - np.int32(32768) <= np.int32(limits[k])
    return draw < threshold


@numba.njit(cache=True, inline="always")
def _l1_part(base: Any, model: Any, first: int, stop: int, start: int, mul: Any, add: Any, thr: Any, limits: Any,
             per_element: bool, sums: Any) -> None:  # pragma: no cover - compiled
    """Blocks ``first .. stop - 1`` of :func:`dare_l1_bf16` / :func:`della_l1_bf16` into ``sums`` (2 × 256).

    Inlined into each kernel with ``per_element`` a constant, so the compiler drops the other
    branch of :func:`_kept` (a run-time flag made both kernels 4-5 × slower: no vectorising).
    """
    total = base.shape[0]
    for blk in range(first, stop):
        lo = blk * _EXACT_BLOCK
        hi = min(total, lo + _EXACT_BLOCK)
        b, m, lim, at = base[lo:hi], model[lo:hi], limits[lo:hi], start + lo
        all_sum = 0.0
        kept_sum = 0.0
        emin = 255
        emax = 0
        for k in range(hi - lo):
            d = _delta16(m, b, k) & np.uint32(0x7FFF)
            e = np.int64(d >> np.uint32(7))
            if d != 0:
                emin = min(emin, e)
            emax = max(emax, e)
            f = np.float64(_f32(d))
            all_sum += f
            kept_sum += f if _kept(k, at, mul, add, thr, lim, per_element) else 0.0
        if emax <= 200 and emax - max(emin, 1) <= 33:  # exact, and its sum's exponent stays < 255
            _add_exact(sums[0], all_sum)
            _add_exact(sums[1], kept_sum)
            continue
        for k in range(hi - lo):  # wide, huge or non-finite block: integer sums per exponent
            d = _delta16(m, b, k) & np.uint32(0x7FFF)
            e = d >> np.uint32(7)
            if e == np.uint32(_INF_BIN):
                sums[0, _INF_BIN] += 1
                continue
            v = np.int64(d & np.uint32(0x7F)) + (np.int64(128) if e > np.uint32(0) else np.int64(0))
            sums[0, e] += v
            if _kept(k, at, mul, add, thr, lim, per_element):
                sums[1, e] += v


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def dare_l1_bf16(base: Any, model: Any, start: int, mul: Any, add: Any, threshold: int,
                 sums: Any) -> None:  # pragma: no cover - compiled
    """Exact L1 norms of DARE's task vector ``model - base`` (bf16 bits) and of its kept part.

    Adds to ``sums[p, 0]`` (every element) and ``sums[p, 1]`` (kept: the draw of flat index
    ``start + k`` below ``threshold``) exponent sums whose value is exact (``exact_norm``), the
    same for any split of the tensor; ``sums[p, 0, 255]`` counts inf/NaN deltas. How it is fast:
    each block of 4096 magnitudes is summed in float64, which is exact (in any order, hence
    ``reassoc``) when its exponents span at most 33 binades — 4096 · 2^8 · 2^33 < 2^53 units of
    its smallest; a block that spans more, or holds huge or non-finite values, is summed per
    exponent in integers.
    """
    blocks = (base.shape[0] + _EXACT_BLOCK - 1) // _EXACT_BLOCK
    per = (blocks + PARTS - 1) // PARTS
    for p in numba.prange(PARTS):
        _l1_part(base, model, p * per, min(blocks, (p + 1) * per), start, mul, add, np.uint32(threshold), base,
                 False, sums[p])


@numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
def della_l1_bf16(base: Any, model: Any, start: int, mul: Any, add: Any, limits: Any,
                  sums: Any) -> None:  # pragma: no cover - compiled
    """:func:`dare_l1_bf16` for DELLA: element ``k`` is kept where its signed draw is at most ``limits[k]``."""
    blocks = (base.shape[0] + _EXACT_BLOCK - 1) // _EXACT_BLOCK
    per = (blocks + PARTS - 1) // PARTS
    for p in numba.prange(PARTS):
        _l1_part(base, model, p * per, min(blocks, (p + 1) * per), start, mul, add, np.uint32(0), limits,
                 True, sums[p])


@numba.njit(cache=True, inline="always")
def _delta_part(base: Any, model: Any, start: int, mul: Any, add: Any, thr: Any, limits: Any,
                per_element: bool, factor: Any, rescale: bool, out: Any) -> int:  # pragma: no cover - compiled
    """One share of :func:`dare_delta_bf16` / :func:`della_delta_bf16` (slices; flat index ``start + k``); the count of inf/NaN deltas."""
    count = 0
    for k in range(base.shape[0]):
        d = _delta16(model, base, k)
        count += 1 if (d & np.uint32(0x7F80)) == np.uint32(0x7F80) else 0
        kept = _bf16(_f32(d) * factor) if rescale else d
        keep = _kept(k, start, mul, add, thr, limits, per_element)
        out[k] = np.int16(np.uint16(kept if keep else d & np.uint32(0x8000)))
    return count


@numba.njit(parallel=True, cache=True)
def dare_delta_bf16(base: Any, model: Any, start: int, mul: Any, add: Any, threshold: int, factor: Any,
                    rescale: bool, out: Any) -> int:  # pragma: no cover - compiled
    """``out`` = bf16 bits of DARE's sparsified task vector: ``model - base`` where the draw of flat
    index ``start + k`` is below ``threshold`` (times ``factor``, rounded, if ``rescale``), else the
    delta's signed zero. Returns the number of inf/NaN deltas (the caller then takes torch's path)."""
    total = base.shape[0]
    step = (total + PARTS - 1) // PARTS
    bad = np.zeros(PARTS, np.int64)
    for p in numba.prange(PARTS):
        lo, hi = p * step, min(total, (p + 1) * step)
        bad[p] = _delta_part(base[lo:hi], model[lo:hi], start + lo, mul, add, np.uint32(threshold), base[lo:hi],
                             False, factor, rescale, out[lo:hi])
    return int(bad.sum())


@numba.njit(parallel=True, cache=True)
def della_delta_bf16(base: Any, model: Any, start: int, mul: Any, add: Any, limits: Any, factor: Any,
                     rescale: bool, out: Any) -> int:  # pragma: no cover - compiled
    """:func:`dare_delta_bf16` for DELLA: element ``k`` is kept where its signed draw is at most ``limits[k]``."""
    total = base.shape[0]
    step = (total + PARTS - 1) // PARTS
    bad = np.zeros(PARTS, np.int64)
    for p in numba.prange(PARTS):
        lo, hi = p * step, min(total, (p + 1) * step)
        bad[p] = _delta_part(base[lo:hi], model[lo:hi], start + lo, mul, add, np.uint32(0), limits[lo:hi],
                             True, factor, rescale, out[lo:hi])
    return int(bad.sum())


@numba.njit(parallel=True, cache=True)
def hist15(bits: Any, parts: int, out: Any) -> None:  # pragma: no cover - compiled
    """``out += torch.bincount(bits & 0x7FFF, minlength=32768)``: the magnitudes of 16-bit float bit patterns (int16, flat).

    Each of ``parts`` shares (one per thread: ``numba.get_num_threads()``, passed in because a
    kernel that asks for it cannot be cached) is counted into four interleaved histograms (runs
    of equal magnitudes — everywhere in real bf16 task vectors — would otherwise wait on one
    counter); then they are added.
    """
    n = bits.shape[0]
    step = (n + parts - 1) // parts
    counts = np.zeros((parts, 4, 32768), np.int64)
    for p in numba.prange(parts):
        share, mine = bits[p * step:min(n, (p + 1) * step)], counts[p]
        for k in range(share.shape[0]):
            mine[k & 3, share[k] & 0x7FFF] += 1
    for p in range(parts):
        for lane in range(4):
            for j in range(32768):
                out[j] += counts[p, lane, j]


TIE_BLOCK16 = 4096  # elements per tie-count block of tie_cut16


@numba.njit(parallel=True, cache=True)
def tie_cut16(bits: Any, threshold: int, need: int) -> Any:  # pragma: no cover - compiled
    """``(cut, kept)``: the first ``kept = min(need, #ties)`` elements of 16-bit float bits ``bits``
    (int16, flat) whose magnitude pattern equals ``threshold`` lie in ``[0, cut)`` (``need`` > 0).

    Ties are counted per block in parallel; the block where the count reaches ``need`` is scanned.
    If ``need`` covers every tie, ``cut`` is ``n``.
    """
    n = bits.shape[0]
    blocks = (n + TIE_BLOCK16 - 1) // TIE_BLOCK16
    counts = np.zeros(blocks, np.int64)
    for b in numba.prange(blocks):
        c = 0
        block = bits[b * TIE_BLOCK16:min(n, (b + 1) * TIE_BLOCK16)]
        for k in range(block.shape[0]):
            c += (block[k] & 0x7FFF) == threshold
        counts[b] = c
    total = counts.sum()
    if total <= need:  # every tie is kept (as topk.tie_cut says it)
        return n, total
    seen = 0
    for b in range(blocks):
        if seen + counts[b] >= need:
            for k in range(b * TIE_BLOCK16, min(n, (b + 1) * TIE_BLOCK16)):
                if (bits[k] & 0x7FFF) == threshold:
                    seen += 1
                    if seen == need:
                        return k + 1, seen
        seen += counts[b]
    return n, seen


@numba.njit(cache=True, inline="always")
def _band16(bits: Any, above: Any, at_most: Any, out: Any) -> None:  # pragma: no cover - compiled
    """``out`` = ``bits`` where ``above < magnitude pattern <= at_most``, else the sign bit alone."""
    keep_all, sign_only, low15 = np.int16(-1), np.int16(-32768), np.int16(0x7FFF)
    for k in range(bits.shape[0]):
        x = bits[k]
        key = x & low15
        out[k] = x & (keep_all if (key > above) & (key <= at_most) else sign_only)


@numba.njit(parallel=True, cache=True)
def select16(bits: Any, upper: int, upper_cut: int, lower: int, lower_cut: int, out: Any) -> None:  # pragma: no cover - compiled
    """``out`` = ``bits`` (16-bit floats, int16, flat) where the element is in the top selection
    ``(upper, upper_cut)`` and not in ``(lower, lower_cut)``, else its sign bit alone (``x * 0``).

    Element ``k`` is in selection ``(t, cut)`` if its magnitude pattern is above ``t``, or equal to
    it and ``k < cut`` (:func:`tie_cut16`); ``lower = 0x7FFF, lower_cut = 0`` selects nothing.
    Below a cut the selection is "pattern > t - 1", past it "pattern > t": each block is split at
    the cuts into runs with constant 16-bit bounds (which vectorise; a per-element index test did not).
    """
    n = bits.shape[0]
    blocks = (n + BLOCK - 1) // BLOCK
    for b in numba.prange(blocks):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        while lo < hi:
            stop = hi
            if lo < upper_cut:
                stop = min(stop, upper_cut)
            if lo < lower_cut:
                stop = min(stop, lower_cut)
            above = np.int16(upper - 1 if lo < upper_cut else upper)
            at_most = np.int16(lower - 1 if lo < lower_cut else lower)
            _band16(bits[lo:stop], above, at_most, out[lo:stop])
            lo = stop


def warm() -> None:
    """Compile (or load from numba's cache) every kernel above on tiny inputs: ``scripts/setup.sh``
    calls it once, so no merge waits seconds for a compile."""
    bits = np.zeros((2, 4), np.int16)
    out = np.zeros(4, np.int16)
    combine_bf16(out.copy(), bits, np.ones(2, np.float32), 1, True, np.float32(1.0), False, np.float32(1.0), out)
    rank_limits16(bits, np.zeros(4, np.int16), np.zeros((2, 4), np.int16))
    var_bf16(bits, out)
    var_f32(np.zeros((2, 4), np.float32), np.zeros(4, np.float32))
    sce_combine_bf16(out.copy(), bits, np.ones(2, np.float32), np.float32(1e-6), out)
    ram_combine_bf16(out.copy(), bits, np.float32(1e-5), out)
    hist15(out, numba.get_num_threads(), np.zeros(32768, np.int64))
    tie_cut16(out, 0, 1)
    select16(out, 0, 0, 0x7FFF, 0, out.copy())
    sums = np.zeros((PARTS, 2, 256), np.int64)
    one, zero = np.uint64(1), np.uint64(0)
    dare_l1_bf16(out, out.copy(), 0, one, zero, 32768, sums)
    della_l1_bf16(out, out.copy(), 0, one, zero, out.copy(), sums)
    dare_delta_bf16(out, out.copy(), 0, one, zero, 32768, np.float32(1.0), True, out.copy())
    della_delta_bf16(out, out.copy(), 0, one, zero, out.copy(), np.float32(1.0), True, out.copy())
