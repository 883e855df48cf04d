"""The one submitit executor factory: a ``cluster`` profile (conf/cluster/*.yaml) -> an executor.

Every SLURM submission (single jobs, evolution arrays) goes through :func:`make_executor`, so a
profile field means the same thing everywhere and a new submitit parameter is wired in one place.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import submitit

from hpc_merge.errors import ConfigError, did_you_mean

#: cluster fields that become submitit's generic parameters (same name)
GENERIC_FIELDS = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min")
#: cluster fields that become ``slurm_<name>`` parameters
SLURM_FIELDS = ("partition", "account", "qos", "constraint", "signal_delay_s", "array_parallelism")
#: fields that are not executor parameters but belong to the schema
OTHER_FIELDS = ("kind", "wait", "setup", "additional_parameters", "env", "hf_home", "gpu_options")
KNOWN_FIELDS = frozenset(GENERIC_FIELDS + SLURM_FIELDS + OTHER_FIELDS)
KINDS = ("local", "slurm")


def check_cluster(cluster: dict[str, Any]) -> None:
    """Refuse a profile with an unknown field or kind (a typo would otherwise be silently ignored)."""
    for key in cluster:
        if key not in KNOWN_FIELDS:
            raise ConfigError(f"cluster.{key}", f"unknown cluster field{did_you_mean(key, KNOWN_FIELDS)}",
                              "pass other sbatch options through cluster.additional_parameters")
    kind = cluster.get("kind", "local")
    if kind not in KINDS:
        raise ConfigError("cluster.kind", f"unknown cluster kind {kind!r}{did_you_mean(str(kind), KINDS)}",
                          "use local or slurm")
    extra = cluster.get("additional_parameters") or {}
    if not isinstance(extra, dict):
        raise ConfigError("cluster.additional_parameters", "must be a mapping of sbatch option -> value",
                          "e.g. cluster.additional_parameters={mail-type: END}")
    gpu = cluster.get("gpu_options") or {}
    if not isinstance(gpu, dict):
        raise ConfigError("cluster.gpu_options", "must be a mapping of job.options -> value",
                          "e.g. cluster.gpu_options={multi_gpu: true}")
    setup = cluster.get("setup") or []
    if not isinstance(setup, list | tuple):
        raise ConfigError("cluster.setup", "must be a list of shell lines", 'e.g. ["module load cuda/12.1"]')


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
