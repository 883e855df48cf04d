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

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from hpc_merge.atomic import write_text
from hpc_merge.errors import ConfigError, JobFailed
from hpc_merge.rundir import reusable_result
from hpc_merge.status import update_status
from hpc_merge.sweep import sweepfile
from hpc_merge.sweep.metrics import default_metric
from hpc_merge.sweep.points import Point, clashing_outputs, cluster_of, compose_points, swept_keys
from hpc_merge.sweep.table import Display
from hpc_merge.sweep.task import SweepTask
from hpc_merge.tracking import GROUP_ENV

#: A local point's worker process gets no time limit of its own (single local runs have none).
LOCAL_TIMEOUT_MIN = 7 * 24 * 60


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
    data, todo = _record(points, keys, options)
    interval = float(options.get("interval_s") or 2.0)
    sweep_dir = Path(data["sweep_dir"])
    print(f"sweep {data['sweep_id']}: {len(points)} points, {_plan_text(data, todo)}")
    for p in data["points"]:
        if p.get("skipped"):
            print(f"  skipped #{p['index']} {p['label']}: {p['skipped']}  {p['run_dir']}")
    if where == {"slurm"}:
        _submit(todo, data, sweep_dir)
        _release(todo)  # only locks not handed to a task: none, unless sbatch refused
        if not options.get("wait"):
            _print_submitted(sweep_dir)
            return _returns(points, config, sweepfile.read_sweep(sweep_dir))
        final = _watch(sweep_dir, interval)
    else:
        try:
            final = _run_local(todo, data, int(options.get("workers") or 1), interval)
        finally:
            _release(todo)
        if not all(p.get("state") in sweepfile.ENDED for p in final["points"]):
            final = _watch(sweep_dir, interval)  # points another process was already running
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


def _record(points: list[Point], keys: list[str], options: dict[str, Any]) -> tuple[dict[str, Any], list[Point]]:
    """Decide which points run, create the sweep folder and write ``sweep.json``."""
    from hpc_merge.monitor.reader import Reader

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
    todo = _lock_runs(todo, data)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sweepfile.write_sweep(sweep_dir, data)
    for p in todo:
        _prepare_run_dir(p, data)
    return data, todo


def _lock_runs(todo: list[Point], data: dict[str, Any]) -> list[Point]:
    """Take each point's run lock, as a single run does (:mod:`hpc_merge.runlock`): a point whose
    run dir another live run holds (it started since the check above) is followed, not run twice."""
    from hpc_merge import runlock

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


def _release(points: list[Point]) -> None:
    """Give up the run locks this process holds (those handed to SLURM jobs stay with the jobs)."""
    for p in points:
        if p.lock is not None:
            p.lock.release()


def _prepare_run_dir(p: Point, data: dict[str, Any]) -> None:
    """The run dir as a single run leaves it before launching: ``config.yaml``, a pending status.

    A failed earlier result is set aside (``result.previous.json``): it would otherwise read as
    this run's end before the run has started.
    """
    assert p.cfg is not None and p.run_dir is not None
    p.run_dir.mkdir(parents=True, exist_ok=True)
    write_text(p.run_dir / "config.yaml", OmegaConf.to_yaml(p.cfg, resolve=True))
    if (p.run_dir / "result.json").exists():
        os.replace(p.run_dir / "result.json", p.run_dir / "result.previous.json")
    update_status(p.run_dir, state="pending", phase="queued", kind=p.kind, error=None,
                  sweep_dir=data["sweep_dir"], sweep_point=p.index)


def _plan_text(data: dict[str, Any], todo: list[Point]) -> str:
    skipped = sum(1 for p in data["points"] if p.get("skipped"))
    where = "submitted to SLURM" if data["cluster"] == "slurm" else "run here"
    return f"{skipped} skipped, {len(todo)} to be {where}"


def _task(p: Point, data: dict[str, Any], env: dict[str, str]) -> SweepTask:
    assert p.cfg is not None and p.run_dir is not None
    return SweepTask(p.kind, OmegaConf.to_container(p.cfg, resolve=True), str(p.run_dir), data["sweep_dir"],
                     p.index, env={**env, GROUP_ENV: data["wandb_group"]})


def _submit(todo: list[Point], data: dict[str, Any], sweep_dir: Path) -> None:
    """The points to run as one SLURM job array per cluster profile (one, unless the sweep varies
    the profile itself); each point's status gets its array task id and log paths."""
    from hpc_merge.launch import slurm
    from hpc_merge.launch.executor import job_env, make_executor

    groups: dict[str, list[Point]] = {}
    for p in todo:
        groups.setdefault(json.dumps(cluster_of(p), sort_keys=True, default=str), []).append(p)
    for key, group in groups.items():
        cluster = json.loads(key)
        executor = make_executor(slurm.single_process(cluster), sweep_dir / "slurm", f"sweep-{data['sweep_id']}")
        try:
            with slurm.refused_as_error(), executor.batch():
                jobs = [executor.submit(_task(p, data, job_env(cluster))) for p in group]
        except JobFailed as exc:
            _release(todo)
            for p in group:
                assert p.run_dir is not None
                update_status(p.run_dir, state="failed", phase="not submitted", error=str(exc))
                sweepfile.update_point(sweep_dir, p.index, state="failed", error=str(exc))
            print(f"job failed: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        for p, job in zip(group, jobs, strict=True):
            assert p.run_dir is not None
            if p.lock is not None:
                p.lock.hand_to_slurm(str(job.job_id))  # the task holds its run dir from now on
            update_status(p.run_dir, slurm_job_id=str(job.job_id), slurm_stdout=str(job.paths.stdout),
                          slurm_stderr=str(job.paths.stderr))
            sweepfile.update_point(sweep_dir, p.index, slurm_job_id=str(job.job_id))
        array_id = str(jobs[0].job_id).partition("_")[0]
        parallel = cluster.get("array_parallelism")
        with sweepfile.file_lock(sweep_dir):
            current = sweepfile.read_sweep(sweep_dir)
            current["arrays"].append({"job_id": array_id, "tasks": len(group), "array_parallelism": parallel})
            sweepfile.write_sweep(sweep_dir, current)
        limit = f", at most {parallel} at once (cluster.array_parallelism)" if parallel else ""
        print(f"submitted SLURM job array {array_id}: {len(group)} tasks{limit}", flush=True)


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


def _run_local(todo: list[Point], data: dict[str, Any], workers: int, interval: float) -> dict[str, Any]:
    """Run the points here, ``workers`` processes at a time, each as a single run would
    (submitit's local executor: one process per point, so points do not share a CUDA context,
    stdout or a crash)."""
    from hpc_merge.launch.executor import make_executor
    from hpc_merge.monitor.reader import Reader

    sweep_dir = Path(data["sweep_dir"])
    executor = make_executor({"kind": "local", "timeout_min": LOCAL_TIMEOUT_MIN}, sweep_dir / "local",
                             f"sweep-{data['sweep_id']}")
    queue, running = list(todo), []
    reader = Reader([p["run_dir"] for p in data["points"]], slurm_every=interval)
    last = -float("inf")
    with Display(f"sweep {data['sweep_id']}") as show:
        while queue or running:
            while queue and len(running) < max(1, workers):
                p = queue.pop(0)
                running.append((p, executor.submit(_task(p, data, {}))))
            time.sleep(0.25)
            for p, job in [r for r in running if r[1].done()]:
                running.remove((p, job))
                _settle_local(p, job, sweep_dir)
            if time.monotonic() - last >= interval or not (queue or running):
                current = sweepfile.refresh(sweep_dir, reader)
                show.update(current)
                last = time.monotonic()
    return current if todo else sweepfile.refresh(sweep_dir, reader)


def _settle_local(p: Point, job: Any, sweep_dir: Path) -> None:
    """A local worker that ended without recording an end (it died before or while running the
    job) fails its point with what it said, so the sweep never waits for it forever."""
    from hpc_merge.launch.logtail import tail_text
    from hpc_merge.status import read_status

    assert p.run_dir is not None
    if (p.run_dir / "result.json").exists() or read_status(p.run_dir).get("state") in ("ok", "failed"):
        return
    try:
        job.result()
        why = "the worker process ended without a result"
    except Exception as exc:  # submitit's FailedJobError / UncompletedJobError carry the log
        why = f"the worker process ended without a result: {str(exc).strip().splitlines()[-1]}"
    tail = tail_text([job.paths.stdout, job.paths.stderr])
    update_status(p.run_dir, state="failed", phase="failed", error=why)
    sweepfile.update_point(sweep_dir, p.index, state="failed", error=why)
    print(f"point {p.index}: {why}\n{tail}", file=sys.stderr)


def _watch(sweep_dir: Path, interval: float) -> dict[str, Any]:
    """Refresh the table until every point has ended; returns the final record."""
    from hpc_merge.monitor.reader import Reader

    data = sweepfile.read_sweep(sweep_dir)
    reader = Reader([p["run_dir"] for p in data["points"]], slurm_every=interval)
    try:
        with Display(f"sweep {data['sweep_id']}") as show:
            while True:
                data = sweepfile.refresh(sweep_dir, reader)
                show.update(data)
                if all(p.get("state") in sweepfile.ENDED for p in data["points"]):
                    return data
                time.sleep(interval)
    except KeyboardInterrupt:
        arrays = " ".join(a["job_id"] for a in data.get("arrays") or [])
        print(f"stopped waiting; the sweep goes on. Watch it: hpc-merge monitor {sweep_dir}"
              + (f"; cancel it: scancel {arrays}" if arrays else ""), file=sys.stderr)
        sys.exit(130)


def _finish(sweep_dir: Path, data: dict[str, Any]) -> None:
    """The report (points best first, CSV, plot); exit 1 naming each point that did not succeed."""
    from hpc_merge.sweep.report import write_report

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

