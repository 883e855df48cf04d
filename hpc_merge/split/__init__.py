"""One merge split over N tasks by output tensor (``job.tasks=N``): plan, run the parts, assemble.

Every mergekit method merges tensor by tensor, and the random ones draw each tensor's masks from
(seed, tensor name, element index) only, so the parts together are bit-identical to one merge.
The parts of a stage live in ``<run_dir>/parts/<stage>/`` until the assembled model is in place:
a re-run of the same config reuses every part whose record is still valid and redoes the rest.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpc_merge.errors import JobFailed
from hpc_merge.split.assemble import assemble
from hpc_merge.split.part import valid_record
from hpc_merge.split.plan import Part, balance, check_tasks, describe, fingerprint

__all__ = ["Part", "balance", "check_tasks", "describe", "fingerprint", "plan_parts", "merge_split"]


def plan_parts(config: dict[str, Any], options: dict[str, Any], tasks: int) -> list[Part]:
    """The parts of this merge: mergekit's planned output tensors balanced over ``tasks`` by bytes read."""
    from hpc_merge.mergekit_adapter.tensorplan import planned_tensors

    return balance(planned_tensors(config, options), tasks)


def merge_split(config: dict[str, Any], options: dict[str, Any], tasks: int, parts_root: Path, out: Path,
                progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Merge ``config`` in ``tasks`` local processes and assemble the model into ``out`` (a fresh folder).

    Parts with a valid record are reused. A failed part is one :class:`JobFailed` naming it; the
    finished parts are kept for the re-run. Returns ``{"parts": N, "reused": [...], "ran": [...]}``.
    ``progress(fields)`` gets the whole merge's status fields (:func:`hpc_merge.split.progress.fold`)
    every second and whenever a part ends.
    """
    from hpc_merge.split.local import run_local, spec_for
    from hpc_merge.split.progress import fold

    parts = plan_parts(config, options, tasks)
    parts_root.mkdir(parents=True, exist_ok=True)
    fps = {p: fingerprint(config, options, p) for p in parts}
    reused = [p for p in parts if valid_record(parts_root, p, fps[p]) is not None]
    missing = [p for p in parts if p not in reused]
    started = time.time()

    def tick() -> None:
        if progress is not None:
            progress(fold(parts, parts_root, {p.label for p in reused}, started))

    tick()
    failed = run_local({p: spec_for(config, options, p, parts_root, fps[p]) for p in missing}, parts_root,
                       on_done=lambda _part, _ok: tick(), tick=tick)
    if failed:
        first = next(iter(failed))
        raise JobFailed(f"{len(failed)} of {len(parts)} parts failed, e.g. {first}: {failed[first]}; "
                        "re-run the same command: the finished parts are kept and only the failed ones run again")
    for p in missing:  # written by another process: checked as a re-run would
        if valid_record(parts_root, p, fps[p], checksums=False) is None:
            raise JobFailed(f"{p.label} ended without a valid record in {parts_root}; re-run the same command")
    timing = _part_timing(missing, parts_root, started)  # read before assembly: the records stay, not for long
    assemble(parts, parts_root, out)
    return {"parts": len(parts), "reused": [p.label for p in reused], "ran": [p.label for p in missing], **timing}


def _part_timing(ran: list[Part], parts_root: Path, started: float) -> dict[str, float]:
    """Where a split's time went: ``worker_start_s``, from starting the processes until the last
    part ran its first mergekit task (a fresh Python importing torch and mergekit and planning, per
    part), and ``parts_merge_s``, the longest part's merge from there (result.json ``metrics.split``)."""
    from hpc_merge.split.progress import read_part_progress

    rows = [r for p in ran if (r := read_part_progress(parts_root, p.label)) is not None]
    begun = [(r.get("first_task_at") or r["started_at"], r["updated_at"]) for r in rows]
    if not begun:
        return {}
    return {"worker_start_s": round(max(b for b, _ in begun) - started, 3),
            "parts_merge_s": round(max(end - b for b, end in begun), 3)}


def remove_parts(parts_root: Path) -> None:
    """Drop a stage's parts once its model is in place (the model holds its own links/copies)."""
    shutil.rmtree(parts_root, ignore_errors=True)
