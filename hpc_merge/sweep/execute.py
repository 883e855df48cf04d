"""Where the points of a sweep run: one SLURM job array, or local worker processes; and the
live table that follows them until every point has ended."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hpc_merge.cluster import slurm
from hpc_merge.cluster.executor import job_env, make_executor
from hpc_merge.cluster.logtail import tail_text
from hpc_merge.errors import JobFailed
from hpc_merge.run.files import RESULT_FILE
from hpc_merge.run.reader import Reader
from hpc_merge.run.status import read_status, update_status
from hpc_merge.sweep import sweepfile
from hpc_merge.sweep.points import Point, cluster_of
from hpc_merge.sweep.record import release
from hpc_merge.sweep.table import Display
from hpc_merge.sweep.task import SweepTask
from hpc_merge.tracking import GROUP_ENV

#: A local point's worker process gets no time limit of its own (single local runs have none).
LOCAL_TIMEOUT_MIN = 7 * 24 * 60


def _task(p: Point, data: dict[str, Any], env: dict[str, str]) -> SweepTask:
    assert p.cfg is not None and p.run_dir is not None
    return SweepTask(p.kind, OmegaConf.to_container(p.cfg, resolve=True), str(p.run_dir), data["sweep_dir"],
                     p.index, env={**env, GROUP_ENV: data["wandb_group"]})


def submit_points(todo: list[Point], data: dict[str, Any], sweep_dir: Path) -> None:
    """The points to run as one SLURM job array per cluster profile (one, unless the sweep varies
    the profile itself); each point's status gets its array task id and log paths."""
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
            release(todo)
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


def run_local(todo: list[Point], data: dict[str, Any], workers: int, interval: float) -> dict[str, Any]:
    """Run the points here, ``workers`` processes at a time, each as a single run would
    (submitit's local executor: one process per point, so points do not share a CUDA context,
    stdout or a crash)."""
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
    assert p.run_dir is not None
    if (p.run_dir / RESULT_FILE).exists() or read_status(p.run_dir).get("state") in ("ok", "failed"):
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


def watch(sweep_dir: Path, interval: float) -> dict[str, Any]:
    """Refresh the table until every point has ended; returns the final record."""
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
