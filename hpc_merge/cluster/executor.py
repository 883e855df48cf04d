"""The one submitit executor factory: a ``cluster`` profile (conf/cluster/*.yaml) -> an executor.

Every SLURM submission (single jobs, evolution arrays) goes through :func:`make_executor`, so a
profile field means the same thing everywhere and a new submitit parameter is wired in one place.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import submitit

from hpc_merge.schema.groups import Cluster

#: cluster fields that become submitit's generic parameters (same name)
GENERIC_FIELDS = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min")
#: cluster fields that become ``slurm_<name>`` parameters
SLURM_FIELDS = ("partition", "account", "qos", "constraint", "signal_delay_s", "array_parallelism")
#: every field of a profile: the typed schema's (hpc_merge/schema/groups.py)
KNOWN_FIELDS = frozenset(f.name for f in dataclasses.fields(Cluster))


def check_cluster(cluster: dict[str, Any]) -> None:
    """Refuse a profile that does not fit the schema (an unknown field, a wrong type, a number out of
    range, an unknown kind): a typo would otherwise be silently ignored or reach sbatch."""
    from hpc_merge.schema import bounds
    from hpc_merge.schema.check import typed

    bounds.cluster(typed(Cluster, dict(cluster), "cluster"))


def job_env(cluster: dict[str, Any]) -> dict[str, str]:
    """The environment variables a job gets: ``cluster.env`` plus ``HF_HOME`` from ``cluster.hf_home``."""
    env = {str(k): str(v) for k, v in (cluster.get("env") or {}).items() if v is not None}
    if cluster.get("hf_home"):
        env["HF_HOME"] = str(Path(str(cluster["hf_home"])).expanduser())
    return env


def setup_lines(cluster: dict[str, Any]) -> list[str]:
    """Shell lines run before the job starts: the profile's ``setup``, then ``export`` of the env.

    The env is exported in the batch script (not set from Python) because libraries such as
    huggingface_hub read ``HF_HUB_OFFLINE`` once, at import time.
    """
    lines = [str(line) for line in cluster.get("setup") or []]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in job_env(cluster).items()]
    return lines


def executor_parameters(cluster: dict[str, Any], name: str) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords for a profile (``None`` fields: the scheduler decides)."""
    params: dict[str, Any] = {"name": name}
    for key in GENERIC_FIELDS:
        value = cluster.get(key)
        if value is not None and not (key == "gpus_per_node" and not value):
            params[key] = value
    if cluster.get("kind", "local") != "slurm":
        return params
    for key in SLURM_FIELDS:
        if cluster.get(key) is not None:
            params[f"slurm_{key}"] = cluster[key]
    extra = {str(k): v for k, v in (cluster.get("additional_parameters") or {}).items()
             if v is not None and v is not False}
    if extra:
        params["slurm_additional_parameters"] = extra
    lines = setup_lines(cluster)
    if lines:
        params["slurm_setup"] = lines
    return params


def make_executor(cluster: dict[str, Any], folder: Path, name: str) -> submitit.AutoExecutor:
    """An executor for ``cluster`` writing its files (sbatch script, pickles, logs) under ``folder``.

    ``kind: slurm`` gives a SLURM executor that runs jobs with this very Python (the repo's venv:
    ``hpc_merge`` must be importable on the node); ``kind: local`` gives submitit's local executor
    (subprocesses), handy for arrays without a cluster.
    """
    check_cluster(cluster)
    kind = cluster.get("kind", "local")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "slurm":
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", slurm_python=sys.executable)
    else:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster="local")
    executor.update_parameters(**executor_parameters(cluster, name))
    return executor


def single_process(cluster: dict[str, Any]) -> dict[str, Any]:
    """``cluster`` for a job that is one process (a whole merge or evolution run): one task with
    all the profile's CPUs (``tasks_per_node × cpus_per_task``).

    submitit starts one copy of the submitted callable per task, so a profile with
    ``tasks_per_node: 2`` (meant for the candidate jobs above) would otherwise run the same job
    twice, at once, in the same run dir.
    """
    tasks = int(cluster.get("tasks_per_node") or 1)
    if tasks == 1:
        return cluster
    cpus = cluster.get("cpus_per_task")
    return {**cluster, "tasks_per_node": 1, "cpus_per_task": None if cpus is None else int(cpus) * tasks}
