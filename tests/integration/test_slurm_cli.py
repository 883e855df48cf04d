"""The CLI on the local SLURM cluster, the three ways users reach it: ``cluster=slurm``
(submitit), a rendered sbatch template, and a Hydra multirun with the submitit_slurm launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

TINY = ["models=tiny", "logger=none"]
SMALL_JOB = ["cluster=slurm", "cluster.cpus_per_task=1", "cluster.mem_gb=2", "cluster.timeout_min=10"]


def _run_dir(stdout: str) -> Path:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("run_dir: "), stdout[-3000:]
    return Path(last.removeprefix("run_dir: "))


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_merge_through_submitit(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    proc = run_cli(*TINY, *SMALL_JOB, "name=on-slurm", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = _run_dir(proc.stdout)
    status = json.loads((run_dir / "status.json").read_text())
    job_id = status["slurm_job_id"]
    assert f"[slurm {job_id}] COMPLETED" in proc.stdout  # state changes were streamed
    assert status["slurm_state"] == "COMPLETED" and status["state"] == "ok"
    result = _result(run_dir)
    assert result["status"] == "ok"
    AutoModelForCausalLM.from_pretrained(result["output_model"])
    logs = sorted((run_dir / "slurm" / job_id).glob("*_log.*"))
    assert logs and (run_dir / "config.yaml").is_file()


def test_merge_without_waiting_returns_the_job_id(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    proc = run_cli(*TINY, *SMALL_JOB, "cluster.wait=false", "job.smoke.enabled=false", "name=no-wait",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted SLURM job" in proc.stdout and "squeue -j" in proc.stdout
    run_dir = _run_dir(proc.stdout)
    deadline = time.monotonic() + 120
    while not (run_dir / "result.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert _result(run_dir)["status"] == "ok"  # the job really ran after the CLI returned


def test_merge_through_rendered_sbatch_template(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    rendered = run_cli("sbatch", *TINY, *SMALL_JOB, "job.smoke.enabled=false", "name=from-sbatch", cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    script = tmp_path / "job.sbatch"
    script.write_text(rendered.stdout)
    [args_line] = [line for line in rendered.stdout.splitlines() if line.startswith("ARGS=(")]
    assert "#SBATCH --mem=2G" in rendered.stdout and "cluster" not in args_line  # runs in place
    env = {**os.environ, "HPC_MERGE_PYTHON": sys.executable}
    proc = subprocess.run(["sbatch", "--wait", "--parsable", str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    job_id = proc.stdout.strip().split(";")[0]
    out = tmp_path / f"hpc-merge-merge-{job_id}.out"
    log = out.read_text() if out.exists() else "(no output file)"
    assert proc.returncode == 0, proc.stderr + log[-3000:]
    result = _result(_run_dir(log))
    assert result["status"] == "ok" and result["kind"] == "merge"


def test_two_point_multirun_on_submitit_slurm_launcher(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    proc = run_cli("-m", *TINY, "job.smoke.enabled=false", "name=sweep", "hydra/launcher=submitit_slurm",
                   "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
                   "merge.models.0.parameters.weight=0.2,0.8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = Path(os.environ["HPC_MERGE_LOGS"])
    results = [json.loads(p.read_text()) for p in sorted((logs / "merge" / "sweep").glob("*/result.json"))]
    assert [r["status"] for r in results] == ["ok", "ok"]
    configs = [(p.parent / "config.yaml").read_text() for p in (logs / "merge" / "sweep").glob("*/result.json")]
    assert sum("weight: 0.2" in c for c in configs) == 1 and sum("weight: 0.8" in c for c in configs) == 1
    submitted = list((logs / "multirun").glob("*/*/.submitit/*_0"))
    assert submitted, "the sweep did not go through submitit"
    job_id = submitted[0].name.split("_")[0]
    deadline = time.monotonic() + 30  # the results are written a moment before the tasks end
    while time.monotonic() < deadline:
        sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job_id],
                               capture_output=True, text=True, timeout=30).stdout
        if sacct.count("COMPLETED") == 2:
            break
        time.sleep(1)
    assert sacct.count("COMPLETED") == 2, sacct  # one array, two SLURM tasks


def test_a_job_sbatch_refuses_is_one_line_and_nothing_runs(slurm_cluster, tiny_pool, tmp_path: Path) -> None:
    """The 8×A100 profile against the local cluster (no GPUs, no 'gpu' partition): sbatch refuses;
    the user gets one line with sbatch's reason and the fix, exit 2, no traceback, no result."""
    proc = run_cli(*TINY, "cluster=slurm_a100", "cluster.setup=[]", "name=refused", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("job failed: sbatch refused the job: ")]
    assert line and "fix: check the cluster profile" in line[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("logs/**/result.json"))
