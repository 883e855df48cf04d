"""The sweep folder ``<logs_dir>/sweeps/<sweep_id>/`` and its ``sweep.json``, kept current.

``sweep.json`` lists every point (its overrides, swept values, run dir, state, phase, metrics)
so that a sweep can be read back without Hydra: by the monitor, by ``hpc-merge sweep-report``
and by people. Array tasks update their own point when they end, and every reader refreshes the
states from the run dirs (the truth), so the file is current whether or not anyone waits.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hpc_merge.atomic import file_lock, write_json
from hpc_merge.run.files import read_result
from hpc_merge.sweep.metrics import flat_metrics

SWEEP_FILE = "sweep.json"
#: Point states beyond the monitor's (pending, running, ok, failed, cancelled, dead).
SKIPPED = "skipped"
ENDED = frozenset({"ok", "failed", "cancelled", "dead", SKIPPED})


def new_sweep_dir(logs_dir: str | Path, name: str) -> Path:
    """A fresh ``<logs_dir>/sweeps/<date>_<time>-<name>`` (a suffix if two sweeps start in one second)."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "sweep"
    base = Path(logs_dir) / "sweeps" / f"{stamp}-{slug}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path.resolve()


def is_sweep_dir(path: str | Path) -> bool:
    """A sweep folder holds a ``sweep.json``."""
    return (Path(path) / SWEEP_FILE).is_file()


def read_sweep(sweep_dir: str | Path) -> dict[str, Any]:
    """The sweep's record (raises ``FileNotFoundError`` / ``ValueError`` on a missing or bad file)."""
    data = json.loads((Path(sweep_dir) / SWEEP_FILE).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ValueError(f"{Path(sweep_dir) / SWEEP_FILE} is not a sweep record")
    return data


def write_sweep(sweep_dir: str | Path, data: dict[str, Any]) -> None:
    """Write the whole record (atomic: readers never see half a file)."""
    data["updated_at"] = time.time()
    write_json(Path(sweep_dir) / SWEEP_FILE, data)


def update_point(sweep_dir: str | Path, index: int, **fields: Any) -> None:
    """Merge ``fields`` into point ``index`` (under the sweep's lock: array tasks end together)."""
    with file_lock(sweep_dir):
        data = read_sweep(sweep_dir)
        for point in data["points"]:
            if point["index"] == index:
                point.update(fields)
        write_sweep(sweep_dir, data)


def point_from_run(point: dict[str, Any], info: Any | None) -> dict[str, Any]:
    """``point`` with state, phase, SLURM job and metrics read again from its run dir.

    ``info`` is the monitor's :class:`~hpc_merge.run.reader.RunInfo` of the run dir (``None``
    when it has no files yet). A skipped point keeps its state; its metrics are the earlier run's.
    """
    point = dict(point)
    result = read_result(Path(point["run_dir"]))
    point["metrics"] = flat_metrics(result if result and result.get("status") == "ok" else None)
    if point.get("state") == SKIPPED:
        return point
    if info is not None:
        point.update(state=info.state, phase=info.phase, slurm_job_id=info.slurm_job_id or point.get("slurm_job_id"),
                     error=(info.reason or info.error) if info.state in ("failed", "dead", "cancelled") else None)
    return point


def refresh(sweep_dir: str | Path, reader: Any, write: bool = True) -> dict[str, Any]:
    """The sweep with every point's state and metrics read again from the run dirs (and SLURM).

    ``reader`` is a :class:`~hpc_merge.run.reader.Reader` over the points' run dirs (kept by a
    caller that refreshes often, so SLURM is asked at most every few seconds). ``write=False``
    only reads (a sweep folder someone cannot write to).
    """
    sweep_dir = Path(sweep_dir)
    infos = {info.run_dir: info for info in reader.snapshot()}
    with file_lock(sweep_dir) if write else contextlib.nullcontext():
        data = read_sweep(sweep_dir)  # with what tasks wrote meanwhile
        data["points"] = [point_from_run(p, infos.get(str(Path(p["run_dir"]).resolve())))
                          for p in data["points"]]
        if write:
            write_sweep(sweep_dir, data)
    return data


def run_dirs(data: dict[str, Any]) -> list[str]:
    """The run dirs of a sweep's points."""
    return [str(p["run_dir"]) for p in data.get("points") or [] if isinstance(p, dict) and p.get("run_dir")]


def sweeps_under(roots: Iterable[str | Path]) -> list[Path]:
    """Sweep folders named by ``roots`` or found in ``<root>/sweeps/`` (newest last)."""
    found: dict[Path, None] = {}
    for root in map(Path, roots):
        if is_sweep_dir(root):
            found[root.resolve()] = None
        for sub in sorted((root / "sweeps").glob(f"*/{SWEEP_FILE}")) if (root / "sweeps").is_dir() else []:
            found[sub.parent.resolve()] = None
    return list(found)
