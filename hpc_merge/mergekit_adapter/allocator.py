"""Keep freed large blocks in the heap during merges (glibc): far fewer page faults, the same bits.

Why: a chunked merge allocates and frees the same large temporaries for every row chunk (16 MB of
rows per input, their task vectors, masks, counts). glibc serves blocks above its mmap threshold
(dynamic, at most 32 MiB by default) with fresh pages from ``mmap`` and unmaps them on ``free``, so
every chunk faults its temporaries in again, zero-filled by the kernel. Measured on three 0.5B
bf16ft models (2026-12-03, single runs): ramplus_tl spent 21-25 of its 51-57 CPU s in the kernel,
TIES 2-3 of its 13-18. With blocks up to 256 MiB taken from the heap and up to 1 GiB of free heap
kept, ramplus_tl took 17.7 s (kernel 5.2 s) against 29-34 s, peak 1.32 vs 1.15-1.19 GB; TIES
10.3 / 14.4 s against 13.2 / 13.9 s (interleaved, noisy). 7B TIES out of core, cold page cache,
one run each: 111 s (94 user + 54 kernel CPU s, peak 1.05 GB) against 116 s (92 + 69, 0.75 GB).

Only for the row-chunked methods (``execute.run_mergekit`` asks): whole tensors above 256 MiB are
still mapped and unmapped, but whole-tensor merges keep more heap — sce peaked at 3.78 vs 3.51
GB, and 1 GiB thresholds took karcher from 3.1 to 4.7 GB. :func:`keep_freed_memory` sets the
thresholds once per process (``mallopt``); where the C library has no ``mallopt`` (not glibc)
nothing changes.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_LIMIT = 256 << 20  # blocks up to 256 MiB come from the heap: every per-chunk temporary, not whole tensors
TRIM_LIMIT = 1 << 30  # up to 1 GiB of free heap top is kept for the next chunk instead of returned
_set = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once per process); True if they are set."""
    global _set
    if _set:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols, or not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _set = mallopt(_M_MMAP_THRESHOLD, MMAP_LIMIT) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_LIMIT) == 1
    return _set
