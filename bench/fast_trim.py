"""The proposed product change for TIES on CPU, measured without changing the product.

mergekit's ``sparsify.magnitude`` ranks every element with a full ``argsort`` (O(n log n), one
float32 copy of the tensor plus an int64 index per element); that sort is most of a TIES merge's
time on CPU. Taking the threshold from a histogram of the bf16 magnitudes (``floor.magnitude_mask``)
finds the same cut in one pass. Entries tied with the threshold are all kept, where argsort keeps
an arbitrary subset, so outputs differ from mergekit's in those tied entries only.

    python bench/fast_trim.py -m hpc_merge ARGS...   # the CLI with mergekit's trim replaced

In the product this would be ``mergekit.sparsify.magnitude = fast_magnitude`` applied inside
``hpc_merge.mergekit_adapter.run_mergekit`` (and restored after), like its other workarounds.
"""

from __future__ import annotations

import os
import runpy
import sys

import torch


def fast_magnitude(tensor: torch.Tensor, density: float, rescale_norm=None) -> torch.Tensor:
    """Drop-in for ``mergekit.sparsify.magnitude`` with a histogram threshold."""
    from floor import magnitude_mask  # bench/ is on sys.path when run as a script
    from mergekit.sparsify import rescaled_masked_tensor

    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    mask = magnitude_mask(tensor, density)
    return rescaled_masked_tensor(tensor, mask.to(tensor.dtype), rescale_norm)


def install() -> None:
    """Replace mergekit's magnitude trim for this process."""
    import mergekit.sparsify

    mergekit.sparsify.magnitude = fast_magnitude


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here] + [here]
    install()
    if sys.argv[1:2] != ["-m"]:
        raise SystemExit("usage: fast_trim.py -m MODULE ARGS...")
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
