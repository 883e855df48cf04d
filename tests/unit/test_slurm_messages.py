"""How a SLURM job's end is said: the state, the fix, the log tail; never success from a killed job.

OUT_OF_MEMORY, NODE_FAIL and PREEMPTED cannot be provoked on the local cluster (no cgroup memory
enforcement, one node, no preemption), so the messages are built here from the state value; the
real-SLURM tests (tests/integration/test_slurm_launch.py) cover raise, crash, cancel and timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpc_merge.cluster import slurm
from hpc_merge.cluster.executor import make_executor
from hpc_merge.config import compose
from hpc_merge.errors import JobFailed

LOG = "--- last 2 lines of /x/12_0_log.err ---\nloading shard 3 of 4\nKilled"


@pytest.mark.parametrize(("state", "fix"), [
    ("OUT_OF_MEMORY", "raise cluster.mem_gb"),
    ("NODE_FAIL", "the node failed: submit again; the run resumes"),
    ("PREEMPTED", "preempted and not requeued: submit again"),
    ("TIMEOUT", "raise cluster.timeout_min"),
    ("CANCELLED", "cancelled by scancel"),
])
def test_no_result_message_names_state_fix_and_log_tail(state: str, fix: str) -> None:
    msg = slurm.ended_message("12", state, LOG)
    head, _, tail = msg.partition("\n")
    assert head.startswith(f"SLURM job 12 ended {state} without a result (") and fix in head
    assert tail == LOG


def test_out_of_memory_message_in_full() -> None:
    assert slurm.ended_message("12", "OUT_OF_MEMORY", LOG).splitlines()[0] == (
        "SLURM job 12 ended OUT_OF_MEMORY without a result (out of memory: the job used more than it asked "
        "for; raise cluster.mem_gb (or give each job less work))")


def test_gather_reason_of_a_task_says_state_and_fix() -> None:
    reason = slurm.no_result_reason("job 12_3 task 1", "OUT_OF_MEMORY", "Job 12_3 (task: 1) has not produced any output")
    assert reason.startswith("job 12_3 task 1 ended OUT_OF_MEMORY without a result (out of memory:")
    assert "raise cluster.mem_gb" in reason and "\n" not in reason
    assert "(" not in slurm.no_result_reason("job 7", "SOMETHING_NEW", "x").split(":")[0]  # unknown state: no hint


def _finished_local_job(tmp_path: Path):
    cluster = OmegaConf.to_container(compose(["cluster=local", "cluster.timeout_min=2"]).cluster, resolve=True)
    job = make_executor(cluster, tmp_path, "ok").submit(print, "working on it")
    job.result()  # a real job that wrote a (successful) result
    return job


@pytest.mark.parametrize("state", ["OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "CANCELLED", "TIMEOUT"])
def test_a_result_from_a_killed_job_is_never_reported_as_success(tmp_path: Path, state: str) -> None:
    job = _finished_local_job(tmp_path)
    with pytest.raises(JobFailed) as info:
        slurm._outcome(job, state)
    msg = str(info.value)
    assert msg.startswith(f"SLURM job {job.job_id} ended {state} (") and "the result is not used" in msg
    assert "working on it" in msg  # the log tail


def test_a_completed_job_returns_its_result(tmp_path: Path) -> None:
    job = _finished_local_job(tmp_path)
    assert slurm._outcome(job, "COMPLETED") is None  # print returns None: the job's own result
