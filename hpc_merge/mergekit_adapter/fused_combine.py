"""The combine step of mergekit's task-arithmetic family in one compiled pass, bit-identical in bf16.

Why: after the trim, ``GeneralizedTaskArithmeticMerge.merge_group`` (task_arithmetic, ties,
dare_*, della*, breadcrumbs*) weights the task vectors, elects a sign, sums the agreeing deltas and
their weights, divides and adds the base: about twenty bf16 passes over ``n`` task vectors, each
converting to float and back. Profiled on real-looking bf16 task vectors that was ~60 % of a TIES
merge's CPU (issue 15): the trim was not the hot path any more, the arithmetic around it was.

What: :func:`combine` does the same arithmetic element by element in one numba kernel over the
tensors' bf16 bit patterns, rounding to bf16 (round to nearest even, like torch) exactly where
mergekit's torch ops round: after every elementwise op, and once after each ``sum(dim=0)``,
which torch accumulates in float32 from ``+0`` in input order. The result equals mergekit's bit
for bit (tested against ``merge_group`` on ties at the threshold, signed zeros, negative and
zero weights, every consensus mode, with and without ``normalize`` and ``lambda``). Used for
bf16 tensors on CPU; every other case runs mergekit's own code (:mod:`patches` decides).

numba is imported on the first fused merge only (validation and dry runs do not pay for it);
the compiled kernel is cached beside this module (``cache=True``), so only the first merge on a
machine compiles it (~10 s; ``scripts/setup.sh`` does it once: ``numba_kernels.warm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpc_merge.mergekit_adapter import fused_drop, random_sparsify

if TYPE_CHECKING:
    import torch

#: consensus codes passed to the kernel
NONE, SUM, COUNT = 0, 1, 2
_CONSENSUS = {None: NONE, "sum": SUM, "count": COUNT}
_kernel: Any = None


def _compile() -> Any:
    """The numba kernel (compiled, or loaded from numba's cache, on first use)."""
    global _kernel
    if _kernel is None:
        from hpc_merge.mergekit_adapter.numba_kernels import combine_bf16

        _kernel = combine_bf16
    return _kernel


def bf16_alike(base: torch.Tensor, tensors: list[torch.Tensor]) -> bool:
    """Whether the bf16 kernels (this combine, fused_sce's, fused_ram's) take these inputs: bf16 on
    CPU, every input the base's shape."""
    import torch

    return (base.dtype == torch.bfloat16 and base.device.type == "cpu"
            and all(t.dtype == torch.bfloat16 and t.shape == base.shape for t in tensors))


def supported(base: torch.Tensor, tensors: list[torch.Tensor], consensus: str | None) -> bool:
    """Whether :func:`combine` reproduces mergekit for these inputs (:func:`bf16_alike`, a known consensus)."""
    return consensus in _CONSENSUS and bf16_alike(base, tensors)


def combine(base: torch.Tensor, deltas: torch.Tensor, weights: list[float], consensus: str | None,
            normalize: bool, lam: float) -> torch.Tensor:
    """``base`` + the consensus-masked, weighted, normalised sum of ``deltas`` (``[n, *base.shape]``, bf16).

    The same numbers as mergekit's ``merge_group`` after its sparsification loop (module doc).
    """
    import numpy as np
    import torch

    kernel = _compile()
    n = deltas.shape[0]
    w_bf16 = torch.tensor(weights, dtype=torch.bfloat16)
    divisor_all = np.float32(1.0)
    if consensus is None:  # mergekit: weights.sum(0) in bf16, |.| < 1e-8 -> 1, one value for the tensor
        div = w_bf16.sum(dim=0, keepdim=True)
        div[div.abs() < 1e-8] = 1
        divisor_all = np.float32(float(div))
    out = torch.empty(base.shape, dtype=torch.bfloat16)
    kernel(base.contiguous().view(torch.int16).reshape(-1).numpy(),
           deltas.contiguous().view(torch.int16).reshape(n, -1).numpy(),
           w_bf16.float().numpy(), _CONSENSUS[consensus], bool(normalize), np.float32(lam), lam != 1,
           divisor_all, out.view(torch.int16).reshape(-1).numpy())
    return out


def _dropped_into(out: torch.Tensor, base: torch.Tensor, entry: Any, sparsification: Any,
                  parameters: dict[str, Any]) -> bool:
    """``out`` = the entry's DARE or DELLA task vector from :mod:`fused_drop`'s kernels (False: not done)."""
    from mergekit.sparsify import SparsificationMethod

    density, rescale = parameters["density"][entry.id], bool(parameters["rescale"])
    if sparsification == SparsificationMethod.random:
        return fused_drop.dare_into(out, base, entry.tensor, density, rescale)
    if sparsification == SparsificationMethod.della_magprune and "epsilon" in parameters:
        return fused_drop.della_into(out, base, entry.tensor, density, parameters["epsilon"][entry.id], rescale)
    return False


def merge_group(real: Any, method: Any, group: Any, parameters: dict[str, Any]) -> torch.Tensor:
    """``GeneralizedTaskArithmeticMerge.merge_group`` with the combine step fused (``real``: mergekit's).

    The task vectors are formed and sparsified exactly as mergekit does (``base``-dtype
    subtraction, then ``mergekit.sparsify.sparsify`` looked up at call time, so the patched trims
    and draws apply, in entry order; DARE's and DELLA's counter-based drops in
    :mod:`fused_drop`'s kernels, with the same bits); only what follows runs in :func:`combine`.
    Anything the kernel does not cover goes to ``real``.
    """
    import mergekit.sparsify
    import torch

    base = group.base.tensor if group.base is not None else None
    entries = group.non_base
    consensus = method.consensus_method.value if method.consensus_method is not None else None
    if base is None or not entries or not supported(base, [e.tensor for e in entries], consensus):
        return real(method, group, **parameters)
    deltas = torch.empty((len(entries), *base.shape), dtype=base.dtype)
    sparsification = method.sparsification_method
    counter = mergekit.sparsify.bernoulli is random_sparsify.counter_bernoulli  # patches.counter_random is active
    for index, entry in enumerate(entries):
        if counter and _dropped_into(deltas[index], base, entry, sparsification, parameters):
            continue  # DARE's / DELLA's counter-based drop in compiled passes (the torch path's bits)
        delta = torch.sub(entry.tensor, base, out=deltas[index])  # in place: no temporary, no copy
        if method.sparsification_method:
            extra = {key: parameters[key][entry.id] for key in ("gamma", "epsilon") if key in parameters}
            sparse = mergekit.sparsify.sparsify(
                delta, density=parameters["density"][entry.id], method=method.sparsification_method,
                rescale_norm=mergekit.sparsify.RescaleNorm.l1 if parameters["rescale"] else None, **extra)
            if sparse is not delta:
                deltas[index] = sparse
            del sparse
        del delta
    weights = [parameters["weight"][entry.id] for entry in entries]
    return combine(base, deltas, weights, consensus, bool(parameters["normalize"]), float(parameters["lambda"]))
