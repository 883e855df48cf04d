"""``allocator.keep_freed_memory``: large blocks freed by one row chunk are reused by the next, not faulted in again."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import resource, sys, torch
if sys.argv[1] == "on":
    from hpc_merge.mergekit_adapter.allocator import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # set once, idempotent
for _ in range(3):
    torch.ones(16 << 20, dtype=torch.int32)  # warm up: the heap grows to hold the block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20, dtype=torch.int32)  # a 64 MiB temporary, written and freed, as per row chunk
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults() -> None:
    pages = 10 * (64 << 20) // 4096  # what ten fresh 64 MiB blocks fault in
    assert _faults("off") > pages * 9 // 10  # glibc's default: every block mapped afresh
    assert _faults("on") < pages * 3 // 10  # kept: the heap's pages are reused (at most a block or two fault in)
