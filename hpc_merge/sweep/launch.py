"""The sweep launcher's work: validate every point, skip what is done, run or submit the rest.

Order matters and is the point of this module (the Hydra submitit launcher does none of it):

1. every point is composed and validated (:func:`hpc_merge.app.prepare`, the single-run path)
   before anything is written or submitted; any bad point -> one line each, exit 2, no folder;
2. points whose exact config already succeeded (same run dir, ``result.json`` ok, output there),
   points already queued or running, and points repeating another point are not run again;
3. ``cluster=slurm*``: the rest go to SLURM as one job array and the command returns at once
   (``hydra.launcher.wait=true``: a live table until the array ends, exit 1 if a point failed);
   ``cluster=local``: the points run here, ``hydra.launcher.workers`` at a time, with that table.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from hpc_merge.errors import ConfigError, JobFailed
from hpc_merge.sweep import sweepfile
from hpc_merge.sweep.execute import run_local, submit_points, watch
from hpc_merge.sweep.points import Point, clashing_outputs, cluster_of, compose_points, swept_keys
from hpc_merge.sweep.record import record_points, release
from hpc_merge.sweep.report import write_report


def launch(config: DictConfig, loader: Any, job_overrides: list[list[str]], first_index: int,
           options: dict[str, Any]) -> list[JobReturn]:
    """Run one batch of sweep points; exits 2 on an invalid point, 1 when a point it waited for failed."""
    points = compose_points(config, loader, job_overrides, first_index)
    keys = swept_keys(points)
    bad = [(p, str(p.error)) for p in points if p.error is not None] or clashing_outputs(points)
    if bad:
        _refuse(config, [f"point {p.index} ({p.label(keys)}): {problem}" for p, problem in bad])
    where = {str(cluster_of(p).get("kind", "local")) for p in points}
    if len(where) > 1:
        _refuse(config, ["cluster: some points run locally and some on SLURM — fix: sweep one cluster at a time"])
    chosen = options.get("sweep_dir")
    if chosen and Path(str(chosen)).expanduser().exists() and any(Path(str(chosen)).expanduser().iterdir()):
        _refuse(config, [f"hydra.launcher.sweep_dir: {chosen} exists and is not empty — fix: give a new folder "
                         "(or leave it unset: logs/sweeps/<date>_<time>-<name>)"])
    if any(p.cfg is not None and p.cfg.job.get("dry_run") for p in points):
        _dry_run(points, keys)
        return _returns(points, config, {})
    data, todo = record_points(points, keys, options)
    interval = float(options.get("interval_s") or 2.0)
    sweep_dir = Path(data["sweep_dir"])
    print(f"sweep {data['sweep_id']}: {len(points)} points, {_plan_text(data, todo)}")
    for p in data["points"]:
        if p.get("skipped"):
            print(f"  skipped #{p['index']} {p['label']}: {p['skipped']}  {p['run_dir']}")
    if where == {"slurm"}:
        submit_points(todo, data, sweep_dir)
        release(todo)  # only locks not handed to a task: none, unless sbatch refused
        if not options.get("wait"):
            _print_submitted(sweep_dir)
            return _returns(points, config, sweepfile.read_sweep(sweep_dir))
        final = watch(sweep_dir, interval)
    else:
        try:
            final = run_local(todo, data, int(options.get("workers") or 1), interval)
        finally:
            release(todo)
        if not all(p.get("state") in sweepfile.ENDED for p in final["points"]):
            final = watch(sweep_dir, interval)  # points another process was already running
    _finish(sweep_dir, final)
    return _returns(points, config, final)


def _refuse(config: DictConfig, problems: list[str]) -> NoReturn:
    """``error: ...`` per problem, no folder left behind, exit 2 (nothing was written or submitted)."""
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    _drop_hydra_sweep_dir(config)
    sys.exit(ConfigError.exit_code)


def _drop_hydra_sweep_dir(config: DictConfig) -> None:
    """Remove the folder Hydra's sweeper made before calling us (``hydra.sweep.dir`` holding only
    the ``multirun.yaml`` it wrote), so a refused sweep leaves no folder behind. Nothing else is
    removed: a folder with any other file, or with another config in it, is left as it is."""
    try:
        folder = Path(str(config.hydra.sweep.dir))
        names = [p.name for p in folder.iterdir()]
        if names != ["multirun.yaml"] or (folder / "multirun.yaml").read_text() != OmegaConf.to_yaml(config):
            return
        (folder / "multirun.yaml").unlink()
        stop = Path(str(config.get("logs_dir") or folder.parent)).resolve()
        while folder.resolve() != stop and folder.resolve() != folder.resolve().parent:
            folder.rmdir()  # only empty folders: OSError ends the walk up
            folder = folder.parent
    except (OSError, ValueError, KeyError):
        return


def _dry_run(points: list[Point], keys: list[str]) -> None:
    """``job.dry_run=true``: each point's plan (as a single dry run prints it); nothing runs."""
    from hpc_merge.jobs import job_module

    for p in points:
        assert p.cfg is not None
        print(f"# === point {p.index}: {p.label(keys)} -> {p.run_dir}")
        print(job_module(p.kind).describe(p.cfg, p.plan))


def _plan_text(data: dict[str, Any], todo: list[Point]) -> str:
    skipped = sum(1 for p in data["points"] if p.get("skipped"))
    where = "submitted to SLURM" if data["cluster"] == "slurm" else "run here"
    return f"{skipped} skipped, {len(todo)} to be {where}"


def _print_submitted(sweep_dir: Path) -> None:
    """Where each submitted point runs and how to follow the sweep (the command returns now)."""
    data = sweepfile.read_sweep(sweep_dir)
    for p in data["points"]:
        if not p.get("skipped"):
            print(f"  #{p['index']} {p['label']}: SLURM {p.get('slurm_job_id') or '?'}  {p['run_dir']}")
    print(f"sweep folder: {sweep_dir}")
    print(f"watch it:  hpc-merge monitor {sweep_dir}")
    print(f"report:    hpc-merge sweep-report {sweep_dir}")
    print("(hydra.launcher.wait=true waits for the array with a live table)")


def _finish(sweep_dir: Path, data: dict[str, Any]) -> None:
    """The report (points best first, CSV, plot); exit 1 naming each point that did not succeed."""
    print(write_report(sweep_dir, data))
    bad = [p for p in data["points"] if p.get("state") not in ("ok", sweepfile.SKIPPED)]
    for p in bad:
        print(f"point {p['index']} ({p['label']}): {p['state']}: {p.get('error') or 'see its run dir'}  "
              f"{p['run_dir']}", file=sys.stderr)
    if bad:
        print(f"{len(bad)} of {len(data['points'])} points did not succeed", file=sys.stderr)
        sys.exit(JobFailed.exit_code)


def _returns(points: list[Point], config: DictConfig, data: dict[str, Any]) -> list[JobReturn]:
    """One completed :class:`JobReturn` per point (Hydra's sweeper reads them); the value is the
    point's line of ``sweep.json``."""
    by_index = {p["index"]: p for p in data.get("points", [])}
    return [JobReturn(overrides=p.overrides, cfg=p.cfg, hydra_cfg=config, working_dir=str(p.run_dir),
                      task_name="hpc_merge", status=JobStatus.COMPLETED, _return_value=by_index.get(p.index))
            for p in points]
