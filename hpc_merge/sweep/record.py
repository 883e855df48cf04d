"""Which points of a sweep run: skip what is done, running or repeated; lock and prepare the rest.

The sweep folder and ``sweep.json`` are written here, and each point to run gets its run dir as a
single run leaves it before launching (``config.yaml``, a pending status, the run lock held).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hpc_merge.run import lock as runlock
from hpc_merge.run.files import set_aside_result, write_config
from hpc_merge.run.identity import reusable_result
from hpc_merge.run.reader import Reader
from hpc_merge.run.status import update_status
from hpc_merge.sweep import sweepfile
from hpc_merge.sweep.metrics import default_metric
from hpc_merge.sweep.points import Point, cluster_of


def record_points(points: list[Point], keys: list[str], options: dict[str, Any]) -> tuple[dict[str, Any], list[Point]]:
    """Decide which points run, create the sweep folder and write ``sweep.json``."""
    infos = {i.run_dir: i for i in Reader([p.run_dir for p in points if p.run_dir]).snapshot()}
    first = points[0].cfg
    assert first is not None
    names = {str(p.cfg.get("name") or "default") for p in points if p.cfg is not None}
    sweep_dir = (Path(str(options["sweep_dir"])).expanduser().resolve() if options.get("sweep_dir")
                 else sweepfile.new_sweep_dir(str(first.logs_dir), names.pop() if len(names) == 1 else "sweep"))
    kinds = {p.kind for p in points}
    evaluated = any(p.cfg is not None and p.cfg.get("eval") is not None and p.cfg.eval.get("enabled") for p in points)
    data: dict[str, Any] = {
        "sweep_id": sweep_dir.name, "sweep_dir": str(sweep_dir), "created_at": time.time(),
        "command": " ".join(["hpc-merge", *sys.argv[1:]]), "kinds": sorted(kinds),
        "cluster": str(cluster_of(points[0]).get("kind", "local")), "params": keys,
        "metric": options.get("metric") or default_metric(kinds, evaluated), "mode": options.get("mode"),
        "wandb_group": f"sweep-{sweep_dir.name}", "arrays": [], "points": [],
    }
    todo: list[Point] = []
    seen: dict[Path, int] = {}
    for p in points:
        assert p.cfg is not None and p.run_dir is not None
        skipped = None
        info = infos.get(str(p.run_dir))
        if p.run_dir in seen:
            skipped = f"the same run as point {seen[p.run_dir]} (its config differs only in fields that do not change the result)"
        elif not p.cfg.get("force") and reusable_result(p.run_dir):
            skipped = f"this exact config already succeeded (run {p.run_dir.name}); force=true runs it again"
        elif info is not None and info.state in ("pending", "running") and (info.slurm_state or info.state == "running"):
            job = f" (SLURM job {info.slurm_job_id})" if info.slurm_job_id else ""
            skipped = f"already {info.state}{job}: not submitted twice; its state is followed here"
        seen.setdefault(p.run_dir, p.index)
        data["points"].append({
            "index": p.index, "overrides": p.overrides, "params": {k: p.params.get(k) for k in keys},
            "label": p.label(keys), "kind": p.kind, "run_dir": str(p.run_dir), "run_id": p.run_dir.name,
            "state": sweepfile.SKIPPED if skipped and not skipped.startswith("already ") else "pending",
            "skipped": skipped, "phase": None, "metrics": {}, "slurm_job_id": None, "error": None,
        })
        if skipped is None:
            todo.append(p)
    todo = lock_runs(todo, data)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweepfile.write_sweep(sweep_dir, data)
    for p in todo:
        prepare_run_dir(p, data)
    return data, todo


def lock_runs(todo: list[Point], data: dict[str, Any]) -> list[Point]:
    """Take each point's run lock, as a single run does (:mod:`hpc_merge.run.lock`): a point whose
    run dir another live run holds (it started since the check above) is followed, not run twice."""
    kept = []
    for p in todo:
        assert p.run_dir is not None
        try:
            p.lock = runlock.acquire(p.run_dir)
        except runlock.RunLocked as exc:
            entry = next(e for e in data["points"] if e["index"] == p.index)
            entry["skipped"] = f"already running: {exc.problem}; its state is followed here"
            continue
        kept.append(p)
    return kept


def release(points: list[Point]) -> None:
    """Give up the run locks this process holds (those handed to SLURM jobs stay with the jobs)."""
    for p in points:
        if p.lock is not None:
            p.lock.release()


def prepare_run_dir(p: Point, data: dict[str, Any]) -> None:
    """The run dir as a single run leaves it before launching: ``config.yaml``, a pending status.

    A failed earlier result is set aside (``result.previous.json``): it would otherwise read as
    this run's end before the run has started.
    """
    assert p.cfg is not None and p.run_dir is not None
    p.run_dir.mkdir(parents=True, exist_ok=True)
    write_config(p.run_dir, p.cfg)
    set_aside_result(p.run_dir)
    update_status(p.run_dir, state="pending", phase="queued", kind=p.kind, error=None,
                  sweep_dir=data["sweep_dir"], sweep_point=p.index)
