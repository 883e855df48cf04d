"""Work spread over the tasks of one job on the real local SLURM cluster (CPU tasks: no GPU here).

Two tasks in one job, one CPU each: every task takes its share, the results come back in item
order, a failing task fails only its own items, and real zoo-test candidates score exactly what
the sequential path (one evaluator, candidates in a row) scores.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hpc_merge.cluster import spread
from hpc_merge.evolve.launchers import slurm_evaluator, slurm_tasks
from tests.integration import slurm_jobs

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

SMALL = ["+experiment=evolve_demo", "models=zoo_test", "evolve.fitness.size=test", "evolve.baseline=null",
         "logger=none"]


@pytest.fixture
def two_task_profile(slurm_profile: dict) -> dict:
    """The test profile with 2 tasks of 1 CPU per job (the node must have 2 CPUs for them)."""
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True, check=True).stdout
    cpus = int(re.search(r"CPUTot=(\d+)", node).group(1))
    assert cpus >= 2, f"the local node has {cpus} CPU(s); 2 tasks of 1 CPU need 2"
    return {**slurm_profile, "tasks_per_node": 2, "cpus_per_task": 1}


def _task_logs(job) -> dict[int, str]:
    return {rank: Path(job.task(rank).paths.stdout).read_text() for rank in range(job.num_tasks)}


def test_two_tasks_share_a_batch_and_results_come_back_in_order(two_task_profile: dict, tmp_path: Path) -> None:
    plan, per_job = slurm_tasks(two_task_profile, None, 1)
    assert (plan.tasks, plan.gpus_per_task, plan.cpus_per_task, per_job) == (2, 0, 1, 2)
    batches = [[1, 2, 3, 4, 5], [6, 7, -8, 9]]  # job 2: task 1 gets [-8, 9] and raises
    jobs = spread.submit(two_task_profile, plan, tmp_path, "spread", slurm_jobs.squares, batches)
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1 and [j.num_tasks for j in jobs] == [2, 2]
    results = spread.gather(jobs, batches)
    assert results[0] == [(True, x * x) for x in batches[0]]
    assert results[1][:2] == [(True, 36), (True, 49)]  # task 0 of the second job is unaffected
    for ok, reason in results[1][2:]:
        assert not ok and reason.startswith(f"job {jobs[1].job_id} task 1 raised:") and "negative item -8" in reason
    logs = _task_logs(jobs[0])
    assert "items [0, 1, 2] of 5" in logs[0] and "squaring [1, 2, 3]" in logs[0]
    assert "items [3, 4] of 5" in logs[1] and "squaring [4, 5]" in logs[1]
    job_ids = {re.search(r"in job (\d+) task", t).group(1) for t in logs.values()}
    assert len(job_ids) == 1  # both tasks ran inside one SLURM job
    assert all("with 1 CPU(s)" in t for t in logs.values())


def test_a_task_that_dies_fails_only_its_items_with_the_slurm_state(two_task_profile: dict, tmp_path: Path) -> None:
    plan, _ = slurm_tasks(two_task_profile, None, 1)
    batch = [3, 4, -1, 5]
    jobs = spread.submit(two_task_profile, plan, tmp_path, "dies", slurm_jobs.squares_or_die, [batch])
    (items,) = spread.gather(jobs, [batch])
    assert items[:2] == [(True, 9), (True, 16)]
    for ok, reason in items[2:]:
        assert not ok
        assert reason.startswith(f"job {jobs[0].job_id} task 1 ended FAILED without a result "
                                 "(the process died before writing a result: see the log)"), reason


def test_zoo_candidates_over_two_tasks_score_as_the_sequential_path(two_task_profile: dict, tmp_path: Path) -> None:
    from hpc_merge.config import compose
    from hpc_merge.evolve.cache import candidate_key, merge_seed
    from hpc_merge.evolve.worker import candidate_job, evaluate_batch
    from hpc_merge.jobs.evolve import validate, worker_spec

    plan = validate(compose(SMALL))
    spec = worker_spec(plan, tmp_path)
    rng = np.random.default_rng(7)
    recipes = [plan["space"].decode(list(rng.uniform(0, 1, plan["space"].dim))) for _ in range(4)]
    jobs = [candidate_job(candidate_key(r), r, merge_seed(candidate_key(r), 0)) for r in recipes]
    tasks, per_job = slurm_tasks(two_task_profile, 4, 1)
    seen: list[int] = []
    with slurm_evaluator(two_task_profile, tmp_path / "slurm", "cand", spec, per_job=per_job, tasks=tasks) as evaluate:
        spread_out = evaluate(jobs, lambda i, out: seen.append(i))
    sequential = evaluate_batch(spec, jobs)  # the sequential path: one evaluator, candidates in a row
    assert seen == [0, 1, 2, 3]
    assert [o["status"] for o in spread_out] == ["ok"] * 4, [o.get("reason") for o in spread_out]
    assert [o["fitness"] for o in spread_out] == [o["fitness"] for o in sequential]
    assert [o["scores"] for o in spread_out] == [o["scores"] for o in sequential]
    assert len({o["fitness"] for o in sequential}) > 1  # distinct candidates, so the order is checked
    (batch_dir,) = (tmp_path / "slurm").iterdir()
    logs = [p.read_text() for p in sorted(batch_dir.glob("*/*_log.out"))]  # <job>_<task>_log.out
    assert len(logs) == 2 and "items [0, 1] of 4" in logs[0] and "items [2, 3] of 4" in logs[1]
