"""Progress of a merge measured from mergekit's own executor (what stands in for its tqdm).

Installed by :func:`~hpc_merge.mergekit_adapter.patches.mergekit_patches` when a caller asks for
progress; kept apart so the patch module holds only the installing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

ProgressFn = Callable[[dict[str, Any]], None]


class ProgressTqdm:
    """Stands in for ``tqdm.tqdm`` inside ``mergekit.graph``: counts executed graph tasks.

    mergekit's executor iterates its schedule through tqdm; counting that iteration is progress
    measured from the execution itself (tasks done, tensors loaded and saved).
    """

    def __init__(self, callback: ProgressFn, every_s: float = 0.25):
        self.callback = callback
        self.every_s = every_s  # status.json is rewritten per call: 4 times a second is live enough

    def tqdm(self, iterable: Any = None, **_kw: Any) -> Iterator[Any]:
        """Yield ``iterable``'s items, reporting counts at most every ``every_s`` seconds and at the end."""
        items = list(iterable or [])
        total = len(items)
        kinds = [type(th.task()).__name__ for _, th in items] if items and isinstance(items[0], tuple) else []
        total_saves = sum(k == "SaveTensor" for k in kinds)
        total_loads = sum(k == "LoadTensor" for k in kinds)

        def gen() -> Iterator[Any]:
            saves = loads = 0
            last = 0.0
            for n, item in enumerate(items):
                yield item
                if kinds:
                    saves += kinds[n] == "SaveTensor"
                    loads += kinds[n] == "LoadTensor"
                now = time.monotonic()
                if now - last >= self.every_s or n + 1 == total:
                    last = now
                    self.callback({"tasks_done": n + 1, "tasks_total": total, "tensors_done": saves,
                                   "tensors_total": total_saves, "loads_done": loads, "loads_total": total_loads})

        return gen()
