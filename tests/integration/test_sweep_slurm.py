"""A sweep on the real local SLURM cluster through our launcher (the default of ``-m``).

First 12 points of which two already ran (a local sweep first) and one is invalid: the launcher
refuses the whole sweep in one line naming that point, and SLURM sees nothing. Then a 6-point
sweep with those two done points: the command returns while the array is queued: one array of the
4 points left, 2 reported skipped; once the array's results are there, the report lists all 6
with metrics and a plot.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

# DELLA's density ± epsilon must stay inside (0, 1): only the point (0.85, 0.2) is invalid.
BASE = ["models=tiny", "logger=none", "merge=della", "name=grid", "job.smoke.prompts=[hi]",
        "job.smoke.max_new_tokens=1"]
SLURM = ["cluster=slurm", "cluster.cpus_per_task=1", "cluster.mem_gb=2", "cluster.timeout_min=10",
         "cluster.array_parallelism=4"]
EPSILON = "merge.models.0.parameters.epsilon=0.05,0.1,0.2"


def _sacct_ids(workdir: Path) -> set[str]:
    """Every job SLURM accounting knows that was submitted from ``workdir`` (other users of the
    cluster, such as parallel test sessions, submit from elsewhere)."""
    out = subprocess.run(["sacct", "-a", "-n", "-X", "-P", "-o", "JobID,WorkDir", "-S", "2000-01-01"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    rows = [line.split("|", 1) for line in out.splitlines() if "|" in line]
    return {job.strip() for job, where in rows if Path(where.strip()) == workdir}


def _array_tasks(array_id: str) -> list[str]:
    """The state of each task of the array (a pending part may still be one packed line)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", array_id], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [line.split("|")[1] for line in out.splitlines() if line.strip()]


def test_sweep_validates_all_points_skips_done_ones_and_submits_one_array(slurm_cluster, tiny_pool,
                                                                          tmp_path: Path) -> None:
    logs = Path(os.environ["HPC_MERGE_LOGS"])
    done = run_cli("-m", *BASE, "merge.models.0.parameters.density=0.3",
                   "merge.models.0.parameters.epsilon=0.05,0.1", cwd=tmp_path)  # cluster=local: 2 points
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folders_before = set(logs.glob("*/*/*"))  # run dirs, sweep folders, Hydra's multirun folders
    jobs_before = _sacct_ids(tmp_path)

    bad = run_cli("-m", *BASE, *SLURM, "merge.models.0.parameters.density=0.3,0.5,0.7,0.85", EPSILON, cwd=tmp_path)
    assert bad.returncode == 2, bad.stdout[-3000:] + bad.stderr[-3000:]
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, bad.stderr[-3000:]
    assert "density=0.85" in errors[0] and "epsilon=0.2" in errors[0] and "fix:" in errors[0]
    assert "Traceback" not in bad.stderr
    assert _sacct_ids(tmp_path) == jobs_before  # nothing was submitted
    assert set(logs.glob("*/*/*")) == folders_before  # no folder either

    t0 = time.monotonic()
    good = run_cli("-m", *BASE, *SLURM, "merge.models.0.parameters.density=0.3,0.5", EPSILON, cwd=tmp_path)
    returned_s = time.monotonic() - t0
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    print(f"sweep of 6 points returned in {returned_s:.1f} s (2 CPU cores shared with other work: noisy)")
    out = good.stdout
    assert "6 points, 2 skipped, 4 to be submitted to SLURM" in out, out
    assert out.count("  skipped #") == 2 and out.count("this exact config already succeeded") == 2
    [array_line] = [ln for ln in out.splitlines() if ln.startswith("submitted SLURM job array ")]
    array_id = array_line.split()[4].rstrip(":")
    assert "4 tasks" in array_line and "at most 4 at once" in array_line
    sweep_dir = Path(next(ln for ln in out.splitlines() if ln.startswith("sweep folder: ")).split(": ", 1)[1])
    assert f"hpc-merge monitor {sweep_dir}" in out
    data = json.loads((sweep_dir / "sweep.json").read_text())
    assert len(data["points"]) == 6 and data["arrays"][0]["job_id"] == array_id
    submitted = [p for p in data["points"] if not p["skipped"]]
    assert len(submitted) == 4 and all(p["slurm_job_id"].startswith(f"{array_id}_") for p in submitted)
    assert not list(logs.glob("merge/grid/*/result.previous.json"))

    deadline = time.monotonic() + 600  # the event: every submitted point's result.json
    while time.monotonic() < deadline and not all((Path(p["run_dir"]) / "result.json").exists() for p in submitted):
        time.sleep(2)
    results = [json.loads((Path(p["run_dir"]) / "result.json").read_text()) for p in submitted]
    assert [r["status"] for r in results] == ["ok"] * 4
    deadline = time.monotonic() + 60  # accounting is fed asynchronously: wait until it has all four
    while time.monotonic() < deadline and _array_tasks(array_id).count("COMPLETED") < 4:
        time.sleep(1)
    tasks = _array_tasks(array_id)
    assert tasks.count("COMPLETED") == 4, tasks  # one array of four tasks ...
    new = _sacct_ids(tmp_path) - jobs_before
    assert new and all(j.startswith(f"{array_id}_") for j in new), new  # ... and nothing else

    report = run_cli("sweep-report", str(sweep_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    assert len(rows) == 6 and all(r["perplexity"] for r in rows)
    values = [float(r["perplexity"]) for r in rows]
    assert values == sorted(values)  # best (lowest perplexity) first
    assert {r["state"] for r in rows} <= {"ok", "skipped"} and sum(r["state"] == "skipped" for r in rows) == 2
    png = sweep_dir / "report.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "plot: " + str(png) in report.stdout and report.stdout.count("\n") >= 8

    monitor = run_cli("monitor", "--once", "--lines", "0", str(logs), cwd=tmp_path)
    assert f"── sweep {sweep_dir.name}: 6 runs" in monitor.stdout, monitor.stdout


def test_waiting_shows_each_point_and_exits_1_naming_the_point_that_did_not_finish(slurm_cluster, tiny_pool,
                                                                                   tmp_path: Path) -> None:
    """``hydra.launcher.wait=true``: the command follows the array; a task cancelled while it waits
    (one task at a time: the second is still pending when cancelled) makes it exit 1 naming it."""
    args = ["-m", "models=tiny", "logger=none", "name=waited", "job.smoke.prompts=[hi]", "job.smoke.max_new_tokens=1",
            *SLURM, "cluster.array_parallelism=1", "hydra.launcher.wait=true", "hydra.launcher.interval_s=1",
            "merge.models.0.parameters.weight=0.3,0.7"]
    proc = subprocess.Popen([sys.executable, "-m", "hpc_merge", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stdout:  # the event: the array is submitted
            seen.append(line)
            if line.startswith("submitted SLURM job array "):
                array_id = line.split()[4].rstrip(":")
                subprocess.run(["scancel", f"{array_id}_1"], check=True, timeout=60)
                break
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    out = "".join(seen) + out
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert "[sweep] #0 merge.models.0.parameters.weight=0.3: ok perplexity=" in out
    assert "[sweep] #1 merge.models.0.parameters.weight=0.7: cancelled" in out
    assert "2 points (1 ok, 1 cancelled), best first by perplexity" in out  # the report, after the table
    assert "point 1 (merge.models.0.parameters.weight=0.7): cancelled: SLURM: " in err
    assert err.strip().splitlines()[-1] == "1 of 2 points did not succeed"
