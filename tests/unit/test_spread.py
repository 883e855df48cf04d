"""Work items spread over the tasks of one job: rank -> items and GPUs, task layouts from profiles.

GPU pinning cannot run on this machine (no GPU): :func:`task_gpus` / :func:`pin_gpus` are tested
here as units on the values SLURM hands a task; the real task split runs on submitit's local
executor below (real processes) and on the local SLURM cluster (tests/integration/test_slurm_spread.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpc_merge.cluster import spread
from hpc_merge.cluster.executor import single_process
from hpc_merge.cluster.spread import TaskPlan, pin_gpus, plan_tasks, share, task_gpus
from hpc_merge.config import compose
from hpc_merge.errors import ConfigError
from hpc_merge.evolve.launchers import slurm_tasks


def _cluster(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(list(overrides)).cluster, resolve=True)


@pytest.mark.parametrize("n_items", range(0, 13))
@pytest.mark.parametrize("tasks", [1, 2, 3, 8])
def test_shares_are_contiguous_balanced_and_cover_every_item_once(n_items: int, tasks: int) -> None:
    shares = [share(n_items, tasks, r) for r in range(tasks)]
    assert [i for s in shares for i in s] == list(range(n_items))  # rank order = item order
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_share_examples_and_bad_rank() -> None:
    assert [list(share(5, 2, r)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [list(share(2, 4, r)) for r in range(4)] == [[0], [1], [], []]
    with pytest.raises(ValueError):
        share(4, 2, 2)


@pytest.mark.parametrize(("rank", "per_task", "visible", "expected"), [
    (3, 1, "0,1,2,3,4,5,6,7", "3"),  # every task sees the node's GPUs: take the rank's one
    (1, 2, "0,1,2,3,4,5,6,7", "2,3"),  # two GPUs per task
    (2, 1, "4,5,6,7", "6"),  # the job got GPUs 4-7 of the node: indices are into that list
    (3, 1, "5", "5"),  # SLURM already bound this task's own GPU (gpus-per-task / gpu-bind): kept
    (1, 2, "GPU-a,GPU-b", "GPU-a,GPU-b"),  # UUIDs, bound per task
    (2, 1, None, "2"),  # unset: the node's GPUs numbered from 0
    (5, 0, "0,1", None),  # CPU task: nothing to pin
])
def test_task_gpus_by_local_rank(rank: int, per_task: int, visible: str | None, expected: str | None) -> None:
    assert task_gpus(rank, per_task, visible) == expected


def test_task_gpus_refuses_a_rank_without_gpus() -> None:
    with pytest.raises(RuntimeError, match="needs GPUs 4..5 but CUDA_VISIBLE_DEVICES='0,1,2,3' has 4"):
        task_gpus(2, 2, "0,1,2,3")


def test_pin_gpus_sets_the_env_and_leaves_cpu_tasks_alone() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert pin_gpus(2, 1, env) == "2" and env == {"CUDA_VISIBLE_DEVICES": "2"}
    env = {"OTHER": "x"}
    assert pin_gpus(0, 0, env) is None and env == {"OTHER": "x"}


def test_pin_gpus_refuses_after_cuda_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA reads the variable once: pinning after init would put every task on one GPU."""
    torch = pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    with pytest.raises(RuntimeError, match="before the task picked its GPU"):
        pin_gpus(1, 1, env)
    assert env == {"CUDA_VISIBLE_DEVICES": "0,1"}


def test_slurm_a100_with_8_candidates_per_job_is_8_tasks_of_one_gpu() -> None:
    cfg = compose(["+experiment=evolve_stem", "cluster=slurm_a100", "evolve.launcher=slurm",
                   "evolve.candidates_per_job=8"])
    cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
    plan, per_job = slurm_tasks(cluster, cfg.evolve.candidates_per_job, cfg.evolve.gpus_per_candidate)
    assert (plan, per_job) == (TaskPlan(tasks=8, gpus_per_task=1, cpus_per_task=8), 8)
    job = plan.job_cluster(cluster)
    assert (job["tasks_per_node"], job["gpus_per_node"], job["cpus_per_task"], job["mem_gb"]) == (8, 8, 8, 900)
    assert plan.describe() == "8 tasks × 1 GPU, 8 CPUs each"
    # null: one candidate per task
    assert slurm_tasks(cluster, None, 1)[1] == 8 and slurm_tasks(cluster, None, 2) == (TaskPlan(4, 2, 16), 4)


def test_cpu_profile_tasks_come_from_tasks_per_node() -> None:
    assert plan_tasks(_cluster("cluster=slurm")) == TaskPlan(1, 0, 2)  # the sequential path
    assert plan_tasks(_cluster("cluster=slurm", "cluster.tasks_per_node=2", "cluster.cpus_per_task=1")) == \
        TaskPlan(2, 0, 1)
    assert plan_tasks({"kind": "slurm", "tasks_per_node": 4}) == TaskPlan(4, 0, None)


@pytest.mark.parametrize(("overrides", "per_job", "gpus", "message"), [
    (["cluster=slurm_a100"], 2, 1,
     r"^evolve\.candidates_per_job: 2 per job would leave 6 of its 8 tasks \(one per GPU\) idle — fix: set "
     r"evolve\.candidates_per_job=8"),
    (["cluster=slurm_a100"], None, 3,
     r"^evolve\.gpus_per_candidate: 3 GPUs per task do not divide cluster\.gpus_per_node=8 — fix: use one of 1, 2, 4, 8$"),
    (["cluster=slurm_a100"], None, 0, r"^evolve\.gpus_per_candidate: 0 is not a number of GPUs >= 1"),
    (["cluster=slurm_a100", "cluster.cpus_per_task=4"], None, 1,
     r"^cluster\.cpus_per_task: 4 CPUs per job cannot give each of its 8 tasks one — fix: set cluster\.cpus_per_task=8"),
    (["cluster=slurm", "cluster.nodes=2"], None, 1, r"^cluster\.nodes: 2 nodes per job.*fix: set cluster\.nodes=1"),
    (["cluster=slurm", "cluster.tasks_per_node=2", "cluster.cpus_per_task=1"], 1, 1,
     r"^evolve\.candidates_per_job: 1 per job would leave 1 of its 2 tasks \(CPU tasks\) idle"),
    (["cluster=slurm"], 0, 1, r"^evolve\.candidates_per_job: 0 is not a number >= 1"),
])
def test_bad_combinations_are_one_line_config_errors(overrides: list[str], per_job: int | None, gpus: int,
                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        slurm_tasks(_cluster(*overrides), per_job, gpus)
    assert "\n" not in str(info.value)


def test_a_single_process_job_gets_one_task_and_all_the_cpus() -> None:
    """The driver (JobRunner) must not run once per task of a profile meant for candidate jobs."""
    cluster = _cluster("cluster=slurm", "cluster.tasks_per_node=2", "cluster.cpus_per_task=3")
    assert (single_process(cluster)["tasks_per_node"], single_process(cluster)["cpus_per_task"]) == (1, 6)
    plain = _cluster("cluster=slurm_a100")
    assert single_process(plain) is plain


def test_local_executor_spreads_a_batch_over_two_real_tasks(tmp_path: Path) -> None:
    """submitit's local executor starts 2 processes with the task env SLURM would give; each
    takes its share, and gather puts the results back in order (one batch per job, two jobs)."""
    cluster = _cluster("cluster=local", "cluster.timeout_min=2")
    plan = TaskPlan(tasks=2, gpus_per_task=0, cpus_per_task=None)
    batches = [[1, 2, 3], [4]]
    jobs = spread.submit(cluster, plan, tmp_path, "spread", list, batches)
    assert [j.num_tasks for j in jobs] == [2, 2]
    assert spread.gather(jobs, batches) == [[(True, 1), (True, 2), (True, 3)], [(True, 4)]]
    logs = sorted(p.read_text() for p in tmp_path.glob(f"{jobs[0].job_id}/*_log.out"))
    assert any("task 0/2 (local rank 0): items [0, 1] of 3" in t for t in logs)
    assert any("task 1/2 (local rank 1): items [2] of 3" in t for t in logs)


def test_memory_for_every_task_s_copy_of_the_models_is_checked(tmp_path: Path) -> None:
    from hpc_merge.evolve.launchers import check_memory

    paths = {}
    for name in ("base", "math", "coder"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"\0" * 1_000_000)  # 1 MB of weights each
        paths[name] = str(tmp_path / name)
    eight = TaskPlan(tasks=8, gpus_per_task=1, cpus_per_task=8)  # 8 × (3 sources + 1 donor) MB = 0.032 GB
    check_memory(eight, {"mem_gb": 0.033}, paths, "base", in_memory=True)
    check_memory(eight, {"mem_gb": 0.01}, paths, "base", in_memory=False)  # nothing kept in memory
    check_memory(eight, {"mem_gb": None}, paths, "base", in_memory=True)  # the scheduler's default: unknown
    with pytest.raises(ConfigError, match=r"^cluster\.mem_gb: 0\.03 GB per job, but its 8 task\(s\) each keep the "
                                          r"source models in memory \(≈ 0\.032 GB in all\) — fix: set evolve\.in_memory=false"):
        check_memory(eight, {"mem_gb": 0.03}, paths, "base", in_memory=True)
