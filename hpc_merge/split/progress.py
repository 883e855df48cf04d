"""Progress of a split merge: each part writes its own small file, the waiting side folds them into one run.

A part cannot write the run's ``status.json`` itself (N writers on N nodes, and on SLURM the parts
run before the merge job exists), so each writes ``<parts>/<label>.progress.json`` as it goes:
``merging`` from the moment mergekit has executed its first task (the event that proves the part
is merging: a test waits for it before killing the part), then ``done``. The launcher that waits
for the parts (N local processes, or the SLURM job array) reads them every poll and writes one
set of status fields: the merge as one run (tensors done of all, bytes read of all, ETA) plus one
row per part, in the fields the monitor already shows.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hpc_merge.atomic import write_json
from hpc_merge.split.plan import Part


def progress_path(parts_root: Path, label: str) -> Path:
    """Where part ``label`` reports its progress (beside its folder, so a re-run's folder swap keeps it)."""
    return Path(parts_root) / f"{label}.progress.json"


def write_part_progress(parts_root: Path, part: Part, state: str, started_at: float,
                        tensors_done: int = 0, tensors_total: int | None = None, read_frac: float = 0.0,
                        first_task_at: float | None = None) -> None:
    """One part's progress now (atomic; ``state``: ``merging``, ``done`` or ``failed``); ``first_task_at``:
    when mergekit ran the part's first task (its imports and planning were done by then)."""
    from hpc_merge.procs.owner import hostname, slurm_job_id

    write_json(progress_path(parts_root, part.label), {
        "part": part.label, "state": state, "tensors_done": tensors_done,
        "tensors_total": len(part.names) if tensors_total is None else tensors_total,
        "bytes_read": round(part.read_bytes * max(0.0, min(1.0, read_frac))), "read_bytes": part.read_bytes,
        "started_at": started_at, "first_task_at": first_task_at, "updated_at": time.time(), "host": hostname(), "pid": os.getpid(),
        "slurm_job_id": slurm_job_id(),
    })


def read_part_progress(parts_root: Path, label: str) -> dict[str, Any] | None:
    """The part's last progress report, or None (not started yet, or unreadable)."""
    try:
        row = json.loads(progress_path(parts_root, label).read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) else None


def fold(parts: list[Part], parts_root: Path, reused: set[str], started_at: float,
         now: float | None = None) -> dict[str, Any]:
    """``status.json`` fields for the whole split merge: one run, with a row per part.

    ``tasks_done/tasks_total`` count output tensors over all parts (the monitor's PROGRESS),
    ``bytes_read`` what the parts have read, ``eta_s`` from the bytes the parts running in this
    try still have to read at the rate they have read so far; ``parts`` is the per-part table.
    """
    now = time.time() if now is None else now
    rows = []
    for part in parts:
        got = read_part_progress(parts_root, part.label) or {}
        if part.label in reused:
            state, done, nbytes = "recorded", len(part.names), part.read_bytes
        else:
            fresh = float(got.get("started_at") or 0) >= started_at - 1  # not a report left by an earlier try
            state = str(got.get("state", "waiting")) if fresh else "waiting"
            done = int(got.get("tensors_done") or 0) if fresh else 0
            nbytes = int(got.get("bytes_read") or 0) if fresh else 0
            if state == "done":
                done, nbytes = len(part.names), part.read_bytes
            done = min(done, len(part.names))
        rows.append({"part": part.label, "state": state, "tensors_done": done, "tensors_total": len(part.names),
                     "bytes_read": nbytes, "read_bytes": part.read_bytes, "host": got.get("host"),
                     "slurm_job_id": got.get("slurm_job_id")})
    todo = [r for r in rows if r["state"] != "recorded"]
    read_now = sum(r["bytes_read"] for r in todo)
    left = sum(r["read_bytes"] - r["bytes_read"] for r in todo)
    elapsed = max(now - started_at, 1e-6)
    rate = read_now / elapsed
    fields: dict[str, Any] = {
        "parts": rows, "parts_total": len(parts), "parts_done": sum(r["state"] in ("done", "recorded") for r in rows),
        "tasks_done": sum(r["tensors_done"] for r in rows), "tasks_total": sum(r["tensors_total"] for r in rows),
        "bytes_read": sum(r["bytes_read"] for r in rows), "read_bytes_total": sum(p.read_bytes for p in parts),
        "throughput_mb_s": rate / 1e6,
    }
    fields["eta_s"] = left / rate if rate > 0 else None
    return fields

