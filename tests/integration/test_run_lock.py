"""One run per run dir at a time: a second identical run is refused naming the holder; a dead holder is not.

The holders are real: a live process that took the run dir's lock, and a real SLURM job (submitted
held, so it is certainly still pending when the second run starts: no race with the job's end).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_merge.procs.owner import hostname
from hpc_merge.run.lock import LOCK_FILE, acquire
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

ARGS = ["logger=none", "models=tiny", "name=locked", "run_id=r1", "job.smoke.enabled=false"]
HOLDER = """
import sys, time
from hpc_merge.run.lock import acquire
acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run_id: "), lines
    return lines[0]


def test_second_run_refused_while_a_live_process_holds_the_run_dir(tiny_pool, _logs_dir: Path) -> None:
    run_dir = _logs_dir / "merge" / "locked" / "r1"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # the event: it holds the lock
        line = _one_error_line(run_cli(*ARGS))
        assert f"run dir {run_dir} is in use by pid {holder.pid} on host {hostname()}" in line
        assert f"kill {holder.pid}" in line
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock", LOCK_FILE]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the next run takes the run dir over, and releases it at the end
    proc = run_cli(*ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"
    assert not (run_dir / LOCK_FILE).exists()


@pytest.mark.slurm
def test_a_pending_slurm_job_holds_the_run_dir_until_it_ends(slurm_cluster, tiny_pool, _logs_dir: Path) -> None:
    submit = run_cli(*ARGS, "cluster=slurm", "cluster.wait=false", "cluster.mem_gb=1", "cluster.cpus_per_task=1",
                     "+cluster.additional_parameters={hold: true}")
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    run_dir = _logs_dir / "merge" / "locked" / "r1"
    lock = json.loads((run_dir / LOCK_FILE).read_text())
    job_id = lock["slurm_job_id"]
    assert lock["held_by"] == "slurm" and f"submitted SLURM job {job_id}" in submit.stdout
    try:
        # the submitting process has exited; the same config, even run here, is refused naming the job
        line = _one_error_line(run_cli(*ARGS))
        assert f"is in use by SLURM job {job_id}" in line and f"scancel {job_id}" in line
    finally:
        subprocess.run(["scancel", job_id], check=True, timeout=30)
    from hpc_merge.procs.owner import slurm_job_active

    deadline = time.monotonic() + 60
    while slurm_job_active(job_id) and time.monotonic() < deadline:  # the event: SLURM says it ended
        time.sleep(0.5)
    acquire(run_dir).release()  # the ended job no longer holds it
