"""Which output tensors each part of a split merge writes: balanced by the bytes they read."""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import dataclass
from typing import Any

from hpc_merge.errors import ConfigError


@dataclass(frozen=True)
class Part:
    """One part of a split merge: its 0-based index, the output tensors it writes, the bytes they read."""

    index: int
    count: int
    names: tuple[str, ...]
    read_bytes: int

    @property
    def label(self) -> str:
        """``part-00002-of-00003`` (1-based): the part's folder and its name in messages."""
        return f"part-{self.index + 1:05d}-of-{self.count:05d}"


def check_tasks(tasks: int, n_tensors: int, field: str = "job.tasks") -> None:
    """One line for a split that cannot be made: fewer than one part, or more parts than tensors."""
    if tasks < 1:
        raise ConfigError(field, f"must be at least 1, got {tasks}", "use job.tasks=1 (one process) or more")
    if tasks > n_tensors:
        raise ConfigError(field, f"{tasks} tasks for a merge of {n_tensors} output tensors (each task needs one)",
                          f"use job.tasks={n_tensors} or fewer")


def balance(tensors: list[tuple[str, int]], tasks: int) -> list[Part]:
    """Split ``[(name, bytes), ...]`` into ``tasks`` parts of near-equal bytes (largest tensor first
    to the lightest part, ties to the part with fewer tensors, then the lower index).

    Deterministic, so the same merge always gets the same parts (a re-run finds its finished parts).
    Every part gets at least one tensor when ``tasks <= len(tensors)``. Each part's names keep the
    planned order (mergekit writes them in that order).
    """
    check_tasks(tasks, len(tensors))
    order = {name: i for i, (name, _b) in enumerate(tensors)}
    heap = [(0, 0, i) for i in range(tasks)]
    members: list[list[str]] = [[] for _ in range(tasks)]
    loads = [0] * tasks
    for name, nbytes in sorted(tensors, key=lambda t: (-t[1], order[t[0]])):
        load, count, i = heapq.heappop(heap)
        members[i].append(name)
        loads[i] = load + nbytes
        heapq.heappush(heap, (loads[i], count + 1, i))
    return [Part(i, tasks, tuple(sorted(m, key=order.__getitem__)), loads[i]) for i, m in enumerate(members)]


def fingerprint(config: dict[str, Any], options: dict[str, Any], part: Part) -> str:
    """What a part's record must match to be reused: the recipe, the options and the part's tensors."""
    blob = json.dumps({"config": config, "options": options, "part": part.label, "names": part.names},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def describe(parts: list[Part], stage: str) -> str:
    """Dry-run lines: tasks, tensors and GB read per task."""
    from hpc_merge.atomic import size_text

    lines = [f"# split of stage {stage}: {len(parts)} tasks, {sum(len(p.names) for p in parts)} tensors, "
             f"{size_text(sum(p.read_bytes for p in parts))} read"]
    lines += [f"#   task {p.index + 1}: {len(p.names)} tensors, {size_text(p.read_bytes)} read" for p in parts]
    return "\n".join(lines)
