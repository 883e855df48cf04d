"""hpc_merge.cluster.slurm against the real local SLURM cluster: results and every kind of end."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hpc_merge.cluster.slurm import gather, make_executor, submit_array, wait
from hpc_merge.errors import JobFailed
from tests.integration import slurm_jobs

pytestmark = [pytest.mark.integration, pytest.mark.slurm]


def _status(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "status.json").read_text())


def test_function_returns_with_env_and_logs_streamed(slurm_profile: dict, tmp_path: Path) -> None:
    profile = {**slurm_profile, "env": {"HF_HUB_OFFLINE": "1", "GREETING": "hi there"}}
    job = make_executor(profile, tmp_path / "slurm", "answer").submit(slurm_jobs.answer, 1)
    seen: list[str] = []
    result = wait(job, tmp_path, stream=seen.append)
    assert result == {"value": 43, "hf_offline": "1", "greeting": "hi there"}
    assert f"[slurm {job.job_id}] COMPLETED" in seen
    assert any(f"hello from job {job.job_id}" in line for line in seen)
    assert _status(tmp_path)["slurm_state"] == "COMPLETED"
    assert Path(str(job.paths.stdout)).parent.parent == tmp_path / "slurm"


def test_job_that_raises_shows_remote_traceback(slurm_profile: dict, tmp_path: Path) -> None:
    job = make_executor(slurm_profile, tmp_path / "slurm", "boom").submit(slurm_jobs.boom)
    with pytest.raises(JobFailed) as info:
        wait(job, tmp_path, stream=lambda _: None)
    msg = str(info.value)
    assert f"SLURM job {job.job_id} ended FAILED" in msg
    assert "Traceback (most recent call last)" in msg and "ValueError: kaboom on the node" in msg
    assert "slurm_jobs.py" in msg
    assert _status(tmp_path)["slurm_state"] == "FAILED"


def test_job_that_dies_without_result_reports_state_and_log(slurm_profile: dict, tmp_path: Path) -> None:
    job = make_executor(slurm_profile, tmp_path / "slurm", "crash").submit(slurm_jobs.crash)
    with pytest.raises(JobFailed) as info:
        wait(job, tmp_path, stream=lambda _: None)
    msg = str(info.value)
    assert f"SLURM job {job.job_id} ended FAILED without a result" in msg and "about to crash" in msg


def test_cancelled_job_reports_cancelled(slurm_profile: dict, tmp_path: Path) -> None:
    job = make_executor(slurm_profile, tmp_path / "slurm", "sleeper").submit(slurm_jobs.sleep_long)
    seen: list[str] = []

    def cancel_once_it_printed() -> None:
        # wait for the event the test checks (the job's line in its log file), not for RUNNING,
        # which SLURM reports before the job's Python has started, let alone printed
        stdout = Path(str(job.paths.stdout))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (stdout.is_file() and "sleeping" in stdout.read_text()):
            time.sleep(0.2)
        subprocess.run(["scancel", str(job.job_id)], check=True, timeout=30)

    canceller = threading.Thread(target=cancel_once_it_printed, daemon=True)
    canceller.start()
    with pytest.raises(JobFailed) as info:
        wait(job, tmp_path, stream=seen.append, max_poll_s=2)
    canceller.join(timeout=5)
    msg = str(info.value)
    assert f"SLURM job {job.job_id} ended CANCELLED without a result" in msg
    assert "last" in msg and "sleeping" in msg  # the log tail
    assert _status(tmp_path)["slurm_state"] == "CANCELLED"


def test_array_gathers_results_and_per_item_failures(slurm_profile: dict, tmp_path: Path) -> None:
    jobs = submit_array(slurm_profile, tmp_path / "gen0", "gen0", slurm_jobs.square, [1, 2, -3, 4])
    assert len(jobs) == 4 and len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array
    results = gather(jobs)
    assert [r for ok, r in results if ok] == [1, 4, 16]
    ok, reason = results[2]
    assert not ok and "raised" in reason and "ValueError: negative item -3" in reason


def test_checkpointable_is_requeued_after_time_limit_and_finishes(slurm_profile: dict, tmp_path: Path) -> None:
    """USR2 before the limit -> submitit requeues the callable -> the second run returns.

    timeout_min=2 with signal_delay_s=75 is the tuned setting of the local-SLURM notes (the
    cluster uses cred_expire=10 and sched_interval=5 so the requeued job starts again quickly).
    """
    profile = {**slurm_profile, "timeout_min": 2, "signal_delay_s": 75}
    marker = tmp_path / "marker"
    job = make_executor(profile, tmp_path / "slurm", "resumable").submit(slurm_jobs.Resumable(str(marker)))
    seen: list[str] = []
    t0 = time.monotonic()
    result = wait(job, tmp_path, stream=seen.append, max_poll_s=3)
    assert result == {"restarts": 1, "resumed_after": "first run started"}
    states = [s.split("] ", 1)[1] for s in seen if "] " in s and " | " not in s]
    # ran, was requeued (PENDING again), ran to the end (the second run may fall between polls)
    assert "PENDING" in states[states.index("RUNNING"):] and states[-1] == "COMPLETED", states
    assert any("first run: working past the time limit" in s for s in seen)
    assert time.monotonic() - t0 < 180
