"""Cluster profiles: one schema in every file, fields mapped to submitit the same way everywhere."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import submitit
import yaml
from omegaconf import OmegaConf

from hpc_merge.cluster.executor import KNOWN_FIELDS, executor_parameters, make_executor, setup_lines
from hpc_merge.cluster.slurm import gather, submit_array
from hpc_merge.config import compose, config_dir
from hpc_merge.errors import ConfigError

PROFILES = sorted(p.stem for p in (Path(config_dir()) / "cluster").glob("*.yaml"))


def _cluster(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(list(overrides)).cluster, resolve=True)


def test_profiles_exist() -> None:
    assert {"local", "slurm", "slurm_a100"} <= set(PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_has_the_whole_schema(profile: str) -> None:
    """A profile file sets only what differs from the schema (hpc_merge/schema/groups.py: Cluster);
    composed, every profile has every field."""
    path = Path(config_dir()) / "cluster" / f"{profile}.yaml"
    assert path.read_text().startswith("# @package cluster")
    assert set(yaml.safe_load(path.read_text())) <= KNOWN_FIELDS
    assert set(_cluster(f"cluster={profile}")) == KNOWN_FIELDS


@pytest.mark.parametrize("profile", PROFILES)
def test_fields_override_without_plus(profile: str) -> None:
    cluster = _cluster(f"cluster={profile}", "cluster.mem_gb=12", "cluster.partition=big", "cluster.wait=false",
                       "cluster.setup=[module load x]", "cluster.hf_home=/shared/hf")
    assert (cluster["mem_gb"], cluster["partition"], cluster["wait"]) == (12, "big", False)
    assert setup_lines(cluster)[0] == "module load x" and "export HF_HOME=/shared/hf" in setup_lines(cluster)


def test_default_profile_is_local() -> None:
    assert _cluster()["kind"] == "local"


def test_slurm_a100_maps_to_submitit_parameters() -> None:
    params = executor_parameters(_cluster("cluster=slurm_a100", "cluster.account=proj"), "merge-x")
    assert params == {
        "name": "merge-x", "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 8, "cpus_per_task": 64,
        "mem_gb": 900, "timeout_min": 1440, "slurm_partition": "gpu", "slurm_account": "proj",
        "slurm_constraint": "a100", "slurm_signal_delay_s": 300, "slurm_array_parallelism": 8,
        "slurm_setup": ["module load cuda/12.1", "export HF_HUB_OFFLINE=1", "export TOKENIZERS_PARALLELISM=false"],
    }


def test_additional_parameters_pass_through_and_false_is_dropped() -> None:
    cluster = _cluster("cluster=slurm", "cluster.additional_parameters={mail-type: END, exclusive: true, "
                                        "requeue: false}")
    assert executor_parameters(cluster, "n")["slurm_additional_parameters"] == {"mail-type": "END",
                                                                                 "exclusive": True}


def test_env_values_are_quoted() -> None:
    lines = setup_lines({"env": {"A": "x y", "B": "$HOME"}})
    assert lines == ["export A='x y'", "export B='$HOME'"]


def test_make_executor_builds_a_slurm_executor(tmp_path: Path) -> None:
    executor = make_executor(_cluster("cluster=slurm_a100"), tmp_path / "slurm", "n")
    assert executor.cluster == "slurm"
    params = executor._executor.parameters
    assert (params["partition"], params["gpus_per_node"], params["mem"], params["time"]) == ("gpu", 8, "900GB", 1440)


def test_unknown_field_and_kind_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cluster\.gpus_per_nod.*did you mean 'gpus_per_node'"):
        make_executor({"kind": "slurm", "gpus_per_nod": 2}, tmp_path, "n")
    with pytest.raises(ConfigError, match=r"cluster\.kind.*did you mean 'slurm'"):
        make_executor({"kind": "slrum"}, tmp_path, "n")


def test_local_array_gathers_per_item_failures(tmp_path: Path) -> None:
    """The same array API without a cluster (submitit's local executor, real subprocesses)."""
    jobs = submit_array(_cluster("cluster=local", "cluster.timeout_min=2"), tmp_path, "arr", math.sqrt, [4, -1])
    assert all(isinstance(j, submitit.Job) for j in jobs)
    (ok0, val0), (ok1, why1) = gather(jobs)
    assert (ok0, val0) == (True, 2.0)
    assert ok1 is False and "ValueError: math domain error" in why1


def test_gpu_options_of_the_profile_reach_the_merge_on_a_gpu_node_only(tiny_pool) -> None:
    """slurm_a100 says multi_gpu: the merge on its GPU node gets it, a CPU node (or device=cpu)
    does not. No GPU here: the node's CUDA answer is given to ``effective_options``."""
    from hpc_merge.jobs.merge import effective_options, validate

    plan = validate(compose(["merge=linear", "models=tiny", "cluster=slurm_a100"]))
    assert plan["gpu_options"] == {"multi_gpu": True}
    assert effective_options(plan, has_cuda=True)["multi_gpu"] is True
    assert effective_options(plan, has_cuda=False)["multi_gpu"] is False
    pinned = validate(compose(["merge=linear", "models=tiny", "cluster=slurm_a100", "job.options.device=cpu"]))
    assert effective_options(pinned, has_cuda=True)["multi_gpu"] is False
    assert validate(compose(["merge=linear", "models=tiny"]))["gpu_options"] == {}


def test_a_bad_gpu_option_is_a_config_error_naming_the_profile_field(tiny_pool) -> None:
    from hpc_merge.jobs.merge import validate

    with pytest.raises(ConfigError, match=r"^cluster\.gpu_options"):
        validate(compose(["merge=linear", "models=tiny", "cluster=slurm_a100", "+cluster.gpu_options.multi_gpuu=true"]))
    with pytest.raises(ConfigError, match=r"^cluster\.gpu_options"):
        _ = make_executor({"kind": "local", "gpu_options": [1]}, Path("/tmp/x"), "n")
