"""Benchmark 6: the merge bench on a GPU — only where one is lent; never required."""

from __future__ import annotations

from bench.context import Context
from bench.table import Table

NAME = "gpu"


def run(ctx: Context) -> list[Table]:
    """Say plainly whether it ran (it needs CUDA in this process's torch)."""
    import torch

    t = Table("GPU", ["status"])
    if not torch.cuda.is_available():
        t.add(f"skipped: no CUDA device on this machine (torch {torch.__version__}); "
              "the GPU variant of the merge bench was not run")
    else:
        t.add(f"CUDA available ({torch.cuda.get_device_name(0)}) but the GPU variant is not written yet")
    return [t]
