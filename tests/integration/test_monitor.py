"""The monitor watching real merges in the background: progress that moves, then the final state.

The merges run through the CLI in subprocesses (locally, then on the local SLURM cluster) on a
deep, narrow tiny model: many mergekit tasks for few bytes, so a merge lasts seconds and the
snapshots catch it midway. The monitor is sampled in-process every 50 ms (the same code as
``--json``) and through its own CLI for the final word.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpc_merge.monitor.reader import Reader

pytestmark = pytest.mark.integration

LAYERS, HIDDEN = 96, 128


@pytest.fixture(scope="module")
def slow_models() -> dict[str, Path]:
    """Base + two fine-tunes, deep and narrow (cached across sessions with the test models)."""
    from hpc_merge.models.tiny import build_tiny

    root = Path(os.environ["HPC_MERGE_CACHE"]) / f"monitor-slow-v1-L{LAYERS}-H{HIDDEN}"
    models = {name: root / name for name in ("base", "a", "b")}
    if not (models["base"] / "config.json").exists():
        build_tiny(models["base"], seed=0, layers=LAYERS, hidden=HIDDEN, intermediate=2 * HIDDEN)
    for seed, name in enumerate(("a", "b"), start=1):
        if not (models[name] / "config.json").exists():
            build_tiny(models[name], seed=seed, base=models["base"])
    return models


def start_merge(models: dict[str, Path], logs: Path, name: str, *extra: str) -> subprocess.Popen:
    """The merge CLI in the background (linear merge of the slow models, no smoke test)."""
    args = ["models=tiny", f"models.base={models['base']}", f"models.coder={models['a']}",
            f"models.math={models['b']}", "merge=linear", "logger=none", "job.smoke.enabled=false",
            f"name={name}", "force=true", *extra]
    return subprocess.Popen([sys.executable, "-m", "hpc_merge", *args], cwd=logs.parent, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "HPC_MERGE_LOGS": str(logs)})


def monitor_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m hpc_merge monitor ARGS``, the way users and scripts call it."""
    return subprocess.run([sys.executable, "-m", "hpc_merge", "monitor", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def sample(logs: Path, until: Any, timeout: float = 300, every: float = 0.05) -> list[dict[str, Any]]:
    """Monitor snapshots of the single run under ``logs`` until ``until(snapshots)`` holds."""
    reader = Reader([logs], slurm_every=1.0)
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = reader.snapshot()
        assert len(runs) <= 1, [r.run_dir for r in runs]
        if runs:
            seen.append(runs[0].to_json())
            if until(seen):
                return seen
        time.sleep(every)
    raise AssertionError(f"timed out; last snapshots: {[(s['state'], s['phase'], s['progress']) for s in seen[-5:]]}")


def assert_progress_moves(seen: list[dict[str, Any]]) -> None:
    """At least two different partial progress values while merging, never going backwards."""
    merging = [s["progress"] for s in seen if s["state"] == "running" and str(s["phase"]).startswith("merge:")
               and s["progress"] is not None]
    partial = sorted({p for p in merging if 0 < p < 1})
    assert len(partial) >= 2, f"no moving progress seen: {merging}"
    assert merging == sorted(merging), "progress went backwards"
    assert any(s["throughput_mb_s"] for s in seen if s["state"] == "running")


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    return out


def test_local_merge_watched_to_the_end(slow_models, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    proc = start_merge(slow_models, logs, "watched")
    try:
        seen = sample(logs, lambda s: s[-1]["state"] == "running" and (s[-1]["progress"] or 0) > 0)
        # the live view, started mid-run, refreshes until the run has ended, then exits 0
        live = subprocess.Popen([sys.executable, "-m", "hpc_merge", "monitor", "--interval", "0.2", str(logs)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen += sample(logs, lambda s: s[-1]["state"] != "running")
        live_out, live_err = live.communicate(timeout=60)
    finally:
        out = _finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert_progress_moves(seen)
    assert seen[-1]["state"] == "ok" and seen[-1]["progress"] == 1.0
    assert live.returncode == 0, live_out[-2000:] + live_err[-2000:]
    assert "ok" in live_out and "merge/watched/" in live_out
    final = json.loads(monitor_cli("--json", str(logs)).stdout)["runs"]
    assert [(r["state"], r["phase"], r["name"]) for r in final] == [("ok", "done", "watched")]
    once = monitor_cli("--once", str(logs))
    assert once.returncode == 0 and once.stdout.splitlines()[1].split()[:4] == \
        ["ok", f"merge/watched/{Path(final[0]['run_dir']).name}", "done", "100%"]


def test_local_merge_killed_midway_is_dead(slow_models, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    proc = start_merge(slow_models, logs, "killed")
    try:
        seen = sample(logs, lambda s: s[-1]["state"] == "running" and (s[-1]["progress"] or 0) > 0)
    finally:
        proc.send_signal(signal.SIGKILL)
        _finish(proc)
    [run] = json.loads(monitor_cli("--json", str(logs)).stdout)["runs"]
    assert run["state"] == "dead" and run["pid"] == proc.pid, run
    assert run["status"]["state"] == "running"  # the job never had a chance to say otherwise
    assert seen[-1]["pid"] == proc.pid


@pytest.mark.slurm
def test_slurm_merge_watched_to_the_end(slurm_cluster, slow_models, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    proc = start_merge(slow_models, logs, "on-slurm", "cluster=slurm")
    try:
        seen = sample(logs, lambda s: s[-1]["state"] in ("ok", "failed", "dead", "cancelled"))
    finally:
        out = _finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert seen[-1]["state"] == "ok", seen[-1]
    assert all(s["slurm_job_id"] for s in seen if s["state"] == "running")
    assert {s["state"] for s in seen} <= {"pending", "running", "ok"}
    assert_progress_moves(seen)
    [run] = json.loads(monitor_cli("--json", str(logs)).stdout)["runs"]
    assert run["state"] == "ok" and run["slurm_state"] == "COMPLETED" and run["slurm_job_id"]


def job_pythons(job_id: str) -> list[int]:
    """Pids of the Python processes of SLURM job ``job_id`` on this (the only) node.

    Found through the job's environment rather than the status file, whose ``pid`` is whichever
    process wrote last (the waiting CLI records SLURM states there too).
    """
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            exe = os.path.basename(os.readlink(proc / "exe"))
        except (OSError, ValueError):
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in env and exe.startswith("python"):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slurm
def test_slurm_job_killed_on_the_node_is_dead(slurm_cluster, slow_models, tmp_path: Path) -> None:
    """The job's process dies without a word (SIGKILL): SLURM says FAILED, the status says running."""
    logs = tmp_path / "logs"
    proc = start_merge(slow_models, logs, "slurm-kill", "cluster=slurm")
    try:
        seen = sample(logs, lambda s: s[-1]["state"] == "running" and (s[-1]["progress"] or 0) > 0)
        pids = job_pythons(str(seen[-1]["slurm_job_id"]))
        assert pids, f"no python process of job {seen[-1]['slurm_job_id']} on this node"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        seen += sample(logs, lambda s: s[-1]["state"] != "running", timeout=120, every=0.5)
    finally:
        _finish(proc)
    assert proc.returncode != 0
    last = seen[-1]
    assert (last["state"], last["slurm_state"], last["status"]["state"]) == ("dead", "FAILED", "running"), last
    assert "FAILED" in last["reason"]


@pytest.mark.slurm
def test_slurm_pending_job_then_cancelled(slurm_cluster, slow_models, tmp_path: Path) -> None:
    """A job held back by a begin time is pending; ``scancel`` makes it cancelled.

    (A running merge is not cancelled here: submitit lets the job finish its SIGTERM grace
    period, in which a short merge completes and rightly reads ok.)
    """
    logs = tmp_path / "logs"
    proc = start_merge(slow_models, logs, "slurm-cancel", "cluster=slurm",
                       "cluster.additional_parameters={begin: now+300}")
    try:
        seen = sample(logs, lambda s: s[-1]["slurm_job_id"] is not None and s[-1]["slurm_state"] == "PENDING")
        assert seen[-1]["state"] == "pending", seen[-1]
        subprocess.run(["scancel", str(seen[-1]["slurm_job_id"])], check=True, timeout=30)
        seen += sample(logs, lambda s: s[-1]["state"] != "pending", timeout=120, every=0.5)
    finally:
        _finish(proc)
    assert proc.returncode != 0
    assert (seen[-1]["state"], seen[-1]["slurm_state"]) == ("cancelled", "CANCELLED"), seen[-1]
    [run] = json.loads(monitor_cli("--json", str(logs)).stdout)["runs"]
    assert run["state"] == "cancelled"


@pytest.mark.slurm
def test_slurm_states_from_squeue_and_sacct(slurm_cluster, tmp_path: Path) -> None:
    """Live states (held array elements, a failed job) and one slurmctld has forgotten (sacct)."""
    from hpc_merge.procs.slurmq import query_states

    def sbatch(*args: str) -> str:
        return subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", f"--chdir={tmp_path}", *args],
                              capture_output=True, text=True, check=True, timeout=30).stdout.strip()

    held = sbatch("-H", "--array=0-1", "--wrap", "sleep 30")
    failed = sbatch("--wrap", "exit 3")
    try:
        deadline = time.monotonic() + 60
        while (states := query_states([f"{held}_1", failed, "999999"]))[failed] != "FAILED":
            assert time.monotonic() < deadline, states
            time.sleep(0.5)
        assert states == {f"{held}_1": "PENDING", failed: "FAILED"}  # unknown ids are left out
    finally:
        subprocess.run(["scancel", held], check=False, timeout=30)
